"""The errors a user can act on. The `edgekit` command prints them without a traceback; any other
exception is a bug and keeps its traceback.

Each also derives from the built-in it used to be (ValueError, FileNotFoundError, RuntimeError),
so code that catches those still catches these. Stdlib only.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Something the user can fix: the message says what was wrong and what to do."""


class UsageError(EdgekitError, ValueError):
    """A bad option, value or file content."""


class MissingError(EdgekitError, FileNotFoundError):
    """A file or folder the command needs is not there."""


class StepFailed(EdgekitError, RuntimeError):
    """A step that cannot go on: a runtime, a subprocess, a lock, the environment."""
