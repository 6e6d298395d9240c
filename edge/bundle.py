"""Open, verify and self-check a device bundle (folder or tar.gz) on the board; also `edgekit verify`."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np

from edge.atomic import atomic_write_json, open_regular, sha256_fd, sha256_file
from edge.manifest import ArtifactRecord, Manifest, ManifestError, TensorSpec, dequantize_output, prepare_input

BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
EVAL_NAME = "eval.npz"
# Two disjoint halves of the evaluation set, interleaved so each has every class in proportion:
# the benchmark's accuracy (which chooses the front) comes from one, a policy comparison serves the other.
EVAL_PARTS = {"select": slice(0, None, 2), "serve": slice(1, None, 2)}
CANARY_NAME = "canary.npz"
SCORES_PREFIX = "scores/"
# Written into an extraction cache folder (never into a bundle) to tell which archive it came from.
CACHE_MARKER = ".edgekit-extracted.json"

# Limits for archives: a bundle of a few hundred small CNNs is far below these, a gzip bomb is not.
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_MEMBERS = 100_000

# Relative canary tolerance per precision, times max(1, max |host score|). fp32 differs between
# runtimes/CPUs only by summation order; fp16 may run in half precision on the device (XNNPACK on
# ARMv8.2, TensorRT); quantized kernels round differently on different CPUs.
#
# int8 is set from a measurement (`make board-check` with `--run demo/run`, numbers in
# tests/edge/data/canary_drift_aarch64.json): all 140 artifacts of the demo's rpi4 and
# jetson-orin-nano bundles scored on x86-64 and on aarch64 (QEMU, cortex-a72). LiteRT int8 moved
# by 0; ONNX Runtime int8 by up to 0.18 in logits of magnitude ~20, i.e. 0.0081 in this unit
# (the ensembles' probabilities: 2 steps of 1/255). The tolerance is 4x that worst drift, rounded
# up: 0.04. The margin covers other aarch64 kernels (a Pi 5's dot-product ones) that QEMU's
# Cortex-A72 does not pick. One flipped weight moves a tiny trained CNN's scores by ~0.2 in
# this unit (tests/edge/test_bundle.py), 5x the tolerance. fp32/fp16/dynamic measured below 2e-5.
CANARY_REL_TOL = {"fp32": 1e-3, "fp16": 3e-2, "dynamic": 5e-2, "int8": 4e-2}
# For a quantized output, a few quantization steps of difference is normal whatever the scale.
CANARY_QUANT_STEPS = 3


class BundleError(ValueError):
    """A bundle is missing, unreadable, tampered with or corrupt; the message names the file."""


class BundleWarning(UserWarning):
    """Something in a bundle is unexpected but harmless (e.g. an unlisted extra file)."""


@dataclass(frozen=True)
class Canary:
    """The canary set: a few test images and, per artifact, the workstation's dequantized scores."""

    images: np.ndarray  # uint8 (n, H, W, C)
    labels: np.ndarray  # int64 (n,)
    scores: dict[str, np.ndarray]  # artifact_id -> float32 (n, classes)


@dataclass(frozen=True)
class CanaryResult:
    ok: bool
    top1_match: float  # fraction of canary images whose top-1 equals the host's (nan if skipped)
    max_abs_diff: float  # max |device - host| over dequantized scores (nan if skipped)
    message: str
    tolerance: float = float("nan")
    near_ties: int = 0  # images whose host top-2 gap was too small to require a top-1 match
    skipped: bool = False  # no host scores for this artifact (the workstation lacked its runtime)


# --------------------------------------------------------------------------- path safety


def _unsafe_reason(name: str) -> str | None:
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


def _inside(root: Path, rel: str, what: str) -> Path:
    """``root/rel`` after refusing paths that lead (also through links) outside the bundle."""
    why = _unsafe_reason(rel)
    if why:
        raise BundleError(f"{what} '{rel}' is refused ({why}): it points outside the bundle; the bundle may have been tampered with")
    p = root / rel
    try:
        p.resolve().relative_to(root.resolve())
    except ValueError:
        raise BundleError(
            f"{what} '{rel}' resolves outside the bundle ({p.resolve()}); refusing it: the bundle may have been tampered with"
        ) from None
    return p


# --------------------------------------------------------------------------- archives


