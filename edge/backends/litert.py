"""LiteRT backend: ai_edge_litert, or tflite_runtime where that is what the board has."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from device_profiles import RuntimeSetting
from edge.artifacts.manifest import TensorSpec
from edge.backends.base import Backend, BackendUnavailable, LoadedModel
from edge.core.errors import UsageError


def _interpreter_module():
    try:
        from ai_edge_litert import interpreter as mod  # type: ignore

        return mod, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod  # type: ignore

        return mod, "tflite-runtime"
    except ImportError:
        raise BackendUnavailable(
            "LiteRT is not installed: pip install ai-edge-litert (or tflite-runtime on older boards)"
        ) from None


# LiteRT's C++ runtime prints this once per process, straight to file descriptor 2, when the first
# interpreter applies its default XNNPACK delegate (TFLITE_LOG_PROD_ONCE in the delegate's factory).
# No environment variable or Python API sets that logger's level (TF_CPP_MIN_LOG_LEVEL does not), and a
# Python logging filter never sees it, so the loads that may print it catch fd 2 and drop this one line.
DELEGATE_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_notice_seen = False


@contextlib.contextmanager
def without_delegate_notice() -> Iterator[None]:
    """Run the block with fd 2 caught in a temporary file, then write back all of it but DELEGATE_NOTICE.

    Nothing else is lost: another thread's stderr written meanwhile comes out after the block."""
    global _notice_seen
    if _notice_seen:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (a closed stderr): nothing to keep clean
        yield
        return
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                tmp.seek(0)
                caught = tmp.read()
            if DELEGATE_NOTICE in caught:
                _notice_seen = True
            rest = b"".join(line for line in caught.splitlines(keepends=True) if DELEGATE_NOTICE not in line)
            while rest:
                rest = rest[os.write(2, rest):]
    finally:
        os.close(saved)


def _spec(detail: dict) -> TensorSpec:
    shape = tuple(int(s) for s in detail.get("shape_signature", detail["shape"]))
    scale, zp = detail.get("quantization", (0.0, 0))
    dt = np.dtype(detail["dtype"]).name
    quant = scale not in (0, 0.0) and np.dtype(dt).kind in "iu"
    return TensorSpec(
        name=str(detail["name"]),
        shape=(-1,) + shape[1:],
        dtype=dt,
        scale=float(scale) if quant else None,
        zero_point=int(zp) if quant else None,
    )


def new_interpreter(**kw):
    """A LiteRT interpreter with its tensors allocated (``kw`` as ``Interpreter`` takes them), without the
    delegate notice on stderr: every interpreter the kit makes, on the board and on the workstation."""
    mod, _ = _interpreter_module()
    with without_delegate_notice():
        interp = mod.Interpreter(**kw)
        interp.allocate_tensors()
    return interp


class LiteRTModel(LoadedModel):
    def __init__(self, interp, provider: str):
        self._interp = interp
        self._in = interp.get_input_details()[0]
        self._out = interp.get_output_details()[0]
        self.input_spec = _spec(self._in)
        self.output_spec = _spec(self._out)
        self.provider = provider
        self._batch = int(self._in["shape"][0])

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [n, *self._in["shape"][1:]])
            self._interp.allocate_tensors()
            self._in = self._interp.get_input_details()[0]
            self._out = self._interp.get_output_details()[0]
            self._batch = n

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.dtype(self.input_spec.dtype):
            raise UsageError(f"input dtype {batch.dtype} does not match the model's {self.input_spec.dtype}")
        self._resize(int(batch.shape[0]))
        self._interp.set_tensor(self._in["index"], np.ascontiguousarray(batch))
        self._interp.invoke()
        return self._interp.get_tensor(self._out["index"]).copy()

    def set_input(self, batch: np.ndarray) -> None:
        self._resize(int(batch.shape[0]))
        self._interp.set_tensor(self._in["index"], np.ascontiguousarray(batch))

    def invoke_prepared(self) -> None:
        self._interp.invoke()

    def output(self) -> np.ndarray:
        return self._interp.get_tensor(self._out["index"]).copy()

    def close(self) -> None:
        self._interp = None


class LiteRTBackend(Backend):
    name = "litert"
    format = "tflite"

    def __init__(self):
        self._mod, self._dist = _interpreter_module()

    def version(self) -> str:
        try:
            from importlib.metadata import version

            return f"{self._dist} {version(self._dist)}"
        except Exception:
            return self._dist

    def load(self, model: bytes | str | Path, setting: RuntimeSetting) -> LiteRTModel:
        kw: dict = {"num_threads": int(setting.threads)}
        if isinstance(model, (bytes, bytearray)):
            kw["model_content"] = bytes(model)
        else:
            kw["model_path"] = str(model)
        provider = "xnnpack"
        if not setting.xnnpack:
            # The builtin resolver without default delegates is the documented way to turn XNNPACK off.
            kw["experimental_op_resolver_type"] = self._mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            provider = "builtin"
        try:
            interp = new_interpreter(**kw)
        except ValueError as exc:
            raise UsageError(f"LiteRT could not load the model: {exc}") from None
        if provider == "xnnpack" and not _has_delegate_nodes(interp):
            # XNNPACK took none of the graph's ops: the builtin kernels run it, and the table should say so.
            provider = "builtin"
        return LiteRTModel(interp, provider)


def _has_delegate_nodes(interp) -> bool:
    """Whether a delegate took over part of the graph (True when the interpreter cannot tell)."""
    try:
        return any(op.get("op_name") == "DELEGATE" for op in interp._get_ops_details())
    except Exception:  # a private API; older tflite-runtime builds lack it
        return True
