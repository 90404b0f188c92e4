"""N-revision inference with an SRPO-trained model (paper sec. 6): sample y_0 from the 0-revision
prompt x, then y_n from the revision prompt R(x, y_{n-1}) for n = 1..N, with the same model.

    python -m openrlhf_coherent.cli.revise --model POLICY --input prompts.jsonl --output revisions.jsonl \\
        --prompt_key prompt --revision_template openrlhf_coherent/templates/srpo/tldr_revision.txt \\
        --generation_template openrlhf_coherent/templates/srpo/tldr_generation.txt \\
        --num_revisions 5 --temperature 0.7 --top_p 1.0 --seed 0 --max_new_tokens 128 \\
        [--pick_by coherent --sft_model SFT --base_model BASE]

Text is formed by srpo.templates.TextFormat, the code train_srpo trains with, so pass the same
template files and the same --apply_chat_template / --prompt_key as in training. Writes every
input row plus `line`, `revisions` (the texts y_0..y_N) and `revision_tokens`; with
`--pick_by coherent`, also `coherent_rewards` (log p_SFT(y_n|x) - log p_base(y_n|x) of each
revision as an answer to x, `--pick_aggregate` sum or mean), `best_revision` (its index) and
`best`. Sampling: vLLM when it and CUDA are available (UNVERIFIED here), else HF `generate`
(data_tools/sampling.py); revision n of the prompt on input line L uses seed
`--seed + L * (N + 1) + n`, so a row's revisions do not depend on the other rows.
Input rows are checked (missing/empty prompt, with line number) before any model loads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import List, Optional, Sequence

from openrlhf_coherent.config import ConfigError, check_causal_lm, exit_status
from openrlhf_coherent.data_tools.output import write_rows
from openrlhf_coherent.data_tools.rows import BadRow, check_messages, read_jsonl, tokenize_pair
from openrlhf_coherent.files import non_finite
from openrlhf_coherent.srpo.templates import TEMPLATE_DIR, TextFormat, load_template


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.revise", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the SRPO-trained policy (generates and revises)")
    p.add_argument("--input", required=True, help="JSONL with a prompt per line")
    p.add_argument("--output", required=True, help="JSONL to write (rewritten whole; an existing file must be one of ours)")
    p.add_argument("--prompt_key", default="prompt")
    p.add_argument("--apply_chat_template", action="store_true", help="prompts through the tokenizer's chat template")
    p.add_argument("--revision_template", required=True, help=f"file with {{prompt}} and {{completion}} (see {TEMPLATE_DIR})")
    p.add_argument("--generation_template", default=None, help="file with {prompt}: the 0-revision prompt (plain text only)")
    p.add_argument("--num_revisions", type=int, default=1, help="N: revisions after y_0")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, required=True, help="sampling temperature (> 0)")
    p.add_argument("--top_p", type=float, required=True, help="nucleus sampling (0, 1]")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--pick_by", default="none", choices=["none", "coherent"],
                   help="coherent: also score every revision with the coherent reward and pick the best")
    p.add_argument("--sft_model", default=None, help="SFT model (--pick_by coherent)")
    p.add_argument("--base_model", default=None, help="pretrained base model (--pick_by coherent)")
    p.add_argument("--pick_aggregate", default="sum", choices=["sum", "mean"], help="coherent reward per revision: sum or per-token mean")
    p.add_argument("--max_len", type=int, default=2048, help="scoring: max prompt+response tokens; vLLM max_model_len")
    p.add_argument("--batch_tokens", type=int, default=16384, help="scoring: padded tokens per forward")
    p.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.8)
    p.add_argument("--trust_remote_code", action="store_true", help="allow custom model code from the model folders")
    return p


def check_args(args) -> TextFormat:
    from openrlhf_coherent.data_tools.common import check_files, check_sampling

    if args.num_revisions < 0:
        raise ConfigError(f"--num_revisions must be >= 0, got {args.num_revisions}")
    check_sampling(args)
    if args.batch_tokens < 1 or args.max_len < 2:
        raise ConfigError("--batch_tokens must be >= 1 and --max_len >= 2")
    # Before any generation: a bad --output must not cost the whole run.
    check_files([(args.input, "--input")], wholes=[(args.output, "--output")])
    revision = load_template(args.revision_template, "--revision_template", revision=True)
    input_template = None
    if args.generation_template:
        if args.apply_chat_template:
            raise ConfigError("--generation_template is for plain-text prompts; with --apply_chat_template the chat template forms the prompt")
        input_template = load_template(args.generation_template, "--generation_template", revision=False).as_input_template()
    check_causal_lm(args.model, "--model", args.trust_remote_code)
    if args.pick_by == "coherent":
        from openrlhf_coherent.data_tools.common import check_model_pair

        for flag in ("--sft_model", "--base_model"):
            if not getattr(args, flag[2:]):
                raise ConfigError(f"--pick_by coherent needs {flag}")
        check_model_pair((args.sft_model, "--sft_model"), (args.base_model, "--base_model"), args.trust_remote_code)
    return TextFormat(revision, args.apply_chat_template, input_template)


def read_prompts(args, fmt: TextFormat) -> List[dict]:
    """Every input row, checked (and its 0-revision context formed) before any model loads."""
    rows = []
    for line, row in read_jsonl(args.input):
        try:
            if isinstance(row, BadRow):
                raise row
            prompt = row.get(args.prompt_key)
            if prompt is None:
                raise BadRow(line, f"missing key {args.prompt_key!r} (--prompt_key)")
            if args.apply_chat_template and not isinstance(prompt, str):
                check_messages(prompt, line, f"{args.prompt_key!r}")
            elif not isinstance(prompt, str):
                raise BadRow(line, f"{args.prompt_key!r} is not a string (pass --apply_chat_template for chat messages)")
            if not prompt or (isinstance(prompt, str) and not prompt.strip()):
                raise BadRow(line, f"empty prompt in {args.prompt_key!r}")
            fmt.generation_context(prompt, line)
            fmt.revision_context(prompt, "", line)
        except BadRow as e:
            raise ConfigError(f"--input {args.input}: {e}") from None
        rows.append(dict(row, line=line))
    return rows


def make_sampler(args):
    """f(prompt_ids, seed) -> response token ids (EOS included when generated)."""
    from openrlhf_coherent.data_tools.sampling import VllmSampler, hf_sample, real_vllm_available

    kwargs = dict(n=1, rounds=1, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    if real_vllm_available():
        draw = VllmSampler(args.model, trust_remote_code=args.trust_remote_code,
                           gpu_memory_utilization=args.vllm_gpu_memory_utilization, max_model_len=args.max_len).sample
    else:
        from openrlhf_coherent.data_tools.actor import load_model

        model = load_model(args.model, args.trust_remote_code)

        def draw(prompt_ids, **kw):
            return hf_sample(model, prompt_ids, **kw)

    return lambda prompt_ids, seed, eos_ids: next(iter(draw(prompt_ids, seed=seed, eos_ids=eos_ids, **kwargs)), [])


def revise_all(args, fmt: TextFormat, rows: List[dict], tokenizer) -> None:
    draw = make_sampler(args)
    eos_ids = [tokenizer.eos_token_id]
    n_total = args.num_revisions + 1
    for row in rows:
        prompt = row[args.prompt_key]
        texts, lengths = [], []
        for n in range(n_total):
            context = fmt.generation_context(prompt, row["line"]) if n == 0 else fmt.revision_context(prompt, texts[-1], row["line"])
            prompt_ids = tokenizer(fmt.prompt_text(tokenizer, context), add_special_tokens=False)["input_ids"]
            sample = draw(prompt_ids, args.seed + row["line"] * n_total + n, eos_ids)
            # Unstripped: a leading space is part of the completion as train_dpo data holds it
            # (prompt + completion); revision_context strips it where it fills the template.
            texts.append(tokenizer.decode(sample, skip_special_tokens=True))
            lengths.append(len(sample))
        row["revisions"], row["revision_tokens"] = texts, lengths


def pick_by_coherent(args, fmt: TextFormat, rows: List[dict]) -> None:
    """Score every revision as an answer to x (the 0-revision prompt) with log p_SFT - log p_base."""
    import torch
    from transformers import AutoTokenizer

    from openrlhf_coherent.data_tools.actor import load_model
    from openrlhf_coherent.scoring import response_log_probs

    tokenizer = AutoTokenizer.from_pretrained(args.sft_model, trust_remote_code=args.trust_remote_code)
    pairs, where = [], []
    for r, row in enumerate(rows):
        row["coherent_rewards"] = [None] * len(row["revisions"])
        context = fmt.generation_context(row[args.prompt_key], row["line"])
        for n, text in enumerate(row["revisions"]):
            try:
                prompt_ids, response_ids, _ = tokenize_pair(tokenizer, *fmt.texts(tokenizer, context, text), args.max_len, row["line"])
            except BadRow:  # an empty revision has no reward and is never picked
                continue
            pairs.append((prompt_ids, response_ids))
            where.append((r, n))
    sums = {}
    for path in (args.sft_model, args.base_model):
        model = load_model(path, args.trust_remote_code)
        sums[path] = [lp.sum().item() for lp in response_log_probs(model, pairs, batch_tokens=args.batch_tokens, pad_token_id=tokenizer.pad_token_id)]
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    non_finite_rows = []
    for i, (r, n) in enumerate(where):
        bad = non_finite([(f"log p of {path}", sums[path][i]) for path in (args.sft_model, args.base_model)])
        if bad:  # recorded as no reward (never picked, written as null) and reported below
            non_finite_rows.append(f"line {rows[r]['line']} revision {n}: {bad}")
            continue
        reward = sums[args.sft_model][i] - sums[args.base_model][i]
        rows[r]["coherent_rewards"][n] = reward / len(pairs[i][1]) if args.pick_aggregate == "mean" else reward
    for row in rows:
        scored = [(reward, n) for n, reward in enumerate(row["coherent_rewards"]) if reward is not None and math.isfinite(reward)]
        # Ties go to the earlier revision.
        best = max(scored, key=lambda rn: (rn[0], -rn[1]))[1] if scored else None
        row["best_revision"] = best
        row["best"] = row["revisions"][best] if best is not None else None
    return non_finite_rows


def run(args) -> None:
    from transformers import AutoTokenizer

    fmt = check_args(args)
    rows = read_prompts(args, fmt)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    revise_all(args, fmt, rows, tokenizer)
    non_finite_rows = pick_by_coherent(args, fmt, rows) if args.pick_by == "coherent" else []
    write_rows(args.output, rows)
    summary = {"prompts": len(rows), "num_revisions": args.num_revisions, "output": args.output}
    if args.pick_by == "coherent":
        picked = [row["best_revision"] for row in rows if row["best_revision"] is not None]
        summary["best_revision_counts"] = {str(n): picked.count(n) for n in sorted(set(picked))}
    print(f"[openrlhf_coherent] revise summary: {json.dumps(summary)}")
    if non_finite_rows:  # the revisions are kept (written above); the run still fails, loudly
        raise ConfigError(
            f"non-finite log-probs (NaN/inf) for {len(non_finite_rows)} revisions, written with a null reward to "
            f"{args.output}: " + "; ".join(non_finite_rows[:20])
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
    from openrlhf_coherent.numeric import check_parsed

    p = parser()
    args = p.parse_args(argv)
    return exit_status(lambda: (check_parsed(p, args), run(args)))


if __name__ == "__main__":
    sys.exit(main())
