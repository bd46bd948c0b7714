"""Run the benchmarks (all, or those named), print a table each, write JSON to bench/results/.

.venv/bin/python bench/run.py                      # everything, full size
.venv/bin/python bench/run.py --quick              # everything, scaled down
.venv/bin/python bench/run.py noop --files 10000   # one benchmark
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (
    bandwidth,
    common,
    idle,
    large,
    noop,
    pod_status,
    ray_checkpoint,
    request_cost,
    restore,
    stores,
    throughput,
    webhook,
)

BENCHMARKS = {
    "throughput": throughput,
    "noop": noop,
    "idle": idle,
    "requests": request_cost,
    "webhook": webhook,
    "pod-status": pod_status,
    "ray": ray_checkpoint,
    "restore": restore,
    "bandwidth": bandwidth,
    "stores": stores,
    "large": large,
}
QUICK = {
    "size_mib": 128,
    "small_files": 200,
    "repeat": 1,
    "files": 5000,
    "rounds": 50,
    "puts": 500,
    "parts": 8,
    "reviews": 1000,
    "pods": 100,
    "syncconfigs": 1000,
    "ray_size_mib": 256,
    "ray_repeat": 1,
    "restore_repeat": 1,
    "status_pods": 100,
    "status_rounds": 1,
    "store_size_mib": 64,
    "store_files": 32,
    "large_mib": 256,
    "large_repeat": 1,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("only", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--window", type=float, default=30.0, help="idle: seconds measured (30)")
    throughput.add_arguments(parser)
    parser.add_argument("--files", type=int, default=100_000, help="noop/idle tree size (100000)")
    parser.add_argument("--rounds", type=int, default=200, help="noop: rounds timed (200)")
    parser.add_argument("--rescans", type=int, default=5, help="noop: full rescans timed (5)")
    parser.add_argument("--recovers", type=int, default=3, help="noop: recover()s timed (3)")
    parser.add_argument("--no-peers", action="store_true", help="noop: skip the peers")
    request_cost.add_arguments(parser)
    webhook.add_arguments(parser)
    pod_status.add_arguments(parser)
    ray_checkpoint.add_arguments(parser)
    restore.add_arguments(parser)
    bandwidth.add_arguments(parser)
    stores.add_arguments(parser)
    large.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.window = min(args.window, 10.0)
    names = args.only or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    results: dict[str, Any] = {"machine": common.machine(), "args": vars(args)}
    reports = []
    for name in names:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        results[name] = BENCHMARKS[name].run(args)
        results[name]["wall_s"] = time.perf_counter() - started
        reports.append(BENCHMARKS[name].report(results[name]))
    print()
    print(f"machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}")
    for text in reports:
        print()
        print(text)
    path = common.write_results("-".join(names), results)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
