"""Family files: a TOML file (or a built-in family name) parsed and validated into a FamilySpec.

A family file (``converters/family/builtin/<name>.toml`` or any path) looks like::

    name = "default"
    description = "..."
    mode = "grid"              # "grid": every combination; "random": `count` seeded draws
    # count = 50               # random mode only
    # seed = 0                 # random mode only
    input_size = [28, 28]      # the run's image size the family must fit (shape checks use it, or each resolution)
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
    block = "conv"             # or the mobile blocks "dwsep", "mbconv", "residual" (converters.family.blocks)
    alpha = [0.5, 1.0]         # width multiplier on every block's filters (rounded to a multiple of 8 when not 1)
    stride = [1, 2, 2]         # mobile blocks: each stage's stride (default 2); they take no pool
    expand = [3, 6]            # mbconv: expansion ratio; se = [false, true]: its squeeze-excite
    resolution = [20, 28, 36]  # the input size each model's images are resized to (N, or [[H, W]]); default the run's
    prune = [0, 0.5]           # pruned children: this fraction of every conv's filters cut from the trained spec
    prune_method = "l1"        # or "thinet"; then fine-tuned (converters.train.pruning)
    vip_from = "pruned"        # a pruned ViP spec made from its pruned twin without ViP (default: pruned from ViP)

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
covers the sorted member ids (see EnsembleSpec). ``python -m converters.family.listing FAMILY`` lists ids.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import tomllib

from converters.family.blocks import BLOCKS, MOBILE_BLOCKS, STRIDES
from converters.family.family import EnsembleDecl, FamilySpec, Space
from converters.family.specs import (
    ENSEMBLE_NAME_RE,
    HEADS,
    MAX_PRUNE,
    POOLS,
    PREPROCESS,
    PRUNE_METHODS,
    RECIPES,
    VIP_PATTERNS,
    FamilyError,
    ModelSpec,
    check_choice,
    check_members,
    check_views,
    is_int,
)

FAMILY_DIR = Path(__file__).resolve().parent / "builtin"
MODES = ("grid", "random")
_ENSEMBLE_KEYS = ("members", "top", "name", "views")
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
    "batch_norm": "bool",
    "recipe": "str",
    "block": "str",
    "alpha": "num",
    "expand": "int",
    "se": "bool",
    "stride": "stridelist",
    "resolution": "resolution",
    "prune": "num",
    "prune_method": "str",
    "vip_from": "str",
}
# pool has no default here: it is the block's (ModelSpec: "max" for conv, "none" for the mobile blocks).
_SPACE_DEFAULTS = {
    "convs": [1], "kernel": [3], "vip": ["none"], "psconv": [False],
    "dense": [0], "dropout": [0.0], "head": ["gap"], "growth": [2],
}
# Axes the spatial shape and the knobs' combinations depend on (validated exhaustively at load time).
_SHAPE_AXES = ("blocks", "filters", "convs", "kernel", "pool", "vip", "psconv", "block", "stride", "expand", "se",
               "batch_norm", "resolution", "prune", "prune_method", "vip_from")


def list_families() -> list[str]:
    return sorted(p.stem for p in FAMILY_DIR.glob("*.toml"))


def family_descriptions() -> dict[str, str]:
    """Each built-in family's name and its own ``description`` (for help texts: one home for what each holds)."""
    return {name: load_family(name).description for name in list_families()}


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
            raise FamilyError(f"unknown family {str(name_or_path)!r}; built-in: {list_families()} "
                              "(or give a .toml path)")
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
        if not is_int(count) or count < 1:
            raise FamilyError(f"count: random mode needs a positive integer count, got {count!r}")
    elif count is not None:
        raise FamilyError("count: only used with mode = 'random'")
    if not is_int(seed):
        raise FamilyError(f"seed: must be an integer, got {seed!r}")
    if mode == "grid" and "seed" in data:
        raise FamilyError("seed: only used with mode = 'random' (expand(sample=, seed=) samples a grid)")
    input_size = data.get("input_size", [28, 28])
    if (not isinstance(input_size, list) or len(input_size) not in (2, 3)
            or not all(is_int(v) and v > 0 for v in input_size)):
        raise FamilyError(f"input_size: must be [H, W] (or [H, W, C]) positive integers, got {input_size!r}")
    preprocess = data.get("preprocess", "rescale")
    check_choice("preprocess", preprocess, PREPROCESS)
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
        listing = (f"python -m converters.family.listing {src.stem if builtin else source}"
                   if src.suffix == ".toml" else "")
        fam = dataclasses.replace(fam, ensembles=_parse_ensembles(data["ensemble"], ids, name, listing))
    return fam


