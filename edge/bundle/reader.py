"""Open and verify a device bundle (folder or tar.gz) on the board: manifest, artifacts, evaluation and canary sets."""

from __future__ import annotations

import os
import stat
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np

from edge.artifacts.images import ImagePrep
from edge.artifacts.manifest import ArtifactRecord, Manifest, ManifestError
from edge.bundle.archive import (
    CACHE_MARKER,
    ArchiveError,
    cache_dirs,
    discard_cache,
    extract_to_cache,
    read_marker,
    unsafe_reason,
)
from edge.bundle.canary import CANARY_NAME, SCORES_PREFIX, Canary
from edge.bundle.predictive import PREDICTIVE_NAME, ArtifactTest, load_tests
from edge.core.atomic import open_regular, read_json, sha256_fd, sha256_file
from edge.core.errors import EdgekitError, UsageError

BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
EVAL_NAME = "eval.npz"
# What np.load and reading a member raise for a damaged .npz (ValueError: neither npy nor zip, or bad header).
_NPZ_ERRORS = (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile)
# Two disjoint halves of the evaluation set, interleaved so each has every class in proportion:
# the benchmark's accuracy (which chooses the front) comes from one, a policy comparison serves the other.
EVAL_PARTS = {"select": slice(0, None, 2), "serve": slice(1, None, 2)}


class BundleError(EdgekitError, ValueError):
    """A bundle is missing, unreadable, tampered with or corrupt; the message names the file."""


class BundleWarning(UserWarning):
    """Something in a bundle is unexpected but harmless (e.g. an unlisted extra file)."""


def _inside(root: Path, rel: str, what: str, source: Path) -> Path:
    """``root/rel`` after refusing paths that lead (also through links) outside the bundle ``source``."""
    why = unsafe_reason(rel)
    if why:
        raise BundleError(
            f"bundle {source}: {what} '{rel}' is refused ({why}): it points outside the bundle; "
            "the bundle may have been tampered with"
        )
    p = root / rel
    try:
        p.resolve().relative_to(root.resolve())
    except ValueError:
        raise BundleError(
            f"bundle {source}: {what} '{rel}' resolves outside the bundle ({p.resolve()}); "
            "refusing it: the bundle may have been tampered with"
        ) from None
    return p


def _find_root(extracted: Path) -> Path:
    """The bundle folder inside an extraction: the top, or a single folder at the top (tar of a folder)."""
    if (extracted / MANIFEST_NAME).exists():
        return extracted
    entries = [e for e in extracted.iterdir() if e.name != CACHE_MARKER]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).exists():
        return entries[0]
    return extracted


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
        self._predictive: dict[str, ArtifactTest] = {}
        self._predictive_all = False

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
    def image_prep(self) -> ImagePrep | None:
        """How to turn an image file into this bundle's input (size, channels, resize method): set for a run
        made from an image folder, None for a named dataset's. Use it with edge.artifacts.images.load_image."""
        rec = self.manifest.extra.get("images")
        return ImagePrep.from_dict(rec) if isinstance(rec, dict) else None

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
        return _inside(self.root, self.artifact(artifact_id).path, f"artifact {artifact_id} path", self.source)

    def verified_artifact_path(self, artifact_id: str) -> Path:
        """The artifact's path after checking, now, its size and sha256 against the manifest.

        Call it right before loading a variant (also on a reload): a file changed since the bundle
        was opened is refused with a BundleError naming it, not loaded.
        """
        rec = self.artifact(artifact_id)
        path = self.artifact_path(artifact_id)
        check_listed_file(path, str(PurePosixPath(rec.path)), rec.sha256, rec.size_bytes, self.source)
        return path

    def _unreadable(self, name: str, exc: BaseException) -> BundleError:
        return BundleError(f"bundle {self.source}: {name} is unreadable ({exc}); re-copy the bundle")

    def _open_npz(self, name: str) -> Any:
        """The bundle's ``name`` opened with np.load (members read on access); BundleError if missing or unreadable."""
        path = _inside(self.root, name, "file", self.source)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise BundleError(f"bundle {self.source}: missing file {name}; re-copy the bundle") from None
        except _NPZ_ERRORS as exc:
            raise self._unreadable(name, exc) from None

    def _npz(self, name: str) -> dict[str, np.ndarray]:
        with self._open_npz(name) as z:
            try:
                return {k: z[k] for k in z.files}
            except _NPZ_ERRORS as exc:
                raise self._unreadable(name, exc) from None

    def eval_set(self, limit: int | None = None, part: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (N,H,W,C), labels int64 (N,)), the first ``limit`` if given.

        ``part`` picks one of two disjoint halves (see ``EVAL_PARTS``): ``select`` is what the
        benchmark measures accuracy on (and so what chooses the front), ``serve`` is what a policy
        comparison sends as requests, so served accuracy is not measured on the images that chose."""
        z = self._npz(EVAL_NAME)
        images, labels = _images_labels(z, EVAL_NAME, self.source)
        if part is not None:
            if part not in EVAL_PARTS:
                raise UsageError(f"unknown evaluation part '{part}'; available: {list(EVAL_PARTS)}")
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
                        raise BundleError(
                            f"bundle {self.source}: {CANARY_NAME} '{k}' has shape {v.shape}, "
                            f"expected ({len(images)}, classes)"
                        )
                    scores[k[len(SCORES_PREFIX):]] = v.astype(np.float32)
            self._canary = Canary(images, labels, scores)
        return self._canary

    @property
    def has_predictive_test(self) -> bool:
        return isinstance(self.manifest.extra.get("predictive_test"), dict)

    def predictive_test(self, artifact_ids: Iterable[str] | None = None) -> dict[str, ArtifactTest]:
        """Artifact id -> its compact predictive test ({} for a bundle built without ``--predictive-test``), for
        ``artifact_ids`` (default: every artifact with a test); the file is read once per artifact asked for.

        BundleError names predictive.npz when the manifest says there is a test and the file is missing,
        unreadable, malformed or made for other artifacts (another bundle's)."""
        if not self.has_predictive_test:
            return {}
        wanted = None if artifact_ids is None else set(artifact_ids)
        if not self._predictive_all and (wanted is None or not wanted <= set(self._predictive)):
            files = self.manifest.extra.get("files") or {}
            if PREDICTIVE_NAME not in files:
                raise BundleError(f"bundle {self.source}: {MANIFEST_NAME} names a predictive test but does not list "
                                  f"{PREDICTIVE_NAME}; rebuild the bundle with 'edgekit bundle --predictive-test'")
            with self._open_npz(PREDICTIVE_NAME) as z:
                try:
                    self._predictive.update(load_tests(
                        z, {a.artifact_id: a.sha256 for a in self.artifacts},
                        {a.artifact_id: int(a.output.shape[-1]) for a in self.artifacts}, self.input_shape,
                        only=None if wanted is None else wanted - set(self._predictive)))
                except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
                    raise self._unreadable(PREDICTIVE_NAME, exc) from None
                except (ValueError, KeyError) as exc:
                    raise BundleError(f"bundle {self.source}: {PREDICTIVE_NAME} is refused: {exc}; rebuild the "
                                      "bundle with 'edgekit bundle --predictive-test' or re-copy it") from None
            self._predictive_all = wanted is None
        return {a: t for a, t in self._predictive.items() if wanted is None or a in wanted}

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
    """Raise BundleError unless ``path`` (``rel`` in the bundle) is a regular file of ``size`` bytes, sha256 ``sha``."""
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
            f"bundle {source}: file {rel} is corrupt (sha256 {got[:12]}..., manifest says {sha[:12]}...); "
            "re-copy the bundle"
        )


