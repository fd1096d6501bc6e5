"""The FL server's side of a FLIP job on Flower: who takes part, the rounds, the result.

Only the selected trusts ever get a message. The ServerApp learns which SuperNode is which trust from
the SuperLink's node registry, without asking any node: each trust's SuperNode authenticates with its
own key pair, and the hub registers that public key under the trust's code (``flwr supernode register
KEY --name CODE``), so ``Grid.get_nodes()`` reports ``NodeInfo.name == CODE``. Nodes that are not
selected (or carry no name) are never addressed, so they never see the run, its app bundle (FAB) or
its weights. Each instruction also names the trust it is meant for, and FLIP's ClientApp refuses one
addressed to another trust before running any researcher code.

A round sends the global model to every selected trust that is online, waits at most
``round_timeout_s`` and goes on with the replies that came if there are at least ``min_clients``;
otherwise the run fails with a reason saying so. Updates are averaged with
:func:`flip_fl.aggregate.fedavg` (weighted by ``num_examples``); for FedOpt, server-side Adam moves
the global model along the averaged delta.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import flwr
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from numpy.typing import NDArray

from flip_fl.aggregate import AggregationError, Update, fedavg
from flip_fl.flower import protocol
from flip_fl.flower.events import (
    Metrics,
    Reporter,
    RoundCompleted,
    RoundStarted,
    RunCompleted,
    RunFailed,
    RunStarted,
    TrustDropped,
    sanitise,
)
from flip_fl.flower.fedopt import ServerAdam
from flip_fl.flower.researcher import researcher_module, seed_everything
from flip_fl.flower.runconfig import JobSettings, RunConfigError
from flip_fl.flower.weights import Weights, WeightsMismatch, check_like, from_record, from_state_dict, to_record

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
LINEAGE_FILE = "lineage.json"
POLL_INTERVAL_S = 0.2
# Flower's own error codes, named without their free-text reason (it can quote researcher code).
_FLOWER_ERRORS = {
    1: "client app could not be loaded",
    2: "client app raised",
    3: "message unavailable",
    4: "reply unavailable",
    5: "node unavailable",
    7: "invalid app bundle",
    8: "client app crashed",
}

Phase = Literal["train", "evaluate"]


class RunFailure(Exception):
    """The run cannot go on; ``reason`` is short and safe to show."""

    def __init__(self, reason: str, round_number: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.round_number = round_number


@dataclass
class _Run:
    settings: JobSettings
    reporter: Reporter
    job_id: str
    run_id: int
    history: list[dict[str, Any]] = field(default_factory=list)


def run_job(grid: Grid, context: Context, app_dir: Path) -> None:
    """Run the job the run config describes; report every step; raise if it fails."""
    config = context.run_config
    report_file = config.get("report_file", "")
    job_id = config.get("job_id", "")
    reporter = Reporter.from_env(report_file if isinstance(report_file, str) else "")
    job = str(job_id) if isinstance(job_id, str) else ""
    try:
        settings = JobSettings.from_run_config(config)
    except RunConfigError as exc:
        reporter.emit(RunFailed(job_id=job, run_id=context.run_id, reason=sanitise(f"invalid run config: {exc}")))
        raise
    run = _Run(settings, reporter, settings.job_id, context.run_id)
    try:
        _run(grid, run, app_dir)
    except RunFailure as failure:
        reporter.emit(
            RunFailed(job_id=run.job_id, run_id=run.run_id, reason=sanitise(failure.reason), round=failure.round_number)
        )
        raise
    except Exception as exc:
        # Anything unexpected: the type only; the details go to the FL server's log.
        logger.exception("FLIP run %s failed", run.run_id)
        reporter.emit(RunFailed(job_id=run.job_id, run_id=run.run_id, reason=f"server error: {type(exc).__name__}"))
        raise


def _run(grid: Grid, run: _Run, app_dir: Path) -> None:
    s = run.settings
    nodes = _wait_for_trusts(grid, s.selected, s.round_timeout_s)
    for trust in s.selected:
        if trust not in nodes:
            _drop(run, 0, trust, "offline")
    if len(nodes) < s.min_clients:
        raise RunFailure(
            f"{len(nodes)} of {len(s.selected)} selected trusts are online; min_clients is {s.min_clients}", 0
        )
    run.reporter.emit(
        RunStarted(
            job_id=run.job_id,
            run_id=run.run_id,
            job_type=s.job_type,
            strategy=s.strategy,
            rounds=s.rounds,
            min_clients=s.min_clients,
            selected=list(s.selected),
            participants=sorted(nodes),
            seed=s.seed,
        )
    )
    seed_everything(s.seed)
    model = _initial_model(app_dir, s)
    weights = from_state_dict(model.state_dict())
    completed = 0
    if s.job_type == "evaluation":
        _round(grid, run, 1, "evaluate", weights)
        completed = 1
    else:
        adam = ServerAdam(s.adam) if s.strategy == "fedadam" else None
        # A model's worth of arrays nothing uses any more (instructions carry copies): the next average
        # is written into them instead of into new memory.
        spare: Weights | None = None
        for number in range(1, s.rounds + 1):
            updates = _round(grid, run, number, "train", weights)
            averaged = _average(weights, updates, number, spare)
            if adam:
                weights, spare = adam.step(weights, averaged), averaged
            else:
                weights, spare = averaged, weights
            completed = number
        if s.final_evaluation:
            _round(grid, run, s.rounds, "evaluate", weights)
    model_file, lineage_file, digest = _write_outputs(run, weights, completed)
    for result in (model_file, lineage_file):
        if result and not run.reporter.upload(run.job_id, Path(result)):
            raise RunFailure(f"the result {Path(result).name} could not be uploaded to the hub", completed)
    run.reporter.emit(
        RunCompleted(
            job_id=run.job_id,
            run_id=run.run_id,
            rounds_completed=completed,
            model_file=model_file,
            lineage_file=lineage_file,
            model_sha256=digest,
        )
    )


def trust_nodes(grid: Grid, selected: tuple[str, ...]) -> dict[str, int]:
    """The online SuperNode of each selected trust, from the SuperLink's registry (no message sent)."""
    found: dict[str, list[int]] = {}
    for node in grid.get_nodes():
        name = node.name if node.HasField("name") else ""
        if name in selected:
            found.setdefault(name, []).append(node.node_id)
    twice = sorted(trust for trust, ids in found.items() if len(ids) > 1)
    if twice:
        raise RunFailure(f"more than one SuperNode is registered as trust {', '.join(twice)}", 0)
    return {trust: ids[0] for trust, ids in found.items()}


