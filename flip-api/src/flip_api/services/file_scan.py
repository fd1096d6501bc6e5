"""Checks on files researchers upload: the name before anything is stored, the bytes before promotion.

:func:`check_file_name` refuses a name outright (``FileRejected``).  :func:`scan_file` reads a
quarantined file and decides whether it may be promoted:

* pickle-bearing files (PyTorch checkpoints, pickles) are disassembled, never loaded, and their imports
  checked with picklescan; a dangerous import, or anything that cannot be parsed, blocks the file;
* Python sources must parse; bandit's findings are advisory (stored for reviewers, never blocking),
  because model code legitimately does things a linter warns about;
* everything else must be what its extension says: parseable JSON, UTF-8 text, a well-formed
  safetensors or NumPy header, and never an archive under another name.

Every message is short and safe to show to the uploader.
"""

from __future__ import annotations

import ast
import codecs
import json
import logging
import pickletools
import struct
import subprocess
import sys
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from picklescan import scanner as picklescan  # type: ignore[import-untyped]
from picklescan.torch import InvalidMagicError  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

# .npz is refused as an archive rather than scanned: it is a zip of .npy members, and checking it would
# mean walking an uploader's zip on the hub (member names, compression bombs) for a format that
# .safetensors or one .npy per array replaces.
ALLOWED_EXTENSIONS = frozenset(
    {".py", ".json", ".yaml", ".yml", ".txt", ".md", ".csv", ".pt", ".pth", ".pkl", ".ckpt", ".safetensors", ".npy"}
)
PICKLE_EXTENSIONS = frozenset({".pt", ".pth", ".pkl", ".ckpt"})
ARCHIVE_EXTENSIONS = frozenset(
    {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".whl", ".egg", ".jar", ".zst", ".npz"}
)
TEXT_EXTENSIONS = frozenset({".yaml", ".yml", ".txt", ".md", ".csv"})
MAX_NAME_LENGTH = 128
# Python sources and JSON are parsed in memory; model code and configs are far smaller than this.
MAX_PARSED_BYTES = 64 << 20
BANDIT_TIMEOUT_S = 120
# Enough for a reviewer; a file with more findings than this is summarised by the last one.
MAX_FINDINGS = 50

_ARCHIVE_MAGIC = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"PK\x07\x08", "zip"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_PICKLE_PROTOCOL_MAGIC = tuple(bytes([0x80, version]) for version in range(2, 6))
_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 64 << 10
_SAFETENSORS_MAX_HEADER = 100 << 20  # the format's own limit
# Array element types that hold plain numbers, bytes or strings: NumPy type strings such as "<f8" or
# "|b1", and datetimes.  Everything else (notably "O", Python objects, which are stored as a pickle) is
# refused.
_PLAIN_NPY_TYPES = frozenset("biufcSUV")


