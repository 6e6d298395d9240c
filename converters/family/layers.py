"""Custom Keras layers for the CNN families: pSConv (pre-defined sparse 3x3 kernels) and its helpers.

pSConv (Kundu et al., 2019, "Pre-defined sparse kernels"): a 3x3 convolution whose kernels have only
4 of their 9 weights free, in one of the four 2x2 corners of the window. The corner changes across
input and output channels: the input channels' half picks the left or right columns, the output
channels' half the top or bottom rows, so the four (input half, output half) blocks of the kernel
tensor use the four corners (TL, TR, BR, BL).

Two implementations compute the same function:

- ``"shifted"`` (the one the families build): only the free weights are stored, as a (2, 2, Cin, Cout)
  kernel. The input is padded once and its two channel halves are sliced one column apart and
  concatenated; the row offset of the output half is applied to the *output* (a 2x2 conv commutes
  with shifts), so a stride-1 layer is ONE dense 2x2 convolution over H+1 rows plus two slices:
  4·Cin·Cout MACs per pixel instead of 9·Cin·Cout, with the full Cout as the GEMM width. A strided
  layer applies the row offset on the input side instead (two 2x2 convs, Cout/2 wide each). It shows
  as plain CONV_2D / PAD / STRIDED_SLICE / CONCATENATION ops in TFLite and ONNX.
- ``"masked"`` (a reference): a full (3, 3, Cin, Cout) kernel times a constant 0/1 mask, run as one
  dense 3x3 convolution. The mask is applied to the initial kernel and the masked weights get zero
  gradient, so the pattern is kept through training.

ViP (virtual pooling) needs no custom layer: the families build it from a stride-2 Conv2D followed by
a bilinear ``keras.layers.Resizing`` back to the conv's nominal output size.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from converters.family.blocks import psconv_macs  # the arithmetic lives Keras-free (estimate_macs uses it too)
from edge.core.errors import UsageError

# Corner p of the 3x3 window -> (row offset, col offset) of its 2x2 block, clockwise from top-left.
CORNERS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 1), (1, 0))


def channel_halves(n: int) -> list[tuple[int, int]]:
    """The two contiguous channel groups [lo, hi) of ``n`` channels (the second is empty when n == 1)."""
    mid = (n + 1) // 2
    return [(0, mid), (mid, n)]


def _half_of(n: int) -> np.ndarray:
    g = np.zeros(n, dtype=np.int64)
    g[channel_halves(n)[1][0] :] = 1
    return g


def corner_offsets(cin: int, cout: int) -> tuple[np.ndarray, np.ndarray]:
    """(row offset, col offset) arrays of shape (Cin, Cout): the 2x2 corner each channel pair uses.

    The column offset comes from the input channel's half, the row offset from the output channel's
    half, so the corner turns TL -> TR -> BR -> BL across the four (input half, output half) pairs.
    """
    rx = np.broadcast_to(_half_of(cin)[:, None], (cin, cout))
    ry = np.broadcast_to(_half_of(cout)[None, :], (cin, cout))
    return ry, rx


def corner_index(cin: int, cout: int) -> np.ndarray:
    """(Cin, Cout) int array: index into CORNERS of the corner each input/output channel pair uses."""
    ry, rx = corner_offsets(cin, cout)
    lut = {c: i for i, c in enumerate(CORNERS)}
    return np.vectorize(lambda y, x: lut[(int(y), int(x))])(ry, rx).astype(np.int64)


def psconv_mask(cin: int, cout: int) -> np.ndarray:
    """(3, 3, Cin, Cout) float32 0/1 mask of the free weights (4 of 9 per kernel)."""
    ry, rx = corner_offsets(cin, cout)
    mask = np.zeros((3, 3, cin, cout), dtype=np.float32)
    for oy in range(2):
        for ox in range(2):
            sel = ((ry == oy) & (rx == ox)).astype(np.float32)
            mask[oy : oy + 2, ox : ox + 2] += sel[None, None]
    return mask


def corners_to_dense(k2: np.ndarray) -> np.ndarray:
    """Scatter a (2, 2, Cin, Cout) free-weight kernel into the equivalent (3, 3, Cin, Cout) kernel."""
    k2 = np.asarray(k2)
    _, _, cin, cout = k2.shape
    ry, rx = corner_offsets(cin, cout)
    k3 = np.zeros((3, 3, cin, cout), dtype=k2.dtype)
    for oy in range(2):
        for ox in range(2):
            sel = ((ry == oy) & (rx == ox))[None, None]
            k3[oy : oy + 2, ox : ox + 2] += np.where(sel, k2, 0)
    return k3


def dense_to_corners(k3: np.ndarray) -> np.ndarray:
    """Gather the free weights of a (3, 3, Cin, Cout) kernel into (2, 2, Cin, Cout) (the rest is dropped)."""
    k3 = np.asarray(k3)
    _, _, cin, cout = k3.shape
    ry, rx = corner_offsets(cin, cout)
    k2 = np.zeros((2, 2, cin, cout), dtype=k3.dtype)
    for oy in range(2):
        for ox in range(2):
            sel = ((ry == oy) & (rx == ox))[None, None]
            k2 += np.where(sel, k3[oy : oy + 2, ox : ox + 2], 0)
    return k2


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@keras.saving.register_keras_serializable(package="edgekit")
class PSConv2D(keras.layers.Layer):
    """3x3 'same' convolution with pre-defined sparse (2x2-corner) kernels; see the module docstring.

    The first conv of a network should stay a dense Conv2D (its few input channels carry the image).
    """

    IMPLEMENTATIONS = ("shifted", "masked")

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        activation=None,
        use_bias: bool = True,
        implementation: str = "shifted",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(filters) <= 0:
            raise UsageError(f"PSConv2D filters must be positive, got {filters}")
        if isinstance(strides, (tuple, list)):
            if len(set(strides)) != 1:
                raise UsageError(f"PSConv2D needs equal strides, got {strides}")
            strides = strides[0]
        if int(strides) not in (1, 2, 4):
            raise UsageError(f"PSConv2D strides must be 1, 2 or 4, got {strides}")
        if implementation not in self.IMPLEMENTATIONS:
            raise UsageError(f"PSConv2D implementation must be one of {self.IMPLEMENTATIONS}, got {implementation!r}")
        self.filters = int(filters)
        self.strides = int(strides)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.implementation = implementation
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self._mask = None

    def build(self, input_shape):
        cin = int(input_shape[-1])
        if self.implementation == "shifted":
            # Glorot on (2, 2, Cin, Cout) sees the true fan-in of 4·Cin.
            self.kernel = self.add_weight(
                name="kernel", shape=(2, 2, cin, self.filters), initializer=self.kernel_initializer
            )
        else:
            self._mask = psconv_mask(cin, self.filters)
            init = self.kernel_initializer
            mask = self._mask

            def masked_init(shape, dtype=None):
                return ops.multiply(init(shape, dtype=dtype), ops.convert_to_tensor(mask, dtype=dtype))

            self.kernel = self.add_weight(name="kernel", shape=(3, 3, cin, self.filters), initializer=masked_init)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
        else:
            self.bias = None

    # -- computation -------------------------------------------------------------------------------
    def call(self, x):
        if self.implementation == "masked":
            kernel = ops.multiply(self.kernel, ops.convert_to_tensor(self._mask, dtype=self.kernel.dtype))
            y = ops.conv(x, kernel, strides=self.strides, padding="same")
            if self.use_bias:
                y = ops.add(y, self.bias)
            return self.activation(y) if self.activation is not None else y
        return self._call_shifted(x)

    def _finish(self, y, lo: int, hi: int):
        if self.use_bias:
            y = ops.add(y, self.bias if (lo, hi) == (0, self.filters) else self.bias[lo:hi])
        # Applied before the output slices so the runtime can fuse it into the CONV_2D.
        return self.activation(y) if self.activation is not None else y

    def _call_shifted(self, x):
        h, w, cin = x.shape[1], x.shape[2], x.shape[3]
        if h is None or w is None:
            raise UsageError("PSConv2D needs a static spatial input shape")
        s = self.strides
        (pt, pb), (pl, pr) = same_padding(h, 3, s), same_padding(w, 3, s)
        xp = ops.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
        hp, wp = h + pt + pb, w + pl + pr
        # A 2x2 'valid' conv on the padded input cropped by one at the corner's offset equals the 3x3
        # 'valid' conv restricted to that corner (same output size).
        in_halves = [(a, lo, hi) for a, (lo, hi) in enumerate(channel_halves(cin)) if hi > lo]
        out_halves = [(b, lo, hi) for b, (lo, hi) in enumerate(channel_halves(self.filters)) if hi > lo]

        def mixed(row0: int, rows: int):
            # Input half a sits at column offset a.
            parts = [xp[:, row0 : row0 + rows, a : a + wp - 1, lo:hi] for a, lo, hi in in_halves]
            return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)

        if s == 1 and len(out_halves) > 1:
            # Row offsets go on the output side: one conv over hp-1 rows, then output half b keeps
            # rows b .. b+h-1 (shifting commutes with convolution).
            z = ops.conv(mixed(0, hp), self.kernel, strides=1, padding="valid")
            z = self._finish(z, 0, self.filters)
            outs = [z[:, b : b + h, :, lo:hi] for b, lo, hi in out_halves]
        else:
            outs = []
            for b, lo, hi in out_halves:
                kb = self.kernel if (lo, hi) == (0, self.filters) else self.kernel[:, :, :, lo:hi]
                zb = ops.conv(mixed(b, hp - 1), kb, strides=s, padding="valid")
                outs.append(self._finish(zb, lo, hi))
        return outs[0] if len(outs) == 1 else ops.concatenate(outs, axis=-1)

    def macs(self, input_hw) -> int:
        """MACs this implementation executes for one image of spatial size ``input_hw`` (H, W)."""
        cin = int(self.kernel.shape[2])
        return psconv_macs(int(input_hw[0]), int(input_hw[1]), cin, self.filters, self.strides, self.implementation)

    def compute_output_shape(self, input_shape):
        n, h, w = input_shape[0], input_shape[1], input_shape[2]
        s = self.strides
        return (n, None if h is None else math.ceil(h / s), None if w is None else math.ceil(w / s), self.filters)

    # -- accounting --------------------------------------------------------------------------------
    def dense_kernel(self) -> np.ndarray:
        """The equivalent masked (3, 3, Cin, Cout) kernel as a numpy array."""
        k = np.asarray(self.kernel.numpy())
        if self.implementation == "shifted":
            return corners_to_dense(k)
        return k * self._mask

    def free_params(self) -> int:
        """Trainable weights that can be non-zero (4 per kernel, plus bias)."""
        cin = int(self.kernel.shape[2])
        return 4 * cin * self.filters + (self.filters if self.use_bias else 0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "activation": keras.activations.serialize(self.activation) if self.activation is not None else None,
                "use_bias": self.use_bias,
                "implementation": self.implementation,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="edgekit")
class Flip(keras.layers.Layer):
    """The left-right mirror of an (N, H, W, C) input: an ensemble's "flip" test-time view.

    A layer of its own (no Lambda, so models load with safe_mode); it runs as a reverse op in
    LiteRT and ONNX.
    """

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="edgekit")
class Resample(keras.layers.Layer):
    """An (N, h, w, C) input resized to ``size`` (H, W) inside the graph, as ``edge.artifacts.images.resize_pixels``
    resizes (area averaging when it shrinks, bilinear when it enlarges): an ensemble's member that takes
    another input size than the ensemble.

    The resize is the linear map ``resize_matrices`` gives, ``rows @ x @ cols.T`` per channel, held as two
    constant weights: transposes and two matrix products, which LiteRT (FULLY_CONNECTED) and ONNX (MatMul)
    run at every precision, where an area resize has no LiteRT op. The member then sees the pixels it was
    trained on, up to resize_pixels' rounding to uint8 (under one gray level). Its weights are a resize's,
    not the model's: ``count_params_macs`` counts neither.
    """

    def __init__(self, size, **kwargs):
        kwargs["trainable"] = False  # a saved config says so too
        super().__init__(**kwargs)
        self.size = (int(size[0]), int(size[1]))

    def build(self, input_shape):
        from edge.artifacts.images import resize_matrices

        rows, cols = resize_matrices((int(input_shape[1]), int(input_shape[2])), self.size)
        self.rows_t = self.add_weight(name="rows_t", shape=rows.T.shape,
                                      initializer=keras.initializers.Constant(np.ascontiguousarray(rows.T)),
                                      trainable=False)
        self.cols_t = self.add_weight(name="cols_t", shape=cols.T.shape,
                                      initializer=keras.initializers.Constant(np.ascontiguousarray(cols.T)),
                                      trainable=False)

    def call(self, inputs):
        # Each product has the constant on the right, as a Dense layer's: LiteRT runs it as FULLY_CONNECTED,
        # which its int8 path quantizes well (a constant on the left, a BATCH_MATMUL, read chance accuracy).
        # Reshapes to constant shapes (the batch as -1) keep the graph free of runtime shape arithmetic.
        ops = keras.ops
        (h, oh), (w, ow), c = self.rows_t.shape, self.cols_t.shape, int(inputs.shape[3])
        x = ops.reshape(ops.transpose(inputs, (0, 3, 1, 2)), (-1, w))  # N*C*h, w
        x = ops.reshape(ops.matmul(x, self.cols_t), (-1, c, h, ow))  # N, C, h, W
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 2)), (-1, h))  # N*C*W, h
        x = ops.reshape(ops.matmul(x, self.rows_t), (-1, c, ow, oh))  # N, C, W, H
        return ops.transpose(x, (0, 3, 2, 1))  # N, H, W, C

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}


def custom_objects() -> dict:
    """Every custom layer, under its registered name and its class name, for keras.saving.load_model."""
    return {"edgekit>PSConv2D": PSConv2D, "PSConv2D": PSConv2D, "edgekit>Flip": Flip, "Flip": Flip,
            "edgekit>Resample": Resample, "Resample": Resample}