def _wait_for_trusts(grid: Grid, selected: tuple[str, ...], wait_s: float) -> dict[str, int]:
    deadline = time.monotonic() + wait_s
    while True:
        nodes = trust_nodes(grid, selected)
        if len(nodes) == len(selected) or time.monotonic() >= deadline:
            return nodes
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _round(grid: Grid, run: _Run, number: int, phase: Phase, weights: Weights) -> dict[str, tuple[Weights, Metrics]]:
    """One round at every online selected trust: the replies that came in time and were valid."""
    s = run.settings
    nodes = trust_nodes(grid, s.selected)
    for trust in s.selected:
        if trust not in nodes:
            _drop(run, number, trust, "offline")
    run.reporter.emit(
        RoundStarted(job_id=run.job_id, run_id=run.run_id, round=number, phase=phase, trusts=sorted(nodes))
    )
    record = to_record(weights)
    instructions = {trust: _instruction(node, phase, number, trust, record, s) for trust, node in nodes.items()}
    replies = _exchange(grid, instructions, s.round_timeout_s)
    results: dict[str, tuple[Weights, Metrics]] = {}
    for trust in sorted(nodes):
        reply = replies.get(trust)
        if reply is None:
            _drop(run, number, trust, f"no reply within {s.round_timeout_s:g}s")
            continue
        try:
            results[trust] = _read_reply(reply, phase, weights)
        except ValueError as exc:
            _drop(run, number, trust, str(exc))
    if len(results) < s.min_clients:
        raise RunFailure(
            f"round {number} ({phase}): {len(results)} of {len(s.selected)} selected trusts returned a result; "
            f"min_clients is {s.min_clients}",
            number,
        )
    metrics = {trust: m for trust, (_, m) in results.items()}
    aggregated = weighted_mean(metrics)
    run.reporter.emit(
        RoundCompleted(
            job_id=run.job_id, run_id=run.run_id, round=number, phase=phase, metrics=metrics, aggregated=aggregated
        )
    )
    run.history.append({"round": number, "phase": phase, "metrics": metrics, "aggregated": aggregated})
    return results


def _instruction(node: int, phase: Phase, number: int, trust: str, record: ArrayRecord, s: JobSettings) -> Message:
    config = ConfigRecord({"round": number, "trust": trust, "seed": s.seed, "job_type": s.job_type})
    content = RecordDict({protocol.WEIGHTS: record, protocol.CONFIG: config})
    return Message(content, node, phase, ttl=s.round_timeout_s, group_id=f"{phase}-{number}")


def _exchange(grid: Grid, instructions: Mapping[str, Message], timeout_s: float) -> dict[str, Message]:
    """Send the instructions and collect replies until all came or ``timeout_s`` passed."""
    if not instructions:
        return {}
    trusts = list(instructions)
    ids = list(grid.push_messages([instructions[t] for t in trusts]))
    pending = {message_id: trust for message_id, trust in zip(ids, trusts, strict=True) if message_id}
    replies: dict[str, Message] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        for reply in grid.pull_messages(list(pending)):
            trust = pending.pop(reply.metadata.reply_to_message_id, None)
            if trust is not None:
                replies[trust] = reply
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    return replies


