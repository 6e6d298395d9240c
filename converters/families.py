"""CNN families: a TOML grid or random space expands into frozen ModelSpecs, each built as a Keras model.

A family file (``converters/families/<name>.toml`` or any path) looks like::

    name = "default"
    description = "..."
    mode = "grid"              # "grid": every combination; "random": `count` seeded draws
    # count = 50               # random mode only
    # seed = 0                 # random mode only
    input_size = [28, 28]      # the smallest input the family must fit (shape checks use it)
    preprocess = "rescale"     # or "standardize" with mean = [..], std = [..] in pixel units (0..255)

    [[space]]                  # one or more; the family is their union, in order, without duplicates
    blocks = [1, 2, 3]         # conv blocks ...
    width = [8, 16]            # ... with width * growth**i filters in block i
    growth = 2
    # filters = [[8, 16], [16, 32, 64]]   # or explicit per-block filters (then no blocks/width/growth)
    convs = [1, 2]             # conv layers per block
    kernel = [3, 5]
    pool = ["max", "avg", "stride", "none"]   # how each block downsamples ("stride": last conv strides 2)
    vip = ["none", "last"]     # virtual pooling per block: none|first|last|all|alt, or a 0/1 list per block
    psconv = [false, true]     # pre-defined sparse 3x3 kernels on every conv but the first
    dense = [0, 64]            # hidden dense units before the logits (0: none)
    dropout = [0.0]
    head = ["gap"]             # "gap" (global average pooling) or "flatten"

Every space key takes a value or a list of values (a list is one grid axis); an integer axis may be
written ``{min = 4, max = 32, step = 4}``. A space key may also be set once at the top level as the
default for every space.

Ensembles of trained members (optional, any number)::

    [[ensemble]]
    members = ["c1-f8-k3-max-d0-vip0-ps0", "c2-f8.16-k3-max-d0-vip00-ps0"]   # model ids of this family

    [[ensemble]]
    top = 3                    # the 3 members of highest *validation* accuracy ...
    # members = [..]           # ... among these ids (default: among the specs the sweep trains)
    # name = "top3"            # optional word put into the ensemble's id

An ensemble is one Keras model whose output is the mean of its members' softmax probabilities;
``edgekit train`` builds it (no training) after its members, as ``models/<ensemble id>/``, and it
converts and benchmarks like any other model. Its id is ``ens<K>-[<name>-]<hash8>`` where the hash
covers the sorted member ids (see EnsembleSpec). ``python -m converters.families FAMILY`` lists ids.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import random
import re
import tomllib
import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
FAMILY_DIR = HERE / "families"

POOLS = ("max", "avg", "stride", "none")
HEADS = ("gap", "flatten")
PREPROCESS = ("rescale", "standardize")
VIP_PATTERNS = ("none", "first", "last", "all", "alt")
MODES = ("grid", "random")


class FamilyError(ValueError):
    """A family file or model spec has an unknown key, a bad value or an impossible shape."""


# ---------------------------------------------------------------------------------------------
# ModelSpec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One CNN of a family; every field is a hyper-parameter and the id is derived from all of them."""

    filters: tuple[int, ...]
    kernel: int = 3
    convs: int = 1
    pool: str = "max"
    vip: tuple[int, ...] = ()  # per block 0/1; () means no ViP
    psconv: bool = False
    dense: int = 0
    dropout: float = 0.0
    head: str = "gap"
    preprocess: str = "rescale"
    mean: tuple[float, ...] = ()  # standardize only, pixel units, one value or one per channel
    std: tuple[float, ...] = ()

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass normalisation)
        filters = self.filters
        if isinstance(filters, int) and not isinstance(filters, bool):
            filters = (filters,)
        if not isinstance(filters, (tuple, list)) or not filters:
            raise FamilyError(f"filters: must be a non-empty list of positive integers, got {self.filters!r}")
        for f in filters:
            if not _is_int(f) or f <= 0:
                raise FamilyError(f"filters: every block needs a positive integer filter count, got {self.filters!r}")
        set_("filters", tuple(int(f) for f in filters))
        for key, lo in (("kernel", 1), ("convs", 1), ("dense", 0)):
            v = getattr(self, key)
            if not _is_int(v) or v < lo:
                raise FamilyError(f"{key}: must be an integer >= {lo}, got {v!r}")
        if self.kernel > 15:
            raise FamilyError(f"kernel: {self.kernel} is larger than any supported input (max 15)")
        _choice("pool", self.pool, POOLS)
        _choice("head", self.head, HEADS)
        _choice("preprocess", self.preprocess, PREPROCESS)
        if not isinstance(self.psconv, (bool, int)) or self.psconv not in (0, 1, True, False):
            raise FamilyError(f"psconv: must be true or false, got {self.psconv!r}")
        set_("psconv", bool(self.psconv))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise FamilyError(f"dropout: must be a number in [0, 1), got {self.dropout!r}")
        set_("dropout", float(self.dropout))
        set_("vip", resolve_vip(self.vip, len(self.filters)))
        if self.psconv and self.kernel != 3:
            raise FamilyError(f"psconv: pre-defined sparse kernels need kernel 3, got kernel {self.kernel}")
        mean, std = tuple(self.mean or ()), tuple(self.std or ())
        if self.preprocess == "standardize":
            if not mean or not std:
                raise FamilyError("mean/std: preprocess 'standardize' needs mean and std (pixel units, 0..255)")
            for key, vals in (("mean", mean), ("std", std)):
                if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in vals):
                    raise FamilyError(f"{key}: must be numbers, got {vals!r}")
            if any(s <= 0 for s in std):
                raise FamilyError(f"std: every value must be positive, got {std!r}")
        elif mean or std:
            raise FamilyError("mean/std: only used with preprocess = 'standardize'")
        set_("mean", tuple(float(v) for v in mean))
        set_("std", tuple(float(v) for v in std))

    # -- derived ---------------------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return len(self.filters)

    @property
    def uses_vip(self) -> bool:
        return any(self.vip)

    @property
    def model_id(self) -> str:
        """Stable, readable, filesystem-safe id, e.g. ``c3-f16.32.64-k3-max-d64-vip010-ps1``."""
        parts = [f"c{self.blocks}" + (f"x{self.convs}" if self.convs != 1 else "")]
        parts.append("f" + ".".join(str(f) for f in self.filters))
        parts.append(f"k{self.kernel}")
        parts.append(self.pool)
        parts.append(f"d{self.dense}")
        parts.append("vip" + "".join(str(v) for v in self.vip))
        parts.append(f"ps{int(self.psconv)}")
        if self.dropout:
            parts.append(f"dr{self.dropout:g}")
        if self.head != "gap":
            parts.append(self.head)
        if self.preprocess == "standardize":
            parts.append("std" + "_".join(f"{m:g}" for m in self.mean) + "_" + "_".join(f"{s:g}" for s in self.std))
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"model_id": self.model_id, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        if not isinstance(d, dict):
            raise FamilyError(f"model spec must be a JSON object, got {type(d).__name__}")
        if d.get("kind") == ENSEMBLE_KIND:
            raise FamilyError("this is an ensemble spec (kind 'ensemble'); read it with families.load_spec() "
                              "or EnsembleSpec.from_dict()")
        known = {f.name for f in fields(cls)}
        extra = set(d) - known - {"model_id"}
        if extra:
            raise FamilyError(f"{sorted(extra)[0]}: unknown model spec key; known: {sorted(known)}")
        if "filters" not in d:
            raise FamilyError("filters: missing from the model spec")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        spec = cls(**kw)
        if "model_id" in d and d["model_id"] != spec.model_id:
            raise FamilyError(
                f"model_id: {d['model_id']!r} does not match the spec's fields (they give {spec.model_id!r})"
            )
        return spec

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        """Read a ``spec.json`` written from ``to_dict()``."""
        p = Path(path)
        d = _read_spec_json(p)
        try:
            return cls.from_dict(d)
        except FamilyError as exc:
            raise FamilyError(f"{p}: {exc}") from None

    # -- shape ------------------------------------------------------------------------------------
    def check_input(self, input_size: Sequence[int]) -> None:
        """Raise FamilyError if this spec cannot run on an (H, W[, C]) input (pooling too deep, kernel too big)."""
        h, w = int(input_size[0]), int(input_size[1])
        for key, reason in _shape_problems(self, h, w):
            raise FamilyError(f"{key}: {reason}")
        if self.preprocess == "standardize" and len(input_size) > 2:
            c = int(input_size[2])
            for key in ("mean", "std"):
                n = len(getattr(self, key))
                if n not in (1, c):
                    raise FamilyError(f"{key}: has {n} values; the input has {c} channels (give 1 or {c})")

    def estimate_macs(self, input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10) -> int:
        """MACs per image computed from the spec alone (no Keras); equals count_params_macs' MACs."""
        cin = int(input_shape[2]) if len(input_shape) > 2 else 1
        macs = 0
        h = w = 0
        for p in self.conv_plan(input_shape):
            oh, ow = p["out_hw"]
            if p["vip"]:
                oh, ow = math.ceil(oh / 2), math.ceil(ow / 2)
            if p["psconv"]:
                ih, iw = p["in_hw"]
                macs += psconv_macs(ih, iw, cin, p["filters"], p["stride"] * (2 if p["vip"] else 1))
            else:
                macs += oh * ow * self.kernel * self.kernel * cin * p["filters"]
            cin = p["filters"]
            h, w = p["out_hw"]
            if p["conv"] == self.convs - 1 and self.pool in ("max", "avg"):
                h, w = h // 2, w // 2
        feat = cin if self.head == "gap" else h * w * cin
        if self.dense:
            macs += feat * self.dense
            feat = self.dense
        return macs + feat * num_classes

    def conv_plan(self, input_size: Sequence[int]) -> list[dict[str, Any]]:
        """Per conv layer: block, index, stride, vip, psconv, input and output feature map sizes."""
        h, w = int(input_size[0]), int(input_size[1])
        plan = []
        for b, f in enumerate(self.filters):
            for j in range(self.convs):
                stride = 2 if (self.pool == "stride" and j == self.convs - 1) else 1
                first = b == 0 and j == 0
                oh, ow = math.ceil(h / stride), math.ceil(w / stride)
                plan.append(
                    dict(block=b, conv=j, filters=f, stride=stride, vip=bool(self.vip[b]),
                         psconv=self.psconv and not first and self.kernel == 3, in_hw=(h, w), out_hw=(oh, ow))
                )
                h, w = oh, ow
            if self.pool in ("max", "avg"):
                h, w = h // 2, w // 2
        return plan


