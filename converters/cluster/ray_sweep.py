"""`--ray`: run a sweep's tasks (one spec to train, one model to convert) on a local Ray or an existing cluster.

How results reach the run folder: by value, never through a shared filesystem. The driver (the
`edgekit train` / `edgekit convert` process) sends each task its inputs: the data splits once,
through Ray's object store, and for convert the bytes of the model's model.keras. A task works in
a temporary folder on its own node and returns the files it made as bytes; the driver writes them
into the run folder atomically (temp file + rename; a model's train.json last) and alone updates
manifest.json. Workers never open the run folder, so the run folder contract and resume are the
same as without Ray, and a cluster needs no shared filesystem: only edgekit with its `train` and
`cluster` extras installed on every node, at the driver's version.

Failures: a task whose worker process dies (killed, out of memory, node lost) is retried up to
``RayOptions.max_retries`` times; after that, or when the task raises, it is reported as failed and
the sweep goes on. Nothing of a failed task reaches the run folder, so a rerun retries it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from converters.cluster.tensorflow_import import import_tensorflow_quietly
from edge.core.errors import EdgekitError, StepFailed, UsageError

INSTALL_HINT = "pip install 'edgekit[cluster]' (from a checkout: pip install -e '.[cluster]')"
LOCAL = "local"  # what --ray means without an address: a local Ray started for the run
_DEFAULT_PORTS = {"": 6379, "ray://": 10001}  # a head's GCS port; the Ray Client server's port
# Test hook: a task for KEY kills its own worker while ``$EDGEKIT_RAY_TEST_CRASH_DIR/KEY.crash`` holds
# a count above 0 (each crash decrements it), as the kernel's OOM killer would. Workers inherit the
# variable from the process that starts Ray.
CRASH_ENV = "EDGEKIT_RAY_TEST_CRASH_DIR"


class RayNotInstalled(EdgekitError, RuntimeError):
    """``--ray`` was asked for but Ray is not installed (a RuntimeError: the CLI prints it without a traceback)."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how a sweep's tasks run on Ray."""

    address: str | None = None  # None: a local Ray started for the run; else "auto", "HOST[:PORT]" or "ray://HOST[:PORT]"
    cpus_per_task: float = 1.0  # Ray resources per task; TensorFlow's thread pools in a task get as many threads
    gpus_per_task: float = 0.0
    max_retries: int = 2  # retries of a task whose worker died; exceptions raised by the task are not retried
    local_cpus: int | None = None  # CPUs of a local Ray (default: those this process may run on)
    connect_timeout_s: float = 30.0  # bound on reaching an existing cluster (ray.init can otherwise hang)

    def __post_init__(self) -> None:
        if self.address is not None and not self.address.strip():
            raise UsageError("--ray ADDRESS is empty; give a cluster address (HOST:PORT, ray://HOST:PORT, auto) "
                             "or no address for a local Ray")
        if not self.cpus_per_task > 0:
            raise UsageError(f"--cpus-per-task must be > 0, got {self.cpus_per_task}")
        if not self.gpus_per_task >= 0:
            raise UsageError(f"--gpus-per-task must be >= 0, got {self.gpus_per_task}")
        if self.max_retries < 0:
            raise UsageError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise UsageError(f"local_cpus must be >= 1, got {self.local_cpus}")
        if not self.connect_timeout_s > 0:
            raise UsageError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")

    @property
    def threads(self) -> int:
        """TensorFlow intra- and inter-op threads per task: the task's whole CPUs, at least one."""
        return max(1, int(self.cpus_per_task))

    def describe(self) -> str:
        gpus = f", {self.gpus_per_task:g} GPU" if self.gpus_per_task else ""
        return (f"{self.cpus_per_task:g} CPU{gpus} and {self.threads} TensorFlow thread(s) per task, "
                f"up to {self.max_retries} retries of a task whose worker dies")


# ---------------------------------------------------------------------------------------------- CLI

