"""What a CPU dev-mode process spends before it does any work: the imports of a Ray role worker
(`devmode.settle("cpu")`: torch, transformers, DeepSpeed, OpenRLHF's trainer), with the garbage
collector paused for them (`openrlhf_coherent.devmode.startup.imports_without_gc`, what every run does)
and without (the pause replaced by a no-op).

    python -m benchmarks.startup_imports             # about 2 min on 2 CPU cores
    python -m benchmarks.startup_imports --quick     # smoke run

Each sample is a fresh interpreter (`python -c ...`, OMP_NUM_THREADS=1 as in the tests) that
imports Ray, runs the worker's set-up, collects garbage once (so that the paused variant pays for
what the pause deferred) and reports its own CPU time (user + system, from `resource.getrusage`);
the two variants alternate so machine noise hits them alike. A tiny PPO run starts 6 such workers
and a driver that imports the same packages.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List

from benchmarks.common import fmt_spread, loadavg, machine, machine_line, spread, table, write_result

# One role worker's start-up, as Ray runs it: import ray, then the set-up hook (devmode.worker_setup
# with the driver's decision "cpu", which calls settle). PAUSE=0 swaps the pause for a no-op.
SNIPPET = """
import contextlib, gc, json, os, resource, time
wall = time.time()
import ray
from openrlhf_coherent import devmode
if os.environ["PAUSE"] == "0":
    devmode.imports_without_gc = contextlib.nullcontext
devmode.worker_setup()
gc.collect()  # both variants pay for a full collection of what the imports built (the pause only defers it)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.time() - wall}))
"""

VARIANTS = {"gc paused for the imports (default)": "1", "gc running": "0"}


def one_sample(pause: str) -> Dict[str, float]:
    env = dict(os.environ, PAUSE=pause, OMP_NUM_THREADS="1", OPENRLHF_COHERENT_DEVICE="cpu", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="samples per variant, alternating")
    parser.add_argument("--quick", action="store_true", help="one sample per variant")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/startup_imports[_quick].json)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    load_start = loadavg()
    samples: Dict[str, List[Dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, pause in VARIANTS.items():
            samples[name].append(one_sample(pause))
    summary = {name: {key: spread([s[key] for s in rows]) for key in ("cpu_s", "wall_s")} for name, rows in samples.items()}
    paused, running = (summary[name]["cpu_s"]["median"] for name in VARIANTS)
    rows = [[name, fmt_spread(s["cpu_s"], 2), fmt_spread(s["wall_s"], 2)] for name, s in summary.items()]
    print(machine_line(machine()))
    print(table(["one role worker's start-up", "CPU s, median [min, max]", "wall s"], rows))
    print(f"\npaused / running (median CPU): {paused / running:.2f}")
    record = {
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "repeats": repeats,
        "samples": samples,
        "summary": summary,
        "cpu_ratio_paused_over_running": round(paused / running, 3),
    }
    path = write_result("startup_imports_quick" if args.quick else "startup_imports", record, args.out)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
