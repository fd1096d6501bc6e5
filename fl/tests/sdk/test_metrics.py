"""flip.log_metric: checked labels and values, the job's round, and in-memory metrics in local-dev mode."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import flip
from flip.context import job_step


@pytest.fixture
def dev(tmp_path: Path) -> None:
    csv = tmp_path / "cohort.csv"
    csv.write_text("person_id\n1\n")
    flip.local_dev(csv)


def test_local_dev_keeps_metrics_in_memory_and_logs_them(dev: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flip"):
        flip.log_metric("train.loss", 0.5)
        flip.log_metric("val_dice-1", np.float32(0.25), round=3)
        flip.log_metric("epochs", 2)
    assert flip.logged_metrics() == [("train.loss", 0.5, 0), ("val_dice-1", 0.25, 3), ("epochs", 2.0, 0)]
    assert "metric train.loss = 0.5 (round 0)" in caplog.text
    assert isinstance(flip.logged_metrics()[0], flip.LoggedMetric)


@pytest.mark.parametrize("label", ["", "x" * 65, "has space", "slash/label", "é", 3])
def test_bad_labels_are_refused(dev: None, label: object) -> None:
    with pytest.raises(ValueError, match="label"):
        flip.log_metric(label, 1.0)  # type: ignore[arg-type]
    assert flip.logged_metrics() == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "1.0", None, torch.tensor(1.0), 1j])
def test_values_must_be_finite_real_numbers(dev: None, value: object) -> None:
    with pytest.raises(ValueError, match="loss"):
        flip.log_metric("loss", value)  # type: ignore[arg-type]
    assert flip.logged_metrics() == []


def test_inside_a_job_metrics_belong_to_the_step_and_its_round() -> None:
    with job_step("p", "AAA", 4, environ={}) as step:
        flip.log_metric("dice", 0.75)
        flip.log_metric("dice", 0.8, round=4)
        with pytest.raises(ValueError, match="round 3, but this step is round 4"):
            flip.log_metric("dice", 0.9, round=3)
        with pytest.raises(ValueError, match="round must be an integer"):
            flip.log_metric("dice", 0.9, round=True)
        assert flip.logged_metrics() == [("dice", 0.75, 4), ("dice", 0.8, 4)]
    assert step.metrics == [("dice", 0.75, 4), ("dice", 0.8, 4)]
    assert flip.logged_metrics() == []  # the step is over


def test_one_step_at_a_time() -> None:
    with job_step("p", "AAA", 1, environ={}):
        second = job_step("p", "BBB", 1, environ={})
        with pytest.raises(RuntimeError, match="already running"):
            second.__enter__()
        assert flip.current().trust == "AAA"
    with pytest.raises(flip.NotInJob):
        flip.current()
