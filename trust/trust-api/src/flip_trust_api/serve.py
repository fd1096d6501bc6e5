"""Running the agent as a process: logging, signals, and announcing the ``/health`` address.

``run_agent`` is what ``flip trust serve`` calls.  It returns when the agent was asked to stop
(SIGTERM or SIGINT; a second signal skips the grace period for running tasks) and raises
:class:`~flip_trust_api.errors.AgentConfigError` when the operator has something to fix.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Callable

from flip_core.contract import TrustKit
from flip_core.logging import configure_logging
from flip_trust_api.agent import Agent
from flip_trust_api.config import AgentSettings, load_kit
from flip_trust_api.errors import AgentError
from flip_trust_api.handlers import HandlerRegistry

log = logging.getLogger(__name__)

HEALTH_ANNOUNCEMENT = "trust agent health endpoint:"
"""Start of the stdout line that gives the ``/health`` URL (its port is chosen at start when 0)."""


_CHATTY_LOGGERS = ("httpx", "httpcore", "uvicorn.error")


def _announce(line: str) -> None:
    print(line, flush=True)


def run_agent(settings: AgentSettings) -> None:
    """Load the kit and run the agent in this process until SIGTERM/SIGINT."""
    configure_logging("flip-trust-api", settings.log_level, json_output=settings.log_json)
    for chatty in _CHATTY_LOGGERS:  # a line per hub request or server start is noise; the agent logs what matters
        logging.getLogger(chatty).setLevel(logging.WARNING)
    kit = load_kit(settings.kit_file)
    if not _is_loopback(settings.health_host):
        log.warning("/health listens beyond loopback", extra={"host": settings.health_host})
    asyncio.run(serve(settings, kit))


async def serve(
    settings: AgentSettings,
    kit: TrustKit,
    *,
    registry: HandlerRegistry | None = None,
    announce: Callable[[str], None] = _announce,
) -> None:
    """Run one agent with SIGTERM/SIGINT wired to a graceful stop; print the ``/health`` URL once it listens.

    ``registry`` replaces the built-in task handlers (a site embedding the agent with its own handlers).
    """
    agent = Agent(settings, kit, registry=registry)
    loop = asyncio.get_running_loop()
    handled = (signal.SIGINT, signal.SIGTERM)
    for sig in handled:
        loop.add_signal_handler(sig, agent.request_stop)
    try:
        runner = asyncio.create_task(agent.run(), name="trust-agent")
        listening = asyncio.create_task(agent.health_ready.wait())
        await asyncio.wait({runner, listening}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if agent.health_ready.is_set():
            announce(f"{HEALTH_ANNOUNCEMENT} {agent.health_url}")
        await runner
    except AgentError:
        raise
    except Exception:
        log.exception("the trust agent crashed")
        raise
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
