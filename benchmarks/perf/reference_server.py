"""The floor for `daemon_overhead`: a minimal uvloop + httptools server running one model inline, no validation.

    python -m benchmarks.perf.reference_server BUNDLE ARTIFACT_ID SETTING --profile P [--port 0] [--spin-us N]

It is what a request must cost on this stack at the least: parse with httptools, take the
last H*W*C bytes of the body as the image, invoke, answer with a small JSON body.  It
reports its own inside time (first byte read to response ready) and the inference time in
response headers so that the benchmark compares like with like.  With ``--spin-us`` it busy-polls after each
answer as ``edgekit serve --spin-us`` does (``edge.serve.http.spin``), so that the two compare like with like
there too.  Not for serving.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httptools
import numpy as np


def serve(model, hwc: tuple[int, ...], host: str, port: int, spin_us: int = 0) -> None:
    from edge.runtime.scheduler import InputPreparer
    from edge.serve.http.listener import new_event_loop
    from edge.serve.http.spin import SpinPoll

    n = int(np.prod(hwc))
    prep = InputPreparer(model.input_spec)
    spin = SpinPoll(spin_us) if spin_us else None

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.fd = transport.get_extra_info("socket").fileno()
            if spin is not None:
                spin.watch(self.fd)
            self.p = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []
            self.t0 = 0.0

        def data_received(self, data):
            if not self.body and not self.t0:
                self.t0 = time.perf_counter()
            self.p.feed_data(data)

        def on_body(self, b):
            self.body.append(b)

        def on_message_complete(self):
            body = b"".join(self.body)
            x = np.frombuffer(body, np.uint8, n, len(body) - n).reshape(1, *hwc)
            model.set_input(prep(x))
            t1 = time.perf_counter()
            model.invoke_prepared()
            t2 = time.perf_counter()
            label = int(model.output()[0].argmax())
            out = b'{"outputs":[{"name":"class","datatype":"INT64","shape":[1],"data":[%d]}]}' % label
            inside = (time.perf_counter() - self.t0) * 1000.0
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"X-Inside-Ms: %.4f\r\nX-Inference-Ms: %.4f\r\n\r\n%s"
                         % (len(out), inside, (t2 - t1) * 1000.0, out))
            self.body = []
            self.t0 = 0.0
            if spin is not None:
                loop.call_soon(loop.call_soon, spin.spin)

        def connection_lost(self, exc):
            if spin is not None:
                spin.unwatch(self.fd)

    loop = new_event_loop()
    srv = loop.run_until_complete(loop.create_server(Proto, host, port))
    if spin is not None:
        spin.watch(srv.sockets[0].fileno())
    print(f"listening on http://{host}:{srv.sockets[0].getsockname()[1]}", flush=True)
    loop.run_forever()


def main(argv: list[str] | None = None) -> int:
    from device_profiles import load_profile
    from edge.backends import get_backend
    from edge.bundle.reader import open_bundle

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("artifact_id")
    p.add_argument("setting")
    p.add_argument("--profile", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--spin-us", type=int, default=0, help="busy-poll this long after each answer (default 0: off)")
    a = p.parse_args(argv)
    bundle = open_bundle(a.bundle, verify=True)
    prof = load_profile(a.profile or bundle.profile)
    setting = next((s for s in prof.settings if s.name == a.setting), None)
    if setting is None:
        print(f"reference_server: profile {prof.name} has no setting {a.setting}", file=sys.stderr)
        return 2
    model = get_backend(setting.backend).load(bundle.artifact_path(a.artifact_id), setting)
    hwc = tuple(int(s) for s in model.input_spec.shape[1:])
    serve(model, hwc, a.host, a.port, a.spin_us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
