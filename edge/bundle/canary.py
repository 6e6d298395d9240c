"""The canary self-check: run a bundle's canary images and compare the scores with the workstation's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge.artifacts.manifest import ArtifactRecord, TensorSpec
from edge.artifacts.tensors import scores

CANARY_NAME = "canary.npz"
SCORES_PREFIX = "scores/"

# Relative canary tolerance per precision, times max(1, max |host score|). fp32 differs between
# runtimes/CPUs only by summation order; fp16 may run in half precision on the device (XNNPACK on
# ARMv8.2, TensorRT); quantized kernels round differently on different CPUs.
#
# int8 is set from a measurement (`make board-check` with `--run demo/run`, numbers in
# tests/edge/bundle/data/canary_drift_aarch64.json): all 140 artifacts of the demo's rpi4 and
# jetson-orin-nano bundles scored on x86-64 and on aarch64 (QEMU, cortex-a72). LiteRT int8 moved
# by 0; ONNX Runtime int8 by up to 0.18 in logits of magnitude ~20, i.e. 0.0081 in this unit
# (the ensembles' probabilities: 2 steps of 1/255). The tolerance is 4x that worst drift, rounded
# up: 0.04. The margin covers other aarch64 kernels (a Pi 5's dot-product ones) that QEMU's
# Cortex-A72 does not pick. One flipped weight moves a tiny trained CNN's scores by ~0.2 in
# this unit (tests/edge/bundle/test_canary.py), 5x the tolerance. fp32/fp16/dynamic measured below 2e-5.
CANARY_REL_TOL = {"fp32": 1e-3, "fp16": 3e-2, "dynamic": 5e-2, "int8": 4e-2}
# For a quantized output, a few quantization steps of difference is normal whatever the scale.
CANARY_QUANT_STEPS = 3


@dataclass(frozen=True)
class Canary:
    """The canary set: a few test images and, per artifact, the workstation's dequantized scores."""

    images: np.ndarray  # uint8 (n, H, W, C)
    labels: np.ndarray  # int64 (n,)
    scores: dict[str, np.ndarray]  # artifact_id -> float32 (n, classes)


@dataclass(frozen=True)
class CanaryResult:
    ok: bool
    top1_match: float  # fraction of canary images whose top-1 equals the host's (nan if skipped)
    max_abs_diff: float  # max |device - host| over dequantized scores (nan if skipped)
    message: str
    tolerance: float = float("nan")
    near_ties: int = 0  # images whose host top-2 gap was too small to require a top-1 match
    skipped: bool = False  # no host scores for this artifact (the workstation lacked its runtime)


def canary_tolerance(precision: str, host_scores: np.ndarray, output_spec: TensorSpec | None = None) -> float:
    """Max abs score difference allowed between this device and the workstation."""
    scale = max(1.0, float(np.max(np.abs(host_scores)))) if host_scores.size else 1.0
    tol = CANARY_REL_TOL.get(precision, max(CANARY_REL_TOL.values())) * scale
    if output_spec is not None and output_spec.quantized and output_spec.scale:
        tol = max(tol, CANARY_QUANT_STEPS * float(output_spec.scale))
    return tol



def compare_scores(host: np.ndarray, device: np.ndarray, precision: str, output_spec: TensorSpec | None = None,
                   artifact_id: str = "") -> CanaryResult:
    """Top-1 must match on every image except near-ties, and max |device - host| must be within tolerance."""
    name = artifact_id or "artifact"
    if host.shape != device.shape:
        return CanaryResult(
            False, 0.0, float("inf"), f"{name}: canary output shape {device.shape} != host {host.shape}"
        )
    if not np.all(np.isfinite(device)):
        return CanaryResult(False, 0.0, float("inf"), f"{name}: canary output has NaN or inf")
    tol = canary_tolerance(precision, host, output_spec)
    diff = float(np.max(np.abs(device - host))) if host.size else 0.0
    host_top1 = np.argmax(host, axis=1)
    dev_top1 = np.argmax(device, axis=1)
    top2 = np.sort(host, axis=1)[:, -2:] if host.shape[1] >= 2 else np.zeros((len(host), 2))
    # Each score may move by up to tol, so an order flip needs a top-2 gap under 2*tol.
    near_tie = (top2[:, 1] - top2[:, 0]) < 2 * tol
    match = host_top1 == dev_top1
    bad = np.flatnonzero(~match & ~near_tie)
    frac = float(np.mean(match)) if len(match) else 1.0
    n = len(match)
    ok = len(bad) == 0 and diff <= tol
    if ok:
        msg = f"{name}: canary ok ({int(match.sum())}/{n} top-1 match, max diff {diff:.2e} <= {tol:.2e})"
    else:
        why = []
        if len(bad):
            i = int(bad[0])
            why.append(
                f"top-1 differs on {len(bad)}/{n} images (image {i}: {int(dev_top1[i])} here, host {int(host_top1[i])})"
            )
        if diff > tol:
            why.append(f"max score diff {diff:.3g} > tolerance {tol:.3g}")
        msg = (f"{name}: canary FAILED: " + "; ".join(why) +
               " — this runtime computes something else than the workstation: check the runtime version "
               "and settings, or re-copy the bundle")
    return CanaryResult(ok, frac, diff, msg, tolerance=tol, near_ties=int(near_tie.sum()))


class CanarySource(Protocol):
    """What the canary check reads from a bundle (edge.bundle.reader.Bundle)."""

    def artifact(self, artifact_id: str) -> ArtifactRecord: ...

    def canary(self) -> Canary: ...


def check_canary(bundle: CanarySource, artifact_id: str, loaded_model: Any) -> CanaryResult:
    """Run the canary images through ``loaded_model`` and compare with the workstation's scores."""
    rec = bundle.artifact(artifact_id)
    canary = bundle.canary()
    host = canary.scores.get(artifact_id)
    if host is None:
        return CanaryResult(
            True, float("nan"), float("nan"),
            f"{artifact_id}: no host scores in {CANARY_NAME} (the workstation lacked its runtime); canary skipped",
            skipped=True,
        )
    try:
        device = scores(loaded_model, canary.images)  # one image at a time, as the device runs it
    except Exception as exc:  # runtimes raise their own types; any of them means the self-check failed
        return CanaryResult(
            False, 0.0, float("inf"), f"{artifact_id}: canary images could not be run: {type(exc).__name__}: {exc}"
        )
    return compare_scores(host, device, rec.precision, loaded_model.output_spec, artifact_id)
