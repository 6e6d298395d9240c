"""A parsed CNN family (FamilySpec): its spaces expanded into ModelSpecs, its ensemble declarations resolved.

Grid mode gives every combination, random mode seeded draws; ``expand(sample=, limit=)`` takes a seeded
subset. An ``[[ensemble]]`` becomes an EnsembleSpec once its members are trained. Keras-free.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from converters.family.specs import EnsembleSpec, FamilyError, ModelSpec, is_int


@dataclass(frozen=True)
class Space:
    """One ``[[space]]`` table: its axes, and the combination at a flat index."""

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
    spaces: tuple[Space, ...] = field(repr=False)
    source: str = ""
    ensembles: tuple[EnsembleDecl, ...] = field(default=(), repr=False)

    def expand(self, limit: int | None = None, sample: int | None = None, seed: int = 0) -> list[ModelSpec]:
        """The family's specs in file order (grid) or draw order (random), without duplicates.

        ``sample`` keeps a seeded random subset of that many (kept in family order); ``limit`` then keeps
        the first ``limit``.
        """
        for key, v in (("limit", limit), ("sample", sample)):
            if v is not None and (not is_int(v) or v < 1):
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

    def _spec(self, space: Space, combo: dict[str, Any]) -> ModelSpec:
        c = dict(combo)
        if "filters" in c:
            filters = tuple(c.pop("filters"))
        else:
            blocks, width, growth = c.pop("blocks"), c.pop("width"), c.pop("growth")
            filters = tuple(max(1, int(round(width * growth**b))) for b in range(blocks))
        c.pop("blocks", None), c.pop("width", None), c.pop("growth", None)
        spec = ModelSpec(filters=filters, preprocess=self.preprocess, mean=self.mean, std=self.std, **c)
        if spec.psconv and not spec.mobile and not any(p["psconv"] for p in spec.conv_plan(self.input_size)):
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
                raise FamilyError(f"count: asked for {self.count} specs but the space yields only {len(seen)} "
                                  "distinct ones")
        specs = list(seen.values())
        object.__setattr__(self, "_cache", tuple(specs))
        return list(specs)
