"""A Flower FL net's control API (``flip fl-net serve``): the one thing the hub talks to for this net.

The service owns one SuperLink (TLS, SuperNode authentication) and drives it with the ``flwr`` CLI.
The hub calls it with the net key (``X-FLIP-Internal-Key``) to:

* register a trust's SuperNode public key under the trust's code (``PUT /nodes/{code}``);
* submit a job (``POST /runs``): the researcher's files arrive in the request, are bundled here with
  FLIP's immutable template (template files win) and the bundle's sha256 is returned; a second submit
  of the same job returns the first run instead of starting another;
* read a run's status and the end of its ServerApp log, and stop it.

Nothing here calls the trusts: their SuperNodes dial in. The ServerApp reports events and uploads the
final model to the hub itself (``FLIP_FL_REPORT_URL``, with the same net key), so the hub learns of a
run's progress without polling; the hub still polls ``GET /runs/{job}`` as its watchdog.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from flip_fl.flower import pki
from flip_fl.flower.bundle import TEMPLATE_DIR, BundleError, build_bundle
from flip_fl.flower.events import INTERNAL_KEY_HEADER, REPORT_KEY_ENV, REPORT_URL_ENV, RESULTS_URL_ENV, sanitise
from flip_fl.flower.net import FlowerControl, FlowerError, SuperLinkProcess
from flip_fl.flower.runconfig import TRUST_CODE

log = logging.getLogger(__name__)

MAX_FILES = 32
MAX_BUNDLE_BYTES = 10 * 1024 * 1024  # Flower's own FAB limit
LOG_TAIL_LINES = 40
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEY_LINE = re.compile(r"^ecdsa-sha2-nistp\d{3} [A-Za-z0-9+/=]+( [^\n]*)?$")


@dataclass(frozen=True)
class NetConfig:
    """How a net service runs: its state folder, its key, where the hub is, which address trusts dial."""

    name: str
    state_dir: Path
    key: str
    hub_report_url: str | None  # <hub>/api/fl (events, results); None: the run writes its report file
    fleet_host: str = "127.0.0.1"  # the address in the SuperLink's certificate, which trusts dial
    fleet_port: int | None = None
    public_fleet_address: str | None = None  # what trusts are told (default host:port)


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class NodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(min_length=40, max_length=2000, description="the SuperNode's OpenSSH public key")


class NodeOut(BaseModel):
    trust: str
    node_id: int
    registered: bool  # False: the same key was registered before (nothing changed)


RunConfigValue = bool | int | float | str | list[str] | dict[str, Any]


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: uuid.UUID
    files: dict[Annotated[str, StringConstraints(pattern=_FILE_NAME.pattern)], str] = Field(
        max_length=MAX_FILES, description="the researcher's clean files, base64"
    )
    run_config: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}$")], RunConfigValue]


class RunOut(BaseModel):
    job_id: uuid.UUID
    run_id: int
    bundle_sha256: str
    status: str = ""
    sub_status: str = ""
    details: str = ""
    log_tail: str = ""


class HealthOut(BaseModel):
    name: str
    backend: Literal["flower"] = "flower"
    status: Literal["healthy", "down"]
    fleet_address: str
    ca_cert: str
    nodes: list[str]


class _Net:
    """The SuperLink, its CLI and what the service has done with them (kept in the state folder)."""

    def __init__(self, config: NetConfig) -> None:
        self.config = config
        root = config.state_dir
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tls_dir = root / "pki"
        if (tls_dir / "ca.crt").exists():
            self.tls = pki.TlsFiles(tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key")
        else:
            self.tls = pki.create_tls(tls_dir, config.fleet_host)
        env = {}
        if config.hub_report_url:
            base = config.hub_report_url.rstrip("/")
            env = {REPORT_URL_ENV: f"{base}/events", RESULTS_URL_ENV: f"{base}/jobs", REPORT_KEY_ENV: config.key}
        self.link = SuperLinkProcess(
            root / "superlink", tls=self.tls, port=config.fleet_port, env=env, fleet_host=config.fleet_host
        )
        self.control: FlowerControl | None = None
        self.lock = threading.Lock()
        self.nodes_file = root / "nodes.json"
        self.runs_dir = root / "runs"

    def start(self) -> None:
        self.link.start()
        self.control = FlowerControl(
            self.link.control_address, self.config.state_dir / "control", root_certificates=self.tls.ca_cert
        )

    def stop(self) -> None:
        self.link.stop()

    @property
    def fleet_address(self) -> str:
        return self.config.public_fleet_address or self.link.fleet_address

    def cli(self) -> FlowerControl:
        if self.control is None or not self.link.running:
            raise ServiceError(503, "superlink_down", "the SuperLink is not running")
        return self.control

    def nodes(self) -> dict[str, dict[str, Any]]:
        if not self.nodes_file.exists():
            return {}
        value = json.loads(self.nodes_file.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else {}

    def register(self, code: str, public_key: str) -> NodeOut:
        key = public_key.strip()
        if not _KEY_LINE.match(key):
            raise ServiceError(422, "invalid_key", "public_key must be one OpenSSH ECDSA public key line")
        with self.lock:
            nodes = self.nodes()
            known = nodes.get(code)
            if known is not None and known.get("public_key") == key:
                return NodeOut(trust=code, node_id=int(known["node_id"]), registered=False)
            if known is not None:
                raise ServiceError(
                    409, "node_key_conflict", f"trust {code} already has another SuperNode key on this net"
                )
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "node.pub"
                path.write_text(key + "\n", encoding="utf-8")
                try:
                    node_id = self.cli().register_supernode(path, code)
                except FlowerError as exc:
                    raise ServiceError(422, "node_not_registered", sanitise(str(exc))) from exc
            nodes[code] = {"public_key": key, "node_id": node_id}
            _write_json(self.nodes_file, nodes)
        log.info("registered a SuperNode key", extra={"trust": code, "node_id": node_id})
        return NodeOut(trust=code, node_id=node_id, registered=True)

    def run_file(self, job_id: uuid.UUID) -> Path:
        return self.runs_dir / str(job_id) / "run.json"

    def submit(self, body: RunIn) -> RunOut:
        with self.lock:
            existing = self._recorded(body.job_id)
            if existing is not None:
                return existing
            job_dir = self.runs_dir / str(body.job_id)
            if job_dir.exists():
                shutil.rmtree(job_dir)  # a submit that failed half-way: start again
            uploads = job_dir / "uploads"
            uploads.mkdir(parents=True)
            total = 0
            files: dict[str, Path] = {}
            for name, encoded in body.files.items():
                try:
                    data = base64.b64decode(encoded, validate=True)
                except binascii.Error as exc:
                    raise ServiceError(422, "invalid_file", f"{name} is not valid base64") from exc
                total += len(data)
                if total > MAX_BUNDLE_BYTES:
                    raise ServiceError(413, "bundle_too_large", f"the files exceed {MAX_BUNDLE_BYTES} bytes")
                (uploads / name).write_bytes(data)
                files[name] = uploads / name
            try:
                bundle = build_bundle(TEMPLATE_DIR, files, job_dir / "app")
            except BundleError as exc:
                raise ServiceError(422, "invalid_bundle", str(exc)) from exc
            run_config: dict[str, Any] = {
                **body.run_config,
                "job_id": str(body.job_id),
                "bundle_sha256": bundle.sha256,
                "output_dir": str(job_dir / "out"),
                "report_file": str(job_dir / "report.jsonl"),
            }
            try:
                run_id = self.cli().submit(bundle.path, run_config)
            except (FlowerError, ValueError) as exc:
                raise ServiceError(422, "run_not_started", sanitise(str(exc))) from exc
            out = RunOut(job_id=body.job_id, run_id=run_id, bundle_sha256=bundle.sha256)
            _write_json(self.run_file(body.job_id), out.model_dump(mode="json"))
        log.info("started a run", extra={"job_id": str(body.job_id), "run_id": run_id})
        return out

    def _recorded(self, job_id: uuid.UUID) -> RunOut | None:
        path = self.run_file(job_id)
        if not path.exists():
            return None
        return RunOut.model_validate_json(path.read_text(encoding="utf-8"))

    def recorded(self, job_id: uuid.UUID) -> RunOut:
        run = self._recorded(job_id)
        if run is None:
            raise ServiceError(404, "run_not_found", f"no run of job {job_id} on this net")
        return run

    def status(self, job_id: uuid.UUID) -> RunOut:
        run = self.recorded(job_id)
        try:
            current = self.cli().status(run.run_id)
        except FlowerError as exc:
            raise ServiceError(502, "status_unavailable", sanitise(str(exc))) from exc
        tail = self.log_tail(run.run_id) if current.finished else ""
        return run.model_copy(
            update={
                "status": current.status,
                "sub_status": current.sub_status,
                "details": sanitise(current.details) if current.details else "",
                "log_tail": tail,
            }
        )

    def stop_run(self, job_id: uuid.UUID) -> RunOut:
        run = self.recorded(job_id)
        control = self.cli()
        try:
            if not control.status(run.run_id).finished:
                control.stop(run.run_id)
        except FlowerError as exc:
            raise ServiceError(502, "stop_failed", sanitise(str(exc))) from exc
        return self.status(job_id)

    def log_tail(self, run_id: int) -> str:
        try:
            text = self.cli().logs(run_id)
        except (FlowerError, ServiceError):
            return ""
        return sanitise_log(text)


def sanitise_log(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines, without control characters, each at most 300 characters."""
    kept = [sanitise(line) for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value, indent=1, sort_keys=True), encoding="utf-8")
    partial.replace(path)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(config: NetConfig, *, manage_superlink: bool = True) -> FastAPI:
    """The control API; with ``manage_superlink`` its lifespan starts and stops the SuperLink."""
    net = _Net(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_superlink:
            net.start()
        try:
            yield
        finally:
            if manage_superlink:
                net.stop()

    app = FastAPI(title=f"FLIP FL net {config.name}", lifespan=lifespan)
    app.state.net = net

    def authorised(key: Annotated[str | None, Header(alias=INTERNAL_KEY_HEADER)] = None) -> None:
        if key is None or not hmac.compare_digest(key.encode(), config.key.encode()):
            raise ServiceError(401, "unauthorised", "a valid net key is required")

    guard = [Depends(authorised)]

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return _error(422, "invalid_request", f"{where}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.get("/health", response_model=HealthOut, dependencies=guard)
    def health() -> HealthOut:
        return HealthOut(
            name=config.name,
            status="healthy" if net.link.running else "down",
            fleet_address=net.fleet_address,
            ca_cert=net.tls.ca_cert.read_text(encoding="ascii"),
            nodes=sorted(net.nodes()),
        )

    @app.put("/nodes/{trust_code}", response_model=NodeOut, dependencies=guard)
    def register_node(trust_code: str, body: NodeIn) -> NodeOut:
        if not TRUST_CODE.match(trust_code):
            raise ServiceError(422, "invalid_trust_code", f"invalid trust code {trust_code!r}")
        return net.register(trust_code, body.public_key)

    @app.post("/runs", response_model=RunOut, dependencies=guard)
    def submit(body: RunIn) -> RunOut:
        return net.submit(body)

    @app.get("/runs/{job_id}", response_model=RunOut, dependencies=guard)
    def status(job_id: uuid.UUID) -> RunOut:
        return net.status(job_id)

    @app.post("/runs/{job_id}/stop", response_model=RunOut, dependencies=guard)
    def stop(job_id: uuid.UUID) -> RunOut:
        return net.stop_run(job_id)

    return app