class FileRejected(Exception):
    """An upload refused before anything is stored; ``code`` is the API error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ScanVerdict(StrEnum):
    CLEAN = "CLEAN"
    BLOCKED = "BLOCKED"


@dataclass(frozen=True)
class Finding:
    tool: str  # "picklescan" | "bandit" | "flip"
    severity: str  # "dangerous" | "high" | "medium" | "low" | "info"
    message: str
    line: int | None = None


@dataclass(frozen=True)
class ScanResult:
    verdict: ScanVerdict
    findings: tuple[Finding, ...]
    advisory: bool  # findings exist but do not block the file

    @classmethod
    def clean(cls, findings: Iterable[Finding] = ()) -> ScanResult:
        kept = _capped(findings)
        return cls(ScanVerdict.CLEAN, kept, advisory=bool(kept))

    @classmethod
    def blocked(cls, findings: Iterable[Finding]) -> ScanResult:
        return cls(ScanVerdict.BLOCKED, _capped(findings), advisory=False)


def _block(message: str, *, tool: str = "flip") -> ScanResult:
    return ScanResult.blocked([Finding(tool, "dangerous", message)])


def check_file_name(name: str) -> str:
    """Return the (NFC-normalised) name if it may be uploaded; raise FileRejected otherwise.

    A plain file name only, with an allowed extension (compared case-insensitively).  Archives are
    refused with their own code: the hub never unpacks uploads.
    """
    name = unicodedata.normalize("NFC", name)
    if not name or len(name) > MAX_NAME_LENGTH:
        raise FileRejected("bad_file_name", f"a file name must be 1-{MAX_NAME_LENGTH} characters")
    if "/" in name or "\\" in name:
        raise FileRejected("bad_file_name", "a plain file name is expected, without folders")
    if name.startswith("."):
        raise FileRejected("bad_file_name", "a file name may not start with a dot")
    if name != name.strip():
        raise FileRejected("bad_file_name", "a file name may not start or end with a space")
    # Cc: control characters; Cf: invisible formatting such as right-to-left overrides, which can make
    # "model_fdp.py" display as "model_yp.pdf"; Zl/Zp: line and paragraph separators.
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in name):
        raise FileRejected("bad_file_name", "a file name may not contain control or formatting characters")
    extension = _extension(name)
    if extension in ARCHIVE_EXTENSIONS:
        raise FileRejected("archive_refused", "archives are not accepted: upload the files one by one")
    if extension not in ALLOWED_EXTENSIONS:
        allowed = " ".join(sorted(ALLOWED_EXTENSIONS))
        raise FileRejected("extension_not_allowed", f"this file type is not accepted (allowed: {allowed})")
    return name


def scan_file(path: Path, name: str) -> ScanResult:
    """Scan the file at ``path``, uploaded as ``name``, without executing or loading any of it.

    An unreadable ``path`` raises OSError (the hub's problem, worth a retry); anything wrong with the
    content is a BLOCKED result.
    """
    extension = _extension(name)
    if extension not in ALLOWED_EXTENSIONS:
        return _block("this file type is not accepted")
    if extension in PICKLE_EXTENSIONS:
        return _scan_pickle_bearing(path, name)
    if extension == ".py":
        return _scan_python(path)
    return _scan_data(path, extension)


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


# ---------------------------------------------------------------------------------------------------
# Pickles and PyTorch checkpoints
# ---------------------------------------------------------------------------------------------------


def _scan_pickle_bearing(path: Path, name: str) -> ScanResult:
    head = _head(path)
    # Dispatch on the leading bytes, as torch.load does: a zip archive is a checkpoint, anything else a
    # raw pickle stream.  (Letting a scanner look for a zip directory at the end instead would let a
    # pickle with a harmless zip appended pass as "a zip".)
    if head.startswith(b"PK\x03\x04"):
        return _scan_checkpoint_zip(path)
    archive = _archive_kind(head)
    if archive is not None:
        return _block(f"the file is a {archive} archive, not a checkpoint or pickle")
    with path.open("rb") as fh:
        if not _parses_as_pickle(fh):
            return _block("the file is not a readable pickle, so it could not be scanned")
        fh.seek(0)
        try:
            if _extension(name) == ".pkl":
                result = picklescan.scan_pickle_bytes(fh, name)
            else:
                result = _scan_legacy_checkpoint(fh, name)
        except Exception:
            log.warning("picklescan failed on an upload", exc_info=True)
            return _block("the file could not be scanned")
    if result.scan_err:
        return _incomplete(result.globals, "part of the file could not be parsed, so it could not be scanned")
    return _verdict_from_globals(result.globals)


def _scan_legacy_checkpoint(fh: IO[bytes], name: str) -> Any:
    """The pre-zip torch.save layout (a few pickles, then raw tensor bytes), or a plain pickle."""
    try:
        return picklescan.scan_pytorch(fh, name)
    except InvalidMagicError:
        fh.seek(0)
        return picklescan.scan_pickle_bytes(fh, name)


def _scan_checkpoint_zip(path: Path) -> ScanResult:
    """A torch.save zip: ``<name>/data.pkl`` plus raw tensor storages, every member stored uncompressed."""
    globals_found: list[Any] = []
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            names = [member.filename for member in members]
            if len(set(names)) != len(names):
                return _block("the checkpoint has duplicate entries")
            if not any(member == "data.pkl" or member.endswith("/data.pkl") for member in names):
                return _block("the zip file is not a PyTorch checkpoint (no data.pkl)")
            # torch.save never compresses; refusing compression also rules out decompression bombs.
            if any(member.compress_type != zipfile.ZIP_STORED for member in members):
                return _block("the checkpoint has compressed entries, which torch.save never writes")
            for member in members:
                with archive.open(member) as fh:
                    is_pickle = member.filename.endswith(".pkl") or fh.read(2) in _PICKLE_PROTOCOL_MAGIC
                if not is_pickle:
                    continue
                with archive.open(member) as fh:
                    if member.filename.endswith(".pkl") and not _parses_as_pickle(fh):
                        return _block("a pickle inside the checkpoint is not readable, so it could not be scanned")
                with archive.open(member) as fh:
                    result = picklescan.scan_pickle_bytes(fh, member.filename)
                if result.scan_err:
                    return _incomplete(
                        result.globals, "a pickle inside the checkpoint could not be parsed, so it could not be scanned"
                    )
                globals_found.extend(result.globals)
            torchscript = any("/code/" in member or member.startswith("code/") for member in names)
    except Exception:
        log.info("unreadable checkpoint zip", exc_info=True)
        return _block("the checkpoint is not a readable zip file, so it could not be scanned")
    extra = []
    if torchscript:
        extra.append(Finding("flip", "medium", "TorchScript archive: its code is not scanned; review it by hand"))
    return _verdict_from_globals(globals_found, extra)


def _parses_as_pickle(fh: IO[bytes]) -> bool:
    """Whether the stream starts with one complete pickle (disassembled, never executed)."""
    try:
        for _ in pickletools.genops(fh):
            pass
    except Exception:
        return False
    return True


def _incomplete(globals_found: Iterable[Any], message: str) -> ScanResult:
    """Blocked because parsing stopped early; what was found before that is still reported."""
    findings = _verdict_from_globals(globals_found).findings
    return ScanResult.blocked([*findings, Finding("flip", "dangerous", message)])


def _verdict_from_globals(globals_found: Iterable[Any], extra: Iterable[Finding] = ()) -> ScanResult:
    """Turn picklescan's classified imports into findings: any dangerous import blocks the file."""
    dangerous: set[str] = set()
    unknown: set[str] = set()
    for found in globals_found:
        label = _printable(f"{found.module}.{found.name}")
        if found.safety == picklescan.SafetyLevel.Dangerous:
            dangerous.add(label)
        elif found.safety == picklescan.SafetyLevel.Suspicious:
            unknown.add(label)
    findings = [
        Finding("picklescan", "dangerous", f"imports {label}, which can run code when the file is loaded")
        for label in sorted(dangerous)
    ]
    findings += [
        Finding("picklescan", "low", f"imports {label} (not a known-safe import)") for label in sorted(unknown)
    ]
    findings += extra
    return ScanResult.blocked(findings) if dangerous else ScanResult.clean(findings)


# ---------------------------------------------------------------------------------------------------
# Python sources
# ---------------------------------------------------------------------------------------------------


def _scan_python(path: Path) -> ScanResult:
    if path.stat().st_size > MAX_PARSED_BYTES:
        return _block(f"the file is too large to check (limit {MAX_PARSED_BYTES >> 20} MiB for source files)")
    hidden = _hidden_archive(path)
    if hidden is not None:
        return hidden
    try:
        ast.parse(path.read_bytes(), filename="upload.py")
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno else ""
        return _block(f"not valid Python: {_printable(exc.msg)}{where}")
    except (ValueError, RecursionError, MemoryError):
        return _block("not valid Python")
    return ScanResult.clean(_bandit_findings(path))


def _bandit_findings(path: Path) -> list[Finding]:
    """bandit's findings on one file, run as a subprocess (its API is not meant for embedding)."""
    command = [sys.executable, "-m", "bandit", "-q", "-f", "json", "--ignore-nosec", str(path.resolve())]
    try:
        # The uploader's "# nosec" comments are ignored: they would let the file silence its own review.
        done = subprocess.run(  # noqa: S603 - a fixed command on our own interpreter
            command, capture_output=True, timeout=BANDIT_TIMEOUT_S, check=False, cwd=path.parent
        )
        report = json.loads(done.stdout) if done.returncode in (0, 1) else None
    except (subprocess.TimeoutExpired, OSError, ValueError):
        report = None
    if not isinstance(report, dict) or report.get("errors") or not isinstance(report.get("results"), list):
        log.warning("bandit did not complete on an upload")
        return [Finding("flip", "medium", "the static analysis did not complete; review this file by hand")]
    findings = []
    for issue in report["results"]:
        severity = str(issue.get("issue_severity", "")).lower()
        line = issue.get("line_number")
        findings.append(
            Finding(
                "bandit",
                severity if severity in ("high", "medium", "low") else "info",
                _printable(f"{issue.get('test_id', '?')}: {issue.get('issue_text', '')}", limit=200),
                line if isinstance(line, int) else None,
            )
        )
    return findings


# ---------------------------------------------------------------------------------------------------
# Data, configs and text
# ---------------------------------------------------------------------------------------------------


def _scan_data(path: Path, extension: str) -> ScanResult:
    archive = _archive_kind(_head(path))
    if archive is not None:
        return _block(f"the file is a {archive} archive, not a {extension} file")
    if extension == ".npy":
        return _check_npy(path)
    if extension == ".safetensors":
        return _check_safetensors(path)
    hidden = _hidden_archive(path)
    if hidden is not None:
        return hidden
    if extension == ".json":
        return _check_json(path)
    if extension in TEXT_EXTENSIONS:
        return _check_text(path)
    return _block("this file type is not accepted")


def _check_json(path: Path) -> ScanResult:
    if path.stat().st_size > MAX_PARSED_BYTES:
        return _block(f"the file is too large to check (limit {MAX_PARSED_BYTES >> 20} MiB for JSON files)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return _block("not UTF-8 text")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return _block(f"not valid JSON: {_printable(exc.msg)} (line {exc.lineno})")
    except (ValueError, RecursionError):
        return _block("not valid JSON")
    return ScanResult.clean()


def _check_text(path: Path) -> ScanResult:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as fh:
            for chunk in _read_chunks(fh):
                if b"\x00" in chunk:
                    return _block("the file contains NUL bytes: not a text file")
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return _block("not UTF-8 text")
    return ScanResult.clean()


def _check_npy(path: Path) -> ScanResult:
    """A NumPy .npy header: magic, version, a literal dict, and plain (never object) element types."""
    with path.open("rb") as fh:
        if fh.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            return _block("not a NumPy .npy file")
        version = fh.read(2)
        if len(version) != 2 or version[0] not in (1, 2, 3):
            return _block("unsupported .npy format version")
        size_format = "<H" if version[0] == 1 else "<I"
        raw_size = fh.read(struct.calcsize(size_format))
        if len(raw_size) != struct.calcsize(size_format):
            return _block("truncated .npy header")
        (header_size,) = struct.unpack(size_format, raw_size)
        if header_size > _NPY_MAX_HEADER:
            return _block("the .npy header is too large")
        raw_header = fh.read(header_size)
    if len(raw_header) != header_size:
        return _block("truncated .npy header")
    try:
        header = ast.literal_eval(raw_header.decode("utf-8" if version[0] == 3 else "latin-1"))
    except Exception:
        return _block("the .npy header is not readable")
    if (
        not isinstance(header, dict)
        or set(header) != {"descr", "fortran_order", "shape"}
        or not isinstance(header["fortran_order"], bool)
        or not isinstance(header["shape"], tuple)
        or not all(isinstance(dim, int) and dim >= 0 for dim in header["shape"])
    ):
        return _block("the .npy header is not valid")
    if not _plain_npy_dtype(header["descr"]):
        return _block("the array holds Python objects (stored as a pickle): save plain numeric arrays")
    return ScanResult.clean()


def _plain_npy_dtype(descr: object) -> bool:
    """Whether an .npy ``descr`` only has plain element types (recursing into structured dtypes)."""
    if isinstance(descr, str):
        kind = descr.lstrip("<>|=")
        if kind[:1] in _PLAIN_NPY_TYPES:
            return kind[1:].isdigit()
        if kind[:1] in ("m", "M"):  # timedelta and datetime, e.g. "<M8[ns]"
            return kind[1:2] == "8" and (kind[2:] == "" or (kind[2] == "[" and kind[-1] == "]"))
        return False
    if isinstance(descr, list) and descr:
        for field in descr:
            if not isinstance(field, tuple) or len(field) not in (2, 3):
                return False
            if not _plain_npy_dtype(field[1]):
                return False
        return True
    return False


def _check_safetensors(path: Path) -> ScanResult:
    """A safetensors header: 8-byte little-endian length, then a JSON object describing each tensor."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw_size = fh.read(8)
        if len(raw_size) != 8:
            return _block("not a safetensors file")
        (header_size,) = struct.unpack("<Q", raw_size)
        if header_size < 2 or header_size > _SAFETENSORS_MAX_HEADER or 8 + header_size > size:
            return _block("not a safetensors file (bad header length)")
        raw_header = fh.read(header_size)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (ValueError, RecursionError):
        return _block("not a safetensors file (unreadable header)")
    if not isinstance(header, dict):
        return _block("not a safetensors file (unreadable header)")
    data_size = size - 8 - header_size
    for tensor, entry in header.items():
        if tensor == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(value, str) for value in entry.values()):
                return _block("the safetensors metadata is not valid")
            continue
        if not _valid_tensor_entry(entry, data_size):
            return _block("the safetensors header describes a tensor that is not valid")
    return ScanResult.clean()


def _valid_tensor_entry(entry: object, data_size: int) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
        return False
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(at, int) for at in offsets):
        return False
    begin, end = offsets
    return bool(0 <= begin <= end <= data_size)


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _head(path: Path, size: int = 512) -> bytes:
    with path.open("rb") as fh:
        return fh.read(size)


def _archive_kind(head: bytes) -> str | None:
    """The kind of archive or compressed stream ``head`` starts, if any."""
    for magic, kind in _ARCHIVE_MAGIC:
        if head.startswith(magic):
            return kind
    # bzip2: "BZh", the block size digit, then the magic of the first block (or of the end of stream).
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def _hidden_archive(path: Path) -> ScanResult | None:
    """Refuse a file with a zip directory at its end: Python runs such a file as a zip application."""
    try:
        hidden = zipfile.is_zipfile(path)
    except OSError:
        hidden = False
    return _block("the file has a zip archive hidden inside it") if hidden else None


def _read_chunks(fh: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk


def _printable(text: str, *, limit: int = 120) -> str:
    """Text from a file, made safe to show: no control characters, bounded length."""
    cleaned = "".join(char if char.isprintable() else "?" for char in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _capped(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    kept = list(findings)
    if len(kept) <= MAX_FINDINGS:
        return tuple(kept)
    hidden = len(kept) - (MAX_FINDINGS - 1)
    return (*kept[: MAX_FINDINGS - 1], Finding("flip", "info", f"{hidden} more findings not shown"))