def _read_spec_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise FamilyError(f"{p}: no such spec file") from None
    except json.JSONDecodeError as exc:
        raise FamilyError(f"{p}: not valid JSON ({exc})") from None


def load_spec(path: str | Path) -> "ModelSpec | EnsembleSpec":
    """Read any ``spec.json`` of a run: a ModelSpec, or an EnsembleSpec (``"kind": "ensemble"``)."""
    p = Path(path)
    d = _read_spec_json(p)
    try:
        if isinstance(d, dict) and d.get("kind") == ENSEMBLE_KIND:
            return EnsembleSpec.from_dict(d)
        return ModelSpec.from_dict(d)
    except FamilyError as exc:
        raise FamilyError(f"{p}: {exc}") from None


def psconv_macs(h: int, w: int, cin: int, cout: int, strides: int = 1, implementation: str = "shifted") -> int:
    """MACs of one PSConv2D on an h x w input, as the given implementation executes them."""
    oh, ow = math.ceil(h / strides), math.ceil(w / strides)
    if implementation == "masked":
        return oh * ow * 9 * cin * cout
    if strides == 1 and cout > 1:
        return (oh + 1) * ow * 4 * cin * cout  # one extra row feeds the output-side row shift
    return oh * ow * 4 * cin * cout


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise FamilyError(f"{key}: must be one of {list(allowed)}, got {value!r}")


