"""The daemon's metrics (edge/serve/metrics.py): the gauges read when scraped, transport events, the exposition."""

from __future__ import annotations

from edge.serve.metrics import ServerMetrics


def _samples(m: ServerMetrics) -> dict[str, float]:
    out = {}
    for line in m.render().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_gauges_read_their_sources_when_scraped():
    now = {"depth": 2, "conns": 5, "buffered": 1234}
    m = ServerMetrics(queue_depth=lambda: now["depth"], slowdown=lambda: 1.5, connections=lambda: now["conns"],
                      buffered_bytes=lambda: now["buffered"])
    s = _samples(m)
    assert s["edgekit_queue_depth"] == 2 and s["edgekit_slowdown_factor"] == 1.5
    assert s["edgekit_open_connections"] == 5 and s["edgekit_buffered_request_bytes"] == 1234
    now.update(buffered=0, conns=1)
    s = _samples(m)
    assert s["edgekit_buffered_request_bytes"] == 0 and s["edgekit_open_connections"] == 1


def test_transport_events_count_as_shed_or_invalid():
    m = ServerMetrics()
    m.transport_event("shed", "idle")
    m.transport_event("shed", "idle")
    m.transport_event("shed", "buffered_bytes")
    m.transport_event("refused", "400")
    s = _samples(m)
    assert s['edgekit_connections_shed_total{reason="idle"}'] == 2
    assert s['edgekit_connections_shed_total{reason="buffered_bytes"}'] == 1
    assert m.value("invalid") == 1 and s['edgekit_requests_total{outcome="invalid"}'] == 1
    assert s["edgekit_buffered_request_bytes"] == 0  # no transport attached: nothing held
