"""The paper's levers, one at a time, each measured as SRPPO relative to the oracle.

    python -m demo.sweep --demo_out demo_out --out sweep_out            # every lever, seed 0
    python -m demo.sweep --demo_out demo_out --out sweep_out --levers kl_0.2,ppo_prompts_64

Starts from a finished `make demo` (`--demo_out`): its base model, its SFT models and its default
SRPPO and oracle runs are reused as the reference row (nothing of the demo is re-run). Each lever
changes one setting of `demo.run.DemoSettings` / the SFT data and re-runs SRPPO and, where the
change affects it, the oracle (PPO with the exact checker reward) with the very same settings, so
every row is "SRPPO's held-out gain over its own SFT model, as a fraction of the oracle's gain from
that same SFT model". Evaluation is the demo's (same 128 held-out prompts, greedy, exact checker).

Levers (paper section 4.1 and appendix, design.md 1.6):
  kl_0.2, kl_0.5        the paper's KL coefficients (default 0.05)
  lr_1.3e-4, lr_4e-5    smaller actor learning rates (default 4e-4; the paper picks its lr per
                        method from a grid, see `make demo-paper`)
  sft_epochs_6          SRPPO from (and its reward from) the 6-epoch, overfit SFT model
  overlap_medium        SFT demos + 8 demonstrations on PPO prompts (the paper's 9k UltraFeedback demos)
  overlap_diminished    medium, plus 32 more in-domain demonstrations that dilute them
  ppo_prompts_64        64 PPO prompts instead of 256 (same number of steps: more epochs over them)
  aggregate_sum_floor   summed reward with the SFT log-lik floor (guard without length normalisation)
  aggregate_mean_nofloor  mean reward without the floor
(the unguarded paper-faithful reward and the token-wise variant are in the demo itself, seed 0).

Writes `<out>/sweep.md` and `<out>/sweep.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import replace
from typing import Dict, List

from demo.evaluate import evaluate
from demo.ppo import checker_reward_flags, coherent_reward_flags, run_ppo
from demo.run import ORACLE, DemoSettings, heldout_curve, new_output_folder
from demo.sft import SFTConfig, run_sft
from demo.world import all_prompt_specs, ideal_response, make_world, write_prompts_jsonl

GUARD = ["--coherent.aggregate", "mean", "--coherent.sft_logp_floor", "0.5"]


def overlap_demos(world, level: str):
    """The SFT demonstrations of an overlap level (paper 4.1). "minimum": the demo's own (in-domain
    only, no PPO prompt); "medium": + 8 demonstrations on the first 8 PPO prompts (all categories
    and counts, as the paper's 9k demonstrations on UltraFeedback prompts); "diminished": medium +
    32 more in-domain demonstrations (the paper's extra 40k TULU examples), on prompts outside every
    split. Held-out prompts are never used."""
    demos = list(world.demos)
    if level == "minimum":
        return demos
    rng = random.Random(world.seed * 1009 + 17)
    demos += [(s, ideal_response(s, rng, ordered=True)) for s in world.ppo_prompts[:8]]
    if level == "diminished":
        used = {s.text for s, _ in demos} | {s.text for s in world.eval_prompts + world.ppo_prompts}
        pool = [s for s in all_prompt_specs() if s.in_domain and s.text not in used]
        extra = rng.sample(pool, 32)
        demos += [(s, ideal_response(s, rng, ordered=True)) for s in extra]
    return demos


# lever -> what it changes: DemoSettings fields, SFT data (overlap) or epochs, PPO prompts, the
# SRPPO guard flags; "oracle": False where the oracle is unaffected (the demo's oracle run is reused)
LEVERS: Dict[str, dict] = {  # in the order they run (most informative first)
    "aggregate_sum_floor": {"guard": ["--coherent.sft_logp_floor", "0.5"], "oracle": False},
    "kl_0.2": {"settings": {"kl_coef": 0.2}},
    "sft_epochs_6": {"sft_epochs": 6},
    "overlap_medium": {"overlap": "medium"},
    "ppo_prompts_64": {"ppo_prompts": 64},
    "overlap_diminished": {"overlap": "diminished"},
    "kl_0.5": {"settings": {"kl_coef": 0.5}},
    "lr_1.3e-4": {"settings": {"actor_lr": 1.3e-4}},
    "lr_4e-5": {"settings": {"actor_lr": 4e-5}},
    "aggregate_mean_nofloor": {"guard": ["--coherent.aggregate", "mean"], "oracle": False},
}


def gain(run: dict, sft: dict) -> Dict[str, float]:
    return {
        "in": round(run["accuracy_in_domain"] - sft["accuracy_in_domain"], 4),
        "out": round(run["accuracy_out_of_domain"] - sft["accuracy_out_of_domain"], 4),
    }


def fraction(srppo: Dict[str, float], oracle: Dict[str, float]) -> Dict[str, object]:
    return {d: (round(srppo[d] / oracle[d], 2) if oracle[d] > 0 else None) for d in ("in", "out")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_out", default="demo_out", help="a finished `python -m demo.run` output folder")
    parser.add_argument("--out", default="sweep_out")
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated subset of: " + ", ".join(LEVERS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [lever for lever in args.levers.split(",") if lever not in LEVERS]
    if unknown:
        parser.error(f"--levers: unknown lever {unknown[0]!r}; choose from {', '.join(LEVERS)}")
    if not os.path.isfile(os.path.join(args.demo_out, "results.json")):
        parser.error(f"--demo_out {args.demo_out}: no results.json (a finished `make demo` output is needed)")
    with open(os.path.join(args.demo_out, "results.json")) as f:
        demo = json.load(f)
    settings = DemoSettings(**demo["settings"])
    seed = args.seed
    idx = demo["seeds"].index(seed)
    world = make_world(0)
    base = os.path.join(args.demo_out, "base")
    new_output_folder(parser, args.out)
    default_sft = demo["per_seed"]["SFT"][idx]
    rows = [
        {
            "lever": "default (the demo)",
            "sft": {k: default_sft[k] for k in ("accuracy_in_domain", "accuracy_out_of_domain")},
            "srppo_gain": gain(demo["per_seed"]["SRPPO"][idx], default_sft),
            "oracle_gain": gain(demo["per_seed"][ORACLE][idx], default_sft),
        }
    ]
    rows[0]["fraction"] = fraction(rows[0]["srppo_gain"], rows[0]["oracle_gain"])
    print(f"[sweep] default: {json.dumps(rows[0])}", flush=True)
    all_prompts = os.path.join(args.demo_out, "ppo_prompts.jsonl")

    for lever in args.levers.split(","):
        spec = LEVERS[lever]
        t0 = time.time()
        run_dir = os.path.join(args.out, lever)
        os.makedirs(run_dir, exist_ok=True)
        lever_settings = replace(settings, **spec.get("settings", {}))
        # the SFT model: the demo's unless the lever changes the SFT data or epochs
        sft = os.path.join(args.demo_out, f"sft_seed{seed}")
        if spec.get("sft_epochs") == settings.sft_extended_epochs and "overlap" not in spec:
            sft = os.path.join(args.demo_out, f"sft_extended_seed{seed}")  # the demo's "SFT extended"
            sft_eval = demo["per_seed"]["SFT extended"][idx]
        elif "overlap" in spec or "sft_epochs" in spec:
            sft = os.path.join(run_dir, "sft")
            demos = overlap_demos(world, spec.get("overlap", "minimum"))
            run_sft(base, demos, sft, SFTConfig(epochs=spec.get("sft_epochs", settings.sft_epochs), seed=seed))
            sft_eval = evaluate(sft, world.eval_in, world.eval_out)
        else:
            sft_eval = default_sft
        prompts, n_prompts = all_prompts, len(world.ppo_prompts)
        if "ppo_prompts" in spec:  # the same number of steps, so more passes over fewer prompts
            n_prompts = spec["ppo_prompts"]
            prompts = write_prompts_jsonl(os.path.join(run_dir, "ppo_prompts.jsonl"), world.ppo_prompts[:n_prompts])
        results = {}
        for name, flags, estimator in (
            ("SRPPO", lambda out: coherent_reward_flags(base, out, spec.get("guard", GUARD)), "reinforce_baseline"),
            (ORACLE, lambda out: checker_reward_flags(), "reinforce_baseline"),
        ):
            if name == ORACLE and not spec.get("oracle", True):
                results[name] = demo["per_seed"][ORACLE][idx]
                continue
            out = os.path.join(run_dir, name.replace(" ", "_"))
            cfg = lever_settings.ppo_config(estimator, n_prompts=n_prompts)
            result = run_ppo(sft, prompts, out, flags(out), cfg, seed)
            results[name] = heldout_curve(out, result.model_path, sft_eval, world, lever_settings.ppo_steps)[-1]
        row = {
            "lever": lever,
            "sft": {k: sft_eval[k] for k in ("accuracy_in_domain", "accuracy_out_of_domain")},
            "srppo_gain": gain(results["SRPPO"], sft_eval),
            "oracle_gain": gain(results[ORACLE], sft_eval),
            "oracle_rerun": spec.get("oracle", True),
            "seconds": round(time.time() - t0, 1),
        }
        row["fraction"] = fraction(row["srppo_gain"], row["oracle_gain"])
        rows.append(row)
        print(f"[sweep] {lever}: {json.dumps(row)}", flush=True)
        with open(os.path.join(args.out, "sweep.json"), "w") as f:
            json.dump({"seed": seed, "settings": demo["settings"], "rows": rows}, f, indent=1)

    table = format_table(rows, seed)
    print(table)
    with open(os.path.join(args.out, "sweep.md"), "w") as f:
        f.write(table)
    return {"rows": rows}


def format_table(rows: List[dict], seed: int) -> str:
    lines = [
        f"One lever at a time, seed {seed}; held-out accuracy gains over each row's own SFT model "
        "(in-domain / out-of-domain), SRPPO's gain as a fraction of the oracle's.",
        "",
        "| lever | SFT in / out | SRPPO gain in / out | oracle gain in / out | fraction in / out |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        f = " / ".join("-" if r["fraction"][d] is None else f"{r['fraction'][d]:.2f}" for d in ("in", "out"))
        oracle = f"{r['oracle_gain']['in']:+.3f} / {r['oracle_gain']['out']:+.3f}"
        if r.get("oracle_rerun") is False:
            oracle += " (the demo's)"
        lines.append(
            f"| {r['lever']} | {r['sft']['accuracy_in_domain']:.3f} / {r['sft']['accuracy_out_of_domain']:.3f} | "
            f"{r['srppo_gain']['in']:+.3f} / {r['srppo_gain']['out']:+.3f} | {oracle} | {f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
