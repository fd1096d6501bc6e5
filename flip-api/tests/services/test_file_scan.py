"""Upload checks: file names, and scans of real malicious and clean files (pickles are built, never loaded)."""

from __future__ import annotations

import collections
import gzip
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest

from flip_api.services.file_scan import (
    ALLOWED_EXTENSIONS,
    FileRejected,
    Finding,
    ScanResult,
    ScanVerdict,
    check_file_name,
    scan_file,
)


class RunsShellOnLoad:
    """Unpickling this runs a shell command: the classic malicious pickle."""

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("echo pwned",))


MALICIOUS = {"state_dict": {"w": [0.1, 0.2]}, "hook": RunsShellOnLoad()}
CLEAN = {"epoch": 3, "weights": [[0.1, 0.2], [0.3, 0.4]], "names": ("a", "b"), "ok": True, "none": None}


def _write(tmp_path: Path, data: bytes) -> Path:
    # The scanner gets the upload name separately: store under a neutral name, as quarantine does.
    path = tmp_path / f"upload-{len(list(tmp_path.iterdir()))}"
    path.write_bytes(data)
    return path


def _scan(tmp_path: Path, name: str, data: bytes) -> ScanResult:
    return scan_file(_write(tmp_path, data), name)


def _checkpoint(
    data_pkl: bytes, *, compression: int = zipfile.ZIP_STORED, extra: dict[str, bytes] | None = None
) -> bytes:
    """The layout torch.save writes: <name>/data.pkl, version, byteorder and raw storages, uncompressed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/data/0", struct.pack("<4f", 0.1, 0.2, 0.3, 0.4))
        archive.writestr("archive/version", b"3\n")
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _dangerous(result: ScanResult) -> list[str]:
    return [f.message for f in result.findings if f.severity == "dangerous"]


def _names_os_system(result: ScanResult) -> bool:
    return any("posix.system" in message or "os.system" in message for message in _dangerous(result))


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../x.py", "bad_file_name"),
        ("a/b.py", "bad_file_name"),
        ("a\\b.py", "bad_file_name"),
        (".hidden.py", "bad_file_name"),
        ("", "bad_file_name"),
        ("x" * 126 + ".py", "bad_file_name"),
        (" model.py", "bad_file_name"),
        ("model\n.py", "bad_file_name"),
        ("model\x00.py", "bad_file_name"),
        ("model\u202eyp.pdf", "bad_file_name"),  # right-to-left override disguising the extension
        ("x.exe", "extension_not_allowed"),
        ("Makefile", "extension_not_allowed"),
        ("model.", "extension_not_allowed"),
        ("run.sh", "extension_not_allowed"),
        ("x.zip", "archive_refused"),
        ("x.tar.gz", "archive_refused"),
        ("x.TGZ", "archive_refused"),
        ("weights.npz", "archive_refused"),
        ("pkg.whl", "archive_refused"),
        ("data.7z", "archive_refused"),
    ],
)
def test_refused_names(name: str, code: str) -> None:
    with pytest.raises(FileRejected) as refused:
        check_file_name(name)
    assert refused.value.code == code
    assert refused.value.detail


@pytest.mark.parametrize(
    "name", ["model.py", "weights.PT", "Config.JSON", "train-v2.yaml", "notes.md", "x" * 125 + ".py", "modèle.pth"]
)
def test_accepted_names(name: str) -> None:
    assert check_file_name(name) == name


def test_names_are_nfc_normalised() -> None:
    assert check_file_name("mode\u0300le.py") == "mod\u00e8le.py"


def test_allowed_extensions_are_what_the_hub_accepts() -> None:
    assert {
        ".py",
        ".json",
        ".yaml",
        ".yml",
        ".txt",
        ".md",
        ".csv",
        ".pt",
        ".pth",
        ".pkl",
        ".ckpt",
        ".safetensors",
        ".npy",
    } == ALLOWED_EXTENSIONS


# ---------------------------------------------------------------------------------------------------
# Pickles and checkpoints
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_blocked(tmp_path: Path, protocol: int) -> None:
    result = _scan(tmp_path, "model.pkl", pickle.dumps(MALICIOUS, protocol=protocol))
    assert result.verdict is ScanVerdict.BLOCKED
    assert not result.advisory
    assert _names_os_system(result)
    assert all(f.tool == "picklescan" for f in result.findings)


@pytest.mark.parametrize("name", ["model.pt", "weights.PT", "model.pth", "last.ckpt"])
def test_malicious_pytorch_checkpoint_is_blocked(tmp_path: Path, name: str) -> None:
    result = _scan(tmp_path, name, _checkpoint(pickle.dumps(MALICIOUS, protocol=2)))
    assert result.verdict is ScanVerdict.BLOCKED
    assert _names_os_system(result)


def test_malicious_pickle_saved_without_zip_as_pt_is_blocked(tmp_path: Path) -> None:
    result = _scan(tmp_path, "model.pt", pickle.dumps(MALICIOUS, protocol=4))
    assert result.verdict is ScanVerdict.BLOCKED
    assert _names_os_system(result)


def test_pickle_with_a_harmless_zip_appended_is_judged_by_its_pickle(tmp_path: Path) -> None:
    # pickle.load reads the leading pickle; a scanner that looked for the zip directory at the end would
    # only see the harmless zip.
    polyglot = pickle.dumps(MALICIOUS, protocol=2) + _checkpoint(pickle.dumps(CLEAN, protocol=2))
    result = _scan(tmp_path, "model.pkl", polyglot)
    assert result.verdict is ScanVerdict.BLOCKED
    assert _names_os_system(result)
    assert result.findings[-1].message == "part of the file could not be parsed, so it could not be scanned"


@pytest.mark.parametrize("name", ["stats.pkl", "model.pt"])
def test_clean_pickle_and_checkpoint_pass(tmp_path: Path, name: str) -> None:
    payload = pickle.dumps(CLEAN, protocol=4)
    raw = _scan(tmp_path, name, payload)
    in_zip = _scan(tmp_path, name, _checkpoint(payload))
    for result in (raw, in_zip):
        assert result == ScanResult(ScanVerdict.CLEAN, (), advisory=False)


def test_known_safe_imports_pass_silently(tmp_path: Path) -> None:
    ordered = collections.OrderedDict([("layer.weight", [0.5])])
    result = _scan(tmp_path, "model.pt", _checkpoint(pickle.dumps(ordered, protocol=2)))
    assert result == ScanResult(ScanVerdict.CLEAN, (), advisory=False)


def test_unknown_imports_are_advisory(tmp_path: Path) -> None:
    # GLOBAL "mypkg.models Net", empty tuple, REDUCE, STOP: a model class the hub does not know.
    result = _scan(tmp_path, "model.pkl", b"cmypkg.models\nNet\n)R.")
    assert result.verdict is ScanVerdict.CLEAN
    assert result.advisory
    assert result.findings == (Finding("picklescan", "low", "imports mypkg.models.Net (not a known-safe import)"),)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe this is not a pickle",
        b"",
        pickle.dumps(CLEAN, protocol=4)[:-10],  # truncated: no STOP
    ],
    ids=["garbage", "empty", "truncated"],
)
def test_unreadable_pickle_fails_closed(tmp_path: Path, data: bytes) -> None:
    result = _scan(tmp_path, "model.pkl", data)
    assert result.verdict is ScanVerdict.BLOCKED
    assert any("could not be scanned" in f.message for f in result.findings)


def test_checkpoint_with_unreadable_data_pkl_fails_closed(tmp_path: Path) -> None:
    result = _scan(tmp_path, "model.pt", _checkpoint(b"\xff\xfe not a pickle"))
    assert result.verdict is ScanVerdict.BLOCKED
    assert "could not be scanned" in result.findings[0].message


def test_compressed_checkpoint_is_refused(tmp_path: Path) -> None:
    data = _checkpoint(pickle.dumps(CLEAN, protocol=2), compression=zipfile.ZIP_DEFLATED)
    result = _scan(tmp_path, "model.pt", data)
    assert result.verdict is ScanVerdict.BLOCKED
    assert "compressed" in result.findings[0].message


def test_zip_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    result = _scan(tmp_path, "model.pt", _zip({"readme.txt": b"hello", "run.py": b"import os"}))
    assert result.verdict is ScanVerdict.BLOCKED
    assert "not a PyTorch checkpoint" in result.findings[0].message


def test_malicious_pickle_hidden_in_another_checkpoint_member_is_blocked(tmp_path: Path) -> None:
    data = _checkpoint(pickle.dumps(CLEAN, protocol=2), extra={"archive/extra/blob": pickle.dumps(MALICIOUS, 2)})
    result = _scan(tmp_path, "model.pt", data)
    assert result.verdict is ScanVerdict.BLOCKED
    assert _names_os_system(result)


def test_gzipped_pickle_is_refused_as_an_archive(tmp_path: Path) -> None:
    result = _scan(tmp_path, "model.pkl", gzip.compress(pickle.dumps(MALICIOUS)))
    assert result.verdict is ScanVerdict.BLOCKED
    assert "gzip archive" in result.findings[0].message


# ---------------------------------------------------------------------------------------------------
# Python sources
# ---------------------------------------------------------------------------------------------------

RISKY_PY = b"""import subprocess


