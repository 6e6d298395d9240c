"""Tests for bundle archives (edge/bundle/archive.py through open_bundle): safe extraction, size caps, the extraction cache."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest

import edge.bundle.archive as ea
import edge.bundle.reader as eb
from edge.bundle.reader import BundleError, BundleWarning, open_bundle
from edge.core.atomic import sha256_file
from tests.edge._bundles import ONNX_FP32, TFLITE_FP32, evil_tar, flip, tar_folder

# --------------------------------------------------------------------------- archives


def test_archive_extracted_beside_and_reused(folder, tmp_path):
    arc = tar_folder(folder, tmp_path / "b.tar.gz")
    b = open_bundle(arc)
    cache = tmp_path / "b.tar.gz.d"
    assert b.root == cache and b.source == arc and b.archive_sha256 == sha256_file(arc)
    assert b.extra_files == ()
    marker = cache / ea.CACHE_MARKER
    stamp = marker.stat().st_mtime_ns
    open_bundle(arc)
    assert marker.stat().st_mtime_ns == stamp, "an unchanged archive must reuse its extraction"
    # A cache damaged after extraction is re-extracted from the (good) archive.
    flip(cache / "artifacts" / f"{TFLITE_FP32}.tflite")
    b = open_bundle(arc)
    assert sha256_file(b.artifact_path(TFLITE_FP32)) == b.artifact(TFLITE_FP32).sha256
    # A new archive at the same path replaces the extraction.
    (folder / "extra.txt").write_text("x")
    tar_folder(folder, arc)
    with pytest.warns(BundleWarning):
        b = open_bundle(arc)
    assert b.extra_files == ("extra.txt",)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_archive_with_top_folder(folder, tmp_path):
    arc = tar_folder(folder, tmp_path / "b.tgz", top="bundle-desktop")
    b = open_bundle(arc, cache_dir=tmp_path / "cache")
    assert b.root == tmp_path / "cache" / "b.tgz.d" / "bundle-desktop"
    assert len(b.artifacts) == 3


def test_archive_made_with_tar_dot(folder, tmp_path):
    # `tar czf b.tar.gz -C bundle .` names members "./manifest.json" and has a "." folder member.
    arc = tmp_path / "dot.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(folder, arcname=".")
    assert "./manifest.json" in tarfile.open(arc).getnames()
    b = open_bundle(arc)
    assert b.root == tmp_path / "dot.tar.gz.d" and len(b.artifacts) == 3 and b.extra_files == ()


def test_read_only_place_falls_back_to_temp(folder, tmp_path, monkeypatch):
    arc = tar_folder(folder, tmp_path / "ro.tar.gz")
    monkeypatch.setattr(ea.tempfile, "tempdir", str(tmp_path / "tmp"))
    real = eb.extract_to_cache

    def refuse_beside(archive, sha, cache):
        if cache.parent == tmp_path:
            raise PermissionError(13, "Read-only file system", str(cache))
        return real(archive, sha, cache)

    monkeypatch.setattr(eb, "extract_to_cache", refuse_beside)
    b = open_bundle(arc)
    assert str(b.root).startswith(str(tmp_path / "tmp" / "edgekit-bundles"))


def test_flipped_byte_in_archive_member_named(folder, tmp_path):
    flip(folder / "artifacts" / f"{ONNX_FP32}.onnx")
    arc = tar_folder(folder, tmp_path / "b.tar.gz")
    with pytest.raises(BundleError, match=rf"file artifacts/{ONNX_FP32}\.onnx is corrupt"):
        open_bundle(arc)


def _left_behind(where: Path, archive: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if p != archive)


def test_a_refused_archive_leaves_no_extraction_behind(folder, tmp_path):
    """A bad checksum or a missing manifest refuses the archive, and its extraction (the .d folder
    beside it, or the one in the temp folder) is removed, not left on the board's disk."""
    where = tmp_path / "archives"
    where.mkdir()
    flip(folder / "artifacts" / f"{ONNX_FP32}.onnx")
    arc = tar_folder(folder, where / "bad.tar.gz")
    with pytest.raises(BundleError, match="is corrupt"):
        open_bundle(arc)
    assert _left_behind(where, arc) == []
    with pytest.raises(BundleError, match="is corrupt"):  # and again: no stale extraction is trusted
        open_bundle(arc)
    (folder / "manifest.json").unlink()
    arc = tar_folder(folder, where / "nomanifest.tar.gz")
    with pytest.raises(BundleError, match="has no manifest.json"):
        open_bundle(arc)
    assert _left_behind(where, arc) == ["bad.tar.gz"]
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match="has no manifest.json"):
        open_bundle(arc, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_a_cached_extraction_damaged_beyond_use_is_extracted_again(folder, tmp_path):
    arc = tar_folder(folder, tmp_path / "b.tar.gz")
    b = open_bundle(arc)
    (b.root / "manifest.json").unlink()  # after the extraction: the archive itself is fine
    b = open_bundle(arc)
    assert (b.root / "manifest.json").is_file() and len(b.artifacts) == 3


def test_damaged_archive(folder, tmp_path):
    arc = tar_folder(folder, tmp_path / "b.tar.gz")
    data = arc.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="cut.tar.gz is not a readable tar.gz.*re-copy"):
        open_bundle(tmp_path / "cut.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(BundleError, match="neither a bundle folder nor a tar.gz"):
        open_bundle(tmp_path / "junk.tar.gz")


def _info(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type = type_
    i.linkname = linkname
    return i


@pytest.mark.parametrize(
    "info, why",
    [
        (_info("../escape.txt"), r"'\.\.' in path"),
        (_info("artifacts/../../escape.txt"), r"'\.\.' in path"),
        (_info("/tmp/edgekit-abs-escape.txt"), "absolute path"),
        (_info("artifacts/link.tflite", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link to '/etc/passwd'"),
        (_info("artifacts/rel.tflite", tarfile.SYMTYPE, "../../x"), "symbolic link"),
        (_info("artifacts/hard.tflite", tarfile.LNKTYPE, "manifest.json"), "hard link"),
        (_info("dev/sda", tarfile.BLKTYPE), "device, fifo"),
        (_info("fifo", tarfile.FIFOTYPE), "device, fifo"),
        (_info("a\\..\\b"), "backslash"),
    ],
    ids=["dotdot", "dotdot-nested", "absolute", "symlink-abs", "symlink-rel", "hardlink", "blockdev", "fifo", "backslash"],
)
def test_evil_members_refused(folder, tmp_path, info, why):
    arc = evil_tar(folder, tmp_path / "evil.tar.gz", info)
    name = info.name
    with pytest.raises(BundleError, match=rf"member '{re.escape(name)}' is refused \(.*{why}"):
        open_bundle(arc)
    # Nothing was extracted, nothing escaped.
    assert not (tmp_path / "evil.tar.gz.d").exists()
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/edgekit-abs-escape.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_duplicate_and_oversized_members(folder, tmp_path, monkeypatch):
    arc = evil_tar(folder, tmp_path / "dup.tar.gz", _info("manifest.json"), b"{}")
    with pytest.raises(BundleError, match="member 'manifest.json' appears twice"):
        open_bundle(arc)
    monkeypatch.setattr(ea, "MAX_MEMBER_BYTES", 1000)
    arc = tar_folder(folder, tmp_path / "big.tar.gz")
    with pytest.raises(BundleError, match="over the 1000 byte cap"):
        open_bundle(arc)
    monkeypatch.setattr(ea, "MAX_MEMBER_BYTES", 1 << 30)
    monkeypatch.setattr(ea, "MAX_TOTAL_BYTES", 5000)
    with pytest.raises(BundleError, match="expands past 5000 bytes"):
        open_bundle(arc)


def test_extra_member_in_archive_reported(folder, tmp_path):
    arc = evil_tar(folder, tmp_path / "x.tar.gz", _info("README.txt"), b"hello")
    with pytest.warns(BundleWarning, match="README.txt"):
        b = open_bundle(arc)
    assert b.extra_files == ("README.txt",)
