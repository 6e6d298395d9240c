"""Fixtures shared by the converter tests: a Fashion-MNIST subset, a tiny model trained on it, a run with ensembles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.converters._ensembles import FAMILY, sweep_family
from tests.converters._fixtures import fashion_subset, tiny_model
from tests.converters.data.test_datasets import write_idx_set
from tests.converters.train.test_sweep import TINY_FAMILY


@pytest.fixture(scope="module")
def data():
    """(x_train, y_train, x_test, y_test) of tests.converters._fixtures.fashion_subset()."""
    return fashion_subset()


@pytest.fixture(scope="module")
def model():
    """tests.converters._fixtures.tiny_model(): shared, do not modify it."""
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


# Once per session: the ensemble tests of train/ and convert/ both read it (copying it before any change),
# and training it takes tens of seconds.
@pytest.fixture(scope="session")
def ensemble_run(tmp_path_factory):
    """(family path, data dir or None for the real Fashion-MNIST, trained run, sweep results, output)."""
    return sweep_family(tmp_path_factory.mktemp("ens"), FAMILY, "tinyens")
