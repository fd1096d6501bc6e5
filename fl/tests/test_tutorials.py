"""The tutorials in fl/tutorials/: uploadable as they are, and they learn on the repository's synthetic data.

A small local-dev dataset (``fl/tutorials/make_dev_data.py``) feeds each tutorial through the trainer
SDK's local-dev mode; two rounds run the way a trust runs them (a fresh ``get_model()`` loaded with the
server's weights, then ``train``, then ``evaluate``). Each README's cohort SQL is validated with the
trusts' validator and run against a real OMOP database holding the same synthetic dataset.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
import torch

import flip
import flip.context
from flip_core.cohort_sql import validate_cohort_sql
from flip_core.embedded_pg import throwaway_server
from flip_omop import load_synthetic

TUTORIALS_DIR = Path(__file__).resolve().parents[1] / "tutorials"
TUTORIALS = ("segmentation", "classification", "tabular")
REQUIRED_FILES = {"client_app.py", "models.py", "config.json", "README.md"}
ALLOWED_IMPORTS = {"torch", "monai", "numpy", "nibabel", "pandas", "flip"} | set(sys.stdlib_module_names)
PERSONS, STUDIES, PROFILE, SEED = 200, 12, "north", 7
JOB_SEED = 42


def load_module(path: Path, name: str) -> ModuleType:
    """Import a file by path (the tutorials are not packages), without writing __pycache__ beside it."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


@pytest.fixture(scope="module")
def dev_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tutorial-dev-data")
    maker = load_module(TUTORIALS_DIR / "make_dev_data.py", "flip_tutorial_make_dev_data")
    summary = maker.make_dev_data(out, studies=STUDIES, persons=PERSONS, profile_name=PROFILE, seed=SEED)
    assert summary["studies"] == STUDIES
    assert 0 < summary["lesions"] < STUDIES
    return out


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    flip.context.reset()


class Tutorial:
    """One tutorial's modules and config, run the way a trust runs them."""

    def __init__(self, name: str, dev_data: Path) -> None:
        folder = TUTORIALS_DIR / name
        self.client = load_module(folder / "client_app.py", f"flip_tutorial_{name}_client_app")
        self.models = load_module(folder / "models.py", f"flip_tutorial_{name}_models")
        self.config: dict[str, Any] = json.loads((folder / "config.json").read_text())
        flip.local_dev(dataframe=dev_data / f"{name}.csv", images=dev_data / "images", trust="AAA")

    def step_config(self, round_number: int) -> dict[str, Any]:
        return {**self.config, "round": round_number, "seed": JOB_SEED, "trust": "AAA", "job_type": "training"}

    def initial_state(self) -> dict[str, torch.Tensor]:
        torch.manual_seed(JOB_SEED)
        return copy.deepcopy(self.models.get_model().state_dict())

    def model(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        model: torch.nn.Module = self.models.get_model()
        model.load_state_dict(copy.deepcopy(state))
        return model

    def run(self, state: dict[str, torch.Tensor], rounds: int) -> list[tuple[dict[str, float], dict[str, float]]]:
        """(train metrics, evaluate metrics) per round; the state dict travels between rounds as FedAvg's would."""
        results = []
        for round_number in range(1, rounds + 1):
            model = self.model(state)
            trained = self.client.train(model, self.step_config(round_number))
            state = copy.deepcopy(model.state_dict())
            evaluated = self.client.evaluate(self.model(state), self.step_config(round_number))
            results.append((trained, evaluated))
        return results


def assert_sane(metrics: dict[str, float], names: set[str]) -> None:
    assert names <= set(metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["num_examples"] > 0


# -------------------------------------------------------------------------------- what gets uploaded


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_holds_exactly_the_researcher_files(name: str) -> None:
    folder = TUTORIALS_DIR / name
    # __pycache__ is what running the tutorial locally leaves; it is never packed into the app bundle.
    assert {p.name for p in folder.iterdir() if p.name != "__pycache__"} == REQUIRED_FILES
    config = json.loads((folder / "config.json").read_text())
    assert isinstance(config, dict)
    assert {"local_epochs", "learning_rate"} <= set(config)


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_code_imports_only_what_trusts_have(name: str) -> None:
    for path in (TUTORIALS_DIR / name).glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                assert node.module is not None
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in ALLOWED_IMPORTS, f"{path.name} imports {module}"
    assert {"train", "evaluate"} <= defined_names(TUTORIALS_DIR / name / "client_app.py")
    assert "get_model" in defined_names(TUTORIALS_DIR / name / "models.py")


def defined_names(path: Path) -> set[str]:
    """Functions and classes defined at the top of a module."""
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def readme_sql(name: str) -> str:
    """The cohort SQL of a tutorial: the first ```sql block of its README."""
    found = re.search(r"```sql\n(.*?)```", (TUTORIALS_DIR / name / "README.md").read_text(), re.DOTALL)
    assert found, f"{name}/README.md has no ```sql block"
    return found.group(1).strip()


def test_readme_cohort_sql_is_valid_and_returns_the_dev_rows(dev_data: Path, tmp_path: Path) -> None:
    """Each README's SQL passes the trusts' validator and, on a real OMOP database, returns the CSV's rows."""
    validated = {name: validate_cohort_sql(readme_sql(name)) for name in TUTORIALS}
    for name, query in validated.items():
        assert query.output_columns is not None
        assert "person_id" in query.output_columns
        assert set(pd.read_csv(dev_data / f"{name}.csv").columns) <= set(query.output_columns), name
    with throwaway_server() as server:
        dsn = server.libpq_dsn("postgres")
        load_synthetic(dsn, PERSONS, SEED, PROFILE, replace=True)
        with psycopg.connect(dsn) as conn:
            results = {}
            for name, query in validated.items():
                cursor = conn.execute(query.sql)
                assert cursor.description is not None
                results[name] = pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description])
    for name in ("segmentation", "classification"):
        expected = pd.read_csv(dev_data / f"{name}.csv")
        got = expected[["accession_id"]].merge(results[name], on="accession_id", how="left")
        assert got["person_id"].tolist() == expected["person_id"].tolist()
        if name == "classification":
            assert got["lesion"].tolist() == expected["lesion"].tolist()
    expected = pd.read_csv(dev_data / "tabular.csv").set_index("person_id").sort_index()
    got = results["tabular"].set_index("person_id").sort_index()
    assert got.index.tolist() == expected.index.tolist()
    for column in ("year_of_birth", "gender_concept_id", "t2dm"):
        assert got[column].tolist() == expected[column].tolist(), column
    for column in ("bmi", "hba1c"):
        difference = (pd.to_numeric(got[column]).astype(float) - expected[column]).abs()
        assert (got[column].isna() == expected[column].isna()).all(), column
        assert (difference.fillna(0) < 1e-3).all(), column