def resolve_vip(vip: Any, blocks: int) -> tuple[int, ...]:
    """A ViP pattern name or 0/1 list -> a per-block 0/1 tuple of length ``blocks``."""
    if vip is None or vip == () or vip == [] or vip == "none" or vip is False:
        return (0,) * blocks
    if isinstance(vip, str):
        if vip == "first":
            return (1,) + (0,) * (blocks - 1)
        if vip == "last":
            return (0,) * (blocks - 1) + (1,)
        if vip == "all":
            return (1,) * blocks
        if vip == "alt":  # every other block, starting with the second
            return tuple(b % 2 for b in range(blocks))
        raise FamilyError(f"vip: unknown pattern {vip!r}; use one of {list(VIP_PATTERNS)} or a 0/1 list per block")
    if isinstance(vip, str) or not isinstance(vip, (list, tuple)):
        raise FamilyError(f"vip: must be a pattern name {list(VIP_PATTERNS)} or a 0/1 list per block, got {vip!r}")
    if len(vip) != blocks:
        raise FamilyError(f"vip: {list(vip)} has {len(vip)} entries but the spec has {blocks} blocks")
    out = []
    for v in vip:
        if v not in (0, 1) or isinstance(v, float):
            raise FamilyError(f"vip: entries must be 0 or 1, got {list(vip)}")
        out.append(int(v))
    return tuple(out)


def _shape_problems(spec: ModelSpec, h: int, w: int) -> Iterable[tuple[str, str]]:
    """(key, reason) for each reason ``spec`` cannot run on an h x w input (first one is enough)."""
    h0, w0 = h, w
    for b in range(spec.blocks):
        for j in range(spec.convs):
            where = f"block {b + 1}" + (f" conv {j + 1}" if spec.convs > 1 else "")
            if h < spec.kernel or w < spec.kernel:
                if b == 0 and j == 0:
                    yield "kernel", f"kernel {spec.kernel} is larger than the {h}x{w} input"
                else:
                    yield "blocks", (f"{spec.blocks} blocks with {spec.pool} downsampling shrink the {h0}x{w0} input "
                                     f"to {h}x{w} before {where}, smaller than the {spec.kernel}x{spec.kernel} kernel; "
                                     f"use fewer blocks or a smaller kernel")
                return
            stride = 2 if (spec.pool == "stride" and j == spec.convs - 1) else 1
            if stride == 2 and min(h, w) < 2:
                yield "pool", f"{where} strides over a {h}x{w} feature map; use fewer blocks"
                return
            if spec.vip[b] and min(math.ceil(h / stride), math.ceil(w / stride)) < 2:
                yield "vip", f"virtual pooling at {where} needs an output of at least 2x2 (it is {h}x{w}); use fewer blocks"
                return
            h, w = math.ceil(h / stride), math.ceil(w / stride)
        if spec.pool in ("max", "avg"):
            if min(h, w) < 2:
                yield "blocks", (f"{spec.blocks} blocks with {spec.pool} pooling: block {b + 1} would pool a "
                                 f"{h}x{w} feature map; use fewer blocks or a larger input")
                return
            h, w = h // 2, w // 2


# ---------------------------------------------------------------------------------------------
# Ensembles
# ---------------------------------------------------------------------------------------------

ENSEMBLE_KIND = "ensemble"
ENSEMBLE_PREFIX = "ens"  # ModelSpec ids start with "c<blocks>", so the two never collide
ENSEMBLE_COMBINE = "mean_softmax"
_ENSEMBLE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
_ENSEMBLE_KEYS = ("members", "top", "name", "views")
# Test-time views each member also sees: the image itself and its 1-pixel translations (label
# preserving on Fashion-MNIST), built from padding and cropping so any runtime runs them.
ENSEMBLE_VIEWS = ("id", "left", "right", "up", "down")


def _check_views(views: Any, where: str) -> tuple[str, ...]:
    if not isinstance(views, (list, tuple)) or not views or not all(isinstance(v, str) for v in views):
        raise FamilyError(f"{where}: must be a non-empty list of views from {list(ENSEMBLE_VIEWS)}, got {views!r}")
    for v in views:
        if v not in ENSEMBLE_VIEWS:
            raise FamilyError(f"{where}: unknown view {v!r}; available: {list(ENSEMBLE_VIEWS)}")
    if len(set(views)) != len(views):
        raise FamilyError(f"{where}: a view is listed twice: {list(views)}")
    return tuple(views)


def _check_members(members: Any, where: str) -> tuple[str, ...]:
    if not isinstance(members, (list, tuple)) or not all(isinstance(m, str) and m for m in members):
        raise FamilyError(f"{where}: must be a list of model id strings, got {members!r}")
    seen: set[str] = set()
    for m in members:
        if m in seen:
            raise FamilyError(f"{where}: {m!r} is listed twice; list each member once")
        seen.add(m)
    return tuple(members)


@dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble of trained members of one family: the mean of their softmax probabilities.

    ``members`` are kept sorted (the mean does not depend on the order), so one set of members has
    one id: ``ens<K>-[<name>-]<first 8 hex of sha1 of the sorted ids joined by newlines>``.
    """

    members: tuple[str, ...]
    name: str = ""
    combine: str = ENSEMBLE_COMBINE
    views: tuple[str, ...] = ("id",)  # every member runs on each view; all outputs are averaged

    def __post_init__(self):
        members = _check_members(self.members, "members")
        if len(members) < 2:
            raise FamilyError(f"members: an ensemble needs at least 2 members, got {len(members)} ({list(members)})")
        if any(m.startswith(ENSEMBLE_PREFIX) for m in members):
            raise FamilyError(f"members: ensembles of ensembles are not supported, got {list(members)}")
        object.__setattr__(self, "members", tuple(sorted(members)))
        if not isinstance(self.name, str) or (self.name and not _ENSEMBLE_NAME_RE.fullmatch(self.name)):
            raise FamilyError(f"name: must be 1-40 letters, digits, '_' or '-', got {self.name!r}")
        _choice("combine", self.combine, (ENSEMBLE_COMBINE,))
        object.__setattr__(self, "views", _check_views(list(self.views), "views"))

    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def model_id(self) -> str:
        key = "\n".join(self.members) + ("" if self.views == ("id",) else "\nviews:" + ",".join(self.views))
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        v = "" if self.views == ("id",) else f"x{len(self.views)}"
        return f"{ENSEMBLE_PREFIX}{self.k}{v}-" + (f"{self.name}-" if self.name else "") + digest

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "kind": ENSEMBLE_KIND, "members": list(self.members), "name": self.name,
                "combine": self.combine, "views": list(self.views)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EnsembleSpec":
        if not isinstance(d, dict) or d.get("kind") != ENSEMBLE_KIND:
            raise FamilyError(f"not an ensemble spec (no \"kind\": \"{ENSEMBLE_KIND}\"): {d!r}")
        extra = set(d) - {"model_id", "kind", "members", "name", "combine", "views"}
        if extra:
            raise FamilyError(f"{sorted(extra)[0]}: unknown ensemble spec key")
        if "members" not in d:
            raise FamilyError("members: missing from the ensemble spec")
        spec = cls(members=_check_members(d["members"], "members"), name=d.get("name", ""),
                   combine=d.get("combine", ENSEMBLE_COMBINE), views=_check_views(d.get("views", ["id"]), "views"))
        if "model_id" in d and d["model_id"] != spec.model_id:
            raise FamilyError(
                f"model_id: {d['model_id']!r} does not match the ensemble's members (they give {spec.model_id!r})"
            )
        return spec


class EnsembleNotReady(Exception):
    """An [[ensemble]] whose members are not all trained yet (in this run folder); the reason says which."""


@dataclass(frozen=True)
class EnsembleDecl:
    """One ``[[ensemble]]`` table of a family file, before its members are known to be trained."""

    index: int
    members: tuple[str, ...] = ()  # explicit members, or the pool ``top`` picks from
    top: int | None = None  # pick the ``top`` members of highest validation accuracy
    name: str = ""
    views: tuple[str, ...] = ("id",)

    @property
    def where(self) -> str:
        return f"ensemble[{self.index}]"

    def describe(self) -> str:
        if self.top is None:
            return f"{self.where} ({len(self.members)} members)"
        pool = f"of {len(self.members)} listed members" if self.members else "of the trained specs"
        return f"{self.where} (top {self.top} {pool})"

    def resolve(self, val_accuracy: Mapping[str, float], selected: Sequence[str] = ()) -> EnsembleSpec:
        """The EnsembleSpec, given the validation accuracy of every finished member.

        Explicit members must all be finished. ``top = K`` picks the K best by validation accuracy
        (ties: smaller model id) among ``members`` (all finished) or, without members, among the
        ``selected`` ids that are finished. Raises EnsembleNotReady when members are missing.
        """
        pool = list(self.members) if self.members else [m for m in selected if m in val_accuracy]
        missing = [m for m in pool if m not in val_accuracy]
        if missing:
            raise EnsembleNotReady(
                f"{self.describe()} skipped: member(s) not trained in this run yet: {missing}; train them "
                "(run without --limit/--sample, or with a selection that includes them) and rerun to build it")
        if self.top is not None:
            if len(pool) < self.top:
                raise EnsembleNotReady(
                    f"{self.describe()} skipped: only {len(pool)} trained member(s) to choose {self.top} from")
            pool = sorted(pool, key=lambda m: (-float(val_accuracy[m]), m))[: self.top]
        return EnsembleSpec(members=tuple(pool), name=self.name, views=self.views)


def _parse_ensembles(raw: Any, model_ids: Sequence[str], family: str, listing: str = "") -> tuple[EnsembleDecl, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(e, dict) for e in raw):
        raise FamilyError("ensemble: must be one or more [[ensemble]] tables (members = [..] and/or top = K)")
    known = set(model_ids)
    decls: list[EnsembleDecl] = []
    explicit: dict[tuple[str, ...], int] = {}
    for i, e in enumerate(raw):
        where = f"ensemble[{i}]"
        unknown = set(e) - set(_ENSEMBLE_KEYS)
        if unknown:
            raise FamilyError(f"{where}.{sorted(unknown)[0]}: unknown key; known ensemble keys: {list(_ENSEMBLE_KEYS)}")
        if "members" not in e and "top" not in e:
            raise FamilyError(f"{where}: give members = [\"<model id>\", ...] (ids of this family's specs), "
                              "top = K (the K most accurate trained specs), or both")
        members = _check_members(e.get("members", []), f"{where}.members") if "members" in e else ()
        if "members" in e and not members:
            raise FamilyError(f"{where}.members: empty; list at least 2 model ids of family {family!r}")
        for m in members:
            if m not in known:
                close = difflib.get_close_matches(m, model_ids, n=3, cutoff=0.6)
                hint = f"; did you mean {close}?" if close else ""
                raise FamilyError(
                    f"{where}.members: {m!r} is not a model id of family {family!r}{hint} "
                    f"(list the family's ids with: {listing or 'python -m converters.families FAMILY'})")
        top = e.get("top")
        if "top" in e:
            if not _is_int(top) or top < 2:
                raise FamilyError(f"{where}.top: must be an integer >= 2 (members to average), got {top!r}")
            if members and top > len(members):
                raise FamilyError(f"{where}.top: {top} is more than the {len(members)} listed members")
            if top > len(model_ids):
                raise FamilyError(f"{where}.top: {top} is more than the family's {len(model_ids)} specs")
        elif len(members) < 2:
            raise FamilyError(f"{where}.members: an ensemble needs at least 2 members, got {list(members)}")
        name = e.get("name", "")
        if not isinstance(name, str) or not _ENSEMBLE_NAME_RE.fullmatch(name or "x"):
            raise FamilyError(f"{where}.name: must be 1-40 letters, digits, '_' or '-', got {name!r}")
        views = _check_views(e["views"], f"{where}.views") if "views" in e else ("id",)
        if top is None or top == len(members):
            key = tuple(sorted(members)) + views
            if key in explicit:
                raise FamilyError(f"{where}: same members as ensemble[{explicit[key]}]; remove one of them")
            explicit[key] = i
        decls.append(EnsembleDecl(index=i, members=members, top=top, name=name, views=views))
    return tuple(decls)


# ---------------------------------------------------------------------------------------------
# Family files
# ---------------------------------------------------------------------------------------------

_TOP_ONLY = {"name", "description", "mode", "count", "seed", "input_size", "preprocess", "mean", "std", "space",
             "ensemble"}
# space key -> kind of each value on the axis
_SPACE_KEYS = {
    "blocks": "int",
    "width": "int",
    "growth": "num",
    "filters": "intlist",
    "convs": "int",
    "kernel": "int",
    "pool": "str",
    "vip": "vip",
    "psconv": "bool",
    "dense": "int",
    "dropout": "num",
    "head": "str",
}
_SPACE_DEFAULTS = {
    "convs": [1], "kernel": [3], "pool": ["max"], "vip": ["none"], "psconv": [False],
    "dense": [0], "dropout": [0.0], "head": ["gap"], "growth": [2],
}
# Axes the spatial shape depends on (validated exhaustively at load time).
_SHAPE_AXES = ("blocks", "filters", "convs", "kernel", "pool", "vip", "psconv")


@dataclass(frozen=True)
class _Space:
    index: int
    axes: tuple[tuple[str, tuple], ...]  # ordered (key, values)

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.axes)

    def combo(self, i: int) -> dict[str, Any]:
        """The i-th combination in row-major order (last axis fastest)."""
        out = {}
        for key, values in reversed(self.axes):
            i, r = divmod(i, len(values))
            out[key] = values[r]
        return {k: out[k] for k, _ in self.axes}


@dataclass(frozen=True)
class FamilySpec:
    """A parsed family file; ``expand()`` gives its ModelSpecs."""

    name: str
    description: str
    mode: str
    count: int | None
    seed: int
    input_size: tuple[int, int]
    preprocess: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    spaces: tuple[_Space, ...] = field(repr=False)
    source: str = ""
    ensembles: tuple[EnsembleDecl, ...] = field(default=(), repr=False)

    def expand(self, limit: int | None = None, sample: int | None = None, seed: int = 0) -> list[ModelSpec]:
        """The family's specs in file order (grid) or draw order (random), without duplicates.

        ``sample`` keeps a seeded random subset of that many (kept in family order); ``limit`` then keeps
        the first ``limit``.
        """
        for key, v in (("limit", limit), ("sample", sample)):
            if v is not None and (not _is_int(v) or v < 1):
                raise FamilyError(f"{key}: must be a positive integer, got {v!r}")
        specs = self._all_specs()
        if sample is not None and sample < len(specs):
            keep = sorted(random.Random(seed).sample(range(len(specs)), sample))
            specs = [specs[i] for i in keep]
        if limit is not None:
            specs = specs[:limit]
        return specs

    def __len__(self) -> int:
        return len(self._all_specs())

    def _spec(self, space: _Space, combo: dict[str, Any]) -> ModelSpec:
        c = dict(combo)
        if "filters" in c:
            filters = tuple(c.pop("filters"))
        else:
            blocks, width, growth = c.pop("blocks"), c.pop("width"), c.pop("growth")
            filters = tuple(max(1, int(round(width * growth**b))) for b in range(blocks))
        c.pop("blocks", None), c.pop("width", None), c.pop("growth", None)
        spec = ModelSpec(filters=filters, preprocess=self.preprocess, mean=self.mean, std=self.std, **c)
        if spec.psconv and not any(p["psconv"] for p in spec.conv_plan(self.input_size)):
            # Only the first conv exists and it stays dense: the same network as ps0.
            spec = ModelSpec(**{**{f.name: getattr(spec, f.name) for f in fields(spec)}, "psconv": False})
        return spec

    def _all_specs(self) -> list[ModelSpec]:
        cached = self.__dict__.get("_cache")
        if cached is not None:
            return list(cached)
        seen: dict[str, ModelSpec] = {}
        if self.mode == "grid":
            for sp in self.spaces:
                for i in range(sp.size):
                    s = self._spec(sp, sp.combo(i))
                    seen.setdefault(s.model_id, s)
        else:
            total = sum(sp.size for sp in self.spaces)
            order = random.Random(self.seed)
            # Draw combination indices without replacement over the union of the spaces.
            draws = total if total <= 200_000 else min(total, self.count * 4 + 64)
            for flat in order.sample(range(total), draws):
                for sp in self.spaces:
                    if flat < sp.size:
                        s = self._spec(sp, sp.combo(flat))
                        break
                    flat -= sp.size
                seen.setdefault(s.model_id, s)
                if len(seen) >= self.count:
                    break
            if len(seen) < self.count:
                raise FamilyError(f"count: asked for {self.count} specs but the space yields only {len(seen)} distinct ones")
        specs = list(seen.values())
        object.__setattr__(self, "_cache", tuple(specs))
        return list(specs)


def list_families() -> list[str]:
    return sorted(p.stem for p in FAMILY_DIR.glob("*.toml"))


def load_family(name_or_path: str | Path) -> FamilySpec:
    """A built-in family by name ("default", "demo") or a TOML file path; FamilyError if invalid."""
    p = Path(name_or_path)
    # A bare word is a built-in name even when a folder of that name sits in the cwd
    # (the demo writes its output to ./demo); anything path-like is a file.
    builtin = FAMILY_DIR / f"{name_or_path}.toml"
    looks_like_path = p.suffix == ".toml" or "/" in str(name_or_path) or os.sep in str(name_or_path)
    if looks_like_path or (p.is_file() and not builtin.is_file()):
        if not p.is_file():
            raise FamilyError(f"{p}: no such family file (built-in families: {list_families()})")
        path = p
    else:
        path = FAMILY_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise FamilyError(f"unknown family {str(name_or_path)!r}; built-in: {list_families()} (or give a .toml path)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise FamilyError(f"{path}: not valid TOML ({exc})") from None
    try:
        return parse_family(data, source=str(path), default_name=path.stem)
    except FamilyError as exc:
        raise FamilyError(f"{path}: {exc}") from None


def parse_family(data: dict[str, Any], source: str = "<dict>", default_name: str = "family") -> FamilySpec:
    """Validate a family's TOML data (already parsed) into a FamilySpec."""
    unknown = set(data) - _TOP_ONLY - set(_SPACE_KEYS)
    if unknown:
        k = sorted(unknown)[0]
        raise FamilyError(f"{k}: unknown key; known keys: {sorted(_TOP_ONLY | set(_SPACE_KEYS))}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise FamilyError(f"name: must be a word of letters, digits, '_', '.', '-', got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise FamilyError(f"description: must be a string, got {description!r}")
    mode = data.get("mode", "grid")
    if mode not in MODES:
        raise FamilyError(f"mode: must be one of {list(MODES)}, got {mode!r}")
    count = data.get("count")
    seed = data.get("seed", 0)
    if mode == "random":
        if not _is_int(count) or count < 1:
            raise FamilyError(f"count: random mode needs a positive integer count, got {count!r}")
    elif count is not None:
        raise FamilyError("count: only used with mode = 'random'")
    if not _is_int(seed):
        raise FamilyError(f"seed: must be an integer, got {seed!r}")
    if mode == "grid" and "seed" in data:
        raise FamilyError("seed: only used with mode = 'random' (expand(sample=, seed=) samples a grid)")
    input_size = data.get("input_size", [28, 28])
    if (not isinstance(input_size, list) or len(input_size) not in (2, 3)
            or not all(_is_int(v) and v > 0 for v in input_size)):
        raise FamilyError(f"input_size: must be [H, W] (or [H, W, C]) positive integers, got {input_size!r}")
    preprocess = data.get("preprocess", "rescale")
    _choice("preprocess", preprocess, PREPROCESS)
    mean, std = data.get("mean", []), data.get("std", [])
    for key, v in (("mean", mean), ("std", std)):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
            raise FamilyError(f"{key}: must be a number or a list of numbers (pixel units), got {v!r}")
        if key == "mean":
            mean = v
        else:
            std = v
    # Validates mean/std/preprocess together.
    try:
        ModelSpec(filters=(1,), preprocess=preprocess, mean=tuple(mean), std=tuple(std))
    except FamilyError as exc:
        raise FamilyError(str(exc)) from None

    raw_spaces = data.get("space")
    if raw_spaces is None:
        raise FamilyError("space: missing; add at least one [[space]] table")
    if not isinstance(raw_spaces, list) or not raw_spaces or not all(isinstance(s, dict) for s in raw_spaces):
        raise FamilyError("space: must be one or more [[space]] tables")
    top = {k: data[k] for k in _SPACE_KEYS if k in data}
    fam_size = tuple(input_size[:2])
    spaces = tuple(_parse_space(i, {**top, **s}, fam_size) for i, s in enumerate(raw_spaces))
    fam = FamilySpec(
        name=name, description=description, mode=mode, count=count if mode == "random" else None,
        seed=int(seed), input_size=(int(input_size[0]), int(input_size[1])), preprocess=preprocess,
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), spaces=spaces, source=source,
    )
    if mode == "random" and sum(sp.size for sp in spaces) < count:
        raise FamilyError(f"count: {count} specs asked for but the space holds only {sum(sp.size for sp in spaces)}")
    if "ensemble" in data:
        ids = [s.model_id for s in fam.expand()]
        src = Path(source)
        builtin = src.suffix == ".toml" and src.resolve() == (FAMILY_DIR / src.name).resolve()
        listing = f"python -m converters.families {src.stem if builtin else source}" if src.suffix == ".toml" else ""
        fam = dataclasses.replace(fam, ensembles=_parse_ensembles(data["ensemble"], ids, name, listing))
    return fam


