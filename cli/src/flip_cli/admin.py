"""``flip admin``: operator bootstrap working directly on the hub database (first admin, trusts, roles).

These commands act as the system actor ``cli`` in the audit log.  They migrate the schema and seed the
role catalogue first, so they work on an empty database before the hub has ever started.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.permissions import ROLES, RoleName
from flip_api.db.models import Trust, User
from flip_api.services import users as user_service
from flip_api.services.audit import Actor
from flip_api.services.rbac import load_principal
from flip_api.services.trusts import register_trust as register_trust_service
from flip_cli.database import load_settings, open_hub_database
from flip_cli.errors import CliError, conflict
from flip_cli.kits import KitExistsError, write_kit

CLI_ACTOR = Actor.system("cli")

GLOBAL_ROLES = [spec.name.value for spec in ROLES.values() if not spec.trust_scoped]
ALL_ROLES = [name.value for name in RoleName]


@click.group()
def admin() -> None:
    """Operator bootstrap on the hub database: users, roles, trusts."""


async def _user_by_email(db: AsyncSession, email: str) -> User:
    user = await user_service.find_by_email(db, email)
    if user is None:
        raise conflict(f"no user with email {user_service.normalise_email(email)}")
    return user


async def _trust_by_code(db: AsyncSession, code: str) -> Trust:
    trust = await db.scalar(select(Trust).where(Trust.code == code.strip().upper()))
    if trust is None:
        raise conflict(f"no trust with code {code.strip().upper()}")
    return trust


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise click.UsageError("--password-stdin was given but stdin held no password")
    return password


@admin.command("create-user")
@click.option("--email", required=True, help="Sign-in email (unique, case-insensitive).")
@click.option("--name", required=True, help="Full name.")
@click.option("--organisation", default="", help="Organisation shown next to the name.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(GLOBAL_ROLES, case_sensitive=False),
    metavar="[" + "|".join(GLOBAL_ROLES) + "]",
    help="Global role; repeat for several. Trust Admin is granted per trust with grant-role.",
)
@click.option("--password-stdin", is_flag=True, help="Read the initial password from stdin instead of generating one.")
def create_user(email: str, name: str, organisation: str, roles: tuple[str, ...], password_stdin: bool) -> None:
    """Create a user (for example the first Admin) and print the initial password once."""
    password = _read_password() if password_stdin else None
    role_names = [RoleName(r) for r in _canonical_roles(roles)]
    with open_hub_database(load_settings(), prepare=True) as hub_db:

        async def create(db: AsyncSession) -> tuple[uuid.UUID, str, str]:
            user, initial = await user_service.create_user(
                db, CLI_ACTOR, email=email, name=name, organisation=organisation, roles=role_names, password=password
            )
            return user.id, user.email, initial

        user_id, stored_email, initial = hub_db.run(create)
    click.echo(f"user id:  {user_id}")
    click.echo(f"email:    {stored_email}")
    click.echo(f"roles:    {', '.join(r.value for r in role_names) or '(none)'}")
    if password is None:
        click.echo(f"password: {initial}")
        click.echo("The password is shown only this once; the user enrols an authenticator app at first sign-in.")


def _canonical_roles(values: tuple[str, ...]) -> list[str]:
    """Map case-insensitive choices back to the catalogue's spelling, without duplicates."""
    by_lower = {name.lower(): name for name in ALL_ROLES}
    ordered: list[str] = []
    for value in values:
        name = by_lower[value.lower()]
        if name not in ordered:
            ordered.append(name)
    return ordered


@dataclass(frozen=True)
class _GrantOutcome:
    user_id: uuid.UUID
    added: bool
    roles: list[str]


