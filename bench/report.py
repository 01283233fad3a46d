"""Every bench in one run, printed as the README's tables.

    make bench        # or: .venv-bench/bin/python -m bench.report [--seconds 10]

Runs bench.queue_overhead, bench.cache_hits and bench.realtime one after another (about
eight minutes on two cores). Each table's rows come from the same run with the same load
generator (wrk), so compare within a table; absolute figures move with the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

from bench import cache_hits, queue_overhead, realtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="Length of each measured load.")
    args = parser.parse_args()
    started = time.time()
    sections = [
        ("Queue overhead: noop model, 1 client, `Prefer: wait` (target: median under 3 ms)",
         lambda: queue_overhead.run(args.seconds)),
        ("Cache hits beside a bare Flask endpoint doing one Redis GET (target: at least 0.9)",
         lambda: cache_hits.run(args.seconds, [1, 16])),
        ("`minilm` in real time (targets at 32 clients: at least 0.7 of the limit, ahead of LitServe)",
         lambda: realtime.run(args.seconds, [1, 8, 32, 64])),
    ]
    out = []
    for title, bench in sections:
        table = bench()
        out.append(f"**{title}**\n\n{table}\n")
        print(out[-1], flush=True)
    print(f"_{time.strftime('%Y-%m-%d', time.gmtime(started))}, {os.cpu_count()} CPUs ({platform.machine()}), "
          f"{args.seconds:g} s per load, {(time.time() - started) / 60:.0f} min in all._")


if __name__ == "__main__":
    main()
