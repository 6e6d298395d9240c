"""The mobile block kinds of a family as a Keras-free layer plan: what each layer is, its shapes and its MACs.

A ``[[space]]`` chooses its ``block``:

- ``conv``: plain convolutions (``ModelSpec.conv_plan``; not planned here);
- ``dwsep``: depthwise-separable layers, as in MobileNetV1: a depthwise kxk conv, then a 1x1 pointwise conv;
- ``mbconv``: inverted residuals, as in MobileNetV2: a 1x1 expansion to ``expand`` x the input channels (none
  when ``expand`` is 1), a depthwise kxk conv, an optional squeeze-excite (MobileNetV3), a linear 1x1
  projection, and the input added back where the shapes allow (stride 1, same channels);
- ``residual``: the ResNet basic block: two kxk convs and a shortcut (a strided 1x1 conv where the shape
  changes), ReLU after the add.

Every mobile network starts with a stem (one plain kxk conv to the first stage's channels, stride 1) and
then runs its stages: stage ``b`` has ``convs`` units of ``channels[b]`` output channels, the first one at
the stage's ``stride``. Every conv is followed by batch norm (folded into the conv when converted), then
ReLU6 (dwsep, mbconv) or ReLU (residual, the stem of a residual net), or nothing before a residual add.

ViP (virtual pooling) on a stage runs each unit's strided spatial conv at twice its stride, the rest of
the unit at that resolution, and a bilinear resize back to the nominal size before the residual add.
pSConv (pre-defined sparse kernels) replaces the residual block's dense 3x3 convs; dwsep and mbconv have
none (their 3x3 convs are depthwise), so the spec refuses that combination.

The builder (``converters.family.keras_build``) makes one Keras layer per ``Op`` and the spec's MAC
estimate sums the ``Op.macs`` of the same plan, so the two cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

BLOCKS = ("conv", "dwsep", "mbconv", "residual")
MOBILE_BLOCKS = ("dwsep", "mbconv", "residual")
STRIDES = (1, 2)


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: the nearest multiple of ``divisor`` (at least ``divisor``), never more
    than 10 % below ``v`` (keras.applications.mobilenet_v2._make_divisible)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return int(new)


def psconv_macs(h: int, w: int, cin: int, cout: int, strides: int = 1, implementation: str = "shifted") -> int:
    """MACs of one PSConv2D on an h x w input, as the given implementation executes them."""
    oh, ow = math.ceil(h / strides), math.ceil(w / strides)
    if implementation == "masked":
        return oh * ow * 9 * cin * cout
    if strides == 1 and cout > 1:
        return (oh + 1) * ow * 4 * cin * cout  # one extra row feeds the output-side row shift
    return oh * ow * 4 * cin * cout


@dataclass(frozen=True)
class Op:
    """One conv-like layer of a unit, with batch norm and ``act`` after it ("" = linear).

    ``kind``: "conv" (dense kxk), "psconv" (3x3 with 4 free taps), "dwconv" (depthwise kxk), "pw" (1x1), or "se"
    (squeeze-excite: global average pool, 1x1 conv to cout, ReLU, 1x1 conv back, hard sigmoid, multiply; no
    batch norm)."""

    kind: str
    name: str
    cin: int
    cout: int
    kernel: int
    stride: int  # as executed (twice the nominal stride under ViP)
    in_hw: tuple[int, int]
    act: str

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind == "se":
            return self.in_hw
        return (math.ceil(self.in_hw[0] / self.stride), math.ceil(self.in_hw[1] / self.stride))

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        if self.kind == "psconv":
            return psconv_macs(self.in_hw[0], self.in_hw[1], self.cin, self.cout, self.stride)
        if self.kind == "dwconv":
            return oh * ow * self.kernel * self.kernel * self.cin
        if self.kind == "se":  # two 1x1 convs on the pooled vector: cin -> cout -> cin
            return 2 * self.cin * self.cout
        return oh * ow * self.kernel * self.kernel * self.cin * self.cout


@dataclass(frozen=True)
class Unit:
    """One block instance: its ops in order, the ViP resize after them, and what is added back."""

    name: str
    stage: int  # 0-based; -1 for the stem
    stride: int  # nominal
    ops: tuple[Op, ...]
    skip: str  # "": nothing added back; "identity": the unit's input; "project": ``shortcut`` applied to it
    shortcut: Op | None
    post_act: str  # after the add (the residual block's ReLU); "" when nothing follows
    vip_hw: tuple[int, int] | None  # ViP: resized back to this nominal size after the ops
    cout: int

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.vip_hw or self.ops[-1].out_hw

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops) + (self.shortcut.macs if self.shortcut is not None else 0)


def se_channels(channels: int) -> int:
    """The squeeze width of a squeeze-excite on ``channels`` (MobileNetV3: a quarter, rounded to 8)."""
    return make_divisible(channels / 4)


def plan_units(block: str, channels: Sequence[int], strides: Sequence[int], vip: Sequence[int], repeats: int,
               kernel: int, expand: int, se: bool, psconv: bool, input_hw: tuple[int, int],
               input_channels: int) -> list[Unit]:
    """The stem and every stage's units of a mobile network, in order."""
    if block not in MOBILE_BLOCKS:
        raise ValueError(f"plan_units plans {MOBILE_BLOCKS}, not {block!r}")
    act = "relu" if block == "residual" else "relu6"
    hw = (int(input_hw[0]), int(input_hw[1]))
    stem = Op("conv", "stem_conv", input_channels, channels[0], kernel, 1, hw, act)
    units = [Unit("stem", -1, 1, (stem,), "", None, "", None, channels[0])]
    cin = channels[0]
    for b, cout in enumerate(channels):
        for j in range(repeats):
            tag = f"b{b + 1}u{j + 1}"
            nominal = strides[b] if j == 0 else 1
            run = nominal * (2 if vip[b] else 1)
            nominal_hw = (math.ceil(hw[0] / nominal), math.ceil(hw[1] / nominal))
            ops: list[Op] = []
            if block == "dwsep":
                ops.append(Op("dwconv", f"{tag}_dw", cin, cin, kernel, run, hw, act))
                ops.append(Op("pw", f"{tag}_pw", cin, cout, 1, 1, ops[-1].out_hw, act))
                skip = ""
            elif block == "mbconv":
                mid = cin * expand
                if expand > 1:
                    ops.append(Op("pw", f"{tag}_expand", cin, mid, 1, 1, hw, act))
                ops.append(Op("dwconv", f"{tag}_dw", mid, mid, kernel, run, hw, act))
                if se:
                    ops.append(Op("se", f"{tag}_se", mid, se_channels(mid), 1, 1, ops[-1].out_hw, "relu"))
                ops.append(Op("pw", f"{tag}_project", mid, cout, 1, 1, ops[-1].out_hw, ""))
                skip = "identity" if nominal == 1 and cin == cout else ""
            else:
                kind = "psconv" if psconv else "conv"
                ops.append(Op(kind, f"{tag}_conv1", cin, cout, kernel, run, hw, act))
                ops.append(Op(kind, f"{tag}_conv2", cout, cout, kernel, 1, ops[-1].out_hw, ""))
                skip = "identity" if nominal == 1 and cin == cout else "project"
            shortcut = Op("pw", f"{tag}_shortcut", cin, cout, 1, nominal, hw, "") if skip == "project" else None
            units.append(Unit(tag, b, nominal, tuple(ops), skip, shortcut, "relu" if block == "residual" else "",
                              nominal_hw if vip[b] else None, cout))
            cin, hw = cout, nominal_hw
    return units


def shape_problems(units: Sequence[Unit]) -> list[tuple[str, str]]:
    """(key, reason) for the first unit that strides over a map too small for it, or whose ViP output is
    under 2x2 (the key names the knob to change)."""
    for u in units[1:]:
        spatial = next(op for op in u.ops if op.stride > 1 or op.kind in ("conv", "psconv", "dwconv"))
        h, w = spatial.in_hw
        if spatial.stride > 1 and min(h, w) < 2:
            key = "stride" if u.stride > 1 else "vip"
            return [(key, f"stage {u.stage + 1} ({u.name}) strides over a {h}x{w} feature map; "
                          f"use fewer stages, or no {'stride 2' if key == 'stride' else 'virtual pooling'} there")]
        if u.vip_hw is not None and min(u.vip_hw) < 2:
            return [("vip", f"virtual pooling at stage {u.stage + 1} needs an output of at least 2x2 "
                            f"(it is {u.vip_hw[0]}x{u.vip_hw[1]}); use fewer stages")]
    return []
