"""FLIP's ServerApp (immutable template): the rounds, the selected trusts, the result.

The logic lives in :mod:`flip_fl.flower.serverapp`, installed on the FL server; this file only wires
it into Flower. It is part of every bundle and overrides any researcher file of the same name.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flip_fl.flower.serverapp import run_job

APP_DIR = Path(__file__).resolve().parent

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the FLIP job described by the run config."""
    run_job(grid, context, APP_DIR)