def _axis(key: str, raw: Any, where: str) -> tuple:
    kind = _SPACE_KEYS[key]
    if isinstance(raw, dict):
        if kind != "int" or set(raw) - {"min", "max", "step"} or not {"min", "max"} <= set(raw):
            raise FamilyError(f"{where}.{key}: a range is {{min = .., max = .., step = ..}} and only for integer keys")
        lo, hi, step = raw["min"], raw["max"], raw.get("step", 1)
        if not all(is_int(v) for v in (lo, hi, step)) or step < 1 or hi < lo:
            raise FamilyError(f"{where}.{key}: bad range {raw!r} (integers, min <= max, step >= 1)")
        values: list = list(range(lo, hi + 1, step))
    elif kind in ("intlist", "vip", "stridelist") and isinstance(raw, list) and raw and all(is_int(x) for x in raw):
        values = [raw]  # one explicit per-block list (filters = [8, 16], vip = [0, 1] or stride = [1, 2])
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
            if not is_int(v):
                bad = "an integer"
            elif v < (0 if key == "dense" else 1):
                bad = "a non-negative integer" if key == "dense" else "a positive integer"
        elif kind == "num":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                bad = "a number"
            elif key == "dropout" and not 0 <= v < 1:
                bad = "a number in [0, 1)"
            elif key == "prune" and not 0 <= v <= MAX_PRUNE:
                bad = f"a fraction of filters from 0 to {MAX_PRUNE}"
            elif key in ("growth", "alpha") and v <= 0:
                bad = "a positive number"
        elif kind == "str":
            # recipe "": the run's schedule
            allowed = {"pool": POOLS, "head": HEADS, "recipe": ("", *RECIPES), "block": BLOCKS,
                       "prune_method": PRUNE_METHODS, "vip_from": ("", "pruned")}[key]
            if v not in allowed:
                bad = f"one of {list(allowed)}"
        elif kind == "bool":
            if not isinstance(v, bool) and v not in (0, 1):
                bad = "true or false"
            v = bool(v)
        elif kind == "intlist":
            if not isinstance(v, list) or not v or not all(is_int(x) for x in v):
                bad = "a list of integers per block"
            elif any(x <= 0 for x in v):
                bad = "positive (filters must be > 0)"
            else:
                v = tuple(v)
        elif kind == "resolution":
            if is_int(v) and v > 0:
                v = (v, v)
            elif isinstance(v, list) and len(v) == 2 and all(is_int(x) and x > 0 for x in v):
                v = tuple(v)
            else:
                bad = "an input size: N (square) or [H, W]; a list of N is one axis of square sizes"
        elif kind == "stridelist":
            if not isinstance(v, list) or not v or not all(is_int(x) and x in STRIDES for x in v):
                bad = "a list of strides per stage, each 1 or 2"
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


def _parse_space(i: int, raw: dict[str, Any], input_size: tuple[int, int]) -> Space:
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
    space = Space(index=i, axes=axes)
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
            block = c.get("block", "conv")
            if block in MOBILE_BLOCKS and c.get("batch_norm") is False:
                raise FamilyError(f"batch_norm: block {block!r} always uses batch norm (folded into its convs "
                                  "when converted); leave batch_norm out")
            knobs = {k: c[k] for k in ("pool", "block", "expand", "se", "stride", "alpha", "batch_norm", "resolution",
                                       "prune", "prune_method", "vip_from") if k in c}
            spec = ModelSpec(filters=filters, kernel=c["kernel"], convs=c["convs"], vip=c["vip"],
                             psconv=c["psconv"], dense=c["dense"], dropout=c["dropout"], head=c["head"], **knobs)
            spec.check_input(input_size)
        except FamilyError as exc:
            desc = ", ".join(f"{k}={_show(c[k])}" for k in _SHAPE_AXES if k in c)
            raise FamilyError(f"{where}.{exc} (combination {desc}; "
                              f"family input_size {input_size[0]}x{input_size[1]})") from None
    return space


def _show(v: Any) -> str:
    return json.dumps(list(v) if isinstance(v, tuple) else v)


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
        members = check_members(e.get("members", []), f"{where}.members") if "members" in e else ()
        if "members" in e and not members:
            raise FamilyError(f"{where}.members: empty; list at least 2 model ids of family {family!r}")
        for m in members:
            if m not in known:
                close = difflib.get_close_matches(m, model_ids, n=3, cutoff=0.6)
                hint = f"; did you mean {close}?" if close else ""
                raise FamilyError(
                    f"{where}.members: {m!r} is not a model id of family {family!r}{hint} "
                    f"(list the family's ids with: {listing or 'python -m converters.family.listing FAMILY'})")
        top = e.get("top")
        if "top" in e:
            if not is_int(top) or top < 2:
                raise FamilyError(f"{where}.top: must be an integer >= 2 (members to average), got {top!r}")
            if members and top > len(members):
                raise FamilyError(f"{where}.top: {top} is more than the {len(members)} listed members")
            if top > len(model_ids):
                raise FamilyError(f"{where}.top: {top} is more than the family's {len(model_ids)} specs")
        elif len(members) < 2:
            raise FamilyError(f"{where}.members: an ensemble needs at least 2 members, got {list(members)}")
        name = e.get("name", "")
        if not isinstance(name, str) or not ENSEMBLE_NAME_RE.fullmatch(name or "x"):
            raise FamilyError(f"{where}.name: must be 1-40 letters, digits, '_' or '-', got {name!r}")
        views = check_views(e["views"], f"{where}.views") if "views" in e else ("id",)
        if top is None or top == len(members):
            key = tuple(sorted(members)) + views
            if key in explicit:
                raise FamilyError(f"{where}: same members as ensemble[{explicit[key]}]; remove one of them")
            explicit[key] = i
        decls.append(EnsembleDecl(index=i, members=members, top=top, name=name, views=views))
    return tuple(decls)

