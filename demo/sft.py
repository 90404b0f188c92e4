"""Stage 1: SFT of the base model on the few demonstrations, with OpenRLHF's own SFT trainer.

Runs the stock `python -m openrlhf.cli.train_sft` in a subprocess (its `SFTDataset` with
`--data.apply_chat_template`, input/output JSONL from `demo.world.write_sft_jsonl`, DeepSpeed
ZeRO, bf16). On a machine without CUDA the subprocess gets `openrlhf_coherent/devmode/cpu_site` on its
PYTHONPATH, whose `sitecustomize.py` applies `openrlhf_coherent.devmode` (import stand-ins for vLLM /
flash-attn, torch.cuda no-ops, torch AdamW instead of DeepSpeed's JIT-built CPU Adam), and
`--ds.attn_implementation eager`. Nothing else is patched for train_sft.

`epochs` is a true epoch count over the demonstrations, so the demo's "SFT" and "SFT extended"
(paper section 4.1: the same SFT continued for more epochs, e.g. 2 -> 6) differ only in it.

    python -m demo.sft --base /tmp/demo/base --out /tmp/demo/sft --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Optional

from openrlhf_coherent.devmode.launch import single_process_env, with_cpu_site

@dataclass
class SFTConfig:
    """OpenRLHF train_sft settings for the demo (a few dozen optimizer steps on ~24 examples)."""

    epochs: int = 2
    lr: float = 1e-3  # 2e-3 overfits harder: OOD accuracy ~0 and a reward that prefers demo categories
    batch_size: int = 2
    micro_batch_size: int = 2
    zero_stage: int = 2
    param_dtype: str = "bf16"  # OpenRLHF accepts bf16/fp16 only; bf16 works on CPU
    max_len: int = 64
    warmup_ratio: float = 0.03
    seed: int = 42
    threads: int = 2


def sft_command(base: str, data: str, out: str, cfg: SFTConfig) -> list:
    """The train_sft command line (everything else is OpenRLHF's default)."""
    return [
        sys.executable, "-m", "openrlhf.cli.train_sft",
        "--model.model_name_or_path", base,
        "--data.dataset", data,
        "--data.input_key", "input",
        "--data.output_key", "output",
        "--data.apply_chat_template",
        "--data.max_len", str(cfg.max_len),
        "--train.max_epochs", str(cfg.epochs),
        "--train.batch_size", str(cfg.batch_size),
        "--train.micro_batch_size", str(cfg.micro_batch_size),
        "--train.seed", str(cfg.seed),
        "--adam.lr", str(cfg.lr),
        "--lr_warmup_ratio", str(cfg.warmup_ratio),
        "--ds.zero_stage", str(cfg.zero_stage),
        "--ds.param_dtype", cfg.param_dtype,
        "--ds.attn_implementation", "eager",
        "--ckpt.output_dir", out,
        "--ckpt.path", os.path.join(out, "ckpt"),
        "--logger.logging_steps", "1",
    ]  # fmt: skip


def run_sft(
    base: str,
    demos,
    out: str,
    config: Optional[SFTConfig] = None,
    log_path: Optional[str] = None,
) -> dict:
    """SFT `base` on `demos` ([(PromptSpec, response)]) into `out`. Returns {"wall_s", "command",
    "config"}; raises RuntimeError with the log tail if train_sft fails."""
    import torch

    from demo.world import write_sft_jsonl

    cfg = config or SFTConfig()
    base, out = os.path.abspath(base), os.path.abspath(out)  # train_sft runs in a temp dir
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo_sft_") as tmp:
        data = write_sft_jsonl(os.path.join(tmp, "demos.jsonl"), demos)
        env = dict(
            os.environ,
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS=str(cfg.threads),
            # train_sft calls deepspeed.init_distributed(): one local process, no launcher.
            **single_process_env(),
        )
        if not torch.cuda.is_available():
            env["PYTHONPATH"] = with_cpu_site(env.get("PYTHONPATH"))
        cmd = sft_command(base, data, out, cfg)
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.time() - t0
    log = proc.stdout + proc.stderr
    if log_path:
        with open(log_path, "w") as f:
            f.write(log)
    if proc.returncode != 0:
        raise RuntimeError(f"train_sft failed (rc={proc.returncode}):\n{log[-4000:]}")
    return {"wall_s": round(wall, 2), "command": cmd, "config": asdict(cfg)}


def main(argv=None):
    from demo.world import make_world

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0, help="world seed (selects the demonstrations)")
    parser.add_argument("--epochs", type=int, default=SFTConfig.epochs)
    parser.add_argument("--lr", type=float, default=SFTConfig.lr)
    args = parser.parse_args(argv)
    world = make_world(args.seed)
    cfg = SFTConfig(epochs=args.epochs, lr=args.lr)
    stats = run_sft(args.base, world.demos, args.out, cfg, log_path=os.path.join(args.out, "train_sft.log"))
    print(json.dumps({k: v for k, v in stats.items() if k != "command"}, indent=1))


if __name__ == "__main__":
    main()
