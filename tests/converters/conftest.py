"""Fixtures shared by the converter tests: the Fashion-MNIST subset and the tiny model trained on it."""

from __future__ import annotations

import pytest

from tests.converters.formats import fashion_subset, tiny_model


@pytest.fixture(scope="module")
def data():
    """(x_train, y_train, x_test, y_test) of tests.converters.formats.fashion_subset()."""
    return fashion_subset()


@pytest.fixture(scope="module")
def model():
    """tests.converters.formats.tiny_model(): shared, do not modify it."""
    return tiny_model()
