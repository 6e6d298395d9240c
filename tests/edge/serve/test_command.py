"""`edgekit serve` (edge/serve/command.py): its flags, options checked before anything opens, and a token file."""

from __future__ import annotations

import subprocess

import pytest

from edge.core.errors import UsageError
from edgekit.cli import build_parser
from tests.edge._daemon_http import jcall
from tests.edge._fixtures import PYTHON, REPO, start_daemon


def test_help_lists_the_flags_and_the_buffered_default():
    out = subprocess.run([PYTHON, "-m", "edgekit.cli", "serve", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for flag in ("--table", "--policy", "--miss", "--token-file", "--max-body-mb", "--max-buffered-mb",
                 "--max-connections", "--drain-timeout", "--workers", "--inject-delay-ms"):
        assert flag in text, flag
    assert "1/8 of the board's memory, at most 512 MiB and at least 2 x --max-body-mb" in text


def test_bad_options_stop_it_before_the_bundle_is_opened(tmp_path):
    """The configuration is checked first: a bad flag is named even though the bundle does not exist."""
    from edge.serve.command import run

    args = build_parser(only="serve").parse_args(["serve", str(tmp_path / "missing-bundle"), "--table",
                                                  str(tmp_path / "missing.json"), "--max-buffered-mb", "1"])
    with pytest.raises(UsageError, match="--max-buffered-mb"):
        run(args)


def test_token_from_a_file_does_not_show_in_ps(fx, tmp_path):
    tok = tmp_path / "token"
    tok.write_text("file-token-42\n")
    with start_daemon("--token-file", str(tok)) as d:
        with open(f"/proc/{d.proc.pid}/cmdline", "rb") as fh:
            assert b"file-token-42" not in fh.read()
        assert jcall(d, "GET", "/v2/models/edgekit")[0] == 401
        assert jcall(d, "GET", "/v2/models/edgekit", headers={"Authorization": "Bearer file-token-42"})[0] == 200
    with pytest.raises(RuntimeError, match="token-file"):
        start_daemon("--token-file", str(tmp_path / "missing"))
