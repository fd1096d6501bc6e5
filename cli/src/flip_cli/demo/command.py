"""``flip demo``: run the product walkthrough on embedded defaults, then keep the hub up to explore.

The runner executes :data:`~flip_cli.demo.phases.PHASES` in order, records each phase's outcome in a
JSON summary, and stops every process it started — by PID, on every exit path (success, failure,
Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

from flip_api.core.config import HubSettings
from flip_cli.demo.context import DemoContext, Phase
from flip_cli.demo.errors import DemoError
from flip_cli.demo.phases import PHASES
from flip_cli.errors import ExitCode, config_error, translate_errors

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived; raised in the main thread so that cleanup runs as for Ctrl-C."""


@dataclass(frozen=True)
class DemoOptions:
    exit_when_done: bool
    summary_path: Path | None
    port: int | None
    state_dir: Path | None


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    def raise_interrupted(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, raise_interrupted) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """While children are being stopped, a second Ctrl-C must not abandon them half-way."""
    sigs = (signal.SIGINT, *_STOP_SIGNALS)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_phases(ctx: DemoContext, phases: Sequence[Phase], summary: dict[str, Any]) -> bool:
    """Run ``phases`` in order; record each outcome in ``summary``; stop at the first failure."""
    for index, phase in enumerate(phases, start=1):
        click.secho(f"[{index}/{len(phases)}] {phase.title}", bold=True)
        started = time.monotonic()
        try:
            details = phase.run(ctx)
        except (KeyboardInterrupt, Interrupted) as exc:
            reason = f"interrupted ({exc or 'SIGINT'})"
            _record_failure(ctx, summary, phase, phases[index:], reason, started)
            return False
        except DemoError as exc:
            _record_failure(ctx, summary, phase, phases[index:], str(exc), started)
            return False
        except Exception as exc:
            _save_traceback(ctx)
            _record_failure(ctx, summary, phase, phases[index:], f"{type(exc).__name__}: {exc}", started)
            return False
        summary[phase.name] = {"status": "ok", **details, "duration_s": round(time.monotonic() - started, 2)}
    return True


def _record_failure(
    ctx: DemoContext, summary: dict[str, Any], phase: Phase, rest: Sequence[Phase], error: str, started: float
) -> None:
    summary[phase.name] = {"status": "failed", "error": error, "duration_s": round(time.monotonic() - started, 2)}
    for later in rest:
        summary[later.name] = {"status": "skipped"}
    click.secho(f"    FAILED: {error}", fg="red", err=True)
    if ctx.hub is not None and phase.name != "hub":
        click.echo(f"--- last lines of the hub log ({ctx.hub.log_path}) ---", err=True)
        click.echo(ctx.hub.log_tail(20), err=True, nl=False)


