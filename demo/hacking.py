"""Reward hacking of the summed coherent reward, reproduced, and the guards ablated.

    python -m demo.hacking --out hacking_out          # ~8 minutes on 2 CPU cores

On the demo's world (seed 0: its base model and 2-epoch SFT model), PPO with the coherent reward
at a deliberately large actor learning rate (1e-3) learns within a few steps to stop emitting EOS
and fill the 24-token budget: each extra list item costs the base model more than the SFT model,
so the summed reward grows with length. The same run is repeated with each guard; the table
reports, for the last 3 rollouts, the coherent reward, response length, EOS rate and the SFT
model's per-token log-likelihood of the samples, whether the alarm fired, and the task accuracy
of the final policy on the held-out prompts, next to the SFT model's. Writes
`<out>/hacking_results.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List

from demo.evaluate import evaluate
from demo.ppo import PPOConfig, coherent_reward_flags, run_ppo
from demo.pretrain import pretrain
from demo.run import new_output_folder
from demo.sft import SFTConfig, run_sft
from demo.world import make_world, write_prompts_jsonl

# name -> extra flags. "none" is the paper-faithful reward (eq. 3-4, summed, no guard).
GUARDS: Dict[str, List[str]] = {
    "none (paper-faithful)": [],
    "stop properly (-10 if truncated)": ["--reward.stop_properly_penalty_coef", "-10"],
    "token clip 2": ["--coherent.token_clip", "2"],
    "mean (length-normalised)": ["--coherent.aggregate", "mean"],
    "SFT log-lik floor 0.5": ["--coherent.sft_logp_floor", "0.5"],
    "mean + SFT log-lik floor 0.5": ["--coherent.aggregate", "mean", "--coherent.sft_logp_floor", "0.5"],
    "stop properly + SFT log-lik floor 0.5": [
        "--reward.stop_properly_penalty_coef",
        "-10",
        "--coherent.sft_logp_floor",
        "0.5",
    ],  # fmt: skip
}
# Large enough that the hack is decisive under every CPU kernel set: at 3e-4 the response length
# rose by +17 tokens with AVX2 kernels but by +8 (EOS rate still 0.73) with AVX-512 ones; at 1e-3 it
# fills the 24-token budget by step 6 under AVX-512, AVX2 and the plain kernels (README, "Reward hacking").
HACKING_LR = 1e-3


def last(steps, key, n=3):
    values = [s[key] for s in steps[-n:]]
    return sum(values) / len(values)


def prepare_models(out: str, seed: int = 0):
    """The demo world's base and 2-epoch SFT model (built once, reused when present)."""
    world = make_world(seed)
    base, sft = os.path.join(out, "base"), os.path.join(out, "sft")
    if not os.path.exists(os.path.join(base, "model.safetensors")):
        pretrain(base, world=world, seed=seed)
    if not os.path.exists(os.path.join(sft, "config.json")):
        run_sft(base, world.demos, sft, SFTConfig(epochs=2, seed=seed))
    prompts = write_prompts_jsonl(os.path.join(out, "ppo_prompts.jsonl"), world.ppo_prompts)
    return world, base, sft, prompts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="hacking_out")
    parser.add_argument("--steps", type=int, default=12, help="PPO steps (rollouts of 16 prompts x 4 samples)")
    parser.add_argument("--guards", default=",".join(GUARDS), help="comma-separated subset of: " + ", ".join(GUARDS))
    parser.add_argument("--lr", type=float, default=HACKING_LR, help="actor learning rate")
    args = parser.parse_args(argv)
    new_output_folder(parser, args.out)
    world, base, sft, prompts = prepare_models(args.out)
    sft_eval = evaluate(sft, world.eval_in, world.eval_out)
    cfg = PPOConfig(actor_lr=args.lr, max_samples=16 * args.steps)

    rows = []
    for name in args.guards.split(","):
        run_dir = os.path.join(args.out, "run_" + "".join(c if c.isalnum() else "_" for c in name))
        t0 = time.time()
        result = run_ppo(sft, prompts, run_dir, coherent_reward_flags(base, run_dir, GUARDS[name]), cfg)
        final = evaluate(result.model_path, world.eval_in, world.eval_out)
        s = result.steps
        rows.append(
            {
                "guard": name,
                "flags": " ".join(GUARDS[name]),
                "reward_first": s[0]["coherent/reward_mean"],
                "reward_last3": last(s, "coherent/reward_mean"),
                "length_first": s[0]["coherent/response_length_mean"],
                "length_last3": last(s, "coherent/response_length_mean"),
                "eos_rate_last3": last(s, "coherent/eos_rate"),
                "sft_logp_per_token_first": s[0]["coherent/sft_logp_per_token"],
                "sft_logp_per_token_last3": last(s, "coherent/sft_logp_per_token"),
                "alarm_steps": s[-1]["coherent/hacking_alarm_steps"],
                "accuracy": final["accuracy"],
                "accuracy_in_domain": final["accuracy_in_domain"],
                "accuracy_out_of_domain": final["accuracy_out_of_domain"],
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(f"[hacking] {name}: {json.dumps(rows[-1])}", flush=True)

    table = format_table(rows, sft_eval, args.steps, args.lr)
    print(table)
    with open(os.path.join(args.out, "hacking_results.md"), "w") as f:
        f.write(table)
    result = {"sft": sft_eval, "runs": rows, "steps": args.steps, "actor_lr": args.lr}
    with open(os.path.join(args.out, "hacking_results.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def format_table(rows, sft_eval, steps, lr) -> str:
    lines = [
        f"PPO with the coherent reward, actor lr {lr}, {steps} steps; last-3-step means "
        f"(first step in brackets). SFT model: accuracy {sft_eval['accuracy']:.3f} "
        f"(in-domain {sft_eval['accuracy_in_domain']:.3f}, out-of-domain {sft_eval['accuracy_out_of_domain']:.3f}), "
        f"{sft_eval['mean_response_tokens']:.1f} tokens, truncation {sft_eval['truncation_rate']:.2f}.",
        "",
        "| guard | coherent reward | length | EOS rate | SFT log-lik/token | alarm steps | accuracy (in / out) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['guard']} | {r['reward_last3']:.1f} ({r['reward_first']:.1f}) | {r['length_last3']:.1f} "
            f"({r['length_first']:.1f}) | {r['eos_rate_last3']:.2f} | {r['sft_logp_per_token_last3']:.2f} "
            f"({r['sft_logp_per_token_first']:.2f}) | {r['alarm_steps']:.0f} | {r['accuracy']:.3f} "
            f"({r['accuracy_in_domain']:.3f} / {r['accuracy_out_of_domain']:.3f}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
