"""A demo row: the task's exact checker plus the coherent reward, against the checker alone.

    python -m demo.mix_row --out mix_out                     # builds the demo's base and SFT (seed 0)
    python -m demo.mix_row --out mix_out --base B --sft S    # or reuses them

Both PPO runs are `make demo`'s oracle run (same world, SFT model, PPO prompts, seed, 16 steps of
16 prompts x 4 samples, reinforce_baseline, lr 4e-4, KL 0.05: `demo.run.DemoSettings`); only the
reward differs:

  checker alone        --reward.remote_url demo/checker_reward.py
  checker + coherent   the same, plus --reward.model_name_or_path coherent with the demo's
                       recommended guard (mean, floor 0.5) and --coherent.mix_normalize group
                       --coherent.weight 0.5 --coherent.rule_weight 1: each term z-scored within the
                       prompt's 4 samples, so the checker leads and the coherent reward orders
                       samples the checker scores alike (chosen before any run, not tuned)

Reported: held-out accuracy of the final model (128 prompts, greedy; all / in / out of domain),
mean response tokens, and time. Writes OUT/mix_row.json (strict) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional

MIX_FLAGS = ["--coherent.mix_normalize", "group", "--coherent.weight", "0.5", "--coherent.rule_weight", "1"]


def main(argv: Optional[List[str]] = None) -> dict:
    from demo.evaluate import evaluate
    from demo.ppo import checker_reward_flags, coherent_reward_flags, run_ppo
    from demo.pretrain import pretrain
    from demo.run import RECOMMENDED_GUARD, DemoSettings, Timer, new_output_folder
    from demo.sft import SFTConfig, run_sft
    from demo.world import make_world, write_prompts_jsonl
    from openrlhf_coherent.files import dumps

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--base", default=None, help="the demo's pretrained base (default: pretrain one)")
    parser.add_argument("--sft", default=None, help="the demo's SFT model of --seed (default: train one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    new_output_folder(parser, args.out)
    settings, timer, world = DemoSettings(), Timer(), make_world(0)
    base = args.base or os.path.join(args.out, "base")
    if not args.base:
        timer.run("pretrain base", pretrain, base, world=world, seed=0)
    sft = args.sft or os.path.join(args.out, f"sft_seed{args.seed}")
    if not args.sft:
        timer.run("SFT", run_sft, base, world.demos, sft, SFTConfig(epochs=settings.sft_epochs, seed=args.seed))
    prompts = write_prompts_jsonl(os.path.join(args.out, "ppo_prompts.jsonl"), world.ppo_prompts)
    rows = {"SFT": timer.run("eval SFT", evaluate, sft, world.eval_in, world.eval_out)}
    runs = {
        "PPO with checker reward": checker_reward_flags(),
        "PPO with checker + coherent reward": lambda out: [
            *coherent_reward_flags(base, out, RECOMMENDED_GUARD), *checker_reward_flags(), *MIX_FLAGS
        ],
    }
    for name, flags in runs.items():
        out = os.path.join(args.out, name.replace(" ", "_").replace("+", "plus"))
        reward_flags = flags(out) if callable(flags) else flags
        result = timer.run(name, run_ppo, sft, prompts, out, reward_flags, settings.ppo_config(), args.seed)
        rows[name] = timer.run(f"eval {name}", evaluate, result.model_path, world.eval_in, world.eval_out)
    keys = ("accuracy", "accuracy_in_domain", "accuracy_out_of_domain", "mean_response_tokens")
    results = {
        "seed": args.seed,
        "mix_flags": MIX_FLAGS,
        "guard": RECOMMENDED_GUARD,
        "rows": {name: {k: e[k] for k in keys} for name, e in rows.items()},
        "stage_seconds": timer.stages,
    }
    with open(os.path.join(args.out, "mix_row.json"), "x", encoding="utf-8") as f:
        f.write(dumps(results) + "\n")
    print("| method | accuracy | in domain | out of domain | response tokens |\n|---|---|---|---|---|")
    for name, r in results["rows"].items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" if k != "mean_response_tokens" else f"{r[k]:.1f}" for k in keys) + " |")
    return results


if __name__ == "__main__":
    main()
