"""``flip audit``: check the hash chain of the hub's audit log."""

from __future__ import annotations

import json

import click

from flip_api.services.audit import VerifyReport, verify_chain
from flip_cli.database import load_settings, open_hub_database
from flip_cli.errors import AuditChainBroken


@click.group()
def audit() -> None:
    """The append-only, hash-chained audit log."""


def report_as_dict(report: VerifyReport) -> dict[str, object]:
    """The machine-readable form printed by ``flip audit verify --json``."""
    return {
        "ok": report.ok,
        "entries": report.entries,
        "head_hash": report.head_hash,
        "problems": [{"seq": p.seq, "problem": p.problem} for p in report.problems],
    }


@audit.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(as_json: bool) -> None:
    """Recompute every entry's hash; exit 4 if any entry was altered, removed or re-linked."""
    with open_hub_database(load_settings(), prepare=False) as hub_db:
        report = hub_db.run(verify_chain)
    if as_json:
        click.echo(json.dumps(report_as_dict(report), indent=2))
    else:
        click.echo(f"entries:   {report.entries}")
        click.echo(f"head hash: {report.head_hash}")
        for problem in report.problems:
            click.echo(f"problem:   seq {problem.seq}: {problem.problem}")
        click.echo("chain OK" if report.ok else f"chain BROKEN ({len(report.problems)} problem(s))")
    if not report.ok:
        # The report is already on stdout; the exception only sets the exit status.
        raise AuditChainBroken("audit chain verification failed")
