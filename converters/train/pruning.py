"""Structured filter pruning: a pruned child of a trained plain-conv member, its weights cut from the parent's.

A spec with ``prune = r`` is its parent (the same spec with ``prune = 0``) with ``r`` of every conv's filters
removed: narrower convolutions, which is what makes a runtime faster (a sparse mask runs at full cost).
``edgekit train`` trains the parent first, then for the child:

1. ranks each conv's filters and keeps the best ``round(c * (1 - r))`` of them:
   - ``l1``: the filters of largest L1 norm (Li et al., "Pruning filters for efficient ConvNets");
   - ``thinet``: ThiNet's greedy choice (Luo et al., 2017): the input channels of the *next* layer whose
     contributions reconstruct its output best on sampled training images, removing the channel whose
     loss changes that output least, one at a time; the last conv, which feeds the head, is ranked by L1;
2. builds the narrower model from the child's spec and copies the kept weights: each conv's kept filters
   (and its bias or batch norm), the next conv's matching input channels, and the head's matching rows
   (one per channel after global average pooling, one per channel and position after a flatten);
3. fine-tunes it for a few epochs at a tenth of the learning rate.

ViP composes both ways. A ViP spec's pruned child keeps its strided conv and resize (neither has weights
to cut). With ``vip_from = "pruned"`` a pruned ViP spec is instead a ViP child of its pruned twin without
ViP: the same weights (ViP adds none), ViP switched on, and the same fine-tuning.
Blocks that cannot be pruned safely are refused by the spec (``ModelSpec._check_prune``): residual adds,
depthwise convs and pSConv's fixed kernel corners.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from converters.family.specs import ModelSpec
from converters.train.options import Schedule
from converters.train.run_folder import MODEL_FILE, read_finished
from edge.core.errors import StepFailed

FINE_TUNE_EPOCHS = 2
FINE_TUNE_LR_SCALE = 0.1
THINET_SAMPLES = 512  # images whose next-layer outputs ThiNet reconstructs
THINET_POSITIONS = 4096  # (image, position, output channel) samples drawn from their outputs


def fine_tune_schedule(schedule: Schedule) -> Schedule:
    """The fine-tuning a pruned child gets: a few epochs of its parent's schedule at a tenth of its rate."""
    return dataclasses.replace(schedule, epochs=min(FINE_TUNE_EPOCHS, schedule.epochs),
                               patience=min(FINE_TUNE_EPOCHS, schedule.patience),
                               learning_rate=schedule.learning_rate * FINE_TUNE_LR_SCALE)


