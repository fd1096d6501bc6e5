"""Job bundles: the template wins a name clash, and the sha256 is deterministic and byte-sensitive."""

from __future__ import annotations

from pathlib import Path

import pytest

from flip_fl.flower.bundle import TEMPLATE_DIR, BundleError, build_bundle, bundle_sha256


def _user_files(tmp_path: Path, **contents: str) -> dict[str, Path]:
    source = tmp_path / "upload"
    source.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, text in contents.items():
        path = source / name.replace("/", "__")
        path.write_text(text)
        files[name] = path
    return files


def _researcher(tmp_path: Path) -> dict[str, Path]:
    return _user_files(
        tmp_path,
        **{"client_app.py": "def train(m, c): ...\n", "models.py": "def get_model(): ...\n", "config.json": "{}"},
    )


def test_the_template_wins_a_name_clash(tmp_path: Path) -> None:
    files = _researcher(tmp_path) | _user_files(
        tmp_path, **{"flip_server.py": "print('researcher server')\n", "pyproject.toml": "[project]\n"}
    )
    bundle = build_bundle(TEMPLATE_DIR, files, tmp_path / "bundle")
    for name in ("flip_server.py", "flip_client.py", "pyproject.toml"):
        assert (bundle.path / name).read_bytes() == (TEMPLATE_DIR / name).read_bytes()
    assert (bundle.path / "client_app.py").read_text() == "def train(m, c): ...\n"
    assert sorted(p.name for p in bundle.path.iterdir()) == sorted(
        ["client_app.py", "models.py", "config.json", "flip_server.py", "flip_client.py", "pyproject.toml"]
    )


def test_the_sha256_is_deterministic(tmp_path: Path) -> None:
    first = build_bundle(TEMPLATE_DIR, _researcher(tmp_path / "a"), tmp_path / "one")
    second = build_bundle(TEMPLATE_DIR, _researcher(tmp_path / "b"), tmp_path / "two")
    assert first.sha256 == second.sha256 == bundle_sha256(first.path)
    assert len(first.sha256) == 64


def test_the_sha256_changes_with_one_byte_or_one_name(tmp_path: Path) -> None:
    base = build_bundle(TEMPLATE_DIR, _researcher(tmp_path / "a"), tmp_path / "base").sha256
    changed = _researcher(tmp_path / "b")
    changed["models.py"].write_text("def get_model(): ..\n")
    assert build_bundle(TEMPLATE_DIR, changed, tmp_path / "byte").sha256 != base
    renamed = _researcher(tmp_path / "c")
    renamed["model.py"] = renamed.pop("models.py")
    assert build_bundle(TEMPLATE_DIR, renamed, tmp_path / "name").sha256 != base


def test_nested_user_files_are_kept(tmp_path: Path) -> None:
    files = _researcher(tmp_path) | _user_files(tmp_path, **{"lib/helpers.py": "X = 1\n"})
    bundle = build_bundle(TEMPLATE_DIR, files, tmp_path / "bundle")
    assert (bundle.path / "lib" / "helpers.py").read_text() == "X = 1\n"


@pytest.mark.parametrize("name", ["../escape.py", "/abs.py", "a/../../b.py", "", "__pycache__/x.pyc", "a\\b.py"])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    source = tmp_path / "f.py"
    source.write_text("x")
    with pytest.raises(BundleError):
        build_bundle(TEMPLATE_DIR, {name: source}, tmp_path / "bundle")


def test_a_non_empty_output_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stale.py").write_text("")
    with pytest.raises(BundleError, match="not empty"):
        build_bundle(TEMPLATE_DIR, _researcher(tmp_path), out)
