"""Fixtures shared by the edge tests: one real bundle folder per session (bundle, archive, canary, verify), and
the daemon fixture with a daemon on it (test_app, test_server; files with another daemon define their own)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.edge._bundles import build_desktop_bundle
from tests.edge._fixtures import edge_fixture, start_daemon


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> Path:
    """A desktop-cpu bundle (tflite + onnx) as a folder, built once for the session."""
    return build_desktop_bundle(tmp_path_factory.mktemp("edge-bundle"))


@pytest.fixture
def folder(bundles, tmp_path) -> Path:
    """A copy of ``bundles`` the test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(bundles, dst)
    return dst


@pytest.fixture(scope="module")
def fx():
    """The edge fixture: a tiny bundle, its latency and selected tables, a test profile."""
    return edge_fixture()


@pytest.fixture(scope="module")
def srv(fx):
    """A daemon serving the fixture with the default options, shared by a module."""
    d = start_daemon()
    yield d
    d.stop()
