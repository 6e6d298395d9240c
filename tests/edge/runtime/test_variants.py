"""Tests for edge/runtime/variants.py: the predictive test at start, and what --on-drift does with a drifted variant.

The bundle gets a predictive test whose regressors are constant (tests/edge/_bundles.add_predictive_test)."""

from __future__ import annotations

import pytest

from edge.bundle.predictive import PREDICTIVE_NAME
from edge.bundle.reader import BundleError
from edge.core.errors import UsageError
from edge.runtime.classifier import AdaptiveClassifier, RuntimeOptions
from tests.edge._bundles import add_predictive_test
from tests.edge._fixtures import copy_bundle, edge_fixture


@pytest.fixture(scope="module")
def fx():
    return edge_fixture()


def with_test(fx, dest, predicted: dict[str, float]):
    return add_predictive_test(copy_bundle(fx, dest), predicted)


def _aid(variant: str) -> str:
    return variant.split("@")[0]


def test_each_variant_reports_its_predicted_accuracy(fx, tmp_path):
    folder = with_test(fx, tmp_path / "b", {})
    with AdaptiveClassifier.open(str(folder), str(fx.selected_table), str(fx.profile)) as c:
        status = c.variants_status()
        assert all(s["ready"] and s["predicted_accuracy"] == pytest.approx(0.99) and not s["drift"] for s in status)
        assert all("predicted accuracy 0.990" in i.reason for i in c.variant_report())


def test_a_drifted_variant_is_dropped_or_served_as_on_drift_says(fx, tmp_path):
    top = fx.variants[-1]
    folder = with_test(fx, tmp_path / "b", {_aid(top): 0.05})
    with AdaptiveClassifier.open(str(folder), str(fx.selected_table), str(fx.profile)) as c:
        assert top not in c.serving_variants and len(c.serving_variants) == len(fx.variants) - 1
        info = {i.variant: i for i in c.variant_report()}[top]
        assert info.drift and not info.ready and "DRIFT" in info.reason and "--on-drift drop" in info.reason
    warned: list[str] = []
    with AdaptiveClassifier.open(str(folder), str(fx.selected_table), str(fx.profile),
                                 options=RuntimeOptions(on_drift="serve"), log=warned.append) as c:
        assert top in c.serving_variants
        assert {s["variant"]: s for s in c.variants_status()}[top]["drift"] is True
        assert any("DRIFT" in w and "--on-drift serve" in w for w in warned)
    # a wider margin tolerates it
    with AdaptiveClassifier.open(str(folder), str(fx.selected_table), str(fx.profile),
                                 options=RuntimeOptions(drift_margin=1.0)) as c:
        assert top in c.serving_variants


def test_when_every_variant_drifts_nothing_is_served(fx, tmp_path):
    folder = with_test(fx, tmp_path / "b", {_aid(v): 0.0 for v in fx.variants})
    with pytest.raises(UsageError, match="no variant .* could be loaded"):
        AdaptiveClassifier.open(str(folder), str(fx.selected_table), str(fx.profile))


def test_a_bundle_whose_test_file_is_missing_is_refused_at_start(fx, tmp_path):
    folder = with_test(fx, tmp_path / "b", {})
    (folder / PREDICTIVE_NAME).unlink()
    with pytest.raises(BundleError, match=f"missing file {PREDICTIVE_NAME}"):
        AdaptiveClassifier.open(str(folder), str(fx.selected_table), str(fx.profile))


def test_drift_options_are_checked():
    with pytest.raises(UsageError, match="unknown --on-drift 'ignore'"):
        RuntimeOptions(on_drift="ignore")
    with pytest.raises(UsageError, match="drift margin"):
        RuntimeOptions(drift_margin=-0.1)