def verify_folder(root: Path, manifest: Manifest, source: Path | None = None) -> tuple[str, ...]:
    """Raise BundleError naming the first missing/corrupt/escaping file; return the unlisted extras."""
    source = source or root
    listed = _listed_files(manifest, source)
    for rel, (sha, size) in sorted(listed.items()):
        check_listed_file(_inside(root, rel, "listed file", source), rel, sha, size, source)
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
                        f"bundle {source}: '{rel}' is a link to {os.readlink(p)} outside the bundle; "
                        "refusing the bundle"
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
        raise BundleError(
            f"{source} is not a bundle: it has no {MANIFEST_NAME}; "
            "build one with 'edgekit bundle RUN --profile P --out DIR'"
        )
    try:
        return Manifest.load(root / MANIFEST_NAME)
    except ManifestError as exc:
        raise BundleError(f"bundle {source}: {MANIFEST_NAME} is unusable ({exc}); re-copy the bundle") from None


def _extract(archive: Path, archive_sha: str, cache: Path) -> None:
    try:
        extract_to_cache(archive, archive_sha, cache)
    except ArchiveError as exc:
        raise BundleError(str(exc)) from None


def is_bundle_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a bundle manifest (so it may be replaced by a new bundle)."""
    p = Path(path) / MANIFEST_NAME
    try:
        return read_json(p, "manifest").get("extra", {}).get("bundle_version") is not None
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
    for cache in cache_dirs(src, sha, cache_dir):
        try:
            fresh = not (cache.is_dir() and read_marker(cache) == sha)
            if fresh:
                _extract(src, sha, cache)
        except BundleError:
            raise
        except OSError as exc:  # read-only medium or no space: try the next place
            last_exc = exc
            continue
        try:
            return _open_extracted(cache, src, sha, verify)
        except BundleError:
            if fresh:  # the archive itself is refused: its extraction must not stay on the disk
                discard_cache(cache)
                raise
        # The cached extraction was altered after it was made; the archive itself may be fine.
        _extract(src, sha, cache)
        try:
            return _open_extracted(cache, src, sha, verify)
        except BundleError:
            discard_cache(cache)
            raise
    raise BundleError(f"cannot extract {src}: no writable place beside it or in the temp folder ({last_exc})")


def _open_extracted(cache: Path, src: Path, sha: str, verify: bool) -> Bundle:
    root = _find_root(cache)
    bundle = Bundle(root, _load_manifest(root, src), src, archive_sha256=sha)
    if verify:
        bundle.verify()
    return bundle
