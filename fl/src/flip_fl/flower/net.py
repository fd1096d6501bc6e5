"""A Flower net as processes: the SuperLink, SuperNodes, and the ``flwr`` CLI that drives them.

Every process is started in its own session (``start_new_session=True``) with telemetry and update
checks off, ``FLWR_HOME`` inside its work directory and its output in ``<workdir>/<name>.log``, and is
stopped by PID: SIGTERM to it and every descendant (Flower starts its SuperExec in a session of its
own, so a process-group kill alone would leave it running), then SIGKILL after a grace period.

Flower 1.41 serves the Fleet, Control and Runtime APIs of a SuperLink on one HTTP(S) address. With
:class:`~flip_fl.flower.pki.TlsFiles` the SuperLink runs TLS with node authentication on: only
SuperNodes whose public key was registered (``FlowerControl.register_supernode``) may connect, and
the registration's name is the trust code the ServerApp uses to address them. Without TLS
(``--insecure``) SuperNodes are anonymous and a FLIP ServerApp will find none of its trusts.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from flip_fl.flower.pki import NodeKey, TlsFiles
from flip_fl.flower.proctree import DEFAULT_GRACE_S, stop_process_tree
from flip_fl.flower.protocol import NODE_TRUST_KEY
from flip_fl.flower.runconfig import TRUST_CODE
from flip_fl.flower.supernode import DEFAULT_IDLE_POLL_S

HOST = "127.0.0.1"
DEFAULT_POLL_INTERVAL_S = 0.2
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


class FlowerError(RuntimeError):
    """A Flower process or CLI call failed; the message is Flower's, cleaned up and shortened."""