def _axis(key: str, raw: Any, where: str) -> tuple:
    kind = _SPACE_KEYS[key]
    if isinstance(raw, dict):
        if kind != "int" or set(raw) - {"min", "max", "step"} or not {"min", "max"} <= set(raw):
            raise FamilyError(f"{where}.{key}: a range is {{min = .., max = .., step = ..}} and only for integer keys")
        lo, hi, step = raw["min"], raw["max"], raw.get("step", 1)
        if not all(_is_int(v) for v in (lo, hi, step)) or step < 1 or hi < lo:
            raise FamilyError(f"{where}.{key}: bad range {raw!r} (integers, min <= max, step >= 1)")
        values: list = list(range(lo, hi + 1, step))
    elif kind in ("intlist", "vip") and isinstance(raw, list) and raw and all(_is_int(x) for x in raw):
        values = [raw]  # one explicit per-block list (filters = [8, 16] or vip = [0, 1])
    elif isinstance(raw, list):
        values = raw
    else:
        values = [raw]
    if not values:
        raise FamilyError(f"{where}.{key}: empty list")
    out = []
    for v in values:
        bad = None
        if kind == "int":
            if not _is_int(v):
                bad = "an integer"
            elif v < (0 if key == "dense" else 1):
                bad = "a non-negative integer" if key == "dense" else "a positive integer"
        elif kind == "num":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                bad = "a number"
            elif key == "dropout" and not 0 <= v < 1:
                bad = "a number in [0, 1)"
            elif key == "growth" and v <= 0:
                bad = "a positive number"
        elif kind == "str":
            allowed = POOLS if key == "pool" else HEADS
            if v not in allowed:
                bad = f"one of {list(allowed)}"
        elif kind == "bool":
            if not isinstance(v, bool) and v not in (0, 1):
                bad = "true or false"
            v = bool(v)
        elif kind == "intlist":
            if not isinstance(v, list) or not v or not all(_is_int(x) for x in v):
                bad = "a list of integers per block"
            elif any(x <= 0 for x in v):
                bad = "positive (filters must be > 0)"
            else:
                v = tuple(v)
        elif kind == "vip":
            if isinstance(v, str):
                if v not in VIP_PATTERNS:
                    bad = f"one of {list(VIP_PATTERNS)} or a 0/1 list per block"
            elif isinstance(v, list) and all(x in (0, 1) and not isinstance(x, float) for x in v):
                v = tuple(int(x) for x in v)
            else:
                bad = f"one of {list(VIP_PATTERNS)} or a 0/1 list per block"
        if bad:
            raise FamilyError(f"{where}.{key}: {v!r} is not {bad}")
        out.append(v)
    if len(set(out)) != len(out):
        raise FamilyError(f"{where}.{key}: repeated values {out!r}")
    return tuple(out)


