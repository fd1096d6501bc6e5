"""FLIP's ClientApp logic in-process: it refuses another trust's instruction and never leaks an error message.

It also sets the trainer SDK's context (project, trust, round) for the researcher's step only, and merges
the metrics logged with ``flip.log_metric`` into the reply.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

import flip
import flip.context
from flip_fl.flower import protocol
from flip_fl.flower.clientapp import handle
from flip_fl.flower.weights import from_record, from_state_dict, to_record

CLIENT_APP = """
import dataclasses, json
from pathlib import Path
import flip
Path(__file__).with_name("imported").write_text("yes")

def train(model, config):
    if config.get("sdk"):
        seen = dataclasses.asdict(flip.current())
        Path(__file__).with_name("context.json").write_text(json.dumps(seen))
        flip.log_metric("dice", 0.5)
        flip.log_metric("loss", 9.0)  # the returned loss wins
        flip.log_metric("dice", 0.75, round=seen["round"])  # the last value of a label wins
    if config.get("fail"):
        raise ValueError("row 17: patient 1234567890")
    with __import__("torch").no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return {"loss": 0.25, "num_examples": 12}

def evaluate(model, config):
    return {"loss": 0.5, "accuracy": __import__("numpy").float32(1.0), "num_examples": 12, "lr": config["lr"]}
"""
MODELS = "import torch\n\ndef get_model():\n    return torch.nn.Linear(2, 1)\n"


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "client_app.py").write_text(CLIENT_APP)
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "config.json").write_text('{"lr": 0.3}')
    yield tmp_path
    # The researcher's modules are imported by name; forget them between tests.
    for name in ("client_app", "models"):
        sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def _instruction(phase: str, trust: str) -> Message:
    torch.manual_seed(0)
    weights = from_state_dict(torch.nn.Linear(2, 1).state_dict())
    content = RecordDict(
        {
            protocol.WEIGHTS: to_record(weights),
            protocol.CONFIG: ConfigRecord({"round": 1, "trust": trust, "seed": 3, "job_type": "standard"}),
        }
    )
    metadata = Metadata(run_id=1, message_id="m1", src_node_id=1, dst_node_id=2, reply_to_message_id="",
                        group_id="train-1", created_at=time.time(), ttl=60.0, message_type=phase)  # fmt: skip
    return Message(content=content, metadata=metadata)


def _context(trust: str, job_config: str = "{}", project_id: str = "") -> Context:
    return Context(run_id=1, node_id=2, node_config={"trust": trust}, state=RecordDict(),
                   run_config={"job_config": job_config, "project_id": project_id})  # fmt: skip


@pytest.fixture
def no_local_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a job the SDK must find nothing: no local-dev mode from the environment or an earlier test."""
    monkeypatch.delenv("FLIP_DEV_DATAFRAME", raising=False)
    flip.context.reset()


def test_an_instruction_for_another_trust_is_refused_before_any_researcher_code(app_dir: Path) -> None:
    reply = handle(_instruction("train", "AAA"), _context("CCC"), app_dir)
    assert reply.has_error()
    assert reply.error.code == protocol.ERROR_TRUST_MISMATCH
    assert not (app_dir / "imported").exists()


def test_a_failing_trainer_reports_only_the_exception_type(app_dir: Path) -> None:
    reply = handle(_instruction("train", "AAA"), _context("AAA", '{"fail": true}'), app_dir)
    assert reply.has_error()
    assert (reply.error.code, reply.error.reason) == (protocol.ERROR_TRAINER_FAILED, "train raised ValueError")


def test_train_returns_the_trained_weights_and_metrics(app_dir: Path) -> None:
    instruction = _instruction("train", "AAA")
    sent = from_record(instruction.content.array_records[protocol.WEIGHTS])
    reply = handle(instruction, _context("AAA"), app_dir)
    assert not reply.has_error()
    assert dict(reply.content.metric_records[protocol.METRICS]) == {"loss": 0.25, "num_examples": 12.0}
    trained = from_record(reply.content.array_records[protocol.WEIGHTS])
    for name, array in sent.items():
        torch.testing.assert_close(torch.from_numpy(trained[name]), torch.from_numpy(array) + 1.0)


def test_evaluate_sees_config_json_and_returns_metrics_only(app_dir: Path) -> None:
    reply = handle(_instruction("evaluate", "AAA"), _context("AAA"), app_dir)
    assert dict(reply.content.metric_records[protocol.METRICS])["lr"] == 0.3
    assert protocol.WEIGHTS not in reply.content.array_records


def test_the_sdk_sees_the_job_inside_train_and_nothing_after(app_dir: Path, no_local_dev: None) -> None:
    reply = handle(_instruction("train", "AAA"), _context("AAA", '{"sdk": true}', " project-7 "), app_dir)
    assert not reply.has_error()
    seen = json.loads((app_dir / "context.json").read_text())
    assert (seen["project_id"], seen["trust"], seen["round"]) == ("project-7", "AAA", 1)
    with pytest.raises(flip.NotInJob):
        flip.current()


def test_logged_metrics_are_merged_and_the_returned_dict_wins(app_dir: Path, no_local_dev: None) -> None:
    reply = handle(_instruction("train", "AAA"), _context("AAA", '{"sdk": true}'), app_dir)
    assert dict(reply.content.metric_records[protocol.METRICS]) == {"loss": 0.25, "num_examples": 12.0, "dice": 0.75}


def test_the_sdk_context_is_cleared_after_a_raising_trainer(app_dir: Path, no_local_dev: None) -> None:
    reply = handle(_instruction("train", "AAA"), _context("AAA", '{"sdk": true, "fail": true}'), app_dir)
    assert (reply.error.code, reply.error.reason) == (protocol.ERROR_TRAINER_FAILED, "train raised ValueError")
    assert json.loads((app_dir / "context.json").read_text())["trust"] == "AAA"  # it was set while train ran
    with pytest.raises(flip.NotInJob):
        flip.current()
    assert flip.logged_metrics() == []
    # The next step starts clean: nothing logged by the failed one leaks into its reply.
    reply = handle(_instruction("train", "AAA"), _context("AAA"), app_dir)
    assert dict(reply.content.metric_records[protocol.METRICS]) == {"loss": 0.25, "num_examples": 12.0}
