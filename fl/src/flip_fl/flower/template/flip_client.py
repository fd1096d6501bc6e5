"""FLIP's ClientApp (immutable template): runs the researcher's ``train`` / ``evaluate`` at a trust.

The logic lives in :mod:`flip_fl.flower.clientapp`, installed at the trust; this file only wires it
into Flower. It is part of every bundle and overrides any researcher file of the same name.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flip_fl.flower.clientapp import handle

APP_DIR = Path(__file__).resolve().parent

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the global model on this trust's data."""
    return handle(message, context, APP_DIR)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the global model on this trust's data."""
    return handle(message, context, APP_DIR)
