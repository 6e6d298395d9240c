"""The runtime backend interface and its registry (one module per runtime, imported lazily)."""

from __future__ import annotations

import abc
import importlib
from pathlib import Path
from typing import Callable

import numpy as np

from device_profiles import RuntimeSetting
from edge.artifacts.manifest import TensorSpec
from edge.core.errors import EdgekitError, UsageError


class BackendUnavailable(EdgekitError, RuntimeError):
    """The runtime a backend wraps is not installed on this machine."""


class LoadedModel(abc.ABC):
    """A model loaded into a runtime, ready to run batches of prepared input."""

    input_spec: TensorSpec
    output_spec: TensorSpec
    provider: str  # what actually ran it, e.g. "xnnpack", "CPUExecutionProvider"

    @abc.abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch already in ``input_spec.dtype``; returns the raw output tensor."""

    # A backend that implements only ``predict`` gets these; the runtimes override them so
    # that ``invoke_prepared`` times the invoke alone (no input or output copies).
    def set_input(self, batch: np.ndarray) -> None:
        """Set the input for ``invoke_prepared`` (a batch already in ``input_spec.dtype``)."""
        self._pending = batch

    def invoke_prepared(self) -> None:
        """Run on the input last set. Timing this call alone measures what the benchmark measures."""
        self._result = self.predict(self._pending)

    def output(self) -> np.ndarray:
        """The raw output of the last ``invoke_prepared``."""
        return self._result

    def close(self) -> None:
        pass

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(abc.ABC):
    """A runtime: ``name``, ``version()``, ``load()``; the model's ``predict()`` runs it."""

    name: str = ""
    format: str = ""

    @abc.abstractmethod
    def version(self) -> str: ...

    @abc.abstractmethod
    def load(self, model: bytes | str | Path, setting: RuntimeSetting) -> LoadedModel: ...


_REGISTRY: dict[str, str] = {
    "litert": "edge.backends.litert:LiteRTBackend",
    "onnxruntime": "edge.backends.onnxruntime:OnnxRuntimeBackend",
}
_CACHE: dict[str, Backend] = {}


def register_backend(name: str, target: str | Callable[[], Backend]) -> None:
    """Register ``"module:Class"`` (imported on first use) or a factory under ``name``."""
    _REGISTRY[name] = target  # type: ignore[assignment]
    _CACHE.pop(name, None)


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; a missing runtime breaks only its own backend."""
    if name in _CACHE:
        return _CACHE[name]
    if name not in _REGISTRY:
        raise UsageError(f"unknown backend '{name}'; available: {available_backends()}")
    target = _REGISTRY[name]
    if callable(target):
        backend = target()
    else:
        mod, _, cls = target.partition(":")
        backend = getattr(importlib.import_module(mod), cls)()
    _CACHE[name] = backend
    return backend
