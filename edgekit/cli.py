"""The `edgekit` command: subcommands dispatched lazily so board-side commands never import TensorFlow."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from edge.core.errors import EdgekitError

# name -> (module, one-line help). The module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "profiles": ("device_profiles.cli", "list the device profiles (built-in and from files)"),
    "train": ("converters.train.sweep", "train the specs of a CNN family on a dataset (workstation)"),
    "import": ("converters.importing.command", "bring your own Keras, ONNX or TFLite models into a run (workstation)"),
    "convert": ("converters.convert.command", "quantize and convert trained models for device profiles (workstation)"),
    "bundle": ("converters.pack.packer", "pack what one device profile needs into a folder or tar.gz (workstation)"),
    "verify": ("edge.bundle.verify", "verify a bundle's checksums and run its canary check (device)"),
    "bench": ("benchmarks.bench.command", "benchmark every artifact of a bundle on this device (device)"),
    "report": ("benchmarks.bench.report", "render latency tables as a Markdown/HTML report with plots"),
    "select": ("edge.tables.selection", "choose the monotonic (Pareto) subset of a latency table (device)"),
    "serve": ("edge.serve.command", "run the deadline-aware inference daemon (device)"),
    "loadgen": ("benchmarks.evaluate.loadgen", "send a deadline workload to a running daemon"),
    "evaluate": ("benchmarks.evaluate.command", "compare serving policies on the same workload"),
    "demo": ("edgekit.demo", "run the whole pipeline end to end on the embedded default"),
}


# What `edgekit --help` tells a user (the module docstring above is for developers).
DESCRIPTION = """\
edgekit takes a family of image-classification CNNs from a workstation to edge
boards: it trains many variants, quantizes and converts them for the board's
runtimes (LiteRT, ONNX Runtime), measures every variant on the board itself,
keeps those whose latency and accuracy rise together, and serves them with a
deadline-aware daemon (Open Inference Protocol / KServe v2) that answers each
request with the most accurate variant that still meets its deadline.

the pipeline, in order:
  workstation:  train (or import your own models) -> convert -> bundle
                (then copy the bundle to the board)
  board:        verify -> bench -> select -> serve
  to judge it:  evaluate (compare serving policies on one workload),
                report (a latency report with plots),
                loadgen (a deadline workload against a running daemon)
  demo runs all of it end to end here; profiles lists the device profiles."""

EPILOG = """\
Run 'edgekit COMMAND --help' for a command's options. README.md walks through
the pipeline step by step, serving (systemd, the v2 API, the embeddable
runtime) and the supported boards."""

_TRAIN_MODULES = {"tensorflow", "keras", "tf2onnx", "onnx", "onnxconverter_common", "onnxruntime_extensions", "sympy"}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, help_) in COMMANDS.items():
        try:
            if importlib.util.find_spec(mod) is not None:
                out[name] = (mod, help_)
        except ModuleNotFoundError:
            pass
    return out


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is None or only == name:
            m = importlib.import_module(mod)
            m.add_arguments(p)
            p.set_defaults(_module=mod)
    return parser


def _missing(command: str, exc: ImportError) -> str:
    name = (exc.name or str(exc)).split(".")[0]
    if name in _TRAIN_MODULES:
        return (f"edgekit {command}: error: {name} is not installed; '{command}' runs on the workstation and "
                f"needs the train extra: pip install -e \".[runtime,train]\" (or bash scripts/setup.sh)")
    return (f"edgekit {command}: error: {name} is not installed; install the runtime extra: "
            f"pip install -e \".[runtime]\" (or bash scripts/setup.sh runtime)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(only=cmd)
    except ImportError as exc:
        print(_missing(cmd or "", exc), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except ImportError as exc:
        # A workstation command on a board (runtime extra only), or a runtime that is missing.
        print(_missing(args.command, exc), file=sys.stderr)
        return 2
    except EdgekitError as exc:
        # Errors the user can act on carry a message that says what to do: no traceback. Anything
        # else is a bug and keeps its traceback.
        print(f"edgekit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