def _check_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every member of ``tar`` after our own checks; a refused member raises BundleError naming it."""
    out: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    total = 0
    for i, m in enumerate(tar):
        if i >= MAX_MEMBERS:
            raise BundleError(f"{archive}: more than {MAX_MEMBERS} members; this is not an edgekit bundle")
        name = m.name
        why = _unsafe_reason(name)
        if why:
            raise BundleError(f"{archive}: member '{name}' is refused ({why}); the archive may have been tampered with")
        if m.issym() or m.islnk():
            raise BundleError(
                f"{archive}: member '{name}' is refused (a {'symbolic' if m.issym() else 'hard'} link to "
                f"'{m.linkname}'); bundles contain only plain files"
            )
        if not (m.isreg() or m.isdir()):
            raise BundleError(f"{archive}: member '{name}' is refused (a device, fifo or other special file)")
        norm = str(PurePosixPath(name))
        if m.isreg():
            if norm in seen:
                raise BundleError(f"{archive}: member '{name}' appears twice; refusing the archive")
            seen.add(norm)
            if m.size > MAX_MEMBER_BYTES:
                raise BundleError(f"{archive}: member '{name}' is refused ({m.size} bytes, over the {MAX_MEMBER_BYTES} byte cap)")
            total += m.size
            if total > MAX_TOTAL_BYTES:
                raise BundleError(f"{archive}: member '{name}' is refused (archive expands past {MAX_TOTAL_BYTES} bytes)")
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
                    raise BundleError(f"{archive}: member '{exc.tarinfo.name}' is refused ({exc})") from None
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
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BundleError(f"{archive} is not a readable tar.gz ({exc}); the copy may be truncated: re-copy the bundle") from None


def _find_root(extracted: Path) -> Path:
    """The bundle folder inside an extraction: the top, or a single folder at the top (tar of a folder)."""
    if (extracted / MANIFEST_NAME).exists():
        return extracted
    entries = [e for e in extracted.iterdir() if e.name != CACHE_MARKER]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).exists():
        return entries[0]
    return extracted


def _read_marker(cache: Path) -> str:
    try:
        return str(json.loads((cache / CACHE_MARKER).read_text())["archive_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _extract_to_cache(archive: Path, archive_sha: str, cache: Path) -> Path:
    """Extract into a temp folder beside ``cache`` and rename it into place (atomic for readers)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
    try:
        _extract(archive, tmp)
        atomic_write_json(tmp / CACHE_MARKER, {"archive": str(archive), "archive_sha256": archive_sha})
        old = None
        if cache.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{cache.name}.old-", dir=cache.parent))
            os.rename(cache, old / "x")
        try:
            os.rename(tmp, cache)
        except OSError:
            # Another process extracted the same archive at the same moment: use its copy.
            if _read_marker(cache) != archive_sha:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache


def _cache_dirs(archive: Path, archive_sha: str, cache_dir: str | os.PathLike | None) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir) / f"{archive.name}.d"]
    # Beside the archive first; a read-only medium falls back to the temp folder.
    return [
        archive.parent / f"{archive.name}.d",
        Path(tempfile.gettempdir()) / "edgekit-bundles" / f"{archive.name}-{archive_sha[:16]}.d",
    ]


# --------------------------------------------------------------------------- the bundle