# -- processes ---------------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def flower_env(
    flwr_home: Path, extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a Flower process: quiet, offline, with its own ``FLWR_HOME``.

    It starts from ``base`` (default: this process's environment), then adds Flower's settings and ``extra``.
    """
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)  # flower-superexec, flwr-serverapp... are found on PATH
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "NO_COLOR": "1",
            "TERM": "dumb",
            "COLUMNS": "10000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if extra:
        env.update(extra)
    return env


def flower_executable(name: str) -> str:
    """The path of a Flower program (``flwr``, ``flower-supernode``...): next to this Python, else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FlowerError(f"{name} is not installed")
    return found


class _Process:
    """One long-running Flower process with its log file, stopped with all its descendants."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.env = env
        self.log_path = workdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self.argv,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return _ANSI.sub("", self.log_path.read_text(encoding="utf-8", errors="replace"))

    def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        if self.popen is None:
            return
        stop_process_tree(self.popen, grace_s)


def _wait_for(check: Any, process: _Process, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if not process.running():
            raise FlowerError(f"{process.name} exited before {what}: {_tail(process.log_text())}")
        time.sleep(0.1)
    raise FlowerError(f"{process.name}: no {what} within {timeout_s:g}s: {_tail(process.log_text())}")


def _tail(text: str, lines: int = 3) -> str:
    useful = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(useful[-lines:])[-600:] or "(no output)"


class _Managed:
    _process: _Process

    def stop(self) -> None:
        """Stop the process and everything it started (SIGTERM, then SIGKILL)."""
        self._process.stop()

    close = stop

    @property
    def pid(self) -> int | None:
        """The PID of the process started, if any."""
        return self._process.pid

    @property
    def log_path(self) -> Path:
        """Where the process's output goes."""
        return self._process.log_path

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._process.running()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process's output (for a supervisor's error message)."""
        return "\n".join(self._process.log_text().splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


class SuperLinkProcess(_Managed):
    """A ``flower-superlink`` on a loopback port; its ServerApps run as its subprocesses."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: TlsFiles | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        fleet_host: str = HOST,
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.port = port or free_port()
        self.fleet_host = fleet_host
        argv = [
            flower_executable("flower-superlink"),
            "--host", fleet_host,
            "--port", str(self.port),
            "--isolation", "subprocess",
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        if tls is None:
            argv.append("--insecure")
        else:
            argv += [
                "--ssl-ca-certfile", str(tls.ca_cert.resolve()),
                "--ssl-certfile", str(tls.server_cert.resolve()),
                "--ssl-keyfile", str(tls.server_key.resolve()),
                "--enable-supernode-auth",
            ]  # fmt: skip
        extra = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(poll_interval_s), **(env or {})}
        self._process = _Process("superlink", argv, workdir, flower_env(workdir / "flwr-home", extra))

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink's one HTTP(S) server."""
        return f"{HOST}:{self.port}"

    @property
    def fleet_address(self) -> str:
        """Where SuperNodes dial in (Fleet API)."""
        return self.address

    @property
    def control_address(self) -> str:
        """Where the ``flwr`` CLI submits, lists and stops runs (Control API)."""
        return self.address

    def start(self, timeout_s: float = 60.0) -> Self:
        """Start the SuperLink and wait until it accepts connections."""
        self._process.start()
        _wait_for(lambda: _accepts(HOST, self.port), self._process, timeout_s, "listening port")
        return self


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class SuperNodeProcess(_Managed):
    """A SuperNode for one trust: it dials out to the SuperLink and runs the ClientApps it is sent.

    The node config carries the trust code (``trust="CODE"``). With ``key`` and ``root_certificates``
    it authenticates with that key pair over TLS (register the public key first); without, it
    connects insecurely and anonymously. Its environment (and so every ClientApp's) is ``base_env``
    (default: this process's) with ``env`` on top.

    By default (``warm=True``) it is Flower's SuperNode in ``process`` isolation, started through
    :mod:`flip_fl.flower.supernode` (``idle_poll_s`` between pulls of the SuperLink), with FLIP's
    :mod:`~flip_fl.flower.executor` beside it: ClientApps are forked from a process that has imported
    torch and flwr once, so a round does not pay for starting Python. ``warm=False`` runs the plain
    ``flower-supernode`` in ``subprocess`` isolation, Flower's SuperExec starting a new ``flwr-clientapp``
    program per instruction.
    """

    def __init__(
        self,
        superlink_fleet_address: str,
        trust_code: str,
        workdir: Path,
        *,
        key: NodeKey | None = None,
        root_certificates: Path | None = None,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        warm: bool = True,
        idle_poll_s: float = DEFAULT_IDLE_POLL_S,
    ) -> None:
        if not TRUST_CODE.match(trust_code):
            raise ValueError(f"invalid trust code {trust_code!r}")
        if key is not None and root_certificates is None:
            raise ValueError("a SuperNode key needs TLS: pass root_certificates")
        self.trust_code = trust_code
        self.workdir = workdir
        self.warm = warm
        self.runtime_port = free_port()
        self.node_id: int | None = None
        if warm:
            command = [sys.executable, "-m", "flip_fl.flower.supernode", "--idle-poll", str(idle_poll_s)]
        else:
            command = [flower_executable("flower-supernode")]
        argv = [
            *command,
            "--superlink", superlink_fleet_address,
            "--host", HOST,
            "--port", str(self.runtime_port),
            "--isolation", "process" if warm else "subprocess",
            "--node-config", f'{NODE_TRUST_KEY}="{trust_code}"',
        ]  # fmt: skip
        if root_certificates is None:
            argv.append("--insecure")
        else:
            argv += ["--root-certificates", str(root_certificates.resolve())]
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key.private_key.resolve())]
        extra = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(poll_interval_s), **(env or {})}
        process_env = flower_env(workdir / "flwr-home", extra, base_env)
        self._executor: _Process | None = None
        self._executor_argv: list[str] = []
        # A fresh secret per SuperNode start, shared with its executor only (see flip_fl.flower.executor).
        self._secret_file = workdir / "superexec.secret"
        if warm:
            argv += ["--superexec-auth-secret-file", str(self._secret_file.resolve())]
            self._executor_argv = [
                sys.executable, "-m", "flip_fl.flower.executor",
                "--runtime-api-address", f"{HOST}:{self.runtime_port}",
                "--poll-interval", str(poll_interval_s),
                "--auth-secret-file", str(self._secret_file.resolve()),
            ]  # fmt: skip
            self._executor = _Process(f"executor-{trust_code}", self._executor_argv, workdir, process_env)
        self._process = _Process(f"supernode-{trust_code}", argv, workdir, process_env)

    @property
    def flwr_home(self) -> Path:
        """The SuperNode's ``FLWR_HOME``: the apps it installed live under ``apps/``."""
        return self.workdir / "flwr-home"

    @property
    def executor_log_path(self) -> Path | None:
        """Where the executor's output goes (it logs every task it starts and how it ended); None when cold."""
        return self._executor.log_path if self._executor is not None else None

    @property
    def running(self) -> bool:
        """Whether the SuperNode (and, when warm, its executor) was started and has not exited."""
        return self._process.running() and (self._executor is None or self._executor.running())

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the SuperNode's output, then its executor's."""
        text = super().log_tail(lines)
        if self._executor is not None:
            text += "\n" + "\n".join(self._executor.log_text().splitlines()[-lines:])
        return text

    def start(self, timeout_s: float = 60.0, *, wait: bool = True) -> Self:
        """Start the SuperNode; with ``wait``, until the SuperLink has accepted it (see :meth:`wait_ready`)."""
        if self._executor is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self._secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(secrets.token_bytes(32))
        self._process.start()
        if self._executor is not None:
            self._executor.argv = [*self._executor_argv, "--parent-pid", str(self._process.pid)]
            self._executor.start()
        if wait:
            self.wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        """Stop the executor (and the ClientApps it runs), then the SuperNode."""
        if self._executor is not None:
            self._executor.stop()
        self._process.stop()

    close = stop

    def wait_ready(self, timeout_s: float = 60.0) -> int:
        """Wait until the SuperNode has joined (it logs its node ID); returns the node ID."""

        def node_id() -> int | None:
            match = _NODE_ID.search(self._process.log_text())
            return int(match.group(1)) if match else None

        self.node_id = int(_wait_for(node_id, self._process, timeout_s, "connection to the SuperLink"))
        return self.node_id


# -- the flwr CLI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    """A run as ``flwr ls`` reports it: ``status`` is pending/starting/running/finished."""

    run_id: int
    status: str
    sub_status: str
    details: str
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the run has ended (completed, failed or stopped)."""
        return self.status == "finished"