def _save_traceback(ctx: DemoContext) -> None:
    path = ctx.state_dir / "logs" / "demo-error.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc(), encoding="utf-8")
        click.echo(f"    (traceback saved to {path})", err=True)
    except OSError:
        traceback.print_exc()


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write the summary JSON atomically (a reader never sees half a file)."""
    path = path.expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _show_access(ctx: DemoContext) -> None:
    click.secho("\nThe hub is up. Explore it:", bold=True)
    click.echo(f"  hub URL:   {ctx.hub_url}")
    click.echo(f"  API docs:  {ctx.hub_url}/api/docs")
    click.echo("  sign-in (demo accounts only; a real deployment never prints passwords or TOTP secrets):")
    for person in ctx.users.values():
        secret = person.session.totp_secret if person.session is not None else None
        click.echo(f"    {person.role:<12} {person.email:<40} password {person.password}   TOTP secret {secret}")
    for trust in ctx.trusts.values():
        click.echo(f"  trust kit {trust.code}: {trust.kit_path}")
    click.echo(f"  state dir: {ctx.state_dir}")


def _wait_for_interrupt(ctx: DemoContext) -> ExitCode:
    hub = ctx.require_hub()
    click.echo("\nPress Ctrl-C to stop the hub and PostgreSQL.")
    try:
        while (code := hub.exit_code()) is None:
            time.sleep(0.5)
    except (KeyboardInterrupt, Interrupted):
        click.echo("")
        return ExitCode.OK
    click.secho(f"The hub exited unexpectedly with status {code}:", fg="red", err=True)
    click.echo(hub.log_tail(30), err=True, nl=False)
    return ExitCode.FAILURE


def _final_line(summary: dict[str, Any]) -> str:
    project, audit, cohort = summary.get("project", {}), summary.get("audit", {}), summary.get("cohort", {})
    decided = ", ".join(f"{d['trust']} ({d['decided_as']})" for d in project.get("decisions", []))
    imaging = summary.get("imaging", {}).get("trusts", {})
    ready = ", ".join(f"{code} {(t['by_state']['READY'].get('value') or '<10')}" for code, t in sorted(imaging.items()))
    files = summary.get("models", {}).get("files", {})
    clean, blocked = (sum(1 for s in files.values() if s == state) for state in ("CLEAN", "BLOCKED"))
    dice = summary.get("training", {}).get("final_dice", {})
    trained = ", ".join(f"{code} {value:.2f}" for code, value in sorted(dice.items()) if value is not None)
    return (
        f"Demo finished in {summary['duration_s']} s: cohort of {cohort.get('total')} persons across trusts; "
        f"project {project.get('project_status')} at {decided} with frozen cohorts; "
        f"imaging READY for {ready or 'no'} patients; "
        f"model with {clean} clean files and {blocked} blocked; "
        f"segmentation trained for 3 rounds on Flower (held-out Dice {trained or 'n/a'}); "
        f"{audit.get('entries')} audit entries, chain intact."
    )


def _prepare_state_dir(requested: Path | None) -> tuple[Path, bool]:
    if requested is None:
        return Path(tempfile.mkdtemp(prefix="flip-demo-")), True
    path = requested.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise config_error(f"cannot use --state-dir {path}: {exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise config_error(f"--state-dir {path} is not writable")
    return path, False


def run_demo(options: DemoOptions) -> ExitCode:
    """The whole walkthrough; returns the exit code. Every child started is stopped before returning."""
    started = time.monotonic()
    state_dir, temporary = _prepare_state_dir(options.state_dir)
    with translate_errors():
        settings = HubSettings(state_dir=state_dir)
    summary: dict[str, Any] = {"status": "failed", "state_dir": str(state_dir)}
    result = ExitCode.FAILURE
    click.echo(f"FLIP demo — state in {state_dir}" + (" (temporary)" if temporary else ""))
    with _stop_signals_raise(), ExitStack() as stack:
        ctx = DemoContext(state_dir=state_dir, requested_port=options.port, stack=stack, settings=settings)
        try:
            ok = run_phases(ctx, PHASES, summary)
            summary["status"] = "ok" if ok else "failed"
            summary["duration_s"] = round(time.monotonic() - started, 2)
            if options.summary_path is not None:
                write_summary(options.summary_path, summary)
                click.echo(f"Summary written to {options.summary_path}")
            if not ok:
                click.secho("Demo failed.", fg="red", err=True)
                return result
            click.secho(_final_line(summary), fg="green")
            if options.exit_when_done:
                result = ExitCode.OK
            else:
                _show_access(ctx)
                result = _wait_for_interrupt(ctx)
            return result
        except (KeyboardInterrupt, Interrupted):
            click.echo("\ninterrupted", err=True)
            return ExitCode.FAILURE
        finally:
            with _signals_ignored():
                click.echo("Stopping the hub and PostgreSQL...")
                stack.close()
                if temporary and result is ExitCode.OK:
                    shutil.rmtree(state_dir, ignore_errors=True)
                elif temporary:
                    click.echo(f"State kept for inspection in {state_dir}", err=True)


@click.command()
@click.option("--exit-when-done", is_flag=True, help="Stop everything after the walkthrough instead of staying up.")
@click.option(
    "--summary",
    "summary_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a JSON summary of every phase to this file.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Hub port [default: a free one].")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where PostgreSQL data, kits and logs go [default: a fresh temporary directory].",
)
def demo(exit_when_done: bool, summary_path: Path | None, port: int | None, state_dir: Path | None) -> None:
    """Walk through FLIP end to end on embedded defaults.

    Starts PostgreSQL and the hub on loopback, creates a hub admin, a researcher and a Trust Admin,
    registers three trusts, each with synthetic OMOP data, a data-access-api, a seeded PACS, an
    imaging-api and an agent, and signs everyone in with MFA.  The researcher runs a cohort query at
    every trust (gated counts), stages a project that one trust's own admin and the hub admin (for
    another trust) approve, and approves an imaging project whose studies each trust imports from its
    PACS.  An admin then registers an FL net, and the researcher trains the segmentation tutorial on it
    for 3 rounds across the approving trusts (on CPU) and downloads the model and its lineage.
    Finishes by verifying the audit chain.  Exit 1 if any phase fails.
    """
    code = run_demo(DemoOptions(exit_when_done, summary_path, port, state_dir))
    if code is not ExitCode.OK:
        raise click.exceptions.Exit(int(code))
