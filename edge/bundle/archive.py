"""Safe extraction of bundle archives (tar.gz): path and member checks, size caps, and the extraction cache."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from edge.core.atomic import atomic_write_json, read_json
from edge.core.errors import EdgekitError

# Written into an extraction cache folder (never into a bundle) to tell which archive it came from.
CACHE_MARKER = ".edgekit-extracted.json"

# Limits for archives: a bundle of a few hundred small CNNs is far below these, a gzip bomb is not.
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_MEMBERS = 100_000


class ArchiveError(EdgekitError, ValueError):
    """An archive is unreadable or refused (an unsafe member, over a cap); the message names it and the member."""


def unsafe_reason(name: str) -> str | None:
    """Why a relative path taken from an archive or manifest must not be used (None if fine)."""
    if not name:
        return "empty path"
    if "\x00" in name:
        return "NUL byte in path"
    if "\\" in name:
        return "backslash in path"
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in path"
    return None


def _check_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every member of ``tar`` after our own checks; a refused member raises ArchiveError naming it."""
    out: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    total = 0
    for i, m in enumerate(tar):
        if i >= MAX_MEMBERS:
            raise ArchiveError(f"{archive}: more than {MAX_MEMBERS} members; this is not an edgekit bundle")
        name = m.name
        why = unsafe_reason(name)
        if why:
            raise ArchiveError(
                f"{archive}: member '{name}' is refused ({why}); the archive may have been tampered with"
            )
        if m.issym() or m.islnk():
            raise ArchiveError(
                f"{archive}: member '{name}' is refused (a {'symbolic' if m.issym() else 'hard'} link to "
                f"'{m.linkname}'); bundles contain only plain files"
            )
        if not (m.isreg() or m.isdir()):
            raise ArchiveError(f"{archive}: member '{name}' is refused (a device, fifo or other special file)")
        norm = str(PurePosixPath(name))
        if m.isreg():
            if norm in seen:
                raise ArchiveError(f"{archive}: member '{name}' appears twice; refusing the archive")
            seen.add(norm)
            if m.size > MAX_MEMBER_BYTES:
                raise ArchiveError(
                    f"{archive}: member '{name}' is refused ({m.size} bytes, over the {MAX_MEMBER_BYTES} byte cap)"
                )
            total += m.size
            if total > MAX_TOTAL_BYTES:
                raise ArchiveError(
                    f"{archive}: member '{name}' is refused (archive expands past {MAX_TOTAL_BYTES} bytes)"
                )
        out.append(m)
    return out


def _extract(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _check_members(tar, archive)
            if hasattr(tarfile, "data_filter"):
                try:
                    tar.extractall(dest, members=members, filter="data")
                except tarfile.FilterError as exc:  # our checks should have caught it first
                    raise ArchiveError(f"{archive}: member '{exc.tarinfo.name}' is refused ({exc})") from None
            else:  # Python < 3.11.4: our checks above already refused links, devices and escapes
                for m in members:
                    target = dest / m.name
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    with src, open(target, "wb") as fh:
                        shutil.copyfileobj(src, fh)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ArchiveError(
            f"{archive} is not a readable tar.gz ({exc}); the copy may be truncated: re-copy the bundle"
        ) from None


def read_marker(cache: Path) -> str:
    """The sha256 of the archive ``cache`` was extracted from ("" when unknown)."""
    try:
        return str(read_json(cache / CACHE_MARKER, "extraction marker")["archive_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def extract_to_cache(archive: Path, archive_sha: str, cache: Path) -> Path:
    """Extract into a temp folder beside ``cache`` and rename it into place (atomic for readers)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
    old: Path | None = None
    try:
        _extract(archive, tmp)
        atomic_write_json(tmp / CACHE_MARKER, {"archive": str(archive), "archive_sha256": archive_sha})
        if cache.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{cache.name}.old-", dir=cache.parent))
            os.rename(cache, old / "x")
        try:
            os.rename(tmp, cache)
        except OSError:
            # Another process extracted the same archive at the same moment: use its copy.
            if read_marker(cache) != archive_sha:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    return cache


def discard_cache(cache: Path) -> None:
    """Remove the extraction of an archive that was refused (a bad checksum, no manifest), so that
    nothing of it stays on the board's disk; moved aside first, so no reader sees half of it."""
    if not read_marker(cache):
        return  # not an extraction this module made: not ours to delete
    try:
        aside = Path(tempfile.mkdtemp(prefix=f".{cache.name}.refused-", dir=cache.parent))
        os.rename(cache, aside / "x")
    except OSError:
        shutil.rmtree(cache, ignore_errors=True)
        return
    shutil.rmtree(aside, ignore_errors=True)


def cache_dirs(archive: Path, archive_sha: str, cache_dir: str | os.PathLike | None) -> list[Path]:
    """Where to extract ``archive``, in order of preference."""
    if cache_dir is not None:
        return [Path(cache_dir) / f"{archive.name}.d"]
    # Beside the archive first; a read-only medium falls back to the temp folder.
    return [
        archive.parent / f"{archive.name}.d",
        Path(tempfile.gettempdir()) / "edgekit-bundles" / f"{archive.name}-{archive_sha[:16]}.d",
    ]
