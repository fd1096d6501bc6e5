"""What the demo's phases share: the people, trusts and services they create, and the phase type itself."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from flip_api.core.config import HubSettings
from flip_api.core.permissions import RoleName
from flip_cli.database import HubDatabase
from flip_cli.demo.client import HubClient, SignedIn
from flip_cli.demo.errors import DemoError
from flip_cli.demo.processes import HubProcess
from flip_core.contract import TrustKit


@dataclass
class DemoUser:
    """A person in the walkthrough: created in-process, then signed in through the real MFA flow."""

    role: str  # short label used in progress lines: "hub admin", "researcher", "trust admin"
    email: str
    name: str
    global_roles: list[RoleName]
    user_id: uuid.UUID | None = None
    password: str | None = None
    session: SignedIn | None = None

    @property
    def token(self) -> str:
        """The user's access token; only valid after the users phase signed them in."""
        if self.session is None:
            raise DemoError(f"{self.role} {self.email} is not signed in")
        return self.session.access_token


@dataclass
class DemoTrust:
    """A hospital in the walkthrough and the kit its operator would receive."""

    code: str
    name: str
    region: str
    profile: str = "north"  # synthetic population (flip_omop profile)
    persons: int = 2000
    trust_id: uuid.UUID | None = None
    kit_path: Path | None = None
    kit: TrustKit | None = None
    data_access_url: str | None = None
    imaging_url: str | None = None
    pacs_accessions: list[str] = field(default_factory=list)
    # What the trust's services accept from FL trainers (researcher code in its SuperNode), and nothing else.
    trainer_key: str = field(default_factory=lambda: "flip_tk_" + secrets.token_urlsafe(24), repr=False)

    @property
    def id(self) -> uuid.UUID:
        if self.trust_id is None:
            raise DemoError(f"trust {self.code} is not registered")
        return self.trust_id


@dataclass
class DemoContext:
    """State shared by the phases; each phase reads what earlier ones set and adds its own."""

    state_dir: Path
    requested_port: int | None
    stack: ExitStack
    database_url: str | None = None
    embedded_database: bool = True
    settings: HubSettings | None = None
    hub: HubProcess | None = None
    db: HubDatabase | None = None
    client: HubClient | None = None
    users: dict[str, DemoUser] = field(default_factory=dict)
    trusts: dict[str, DemoTrust] = field(default_factory=dict)
    project_id: str | None = None
    imaging_project_id: str | None = None

    @property
    def hub_url(self) -> str:
        return self.require_hub().url

    def require_hub(self) -> HubProcess:
        if self.hub is None:
            raise DemoError("the hub is not running")
        return self.hub

    def require_db(self) -> HubDatabase:
        if self.db is None:
            raise DemoError("the hub database is not open")
        return self.db

    def require_client(self) -> HubClient:
        if self.client is None:
            raise DemoError("no HTTP client: the hub is not running")
        return self.client

    def require_settings(self) -> HubSettings:
        if self.settings is None:
            raise DemoError("hub settings are not loaded")
        return self.settings

    def say(self, actor: str, message: str) -> None:
        """One progress line: who did what, and the result."""
        click.echo(f"    {actor:<12} {message}")


PhaseResult = dict[str, Any]


@dataclass(frozen=True)
class Phase:
    """One step of the walkthrough; ``run`` returns the details recorded under ``name`` in the summary."""

    name: str
    title: str
    run: Callable[[DemoContext], PhaseResult]
