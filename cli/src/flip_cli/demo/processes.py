"""Child processes of the demo: the hub, started as ``flip hub serve`` and stopped by its PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import httpx

from flip_cli.demo.errors import DemoError

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it; the hub binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except FileNotFoundError:
        return ""


class ChildProcess:
    """``python -m flip_cli.main <args>`` with its output going to ``log_path``; stopped by its PID."""

    name = "child"

    def __init__(self, *, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._args = list(args)
        self._env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[Any] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "flip_cli.main", *self._args]
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, our own arguments
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=self._env
        )

    def exit_code(self) -> int | None:
        """None while the hub runs, else its exit status."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 40) -> str:
        text = tail(self.log_path, lines)
        return text or f"(the {self.name} wrote nothing)"

    def wait_for_health(
        self,
        base_url: str,
        path: str,
        timeout_s: float,
        ready: Callable[[dict[str, Any]], bool] = lambda _: True,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Poll ``GET path`` until it answers 200 with a body ``ready`` accepts; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        with httpx.Client(base_url=base_url, timeout=2.0, headers=dict(headers or {})) as http:
            while time.monotonic() < deadline:
                code = self.exit_code()
                if code is not None:
                    raise DemoError(f"the {self.name} exited with status {code} during start-up:\n{self.log_tail()}")
                try:
                    response = http.get(path)
                    body: dict[str, Any] = response.json()
                    if response.status_code == 200 and ready(body):
                        return body
                    last = f"status {response.status_code}"
                except (httpx.HTTPError, ValueError) as exc:
                    last = type(exc).__name__
                time.sleep(0.25)
        raise DemoError(f"the {self.name} did not become healthy within {timeout_s:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace_s`` for a clean shutdown, then SIGKILL (idempotent)."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


class HubProcess(ChildProcess):
    """``flip hub serve`` on loopback."""

    name = "hub"

    def __init__(self, *, port: int, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(args=["hub", "serve", "--host", LOOPBACK, "--port", str(port)], env=env, log_path=log_path)
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"

    def wait_healthy(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll ``GET /api/health`` until it answers 200; fail early if the process exits."""
        return self.wait_for_health(self.url, "/api/health", timeout_s)


class TrustAgentProcess(ChildProcess):
    """``flip trust serve --kit KIT``: one hospital's agent, dialling out to the hub."""

    name = "trust agent"

    def __init__(self, *, kit: Path, state_dir: Path, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(
            args=["trust", "serve", "--kit", str(kit), "--state-dir", str(state_dir)], env=env, log_path=log_path
        )


class DataAccessProcess(ChildProcess):
    """``flip trust data-access serve``: one hospital's data-access-api on a loopback port."""

    name = "data-access-api"

    def __init__(
        self, *, kit: Path, omop_url: str, state_dir: Path, port: int, env: Mapping[str, str], log_path: Path
    ) -> None:
        env = {**env, "FLIP_DATA_ACCESS_OMOP_URL": omop_url}  # a secret: in the environment, not argv
        super().__init__(
            args=[
                "trust",
                "data-access",
                "serve",
                "--kit",
                str(kit),
                "--state-dir",
                str(state_dir),
                "--port",
                str(port),
            ],
            env=env,
            log_path=log_path,
        )
        self.url = f"http://{LOOPBACK}:{port}"

    def wait_healthy(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll ``GET /health`` until the service and its OMOP database answer."""
        return self.wait_for_health(self.url, "/health", timeout_s, ready=lambda body: body.get("omop") == "healthy")


class ImagingProcess(ChildProcess):
    """``flip trust imaging serve``: one hospital's imaging-api on a loopback port, importing from its PACS."""

    name = "imaging-api"

    def __init__(
        self,
        *,
        kit: Path,
        state_dir: Path,
        port: int,
        pacs_port: int,
        pacs_ae_title: str,
        data_access_url: str,
        labels: Path,
        env: Mapping[str, str],
        log_path: Path,
    ) -> None:
        super().__init__(
            args=[
                "trust",
                "imaging",
                "serve",
                "--kit",
                str(kit),
                "--state-dir",
                str(state_dir),
                "--port",
                str(port),
                "--pacs-port",
                str(pacs_port),
                "--pacs-ae-title",
                pacs_ae_title,
                "--data-access-url",
                data_access_url,
                "--labels",
                str(labels),
            ],
            env=env,
            log_path=log_path,
        )
        self.url = f"http://{LOOPBACK}:{port}"

    def wait_healthy(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll ``GET /health`` until the service, its PACS and its data-access-api answer."""
        return self.wait_for_health(self.url, "/health", timeout_s, ready=lambda body: body.get("status") == "healthy")


class FlNetProcess(ChildProcess):
    """``flip fl-net serve``: an FL net (a Flower SuperLink and its control API) on loopback ports."""

    name = "FL net"

    def __init__(
        self, *, name: str, state_dir: Path, port: int, hub_url: str, env: Mapping[str, str], log_path: Path
    ) -> None:
        super().__init__(
            args=[
                "fl-net",
                "serve",
                "--name",
                name,
                "--state-dir",
                str(state_dir),
                "--port",
                str(port),
                "--hub-url",
                hub_url,
            ],
            env=env,  # FLIP_NET_KEY travels in the environment, not argv
            log_path=log_path,
        )
        self.url = f"http://{LOOPBACK}:{port}"

    def wait_healthy(self, key: str, timeout_s: float = 90.0) -> dict[str, Any]:
        """Poll ``GET /health`` (with the net key) until the SuperLink runs."""
        return self.wait_for_health(
            self.url,
            "/health",
            timeout_s,
            ready=lambda body: body.get("status") == "healthy",
            headers={"X-FLIP-Internal-Key": key},
        )


def child_environment(*, database_url: str, state_dir: Path, public_url: str) -> dict[str, str]:
    """The hub child's environment: ours, pointed at the demo's database and state dir."""
    env = dict(os.environ)
    env.pop("FLIP_DATABASE_URL", None)
    env.update(
        {
            "DATABASE_URL": database_url,
            "FLIP_STATE_DIR": str(state_dir),
            "FLIP_HUB_PUBLIC_URL": public_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
