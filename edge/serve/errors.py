"""The daemon's domain errors, and the one table that maps each (and the runtime's) to a v2 refusal and a metric.

The data plane (``edge.serve.dataplane``) and the runtime raise what went wrong in their own
terms: an unknown model, a full queue, a daemon that is draining, a reload already running.
Only here does that become an HTTP status, the extra headers and body of the answer
(``edge.v2.errors.ProtocolError``, the refusal the transport and the codec raise too) and the
``edgekit_requests_total`` outcome it is counted as, as KServe's ``errors.py`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.runtime.scheduler import QueueFull, ShuttingDown
from edge.v2.errors import ProtocolError

RETRY_AFTER = {"Retry-After": "1"}  # seconds: the refusals that pass on their own say when to try again
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edgekit"'}


class ServeError(Exception):
    """Something the data plane refuses; ``message`` says what and what to do."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unauthorized(ServeError):
    def __init__(self) -> None:
        super().__init__("missing or wrong bearer token (Authorization: Bearer <token>)")


class ModelNotFound(ServeError):
    def __init__(self, name: str, served: str):
        super().__init__(f"unknown model '{name[:100]}'; this daemon serves '{served}'")


class VersionNotFound(ServeError):
    def __init__(self, version: str, model: str, available: str):
        super().__init__(f"unknown version '{version[:40]}' of model '{model[:100]}'; available: ['{available}']")


class InvalidInput(ServeError):
    """A request whose content the data plane cannot use (the codec raises its own ProtocolError)."""


class Draining(ServeError):
    def __init__(self) -> None:
        super().__init__("the daemon is shutting down; retry later")


class ReloadRunning(ServeError):
    def __init__(self) -> None:
        super().__init__("a reload is already running; retry when it ends")


class ReloadFailed(ServeError):
    """The table was refused; the old one keeps serving (``message`` says so, and why)."""


class DeadlineRejected(ServeError):
    """``--miss reject`` and no variant can meet the deadline; ``parameters`` are the answer's timing."""

    def __init__(self, message: str, parameters: dict):
        super().__init__(message)
        self.parameters = parameters


class InferenceFailed(ServeError):
    """The runtime failed on this request (``message`` says why); the daemon keeps serving."""


@dataclass(frozen=True)
class Refusal:
    """How a refused request is answered, and the ``edgekit_requests_total`` outcome it counts as (None: none)."""

    error: ProtocolError
    outcome: str | None
    close: bool = False  # close the connection after the answer (a bug: the stream is not trusted)


@dataclass(frozen=True)
class _Rule:
    status: int
    outcome: str | None
    headers: dict[str, str] | None = None


# The one place a domain error becomes a status. Looked up along the error's MRO.
RULES: dict[type[Exception], _Rule] = {
    Unauthorized: _Rule(401, "unauthorized", BEARER_CHALLENGE),
    ModelNotFound: _Rule(404, "invalid"),
    VersionNotFound: _Rule(404, "invalid"),
    InvalidInput: _Rule(400, "invalid"),
    ReloadRunning: _Rule(409, "invalid", RETRY_AFTER),
    ReloadFailed: _Rule(400, None),
    Draining: _Rule(503, "shutting_down", RETRY_AFTER),
    ShuttingDown: _Rule(503, "shutting_down", RETRY_AFTER),
    QueueFull: _Rule(503, "queue_full", RETRY_AFTER),
    DeadlineRejected: _Rule(408, "rejected"),
    InferenceFailed: _Rule(500, "error"),
}

# A ProtocolError (the codec's, the transport's) with one of these statuses is not a malformed
# request: the codes that the rules above count under outcomes of their own. Any other is "invalid".
_COUNTED_ELSEWHERE = (401, 408, 503)


def _rule(exc: BaseException) -> _Rule | None:
    for cls in type(exc).__mro__:
        rule = RULES.get(cls)  # type: ignore[call-overload]
        if rule is not None:
            return rule
    return None


def _body(exc: BaseException) -> dict | None:
    if isinstance(exc, DeadlineRejected):
        return {"error": exc.message, "parameters": exc.parameters}
    if isinstance(exc, ReloadFailed):
        return {"reloaded": False}
    return None


def refusal(exc: BaseException) -> Refusal:
    """The answer to a request refused with ``exc``: a domain error, the runtime's, the codec's or a bug."""
    if isinstance(exc, ProtocolError):
        return Refusal(exc, None if exc.status in _COUNTED_ELSEWHERE else "invalid")
    rule = _rule(exc)
    if rule is None:  # a bug: say what it was, count it, and do not trust the stream any more
        return Refusal(ProtocolError(500, f"internal error: {type(exc).__name__}: {exc}"), "error", close=True)
    headers = dict(rule.headers) if rule.headers else None
    return Refusal(ProtocolError(rule.status, str(exc), headers, _body(exc)), rule.outcome)
