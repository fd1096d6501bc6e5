"""The trust's FL clients: one Flower SuperNode per Flower net, started and supervised by the agent.

The SuperNode authenticates to each net with the trust's own key pair (made once, kept in the agent's
state folder; only the public half goes to the hub, which registers it on every net under the trust's
code). It dials out to the net's fleet address over TLS, trusting only the CA the hub relays from the
net. Nothing connects into the trust.

The researcher's code runs in the SuperNode's ClientApp processes. They inherit only what they need
to reach this trust's own data through the trainer SDK: the data-access-api and imaging-api URLs and
the trainer key (``FLIP_TRAINER_KEY``), which those services accept on their read-only row-level routes
and nowhere else. They get no hub credential, no internal key and no OMOP connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from flip_fl.flower import pki
from flip_fl.flower.net import SuperNodeProcess
from flip_trust_api.fl_protocol import FlNetInfo

log = logging.getLogger(__name__)

NODE_KEY_NAME = "supernode"
MAX_RESTART_DELAY_S = 300.0


@dataclass(frozen=True)
class TrainerEnvironment:
    """What the researcher's code may reach: this trust's services, with the trainer key."""

    data_access_url: str | None
    imaging_url: str | None
    trainer_key: str | None
    cache_dir: Path

    def as_env(self) -> dict[str, str]:
        env = {"FLIP_TRAINER_CACHE": str(self.cache_dir)}
        if self.data_access_url:
            env["FLIP_DATA_ACCESS_URL"] = self.data_access_url
        if self.imaging_url:
            env["FLIP_IMAGING_URL"] = self.imaging_url
        if self.trainer_key:
            env["FLIP_TRAINER_KEY"] = self.trainer_key
        return env


def node_key(directory: Path) -> pki.NodeKey:
    """The trust's SuperNode key pair, created the first time (the private half never leaves this folder)."""
    pair = pki.NodeKey(directory / f"{NODE_KEY_NAME}.key", directory / f"{NODE_KEY_NAME}.key.pub")
    if pair.private_key.exists() and pair.public_key.exists():
        return pair
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return pki.create_node_key(directory, NODE_KEY_NAME)


# Variables a SuperNode (and the researcher code it runs) must not inherit from the agent's environment.
_WITHHELD_PREFIXES = ("FLIP_AGENT_", "FLIP_INTERNAL", "FLIP_DATA_ACCESS_", "FLIP_IMAGING_", "DATABASE_URL", "PG")


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_WITHHELD_PREFIXES)}


class _Supervised:
    def __init__(self, info: FlNetInfo, process: SuperNodeProcess) -> None:
        self.info = info
        self.process = process
        self.restarts = 0
        self.next_start = 0.0


class FlClients:
    """One SuperNode per Flower net the hub lists; restarted with backoff when one dies."""

    def __init__(self, trust_code: str, state_dir: Path, trainer: TrainerEnvironment) -> None:
        self.trust_code = trust_code
        self.root = state_dir / "fl"
        self.trainer = trainer
        self.key = node_key(self.root / "keys")
        self.nodes: dict[str, _Supervised] = {}

    @property
    def public_key(self) -> str:
        return self.key.public_key.read_text(encoding="ascii").strip()

    def _fingerprint(self, info: FlNetInfo) -> str:
        return hashlib.sha256(f"{info.fleet_address}\n{info.ca_cert}".encode()).hexdigest()[:16]

    def _process(self, info: FlNetInfo) -> SuperNodeProcess:
        folder = self.root / "nets" / hashlib.sha256(info.name.encode()).hexdigest()[:12]
        folder.mkdir(parents=True, exist_ok=True)
        ca = folder / "ca.crt"
        ca.write_text(info.ca_cert, encoding="ascii")
        # The agent's own environment minus its secrets, never os.environ as it is.
        return SuperNodeProcess(
            info.fleet_address,
            self.trust_code,
            folder,
            key=self.key,
            root_certificates=ca,
            base_env=_clean_environment(),
            env=self.trainer.as_env(),
        )

    def reconcile(self, nets: list[FlNetInfo]) -> None:
        """Start, restart or stop SuperNodes so that exactly the listed Flower nets have one that runs."""
        wanted = {n.name: n for n in nets if n.backend == "FLOWER" and n.fleet_address and n.ca_cert}
        for name in list(self.nodes):
            node = self.nodes[name]
            info = wanted.get(name)
            if info is None or self._fingerprint(info) != self._fingerprint(node.info):
                log.info("stopping a SuperNode", extra={"net": name})
                node.process.stop()
                del self.nodes[name]
        now = time.monotonic()
        for name, info in wanted.items():
            existing = self.nodes.get(name)
            if existing is None:
                node = self.nodes[name] = _Supervised(info, self._process(info))
            elif existing.process.running:
                continue
            else:
                node = existing
                if now < node.next_start:
                    continue
                log.warning(
                    "a SuperNode stopped; restarting it",
                    extra={"net": name, "restarts": node.restarts, "log_tail": node.process.log_tail(5)},
                )
                node.process.stop()  # what is left of it: the SuperNode when only its executor died
                node.process = self._process(info)
                node.restarts += 1
            node.next_start = now + min(MAX_RESTART_DELAY_S, 2.0 * 2 ** min(node.restarts, 8))
            node.process.start(wait=False)
            log.info("started a SuperNode", extra={"net": name, "fleet_address": info.fleet_address})

    def stop(self) -> None:
        for node in self.nodes.values():
            node.process.stop()
        self.nodes.clear()

    async def areconcile(self, nets: list[FlNetInfo]) -> None:
        await asyncio.to_thread(self.reconcile, nets)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)
