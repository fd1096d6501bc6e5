"""The run configuration of a FLIP job on Flower: what the hub sets, checked once, typed.

Flower's run config is flat and holds scalars only (bool, int, float, str), so lists and objects
travel as JSON strings: ``selected`` is a JSON array of trust codes, ``job_config`` a JSON object
handed to the researcher's code. Every key must also be declared, with its default, in the template's
``pyproject.toml`` (``[tool.flwr.app.config]``); Flower refuses overrides of undeclared keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

JobType = Literal["standard", "fed_opt", "evaluation"]
StrategyName = Literal["fedavg", "fedadam"]

JOB_TYPES: tuple[JobType, ...] = ("standard", "fed_opt", "evaluation")
# The aggregator each job type allows: FedAvg for plain training, server-side Adam for FedOpt.
STRATEGY_FOR_JOB: dict[JobType, StrategyName] = {"standard": "fedavg", "fed_opt": "fedadam", "evaluation": "fedavg"}
MAX_ROUNDS = 1000
TRUST_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class RunConfigError(ValueError):
    """The run config is invalid; the message names the key."""


@dataclass(frozen=True)
class AdamSettings:
    """Server-side Adam (FedAdam) hyper-parameters."""

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


@dataclass(frozen=True)
class JobSettings:
    """A FLIP job as the ServerApp and ClientApp read it from Flower's run config."""

    job_type: JobType
    strategy: StrategyName
    rounds: int
    selected: tuple[str, ...]
    min_clients: int
    round_timeout_s: float
    seed: int
    job_id: str = ""
    project_id: str = ""
    report_file: str = ""
    output_dir: str = ""
    checkpoint_path: str = ""
    bundle_sha256: str = ""
    final_evaluation: bool = True
    adam: AdamSettings = field(default_factory=AdamSettings)
    job_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run_config(cls, config: Mapping[str, bool | int | float | str]) -> JobSettings:
        """Parse and check Flower's run config; raises :class:`RunConfigError` naming the bad key."""
        job_type = _choice(config, "job_type", JOB_TYPES, "standard")
        strategy_raw = _text(config, "strategy", "")
        strategy = STRATEGY_FOR_JOB[job_type]
        if strategy_raw and strategy_raw != strategy:
            raise RunConfigError(
                f"strategy {strategy_raw!r} is not allowed for job type {job_type!r} (use {strategy!r})"
            )
        rounds = 1 if job_type == "evaluation" else _integer(config, "rounds", 1)
        if not 1 <= rounds <= MAX_ROUNDS:
            raise RunConfigError(f"rounds must be between 1 and {MAX_ROUNDS}, got {rounds}")
        selected = _trust_codes(_text(config, "selected", "[]"))
        min_clients = _integer(config, "min_clients", len(selected) or 1)
        if not 1 <= min_clients <= len(selected):
            raise RunConfigError(
                f"min_clients must be between 1 and the {len(selected)} selected trusts, got {min_clients}"
            )
        timeout = _number(config, "round_timeout_s", 600.0)
        if not 0 < timeout <= 7 * 24 * 3600:
            raise RunConfigError(f"round_timeout_s must be positive and at most a week, got {timeout}")
        adam = AdamSettings(
            lr=_number(config, "server_lr", AdamSettings.lr),
            beta1=_number(config, "beta1", AdamSettings.beta1),
            beta2=_number(config, "beta2", AdamSettings.beta2),
            tau=_number(config, "tau", AdamSettings.tau),
        )
        if not (adam.lr > 0 and 0 <= adam.beta1 < 1 and 0 <= adam.beta2 < 1 and adam.tau > 0):
            raise RunConfigError("server_lr and tau must be positive, beta1 and beta2 in [0, 1)")
        checkpoint = _text(config, "checkpoint_path", "")
        if job_type == "evaluation" and not checkpoint:
            raise RunConfigError("an evaluation job needs checkpoint_path (the uploaded checkpoint.pt)")
        return cls(
            job_type=job_type,
            strategy=strategy,
            rounds=rounds,
            selected=selected,
            min_clients=min_clients,
            round_timeout_s=timeout,
            seed=_integer(config, "seed", 0),
            job_id=_text(config, "job_id", ""),
            project_id=_text(config, "project_id", ""),
            report_file=_text(config, "report_file", ""),
            output_dir=_text(config, "output_dir", ""),
            checkpoint_path=checkpoint,
            bundle_sha256=_text(config, "bundle_sha256", ""),
            final_evaluation=_boolean(config, "final_evaluation", True),
            adam=adam,
            job_config=_json_object(_text(config, "job_config", "{}")),
        )

    def lineage_params(self) -> dict[str, Any]:
        """The parameters that shape the result, as written to ``lineage.json``."""
        params: dict[str, Any] = {
            "job_type": self.job_type,
            "strategy": self.strategy,
            "rounds": self.rounds,
            "min_clients": self.min_clients,
            "round_timeout_s": self.round_timeout_s,
            "seed": self.seed,
            "final_evaluation": self.final_evaluation,
            "job_config": dict(self.job_config),
        }
        if self.strategy == "fedadam":
            params["server_optimizer"] = {
                "lr": self.adam.lr,
                "beta1": self.adam.beta1,
                "beta2": self.adam.beta2,
                "tau": self.adam.tau,
            }
        return params


def _get(config: Mapping[str, bool | int | float | str], key: str, default: bool | int | float | str) -> object:
    return config.get(key, default)


def _text(config: Mapping[str, bool | int | float | str], key: str, default: str) -> str:
    value = _get(config, key, default)
    if not isinstance(value, str):
        raise RunConfigError(f"{key} must be a string")
    return value.strip()


def _choice(
    config: Mapping[str, bool | int | float | str], key: str, allowed: tuple[JobType, ...], default: JobType
) -> JobType:
    value = _text(config, key, default)
    for option in allowed:
        if value == option:
            return option
    raise RunConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def _integer(config: Mapping[str, bool | int | float | str], key: str, default: int) -> int:
    value = _get(config, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RunConfigError(f"{key} must be an integer")
    return value


def _number(config: Mapping[str, bool | int | float | str], key: str, default: float) -> float:
    value = _get(config, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RunConfigError(f"{key} must be a finite number")
    return float(value)


def _boolean(config: Mapping[str, bool | int | float | str], key: str, default: bool) -> bool:
    value = _get(config, key, default)
    if not isinstance(value, bool):
        raise RunConfigError(f"{key} must be true or false")
    return value


def _trust_codes(raw: str) -> tuple[str, ...]:
    try:
        codes = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RunConfigError("selected must be a JSON array of trust codes") from exc
    if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
        raise RunConfigError("selected must be a non-empty JSON array of trust codes")
    bad = [c for c in codes if not TRUST_CODE.match(c)]
    if bad:
        raise RunConfigError(f"selected holds invalid trust codes: {', '.join(map(repr, bad[:3]))}")
    if len(set(codes)) != len(codes):
        raise RunConfigError("selected names a trust twice")
    return tuple(codes)


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise RunConfigError("job_config must be a JSON object") from exc
    if not isinstance(value, dict):
        raise RunConfigError("job_config must be a JSON object")
    return value