class Bundle:
    """An opened bundle folder: manifest, artifacts, evaluation set and canary set."""

    def __init__(self, root: Path, manifest: Manifest, source: Path, archive_sha256: str = ""):
        self.root = root
        self.manifest = manifest
        self.source = source  # what the user passed: the folder or the archive
        self.archive_sha256 = archive_sha256
        self.extra_files: tuple[str, ...] = ()
        self._canary: Canary | None = None

    @property
    def profile(self) -> str:
        return str(self.manifest.extra.get("profile", ""))

    @property
    def artifacts(self) -> tuple[ArtifactRecord, ...]:
        return self.manifest.artifacts

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.manifest.extra.get("input_shape", ()))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.extra.get("class_names", self.manifest.labels))

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.root / MANIFEST_NAME)

    def __repr__(self) -> str:
        return f"Bundle({str(self.source)!r}, profile={self.profile!r}, artifacts={len(self.artifacts)})"

    def artifact(self, artifact_id: str) -> ArtifactRecord:
        try:
            return self.manifest.get(artifact_id)
        except ManifestError as exc:
            raise BundleError(f"bundle {self.source}: {exc}") from None

    def artifact_path(self, artifact_id: str) -> Path:
        return _inside(self.root, self.artifact(artifact_id).path, f"artifact {artifact_id} path")

    def verified_artifact_path(self, artifact_id: str) -> Path:
        """The artifact's path after checking, now, its size and sha256 against the manifest.

        Call it right before loading a variant (also on a reload): a file changed since the bundle
        was opened is refused with a BundleError naming it, not loaded.
        """
        rec = self.artifact(artifact_id)
        path = self.artifact_path(artifact_id)
        check_listed_file(path, str(PurePosixPath(rec.path)), rec.sha256, rec.size_bytes, self.source)
        return path

    def _npz(self, name: str) -> dict[str, np.ndarray]:
        path = _inside(self.root, name, "file")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise BundleError(f"bundle {self.source}: missing file {name}; re-copy the bundle") from None
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"bundle {self.source}: {name} is unreadable ({exc}); re-copy the bundle") from None

    def eval_set(self, limit: int | None = None, part: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (N,H,W,C), labels int64 (N,)), the first ``limit`` if given.

        ``part`` picks one of two disjoint halves (see ``EVAL_PARTS``): ``select`` is what the
        benchmark measures accuracy on (and so what chooses the front), ``serve`` is what a policy
        comparison sends as requests, so served accuracy is not measured on the images that chose."""
        z = self._npz(EVAL_NAME)
        images, labels = _images_labels(z, EVAL_NAME, self.source)
        if part is not None:
            if part not in EVAL_PARTS:
                raise ValueError(f"unknown evaluation part '{part}'; available: {list(EVAL_PARTS)}")
            sl = EVAL_PARTS[part]
            images, labels = images[sl], labels[sl]
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return images, labels

    def canary(self) -> Canary:
        if self._canary is None:
            z = self._npz(CANARY_NAME)
            images, labels = _images_labels(z, CANARY_NAME, self.source)
            scores = {}
            for k, v in z.items():
                if k.startswith(SCORES_PREFIX):
                    if v.ndim != 2 or v.shape[0] != len(images):
                        raise BundleError(f"bundle {self.source}: {CANARY_NAME} '{k}' has shape {v.shape}, expected ({len(images)}, classes)")
                    scores[k[len(SCORES_PREFIX):]] = v.astype(np.float32)
            self._canary = Canary(images, labels, scores)
        return self._canary

    def verify(self) -> tuple[str, ...]:
        """Check every listed file's sha256 and look for unlisted ones; returns (and warns about) the extras."""
        self.extra_files = verify_folder(self.root, self.manifest, self.source)
        return self.extra_files


