"""A trust's ClientApp executor: Flower's SuperExec, kept warm.

In ``subprocess`` isolation a SuperNode has Flower's SuperExec start a new ``flwr-clientapp`` program
for every instruction it receives. Each one pays for starting Python, ``import torch, flwr`` (4 to 7 s
on two cores) and torch's lazy imports at the first optimiser step before the researcher's ``train``
runs, every round. With a SuperNode in ``process`` isolation this executor takes the SuperExec's place
on the SuperNode's Runtime API (loopback): it imports what every ClientApp needs once, then asks for
ClientApp tasks and runs each in a child forked from itself. Every instruction still gets a process of
its own that ends with it (nothing the researcher's code does carries over to the next round or job),
without the cost of starting one.

Forking is only safe while no other Python thread runs, so nothing here starts one, and if an imported
module did, tasks are started as Flower starts them (``flwr-clientapp`` as a new program) instead.
Children get this process's PID as their parent and stop when it does; the executor exits when its
SuperNode does (``--parent-pid``) and stops its children on SIGTERM.

The SuperNode and the executor share a secret (``--superexec-auth-secret-file`` and
``--auth-secret-file``): the SuperNode hands tasks, and with them the global model, only to calls signed
with it, so another local process that finds the loopback port gets nothing.

Run it as ``python -m flip_fl.flower.executor --runtime-api-address HOST:PORT --parent-pid PID
--auth-secret-file FILE``; :class:`~flip_fl.flower.net.SuperNodeProcess` does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import httpx
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import RetryInvoker, constant
from flwr.supercore.runtime import RuntimeHttpClient

from flip_fl.flower.net import flower_executable
from flip_fl.flower.proctree import is_alive

logger = logging.getLogger("flip_fl.flower.executor")

# Imported once, before any fork: what FLIP's ClientApp and a typical trainer load. Optional ones are
# skipped when not installed. torch._dynamo is what torch imports lazily at the first optimiser step.
PRELOAD = (
    "numpy",
    "torch",
    "torch.nn",
    "torch.optim",
    "torch._dynamo",
    "flwr.app",
    "flwr.clientapp",
    "flwr.supernode.runtime.run_clientapp",
    "flip",
    "flip_fl.flower.clientapp",
)
OPTIONAL_PRELOAD = ("pandas", "monai", "monai.networks.nets", "monai.losses", "monai.metrics", "nibabel")
PRELOAD_ENV = "FLIP_FL_PRELOAD"  # more modules to import up front, comma-separated
CLIENT_APP_TASK = "flwr-clientapp"
ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"
DEFAULT_POLL_S = 0.1


def preload(extra: Sequence[str] = ()) -> list[str]:
    """Import the modules every ClientApp needs; returns those that could not be imported."""
    missing = []
    for name in (*PRELOAD, *OPTIONAL_PRELOAD, *extra):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    required = [name for name in missing if name in PRELOAD]
    if required:
        raise ImportError(f"cannot import {', '.join(required)}")
    return missing


def can_fork() -> bool:
    """Whether forking is safe here: POSIX, and no Python thread besides this one.

    Native worker pools of numerical libraries (OpenBLAS, started by ``import numpy``) may exist; they
    re-create themselves in the child through their own fork handlers, as they do under
    ``multiprocessing``'s fork start method.
    """
    return hasattr(os, "fork") and threading.active_count() == 1


class Executor:
    """Acquire ClientApp tasks from a SuperNode's Runtime API and run each in a fresh process."""

    def __init__(
        self,
        runtime_api_address: str,
        *,
        poll_s: float = DEFAULT_POLL_S,
        fork: bool = True,
        auth_secret: bytes | None = None,
    ) -> None:
        self.address = runtime_api_address
        self.poll_s = poll_s
        self.fork = fork
        self.children: dict[int, float] = {}
        self.refused = False
        self._stopping = False
        # One try per poll: the loop itself retries, and must stay free to notice a stop or a gone SuperNode.
        # (Flower's own HTTP retry policy also interrupts its process on a 401; a refusal is raised here.)
        retry_invoker = RetryInvoker(constant, (), max_tries=1, max_time=None)
        interceptors: list[ProtobufClientInterceptor] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if auth_secret is not None:
            # Signed with the secret the SuperNode was started with: only this executor may claim its tasks.
            interceptors.append(
                SuperExecAuthHttpInterceptor(master_secret=auth_secret, protected_methods=[ACQUIRE_TASK])
            )
        self._client = RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address,
            insecure=True,
            root_certificates=None,
            interceptors=interceptors,
            retry_invoker=retry_invoker,
        )

    def acquire(self) -> str | None:
        """The token of a ClientApp task waiting on the SuperNode, if there is one."""
        response = self._client.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK]))
        if response.HasField("task") and response.token:
            if response.task.type != CLIENT_APP_TASK:
                logger.error("the SuperNode handed over a %r task; only ClientApps run here", response.task.type)
                return None
            return str(response.token)
        return None

    def launch(self, token: str) -> int:
        """Run one task in a new process; returns its PID."""
        forked = self.fork and can_fork()
        if forked:
            pid = os.fork()
            if pid == 0:  # the child: run the task, never return into the loop
                _run_task_and_exit(self.address, token, os.getppid())
        else:
            argv = [flower_executable("flwr-clientapp"), "--runtime-api-address", self.address, "--token", token]
            argv += ["--insecure", "--parent-pid", str(os.getpid())]
            pid = subprocess.Popen(argv).pid  # noqa: S603 - fixed argv, no shell
        self.children[pid] = time.monotonic()
        logger.info("task started in process %d (%s)", pid, "forked" if forked else "spawned")
        return pid

    def reap(self) -> None:
        """Collect the children that ended."""
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                started = self.children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                logger.info("task process %d ended with %d after %.1f s", pid, code, time.monotonic() - started)

    def serve(self, parent_pid: int | None = None) -> None:
        """Poll for tasks until stopped or until ``parent_pid`` is gone."""
        unreachable = False
        while not self._stopping:
            if parent_pid is not None and not is_alive(parent_pid):
                logger.info("the SuperNode (%d) is gone; stopping", parent_pid)
                break
            self.reap()
            try:
                token = self.acquire()
            except Exception as exc:  # the SuperNode not up yet, or restarting: said once per outage
                status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
                if status in (401, 403):  # not the SuperNode's secret: nothing here will heal that
                    logger.error("the SuperNode refuses this executor (HTTP %d); exiting", status)
                    self.refused = True
                    break
                if not unreachable:
                    logger.warning("cannot reach the SuperNode's Runtime API at %s: %s", self.address, exc)
                unreachable = True
                time.sleep(1.0)
                continue
            if unreachable:
                logger.info("reached the SuperNode's Runtime API at %s", self.address)
                unreachable = False
            if token is not None:
                self.launch(token)
                continue
            time.sleep(self.poll_s)
        self.stop_children()

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def stop_children(self, grace_s: float = 5.0) -> None:
        """SIGTERM every running task, then SIGKILL those still running after ``grace_s``."""
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in self.children:
            _signal(pid, signal.SIGKILL)
        self.reap()
        self._client.close()


