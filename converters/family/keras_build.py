"""Keras models from specs: a ModelSpec as a keras.Model, an ensemble of loaded members, MAC counting, safe loading.

Keras (and the custom layers of ``converters.family.layers``) are imported inside the functions, so importing
this module does not start TensorFlow.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

from converters.family.specs import FamilyError, ModelSpec, check_views, is_int
from edge.core.errors import MissingError


def build_model(
    spec: ModelSpec,
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    name: str | None = None,
    psconv_implementation: str = "shifted",
):
    """The spec as a functional keras.Model: float32 raw pixels (0..255) in, logits out.

    ``input_shape`` is the run's images' (H, W, C); a spec with a ``resolution`` takes (resolution, C).

    ``psconv_implementation="masked"`` builds pSConv layers as masked dense 3x3 convs (a reference).
    """
    import keras

    if not isinstance(spec, ModelSpec):
        raise TypeError(f"build_model needs a ModelSpec, got {type(spec).__name__}")
    if len(input_shape) != 3 or not all(is_int(int(v)) and int(v) > 0 for v in input_shape):
        raise FamilyError(f"input_shape: must be (H, W, C), got {tuple(input_shape)!r}")
    h, w, c = spec.input_shape(tuple(int(v) for v in input_shape))
    if not is_int(num_classes) or num_classes < 2:
        raise FamilyError(f"num_classes: must be an integer >= 2, got {num_classes!r}")
    spec.check_input((h, w, c))

    inp = keras.Input(shape=(h, w, c), dtype="float32", name="input")
    if spec.preprocess == "rescale":
        x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inp)
    else:
        mean = list(spec.mean) * (c if len(spec.mean) == 1 else 1)
        var = [s * s for s in spec.std] * (c if len(spec.std) == 1 else 1)
        x = keras.layers.Normalization(mean=mean, variance=var, name="standardize")(inp)

    if spec.mobile:
        x = _mobile_body(x, spec.units((h, w, c)), psconv_implementation)
    else:
        x = _conv_body(x, spec, (h, w), psconv_implementation)

    if spec.head == "gap":
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    if spec.dense:
        x = keras.layers.Dense(spec.dense, activation="relu", name="dense")(x)
    if spec.dropout:
        x = keras.layers.Dropout(spec.dropout, name="dropout")(x)
    out = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=name or keras_name(spec.model_id))


def _conv_body(x, spec: ModelSpec, hw: tuple[int, int], psconv_implementation: str):
    """The plain conv blocks of ``spec`` (``ModelSpec.conv_plan``): conv [-> BN] -> ReLU [-> ViP] [-> pool]."""
    import keras

    from converters.family.layers import PSConv2D

    for p in spec.conv_plan(hw):
        tag = f"b{p['block'] + 1}c{p['conv'] + 1}"
        stride = p["stride"] * (2 if p["vip"] else 1)
        # With batch norm: conv (no bias) -> BN -> ReLU; the converters fold BN into the conv.
        act, bias = (None, False) if spec.batch_norm else ("relu", True)
        if p["psconv"]:
            x = PSConv2D(p["filters"], strides=stride, activation=act, use_bias=bias,
                         implementation=psconv_implementation, name=f"{tag}_psconv")(x)
        else:
            x = keras.layers.Conv2D(p["filters"], spec.kernel, strides=stride, padding="same", activation=act,
                                    use_bias=bias, name=f"{tag}_conv")(x)
        if spec.batch_norm:
            x = keras.layers.BatchNormalization(name=f"{tag}_bn")(x)
            x = keras.layers.ReLU(name=f"{tag}_relu")(x)
        if p["vip"]:
            # Virtual pooling: the conv ran at twice its stride; interpolate back to its nominal size.
            oh, ow = p["out_hw"]
            x = keras.layers.Resizing(oh, ow, interpolation="bilinear", name=f"{tag}_vip")(x)
        if p["conv"] == spec.convs - 1 and spec.pool in ("max", "avg"):
            pool_cls = keras.layers.MaxPooling2D if spec.pool == "max" else keras.layers.AveragePooling2D
            x = pool_cls(2, name=f"b{p['block'] + 1}_{spec.pool}pool")(x)

    return x


def _mobile_body(x, units, psconv_implementation: str):
    """The stem and stage units of a mobile spec (``converters.family.blocks``), one Keras layer per op."""
    import keras

    for unit in units:
        inp = x
        for op in unit.ops:
            x = _op(x, op, psconv_implementation)
        if unit.vip_hw is not None:
            # Virtual pooling: the unit ran at twice its stride; interpolate back to its nominal size.
            x = keras.layers.Resizing(*unit.vip_hw, interpolation="bilinear", name=f"{unit.name}_vip")(x)
        if unit.skip:
            short = inp if unit.shortcut is None else _op(inp, unit.shortcut, psconv_implementation)
            x = keras.layers.Add(name=f"{unit.name}_add")([x, short])
        if unit.post_act:
            x = _activation(unit.post_act, f"{unit.name}_out")(x)
    return x


def _activation(act: str, name: str):
    import keras

    if act == "relu6":
        return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")
    return keras.layers.ReLU(name=f"{name}_relu")


def _op(x, op, psconv_implementation: str):
    """One planned op: its conv (no bias), batch norm and activation; squeeze-excite as MobileNetV3 builds it."""
    import keras

    from converters.family.layers import PSConv2D

    if op.kind == "se":
        s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{op.name}_squeeze")(x)
        s = keras.layers.Conv2D(op.cout, 1, activation="relu", name=f"{op.name}_reduce")(s)
        s = keras.layers.Conv2D(op.cin, 1, activation="hard_sigmoid", name=f"{op.name}_expand")(s)
        return keras.layers.Multiply(name=f"{op.name}_excite")([x, s])
    if op.kind == "dwconv":
        x = keras.layers.DepthwiseConv2D(op.kernel, strides=op.stride, padding="same", use_bias=False,
                                         name=op.name)(x)
    elif op.kind == "psconv":
        x = PSConv2D(op.cout, strides=op.stride, use_bias=False, implementation=psconv_implementation,
                     name=f"{op.name}_psconv")(x)
    else:
        x = keras.layers.Conv2D(op.cout, op.kernel, strides=op.stride, padding="same", use_bias=False,
                                name=op.name)(x)
    x = keras.layers.BatchNormalization(name=f"{op.name}_bn")(x)
    if op.act:
        x = _activation(op.act, op.name)(x)
    return x


def _outputs_probabilities(model) -> bool:
    """True when the model's last layer already ends in a softmax (the families' heads output logits)."""
    import keras

    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax):
        return True
    act = getattr(last, "activation", None)
    return act is not None and getattr(act, "__name__", "") == "softmax"


def _view(x, view: str, i: int):
    """``x`` (N, H, W, C) seen as ``view``: itself, mirrored, or moved one pixel (zero filled: pad, then crop)."""
    import keras

    from converters.family.layers import Flip

    if view == "flip":
        return Flip(name=f"view_flip_{i}")(x)
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


def build_ensemble(members: Sequence, name: str | None = None, views: Sequence[str] = ("id",),
                   input_shape: Sequence[int] | None = None):
    """One functional keras.Model: input -> every member -> softmax (if it outputs logits) -> mean.

    With ``views`` every member also runs on each view of the input (1-pixel translations) and
    all the probabilities are averaged: test-time augmentation, more cost for more accuracy.

    The members (built or loaded keras.Models, distinct names) run as nested models on the same
    float32 raw-pixel input; the output has their (N, classes) float32 shape and holds the mean
    probabilities, so its argmax is the ensemble's class. The input is named "input" like a member's.

    ``input_shape`` (H, W, C), the run's images: the ensemble's input. A member that takes another height and
    width then runs on its view resized inside the graph by ``Resample`` (resize_pixels' resize, as the member
    was trained); the channels must match. Without it, every member takes one shape and that is the input.
    """
    import keras

    members = list(members)
    if len(members) < 2:
        raise FamilyError(f"an ensemble needs at least 2 members, got {len(members)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise FamilyError(f"ensemble members need distinct Keras model names, got {names}")
    from converters.family.layers import Resample

    if any(len(m.inputs) != 1 or len(m.outputs) != 1 for m in members):
        raise FamilyError(f"ensemble members must have one input and one output each, got {names}")
    takes = [tuple(int(d) for d in m.inputs[0].shape[1:]) for m in members]
    in_shapes = set(takes)
    out_shapes = {tuple(m.outputs[0].shape[1:]) for m in members}
    if input_shape is None and len(in_shapes) != 1:
        raise FamilyError(f"ensemble members must share one input shape, got {sorted(in_shapes)} (or give the "
                          "ensemble's input_shape: members of other sizes then resize inside it)")
    shape = tuple(int(d) for d in (input_shape if input_shape is not None else takes[0]))
    for m, t in zip(members, takes):
        if len(t) != 3 or t[2] != shape[2]:
            raise FamilyError(f"ensemble member {m.name} takes {t} images, the ensemble {shape}: the channels must "
                              "match (a member may take another height and width)")
    if len(out_shapes) != 1:
        raise FamilyError(f"ensemble members must share one output shape, got {sorted(out_shapes)}")
    for m in members:
        m.trainable = False  # an ensemble is built, never trained: batch norm stays on its moving statistics
    inp = keras.Input(shape=shape, dtype="float32", name="input")
    probs = []
    views = check_views(list(views), "views")
    for vi, view in enumerate(views):
        x = _view(inp, view, vi)
        resized = {}  # one resize per view and size, shared by the members of that size
        for i, (m, t) in enumerate(zip(members, takes)):
            xm = x
            if t[:2] != shape[:2]:
                if t[:2] not in resized:
                    resized[t[:2]] = Resample(t[:2], name=f"resize_{t[0]}x{t[1]}" + (f"_{view}" if vi else ""))(x)
                xm = resized[t[:2]]
            # Members always run in inference mode (batch norm on its moving statistics); without the
            # explicit flag Keras' ONNX export traced nested batch-norm members with batch statistics.
            y = m(xm, training=False)
            if not _outputs_probabilities(m):
                y = keras.layers.Softmax(name=f"softmax_{i}" if vi == 0 else f"softmax_{i}_{view}")(y)
            probs.append(y)
    out = keras.layers.Average(name="mean_probs")(probs)
    return keras.Model(inp, out, name=name or "ensemble")


def keras_name(model_id: str) -> str:
    """A model id as a Keras model name (letters, digits and '_')."""
    return re.sub(r"[^A-Za-z0-9_]", "_", model_id)


def count_params_macs(model) -> tuple[int, int]:
    """(parameters, multiply-accumulates for one image) of a built model.

    MACs count Conv1D, Conv2D (grouped too), DepthwiseConv2D, SeparableConv2D, Dense and PSConv2D (what it
    executes: 4 taps per kernel), inside nested models too (keras.applications);
    pooling, resizing and element-wise layers are not counted. Parameters are the model's weights,
    except that a masked PSConv2D counts only its free weights and an ensemble's Resample (a resize's
    constants) counts none.
    """
    from converters.family.layers import PSConv2D, Resample

    params = 0
    macs = 0
    for layer in _walk_layers(model):
        if isinstance(layer, Resample):  # a resize's constants, not the model's weights
            continue
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
            if cls == "SeparableConv2D":
                # the depthwise and the 1x1 pointwise stage, both at the output's pixels (strides apply first)
                macs += pixels * (int(math.prod(layer.depthwise_kernel.shape))
                                  + int(math.prod(layer.pointwise_kernel.shape)))
            else:
                # a DepthwiseConv2D's weights are `kernel` (kh, kw, cin, multiplier) in Keras >= 3.x, were
                # `depthwise_kernel` before: each output value takes kh*kw MACs, so pixels * its size either way;
                # a grouped Conv2D's kernel (kh, kw, cin/groups, cout) counts right the same way
                kernel = getattr(layer, "kernel", None)
                if kernel is None:
                    kernel = layer.depthwise_kernel
                macs += pixels * int(math.prod(kernel.shape))
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
    from converters.family.layers import custom_objects as _co

    return _co()


def load_keras_model(path: str | Path, compile: bool = False):
    """Load a ``model.keras`` written by the training sweep, in Keras safe mode (no arbitrary code)."""
    import keras

    p = Path(path)
    if not p.is_file():
        raise MissingError(f"{p}: no such Keras model file")
    return keras.saving.load_model(str(p), custom_objects=custom_objects(), compile=compile, safe_mode=True)