@admin.command("grant-role")
@click.option("--email", required=True, help="The user's email.")
@click.option(
    "--role",
    required=True,
    type=click.Choice(ALL_ROLES, case_sensitive=False),
    metavar="[" + "|".join(ALL_ROLES) + "]",
    help="Role to add.",
)
@click.option("--trust", "trust_code", default=None, help="Trust code; required for Trust Admin, refused otherwise.")
def grant_role(email: str, role: str, trust_code: str | None) -> None:
    """Add a global role (keeping the user's others) or a Trust Admin grant at one trust."""
    role_name = RoleName(_canonical_roles((role,))[0])
    trust_scoped = ROLES[role_name].trust_scoped
    if trust_scoped and not trust_code:
        raise click.UsageError(f"{role_name.value} is granted per trust: give --trust CODE")
    if not trust_scoped and trust_code:
        raise click.UsageError(f"{role_name.value} is a global role: --trust does not apply")

    with open_hub_database(load_settings(), prepare=True) as hub_db:

        async def grant(db: AsyncSession) -> _GrantOutcome:
            user = await _user_by_email(db, email)
            if trust_code:
                trust = await _trust_by_code(db, trust_code)
                added = await user_service.grant_trust_role(db, CLI_ACTOR, user, trust, role_name)
                return _GrantOutcome(user.id, added, [f"{role_name.value}@{trust.code}"])
            principal = await load_principal(db, user, None)
            current = {g.role for g in principal.grants if g.trust_id is None}
            added = role_name not in current
            if added:
                await user_service.set_global_roles(db, CLI_ACTOR, user, sorted(current | {role_name}))
            return _GrantOutcome(user.id, added, sorted(r.value for r in current | {role_name}))

        outcome = hub_db.run(grant)
    what = f"{role_name.value} at {trust_code.upper()}" if trust_code else role_name.value
    state = "granted" if outcome.added else "already held"
    click.echo(f"{what}: {state} for user {outcome.user_id}")
    if not trust_code:
        click.echo(f"global roles: {', '.join(outcome.roles)}")


@dataclass(frozen=True)
class _Registered:
    trust_id: uuid.UUID
    code: str
    kit_path: Path


@admin.command("register-trust")
@click.option("--name", required=True, help="The trust's full name (unique).")
@click.option("--code", required=True, help="Short code, e.g. ELSE (unique, stored upper-case).")
@click.option("--region", default="", help="Region shown in the UI.")
@click.option("--hub-url", default=None, help="Hub URL written into the kit [default: FLIP_HUB_PUBLIC_URL].")
@click.option(
    "--kit-out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the trust kit (env file, mode 0600).",
)
@click.option("--force", is_flag=True, help="Replace an existing kit file.")
def register_trust(name: str, code: str, region: str, hub_url: str | None, kit_out: Path, force: bool) -> None:
    """Register a trust and write its kit (API key, payload key) to --kit-out; keys are never printed."""
    if kit_out.exists() and not force:
        raise conflict(f"{kit_out} already exists (use --force to replace it)")
    settings = load_settings()
    url = hub_url or settings.public_url
    with open_hub_database(settings, prepare=True) as hub_db:
        data_key = settings.data_key_bytes()

        async def register(db: AsyncSession) -> _Registered:
            issued = await register_trust_service(
                db, CLI_ACTOR, data_key=data_key, hub_url=url, name=name, code=code, region=region
            )
            # Written inside the transaction: if the file cannot be written, the registration rolls back
            # rather than leaving a trust whose keys nobody holds.
            try:
                path = write_kit(kit_out, issued.kit, overwrite=force)
            except KitExistsError as exc:
                raise conflict(str(exc)) from exc
            except OSError as exc:
                raise CliError(f"cannot write the kit to {kit_out}: {exc}") from exc
            written.append(path)
            return _Registered(issued.trust.id, issued.trust.code, path)

        written: list[Path] = []
        try:
            registered = hub_db.run(register)
        except BaseException:
            for path in written:  # the commit failed after the kit was written: its keys are void
                path.unlink(missing_ok=True)
            raise
    click.echo(f"trust id: {registered.trust_id}")
    click.echo(f"code:     {registered.code}")
    click.echo(f"kit:      {registered.kit_path} (mode 0600; hand it to the trust's operator over a secure channel)")
