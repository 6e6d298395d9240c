"""The three degradations of the predictive test, each at a level and a seed.

- ``noise``: Gaussian noise on every weight tensor, of ``level`` times the tensor's own standard deviation
  (integer weights get it in their integer units, rounded and clipped: what a drifting cell does);
- ``bitflip``: one random bit flipped in a ``level`` fraction of the integer weights (failing flash);
- ``qparams``: each integer tensor's quantization scale multiplied by exp(``level`` * N(0, 1)) per channel.

Float artifacts (fp32, fp16) have no integer weights, so only ``noise`` applies to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converters.pack.degrade.weights import WeightFile

KINDS = ("noise", "bitflip", "qparams")


@dataclass(frozen=True)
class Degradation:
    kind: str
    level: float
    seed: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown degradation '{self.kind}'; available: {list(KINDS)}")
        if not (self.level >= 0 and np.isfinite(self.level)):
            raise ValueError(f"degradation level must be a finite number >= 0, got {self.level}")


def kinds_for(wf: WeightFile) -> tuple[str, ...]:
    """The degradations that change something in ``wf``."""
    ints = [w for w in wf.tensors() if w.integer]
    return KINDS if ints and all(w.scale is not None for w in ints) else (("noise", "bitflip") if ints else ("noise",))


def degrade(wf: WeightFile, d: Degradation) -> bytes:
    """The bytes of ``wf``'s file degraded by ``d``."""
    rng = np.random.default_rng(d.seed)
    values: dict[str, np.ndarray] = {}
    scales: dict[str, np.ndarray] = {}
    for w in wf.tensors():
        v = w.values
        if d.kind == "noise":
            f = v.astype(np.float64)
            noisy = f + rng.standard_normal(v.shape) * d.level * (float(f.std()) or 1.0)
            if w.integer:
                info = np.iinfo(v.dtype)
                noisy = np.clip(np.round(noisy), info.min, info.max)
            values[w.name] = noisy.astype(v.dtype)
        elif d.kind == "bitflip" and w.integer:  # integer weights are int8 or uint8: one of 8 bits
            raw = v.view(np.uint8)
            bits = np.left_shift(np.uint8(1), rng.integers(0, 8, v.shape).astype(np.uint8))
            values[w.name] = np.where(rng.random(v.shape) < d.level, raw ^ bits, raw).astype(np.uint8).view(v.dtype)
        elif d.kind == "qparams" and w.integer and w.scale is not None:
            scales[w.name] = (w.scale * np.exp(d.level * rng.standard_normal(w.scale.shape))).astype(np.float32)
    return wf.with_changes(values, scales)