def _images_labels(z: dict[str, np.ndarray], name: str, source: Path) -> tuple[np.ndarray, np.ndarray]:
    if "images" not in z or "labels" not in z:
        raise BundleError(f"bundle {source}: {name} lacks 'images' or 'labels' (has {sorted(z)}); rebuild the bundle")
    images, labels = z["images"], z["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1 or len(labels) != len(images):
        raise BundleError(
            f"bundle {source}: {name} has images {images.dtype}{images.shape} and labels {labels.shape}; "
            "expected uint8 (N,H,W,C) and (N,)"
        )
    return images, labels.astype(np.int64)


def _listed_files(manifest: Manifest, source: Path) -> dict[str, tuple[str, int | None]]:
    """Relative path -> (sha256, size or None) for everything the manifest lists."""
    extra = manifest.extra
    version = extra.get("bundle_version")
    if version != BUNDLE_VERSION:
        raise BundleError(
            f"{source}: {MANIFEST_NAME} has bundle_version {version!r} (expected {BUNDLE_VERSION}); "
            "this is a run manifest or a bundle from another edgekit: rebuild it with 'edgekit bundle'"
        )
    files = extra.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{source}: {MANIFEST_NAME} has no 'files' table; rebuild the bundle")
    listed: dict[str, tuple[str, int | None]] = {}
    for a in manifest.artifacts:
        listed[str(PurePosixPath(a.path))] = (a.sha256, a.size_bytes)
    for name, sha in files.items():
        listed[str(PurePosixPath(str(name)))] = (str(sha), None)
    for required in (EVAL_NAME, CANARY_NAME):
        if required not in listed:
            raise BundleError(f"{source}: {MANIFEST_NAME} does not list {required}; rebuild the bundle")
    return listed


def _open_listed(path: Path, rel: str, source: Path) -> int:
    """A read-only fd on the listed file ``path``; never blocks on a FIFO put in its place."""
    try:
        return open_regular(path, what=f"bundle {source}: file", hint="re-copy the bundle")
    except FileNotFoundError:
        raise BundleError(f"bundle {source}: missing file {rel}; the copy is incomplete: re-copy the bundle") from None
    except ValueError as exc:
        raise BundleError(str(exc)) from None


def check_listed_file(path: Path, rel: str, sha: str, size: int | None, source: Path) -> None:
    """Raise BundleError unless ``path`` (``rel`` in the bundle) is a regular file of ``size`` bytes and sha256 ``sha``."""
    fd = _open_listed(path, rel, source)
    try:
        got_size = os.fstat(fd).st_size
        if size is not None and got_size != size:
            raise BundleError(
                f"bundle {source}: file {rel} is corrupt ({got_size} bytes, manifest says {size}); re-copy the bundle"
            )
        got = sha256_fd(fd)
    except OSError as exc:
        raise BundleError(f"bundle {source}: file {rel} cannot be read ({exc.strerror}); re-copy the bundle") from None
    finally:
        os.close(fd)
    if got != sha:
        raise BundleError(
            f"bundle {source}: file {rel} is corrupt (sha256 {got[:12]}..., manifest says {sha[:12]}...); re-copy the bundle"
        )


def verify_folder(root: Path, manifest: Manifest, source: Path | None = None) -> tuple[str, ...]:
    """Raise BundleError naming the first missing/corrupt/escaping file; return the unlisted extras."""
    source = source or root
    listed = _listed_files(manifest, source)
    for rel, (sha, size) in sorted(listed.items()):
        check_listed_file(_inside(root, rel, "listed file"), rel, sha, size, source)
    root_res = root.resolve()
    extras: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = d / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                try:
                    p.resolve().relative_to(root_res)
                except ValueError:
                    raise BundleError(
                        f"bundle {source}: '{rel}' is a link to {os.readlink(p)} outside the bundle; refusing the bundle"
                    ) from None
                if rel not in listed:
                    extras.append(rel)
            elif stat.S_ISDIR(st.st_mode):
                continue
            elif not stat.S_ISREG(st.st_mode):
                raise BundleError(f"bundle {source}: '{rel}' is a device, fifo or socket; refusing the bundle")
            elif rel not in listed and rel != MANIFEST_NAME and rel != CACHE_MARKER:
                extras.append(rel)
    extras.sort()
    if extras:
        warnings.warn(
            f"bundle {source}: {len(extras)} file(s) not listed in its manifest are ignored: {extras[:10]}",
            BundleWarning,
            stacklevel=3,
        )
    return tuple(extras)


def _load_manifest(root: Path, source: Path) -> Manifest:
    if not (root / MANIFEST_NAME).is_file():
        raise BundleError(f"{source} is not a bundle: it has no {MANIFEST_NAME}; build one with 'edgekit bundle RUN --profile P --out DIR'")
    try:
        return Manifest.load(root / MANIFEST_NAME)
    except ManifestError as exc:
        raise BundleError(f"bundle {source}: {MANIFEST_NAME} is unusable ({exc}); re-copy the bundle") from None


def is_bundle_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a bundle manifest (so it may be replaced by a new bundle)."""
    p = Path(path) / MANIFEST_NAME
    try:
        return json.loads(p.read_text()).get("extra", {}).get("bundle_version") is not None
    except (OSError, ValueError, AttributeError):
        return False


def open_bundle(path: str | os.PathLike, verify: bool = True, cache_dir: str | os.PathLike | None = None) -> Bundle:
    """Open a bundle folder or archive; with ``verify`` every checksum is checked (BundleError names the bad file).

    An archive is checked member by member (no absolute paths, '..', links or special files, size
    caps) and extracted into ``<archive>.d/`` beside it (or a temp folder if that is read-only);
    the extraction is reused while the archive's sha256 is unchanged.
    """
    src = Path(path)
    if src.is_dir():
        root = src
        manifest = _load_manifest(root, src)
        bundle = Bundle(root, manifest, src)
        if verify:
            bundle.verify()
        return bundle
    if not src.exists():
        raise BundleError(f"bundle not found: {src}")
    if not src.is_file() or not tarfile.is_tarfile(src):
        raise BundleError(f"{src} is neither a bundle folder nor a tar.gz archive; re-copy the bundle")
    sha = sha256_file(src)
    last_exc: OSError | None = None
    for cache in _cache_dirs(src, sha, cache_dir):
        try:
            if not (cache.is_dir() and _read_marker(cache) == sha):
                _extract_to_cache(src, sha, cache)
                fresh = True
            else:
                fresh = False
        except BundleError:
            raise
        except OSError as exc:  # read-only medium or no space: try the next place
            last_exc = exc
            continue
        root = _find_root(cache)
        manifest = _load_manifest(root, src)
        bundle = Bundle(root, manifest, src, archive_sha256=sha)
        if verify:
            try:
                bundle.verify()
            except BundleError:
                if fresh:
                    raise
                # The cached extraction was altered after it was made; the archive itself may be fine.
                _extract_to_cache(src, sha, cache)
                root = _find_root(cache)
                bundle = Bundle(root, _load_manifest(root, src), src, archive_sha256=sha)
                bundle.verify()
        return bundle
    raise BundleError(f"cannot extract {src}: no writable place beside it or in the temp folder ({last_exc})")


# --------------------------------------------------------------------------- canary


def canary_tolerance(precision: str, host_scores: np.ndarray, output_spec: TensorSpec | None = None) -> float:
    """Max abs score difference allowed between this device and the workstation."""
    scale = max(1.0, float(np.max(np.abs(host_scores)))) if host_scores.size else 1.0
    tol = CANARY_REL_TOL.get(precision, max(CANARY_REL_TOL.values())) * scale
    if output_spec is not None and output_spec.quantized and output_spec.scale:
        tol = max(tol, CANARY_QUANT_STEPS * float(output_spec.scale))
    return tol


def run_scores(loaded_model, images: np.ndarray) -> np.ndarray:
    """Dequantized float32 scores of ``loaded_model`` for uint8 images, one image at a time.

    One at a time because some artifacts have a fixed batch of 1, and so the workstation and
    the device run exactly the same computation.
    """
    rows = []
    for i in range(len(images)):
        x = prepare_input(images[i : i + 1], loaded_model.input_spec)
        y = loaded_model.predict(x)
        rows.append(dequantize_output(np.asarray(y), loaded_model.output_spec).reshape(1, -1))
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, 0), np.float32)


def compare_scores(host: np.ndarray, device: np.ndarray, precision: str, output_spec: TensorSpec | None = None,
                   artifact_id: str = "") -> CanaryResult:
    """Top-1 must match on every image except near-ties, and max |device - host| must be within tolerance."""
    name = artifact_id or "artifact"
    if host.shape != device.shape:
        return CanaryResult(False, 0.0, float("inf"), f"{name}: canary output shape {device.shape} != host {host.shape}")
    if not np.all(np.isfinite(device)):
        return CanaryResult(False, 0.0, float("inf"), f"{name}: canary output has NaN or inf")
    tol = canary_tolerance(precision, host, output_spec)
    diff = float(np.max(np.abs(device - host))) if host.size else 0.0
    host_top1 = np.argmax(host, axis=1)
    dev_top1 = np.argmax(device, axis=1)
    top2 = np.sort(host, axis=1)[:, -2:] if host.shape[1] >= 2 else np.zeros((len(host), 2))
    # Each score may move by up to tol, so an order flip needs a top-2 gap under 2*tol.
    near_tie = (top2[:, 1] - top2[:, 0]) < 2 * tol
    match = host_top1 == dev_top1
    bad = np.flatnonzero(~match & ~near_tie)
    frac = float(np.mean(match)) if len(match) else 1.0
    n = len(match)
    ok = len(bad) == 0 and diff <= tol
    if ok:
        msg = f"{name}: canary ok ({int(match.sum())}/{n} top-1 match, max diff {diff:.2e} <= {tol:.2e})"
    else:
        why = []
        if len(bad):
            i = int(bad[0])
            why.append(f"top-1 differs on {len(bad)}/{n} images (image {i}: {int(dev_top1[i])} here, host {int(host_top1[i])})")
        if diff > tol:
            why.append(f"max score diff {diff:.3g} > tolerance {tol:.3g}")
        msg = (f"{name}: canary FAILED: " + "; ".join(why) +
               " — this runtime computes something else than the workstation: check the runtime version "
               "and settings, or re-copy the bundle")
    return CanaryResult(ok, frac, diff, msg, tolerance=tol, near_ties=int(near_tie.sum()))


def check_canary(bundle: Bundle, artifact_id: str, loaded_model) -> CanaryResult:
    """Run the canary images through ``loaded_model`` and compare with the workstation's scores."""
    rec = bundle.artifact(artifact_id)
    canary = bundle.canary()
    host = canary.scores.get(artifact_id)
    if host is None:
        return CanaryResult(
            True, float("nan"), float("nan"),
            f"{artifact_id}: no host scores in {CANARY_NAME} (the workstation lacked its runtime); canary skipped",
            skipped=True,
        )
    try:
        device = run_scores(loaded_model, canary.images)
    except Exception as exc:  # runtimes raise their own types; any of them means the self-check failed
        return CanaryResult(False, 0.0, float("inf"), f"{artifact_id}: canary images could not be run: {type(exc).__name__}: {exc}")
    return compare_scores(host, device, rec.precision, loaded_model.output_spec, artifact_id)


# --------------------------------------------------------------------------- `edgekit verify`


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder or .tar.gz")
    p.add_argument("--profile", default=None, help="device profile whose runtime settings to use (default: this host's)")
    p.add_argument("--artifact", action="append", default=None, metavar="ID", help="check only this artifact (repeatable)")
    p.add_argument("--cache-dir", default=None, help="where to extract an archive (default: beside it)")


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def verify_bundle(bundle: Bundle, profile, artifact_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Load each artifact with each of the profile's settings for its format and run the canary."""
    from edge.backends import BackendUnavailable, get_backend

    ids = list(artifact_ids) if artifact_ids else [a.artifact_id for a in bundle.artifacts]
    rows: list[dict[str, Any]] = []
    for aid in ids:
        rec = bundle.artifact(aid)
        settings = profile.settings_for(rec.format)
        if not settings:
            rows.append(dict(artifact=aid, setting="-", provider="-", status="skip", max_diff=float("nan"),
                             message=f"profile {profile.name} has no runtime for {rec.format}"))
            continue
        for s in settings:
            row = dict(artifact=aid, setting=s.name, provider="-", max_diff=float("nan"))
            try:
                model = get_backend(s.backend).load(bundle.artifact_path(aid), s)
            except (BackendUnavailable, ValueError) as exc:
                rows.append(row | dict(status="FAIL", message=f"{aid}: cannot load with {s.name}: {exc}"))
                continue
            except Exception as exc:  # a runtime's own error type: report it as this row's failure
                rows.append(row | dict(status="FAIL", message=f"{aid}: cannot load with {s.name}: {type(exc).__name__}: {exc}"))
                continue
            try:
                row["provider"] = model.provider
                res = check_canary(bundle, aid, model)
            finally:
                model.close()
            status = "skip" if res.skipped else ("ok" if res.ok else "FAIL")
            rows.append(row | dict(status=status, max_diff=res.max_abs_diff, message=res.message))
    return rows


def run(args: argparse.Namespace) -> int:
    from device_profiles import host_profile_name, load_profile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BundleWarning)
        bundle = open_bundle(args.bundle, verify=True, cache_dir=args.cache_dir)
    profile = load_profile(args.profile or host_profile_name())
    print(f"bundle {bundle.source}: profile {bundle.profile}, {len(bundle.artifacts)} artifacts, checksums ok")
    if bundle.root != bundle.source:
        print(f"  extracted to {bundle.root}")
    for w in caught:
        if issubclass(w.category, BundleWarning):
            print(f"  warning: {w.message}")
    if bundle.profile and bundle.profile != profile.name:
        print(f"  note: bundle was built for {bundle.profile}; running it with the settings of {profile.name}")
    rows = verify_bundle(bundle, profile, args.artifact)
    w_a = max([len("artifact")] + [len(r["artifact"]) for r in rows])
    w_s = max([len("setting")] + [len(r["setting"]) for r in rows])
    w_p = max([len("provider")] + [len(r["provider"]) for r in rows])
    print(f"{'artifact':<{w_a}}  {'setting':<{w_s}}  {'provider':<{w_p}}  {'canary':<6}  {'max diff':>8}")
    for r in rows:
        print(f"{r['artifact']:<{w_a}}  {r['setting']:<{w_s}}  {r['provider']:<{w_p}}  {r['status']:<6}  {_fmt(r['max_diff']):>8}")
    failed = [r for r in rows if r["status"] == "FAIL"]
    checked = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['status']}: {r['message']}", file=sys.stderr if r["status"] == "FAIL" else sys.stdout)
    print(f"{len(checked)} ok, {len(failed)} failed, {len(rows) - len(checked) - len(failed)} skipped")
    if failed:
        return 1
    if not checked:
        print(f"nothing was checked: profile {profile.name} runs none of this bundle's artifacts", file=sys.stderr)
        return 1
    return 0
