"""`edgekit serve` (or any server that prints "listening on URL") as a subprocess: started, waited for, stopped."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTEN_RE = re.compile(r"listening on (http://\S+)")



class Daemon:
    """`edgekit serve` as a subprocess on an ephemeral loopback port; stopped with SIGTERM."""

    def __init__(self, argv: list[str], log_path: Path, start_timeout_s: float = 180.0, preexec=None):
        self.argv = argv
        self.preexec = preexec
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._log = None
        self._reader: threading.Thread | None = None

    def start(self) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            env=env, text=True, bufsize=1, preexec_fn=self.preexec,
        )
        lines: queue.Queue = queue.Queue()
        log = self._log

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                lines.put(line)
            lines.put(None)

        self._reader = threading.Thread(target=read, name="daemon-stdout", daemon=True)
        self._reader.start()
        end = time.monotonic() + self.start_timeout_s
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            m = LISTEN_RE.search(line)
            if m:
                self.url = m.group(1).rstrip("/")
                return self.url
        try:
            rc = self.proc.wait(timeout=5)  # its stdout closed: it is exiting
        except subprocess.TimeoutExpired:
            rc = None
        self.stop()
        tail = self._tail()
        why = f"exited with status {rc}" if rc is not None else f"did not print 'listening on' within {self.start_timeout_s:g} s"
        raise RuntimeError(f"the daemon (edgekit {' '.join(self.argv[3:])}) {why}; its log {self.log_path}:\n{tail}")

    def _tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self._log is not None:
            self._log.close()
            self._log = None
        return p.returncode

    def __enter__(self) -> "Daemon":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_argv(bundle: str, table: str, policy: str, profile: str | None, miss: str, quantile: str | None) -> list[str]:
    argv = [sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--table", str(table),
            "--policy", policy, "--host", "127.0.0.1", "--port", "0", "--miss", miss]
    if profile:
        argv += ["--profile", profile]
    if quantile:
        argv += ["--quantile", quantile]
    return argv
