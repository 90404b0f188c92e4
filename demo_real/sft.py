"""Stage 1 of the real-model demo: OpenRLHF's own `openrlhf.cli.train_sft`, in fp32 on a CPU.

The command is the main demo's (`demo.sft.sft_command`: `--data.apply_chat_template`, DeepSpeed
ZeRO-2, the CPU dev mode through `openrlhf_coherent/devmode/cpu_site`), with one difference: fp32 instead
of bf16. Stock train_sft accepts only `--ds.param_dtype bf16|fp16`; on a CPU without native bf16
(this demo's 2-core AMD EPYC has no avx512_bf16) a bf16 step of SmolLM2-135M on 4 demonstrations
took about 90 CPU s, some 20 times the fp32 cost. So this runs `python -m demo_real.sft`, which
runs the unmodified `openrlhf.cli.train_sft` module (`runpy`, as `python -m` would) after adding
"fp32" to its `--ds.param_dtype` choices (`openrlhf_coherent.devmode.allow_fp32_param_dtype`, the
hook our PPO entry point uses on CPU; the dev mode's `convert_to_torch_dtype` maps it to float32,
and DeepSpeed then enables neither bf16 nor fp16). Everything else is train_sft as shipped.
"""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Optional

from openrlhf_coherent.devmode.launch import single_process_env, with_cpu_site

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sft(base: str, demos, out: str, cfg, log_path: Optional[str] = None) -> dict:
    """SFT `base` on `demos` ([(Instruction, response)]) into `out` with train_sft in fp32 on CPU
    (bf16 where CUDA is available, as the main demo). `cfg`: a `demo.sft.SFTConfig`."""
    import torch

    from demo.sft import sft_command
    from demo.world import write_sft_jsonl

    base, out = os.path.abspath(base), os.path.abspath(out)  # train_sft runs in a temp dir
    os.makedirs(out, exist_ok=True)
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="demo_real_sft_") as tmp:
        data = write_sft_jsonl(os.path.join(tmp, "demos.jsonl"), demos)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(cfg.threads), **single_process_env())
        cmd = sft_command(base, data, out, cfg)
        if not cuda:
            env["PYTHONPATH"] = with_cpu_site(os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p))
            cmd = [sys.executable, "-m", "demo_real.sft", *cmd[3:]]
            cmd[cmd.index("--ds.param_dtype") + 1] = "fp32"
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


def main() -> None:
    """`python -m demo_real.sft <train_sft flags>`: train_sft with fp32 allowed (CPU dev mode)."""
    from openrlhf_coherent import devmode

    parse_args = argparse.ArgumentParser.parse_args

    def parse_args_with_fp32(self, *args, **kwargs):
        devmode.allow_fp32_param_dtype(self)
        return parse_args(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = parse_args_with_fp32
    sys.argv = ["openrlhf.cli.train_sft", *sys.argv[1:]]
    runpy.run_module("openrlhf.cli.train_sft", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
