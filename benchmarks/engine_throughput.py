"""The CPU rollout engine's generation throughput against plain batched Hugging Face `generate`,
on the same model, prompts and sampling settings (issue 16: at least 0.8x).

    python -m benchmarks.engine_throughput            # about 2 min on 2 CPU cores
    python -m benchmarks.engine_throughput --quick    # smoke run

Both sides run in this process, alternating, so machine noise hits them alike:

* engine: `CpuRolloutEngine.generate`, one call per sample as OpenRLHF's executor makes them
  (`asyncio.gather` over prompts x samples), temperature 1, processed log-probs recorded (what PPO
  asks for), each sample with its own seeded generator (the engine's batch-invariant sampling);
* plain: one left-padded `model.generate(do_sample=True, temperature=1, top_k=0)` over the same
  prompt rows, nothing recorded: the ceiling for HF generation on this model.

Throughput counts generated tokens (up to EOS) per second of wall time; best of `--repeats`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Dict, List

import torch

from benchmarks.common import loadavg, machine, machine_line, make_bench_models, param_count, spread, table, write_prompts, write_result


def sampling_params(max_tokens: int) -> SimpleNamespace:
    """The fields of vLLM's SamplingParams the engine reads, as OpenRLHF's PPO rollout sets them."""
    return SimpleNamespace(temperature=1.0, top_p=1.0, top_k=-1, min_tokens=1, max_tokens=max_tokens, logprobs=1,
                           skip_special_tokens=False, n=1, stop_token_ids=None)  # fmt: skip


def run_engine(engine, prompts: List[List[int]], samples: int, max_tokens: int) -> int:
    async def all_requests():
        params = sampling_params(max_tokens)
        return await asyncio.gather(*[engine.generate(p, params) for p in prompts for _ in range(samples)])

    outputs = asyncio.run(all_requests())
    return sum(len(o.outputs[0].token_ids) for o in outputs)


def run_plain(model, tokenizer, prompts: List[List[int]], samples: int, max_tokens: int, eos_ids: List[int]) -> int:
    rows = [p for p in prompts for _ in range(samples)]
    width = max(len(p) for p in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, p in enumerate(rows):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_tokens, min_new_tokens=1, eos_token_id=eos_ids, pad_token_id=pad)  # fmt: skip
    tokens = 0
    for row in out[:, width:].tolist():
        stop = next((k for k, t in enumerate(row) if t in eos_ids), None)
        tokens += len(row) if stop is None else stop + 1
    return tokens


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: smaller model, 1 repeat")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=4, help="samples per prompt")
    p.add_argument("--prompt_words", type=int, default=32)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/engine_throughput.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.prompts, args.max_new_tokens, args.repeats = 64, 1, 4, 8, 1

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrlhf_coherent import devmode

    devmode.install_import_stand_ins()  # the engine module imports OpenRLHF's vLLM engine module
    from openrlhf_coherent.devmode.cpu_rollout import CpuRolloutEngine

    info = machine()
    start_load = loadavg()
    with tempfile.TemporaryDirectory() as root:
        models = make_bench_models(root, args.hidden, args.layers, 4 * args.hidden, max(1, args.hidden // 64))
        prompts_path = write_prompts(os.path.join(root, "prompts.jsonl"), args.prompts, args.prompt_words)
        tokenizer = AutoTokenizer.from_pretrained(models["sft"])
        prompts = [tokenizer(json.loads(line)["input"])["input_ids"] for line in open(prompts_path)]
        engine = CpuRolloutEngine(models["sft"], seed=0)
        model = AutoModelForCausalLM.from_pretrained(models["sft"], dtype=torch.float32).eval()
        eos_ids = engine.eos_token_ids
        params = param_count(models["sft"])

        sides = {
            "CPU rollout engine (per-sample requests, log-probs)": lambda: run_engine(engine, prompts, args.samples, args.max_new_tokens),
            "plain HF generate (one batch)": lambda: run_plain(model, tokenizer, prompts, args.samples, args.max_new_tokens, eos_ids),
        }  # fmt: skip
        for fn in sides.values():  # warm-up: first-call allocations and lazy imports
            fn()
        rates: Dict[str, List[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                tokens = fn()
                rates[name].append(tokens / (time.perf_counter() - t0))

    engine_name, plain_name = list(sides)
    ratio = max(rates[engine_name]) / max(rates[plain_name])
    print(f"\nCPU rollout engine vs plain HF generate: {machine_line(info)}; load avg {start_load} -> {loadavg()}")
    print(f"Llama {args.hidden}x{args.layers} ({params['total'] / 1e6:.2f}M params); {args.prompts} prompts x "
          f"{args.samples} samples, {args.prompt_words}-token prompts, <= {args.max_new_tokens} new tokens, "
          f"temperature 1, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(table(["side", "tokens / s (best)", "median", "min"],
                [[name, f"{max(r):.0f}", f"{spread(r)['median']:.0f}", f"{min(r):.0f}"] for name, r in rates.items()]))  # fmt: skip
    print(f"engine / plain (best of {args.repeats} each): {ratio:.2f} (target >= 0.8)")
    record = {
        "config": vars(args),
        "machine": info,
        "model_params": params,
        "loadavg_start": start_load,
        "loadavg_end": loadavg(),
        "tokens_per_s": {name: spread(r) for name, r in rates.items()},
        "runs": rates,
        "ratio_engine_to_plain": round(ratio, 3),
    }
    path = write_result("engine_throughput", record, args.out)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
