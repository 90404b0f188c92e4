"""SPIN preference pairs (Chen et al. 2024, one iteration): demonstration vs the SFT model's own sample.

    python -m openrlhf_coherent.cli.spin_pairs --model SFT --input demos.jsonl --input_key input \\
        --output_key output --output pairs.jsonl --apply_chat_template [--temperature 1.0 --top_p 1.0 \\
        --max_new_tokens 256 --seed 0]
    python -m openrlhf.cli.train_dpo --model.model_name_or_path SFT --ref.model_name_or_path SFT \\
        --data.dataset pairs.jsonl --data.prompt_key prompt --data.chosen_key chosen \\
        --data.rejected_key rejected --data.apply_chat_template ...

For each demonstration row, one response is sampled from --model (the SFT model, SPIN's
"opponent") with the prompt formed exactly as OpenRLHF's SFT dataset forms it, and the row becomes
{prompt, chosen = the demonstration, rejected = the sample} in OpenRLHF's preference format (chat
messages with --apply_chat_template, text otherwise), plus `line`. `--output_key ""` reads
conversations: --input_key holds chat messages whose last (assistant) message is the demonstration.

Samples go first to --samples (append-only, resumable: a re-run skips the rows already sampled;
default <output>.samples.jsonl), then --output is written whole. A sample that is empty or equal to
its demonstration gives DPO nothing to learn and is left out (counted in the summary). Sampling
reuses the evaluator's samplers (HF generate; vLLM when installed on a GPU machine, unverified),
one request per prompt, seeded with --seed + the input line number, on --num_actors Ray actors.
"""

from __future__ import annotations

import argparse
from typing import Dict, List

from openrlhf_coherent.cli.bootstrap_pairs import dpo_row, response_text
from openrlhf_coherent.config import ConfigError, check_causal_lm
from openrlhf_coherent.data_tools.common import check_files, check_sampling, print_summary, report_bad_rows, run_cli
from openrlhf_coherent.data_tools.output import ScoredStream, read_rows, write_rows
from openrlhf_coherent.data_tools.rows import ON_BAD_ROW, BadRow, Job, TextFormat, load_jobs
from openrlhf_coherent.data_tools.runner import ScorerPool, ray_session

PROMPTS_PER_ROUND = 256  # each round's samples reach --samples before the next round starts
PROMPTS_PER_SAMPLE_CALL = 8


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.spin_pairs", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="The SFT model: it is sampled from (SPIN's opponent)")
    p.add_argument("--input", required=True, help="Demonstrations JSONL (OpenRLHF SFT format)")
    p.add_argument("--output", required=True, help="Preference pairs JSONL for openrlhf.cli.train_dpo")
    p.add_argument("--input_key", default="input", help="Field with the prompt (or the whole conversation, see --output_key)")
    p.add_argument("--output_key", default="output",
                   help='Field with the demonstration; "" = --input_key holds chat messages ending with it')  # fmt: skip
    p.add_argument("--apply_chat_template", action="store_true", help="Use the tokenizer's chat template, as OpenRLHF does")
    p.add_argument("--input_template", default=None, help="Format string with {} applied to plain-text prompts")
    p.add_argument("--max_len", type=int, default=2048, help="Prompts longer than max_len - 1 tokens are bad rows")
    p.add_argument("--max_samples", type=int, default=None, help="Use only the first N demonstrations")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="A row is sampled with seed + its input line number")
    p.add_argument("--num_actors", type=int, default=1, help="Ray actors, one GPU each (fake GPUs on CPU)")
    p.add_argument("--samples", default=None, help="Per-row samples (default: <output>.samples.jsonl)")
    p.add_argument("--on_bad_row", default="fail", choices=ON_BAD_ROW, help="Malformed row: skip it (reported) or stop")
    p.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.5, help="GPU share of vLLM's engine (GPU only)")
    p.add_argument("--trust_remote_code", action="store_true", help="Allow custom model code from the model folder")
    return p


def split_row(row: dict, line: int, input_key: str, output_key: str):
    """(prompt as given: text or messages, demonstration text) of one input row."""
    if input_key not in row or row[input_key] is None:
        raise BadRow(line, f"missing key {input_key!r}")
    if output_key:
        if output_key not in row or not isinstance(row[output_key], str) or not row[output_key].strip():
            raise BadRow(line, f"missing or empty {output_key!r}")
        return row[input_key], row[output_key]
    messages = row[input_key]
    if not isinstance(messages, list) or len(messages) < 2 or not isinstance(messages[-1], dict):
        raise BadRow(line, f"{input_key!r} must be a conversation of 2+ messages when --output_key is empty")
    last = messages[-1]
    if last.get("role") != "assistant" or not str(last.get("content", "")).strip():
        raise BadRow(line, "the last message must be a non-empty assistant message (the demonstration)")
    return messages[:-1], last["content"]


