"""The trust's side of a FLIP job on Flower: run the researcher's ``train`` / ``evaluate`` safely.

The researcher's bundle holds ``client_app.py`` (``train(model, config)`` and ``evaluate(model,
config)``, each returning a dict of float metrics; ``train`` must include ``num_examples``) and
``models.py`` (``get_model()``). Here the global model from the server is loaded into
``get_model()``, the researcher's function runs, and the metrics (and, after training, the weights)
go back.

Before any researcher code is imported, the instruction's trust code is compared with the
SuperNode's own (its node config ``trust``): an instruction meant for another trust is refused. A
failure in researcher code is logged here, at the trust, in full; the server only learns the
exception's type.

While the researcher's code runs, the trainer SDK (``flip``) knows the job's project, this trust and
the round, so ``flip.get_dataframe`` / ``flip.get_images`` read this trust's data; metrics logged with
``flip.log_metric`` are merged into the reply's metrics (the dict ``train`` / ``evaluate`` returned wins
a clash) before the usual checks.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, MetricRecord, MetricRecordValues, RecordDict

from flip.context import LoggedMetric, job_step
from flip_fl.flower import protocol
from flip_fl.flower.researcher import researcher_module, seed_everything
from flip_fl.flower.weights import from_record, from_state_dict, to_record, to_state_dict

logger = logging.getLogger(__name__)

USER_CONFIG_FILE = "config.json"


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def handle(message: Message, context: Context, app_dir: Path) -> Message:
    """Answer one ``train`` or ``evaluate`` instruction (a reply, or an error reply)."""
    phase = message.metadata.message_type
    try:
        content = _answer(message, context, app_dir, phase)
    except _Refused as refusal:
        return Message(Error(refusal.code, refusal.reason), reply_to=message)
    return Message(content, reply_to=message)


def _answer(message: Message, context: Context, app_dir: Path, phase: str) -> RecordDict:
    config = message.content.config_records[protocol.CONFIG]
    own = context.node_config.get(protocol.NODE_TRUST_KEY)
    addressed = config.get("trust")
    if not isinstance(own, str) or not own or own != addressed:
        logger.error("refused a %s instruction addressed to trust %r: this SuperNode is %r", phase, addressed, own)
        raise _Refused(protocol.ERROR_TRUST_MISMATCH, "refused: the instruction is addressed to another trust")
    round_number = _int(config.get("round"))
    seed = _int(config.get("seed"))
    project_id = context.run_config.get("project_id", "")
    try:
        # The trainer SDK's context (project, this trust, round) is set for exactly the researcher's step.
        with job_step(project_id.strip() if isinstance(project_id, str) else "", own, round_number) as sdk_step:
            user_config: dict[str, Any] = {
                **_json_file(app_dir / USER_CONFIG_FILE),
                **_job_config(context.run_config.get("job_config", "{}")),
                "round": round_number,
                "seed": seed,
                "trust": own,
                "job_type": str(config.get("job_type", "")),
            }
            seed_everything(seed * 1000 + round_number)
            researcher = researcher_module(app_dir, "client_app")
            model = researcher_module(app_dir, "models").get_model()
            weights = from_record(message.content.array_records[protocol.WEIGHTS])
            model.load_state_dict(to_state_dict(weights))
            step = researcher.train if phase == protocol.TRAIN else researcher.evaluate
            raw = step(model, user_config)
            trained = from_state_dict(model.state_dict()) if phase == protocol.TRAIN else None
    except Exception as exc:
        logger.exception("the researcher's %s failed at trust %s (round %s)", phase, own, round_number)
        raise _Refused(protocol.ERROR_TRAINER_FAILED, f"{phase} raised {type(exc).__name__}") from exc
    metrics = _check_metrics(_with_logged_metrics(raw, sdk_step.metrics), phase)
    values: dict[str, MetricRecordValues] = dict(metrics)
    content = RecordDict({protocol.METRICS: MetricRecord(values)})
    if trained is not None:
        content[protocol.WEIGHTS] = to_record(trained)
    return content


def _with_logged_metrics(raw: object, logged: list[LoggedMetric]) -> object:
    """The returned metrics over those logged with ``flip.log_metric`` (the returned dict wins a clash)."""
    if not isinstance(raw, Mapping) or not logged:
        return raw
    return {**{metric.label: metric.value for metric in logged}, **raw}


def _check_metrics(raw: object, phase: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise _Refused(protocol.ERROR_BAD_METRICS, f"{phase} must return a dict of metrics")
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Refused(protocol.ERROR_BAD_METRICS, f"{phase} returned a metric that is not a number")
        if not math.isfinite(float(value)):
            raise _Refused(protocol.ERROR_BAD_METRICS, f"{phase} returned a metric that is not finite")
        metrics[key] = float(value)
    if phase == protocol.TRAIN and metrics.get(protocol.NUM_EXAMPLES, 0.0) <= 0:
        raise _Refused(protocol.ERROR_BAD_METRICS, "train must return a positive num_examples")
    return metrics


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _json_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def _job_config(raw: object) -> dict[str, Any]:
    if not isinstance(raw, str):
        return {}
    value = json.loads(raw or "{}")
    return value if isinstance(value, dict) else {}
