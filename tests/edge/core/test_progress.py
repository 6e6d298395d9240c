"""Tests for edge.core.progress: messages reach stdout with or without a bar."""

from __future__ import annotations

import io

from edge.core.progress import Bar, NoBar, progress_bar


def test_disabled_bar_prints_messages_only(capsys):
    bar = progress_bar(3, enabled=False)
    assert isinstance(bar, NoBar)
    bar.update(1)
    bar.set_postfix_str("x")
    bar.write("hello")
    bar.close()
    assert capsys.readouterr().out == "hello\n"


def test_bar_counts_on_stderr_and_writes_messages_above_it(capsys):
    out = io.StringIO()
    bar = progress_bar(2, enabled=True, unit="model", desc="train")
    assert isinstance(bar, Bar)
    bar.write("done a", file=out)
    bar.update(1)
    bar.set_postfix_str("a")
    bar.close()
    assert out.getvalue() == "done a\n"
    assert "train" in capsys.readouterr().err
