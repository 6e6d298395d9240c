"""edge.v2.client against the real daemon on loopback: binary and JSON modes, 408/503 answers, errors."""

from __future__ import annotations

import numpy as np
import pytest

from edge.v2.client import Client
from edge.v2.client_codec import Classification, ClientError
from tests._bundle_builder import CLASS_NAMES
from tests.edge._fixtures import edge_fixture, start_daemon


@pytest.fixture(scope="module")
def fx():
    return edge_fixture()


@pytest.fixture(scope="module")
def srv(fx):
    d = start_daemon("--token", "tok")
    yield d
    d.stop()


def canary(fx, variant: str, i: int):
    with np.load(fx.bundle / "canary.npz") as z:
        return z["images"][i], z[f"scores/{variant.split('@')[0]}"][i]


@pytest.mark.parametrize("binary", [True, False])
def test_classify(srv, fx, binary):
    big = fx.variants[-1]
    image, scores = canary(fx, big, 2)
    with Client(srv.url, token="tok", binary=binary) as c:
        assert c.live() and c.ready()
        r = c.classify(image, deadline_ms=10_000, request_id="x1")
        assert isinstance(r, Classification) and r.ok and r.status == 200
        assert r.variant == big and r.deadline_met is True
        assert r.label == int(np.argmax(scores))
        assert r.class_name == CLASS_NAMES[r.label] == c.metadata()["parameters"]["labels"][r.label]
        np.testing.assert_allclose(r.scores, scores, rtol=1e-5, atol=1e-5)
        assert r.predicted_ms > 0 and r.inference_ms > 0 and r.total_ms >= r.inference_ms and r.queue_ms >= 0
        assert r.policy == "adaptive" and r.slowdown > 0
        # A batch-of-one array and a float image work too.
        assert c.classify(image[None], 10_000).ok
        assert c.classify(image.astype(np.float32), 10_000).label == r.label
        # Several requests reuse one connection.
        for _ in range(5):
            assert c.classify(image, 0.001).deadline_met is False


def test_metadata_and_errors(srv, fx):
    with Client(srv.url, token="tok") as c:
        md = c.metadata()
        assert md["name"] == "edgekit" and [v["variant"] for v in md["variants"]] == list(fx.variants)
        with pytest.raises(ValueError, match="one image"):
            c.classify(np.zeros((2, 28, 28, 1), np.uint8), 10)
        with pytest.raises(ClientError) as e:
            c.classify(np.zeros((28, 28, 3), np.uint8), 10)
        assert e.value.status == 400 and "does not match" in e.value.message
        with pytest.raises(ClientError) as e:
            c.classify(np.zeros((28, 28, 1), np.uint8), -1)
        assert e.value.status == 400
    with Client(srv.url, token="wrong") as c:
        with pytest.raises(ClientError) as e:
            c.classify(np.zeros((28, 28, 1), np.uint8), 10)
        assert e.value.status == 401
    with Client(srv.url, model="other", token="tok") as c:
        with pytest.raises(ClientError) as e:
            c.classify(np.zeros((28, 28, 1), np.uint8), 10)
        assert e.value.status == 404
    with pytest.raises(ValueError, match="http"):
        Client("https://example.org")


def test_rejected_requests_come_back_as_408_classifications(fx):
    with start_daemon("--miss", "reject") as d, Client(d.url) as c:
        r = c.classify(np.zeros((28, 28, 1), np.uint8), 0.001)
        assert r.status == 408 and not r.ok and r.label == -1 and r.variant is None
        assert not r.deadline_met and "deadline cannot be met" in r.error and r.predicted_ms > 0
        assert c.classify(np.zeros((28, 28, 1), np.uint8), 10_000).ok
        assert c.reload()["reloaded"] is True
