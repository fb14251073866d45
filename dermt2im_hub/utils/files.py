"""Atomic writes, JSON-lines helpers and the file-name checks every stage shares.

Every stage writes through these so a kill -9 never leaves a half-written file under its final name:
data goes to a temporary file in the same folder, is flushed and fsynced, then renamed into place.
Weight files are told apart here (pickle formats are refused everywhere, safetensors accepted), and untrusted
relative file names (metadata.jsonl `file_name`, journal rows) are joined to their folder by `safe_join` only.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

_HASH_CHUNK = 1 << 20

# Formats that unpickle on load (arbitrary code execution): weights load and travel as safetensors only.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
MAX_NAME_CHARS = 1024  # an untrusted relative file name longer than this is refused


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; outputs get the mode every other tool gives (0644 under
# the usual umask 022). Read once: changing the umask is process-wide and not thread-safe.
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(obj: Any) -> Any:
    """NaN and infinity are not JSON (strict readers refuse them): they are written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(value) for value in obj]
    return obj


def json_dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` that never writes NaN or Infinity (they become null)."""
    try:
        return json.dumps(obj, allow_nan=False, default=str, **kwargs)
    except ValueError:
        return json.dumps(_json_safe(obj), allow_nan=False, default=str, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json_dumps(obj, indent=indent, sort_keys=False) + "\n")


def encode_png(image, pnginfo=None, compress_level: int = 6) -> bytes:
    """PNG bytes of a PIL image; deterministic (Pillow writes no timestamp chunk)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
    return buffer.getvalue()


def atomic_save_png(image, path: str | os.PathLike, pnginfo=None, compress_level: int = 6) -> Path:
    return atomic_write_bytes(path, encode_png(image, pnginfo=pnginfo, compress_level=compress_level))


def atomic_save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it (plots are written next to stage outputs)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (from a killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open("r", encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    yield from read_jsonl(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Atomically (re)write a whole JSON-lines file."""
    text = "".join(json_dumps(row, sort_keys=False) + "\n" for row in rows)
    return atomic_write_text(path, text)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows and fsync; used for resumable logs where a rewrite per row would be quadratic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json_dumps(row, sort_keys=False) + "\n" for row in rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete leftovers of interrupted atomic writes (`.name.XXXX.tmp`) below `folder`."""
    removed = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


# ---------------------------------------------------------------------------------------------- weight files


def is_pickle_weight(path: str | os.PathLike) -> bool:
    """Whether a file name has a pickle-based weight format (.bin .pt .pth .pkl .pickle .ckpt, any case)."""
    return str(path).lower().endswith(PICKLE_SUFFIXES)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether a file name ends in `.safetensors`, in exactly that case: diffusers and timm pick their
    safetensors reader by this exact suffix and fall back to torch.load for anything else (`X.SAFETENSORS`)."""
    return str(path).endswith(SAFETENSORS_SUFFIX)


# ---------------------------------------------------------------------------------------------- untrusted names


def safe_join(root: str | os.PathLike, name: object, *, windows_separators: bool = False) -> Path | None:
    """`root / name` when the untrusted `name` is a relative POSIX path that stays inside `root`, symlinks
    resolved; else None. Refused: non-strings, empty names, NUL bytes, absolute paths, `..`, a part over 255 or
    a name over MAX_NAME_CHARS characters, and a path whose symlinks lead out of `root`. A backslash makes a name
    unsafe unless `windows_separators`, which reads it as `/` (names written on Windows)."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or "\x00" in name:
        return None
    if "\\" in name:
        if not windows_separators:
            return None
        name = name.replace("\\", "/")
    pure = PurePosixPath(name)
    if pure.is_absolute() or not pure.parts or any(part == ".." or len(part) > 255 for part in pure.parts):
        return None
    root = Path(root)
    path = root.joinpath(*pure.parts)
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # symlink loops
        return None
    return path if inside else None


def path_problem(path: str | os.PathLike) -> str | None:
    """Why a listed file cannot be used, or None: a name that is not valid UTF-8 (it cannot be written into
    metadata, manifests or a Hub repo) or a link that leads nowhere (broken, or a loop). Stages skip and
    report such files instead of stopping on them."""
    text = os.fsdecode(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "unreadable_name"
    try:
        os.stat(path)
    except OSError as exc:
        return "broken_link" if os.path.islink(path) else f"unreadable_file ({exc.strerror})"
    return None


def describe_path(path: str | os.PathLike) -> str:
    """A file name safe to print or write to JSON: undecodable bytes shown as \\xNN escapes."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def missing_local_path(text: str) -> bool:
    """Whether `text`, which names nothing on disk, was meant as a local path rather than a Hub id (`org/name`):
    it starts with `/`, `./`, `../` or `~`, or its first part is a local folder (`outputs/lora` typed before the
    run that writes it). Such a name gets "no such folder" at once instead of Hub requests and retries."""
    text = str(text)
    try:
        if Path(text).expanduser().exists():
            return False
        first = PurePosixPath(text).parts[0] if text else ""
        return text.startswith(("/", "./", "../", "~")) or ("/" in text and Path(first).is_dir())
    except OSError:
        return False