def _number(minimum: float, strict: bool, kind=float):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v < minimum or (strict and v == minimum):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {minimum:g}, got {text}")
        return v
    return parse


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The --ray flags of a sweep command; ``what`` names its tasks ("spec", "model")."""
    g = parser.add_argument_group(f"Ray (needs the cluster extra: {INSTALL_HINT})")
    g.add_argument(
        "--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
        help=f"run each {what} as a task on Ray: on a local Ray started for this run (no ADDRESS, or 'local'), or "
             "on an existing cluster (HOST:PORT of its head, ray://HOST:PORT, or 'auto'); put it after RUN. "
             "Tasks get their inputs from this process and return their files, which this process writes into "
             "RUN, so a cluster needs no shared filesystem, only edgekit installed on every node")
    g.add_argument("--cpus-per-task", type=_number(0, strict=True), default=None, metavar="N",
                   help="CPUs Ray reserves per task (default 1); TensorFlow in a task uses as many threads")
    g.add_argument("--gpus-per-task", type=_number(0, strict=False), default=None, metavar="N",
                   help="GPUs Ray reserves per task, fractions allowed (default 0: tasks see no GPU)")
    g.add_argument("--max-retries", type=_number(0, strict=False, kind=int), default=None, metavar="N",
                   help="retries of a task whose worker process dies (default 2); then it is reported as failed, "
                        "the sweep goes on, and a rerun retries it")


def options_from_args(args: argparse.Namespace) -> RayOptions | None:
    given = [f for f, v in (("--cpus-per-task", args.cpus_per_task), ("--gpus-per-task", args.gpus_per_task),
                            ("--max-retries", args.max_retries)) if v is not None]
    if args.ray is None:
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --ray; add --ray (after RUN) or drop them")
        return None
    base = RayOptions()
    return RayOptions(
        address=None if args.ray == LOCAL else args.ray,
        cpus_per_task=base.cpus_per_task if args.cpus_per_task is None else args.cpus_per_task,
        gpus_per_task=base.gpus_per_task if args.gpus_per_task is None else args.gpus_per_task,
        max_retries=base.max_retries if args.max_retries is None else args.max_retries,
    )


# ---------------------------------------------------------------------------------------------- connecting

def import_ray():
    """The ray module, or RayNotInstalled naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalled(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address[len(scheme):].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or host.endswith(":") or (host.count(":") and not host.startswith("[")):  # no port, or bare IPv6
        host, port = rest, ""
    host = host.strip("[]")
    if not host:
        raise UsageError(f"--ray {address!r}: no host; expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        return host, int(port) if port else _DEFAULT_PORTS[scheme]
    except ValueError:
        raise UsageError(f"--ray {address!r}: port {port!r} is not a number; expected HOST:PORT") from None


def check_reachable(opts: RayOptions) -> None:
    """Fail fast, with what to do, when the cluster address does not answer (ray.init would hang instead)."""
    if opts.address is None or opts.address == "auto":
        return
    host, port = _host_port(opts.address)
    try:
        with socket.create_connection((host, port), timeout=min(5.0, opts.connect_timeout_s)):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise StepFailed(
            f"cannot reach a Ray cluster at {opts.address} ({host} port {port}: {reason}). Check the address "
            "(`ray start --head` prints it; `ray status` on the head shows the cluster), that the head is running "
            "and its port is open from this machine, or give --ray without an address to run on a local Ray"
        ) from None


def preflight(opts: RayOptions) -> None:
    """What can be checked before any work starts: Ray is installed and the cluster address answers."""
    import_ray()
    check_reachable(opts)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RaySession:
    """The Ray a sweep runs on, as found when it started."""

    where: str
    cpus: float
    gpus: float


def _start_local(ray, opts: RayOptions) -> str:
    cpus = opts.local_cpus or available_cpus()
    if opts.cpus_per_task > cpus:
        raise UsageError(f"--cpus-per-task {opts.cpus_per_task:g} is more than the {cpus} CPU(s) of the local Ray; "
                         f"ask for at most {cpus}")
    # address="local": a new Ray for this run even when RAY_ADDRESS points at a cluster.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    return "a local Ray started for this run"


def _connect(ray, opts: RayOptions) -> str:
    box: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(address=opts.address, log_to_driver=False, logging_level=logging.ERROR)
        except BaseException as exc:  # reported by the caller's thread
            box["error"] = exc

    # ray.init retries an address that accepts connections but is no Ray head without end: bound it.
    t = threading.Thread(target=init, name="ray-connect", daemon=True)
    t.start()
    t.join(opts.connect_timeout_s)
    hint = ("check the address (the GCS port of a Ray head, 6379 by default; ray:// for a Ray Client server), "
            "that the head runs the same Ray version as this machine, and, if the cluster uses token "
            "authentication, that RAY_AUTH_MODE=token and its token are set here")
    if t.is_alive():
        raise StepFailed(f"no Ray cluster answered at {opts.address} within {opts.connect_timeout_s:g}s; {hint}")
    if "error" in box:
        exc = box["error"]
        raise StepFailed(f"cannot connect to the Ray cluster at {opts.address}: "
                           f"{' '.join(str(exc).split())[:300] or type(exc).__name__}; {hint}") from None
    return f"the Ray cluster at {opts.address}"


@contextlib.contextmanager
def ray_session(opts: RayOptions, say: Callable[[str], None] = print) -> Iterator[RaySession]:
    """Ray for one sweep: started (local) or joined (address) here and shut down at the end.

    A Ray this process already joined (a notebook, a test) is used as it is and left running.
    """
    ray = import_ray()
    owned = not ray.is_initialized()
    if owned:
        check_reachable(opts)
        where = _start_local(ray, opts) if opts.address is None else _connect(ray, opts)
    else:
        where = "the Ray this process already joined"
    try:
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        short = [f"{need:g} {kind} per task but the cluster has {have:g}"
                 for kind, need, have in (("CPU", opts.cpus_per_task, cpus), ("GPU", opts.gpus_per_task, gpus))
                 if need > have]
        if short and opts.address is None:
            raise UsageError(f"{'; '.join(short)}: tasks could never start; ask for less with "
                             "--cpus-per-task / --gpus-per-task")
        for s in short:  # an autoscaling cluster may add nodes that have them
            say(f"note: {s}; tasks wait until nodes that have them join")
        yield RaySession(where=f"{where} ({cpus:g} CPU, {gpus:g} GPU)", cpus=cpus, gpus=gpus)
    finally:
        if owned:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------- tasks

@dataclass(frozen=True)
class TaskResult:
    """One finished task: its value, or why it failed."""

    key: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def task_env(opts: RayOptions) -> dict[str, str]:
    """Environment of a task's TensorFlow: thread pools sized to the task, GPUs only where asked, quiet."""
    n = str(opts.threads)
    env = {"OMP_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n,
           "TF_CPP_MIN_LOG_LEVEL": "3", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    if not opts.gpus_per_task:
        env["CUDA_VISIBLE_DEVICES"] = ""  # TensorFlow would otherwise take a GPU that Ray gave another task
    return env


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]


def _describe(exc: BaseException, ray, opts: RayOptions) -> str:
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None) or exc
        return _one_line(f"{type(cause).__name__}: {cause}")
    tries = opts.max_retries + 1
    return _one_line(f"its worker died ({tries} tr{'y' if tries == 1 else 'ies'}): {type(exc).__name__}: "
                     f"{str(exc).splitlines()[0] if str(exc) else ''}")


def run_tasks(fn: Callable[..., Any], calls: Sequence[tuple[str, tuple]], opts: RayOptions) -> Iterator[TaskResult]:
    """Run ``fn(*args)`` for each ``(key, args)`` as a Ray task; yield the results as tasks finish, in any order.

    Needs a live Ray (``ray_session``). An ObjectRef among ``args`` reaches ``fn`` as its value. A failed
    task is yielded with its error and the others go on; tasks still running when the caller stops
    (an exception, Ctrl-C) are cancelled.
    """
    ray = import_ray()
    options: dict[str, Any] = dict(num_cpus=opts.cpus_per_task, num_gpus=opts.gpus_per_task,
                                   max_retries=opts.max_retries, retry_exceptions=False)
    if opts.gpus_per_task:
        # GPU tasks get workers of their own, whose TensorFlow never started with the GPUs hidden. CPU tasks
        # use the workers Ray starts ahead (a second faster) and hide the GPUs in init_worker.
        options["runtime_env"] = {"env_vars": task_env(opts)}
    remote = ray.remote(fn).options(**options)
    keys = {remote.remote(*args): key for key, args in calls}
    pending = list(keys)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    yield TaskResult(keys[ref], error=_describe(exc, ray, opts))
                else:
                    yield TaskResult(keys[ref], value=value)
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


# ---------------------------------------------------------------------------------------------- worker side

_worker_ready = False


def init_worker(opts: RayOptions) -> None:
    """Set up TensorFlow in this worker process for ``opts``' tasks, once (worker processes are reused).

    Its thread pools can only be sized, and GPUs hidden, before TensorFlow starts in the process.
    """
    global _worker_ready
    if _worker_ready:
        return
    if "tensorflow" not in sys.modules:
        os.environ.update(task_env(opts))
    import_tensorflow_quietly()
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # TF already ran an op in this process: its pools are fixed
        tf.config.threading.set_intra_op_parallelism_threads(opts.threads)
        tf.config.threading.set_inter_op_parallelism_threads(opts.threads)
    for gpu in tf.config.list_physical_devices("GPU"):  # tasks may share a GPU (--gpus-per-task 0.5)
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    _worker_ready = True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def task_folder() -> Iterator[Path]:
    """A temporary folder for one task on its worker, removed after; first removes those of workers that died."""
    for old in Path(tempfile.gettempdir()).glob("edgekit-ray-*-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"edgekit-ray-{os.getpid()}-") as tmp:
        yield Path(tmp)


def crash_point(key: str) -> None:
    """Test hook (``CRASH_ENV``): kill this worker process outright, the way the OOM killer would."""
    folder = os.environ.get(CRASH_ENV)
    if not folder:
        return
    marker = Path(folder) / f"{key}.crash"
    try:
        left = int(marker.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return
    if left > 0:
        marker.write_text(str(left - 1))
        os.kill(os.getpid(), signal.SIGKILL)
