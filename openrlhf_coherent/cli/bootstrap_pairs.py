"""Bootstrap on-policy preference pairs (SeRA sec. 3.3) in OpenRLHF's DPO dataset format.

    python -m openrlhf_coherent.cli.bootstrap_pairs --reward implicit --policy_model POLICY --ref_model REF \
        --input prompts.jsonl --output pairs.jsonl --apply_chat_template --num_samples 4 --top_fraction 0.3
    python -m openrlhf.cli.train_dpo --data.dataset pairs.jsonl --data.prompt_key prompt \
        --data.chosen_key chosen --data.rejected_key rejected --data.apply_chat_template ...

For each prompt: sample --num_samples distinct responses from --policy_model (HF generate; vLLM
when installed on a GPU machine, unverified), score each with the reward (implicit: policy vs
reference; coherent: SFT vs base; with --ensemble_model, SeRA's eq. 7 round reward), and pair
the best with the worst; margin = r(best) - r(worst).
Every prompt's samples, rewards and pair go to --candidates (append-only, resumable; default
<output>.candidates.jsonl); the pairs with the largest margins then go to --output whole, as
`prompt`, `chosen`, `rejected` (chat messages with --apply_chat_template, text otherwise),
plus `margin`, `chosen_reward`, `rejected_reward`, `line`. See docs/evaluator.md.
"""

from __future__ import annotations

import argparse
from typing import Dict, List

from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.data_tools.common import (
    add_common_args,
    add_reward_model_args,
    add_selection_args,
    check_args,
    check_files,
    check_model_pair,
    check_sampling,
    check_selection,
    ensemble_kwargs,
    print_summary,
    report_bad_rows,
    reward_models,
    run_cli,
    select,
    text_format,
)
from openrlhf_coherent.data_tools.output import ScoredStream, read_rows, write_rows
from openrlhf_coherent.data_tools.rows import BadRow, Job, bad_row_handler, load_jobs, tokenize_pair
from openrlhf_coherent.data_tools.runner import ScorerPool, ray_session

# Prompts sampled and scored per round: each round's pairs reach --candidates before the next
# round starts, so an interrupted run loses at most one round of work.
PROMPTS_PER_ROUND = 256
PROMPTS_PER_SAMPLE_CALL = 8


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.bootstrap_pairs", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_reward_model_args(p)
    add_selection_args(p, "margin")
    s = p.add_argument_group("sampling")
    s.add_argument("--num_samples", type=int, default=4, help="R distinct responses per prompt (>= 2)")
    s.add_argument("--sample_rounds", type=int, default=3, help="Draw R at a time at most this often to find R distinct ones")
    s.add_argument("--max_new_tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top_p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0, help="A prompt is sampled with seed + its input line number")
    s.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.5, help="GPU share of vLLM's engine (GPU only)")
    p.add_argument("--candidates", default=None, help="Per-prompt samples and rewards (default: <output>.candidates.jsonl)")
    return p


def check_sampler(args, numerator) -> str:
    """The model to sample from: --policy_model (the numerator under --reward implicit), else the SFT model."""
    if args.num_samples < 2:
        raise ConfigError(f"--num_samples must be >= 2 (a pair needs two responses), got {args.num_samples}")
    if args.sample_rounds < 1:
        raise ConfigError(f"--sample_rounds must be >= 1, got {args.sample_rounds}")
    if args.reward == "coherent" and args.policy_model:
        check_model_pair((args.policy_model, "--policy_model"), numerator, args.trust_remote_code)
        return args.policy_model
    return numerator[0]


def response_text(tokenizer, prompt_ids: List[int], response_ids: List[int], chat: bool) -> str:
    """The sample as text that, joined to the prompt again, re-tokenizes as it was generated.
    Chat: the message content (the template adds its own separators). Plain: the decoded
    continuation, with the leading space a separate decode of the response would drop."""
    if chat:
        return tokenizer.decode(response_ids, skip_special_tokens=True).strip()
    prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=True)
    return full[len(prompt) :] if full.startswith(prompt) else tokenizer.decode(response_ids, skip_special_tokens=True)


def best_worst(row: dict, aggregate: str) -> Dict:
    """SeRA 3.3: the pair (argmax r, argmin r) of one prompt's samples and its margin."""
    rewards = row["reward_sums"]
    if aggregate == "mean":
        rewards = [r / max(n, 1) for r, n in zip(rewards, row["lengths"])]
    hi = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    lo = min(range(len(rewards)), key=lambda i: (rewards[i], i))
    return {"chosen": row["samples"][hi], "rejected": row["samples"][lo], "chosen_reward": rewards[hi],
            "rejected_reward": rewards[lo], "margin": rewards[hi] - rewards[lo], "line": row["line"]}  # fmt: skip


