"""The ``flip`` command: one entry point, with sub-commands per role.

    flip hub serve                 run the hub API (embedded PostgreSQL when DATABASE_URL is unset)
    flip admin create-user         operator bootstrap: users (e.g. the first Admin)
    flip admin grant-role          add a global role, or a Trust Admin grant at one trust
    flip admin register-trust      register a trust and write its kit (mode 0600)
    flip audit verify              recompute the audit log's hash chain
    flip trust serve --kit FILE    run a trust agent (outbound only: long-polls the hub for work)
    flip fl-net serve              run an FL net (Flower SuperLink + the control API the hub drives)
    flip demo                      the end-to-end walkthrough on embedded defaults

Configuration comes from the environment (``DATABASE_URL``, ``FLIP_STATE_DIR``, ``FLIP_*``; see
``.env.development``).

Exit codes (every sub-command):

    0  success
    1  failure at runtime (a demo phase failed, the hub stopped unexpectedly, interrupted)
    2  usage error (bad or missing option, invalid value, weak password)
    3  configuration error (bad or missing settings, unreachable or uninitialised database, bad kit)
    4  audit chain verification failed (the log was tampered with)
    5  conflict or not found on an admin action (duplicate trust or email, unknown user or trust,
       kit file already exists)
"""

from __future__ import annotations

import click

from flip_cli.admin import admin
from flip_cli.audit import audit
from flip_cli.demo import demo
from flip_cli.errors import EXIT_CODE_TABLE
from flip_cli.fl_net import fl_net
from flip_cli.hub import hub
from flip_cli.trust import trust


@click.group(epilog=EXIT_CODE_TABLE, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="flip-cli", prog_name="flip")
def cli() -> None:
    """FLIP — federated learning and interoperability platform."""


cli.add_command(hub)
cli.add_command(admin)
cli.add_command(audit)
cli.add_command(demo)
cli.add_command(trust)
cli.add_command(fl_net)


def main() -> None:
    """Console-script entry point (``flip``)."""
    cli()


if __name__ == "__main__":
    main()
