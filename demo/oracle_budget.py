"""How the demo's PPO budget was chosen: the oracle alone (PPO with the exact checker reward) at a
given number of steps and learning rate, from a finished demo's SFT models, every seed, evaluated
on the demo world's validation prompts (never on the 128 test prompts the demo's table reports).

    python -m demo.oracle_budget --demo_out demo_out --out oracle_budget_out --steps 16 --lrs 3e-4 4e-4

The demo's promise: the oracle beats SFT by at least +0.15 out of domain (mean of 3 seeds) without
an in-domain loss. `DemoSettings` takes the smallest learning rate that clears it at the step count
that fits the time budget (docs/demo.md, "The budget"). Only the oracle runs here, so choosing a
budget never looks at SRPPO's held-out accuracy. Each PPO run writes under its own folder of
`--out`; `<out>/oracle_budget.json` has the per-seed gains and curves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from dataclasses import replace

from demo.evaluate import evaluate
from demo.ppo import checker_reward_flags, run_ppo
from demo.run import DemoSettings, heldout_curve, new_output_folder
from demo.world import make_world, write_prompts_jsonl


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_out", required=True, help="a finished `make demo` output (its sft_seed<N> models)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--lrs", type=float, nargs="+", required=True, help="actor learning rates to try")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    # Every refusal before anything is written or evaluated: a half-made --out blocks the rerun.
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: at least 1")
    try:
        replace(DemoSettings(), ppo_steps=args.steps).ppo_config()
    except ValueError as e:
        parser.error(f"--steps {args.steps}: {e}")
    bad = [lr for lr in args.lrs if not (math.isfinite(lr) and lr > 0)]
    if bad:
        parser.error(f"--lrs: {bad[0]} is not a positive finite learning rate")
    if len({f"{lr:g}" for lr in args.lrs}) != len(args.lrs):
        parser.error(f"--lrs {' '.join(map(str, args.lrs))}: a learning rate is given twice (each gets one run folder)")
    sfts = [os.path.join(args.demo_out, f"sft_seed{seed}") for seed in range(args.seeds)]
    missing = [path for path in sfts if not os.path.isfile(os.path.join(path, "config.json"))]
    if missing:
        parser.error(f"--demo_out: no SFT model at {', '.join(missing)} (run `make demo` first)")

    world = make_world(0)
    new_output_folder(parser, args.out)
    prompts = write_prompts_jsonl(os.path.join(args.out, "ppo_prompts.jsonl"), world.ppo_prompts)
    # The budget is chosen on the validation prompts: the test prompts are for the demo's table only.
    val = (world.val_in, world.val_out)
    starts = [evaluate(sft, *val) for sft in sfts]
    results = {}
    for lr in args.lrs:
        settings = replace(DemoSettings(), ppo_steps=args.steps, actor_lr=lr)
        runs = []
        for seed, (sft, start) in enumerate(zip(sfts, starts)):
            run_dir = os.path.join(args.out, f"lr{lr:g}_seed{seed}")
            result = run_ppo(sft, prompts, run_dir, checker_reward_flags(), settings.ppo_config(), seed)
            curve = heldout_curve(run_dir, result.model_path, start, world, args.steps, specs=val)
            gain = {d: round(curve[-1][f"accuracy_{d}"] - start[f"accuracy_{d}"], 4) for d in ("in_domain", "out_of_domain")}
            runs.append({"seed": seed, "gain": gain, "curve": curve})
            print(f"lr {lr:g} seed {seed}: gain in {gain['in_domain']:+.3f} out {gain['out_of_domain']:+.3f}", flush=True)
        mean = {d: round(statistics.mean(r["gain"][d] for r in runs), 4) for d in ("in_domain", "out_of_domain")}
        print(f"lr {lr:g}, {args.steps} steps: mean gain in {mean['in_domain']:+.3f} out {mean['out_of_domain']:+.3f}")
        results[f"{lr:g}"] = {"steps": args.steps, "mean_gain": mean, "runs": runs}
    with open(os.path.join(args.out, "oracle_budget.json"), "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    return results


if __name__ == "__main__":
    main()
