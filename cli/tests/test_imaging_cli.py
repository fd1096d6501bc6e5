"""``flip trust imaging``: ``generate`` and ``seed`` (studies for a PACS), ``serve`` (the imaging-api), exit codes."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest
from click.testing import CliRunner, Result

from flip_cli import imaging as imaging_cli
from flip_cli.errors import ExitCode
from flip_cli.imaging import imaging
from flip_cli.kits import write_kit
from flip_core.contract import TrustKit
from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_omop import get_profile, image_occurrences


def run(*args: str) -> Result:
    """Invoke the ``imaging`` group in-process (the lead registers it under ``flip trust``)."""
    return CliRunner().invoke(imaging, list(args))


def test_generate_writes_the_omop_studies_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "pacs"
    result = run("generate", "--persons", "40", "--seed", "1", "--profile", "south", "--out", str(out), "--limit", "3")

    assert result.exit_code == ExitCode.OK, result.output
    expected = list(image_occurrences(get_profile("south"), 40, 1))[:3]
    assert sorted(p.name for p in out.iterdir()) == [s.accession_id for s in expected]
    for study in expected:
        [series] = [p for p in (out / study.accession_id).iterdir() if p.is_dir()]
        assert series.name == study.series_instance_uid
        assert len(list(series.glob("*.dcm"))) == 24
        assert (out / study.accession_id / "mask.nii.gz").is_file()
        ds = pydicom.dcmread(series / "1.dcm")
        assert (ds.AccessionNumber, ds.StudyInstanceUID) == (study.accession_id, study.study_instance_uid)
    assert "wrote 3 studies for profile south" in result.output
    assert "files           75 (" in result.output
    assert f"{expected[0].accession_id} … {expected[-1].accession_id}" in result.output


def test_generate_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = run("generate", "--persons", "40", "--seed", "2", "--out", str(tmp_path / name), "--limit", "1")
        assert result.exit_code == ExitCode.OK, result.output
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert a == b
    assert len(a) == 25


def test_limit_zero_writes_nothing(tmp_path: Path) -> None:
    result = run("generate", "--persons", "40", "--out", str(tmp_path / "out"), "--limit", "0")

    assert result.exit_code == ExitCode.OK, result.output
    assert "no imaging studies to write" in result.output


@pytest.mark.parametrize("inside", [False, True])
def test_an_out_path_blocked_by_a_file_is_a_configuration_error(tmp_path: Path, inside: bool) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = blocker / "sub" if inside else blocker

    result = run("generate", "--persons", "40", "--out", str(out), "--limit", "1")

    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "is not a folder" in result.output


def test_a_write_failure_exits_1_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    # A full disk cannot be arranged portably, so the writer is made to fail the way it would.
    monkeypatch.setattr(imaging_cli, "write_studies", disk_full)
    result = run("generate", "--persons", "40", "--out", str(tmp_path / "out"))

    assert result.exit_code == ExitCode.FAILURE, result.output
    assert "No space left on device" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--out", "x"],
        ["--persons", "0", "--out", "x"],
        ["--persons", "5", "--profile", "west", "--out", "x"],
        ["--persons", "5", "--limit", "-1", "--out", "x"],
        ["--persons", "5"],
    ],
)
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = run("generate", *args)

    assert result.exit_code == ExitCode.USAGE, result.output


def test_seed_stores_generated_studies_into_a_pacs(tmp_path: Path) -> None:
    out = tmp_path / "studies"
    assert (
        CliRunner().invoke(imaging, ["generate", "--persons", "60", "--out", str(out), "--limit", "2"]).exit_code == 0
    )
    instances = len(list(out.rglob("*.dcm")))
    with EmbeddedPacs(tmp_path / "pacs", ae_title="SEEDME") as pacs:
        args = ["seed", "--pacs-port", str(pacs.port), "--pacs-ae-title", "SEEDME", "--from", str(out)]
        result = CliRunner().invoke(imaging, args)
        assert result.exit_code == 0, result.output
        assert f"stored {instances} instance(s)" in result.output
        assert len(pacs.instances()) == instances
        port = pacs.port
    # The PACS is gone now: a clear failure, exit 1.
    result = CliRunner().invoke(
        imaging, ["seed", "--pacs-port", str(port), "--pacs-ae-title", "SEEDME", "--from", str(out)]
    )
    assert result.exit_code == ExitCode.FAILURE
    assert "cannot seed the PACS" in result.output


def _kit_file(tmp_path: Path) -> Path:
    kit = TrustKit(
        hub_url="https://hub.example.org",
        trust_id=uuid.uuid4(),
        trust_code="IMGS",
        trust_name="Imaging Serve Trust",
        api_key="flip_trust_" + "a" * 32,
        payload_key_id="trust-imgs-1",
        payload_key="b" * 44,
        internal_key="flip_internal_" + "c" * 32,
    )
    return write_kit(tmp_path / "kit.env", kit)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "FLIP_IMAGING_PACS_PORT"),
        (["--pacs-port", "11112", "--pacs-ae-title", "PACS"], "FLIP_IMAGING_DATA_ACCESS_URL"),
    ],
)
def test_serve_without_its_pacs_or_data_access_api_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str
) -> None:
    for name in ("FLIP_IMAGING_PACS_PORT", "FLIP_IMAGING_PACS_AE_TITLE", "FLIP_IMAGING_DATA_ACCESS_URL"):
        monkeypatch.delenv(name, raising=False)
    kit = _kit_file(tmp_path)
    result = run("serve", "--kit", str(kit), "--state-dir", str(tmp_path / "state"), *extra)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert message in result.output
    missing = run("serve", "--kit", str(tmp_path / "nope.env"), "--pacs-port", "1", "--pacs-ae-title", "P")
    assert missing.exit_code == ExitCode.CONFIG
    assert "cannot read the trust kit" in missing.output


@pytest.mark.slow
def test_serve_runs_checks_its_pacs_and_stops_on_sigterm(tmp_path: Path) -> None:
    kit = _kit_file(tmp_path)
    with EmbeddedPacs(tmp_path / "pacs", ae_title="SERVEPACS") as pacs:
        command = [
            sys.executable, "-m", "flip_cli.main", "trust", "imaging", "serve", "--kit", str(kit),
            "--state-dir", str(tmp_path / "state"), "--pacs-port", str(pacs.port), "--pacs-ae-title", "SERVEPACS",
            "--data-access-url", "http://127.0.0.1:9",  # nothing there: health says degraded, not down
        ]  # fmt: skip
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("imaging-api listening on: "), line
            url = line.split(": ", 1)[1].strip()
            health = httpx.get(f"{url}/health", timeout=10).json()
            assert health == {**health, "status": "degraded", "pacs": "healthy", "data_access": "down"}
            refused = httpx.post(f"{url}/imaging/status", json={"project_id": str(uuid.uuid4())}, timeout=10)
            assert refused.status_code == 401
            assert (tmp_path / "state" / "deid.key").stat().st_mode & 0o077 == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