def _parse_space(i: int, raw: dict[str, Any], input_size: tuple[int, int]) -> _Space:
    where = f"space[{i}]"
    unknown = set(raw) - set(_SPACE_KEYS)
    if unknown:
        k = sorted(unknown)[0]
        raise FamilyError(f"{where}.{k}: unknown key; known space keys: {sorted(_SPACE_KEYS)}")
    if "filters" in raw:
        clash = {"blocks", "width", "growth"} & set(raw)
        if clash:
            raise FamilyError(f"{where}.{sorted(clash)[0]}: give either filters or blocks/width/growth, not both")
    else:
        for k in ("blocks", "width"):
            if k not in raw:
                raise FamilyError(f"{where}.{k}: missing (give blocks and width, or explicit filters)")
    vals = {**_SPACE_DEFAULTS, **raw}
    if "filters" in raw:
        for k in ("blocks", "width", "growth"):
            vals.pop(k, None)
    order = [k for k in _SPACE_KEYS if k in vals]
    axes = tuple((k, _axis(k, vals[k], where)) for k in order)
    space = _Space(index=i, axes=axes)
    # Exhaustive check of every combination of the axes the shape depends on.
    shape_axes = [(k, v) for k, v in axes if k in _SHAPE_AXES]
    other = {k: v[0] for k, v in axes if k not in _SHAPE_AXES}
    for combo in itertools.product(*(v for _, v in shape_axes)):
        c = {**other, **dict(zip((k for k, _ in shape_axes), combo))}
        if "filters" in c:
            filters = c["filters"]
        else:
            filters = (1,) * c["blocks"]
        try:
            spec = ModelSpec(filters=filters, kernel=c["kernel"], convs=c["convs"], pool=c["pool"], vip=c["vip"],
                             psconv=c["psconv"], dense=c["dense"], dropout=c["dropout"], head=c["head"])
            spec.check_input(input_size)
        except FamilyError as exc:
            desc = ", ".join(f"{k}={_show(c[k])}" for k in ("blocks", "filters", "convs", "kernel", "pool", "vip", "psconv") if k in c)
            raise FamilyError(f"{where}.{exc} (combination {desc}; family input_size {input_size[0]}x{input_size[1]})") from None
    return space


