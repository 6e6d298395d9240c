"""Runtime backends (LiteRT, ONNX Runtime) behind one small interface, registered by name."""

from edge.backends.base import (
    Backend,
    BackendUnavailable,
    LoadedModel,
    available_backends,
    get_backend,
    register_backend,
)

__all__ = [
    "Backend",
    "BackendUnavailable",
    "LoadedModel",
    "available_backends",
    "get_backend",
    "register_backend",
]
