"""The run config of a FLIP job: defaults, the checks the hub relies on, and the template's declared keys."""

from __future__ import annotations

import tomllib

import pytest

from flip_fl.flower.bundle import TEMPLATE_DIR
from flip_fl.flower.runconfig import JobSettings, RunConfigError


def _settings(**config: bool | int | float | str) -> JobSettings:
    return JobSettings.from_run_config({"selected": '["AAA", "BBB"]', **config})


def test_defaults_and_job_type_strategies() -> None:
    settings = _settings()
    assert (settings.job_type, settings.strategy, settings.rounds) == ("standard", "fedavg", 1)
    assert settings.selected == ("AAA", "BBB")
    assert settings.min_clients == 2
    assert _settings(job_type="fed_opt").strategy == "fedadam"
    evaluation = _settings(job_type="evaluation", rounds=7, checkpoint_path="/x/checkpoint.pt")
    assert evaluation.rounds == 1


def test_project_id_is_read_for_the_trainer_sdk() -> None:
    assert _settings().project_id == ""
    assert _settings(project_id=" 3f2c8f0e-0000-4000-8000-000000000001 ").project_id == (
        "3f2c8f0e-0000-4000-8000-000000000001"
    )
    with pytest.raises(RunConfigError, match="project_id"):
        _settings(project_id=7)


def test_job_config_is_a_json_object() -> None:
    assert _settings(job_config='{"lr": 0.1}').job_config == {"lr": 0.1}
    with pytest.raises(RunConfigError, match="job_config"):
        _settings(job_config="[1]")


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": 1001}, "rounds"),
        ({"rounds": 2.0}, "rounds"),
        ({"min_clients": 3}, "min_clients"),
        ({"min_clients": 0}, "min_clients"),
        ({"selected": "[]"}, "selected"),
        ({"selected": '["AAA", "AAA"]'}, "selected"),
        ({"selected": '["../x"]'}, "selected"),
        ({"selected": "AAA"}, "selected"),
        ({"strategy": "fedadam"}, "strategy"),
        ({"job_type": "fed_opt", "strategy": "fedavg"}, "strategy"),
        ({"job_type": "secret"}, "job_type"),
        ({"round_timeout_s": 0}, "round_timeout_s"),
        ({"job_type": "evaluation"}, "checkpoint_path"),
        ({"server_lr": -1.0}, "server_lr"),
        ({"final_evaluation": 1}, "final_evaluation"),
    ],
)
def test_invalid_values_are_refused_naming_the_key(config: dict[str, bool | int | float | str], key: str) -> None:
    with pytest.raises(RunConfigError, match=key):
        _settings(**config)


def test_the_template_declares_every_key_the_settings_read() -> None:
    declared = tomllib.loads((TEMPLATE_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    read = {"job_id", "project_id", "job_type", "strategy", "rounds", "selected", "min_clients", "round_timeout_s",
            "seed", "final_evaluation", "server_lr", "beta1", "beta2", "tau", "job_config", "report_file", "output_dir",
            "checkpoint_path", "bundle_sha256"}  # fmt: skip
    assert set(declared) == read
    # The template's own defaults are valid once trusts are selected.
    JobSettings.from_run_config({**declared, "selected": '["AAA"]'})
