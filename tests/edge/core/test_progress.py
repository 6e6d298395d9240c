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


def test_a_bar_over_estimated_work_says_what_each_number_counts(capsys):
    """Training advances its bar by estimated cost and counts models in its description: the text says which is
    which ('1 of 4 models done, 13% of the estimated work'), not '1/4 models 13%'."""
    from edge.core.progress import WORK_FORMAT, done_text

    bar = progress_bar(8.0, enabled=True, unit="", desc="", bar_format=WORK_FORMAT)
    bar.update(1.0)
    bar.set_description_str(done_text(1, 4, "models"), refresh=True)
    bar.close()
    assert "1 of 4 models done, 12% of the estimated work |" in capsys.readouterr().err
