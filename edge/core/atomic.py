"""Atomic file writes (temp file + fsync + rename), sha256 digests and the JSON file reader shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from edge.core.errors import MissingError, UsageError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            # mkstemp creates 0600; give the file the mode a plain open() would.
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half."""
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_fd(fd: int, chunk: int = 1 << 20) -> str:
    """sha256 of what is left to read from ``fd`` (the fd stays open)."""
    h = hashlib.sha256()
    while True:
        block = os.read(fd, chunk)
        if not block:
            break
        h.update(block)
    return h.hexdigest()


def read_json(
    path: str | os.PathLike,
    what: str = "file",
    error: Callable[[str], Exception] | None = None,
    *,
    max_bytes: int | None = None,
    max_items: int | None = None,
    hint: str = "",
) -> Any:
    """The JSON in file ``path``; every failure names the file (``what`` says what it is) and what to do.

    Without ``error`` a missing file is a FileNotFoundError and unreadable or invalid JSON a
    ValueError (another OSError propagates); with it, each of those becomes ``error(message)``,
    so a caller gets its own error class. With ``max_bytes`` only a regular file of at most that
    many bytes is read (never blocking on a FIFO), and ``max_items`` bounds the JSON values it may
    hold (its commas and brackets are counted, bounding the parsed value's memory); ``hint`` ends
    those refusals. No message quotes the file's content.
    """
    try:
        if max_bytes is None:
            return _read_json(Path(path), what)
        return _read_json_bounded(Path(path), max_bytes, what, hint, max_items)
    except (OSError, ValueError) as exc:
        if error is None:
            raise
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise error(f"{what} {path} cannot be read ({exc.strerror or exc}); check it is a readable file") from None
        raise error(str(exc)) from None


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingError(f"{what} not found: {path}") from None
    return _loads(text, f"{what} {path}")


def _loads(text: str, label: str) -> Any:
    """``json.loads`` whose every failure is a ValueError naming ``label`` (never the content)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{label} is not valid JSON ({exc.msg} at line {exc.lineno}); "
            "it may be truncated by an interrupted run: regenerate it"
        ) from None
    except RecursionError:
        raise UsageError(f"{label} nests JSON arrays or objects too deeply to be read; regenerate it") from None
    except ValueError:  # an integer of thousands of digits (sys.get_int_max_str_digits)
        raise UsageError(f"{label} holds a number too long to read; regenerate it") from None


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a stat mode is, in words ("a regular file", "a FIFO (named pipe)", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _not_regular(path: Path, mode: int, what: str, hint: str) -> ValueError:
    return ValueError(
        f"{what} {path} is {file_kind(mode)}, not a regular file; {hint or 'pass the path of a regular file'}"
    )


def open_regular(path: str | os.PathLike, what: str = "file", hint: str = "") -> int:
    """A read-only fd on ``path`` if it is a regular file (following links); never blocks on a FIFO.

    FileNotFoundError if it is missing; ValueError saying what it is instead (a FIFO, a device,
    a directory, a socket) or why it cannot be opened. The caller closes the fd.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MissingError(f"{what} not found: {path}") from None
    except OSError as exc:  # a socket (ENXIO), no permission, a loop of links...
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode, what, hint) from None
        raise UsageError(f"{what} {path} cannot be opened ({exc.strerror}); check its permissions") from None
    except ValueError:  # a NUL byte in the path
        raise UsageError(
            f"{what} path {path!r} is not a valid path; {hint or 'pass the path of a regular file'}"
        ) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise UsageError(f"{what} {path} cannot be read ({exc.strerror}); regenerate or re-copy it") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode, what, hint)
    return fd


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        block = os.read(fd, min(left, 1 << 20))
        if not block:
            break
        chunks.append(block)
        left -= len(block)
    return b"".join(chunks)


def read_regular_bytes(path: str | os.PathLike, max_bytes: int, what: str = "file", hint: str = "") -> bytes:
    """The content of regular file ``path``, refused (ValueError) past ``max_bytes``; see ``open_regular``."""
    path = Path(path)
    too_big = ValueError(f"{what} {path} is larger than the {max_bytes} byte cap; {hint or 'pass a smaller file'}")
    fd = open_regular(path, what, hint)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise too_big
        data = _read_at_most(fd, max_bytes + 1)  # the file may grow after fstat
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read ({exc.strerror}); regenerate or re-copy it") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise too_big
    return data


def _read_json_bounded(path: Path, max_bytes: int, what: str, hint: str, max_items: int | None) -> Any:
    data = read_regular_bytes(path, max_bytes, what, hint)
    label = f"{what} {path}"
    if max_items is not None and data.count(b",") + data.count(b"[") + data.count(b"{") > max_items:
        raise UsageError(f"{label} holds more than {max_items} JSON values; {hint or 'pass a smaller file'}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{label} is not UTF-8 text (bad byte at offset {exc.start}); regenerate it") from None
    return _loads(text, label)


def clean_stale_temps(folder: str | os.PathLike) -> int:
    """Remove temp files a killed writer left behind; returns how many were removed."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.rglob(".*.tmp"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n
