"""The daemon's configuration (edge/serve/config.py): built from the command line, checked, frozen."""

from __future__ import annotations

import argparse
import dataclasses
import os

import pytest

from edge.core.errors import UsageError
from edge.serve.command import add_arguments
from edge.serve.config import (
    BUFFERED_CAP_BYTES,
    MAX_TOKEN_FILE,
    MB,
    ServeConfig,
    config_from_args,
    default_max_buffered_bytes,
    memory_total_bytes,
)


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["bundle.tar.gz", "--table", "selected.json", *argv])


@pytest.fixture(autouse=True)
def no_env_token(monkeypatch):
    monkeypatch.delenv("EDGEKIT_TOKEN", raising=False)


def test_defaults_make_a_frozen_config():
    cfg = config_from_args(parse())
    assert isinstance(cfg, ServeConfig)
    assert (cfg.bundle, cfg.table, cfg.profile, cfg.host, cfg.port) == ("bundle.tar.gz", "selected.json", None,
                                                                          "127.0.0.1", 8000)
    assert cfg.model_name == "edgekit" and cfg.token is None and cfg.default_deadline_ms is None
    assert cfg.limits.max_body_bytes == 8 * MB and cfg.limits.max_connections == 512
    assert str(cfg.runtime.policy) == "adaptive" and cfg.runtime.miss == "best-effort"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_options_reach_the_runtime_and_the_transport():
    cfg = config_from_args(parse("--policy", "static:small@x", "--miss", "reject", "--queue-size", "7",
                                 "--workers", "2", "--filter", "ewma", "--max-body-mb", "0.5",
                                 "--header-timeout", "2", "--body-timeout", "3", "--idle-timeout", "4",
                                 "--max-connections", "9", "--drain-timeout", "5", "--default-deadline-ms", "40",
                                 "--access-log", "--model-name", "m", "--spin-us", "300"))
    rt = cfg.runtime
    assert (str(rt.policy), rt.miss, rt.queue_size, rt.workers, rt.slowdown_filter) == \
        ("static:small@x", "reject", 7, 2, "ewma")
    lim = cfg.limits
    assert (lim.max_body_bytes, lim.header_timeout_s, lim.body_timeout_s, lim.idle_timeout_s, lim.max_connections) \
        == (MB // 2, 2, 3, 4, 9)
    assert lim.spin_us == 300 and config_from_args(parse()).limits.spin_us == 0  # off unless asked
    assert (cfg.drain_timeout_s, cfg.default_deadline_ms, cfg.access_log, cfg.model_name) == (5.0, 40.0, True, "m")


@pytest.mark.parametrize("argv,words", [
    (("--port", "70000"), "--port must be 0..65535"),
    (("--max-body-mb", "0"), "--max-body-mb must be > 0"),
    (("--max-body-mb", "nan"), "--max-body-mb must be > 0"),
    (("--default-deadline-ms", "0"), "--default-deadline-ms must be in"),
    (("--drain-timeout", "0"), "--drain-timeout must be in"),
    (("--inject-delay-ms", "-1"), "--inject-delay-ms must be >= 0"),
    (("--max-buffered-mb", "0"), "--max-buffered-mb must be > 0"),
    (("--max-buffered-mb", "inf"), "--max-buffered-mb must be > 0"),
    (("--max-buffered-mb", "4"), "--max-buffered-mb (4) must be at least --max-body-mb (8)"),
    (("--policy", "fastest-please"), "unknown policy"),
    (("--queue-size", "0"), "queue size must be at least 1"),
    (("--spin-us", "-1"), "--spin-us must be 0 (off) to 100000 microseconds, got -1"),
    (("--spin-us", "200000"), "--spin-us must be 0 (off) to 100000 microseconds"),
])
def test_bad_options_say_which(argv, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        config_from_args(parse(*argv))


# ----------------------------------------------------------------------------- the buffered-bytes cap


def test_the_buffered_cap_defaults_to_an_eighth_of_memory_within_bounds():
    body = 8 * MB
    assert default_max_buffered_bytes(body, memory_bytes=1024 * MB) == 128 * MB  # a 1 GiB board: 1/8
    assert default_max_buffered_bytes(body, memory_bytes=64 * 1024 * MB) == BUFFERED_CAP_BYTES == 512 * MB
    assert default_max_buffered_bytes(body, memory_bytes=64 * MB) == 2 * body  # never below two bodies
    assert default_max_buffered_bytes(400 * MB, memory_bytes=64 * 1024 * MB) == 800 * MB  # two bodies win over 512
    assert memory_total_bytes() > 0
    assert config_from_args(parse()).limits.max_buffered_bytes == default_max_buffered_bytes(8 * MB)


def test_the_buffered_cap_can_be_set():
    assert config_from_args(parse("--max-buffered-mb", "64")).limits.max_buffered_bytes == 64 * MB
    assert config_from_args(parse("--max-buffered-mb", "1", "--max-body-mb", "1")).limits.max_buffered_bytes == MB


# ----------------------------------------------------------------------------- the token


def test_token_from_a_file_the_environment_or_the_command_line(tmp_path, monkeypatch, capsys):
    tok = tmp_path / "token"
    tok.write_text("  file-token\n")
    assert config_from_args(parse("--token-file", str(tok))).token == "file-token"
    monkeypatch.setenv("EDGEKIT_TOKEN", "env-token")
    assert config_from_args(parse()).token == "env-token"
    assert config_from_args(parse("--token-file", str(tok))).token == "file-token"
    assert config_from_args(parse("--token", "cli-token")).token == "cli-token"
    assert "--token shows in 'ps'" in capsys.readouterr().err


def test_binding_beyond_loopback_without_a_token_warns(capsys):
    config_from_args(parse("--host", "0.0.0.0"))
    assert "binding 0.0.0.0 without a token" in capsys.readouterr().err
    config_from_args(parse("--host", "::1"))
    assert "without a token" not in capsys.readouterr().err


def test_bad_token_files_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_TOKEN_FILE + 1))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, words in ((tmp_path / "missing", "No such file"), (empty, "is empty"), (big, "over 4096 bytes"),
                        (tmp_path, "not a regular file"), (fifo, "not a regular file")):
        with pytest.raises(UsageError, match=words):
            config_from_args(parse("--token-file", str(path)))


def test_on_drift_and_its_margin_reach_the_runtime():
    cfg = config_from_args(parse())
    assert cfg.runtime.on_drift == "drop" and cfg.runtime.drift_margin == 0.05
    cfg = config_from_args(parse("--on-drift", "serve", "--drift-margin", "0.1"))
    assert cfg.runtime.on_drift == "serve" and cfg.runtime.drift_margin == 0.1
    with pytest.raises(UsageError, match="drift margin"):
        config_from_args(parse("--drift-margin", "2"))
