"""Throughput of the scoring path (`openrlhf_coherent.scoring`, what `cli.score` runs) against a
plain transformers implementation, and as a fraction of this machine's measured matmul peak.

    python -m benchmarks.scoring_throughput            # default: about 3-4 min on 2 CPU cores
    python -m benchmarks.scoring_throughput --quick    # smoke run

Both sides score every row under two models (SFT and base, like `score`) and return fp32
per-token response log-probs. Implementations:

  plain         rows in arrival order, a fixed number of rows per batch, right-padded to the
                batch's longest row, `model(...).logits` on every position, fp32 log-softmax
  plain sorted  the same forward on `scoring.plan_batches`' length-sorted token-budget batches
                (isolates what sorting alone buys)
  score path    `scoring.response_log_probs`: sorted token-budget batches and the LM head and
                log-softmax only on response positions

Two length distributions with the same mean row length: equal (every row the same) and skewed
(prompt lengths uniform, response lengths log-normal with a long tail). Plain's rows per batch is
the score path's token budget divided by the mean row length, so both hold the same number of
real tokens per batch on average.

Throughput is real (unpadded) prompt+response tokens per second through both models. Achieved
FLOP/s counts 2 x matmul parameters (all but the input embedding, LM head included) x tokens per
model forward, the issue's convention (the model FLOPs of the work, not the hardware FLOPs: it
does not count attention scores, padding, or the head work the score path skips). The peak is a
large square matmul in the same dtype, measured in the same run. The implementations run
round-robin within each repeat so load from other jobs hits them alike.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from benchmarks.common import fmt_spread, loadavg, machine, machine_line, spread, table, write_result
from openrlhf_coherent.scoring import plan_batches, response_log_probs

Pair = Tuple[List[int], List[int]]


def build_model(vocab: int, hidden: int, layers: int, seed: int, device, dtype, intermediate=None, kv_heads=None, heads=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = heads or max(hidden // 64, 1)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        max_position_embeddings=8192, tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(seed)
    # Built where it runs, in its dtype: an 8B model initialised in fp32 on the host would take
    # 32 GB and minutes before the GPU does anything.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)


def make_pairs(kind: str, rows: int, mean_prompt: int, mean_response: int, vocab: int, seed: int) -> List[Pair]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(rows):
        if kind == "equal":
            p, r = mean_prompt, mean_response
        else:
            # Prompts uniform on [1/8, 15/8] x mean; responses log-normal (sigma 1) with the given
            # mean, at most 8x it: most responses are short, a few are very long, as in real data.
            p = rng.randint(max(mean_prompt // 8, 1), mean_prompt * 15 // 8)
            sigma = 1.0
            r = int(rng.lognormvariate(math.log(mean_response) - sigma**2 / 2, sigma))
            r = min(max(r, 1), 8 * mean_response)
        pairs.append(([rng.randrange(4, vocab) for _ in range(p)], [rng.randrange(4, vocab) for _ in range(r)]))
    return pairs


@torch.no_grad()
def plain_forward(model, pairs: Sequence[Pair], batches: List[List[int]], device) -> List[torch.Tensor]:
    """What a plain transformers scorer does: right-padded batch, full logits, fp32 log-softmax."""
    results = [None] * len(pairs)
    for batch in batches:
        rows = [list(pairs[i][0]) + list(pairs[i][1]) for i in batch]
        width = max(len(r) for r in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, : len(r)] = torch.tensor(r)
            attention_mask[b, : len(r)] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
        for b, i in enumerate(batch):
            p, r = len(pairs[i][0]), len(pairs[i][1])
            results[i] = log_probs[b, p - 1 : p + r - 1].cpu()
    return results


def measure_peak(device, dtype, size: int, reps: int) -> float:
    """FLOP/s of the best of `reps` large square matmuls (what the BLAS reaches on this machine now)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small models, few rows, 1 repeat")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--vocab", type=int, default=16000)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 8/3 x hidden; Llama-3-8B: 14336)")
    p.add_argument("--heads", type=int, default=None, help="query heads (default: hidden / 64; Llama-3-8B: 32, of 128)")
    p.add_argument("--kv_heads", type=int, default=None, help="key/value heads (default: as many as query heads; Llama-3-8B: 8)")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--mean_prompt", type=int, default=64)
    p.add_argument("--mean_response", type=int, default=64)
    p.add_argument("--batch_tokens", type=int, default=2048, help="the score path's padded-token budget per forward")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak_size", type=int, default=None, help="matmul size for the peak (default 2048 CPU, 8192 GPU)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.hidden, args.layers, args.rows, args.repeats = 4000, 256, 2, 16, 1
        args.mean_prompt, args.mean_response, args.batch_tokens = 32, 32, 512
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    peak_size = args.peak_size or (8192 if device.type == "cuda" else (1024 if args.quick else 2048))

    load_start = loadavg()
    shape = (args.vocab, args.hidden, args.layers)
    sizes = (args.intermediate, args.kv_heads, args.heads)
    models = {name: build_model(*shape, seed, device, dtype, *sizes) for name, seed in (("sft", 1), ("base", 0))}
    n_matmul = sum(q.numel() for q in models["base"].parameters()) - models["base"].get_input_embeddings().weight.numel()
    mean_len = args.mean_prompt + args.mean_response
    rows_per_batch = max(args.batch_tokens // mean_len, 1)

    impls: Dict[str, Callable] = {
        "plain": lambda m, pairs: plain_forward(
            m, pairs, [list(range(i, min(i + rows_per_batch, len(pairs)))) for i in range(0, len(pairs), rows_per_batch)], device
        ),
        "plain sorted": lambda m, pairs: plain_forward(
            m, pairs, plan_batches([len(a) + len(b) for a, b in pairs], args.batch_tokens), device
        ),
        "score path": lambda m, pairs: response_log_probs(m, pairs, batch_tokens=args.batch_tokens, pad_token_id=0),
    }
    datasets = {kind: make_pairs(kind, args.rows, args.mean_prompt, args.mean_response, args.vocab, seed=1) for kind in ("equal", "skewed")}

    # Correctness first: every implementation returns the same log-probs (a fast wrong scorer is no result).
    check = datasets["skewed"][: min(8, args.rows)]
    reference = impls["plain"](models["sft"], check)
    for name, impl in impls.items():
        for got, want in zip(impl(models["sft"], check), reference):
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            if got.shape != want.shape or not torch.allclose(got.float(), want.float(), atol=tol, rtol=tol):
                sys.exit(f"{name}: log-probs differ from the plain implementation")

    peaks = [measure_peak(device, dtype, peak_size, reps=5)]
    timings = {kind: {name: [] for name in impls} for kind in datasets}
    for rep in range(args.repeats):
        for kind, pairs in datasets.items():
            for name, impl in impls.items():
                sync(device)
                t = time.perf_counter()
                for model in models.values():
                    impl(model, pairs)
                sync(device)
                timings[kind][name].append(time.perf_counter() - t)
        peaks.append(measure_peak(device, dtype, peak_size, reps=3))
        print(f"repeat {rep + 1}/{args.repeats} done", flush=True)
    peak = max(peaks)

    results = {}
    for kind, pairs in datasets.items():
        tokens = sum(len(a) + len(b) for a, b in pairs)
        lengths = [len(a) + len(b) for a, b in pairs]
        results[kind] = {
            "rows": len(pairs), "tokens": tokens, "response_tokens": sum(len(b) for _, b in pairs),
            "row_length": {"mean": tokens / len(pairs), "max": max(lengths), "min": min(lengths)},
            "impls": {},
        }  # fmt: skip
        for name in impls:
            secs = timings[kind][name]
            tps = [tokens / s for s in secs]
            flops = [2 * n_matmul * tokens * len(models) / s for s in secs]
            results[kind]["impls"][name] = {
                "seconds": spread(secs),
                "tokens_per_s": spread(tps),
                "model_flops_per_s": spread(flops),
                "fraction_of_peak": spread([f / peak for f in flops]),
            }
        plain_best = min(timings[kind]["plain"])
        results[kind]["speedup_vs_plain"] = spread([plain_best / s for s in timings[kind]["score path"]])
        results[kind]["speedup_vs_plain_median"] = (
            results[kind]["impls"]["score path"]["tokens_per_s"]["median"] / results[kind]["impls"]["plain"]["tokens_per_s"]["median"]
        )

    skewed = results["skewed"]
    targets = {
        "speedup_vs_plain_on_skewed >= 2": skewed["speedup_vs_plain_median"] >= 2.0,
        "fraction_of_peak_on_skewed >= 0.5": skewed["impls"]["score path"]["fraction_of_peak"]["median"] >= 0.5,
    }
    record = {
        "benchmark": "scoring_throughput",
        "command": " ".join(["python -m benchmarks.scoring_throughput", *(sys.argv[1:] if argv is None else argv)]),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"dtype": str(dtype), "rows_per_batch_plain": rows_per_batch},
        "model": {"matmul_params": n_matmul, "models": len(models)},
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "matmul_peak_flops_per_s": peak,
        "matmul_peak_samples": peaks,
        "peak_matmul_size": peak_size,
        "results": results,
        "targets": targets,
    }
    path = write_result("scoring_throughput_quick" if args.quick else "scoring_throughput", record, args.out)

    print()
    print(f"Scoring throughput: {machine_line(record['machine'])}, {device.type} {dtype}; load avg {load_start} -> {record['loadavg_end']}")
    print(
        f"2 Llama models {args.hidden}x{args.layers}, vocab {args.vocab} ({n_matmul / 1e6:.1f}M matmul params each); "
        f"{args.rows} rows per distribution; token budget {args.batch_tokens} (plain: {rows_per_batch} rows/batch); "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s ({peak_size}^3)"
    )
    rows = []
    for kind, r in results.items():
        for name, s in r["impls"].items():
            rows.append([
                f"{kind} (mean {r['row_length']['mean']:.0f}, max {r['row_length']['max']})", name,
                fmt_spread(s["tokens_per_s"], 0), f"{s['tokens_per_s']['median'] / r['impls']['plain']['tokens_per_s']['median']:.2f}x",
                fmt_spread(s["fraction_of_peak"], 2),
            ])  # fmt: skip
    print(table(["lengths", "implementation", "tokens/s", "vs plain", "fraction of matmul peak"], rows))
    print(f"median [min, max] over {args.repeats} repeat(s); tokens through both models.")
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
