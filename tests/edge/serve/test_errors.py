"""The one table of refusals (edge/serve/errors.py): each domain error's status, headers, body and counted outcome."""

from __future__ import annotations

import inspect
import json

import pytest

from edge.runtime.scheduler import QueueFull, ShuttingDown
from edge.serve import errors
from edge.serve.errors import (
    DeadlineRejected,
    Draining,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ReloadFailed,
    ReloadRunning,
    ServeError,
    Unauthorized,
    VersionNotFound,
    refusal,
)
from edge.v2.errors import ProtocolError, encode_error

CASES = [
    (Unauthorized(), 401, "unauthorized", {"WWW-Authenticate": 'Bearer realm="edgekit"'}, "bearer token"),
    (ModelNotFound("resnet", "edgekit"), 404, "invalid", {}, "unknown model 'resnet'; this daemon serves 'edgekit'"),
    (VersionNotFound("7", "edgekit", "1"), 404, "invalid", {}, "unknown version '7' of model 'edgekit'"),
    (InvalidInput("'table' must be a path string"), 400, "invalid", {}, "'table' must be a path string"),
    (ReloadRunning(), 409, "invalid", {"Retry-After": "1"}, "a reload is already running"),
    (ReloadFailed("reload failed, still serving x"), 400, None, {}, "still serving"),
    (Draining(), 503, "shutting_down", {"Retry-After": "1"}, "the daemon is shutting down; retry later"),
    (ShuttingDown("the daemon is shutting down; retry against its replacement"), 503, "shutting_down",
     {"Retry-After": "1"}, "retry against its replacement"),
    (QueueFull("queue full (3 waiting); retry later"), 503, "queue_full", {"Retry-After": "1"},
     "queue full (3 waiting); retry later"),
    (DeadlineRejected("deadline cannot be met", {"variant": None}), 408, "rejected", {}, "deadline cannot be met"),
    (InferenceFailed("inference failed: boom"), 500, "error", {}, "inference failed: boom"),
]


@pytest.mark.parametrize("exc,status,outcome,headers,words", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_domain_error_has_its_status_headers_and_outcome(exc, status, outcome, headers, words):
    r = refusal(exc)
    assert r.error.status == status and r.outcome == outcome and not r.close
    assert r.error.headers == headers
    assert words in r.error.message


def test_every_domain_error_is_in_the_table():
    """A new ServeError without a rule would be answered as a bug (500); this catches it when it is added."""
    defined = {obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, ServeError) and obj is not ServeError}
    assert defined <= set(errors.RULES), defined - set(errors.RULES)
    assert {type(c[0]) for c in CASES} == set(errors.RULES)


def test_bodies_carry_what_the_answer_needs():
    params = {"variant": None, "deadline_met": False}
    doc = json.loads(encode_error(*_message_body(DeadlineRejected("deadline cannot be met: 1 ms left", params))))
    assert doc == {"error": "deadline cannot be met: 1 ms left", "parameters": params}
    doc = json.loads(encode_error(*_message_body(ReloadFailed("reload failed, still serving t.json"))))
    assert doc == {"reloaded": False, "error": "reload failed, still serving t.json"}
    assert refusal(QueueFull("full")).error.body is None


def _message_body(exc):
    e = refusal(exc).error
    return e.message, e.body


def test_headers_are_a_copy_per_refusal():
    a, b = refusal(Draining()), refusal(Draining())
    a.error.headers["X-Extra"] = "1"
    assert "X-Extra" not in b.error.headers and "X-Extra" not in errors.RETRY_AFTER


@pytest.mark.parametrize("status,outcome", [(400, "invalid"), (411, "invalid"), (413, "invalid"), (415, "invalid"),
                                            (401, None), (408, None), (503, None)])
def test_protocol_errors_pass_through_and_count_as_invalid_unless_counted_elsewhere(status, outcome):
    e = ProtocolError(status, "what was wrong", {"X-A": "b"})
    r = refusal(e)
    assert r.error is e and r.outcome == outcome and not r.close


def test_anything_else_is_a_bug_answered_500_and_the_connection_closed():
    r = refusal(KeyError("variant"))
    assert r.error.status == 500 and r.outcome == "error" and r.close
    assert r.error.message == "internal error: KeyError: 'variant'"
