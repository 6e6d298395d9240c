"""Fixtures shared by the converter tests: the Fashion-MNIST subset and the tiny model trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.converters.convert.exporters import fashion_subset, tiny_model
from tests.converters.data.test_datasets import write_idx_set
from tests.converters.train.test_sweep import TINY_FAMILY


@pytest.fixture(scope="module")
def data():
    """(x_train, y_train, x_test, y_test) of tests.converters.convert.exporters.fashion_subset()."""
    return fashion_subset()


@pytest.fixture(scope="module")
def model():
    """tests.converters.convert.exporters.tiny_model(): shared, do not modify it."""
    return tiny_model()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST-format dataset (300 train, 60 test images) written as gzipped IDX files."""
    d = tmp_path_factory.mktemp("fm")
    write_idx_set(d, n_train=300, n_test=60, gz=True)
    return d


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    """tests.converters.train.test_sweep.TINY_FAMILY as a family file."""
    p = tmp_path_factory.mktemp("fam") / "tiny.toml"
    p.write_text(TINY_FAMILY)
    return p
