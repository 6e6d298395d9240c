"""Keras-free model specs: ModelSpec and EnsembleSpec, their ids, validation, shape checks and MAC arithmetic.

A spec is what a run's ``models/<id>/spec.json`` holds. Nothing here imports TensorFlow or Keras:
the Keras models are built from specs in ``converters.family.keras_build``; families (TOML files) expand
into specs in ``converters.family.family`` and ``converters.family.toml_file``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from converters.family.blocks import (
    BLOCKS,
    MOBILE_BLOCKS,
    STRIDES,
    Unit,
    make_divisible,
    plan_units,
    psconv_macs,
    shape_problems,
)
from edge.core.errors import EdgekitError

POOLS = ("max", "avg", "stride", "none")
HEADS = ("gap", "flatten")
PREPROCESS = ("rescale", "standardize")
VIP_PATTERNS = ("none", "first", "last", "all", "alt")
# Named training recipes a spec may ask for instead of its run's schedule (defined in
# converters.train.options.RECIPES); "" means the run's schedule.
RECIPES = ("long",)
# How a pruned child ranks its parent's filters (converters.train.pruning): their L1 norm, or ThiNet's greedy
# choice of the input channels of the next layer that reconstruct its output best.
PRUNE_METHODS = ("l1", "thinet")
MAX_PRUNE = 0.9


class FamilyError(EdgekitError, ValueError):
    """A family file or model spec has an unknown key, a bad value or an impossible shape."""


# ---------------------------------------------------------------------------------------------
# ModelSpec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One CNN of a family; every field is a hyper-parameter and the id is derived from all of them."""

    filters: tuple[int, ...]  # per block (a stage of a mobile block), before the width multiplier ``alpha``
    kernel: int = 3
    convs: int = 1  # conv layers per block; for a mobile block, units per stage
    pool: str = ""  # "" is the block's default: "max" for conv, "none" for the mobile blocks (they stride)
    vip: tuple[int, ...] = ()  # per block 0/1; () means no ViP
    psconv: bool = False
    dense: int = 0
    dropout: float = 0.0
    head: str = "gap"
    preprocess: str = "rescale"
    mean: tuple[float, ...] = ()  # standardize only, pixel units, one value or one per channel
    std: tuple[float, ...] = ()
    batch_norm: bool = False  # conv -> batch norm -> ReLU (folded into the conv when converted)
    recipe: str = ""  # a named training recipe (RECIPES) instead of the run's schedule
    block: str = "conv"  # BLOCKS: conv, dwsep, mbconv, residual (converters.family.blocks)
    alpha: float = 1.0  # width multiplier on every block's filters, rounded to a multiple of 8 when not 1
    expand: int = 1  # mbconv: expansion ratio of its 1x1 expansion conv (1: none)
    se: bool = False  # mbconv: squeeze-excite after the depthwise conv (MobileNetV3)
    stride: tuple[int, ...] = ()  # mobile blocks: each stage's stride (1 or 2); () = 2 for every stage
    resolution: tuple[int, ...] = ()  # (H, W) the images are resized to for this model; () = the run's size
    prune: float = 0.0  # structured pruning: this fraction of every conv's filters removed from the trained parent
    prune_method: str = "l1"  # PRUNE_METHODS: how the kept filters are chosen
    # "pruned": a pruned spec with ViP made as a ViP child of its pruned twin without ViP (its weights, ViP
    # switched on, fine-tuned) instead of pruned from its unpruned ViP twin; "" = the latter
    vip_from: str = ""

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass normalisation)
        filters = self.filters
        if isinstance(filters, int) and not isinstance(filters, bool):
            filters = (filters,)
        if not isinstance(filters, (tuple, list)) or not filters:
            raise FamilyError(f"filters: must be a non-empty list of positive integers, got {self.filters!r}")
        for f in filters:
            if not is_int(f) or f <= 0:
                raise FamilyError(f"filters: every block needs a positive integer filter count, got {self.filters!r}")
        set_("filters", tuple(int(f) for f in filters))
        for key, lo in (("kernel", 1), ("convs", 1), ("dense", 0)):
            v = getattr(self, key)
            if not is_int(v) or v < lo:
                raise FamilyError(f"{key}: must be an integer >= {lo}, got {v!r}")
        if self.kernel > 15:
            raise FamilyError(f"kernel: {self.kernel} is larger than any supported input (max 15)")
        check_choice("block", self.block, BLOCKS)
        mobile = self.block in MOBILE_BLOCKS
        if self.pool == "":
            set_("pool", "none" if mobile else "max")
        check_choice("pool", self.pool, POOLS)
        check_choice("head", self.head, HEADS)
        check_choice("preprocess", self.preprocess, PREPROCESS)
        if not isinstance(self.psconv, (bool, int)) or self.psconv not in (0, 1, True, False):
            raise FamilyError(f"psconv: must be true or false, got {self.psconv!r}")
        set_("psconv", bool(self.psconv))
        if not isinstance(self.batch_norm, (bool, int)) or self.batch_norm not in (0, 1, True, False):
            raise FamilyError(f"batch_norm: must be true or false, got {self.batch_norm!r}")
        set_("batch_norm", bool(self.batch_norm))
        if self.recipe != "" and self.recipe not in RECIPES:
            raise FamilyError(f"recipe: must be one of {list(RECIPES)}, or left out for the run's schedule; "
                              f"got {self.recipe!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise FamilyError(f"dropout: must be a number in [0, 1), got {self.dropout!r}")
        set_("dropout", float(self.dropout))
        set_("vip", resolve_vip(self.vip, len(self.filters)))
        if self.psconv and self.kernel != 3:
            raise FamilyError(f"psconv: pre-defined sparse kernels need kernel 3, got kernel {self.kernel}")
        self._check_mobile_knobs(set_, mobile)
        set_("resolution", check_resolution(self.resolution))
        self._check_prune(set_)
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

    def _check_mobile_knobs(self, set_, mobile: bool) -> None:
        """alpha, expand, se and stride, and which block kinds they combine with (an error names both)."""
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 8:
            raise FamilyError(f"alpha: the width multiplier must be a number in (0, 8], got {self.alpha!r}")
        set_("alpha", float(self.alpha))
        if not is_int(self.expand) or self.expand < 1:
            raise FamilyError(f"expand: must be an integer >= 1, got {self.expand!r}")
        if self.expand != 1 and self.block != "mbconv":
            raise FamilyError(f"expand: the expansion ratio belongs to block 'mbconv'; block {self.block!r} has no "
                              "expansion conv (leave expand out, or use block = 'mbconv')")
        if not isinstance(self.se, (bool, int)) or self.se not in (0, 1, True, False):
            raise FamilyError(f"se: must be true or false, got {self.se!r}")
        set_("se", bool(self.se))
        if self.se and self.block != "mbconv":
            raise FamilyError(f"se: squeeze-excite belongs to block 'mbconv'; block {self.block!r} has no "
                              "expanded depthwise stage to weigh (leave se out, or use block = 'mbconv')")
        stride = self.stride
        if is_int(stride):
            stride = (stride,) * len(self.filters)
        if not isinstance(stride, (tuple, list)) or any(not is_int(v) or v not in STRIDES for v in stride):
            raise FamilyError(f"stride: must be a list of 1 or 2 per stage, got {self.stride!r}")
        if stride and not mobile:
            raise FamilyError("stride: per-stage strides belong to the blocks dwsep, mbconv and residual; block "
                              "'conv' downsamples with pool (pool = 'stride' makes each block's last conv stride 2)")
        if mobile:
            stride = tuple(stride) or (2,) * len(self.filters)
            if len(stride) != len(self.filters):
                raise FamilyError(f"stride: {list(stride)} has {len(stride)} entries but the spec has "
                                  f"{len(self.filters)} stages (filters {list(self.filters)})")
            if self.pool != "none":
                raise FamilyError(f"pool: block {self.block!r} downsamples with its per-stage stride; pool "
                                  f"{self.pool!r} does not combine with it (leave pool out)")
            if self.psconv and self.block != "residual":
                raise FamilyError(f"psconv: pre-defined sparse kernels replace dense 3x3 convs; block {self.block!r} "
                                  "has none (its 3x3 convs are depthwise); use psconv with block 'conv' or 'residual'")
            set_("batch_norm", True)  # part of every mobile block (folded into its convs when converted)
        set_("stride", tuple(int(v) for v in stride))

    def _check_prune(self, set_) -> None:
        """prune, prune_method and vip_from, and the blocks that cannot be pruned safely (the error names the block)."""
        if isinstance(self.prune, bool) or not isinstance(self.prune, (int, float)) or not 0 <= self.prune <= MAX_PRUNE:
            raise FamilyError(f"prune: the fraction of filters to remove must be a number from 0 to {MAX_PRUNE}, "
                              f"got {self.prune!r}")
        set_("prune", float(self.prune))
        check_choice("prune_method", self.prune_method, PRUNE_METHODS)
        if not self.prune:
            if self.prune_method != "l1":
                raise FamilyError("prune_method: only used with prune > 0")
            if self.vip_from:
                raise FamilyError("vip_from: only used with prune > 0 (a ViP child of a pruned member)")
            return
        if self.block != "conv":
            raise FamilyError(f"prune: block {self.block!r} cannot be pruned safely here: a residual add needs the "
                              "same kept channels on both of its sides and a depthwise conv ties its input to its "
                              "output channels; edgekit prunes the filters of plain 'conv' blocks")
        if self.psconv:
            raise FamilyError("prune: pSConv layers cannot be pruned: their fixed kernel corners follow the halves of "
                              "the channel order, which removing channels would move; prune a spec with psconv false")
        check_choice("vip_from", self.vip_from, ("", "pruned"))
        if self.vip_from and not any(self.vip):
            raise FamilyError("vip_from: 'pruned' makes a ViP child of the pruned member; this spec has no ViP "
                              "(set vip, or leave vip_from out)")

    @property
    def derived(self) -> bool:
        """Made from another trained model of the run (pruned, or ViP switched on), not trained from scratch."""
        return bool(self.prune)

    @property
    def parent(self) -> "ModelSpec":
        """The trained spec a derived one starts from (itself when it is trained from scratch): the same spec
        unpruned, or with ``vip_from = "pruned"`` the same pruned spec without ViP."""
        if not self.prune:
            return self
        mine = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.vip_from == "pruned":
            return ModelSpec(**{**mine, "vip": (0,) * len(self.filters), "vip_from": ""})
        return ModelSpec(**{**mine, "prune": 0.0, "prune_method": "l1"})

    # -- derived ---------------------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return len(self.filters)

    @property
    def mobile(self) -> bool:
        return self.block in MOBILE_BLOCKS

    @property
    def channels(self) -> tuple[int, ...]:
        """Each block's filters after the width multiplier (as written at alpha 1, else make_divisible(f * alpha)),
        then pruning (round(c * (1 - prune)), at least 1)."""
        widths = self.filters if self.alpha == 1.0 else tuple(make_divisible(f * self.alpha) for f in self.filters)
        if self.prune:
            widths = tuple(max(1, int(round(c * (1.0 - self.prune)))) for c in widths)
        return widths

    def input_hw(self, run_size: Sequence[int]) -> tuple[int, int]:
        """The (H, W) this model takes: its ``resolution``, or the run's images' size."""
        if self.resolution:
            return (int(self.resolution[0]), int(self.resolution[1]))
        return (int(run_size[0]), int(run_size[1]))

    def input_shape(self, run_shape: Sequence[int]) -> tuple[int, int, int]:
        """The (H, W, C) this model takes, given the run's images' (H, W[, C])."""
        c = int(run_shape[2]) if len(run_shape) > 2 else 1
        return (*self.input_hw(run_shape), c)

    def units(self, input_shape: Sequence[int]) -> list[Unit]:
        """The stem and stage units of a mobile spec on an (H, W[, C]) input (converters.family.blocks)."""
        if not self.mobile:
            raise FamilyError(f"block: {self.block!r} is planned by conv_plan, not by units")
        cin = int(input_shape[2]) if len(input_shape) > 2 else 1
        return plan_units(self.block, self.channels, self.stride, self.vip, self.convs, self.kernel, self.expand,
                          self.se, self.psconv, self.input_hw(input_shape), cin)

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
        if self.batch_norm:
            parts.append("bn")
        if self.recipe:
            parts.append(self.recipe)
        if self.mobile:
            parts.append(self.block + (f"e{self.expand}" if self.expand != 1 else "") + ("se" if self.se else ""))
            parts.append("s" + "".join(str(v) for v in self.stride))
        if self.alpha != 1.0:
            parts.append(f"a{self.alpha:g}")
        if self.resolution:
            h, w = self.resolution
            parts.append(f"r{h}" if h == w else f"r{h}x{w}")
        if self.prune:
            parts.append(f"p{self.prune:g}" + ("" if self.prune_method == "l1" else self.prune_method))
        if self.vip_from:
            parts.append("vipft")  # ViP switched on after pruning, then fine-tuned
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
            raise FamilyError("this is an ensemble spec (kind 'ensemble'); read it with specs.load_spec() "
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
        """Raise FamilyError if this spec cannot run on an (H, W[, C]) run's images (pooling too deep, kernel too big):
        at its ``resolution`` if it has one."""
        h, w = self.input_hw(input_size)
        problems = shape_problems(self.units((h, w))) if self.mobile else _shape_problems(self, h, w)
        for key, reason in problems:
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
        if self.mobile:
            units = self.units(input_shape)
            h, w = units[-1].out_hw
            feat = units[-1].cout if self.head == "gap" else h * w * units[-1].cout
            return sum(u.macs for u in units) + self._head_macs(feat, num_classes)
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
        return macs + self._head_macs(feat, num_classes)

    def _head_macs(self, feat: int, num_classes: int) -> int:
        """The dense layer (if any) and the logits on ``feat`` features."""
        if self.dense:
            return feat * self.dense + self.dense * num_classes
        return feat * num_classes

    def conv_plan(self, input_size: Sequence[int]) -> list[dict[str, Any]]:
        """Per conv layer of a conv spec: block, index, stride, vip, psconv, input and output feature map sizes."""
        if self.mobile:
            raise FamilyError(f"block: {self.block!r} is planned by units, not by conv_plan")
        h, w = self.input_hw(input_size)
        plan = []
        for b, f in enumerate(self.channels):
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


MAX_RESOLUTION = 1024


def check_resolution(value: Any) -> tuple[int, ...]:
    """A resolution as a spec holds it: () (the run's size), or (H, W) from N, [N] or [H, W] positive integers."""
    if value is None or value == () or value == []:
        return ()
    v = (value, value) if is_int(value) else tuple(value) if isinstance(value, (list, tuple)) else None
    if v is not None and len(v) == 1:
        v = (v[0], v[0])
    if v is None or len(v) != 2 or not all(is_int(x) and 1 <= x <= MAX_RESOLUTION for x in v):
        raise FamilyError(f"resolution: must be N or [H, W], integers from 1 to {MAX_RESOLUTION} (the input size the "
                          f"images are resized to), got {value!r}")
    return (int(v[0]), int(v[1]))


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
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
                yield "vip", (f"virtual pooling at {where} needs an output of at least 2x2 (it is {h}x{w}); "
                              "use fewer blocks")
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
ENSEMBLE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
# Test-time views each member also sees: the image itself and its 1-pixel translations (label
# preserving on Fashion-MNIST), built from padding and cropping so any runtime runs them.
# "flip" is the left-right mirror (label preserving on Fashion-MNIST's clothes).
ENSEMBLE_VIEWS = ("id", "left", "right", "up", "down", "flip")


def check_views(views: Any, where: str) -> tuple[str, ...]:
    if not isinstance(views, (list, tuple)) or not views or not all(isinstance(v, str) for v in views):
        raise FamilyError(f"{where}: must be a non-empty list of views from {list(ENSEMBLE_VIEWS)}, got {views!r}")
    for v in views:
        if v not in ENSEMBLE_VIEWS:
            raise FamilyError(f"{where}: unknown view {v!r}; available: {list(ENSEMBLE_VIEWS)}")
    if len(set(views)) != len(views):
        raise FamilyError(f"{where}: a view is listed twice: {list(views)}")
    return tuple(views)


def check_members(members: Any, where: str) -> tuple[str, ...]:
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
        members = check_members(self.members, "members")
        if len(members) < 2:
            raise FamilyError(f"members: an ensemble needs at least 2 members, got {len(members)} ({list(members)})")
        if any(m.startswith(ENSEMBLE_PREFIX) for m in members):
            raise FamilyError(f"members: ensembles of ensembles are not supported, got {list(members)}")
        object.__setattr__(self, "members", tuple(sorted(members)))
        if not isinstance(self.name, str) or (self.name and not ENSEMBLE_NAME_RE.fullmatch(self.name)):
            raise FamilyError(f"name: must be 1-40 letters, digits, '_' or '-', got {self.name!r}")
        check_choice("combine", self.combine, (ENSEMBLE_COMBINE,))
        object.__setattr__(self, "views", check_views(list(self.views), "views"))

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
        spec = cls(members=check_members(d["members"], "members"), name=d.get("name", ""),
                   combine=d.get("combine", ENSEMBLE_COMBINE), views=check_views(d.get("views", ["id"]), "views"))
        if "model_id" in d and d["model_id"] != spec.model_id:
            raise FamilyError(
                f"model_id: {d['model_id']!r} does not match the ensemble's members (they give {spec.model_id!r})"
            )
        return spec


def _read_spec_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise FamilyError(f"{p}: no such spec file") from None
    except json.JSONDecodeError as exc:
        raise FamilyError(f"{p}: not valid JSON ({exc})") from None


def load_spec(path: str | Path) -> ModelSpec | EnsembleSpec:
    """Read any ``spec.json`` of a run: a ModelSpec, or an EnsembleSpec (``"kind": "ensemble"``)."""
    p = Path(path)
    d = _read_spec_json(p)
    try:
        if isinstance(d, dict) and d.get("kind") == ENSEMBLE_KIND:
            return EnsembleSpec.from_dict(d)
        return ModelSpec.from_dict(d)
    except FamilyError as exc:
        raise FamilyError(f"{p}: {exc}") from None
