"""The coherent actor's forward against OpenRLHF's, on one micro-batch of experience.

    python -m benchmarks.reward_forward --device cuda     # Llama-3-8B's shape (the default on CUDA)
    python -m benchmarks.reward_forward                   # on a CPU: a 512x4 model, vocabulary 16000
    python -m benchmarks.reward_forward --quick           # smoke run

Both compute the same per-token response log-probs (checked first) on a micro-batch built the way
OpenRLHF 0.11.2 builds it: one unpadded [prompt | response] row per sample, concatenated by its
`Experience.concat_experiences` (right-padded), `action_mask` over `sequences[:, 1:]`:

  openrlhf forward   `openrlhf.models.Actor(model)(sequences, action_mask, attention_mask)`: what the
                     reference model runs, and what the coherent actor ran before: fp32 logits for
                     every position and the whole vocabulary
  coherent actor     `scoring.action_log_probs`: the same model call with `logits_to_keep` from the
                     batch's first response position (its shortest prompt), fp32 one row at a time

For each (prompt, response) length the table gives the time per forward (median [min, max] over
round-robin repeats, after a warm-up) and the peak memory the forward adds above the weights
(`torch.cuda.max_memory_allocated`; CUDA only). Prompt lengths vary by row (uniform on 1/2..1 of
the given length); responses have the given length. Without flash-attn installed, OpenRLHF's
forward computes its log-probs with its own fallback (gather and logsumexp) rather than
flash-attn's cross-entropy kernel: the JSON records whether flash-attn was installed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.common import fmt_spread, loadavg, machine, machine_line, spread, table, write_result
from benchmarks.scoring_throughput import build_model, sync
from openrlhf_coherent.scoring import action_log_probs, first_response_position


def experience(rows: int, prompt: int, response: int, vocab: int, device, seed: int = 0):
    """One micro-batch as OpenRLHF 0.11.2 makes it: per-sample rows, right-padded by its own
    `Experience.concat_experiences`. Returns (sequences, attention_mask, action_mask)."""
    from openrlhf.trainer.ppo_utils.experience import Experience

    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(rows):
        p = int(torch.randint(prompt // 2, prompt + 1, (1,), generator=g))
        sequences = torch.randint(4, vocab, (1, p + response), generator=g)
        action_mask = torch.tensor([[0] * (p - 1) + [1] * response])  # over sequences[:, 1:]
        samples.append(Experience(sequences=sequences, attention_mask=torch.ones_like(sequences), action_mask=action_mask))
    batch = Experience.concat_experiences(samples, pad_token_id=0)
    return batch.sequences.to(device), batch.attention_mask.to(device), batch.action_mask.to(device)


def measure(fn, device):
    """Seconds and the peak memory (bytes) the call adds to what was allocated before it."""
    sync(device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) - before if cuda else None
    del out
    return seconds, peak


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: a small model, one length, 1 repeat")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    # Model shape: Llama-3-8B's on CUDA; on a CPU, the scorer benchmark's 512x4 with a 16k vocabulary.
    p.add_argument("--vocab", type=int, default=None, help="default: 128256 on CUDA, 16000 on CPU")
    p.add_argument("--hidden", type=int, default=None, help="default: 4096 on CUDA, 512 on CPU")
    p.add_argument("--layers", type=int, default=None, help="default: 32 on CUDA, 4 on CPU")
    p.add_argument("--intermediate", type=int, default=None, help="default: 14336 on CUDA, 8/3 x hidden on CPU")
    p.add_argument("--heads", type=int, default=None, help="query heads: default 32 on CUDA, hidden / 64 on CPU")
    p.add_argument("--kv_heads", type=int, default=None, help="default: 8 on CUDA, one per query head on CPU")
    p.add_argument("--rows", type=int, default=8, help="rows per micro-batch (--rollout.micro_batch_size)")
    p.add_argument("--lengths", default="1024:256,512:512,256:1024,2048:512", help="prompt:response pairs, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    on_cuda = torch.device(args.device).type == "cuda"
    for name, cuda_default, cpu_default in (("vocab", 128256, 16000), ("hidden", 4096, 512), ("layers", 32, 4),
                                            ("intermediate", 14336, None), ("kv_heads", 8, None), ("heads", 32, None)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, cuda_default if on_cuda else cpu_default)
    if args.quick:
        args.vocab, args.hidden, args.layers, args.intermediate, args.kv_heads, args.heads = 2000, 128, 2, 256, 1, 2
        args.rows, args.lengths, args.repeats = 4, "48:16", 1
    try:
        lengths = [tuple(int(x) for x in pair.split(":")) for pair in args.lengths.split(",")]
    except ValueError:
        lengths = []
    if not lengths or not all(len(pair) == 2 and min(pair) >= 2 for pair in lengths):
        p.error(f"--lengths must be prompt:response pairs of at least 2 tokens each, got {args.lengths!r}")
    from openrlhf_coherent import devmode

    devmode.install_import_stand_ins()  # OpenRLHF imports flash_attn (and vllm) at import time
    from openrlhf.models import Actor

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    load_start = loadavg()
    model = build_model(args.vocab, args.hidden, args.layers, 0, device, dtype, args.intermediate, args.kv_heads, args.heads)
    model.config.use_cache = False  # as OpenRLHF's Actor sets it when it loads a model itself
    actor = Actor(model, temperature=1.0)  # the reference model's wrapper, around an existing model
    actor.packing_samples = False  # set by Actor's loading branch only; padded rows, like the coherent actor
    impls = {  # each takes (sequences, attention_mask, action_mask), as `experience` returns them
        "openrlhf forward": lambda sequences, attention_mask, action_mask: actor(sequences, action_mask, attention_mask),
        "coherent actor": lambda sequences, attention_mask, action_mask: action_log_probs(model, sequences, attention_mask, action_mask),
    }

    results = {}
    with torch.no_grad():
        for prompt, response in lengths:
            batch = experience(args.rows, prompt, response, args.vocab, device)
            # Correctness and warm-up: both give the same log-probs on response positions. In bf16
            # the smaller head matmul may round differently (a few hundredths of a nat at most seen).
            want, got = (impl(*batch).float() for impl in impls.values())
            max_diff = float((got - want).abs().max())
            if not max_diff <= (1e-4 if dtype == torch.float32 else 0.05):  # `not <=`: a NaN fails too
                sys.exit(f"{prompt}:{response}: the coherent actor's log-probs differ from OpenRLHF's forward by up to {max_diff:.3g}")
            del want, got
            first = first_response_position(batch[2])
            samples = {name: {"seconds": [], "peak_bytes": []} for name in impls}
            for _ in range(args.repeats):
                for name, impl in impls.items():
                    seconds, peak = measure(lambda: impl(*batch), device)
                    samples[name]["seconds"].append(seconds)
                    if peak is not None:
                        samples[name]["peak_bytes"].append(peak)
            results[f"{prompt}:{response}"] = {
                "width": batch[0].size(1),
                "logit_positions": {"openrlhf forward": batch[0].size(1), "coherent actor": batch[2].size(1) + 1 - first},
                "max_abs_diff": max_diff,
                "impls": {
                    name: {"seconds": spread(s["seconds"]), "peak_gib": max(s["peak_bytes"]) / 2**30 if s["peak_bytes"] else None}
                    for name, s in samples.items()
                },
            }  # fmt: skip
            print(f"{prompt}:{response} done", flush=True)

    record = {
        "benchmark": "reward_forward",
        "command": " ".join(["python -m benchmarks.reward_forward", *(sys.argv[1:] if argv is None else argv)]),
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"dtype": str(dtype)},
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "results": results,
    }
    path = write_result("reward_forward_quick" if args.quick else "reward_forward", record, args.out)

    print()
    print(f"Reward forward: {machine_line(record['machine'])}, {device.type} {dtype}; load avg {load_start} -> {record['loadavg_end']}")
    print(f"Llama {args.hidden}x{args.layers}, vocab {args.vocab}; {args.rows} rows per micro-batch; {args.repeats} repeats")
    rows = []
    for lengths_key, r in results.items():
        base = r["impls"]["openrlhf forward"]
        for name, s in r["impls"].items():
            peak = f"{s['peak_gib']:.2f}" if s["peak_gib"] is not None else "n/a"
            speed_up = base["seconds"]["median"] / s["seconds"]["median"]
            rows.append([lengths_key, name, r["logit_positions"][name], fmt_spread(s["seconds"], 4), f"{speed_up:.2f}x", peak])
    print(table(["prompt:response", "forward", "positions with logits", "seconds", "speed-up", "peak GiB above weights"], rows))
    print("max |log-prob difference| between the two:", ", ".join(f"{k} {r['max_abs_diff']:.2g}" for k, r in results.items()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