def run(args) -> None:
    if not args.output_key and not args.apply_chat_template:
        raise ConfigError('--output_key "" (conversations) needs --apply_chat_template')
    if args.num_actors < 1 or args.max_len < 2:
        raise ConfigError("--num_actors must be >= 1 and --max_len >= 2")
    if args.input_template and "{}" not in args.input_template:
        raise ConfigError(f"--input_template {args.input_template!r} has no {{}} for the prompt")
    check_sampling(args)
    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max_samples must be >= 1, got {args.max_samples}")
    samples_path = args.samples or args.output + ".samples.jsonl"
    check_files([(args.input, "--input")], streams=[(samples_path, "--samples")], wholes=[(args.output, "--output")])
    check_causal_lm(args.model, "--model", args.trust_remote_code)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    fmt = TextFormat("prompt", args.apply_chat_template, args.input_template)
    prompt_ids: Dict[int, List[int]] = {}
    allowed = first_lines(args.input, args.max_samples)

    def make_job(line: int, row: dict):
        if allowed is not None and line not in allowed:
            return None  # beyond --max_samples: not read, so not a bad row either
        prompt, demonstration = split_row(row, line, args.input_key, args.output_key)
        ids = tokenizer(fmt.prompt_text(tokenizer, {"prompt": prompt}, line), add_special_tokens=False)["input_ids"]
        if not ids or len(ids) >= args.max_len - 1:
            raise BadRow(line, f"prompt is {len(ids)} tokens, no room for a response within --max_len {args.max_len}")
        prompt_ids[line] = ids
        return Job(line=line, row={"prompt": prompt, "chosen": demonstration})

    stream = ScoredStream(samples_path, "--samples", ("prompt", "chosen", "rejected"))
    already = len(stream.done_lines)
    with stream:
        jobs, bad = load_jobs(args.input, make_job, args.on_bad_row, skip_lines=stream.done_lines)
        jobs = [j for j in jobs if j is not None]
        report_bad_rows(bad)
        if jobs:  # else nothing left to sample: no Ray, no model loading
            with ray_session(args.num_actors), ScorerPool(
                args.num_actors, args.model, args.model, batch_tokens=16384, trust_remote_code=args.trust_remote_code,
                sampler=args.model, max_len=args.max_len, vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            ) as pool:  # fmt: skip
                for start in range(0, len(jobs), PROMPTS_PER_ROUND):
                    sample_round(args, pool, tokenizer, jobs[start : start + PROMPTS_PER_ROUND], prompt_ids, stream)

    rows = [r for r in read_rows(samples_path) if allowed is None or r["line"] in allowed]
    kept = [r for r in rows if r["rejected"].strip() and r["rejected"].strip() != r["chosen"].strip()]
    write_rows(args.output, [dpo_row({"prompt": r["prompt"]}, {"chosen": r["chosen"], "rejected": r["rejected"],
                                                              "line": r["line"]}, args.apply_chat_template)
                             for r in sorted(kept, key=lambda r: r["line"])])  # fmt: skip
    print_summary(
        "spin-pairs",
        {"already_done": already, "sampled_this_run": len(jobs), "skipped_bad_rows": len(bad),
         "bad_lines": [e.line for e in bad], "rows": len(rows), "pairs": len(kept),
         "left_out_empty_or_identical": len(rows) - len(kept)},
    )  # fmt: skip


def first_lines(path: str, n):
    """Line numbers of the first `n` non-blank lines of `path` (None: no limit)."""
    if n is None:
        return None
    found = set()
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if len(found) >= n:
                break
            if text.strip():
                found.add(line)
    return found


def sample_round(args, pool, tokenizer, jobs: List[Job], prompt_ids, stream) -> None:
    """Sample one response per row and record {line, prompt, chosen, rejected} in the samples stream."""
    drawn = pool.sample(
        [(args.seed + job.line, prompt_ids[job.line]) for job in jobs],
        PROMPTS_PER_SAMPLE_CALL,
        n=1,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        rounds=1,
    )
    for job, samples in zip(jobs, drawn):
        text = response_text(tokenizer, prompt_ids[job.line], samples[0], args.apply_chat_template) if samples else ""
        stream.write({"line": job.line, **job.row, "rejected": text})


def main(argv=None) -> None:
    run_cli(run, argv, parser())


if __name__ == "__main__":
    main()
