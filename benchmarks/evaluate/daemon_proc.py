"""`edgekit serve` (or any server that prints "listening on URL") as a subprocess: started, waited for, stopped.

The one launcher of the daemon: the policy comparison, the overhead and soak benchmarks and
the daemon tests (``tests/edge/_fixtures.py``) all start it with :class:`Daemon`.
"""

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
from typing import IO, Callable, Iterable, Mapping

from edge.core.errors import StepFailed
from edge.core.spawn import same_code_env

LISTEN_RE = re.compile(r"listening on (http://\S+)")
TAIL_LINES = 30  # of its output, in the error when it does not start


def _preexec(cpus: Iterable[int] | None, nofile: int | None) -> Callable[[], None] | None:
    """What the child runs before exec: pin it to ``cpus``, cap its open files at ``nofile``."""
    cpus = set(cpus) if cpus else None
    if cpus is None and nofile is None:
        return None
    if nofile is not None:
        import resource  # Unix only, like the rest of the launcher; imported before the fork

    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return setup


class Daemon:
    """A server subprocess on an ephemeral loopback port; stopped with SIGTERM (killed if it does not stop).

    Its stdout and stderr go line by line to ``log_path`` when given, else into the ``stdout``
    and ``stderr`` lists; ``log`` returns them either way. ``cpus`` pins it to those cores;
    ``nofile`` caps its open files (soft and hard, as a board's ``ulimit -n`` would); ``env``
    entries override this process's environment, a None value removing the variable.
    """

    def __init__(
        self,
        argv: list[str],
        log_path: Path | None = None,
        start_timeout_s: float = 180.0,
        *,
        cpus: Iterable[int] | None = None,
        nofile: int | None = None,
        env: Mapping[str, str | None] | None = None,
        cwd: str | Path | None = None,
    ):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path) if log_path is not None else None
        self.start_timeout_s = start_timeout_s
        self.cpus = cpus
        self.nofile = nofile
        self.env = dict(env or {})
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._log: IO[str] | None = None
        self._lock = threading.Lock()
        self._lines: queue.Queue = queue.Queue()
        self._waiting = True  # stdout lines are queued for start() until it has seen the URL
        self._readers: list[threading.Thread] = []

    # ------------------------------------------------------------------ start

    def start(self) -> str:
        """Start it and wait until it prints its URL; returns the URL (at once if already started)."""
        if self.proc is not None:
            return self.url
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "w", encoding="utf-8")
        env = same_code_env(dict(os.environ, PYTHONUNBUFFERED="1"))  # this code, whatever the working folder
        for k, v in self.env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        self.proc = subprocess.Popen(
            self.argv, cwd=None if self.cwd is None else str(self.cwd), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1,
            preexec_fn=_preexec(self.cpus, self.nofile),
        )
        for stream, sink, lines in ((self.proc.stdout, self.stdout, True), (self.proc.stderr, self.stderr, False)):
            t = threading.Thread(target=self._pump, args=(stream, sink, lines), name="daemon-output", daemon=True)
            t.start()
            self._readers.append(t)
        end = time.monotonic() + self.start_timeout_s
        while time.monotonic() < end:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line is None:
                break
            m = LISTEN_RE.search(line)
            if m:
                self.url = m.group(1).rstrip("/")
                self._waiting = False
                return self.url
        self._waiting = False
        try:
            rc = self.proc.wait(timeout=5)  # its stdout closed: it is exiting
        except subprocess.TimeoutExpired:
            rc = None
        self.stop()
        why = (f"exited with status {rc}" if rc is not None
               else f"did not print 'listening on' within {self.start_timeout_s:g} s")
        where = f"its log {self.log_path}" if self.log_path is not None else "its output"
        raise StepFailed(f"the daemon did not start (rc={rc}): {self._command()} {why}; {where}:\n{self._tail()}")

    def _pump(self, stream, sink: list[str], lines: bool) -> None:
        for line in stream:
            with self._lock:
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                else:
                    sink.append(line)
            if lines and self._waiting:
                self._lines.put(line)
        if lines:
            self._lines.put(None)

    def _command(self) -> str:
        return " ".join([Path(self.argv[0]).name, *self.argv[1:]])

    def _tail(self, n: int = TAIL_LINES) -> str:
        return "\n".join(self.log.splitlines()[-n:])

    # ------------------------------------------------------------------ while it runs

    @property
    def log(self) -> str:
        """Everything it has printed so far (stdout, then stderr, when kept in memory)."""
        if self.log_path is None:
            with self._lock:
                return "".join(self.stdout) + "".join(self.stderr)
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def signal(self, sig: int) -> None:
        assert self.proc is not None, "start() it first"
        self.proc.send_signal(sig)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns its exit status (None if never started)."""
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
        for t in self._readers:
            t.join(timeout=2)
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None
        return p.returncode

    def __enter__(self) -> "Daemon":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_argv(bundle: str, table: str, policy: str, profile: str | None, miss: str, quantile: str | None,
               spin_us: int = 0) -> list[str]:
    """``edgekit serve`` on an ephemeral loopback port with this interpreter (busy polling ``spin_us``, if any)."""
    argv = [sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--table", str(table),
            "--policy", policy, "--host", "127.0.0.1", "--port", "0", "--miss", miss]
    if profile:
        argv += ["--profile", profile]
    if quantile:
        argv += ["--quantile", quantile]
    if spin_us:
        argv += ["--spin-us", str(int(spin_us))]
    return argv