def _run_task_and_exit(address: str, token: str, parent_pid: int) -> None:
    """In a forked child: run the ClientApp task as ``flwr-clientapp`` would, then leave the process."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(runtime_api_address=address, token=token, insecure=True, parent_pid=parent_pid)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        logger.exception("the ClientApp task failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flip_fl.flower.executor", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    parser.add_argument("--parent-pid", type=int, help="stop when this process (the SuperNode) is gone")
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_S, help="seconds between polls")
    parser.add_argument("--no-fork", action="store_true", help="start every task as a new flwr-clientapp")
    parser.add_argument(
        "--auth-secret-file", help="the SuperNode's --superexec-auth-secret-file: AcquireTask calls are signed with it"
    )
    args = parser.parse_args(argv)
    try:
        secret = Path(args.auth_secret_file).read_bytes() if args.auth_secret_file else None
    except OSError as exc:
        parser.error(f"cannot read --auth-secret-file: {exc.strerror}")
    if secret == b"":
        parser.error("--auth-secret-file is empty")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.monotonic()
    extra = [name.strip() for name in os.environ.get(PRELOAD_ENV, "").split(",") if name.strip()]
    try:
        missing = preload(extra) if not args.no_fork else []
    except ImportError as exc:
        logger.error("%s; tasks will start as new flwr-clientapp processes", exc)
        args.no_fork, missing = True, []
    executor = Executor(args.runtime_api_address, poll_s=args.poll_interval, fork=not args.no_fork, auth_secret=secret)
    if executor.fork and not can_fork():
        logger.warning("another thread runs here: tasks will start as new flwr-clientapp processes")
    logger.info(
        "ready in %.1f s (%s); not installed: %s",
        time.monotonic() - started,
        "forking" if executor.fork and can_fork() else "spawning",
        ", ".join(missing) or "none",
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        executor.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    executor.serve(args.parent_pid)
    return 1 if executor.refused else 0


if __name__ == "__main__":
    sys.exit(main())
