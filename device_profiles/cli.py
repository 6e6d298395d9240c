"""`edgekit profiles`: list built-in device profiles or show one (or a user's TOML file)."""

from __future__ import annotations

import argparse

from device_profiles import list_profiles, load_profile


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("profile", nargs="*", help="profile names or paths to .toml files (default: all built-in)")


def run(args: argparse.Namespace) -> int:
    profiles = [load_profile(x) for x in args.profile] if args.profile else list_profiles()
    print(f"{'profile':<18} {'arch':<8} {'budget MB':>9}  {'builds':<52} runtimes")
    for p in profiles:
        builds = ",".join(t.key for t in p.targets)
        rts = ", ".join(
            f"{s.name}({s.backend}, {s.threads}t"
            + (
                ", " + ">".join(x.replace("ExecutionProvider", "") for x in s.providers)
                if s.backend == "onnxruntime"
                else ", xnnpack"
                if s.xnnpack
                else ""
            )
            + ")"
            for s in p.settings
        )
        print(f"{p.name:<18} {p.arch:<8} {p.memory_budget_mb:>9.0f}  {builds:<52} {rts}")
    return 0
