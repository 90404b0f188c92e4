"""The reward audit on `make demo-real`'s data: SmolLM2-135M-Instruct as the base, its SFT on the 12
demonstrations as the SFT model, the demonstrations as the references.

    python -m demo_real.audit --out audit_real                          # converts and trains (about 2 min)
    python -m demo_real.audit --out audit_real --base B --sft S         # or reuses demo-real's models

Writes OUT/references.jsonl (the demonstrations) and OUT/audit/ (audit.json, audit.md, audit.png)
with `python -m openrlhf_coherent.cli.audit`, the chat template and lengths of demo-real's PPO runs.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> dict:
    from demo import run as main_demo
    from demo_real.run import RealDemoSettings, convert
    from demo_real.sft import run_sft
    from demo_real.world import make_world
    from openrlhf_coherent.cli import audit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--base", default=None, help="the converted SmolLM2 folder (default: convert into OUT)")
    parser.add_argument("--sft", default=None, help="demo-real's SFT model (default: train it into OUT, seed 0)")
    parser.add_argument("--batch_tokens", type=int, default=2048, help="padded tokens per forward (memory)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local
    main_demo.new_output_folder(parser, args.out)
    s = RealDemoSettings()
    world = make_world(0, n_demos=s.n_demos, n_eval_per_group=s.n_eval_per_group, n_ppo=s.rollout_prompts * s.ppo_steps)
    base = args.base or convert(os.path.join(args.out, "smollm2"))
    sft = args.sft or os.path.join(args.out, "sft_seed0")
    if not args.sft:
        run_sft(base, world.demos, sft, s.sft_config(s.sft_epochs, 0), os.path.join(args.out, "sft.log"))
    references = os.path.join(args.out, "references.jsonl")
    with open(references, "x", encoding="utf-8") as f:
        for spec, response in world.demos:
            f.write(json.dumps({"prompt": spec.text, "response": response, "kind": spec.kind}) + "\n")
    return audit.run(audit.parser().parse_args([
        "--sft_model", sft, "--base_model", base, "--input", references, "--output", os.path.join(args.out, "audit"),
        "--apply_chat_template", "--max_len", "1024", "--continue_tokens", str(s.max_new_tokens),
        "--batch_tokens", str(args.batch_tokens),
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