class FlowerControl:
    """The ``flwr`` CLI pointed at one SuperLink (a connection named ``flip`` in its own ``FLWR_HOME``)."""

    CONNECTION = "flip"

    def __init__(
        self,
        control_address: str,
        workdir: Path,
        *,
        root_certificates: Path | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.workdir = workdir
        self.timeout_s = timeout_s
        self._flwr = flower_executable("flwr")
        self._env = flower_env(workdir / "flwr-home")
        home = workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{self.CONNECTION}"', "", f"[superlink.{self.CONNECTION}]"]
        lines.append(f"address = {json.dumps(control_address)}")
        if root_certificates is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {json.dumps(str(root_certificates.resolve()))}")
        (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def register_supernode(self, public_key: Path, trust_code: str) -> int:
        """Register a SuperNode's public key under its trust code; returns its node ID."""
        if not TRUST_CODE.match(trust_code):
            raise ValueError(f"invalid trust code {trust_code!r}")
        out = self._json(["supernode", "register", str(public_key.resolve()), self.CONNECTION, "--name", trust_code])
        return int(out["node-id"])

    def submit(self, app_dir: Path, run_config: Mapping[str, object]) -> int:
        """Start a run of the app in ``app_dir`` with these run-config overrides; returns the run ID.

        Lists and dicts are passed as JSON strings (Flower's run config holds scalars only).
        """
        unknown = sorted(set(run_config) - _declared_run_config(app_dir))
        if unknown:
            raise FlowerError(f"the app declares no run config key {', '.join(unknown)}")
        overrides = self.workdir / f"run-config-{time.time_ns()}.toml"
        overrides.write_text(_toml_overrides(run_config), encoding="utf-8")
        try:
            out = self._json(["run", str(app_dir.resolve()), self.CONNECTION, "--run-config", str(overrides)])
        finally:
            overrides.unlink(missing_ok=True)
        run_id = out.get("run-id")
        if run_id is None:
            raise FlowerError("flwr run returned no run ID")
        return int(run_id)

    def status(self, run_id: int) -> RunStatus:
        """The run's current status."""
        out = self._json(["ls", self.CONNECTION, "--run-id", str(run_id)])
        runs = out.get("runs") or []
        if not runs:
            raise FlowerError(f"run {run_id} not found")
        run = runs[0]
        status, _, sub_status = str(run.get("status", "")).partition(":")
        details = str(run.get("status-details", ""))
        return RunStatus(run_id, status, sub_status, "" if details == "N/A" else details, run)

    def wait(self, run_id: int, timeout_s: float, poll_s: float = 1.0) -> RunStatus:
        """Poll the run until it has finished; :class:`FlowerError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.status(run_id)
            if current.finished:
                return current
            if time.monotonic() >= deadline:
                raise FlowerError(f"run {run_id} still {current.status} after {timeout_s:g}s")
            time.sleep(poll_s)

    def stop(self, run_id: int) -> None:
        """Ask the SuperLink to stop the run."""
        self._json(["stop", str(run_id), self.CONNECTION])

    def logs(self, run_id: int) -> str:
        """The run's ServerApp log as the SuperLink kept it."""
        result = self._cli(["log", str(run_id), self.CONNECTION, "--show"])
        if result.returncode != 0:
            raise FlowerError(f"flwr log failed: {_cli_message(result.stdout + result.stderr)}")
        return _ANSI.sub("", result.stdout)

    def close(self) -> None:
        """Nothing runs between calls (each CLI call is waited for); kept for symmetry."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _json(self, args: list[str]) -> dict[str, Any]:
        result = self._cli([*args, "--format", "json"])
        parsed = _first_json_object(result.stdout)
        if parsed is None:
            raise FlowerError(f"flwr {args[0]}: {_cli_message(result.stdout + result.stderr)}")
        if result.returncode != 0 or parsed.get("success") is not True:
            message = str(parsed.get("error-message") or result.stderr or "failed")
            raise FlowerError(f"flwr {args[0]}: {_cli_message(message)}")
        return parsed

    def _cli(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [self._flwr, *args],
            cwd=self.workdir,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            stop_process_tree(process, 1.0)
            raise FlowerError(f"flwr {args[0]} did not answer within {self.timeout_s:g}s") from exc
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _declared_run_config(app_dir: Path) -> set[str]:
    """The run config keys an app declares (``[tool.flwr.app.config]``, nested tables dotted)."""
    try:
        project = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FlowerError(f"{app_dir} has no readable pyproject.toml") from exc
    declared: set[str] = set()

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                declared.add(prefix + key)

    walk(project.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}), "")
    return declared


def _toml_overrides(run_config: Mapping[str, object]) -> str:
    lines = []
    for key, value in run_config.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise ValueError(f"invalid run config key {key!r}")
        if isinstance(value, list | tuple | dict):
            value = json.dumps(value)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"run config {key} is not finite")
            text = repr(value)
        elif isinstance(value, str):
            text = json.dumps(value)  # a JSON string is a valid TOML basic string
        else:
            raise ValueError(f"run config {key} has unsupported type {type(value).__name__}")
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _first_json_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return value if isinstance(value, dict) else None
    return None


def _cli_message(text: str) -> str:
    """Flower's CLI message on one line, without colours, box drawing or emoji, at most 500 chars."""
    clean = "\n".join(line for line in _ANSI.sub("", text).splitlines() if not line.startswith("Using SuperLink"))
    clean = re.sub(r"[\u2500-\u257f\U0001F300-\U0001FAFF\u2600-\u27bf]", " ", clean)
    clean = " ".join(clean.split())
    return clean[:500] or "no output"