def _read_reply(reply: Message, phase: Phase, reference: Weights) -> tuple[Weights, Metrics]:
    if reply.has_error():
        error = reply.error
        if error.code >= 1000:
            raise ValueError(sanitise(error.reason or "failed"))
        raise ValueError(_FLOWER_ERRORS.get(error.code, f"error code {error.code}"))
    content = reply.content
    if protocol.METRICS not in content.metric_records:
        raise ValueError("invalid reply: no metrics")
    metrics = _metrics(content.metric_records[protocol.METRICS])
    if phase == "evaluate":
        return {}, metrics
    if metrics.get(protocol.NUM_EXAMPLES, 0.0) <= 0:
        raise ValueError("invalid reply: num_examples must be positive")
    if protocol.WEIGHTS not in content.array_records:
        raise ValueError("invalid reply: no weights")
    try:
        update = check_like(from_record(content.array_records[protocol.WEIGHTS]), reference)
    except WeightsMismatch as exc:
        raise ValueError(f"invalid reply: {exc}") from exc
    for name, array in update.items():
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise ValueError(f"invalid reply: {name} is not finite")
    return update, metrics


def _metrics(record: MetricRecord) -> Metrics:
    out: Metrics = {}
    for key, value in record.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            out[key] = float(value)
    return out


def weighted_mean(metrics: Mapping[str, Metrics]) -> Metrics:
    """Each metric's mean over the trusts that report it, weighted by their ``num_examples``."""
    keys = sorted({k for m in metrics.values() for k in m})
    out: Metrics = {}
    for key in keys:
        if key == protocol.NUM_EXAMPLES:
            out[key] = float(sum(m.get(key, 0.0) for m in metrics.values()))
            continue
        pairs = [(m[key], m.get(protocol.NUM_EXAMPLES, 1.0)) for m in metrics.values() if key in m]
        total = sum(w for _, w in pairs)
        out[key] = sum(v * w for v, w in pairs) / total if total > 0 else sum(v for v, _ in pairs) / len(pairs)
    return out


def _average(
    weights: Weights, updates: Mapping[str, tuple[Weights, Metrics]], number: int, spare: Weights | None
) -> Weights:
    names = list(weights)
    try:
        arrays = fedavg(
            [
                Update(arrays=[update[n] for n in names], weight=metrics[protocol.NUM_EXAMPLES])
                for update, metrics in updates.values()
            ],
            out=[spare[n] for n in names] if spare is not None else None,
        )
    except AggregationError as exc:
        raise RunFailure(f"round {number}: the updates cannot be averaged ({exc})", number) from exc
    return dict(zip(names, arrays, strict=True))


def _drop(run: _Run, number: int, trust: str, reason: str) -> None:
    run.reporter.emit(
        TrustDropped(job_id=run.job_id, run_id=run.run_id, round=number, trust=trust, reason=sanitise(reason))
    )


def _initial_model(app_dir: Path, s: JobSettings) -> torch.nn.Module:
    """``models.get_model()``; for an evaluation job, with the uploaded checkpoint loaded."""
    model = researcher_module(app_dir, "models").get_model()
    if not isinstance(model, torch.nn.Module):
        raise RunFailure("models.get_model() must return a torch.nn.Module")
    if s.job_type == "evaluation":
        path = Path(s.checkpoint_path)
        if not path.is_file():
            raise RunFailure("the checkpoint file is missing")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise RunFailure(f"the checkpoint cannot be loaded into models.get_model(): {type(exc).__name__}") from exc
    return model


def library_versions() -> dict[str, str]:
    """The versions that a result depends on, for its lineage."""
    return {
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _write_outputs(run: _Run, weights: Mapping[str, NDArray[np.generic]], completed: int) -> tuple[str, str, str]:
    s = run.settings
    if not s.output_dir:
        return "", "", ""
    out = Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    torch.save({name: torch.from_numpy(np.array(a, copy=True)) for name, a in weights.items()}, model_path)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    lineage = {
        "job_id": run.job_id,
        "run_id": run.run_id,
        "bundle_sha256": s.bundle_sha256,
        "selected_trusts": list(s.selected),
        "rounds": s.rounds,
        "rounds_completed": completed,
        "strategy": s.strategy,
        "seed": s.seed,
        "params": s.lineage_params(),
        "metrics": run.history,
        "model": {"file": MODEL_FILE, "sha256": digest},
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    lineage_path = out / LINEAGE_FILE
    lineage_path.write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return str(model_path), str(lineage_path), digest