def run(cmd):
    subprocess.call(cmd, shell=True)
    return eval(cmd)  # nosec - the uploader may not silence the review
"""


def test_risky_python_is_clean_with_advisory_bandit_findings(tmp_path: Path) -> None:
    result = _scan(tmp_path, "train.py", RISKY_PY)
    assert result.verdict is ScanVerdict.CLEAN
    assert result.advisory
    assert all(f.tool == "bandit" for f in result.findings)
    by_test = {f.message.split(":")[0]: f for f in result.findings}
    assert (by_test["B602"].line, by_test["B602"].severity) == (5, "high")
    assert (by_test["B307"].line, by_test["B307"].severity) == (6, "medium")
    assert "shell=True" in by_test["B602"].message


def test_clean_python_has_no_findings(tmp_path: Path) -> None:
    source = b'"""A model."""\n\n\ndef forward(x: float) -> float:\n    return 2 * x\n'
    assert _scan(tmp_path, "model.py", source) == ScanResult(ScanVerdict.CLEAN, (), advisory=False)


def test_python_with_a_syntax_error_is_blocked(tmp_path: Path) -> None:
    result = _scan(tmp_path, "model.py", b"def forward(x):\n    return x +\n")
    assert result.verdict is ScanVerdict.BLOCKED
    assert result.findings[0].message.startswith("not valid Python")
    assert "line 2" in result.findings[0].message


def test_zip_named_py_is_blocked(tmp_path: Path) -> None:
    # Python runs a zip file given as a script (its __main__.py), whatever the name says.
    result = _scan(tmp_path, "model.py", _zip({"__main__.py": b"import os; os.system('echo pwned')"}))
    assert result.verdict is ScanVerdict.BLOCKED


# ---------------------------------------------------------------------------------------------------
# Configs, text and arrays
# ---------------------------------------------------------------------------------------------------


def test_json_must_parse(tmp_path: Path) -> None:
    assert _scan(tmp_path, "config.json", json.dumps({"lr": 0.01, "layers": [64, 64]}).encode()).verdict == "CLEAN"
    assert _scan(tmp_path, "config.json", b'\xef\xbb\xbf{"bom": true}').verdict == "CLEAN"
    broken = _scan(tmp_path, "config.json", b'{"lr": 0.01,\n "layers": [64, }')
    assert broken.verdict is ScanVerdict.BLOCKED
    assert broken.findings[0].message.startswith("not valid JSON")
    assert "line 2" in broken.findings[0].message


def test_zip_disguised_as_json_is_blocked(tmp_path: Path) -> None:
    result = _scan(tmp_path, "config.json", _zip({"config.json": b"{}"}))
    assert result.verdict is ScanVerdict.BLOCKED
    assert "zip archive" in result.findings[0].message


@pytest.mark.parametrize(
    ("name", "data", "verdict"),
    [
        ("data.csv", "id,label\n1,café\n".encode(), ScanVerdict.CLEAN),
        ("train.yaml", b"lr: 0.01\nepochs: 3\n", ScanVerdict.CLEAN),
        ("notes.txt", b"caf\xe9 in latin-1", ScanVerdict.BLOCKED),
        ("notes.md", b"# title\x00\x01binary", ScanVerdict.BLOCKED),
        ("notes.txt", gzip.compress(b"hidden"), ScanVerdict.BLOCKED),
        ("notes.txt", b"BZh91AY&SY" + b"\x00" * 20, ScanVerdict.BLOCKED),
        ("notes.txt", b"BZh is how the line starts\n", ScanVerdict.CLEAN),
        ("data.csv", b"a,b\n" + _zip({"x.py": b"pass"}), ScanVerdict.BLOCKED),
    ],
    ids=["csv", "yaml", "latin1", "nul", "gzip", "bzip2", "bzh-text", "zip-appended"],
)
def test_text_files(tmp_path: Path, name: str, data: bytes, verdict: ScanVerdict) -> None:
    result = _scan(tmp_path, name, data)
    assert result.verdict is verdict
    assert (result.findings == ()) is (verdict is ScanVerdict.CLEAN)


def _npy(descr: object, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An .npy file as numpy.save writes it (format 1.0)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin-1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def test_float_npy_is_clean(tmp_path: Path) -> None:
    data = _npy("<f8", (3,), struct.pack("<3d", 1.0, 2.0, 3.0))
    assert _scan(tmp_path, "x.npy", data) == ScanResult(ScanVerdict.CLEAN, (), advisory=False)
    structured = _npy([("a", "<f4"), ("when", "<M8[ns]")], (1,), b"\x00" * 12)
    assert _scan(tmp_path, "s.npy", structured).verdict is ScanVerdict.CLEAN


@pytest.mark.parametrize("descr", ["|O", [("a", "<f4"), ("b", "|O")], "object"])
def test_object_npy_is_blocked(tmp_path: Path, descr: object) -> None:
    # Object arrays are stored as a pickle after the header: this one would run a shell on np.load.
    result = _scan(tmp_path, "x.npy", _npy(descr, (2,), pickle.dumps([RunsShellOnLoad(), 1], protocol=3)))
    assert result.verdict is ScanVerdict.BLOCKED
    assert "Python objects" in result.findings[0].message


def test_npy_without_its_magic_is_blocked(tmp_path: Path) -> None:
    result = _scan(tmp_path, "x.npy", pickle.dumps([1.0, 2.0]))
    assert result.verdict is ScanVerdict.BLOCKED
    assert "not a NumPy" in result.findings[0].message


def _safetensors(header: dict[str, object], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_headers(tmp_path: Path) -> None:
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    good = _safetensors({"__metadata__": {"format": "pt"}, "w": tensor}, b"\x00" * 8)
    assert _scan(tmp_path, "m.safetensors", good) == ScanResult(ScanVerdict.CLEAN, (), advisory=False)

    beyond_data = _safetensors({"w": {**tensor, "data_offsets": [0, 16]}}, b"\x00" * 8)
    assert _scan(tmp_path, "m.safetensors", beyond_data).verdict is ScanVerdict.BLOCKED
    too_long = struct.pack("<Q", 10_000) + b"{}"
    assert _scan(tmp_path, "m.safetensors", too_long).verdict is ScanVerdict.BLOCKED
    not_json = struct.pack("<Q", 4) + b"\x80\x04K." + b"\x00" * 8
    assert _scan(tmp_path, "m.safetensors", not_json).verdict is ScanVerdict.BLOCKED


def test_scan_refuses_a_type_that_is_not_allowed(tmp_path: Path) -> None:
    result = _scan(tmp_path, "tool.exe", b"MZ\x90\x00")
    assert result.verdict is ScanVerdict.BLOCKED
    assert result.findings[0].tool == "flip"
