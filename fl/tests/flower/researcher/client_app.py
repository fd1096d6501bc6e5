"""The test researcher's trainer: synthetic points from the seed and the trust code, a marker per call.

``config`` (from ``job_config``) may hold ``marker_dir`` (each call appends a line to a file named
after the trust there), ``fail_trusts`` (trusts whose ``train`` raises), ``exit_trusts`` (trusts whose
ClientApp process dies in the middle of ``train``, as a trust that drops mid-round) and ``sleep_s`` (a
slow trainer, for the stop test).
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path
from typing import Any

import torch

POINTS = 300


def _data(trust: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed * 100_003 + zlib.crc32(trust.encode()))
    x = torch.randn(POINTS, 4, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] - 0.25 * x[:, 2] > 0).long()
    return x, y


def _mark(config: dict[str, Any], phase: str) -> None:
    marker_dir = config.get("marker_dir")
    if marker_dir:
        Path(marker_dir).mkdir(parents=True, exist_ok=True)
        with (Path(marker_dir) / config["trust"]).open("a") as out:
            out.write(f"{phase} round={config['round']}\n")


def _score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return {"loss": loss, "accuracy": accuracy, "num_examples": float(len(y))}


def train(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, float]:
    _mark(config, "train")
    if config["trust"] in config.get("fail_trusts", []):
        raise RuntimeError("synthetic failure quoting patient 1234567890")
    if config["trust"] in config.get("exit_trusts", []):
        os._exit(1)  # no reply, no exception: the process is simply gone
    time.sleep(float(config.get("sleep_s", 0)))
    x, y = _data(config["trust"], int(config["seed"]))
    optimiser = torch.optim.SGD(model.parameters(), lr=float(config.get("lr", 0.1)))
    for _ in range(int(config.get("epochs", 5))):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return _score(model, x, y)


def evaluate(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, float]:
    _mark(config, "evaluate")
    x, y = _data(config["trust"], int(config["seed"]) + 1)
    return _score(model, x, y)