def dpo_row(candidate: dict, pair: dict, chat: bool) -> dict:
    """OpenRLHF's preference format (datasets/reward_dataset.py): with a chat template the prompt and
    each response are message lists (it concatenates them before templating), otherwise text."""
    prompt = candidate["prompt"]
    if not chat:
        return {"prompt": prompt, **pair}
    return {
        "prompt": [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt,
        **pair,
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }


def run(args) -> None:
    check_selection(args)
    check_args(args)
    check_sampling(args)
    candidates = args.candidates or args.output + ".candidates.jsonl"
    check_files([(args.input, "--input")], streams=[(candidates, "--candidates")], wholes=[(args.output, "--output")])
    numerator, denominator = reward_models(args)
    sampler = check_sampler(args, numerator)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(numerator[0], trust_remote_code=args.trust_remote_code)
    fmt, chat = text_format(args), args.apply_chat_template
    if not args.prompt_key:
        raise ConfigError("bootstrap-pairs needs --prompt_key (the field with the prompt to sample from)")
    prompt_ids: Dict[int, List[int]] = {}

    def make_job(line: int, row: dict) -> Job:
        ids = tokenizer(fmt.prompt_text(tokenizer, row, line), add_special_tokens=False)["input_ids"]
        if not ids or len(ids) >= args.max_len - 1:
            raise BadRow(line, f"prompt is {len(ids)} tokens, no room for a response within --max_len {args.max_len}")
        prompt_ids[line] = ids
        return Job(line=line, row=row)

    stream = ScoredStream(candidates, "--candidates", ("samples", "reward_sums"))
    already, no_pair = len(stream.done_lines), 0
    with stream:
        prompts, bad = load_jobs(args.input, make_job, args.on_bad_row, skip_lines=stream.done_lines)
        report_bad_rows(bad)
        on_bad = bad_row_handler(args.input, args.on_bad_row, bad, report=True)
        if prompts:  # else nothing left to sample: no Ray, no model loading
            with ray_session(args.num_actors), ScorerPool(
                args.num_actors, numerator[0], denominator[0], batch_tokens=args.batch_tokens,
                trust_remote_code=args.trust_remote_code, sampler=sampler, max_len=args.max_len,
                vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization, **ensemble_kwargs(args),
            ) as pool:  # fmt: skip
                for start in range(0, len(prompts), PROMPTS_PER_ROUND):
                    chunk = prompts[start : start + PROMPTS_PER_ROUND]
                    no_pair += bootstrap_round(args, pool, tokenizer, fmt, chunk, prompt_ids, stream, on_bad)

    rows = read_rows(candidates)
    pairs = [{**best_worst(r, args.aggregate), "_candidate": r} for r in rows if len(r["samples"]) >= 2]
    kept = select(pairs, "margin", args)
    write_rows(args.output, [dpo_row(p.pop("_candidate"), p, chat) for p in kept])
    print_summary(
        "bootstrap-pairs",
        {"already_done": already, "prompts": len(prompts), "skipped_bad_rows": len(bad), "bad_lines": [e.line for e in bad],
         "without_pair_this_run": no_pair, "pairs": len(pairs), "kept": len(kept),
         "min_kept_margin": min((p["margin"] for p in kept), default=None), "reward": args.reward,
         "ensemble_model": args.ensemble_model},
    )  # fmt: skip


def bootstrap_round(args, pool, tokenizer, fmt, prompts: List[Job], prompt_ids, stream, on_bad) -> int:
    """Sample, score and record one round of prompts. Returns how many got fewer than 2 distinct samples."""
    samples = pool.sample(
        [(args.seed + job.line, prompt_ids[job.line]) for job in prompts],
        PROMPTS_PER_SAMPLE_CALL,
        n=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        rounds=args.sample_rounds,
    )
    texts: Dict[int, List[str]] = {}
    to_score, no_pair = [], 0
    for job, drawn in zip(prompts, samples):
        distinct = []
        for ids in drawn:
            text = response_text(tokenizer, prompt_ids[job.line], ids, args.apply_chat_template)
            if text.strip() and text not in distinct:  # an empty response cannot be a DPO response
                distinct.append(text)
        texts[job.line] = distinct
        if len(distinct) < 2:
            no_pair += 1  # recorded as done, with its samples, so a re-run does not redraw it
            stream.write(candidate_row(job, args.prompt_key, distinct, []))
            continue
        candidate = Job(line=job.line, row=job.row)
        for text in distinct:
            prompt, response = fmt.texts(tokenizer, job.row, text, job.line)
            ids_p, ids_r, truncated = tokenize_pair(tokenizer, prompt, response, args.max_len, job.line)
            candidate.pairs.append((ids_p, ids_r))
            candidate.truncated.append(truncated)
        to_score.append(candidate)
    pool.score(to_score, lambda job, s: stream.write(candidate_row(job, args.prompt_key, texts[job.line], s)), on_bad=on_bad)
    return no_pair


def candidate_row(job: Job, prompt_key: str, texts: List[str], scores: List[dict]) -> dict:
    return {
        "line": job.line,
        "prompt": job.row[prompt_key],
        "samples": texts,
        "reward_sums": [s["reward"] for s in scores],
        "lengths": [s["length"] for s in scores],
        "truncated": list(job.truncated),
    }


def main(argv=None) -> None:
    run_cli(run, argv, parser())


if __name__ == "__main__":
    main()