def _show(v: Any) -> str:
    return json.dumps(list(v) if isinstance(v, tuple) else v)


# ---------------------------------------------------------------------------------------------
# Keras models
# ---------------------------------------------------------------------------------------------


def build_model(
    spec: ModelSpec,
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    name: str | None = None,
    psconv_implementation: str = "shifted",
):
    """The spec as a functional keras.Model: float32 raw pixels (0..255) in, logits out.

    ``psconv_implementation="masked"`` builds pSConv layers as masked dense 3x3 convs (a reference).
    """
    import keras

    from converters.layers import PSConv2D

    if not isinstance(spec, ModelSpec):
        raise TypeError(f"build_model needs a ModelSpec, got {type(spec).__name__}")
    if len(input_shape) != 3 or not all(_is_int(int(v)) and int(v) > 0 for v in input_shape):
        raise FamilyError(f"input_shape: must be (H, W, C), got {tuple(input_shape)!r}")
    h, w, c = (int(v) for v in input_shape)
    if not _is_int(num_classes) or num_classes < 2:
        raise FamilyError(f"num_classes: must be an integer >= 2, got {num_classes!r}")
    spec.check_input((h, w, c))

    inp = keras.Input(shape=(h, w, c), dtype="float32", name="input")
    if spec.preprocess == "rescale":
        x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inp)
    else:
        mean = list(spec.mean) * (c if len(spec.mean) == 1 else 1)
        var = [s * s for s in spec.std] * (c if len(spec.std) == 1 else 1)
        x = keras.layers.Normalization(mean=mean, variance=var, name="standardize")(inp)

    for p in spec.conv_plan((h, w)):
        tag = f"b{p['block'] + 1}c{p['conv'] + 1}"
        stride = p["stride"] * (2 if p["vip"] else 1)
        if p["psconv"]:
            x = PSConv2D(p["filters"], strides=stride, activation="relu", implementation=psconv_implementation,
                         name=f"{tag}_psconv")(x)
        else:
            x = keras.layers.Conv2D(p["filters"], spec.kernel, strides=stride, padding="same", activation="relu",
                                    name=f"{tag}_conv")(x)
        if p["vip"]:
            # Virtual pooling: the conv ran at twice its stride; interpolate back to its nominal size.
            oh, ow = p["out_hw"]
            x = keras.layers.Resizing(oh, ow, interpolation="bilinear", name=f"{tag}_vip")(x)
        if p["conv"] == spec.convs - 1 and spec.pool in ("max", "avg"):
            pool_cls = keras.layers.MaxPooling2D if spec.pool == "max" else keras.layers.AveragePooling2D
            x = pool_cls(2, name=f"b{p['block'] + 1}_{spec.pool}pool")(x)

    if spec.head == "gap":
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    if spec.dense:
        x = keras.layers.Dense(spec.dense, activation="relu", name="dense")(x)
    if spec.dropout:
        x = keras.layers.Dropout(spec.dropout, name="dropout")(x)
    out = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=name or _keras_name(spec.model_id))