# ------------------------------------------------------------------------------------ they learn


def test_segmentation_learns_the_organ(dev_data: Path) -> None:
    tutorial = Tutorial("segmentation", dev_data)
    state = tutorial.initial_state()
    untrained = tutorial.client.evaluate(tutorial.model(state), tutorial.step_config(0))
    results = tutorial.run(state, rounds=2)
    for trained, evaluated in results:
        assert_sane(trained, {"dice", "loss", "num_examples"})
        assert_sane(evaluated, {"dice", "num_examples"})
    assert [m.label for m in flip.logged_metrics()] == ["first_epoch_loss", "first_epoch_loss"]
    assert results[-1][1]["dice"] > untrained["dice"] + 0.2
    assert results[-1][0]["num_examples"] + results[-1][1]["num_examples"] == STUDIES


def test_segmentation_skips_missing_studies_and_refuses_none(dev_data: Path, tmp_path: Path) -> None:
    cohort = pd.read_csv(dev_data / "segmentation.csv")
    with_missing = tmp_path / "missing.csv"
    missing = pd.DataFrame({"person_id": [1], "accession_id": ["NOT-IMPORTED"]})
    pd.concat([cohort, missing]).to_csv(with_missing, index=False)
    tutorial = Tutorial("segmentation", dev_data)
    flip.local_dev(dataframe=with_missing, images=dev_data / "images")
    config = {**tutorial.step_config(1), "local_epochs": 1}
    metrics = tutorial.client.train(tutorial.model(tutorial.initial_state()), config)
    evaluated = tutorial.client.evaluate(tutorial.model(tutorial.initial_state()), config)
    assert metrics["num_examples"] + evaluated["num_examples"] == STUDIES  # the missing study was skipped

    flip.local_dev(dataframe=with_missing, images=tmp_path)  # no study has files here
    with pytest.raises(RuntimeError, match="could be loaded"):
        tutorial.client.train(tutorial.model(tutorial.initial_state()), config)


def test_classification_training_lowers_its_loss(dev_data: Path) -> None:
    tutorial = Tutorial("classification", dev_data)
    state = tutorial.initial_state()
    images, labels = tutorial.client.studies(tutorial.step_config(0), held_out=False)
    untrained = tutorial.client.score(tutorial.model(state), images, labels)
    results = tutorial.run(state, rounds=2)
    for trained, evaluated in results:
        assert_sane(trained, {"auc", "accuracy", "loss", "num_examples"})
        assert_sane(evaluated, {"auc", "accuracy", "loss", "num_examples"})
        assert 0.0 <= evaluated["auc"] <= 1.0
    assert results[-1][0]["loss"] < untrained["loss"]
    assert set(labels.tolist()) == {0.0, 1.0}  # the split keeps both classes in training


def test_classification_auc_handles_ties() -> None:
    tutorial = load_module(TUTORIALS_DIR / "classification" / "client_app.py", "flip_tutorial_auc")
    labels = np.array([0, 0, 1, 1])
    assert tutorial.roc_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert tutorial.roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert tutorial.roc_auc(labels, np.array([0.1, 0.5, 0.5, 0.9])) == 0.875
    assert tutorial.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5


def test_tabular_risk_model_ranks_held_out_persons(dev_data: Path) -> None:
    tutorial = Tutorial("tabular", dev_data)
    results = tutorial.run(tutorial.initial_state(), rounds=2)
    for trained, evaluated in results:
        assert_sane(trained, {"auc", "loss", "num_examples"})
        assert_sane(evaluated, {"auc", "loss", "num_examples"})
    assert results[-1][1]["auc"] > 0.6
    assert results[-1][0]["num_examples"] + results[-1][1]["num_examples"] == PERSONS
