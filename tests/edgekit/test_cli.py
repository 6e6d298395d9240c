"""The `edgekit` command: errors the user can act on print a message; a bug keeps its traceback."""

from __future__ import annotations

import importlib.machinery
import types

import pytest

import edgekit.cli as cli
from edge.core.errors import EdgekitError, MissingError, StepFailed, UsageError


def _fake_command(monkeypatch, exc: BaseException):
    mod = types.ModuleType("fake_cmd")
    mod.__spec__ = importlib.machinery.ModuleSpec("fake_cmd", None)
    mod.add_arguments = lambda p: None

    def run(args):
        raise exc

    mod.run = run
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_cmd", "a test command"))
    monkeypatch.setitem(__import__("sys").modules, "fake_cmd", mod)


@pytest.mark.parametrize("exc", [UsageError("--x must be positive; pass --x 3"), MissingError("no run.json in r/"),
                                 StepFailed("the daemon did not start")])
def test_user_errors_print_a_message_and_exit_2(monkeypatch, capsys, exc):
    _fake_command(monkeypatch, exc)
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"edgekit fake: error: {exc}" and "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    _fake_command(monkeypatch, RuntimeError("a genuine bug"))
    with pytest.raises(RuntimeError, match="a genuine bug"):
        cli.main(["fake"])


def test_user_errors_are_still_their_builtin_kinds():
    assert issubclass(UsageError, ValueError) and issubclass(MissingError, FileNotFoundError)
    assert issubclass(StepFailed, RuntimeError) and issubclass(UsageError, EdgekitError)
    from device_profiles import ProfileError
    from edge.bundle.reader import BundleError
    from edge.tables.table import TableError

    assert all(issubclass(e, EdgekitError) for e in (BundleError, TableError, ProfileError))