def l1_keep(kernel: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` output channels of a (kh, kw, cin, cout) kernel with the largest L1 norm, in channel order."""
    norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    return np.sort(np.argsort(-norms, kind="stable")[:n])


def thinet_keep(x: np.ndarray, next_kernel: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """ThiNet's greedy channel selection for the input of the next conv.

    ``x``: the next conv's input (N, H, W, C) on sampled images (the current conv's output after its
    activation, ViP and pooling); ``next_kernel``: the next conv's (kh, kw, C, cout), "same" padding, stride 1
    assumed for the contributions. Each sampled output value is the sum over input channels c of a
    contribution z_c; the kept set is the complement of the channels whose removal leaves sum(z_removed)^2
    smallest, chosen greedily one channel at a time.
    """
    kh, kw, c, cout = next_kernel.shape
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    m = min(THINET_POSITIONS, x.shape[0] * x.shape[1] * x.shape[2] * cout)
    idx = rng.integers(0, [x.shape[0], x.shape[1], x.shape[2], cout], size=(m, 4))
    z = np.zeros((m, c), np.float64)
    for s, (i, yy, xx, o) in enumerate(idx):
        patch = xp[i, yy:yy + kh, xx:xx + kw, :]  # (kh, kw, c)
        z[s] = np.einsum("hwc,hwc->c", patch, next_kernel[:, :, :, o])
    removed: list[int] = []
    total = np.zeros(m, np.float64)
    candidates = set(range(c))
    while len(removed) < c - n:
        best, best_err = -1, np.inf
        for ch in candidates:
            err = float(np.sum((total + z[:, ch]) ** 2))
            if err < best_err:
                best, best_err = ch, err
        removed.append(best)
        candidates.discard(best)
        total += z[:, best]
    return np.array(sorted(candidates), dtype=np.int64)


def _conv_layers(spec: ModelSpec, input_shape) -> list[str]:
    """The Keras layer name stem of each conv of a plain spec, in order ("b1c1", ...)."""
    return [f"b{p['block'] + 1}c{p['conv'] + 1}" for p in spec.conv_plan(input_shape)]


def _next_input(parent, nxt: str, images: np.ndarray) -> np.ndarray:
    """The input the conv ``nxt`` sees on ``images`` in the parent (what follows the conv before it)."""
    import keras

    layer = parent.get_layer(f"{nxt}_conv")
    probe = keras.Model(parent.inputs[0], layer.input)
    return np.asarray(probe(images.astype(np.float32), training=False), np.float64)


def copy_kept_weights(parent, child, spec: ModelSpec, input_shape, method: str, images: np.ndarray | None = None,
                      seed: int = 0) -> dict[str, list[int]]:
    """Copy ``parent``'s kept filters into ``child`` (built from the pruned ``spec``); returns each conv's kept
    channel indices. ``images`` (uint8, the run's training images at the model's size) are needed by ThiNet."""
    rng = np.random.default_rng(seed)
    tags = _conv_layers(spec, input_shape)
    child_filters = [p["filters"] for p in spec.conv_plan(input_shape)]
    kept: dict[str, list[int]] = {}
    in_keep = np.arange(int(parent.get_layer(f"{tags[0]}_conv").kernel.shape[2]))
    for i, tag in enumerate(tags):
        pconv, cconv = parent.get_layer(f"{tag}_conv"), child.get_layer(f"{tag}_conv")
        kernel = np.asarray(pconv.kernel)
        n = child_filters[i]
        if method == "thinet" and i + 1 < len(tags):
            if images is None:
                raise StepFailed("ThiNet pruning needs the run's training images")
            nxt = tags[i + 1]
            x = _next_input(parent, nxt, images[:THINET_SAMPLES])
            out_keep = thinet_keep(x, np.asarray(parent.get_layer(f"{nxt}_conv").kernel), n, rng)
        else:
            out_keep = l1_keep(kernel, n)
        weights = [kernel[:, :, in_keep][..., out_keep]]
        if pconv.use_bias:
            weights.append(np.asarray(pconv.bias)[out_keep])
        cconv.set_weights(weights)
        if spec.batch_norm:
            pbn = parent.get_layer(f"{tag}_bn")
            child.get_layer(f"{tag}_bn").set_weights([np.asarray(w)[out_keep] for w in pbn.get_weights()])
        kept[tag] = [int(k) for k in out_keep]
        in_keep = out_keep
    _copy_head(parent, child, spec, in_keep)
    return kept


def _copy_head(parent, child, spec: ModelSpec, keep: np.ndarray) -> None:
    """The first dense layer's rows for the kept channels (per position after a flatten); the rest as it is."""
    first = "dense" if spec.dense else "logits"
    kernel, bias = (np.asarray(w) for w in parent.get_layer(first).get_weights())
    if spec.head == "flatten":
        c = int(parent.get_layer("flatten").input.shape[-1])
        positions = kernel.shape[0] // c
        rows = (np.arange(positions)[:, None] * c + keep[None, :]).reshape(-1)
    else:
        rows = keep
    child.get_layer(first).set_weights([kernel[rows], bias])
    if spec.dense:
        child.get_layer("logits").set_weights(parent.get_layer("logits").get_weights())


def start_from_parent(model, spec: ModelSpec, models_dir: Path, splits, schedule: Schedule,
                      write: Callable[[str], Any] = print) -> tuple[Schedule, dict[str, Any]]:
    """Fill the freshly built pruned ``model`` from its trained parent; returns the fine-tuning schedule and what
    train.json records about the pruning. Raises StepFailed when the parent is not trained in the run."""
    from converters.family.keras_build import load_keras_model

    parent_spec = spec.parent
    pid = parent_spec.model_id
    rec = read_finished(models_dir / pid, pid)
    if rec is None:
        raise StepFailed(f"{spec.model_id}: its parent {pid} is not trained in {models_dir}; train it first (edgekit "
                         "train trains a pruned spec's parent before it)")
    parent = load_keras_model(models_dir / pid / MODEL_FILE)
    if spec.vip_from == "pruned":
        model.set_weights(parent.get_weights())  # ViP adds no weights: the same tensors, in the same order
        what, record = "ViP switched on", {"vip_from": pid}
    else:
        kept = copy_kept_weights(parent, model, spec, splits.input_shape, spec.prune_method, splits.x_train)
        what = f"{spec.prune:.0%} of the filters cut ({spec.prune_method})"
        record = {"pruned_from": pid, "prune": spec.prune, "prune_method": spec.prune_method, "kept_channels": kept}
    before = float(np.mean(np.argmax(np.asarray(model.predict(splits.x_val.astype(np.float32), batch_size=512,
                                                              verbose=0)), 1) == splits.y_val))
    write(f"  {spec.model_id}: from {pid}, {what}; validation accuracy {before:.4f} before fine-tuning, "
          f"{float(rec['val_accuracy']):.4f} for the parent")
    return fine_tune_schedule(schedule), {
        **record, "parent_test_accuracy": float(rec["test_accuracy"]), "parent_macs": int(rec["macs"]),
        "val_accuracy_before_fine_tuning": before,
    }