def _outputs_probabilities(model) -> bool:
    """True when the model's last layer already ends in a softmax (the families' heads output logits)."""
    import keras

    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax):
        return True
    act = getattr(last, "activation", None)
    return act is not None and getattr(act, "__name__", "") == "softmax"


def _view(x, view: str, i: int):
    """``x`` (N, H, W, C) seen as ``view``: itself, or moved one pixel (zero filled) by padding and cropping."""
    import keras

    pad, crop = {
        "left": (((0, 0), (0, 1)), ((0, 0), (1, 0))),
        "right": (((0, 0), (1, 0)), ((0, 0), (0, 1))),
        "up": (((0, 1), (0, 0)), ((1, 0), (0, 0))),
        "down": (((1, 0), (0, 0)), ((0, 1), (0, 0))),
    }.get(view, (None, None))
    if pad is None:
        return x
    x = keras.layers.ZeroPadding2D(pad, name=f"view_{view}_pad_{i}")(x)
    return keras.layers.Cropping2D(crop, name=f"view_{view}_crop_{i}")(x)


def build_ensemble(members: Sequence, name: str | None = None, views: Sequence[str] = ("id",)):
    """One functional keras.Model: input -> every member -> softmax (if it outputs logits) -> mean.

    With ``views`` every member also runs on each view of the input (1-pixel translations) and
    all the probabilities are averaged: test-time augmentation, more cost for more accuracy.

    The members (built or loaded keras.Models, distinct names) run as nested models on the same
    float32 raw-pixel input; the output has their (N, classes) float32 shape and holds the mean
    probabilities, so its argmax is the ensemble's class. The input is named "input" like a member's.
    """
    import keras

    members = list(members)
    if len(members) < 2:
        raise FamilyError(f"an ensemble needs at least 2 members, got {len(members)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise FamilyError(f"ensemble members need distinct Keras model names, got {names}")
    in_shapes = {tuple(m.inputs[0].shape[1:]) for m in members}
    out_shapes = {tuple(m.outputs[0].shape[1:]) for m in members}
    if len(in_shapes) != 1 or len(out_shapes) != 1 or any(len(m.inputs) != 1 or len(m.outputs) != 1 for m in members):
        raise FamilyError(f"ensemble members must share one input and one output shape, got inputs {sorted(in_shapes)} "
                          f"and outputs {sorted(out_shapes)}")
    inp = keras.Input(shape=next(iter(in_shapes)), dtype="float32", name="input")
    probs = []
    views = _check_views(list(views), "views")
    for vi, view in enumerate(views):
        x = _view(inp, view, vi)
        for i, m in enumerate(members):
            y = m(x)
            if not _outputs_probabilities(m):
                y = keras.layers.Softmax(name=f"softmax_{i}" if vi == 0 else f"softmax_{i}_{view}")(y)
            probs.append(y)
    out = keras.layers.Average(name="mean_probs")(probs)
    return keras.Model(inp, out, name=name or "ensemble")


def _keras_name(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", model_id)


def count_params_macs(model) -> tuple[int, int]:
    """(parameters, multiply-accumulates for one image) of a built model.

    MACs count Conv2D, DepthwiseConv2D, Dense and PSConv2D (what it executes: 4 taps per kernel);
    pooling, resizing and element-wise layers are not counted. Parameters are the model's weights,
    except that a masked PSConv2D counts only its free weights.
    """
    from converters.layers import PSConv2D

    params = 0
    macs = 0
    for layer in _walk_layers(model):
        if isinstance(layer, PSConv2D):
            params += layer.free_params()
            _, ih, iw, _ = layer.input.shape
            macs += layer.macs((int(ih), int(iw)))
            continue
        params += sum(int(math.prod(wt.shape)) for wt in layer.weights)
        cls = type(layer).__name__
        if cls in ("Conv2D", "DepthwiseConv2D", "Conv1D", "SeparableConv2D"):
            out_shape = layer.output.shape
            pixels = math.prod(int(d) for d in out_shape[1:-1])
            if cls == "DepthwiseConv2D":
                macs += pixels * int(math.prod(layer.depthwise_kernel.shape))
            elif cls == "SeparableConv2D":
                macs += pixels * (int(math.prod(layer.depthwise_kernel.shape)) + int(math.prod(layer.pointwise_kernel.shape)))
            else:
                macs += pixels * int(math.prod(layer.kernel.shape))
        elif cls == "Dense":
            in_shape = layer.input.shape
            rows = math.prod(int(d) for d in in_shape[1:-1]) if len(in_shape) > 2 else 1
            macs += rows * int(math.prod(layer.kernel.shape))
    return int(params), int(macs)


def _walk_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers and layer is not model:
            yield from _walk_layers(layer)
        else:
            yield layer


def custom_objects() -> dict:
    """The custom layers, for keras.saving.load_model(path, custom_objects=..., safe_mode=True)."""
    from converters.layers import custom_objects as _co

    return _co()


def load_keras_model(path: str | Path, compile: bool = False):
    """Load a ``model.keras`` written by the training sweep, in Keras safe mode (no arbitrary code)."""
    import keras

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such Keras model file")
    return keras.saving.load_model(str(p), custom_objects=custom_objects(), compile=compile, safe_mode=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converters.families [FAMILY]``: the family's model ids and MACs, and its ensembles."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m converters.families", description=main.__doc__)
    ap.add_argument("family", nargs="?", default="demo", help="built-in family name or .toml path (default: demo)")
    args = ap.parse_args(argv)
    fam = load_family(args.family)
    shape = (*fam.input_size, 1)
    for spec in fam.expand():
        print(f"{spec.model_id}  {spec.estimate_macs(shape):>12,d} MACs")
    for e in fam.ensembles:
        if e.top is None:
            print(f"{EnsembleSpec(e.members, e.name).model_id}  ensemble of {list(e.members)}")
        else:
            print(f"{e.describe()}: id set when its members are trained")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
