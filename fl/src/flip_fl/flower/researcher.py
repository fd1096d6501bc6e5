"""What the server and client apps share about the researcher's code: importing it, and seeding it."""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators, so a run with the same seed repeats."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def researcher_module(app_dir: Path, name: str) -> Any:
    """Import one of the researcher's modules (``models``, ``client_app``) from the app directory."""
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    return importlib.import_module(name)
