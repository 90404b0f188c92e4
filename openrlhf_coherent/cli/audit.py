"""Reward audit before PPO: will the coherent reward be hacked on *my* data?

    python -m openrlhf_coherent.cli.audit --sft_model SFT --base_model BASE \\
        --input demonstrations.jsonl --prompt_key prompt --response_key response \\
        --apply_chat_template --output audit_out/

Each reference response of --input is perturbed in task-agnostic ways (data_tools/perturbations.py:
truncated at 50%/75% of its tokens, last sentence/line/list item dropped, last sentence repeated 1, 3
or 8 times, filler appended, continued past its end by sampling from the SFT model, sentences
shuffled, another prompt's reference swapped in, empty) and by the user's own kinds
(--perturbations file.py). References and perturbations are scored with the evaluator pipeline
(the Ray actors of `score`; scoring.py, fp32 log-probs; the text formed as OpenRLHF's datasets form
it) under the coherent reward as PPO computes it: `--coherent.aggregate sum` and `mean`, each also
with `--coherent.sft_logp_floor` (a response whose per-token log p_SFT is more than F nats below
the references' mean gets the lowest reward of all scored responses, as PPO gives it the lowest of
its rollout batch; PPO anchors on the SFT model's first rollout, the audit on the references).

Per kind and aggregation: the reference's win rate (ties count half), the mean margin r(ref) -
r(perturbed), and the correlation over prompts of the reward change with the length change. The
verdict flags every (aggregation, kind) where the reward prefers the perturbation on more than half
the prompts and names the flags of the aggregation that prefers the fewest.

Writes, into the new folder --output (never an existing non-empty one): audit.json (strict JSON),
audit.md and audit.png (win rate per kind, one bar group per aggregation).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from openrlhf_coherent.config import ConfigError, check_number
from openrlhf_coherent.data_tools import perturbations as P
from openrlhf_coherent.data_tools.common import add_common_args, check_args, check_model_pair, report_bad_rows, run_cli, text_format
from openrlhf_coherent.data_tools.rows import BadRow, Job, _field, bad_row_handler, load_jobs, tokenize_pair
from openrlhf_coherent.files import check_outputs, dumps, model_identity

REFERENCE = "reference"
AGGREGATIONS = ("sum", "mean", "sum+floor", "mean+floor")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m openrlhf_coherent.cli.audit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    add_common_args(p, output_help="Folder to create for audit.json, audit.md, audit.png (must not exist, or be empty)")
    p.add_argument("--sft_model", required=True, help="SFT model (the log p_SFT term; also samples the continuations)")
    p.add_argument("--base_model", required=True, help="Pretrained base model: the log p_base term")
    p.add_argument("--response_key", default="response", help="Field with the reference response (a string)")
    p.add_argument("--perturbations", default=None, help="Python file defining PERTURBATIONS = {'name': f(ref) -> str | (str, finished) | None}")
    p.add_argument("--kinds", default=None, help="Comma-separated built-in kinds to run (default: all)")
    p.add_argument("--sft_logp_floor", type=float, default=0.5, help="F of the floored aggregations (as --coherent.sft_logp_floor)")
    p.add_argument("--continue_tokens", type=int, default=64, help="Tokens the SFT model samples past the reference's end (0: no continue_sft kind)")
    p.add_argument("--flag_below", type=float, default=0.5, help="Flag a kind whose reference win rate is below this (and name the recommendation's close calls, below this + 0.1)")
    p.add_argument("--seed", type=int, default=0)
    return p


def check_output_folder(args) -> None:
    """A new folder, or an empty one; never a folder holding anything (a finished audit, data)."""
    inputs = [(args.input, "--input"), (args.sft_model, "--sft_model"), (args.base_model, "--base_model")]
    if args.perturbations:
        inputs.append((args.perturbations, "--perturbations"))
    check_outputs([(args.output, "--output")], [(p, f) for p, f in inputs if os.path.exists(p)], folders=["--output"])
    if os.path.isdir(args.output) and os.listdir(args.output):
        raise ConfigError(f"--output {args.output}: exists and is not empty; the audit never overwrites: choose a new folder")


def selected_kinds(args) -> Dict[str, object]:
    kinds = dict(P.BUILTIN)
    if args.kinds:
        names = [k for k in args.kinds.split(",") if k]
        unknown = [k for k in names if k not in P.BUILTIN and k != P.CONTINUATION]
        if unknown:
            raise ConfigError(f"--kinds: unknown kinds {unknown}; built-in kinds are {sorted([*P.BUILTIN, P.CONTINUATION])}")
        kinds = {k: v for k, v in kinds.items() if k in names}
        if P.CONTINUATION not in names:
            args.continue_tokens = 0
    if args.perturbations:
        kinds.update(P.load_user_perturbations(args.perturbations))
    return kinds


def response_pair(tokenizer, fmt, row: dict, key: str, content: str, finished: bool, max_len: int, line: int):
    """(prompt_ids, response_ids, truncated) of `content` as the row's response, formed as the
    reference is (chat template, EOS); an empty response is the EOS alone; an unfinished one ends
    without its EOS, like a rollout cut at the generation limit."""
    prompt, response = fmt.texts(tokenizer, {**row, key: content}, content, line)
    eos = tokenizer.eos_token_id
    if not response.replace(tokenizer.eos_token, "").strip():
        prompt_ids, response_ids, truncated = tokenizer(prompt, add_special_tokens=False)["input_ids"], [eos], False
    else:
        prompt_ids, response_ids, truncated = tokenize_pair(tokenizer, prompt, response, max_len, line)
    if not finished:
        while response_ids and response_ids[-1] == eos:
            response_ids = response_ids[:-1]
    return prompt_ids, response_ids, truncated


def build_jobs(args, tokenizer, fmt, kinds) -> Tuple[List[Job], Dict[int, List[str]], List[BadRow]]:
    """One job per row: pair 0 the reference, then one pair per applicable kind (names in `names[line]`)."""
    key = args.response_key

    def make_job(line: int, row: dict) -> Job:
        content = _field(row, key, line)
        if not isinstance(content, str) or not content.strip():
            raise BadRow(line, f"{key!r} must be a non-empty string (the reference response)")
        job = Job(line=line, row=row)
        prompt_ids, response_ids, truncated = response_pair(tokenizer, fmt, row, key, content, True, args.max_len, line)
        job.pairs.append((prompt_ids, response_ids))
        job.truncated.append(truncated)
        return job

    jobs, bad = load_jobs(args.input, make_job, args.on_bad_row)
    report_bad_rows(bad)
    if not jobs:
        raise ConfigError(f"--input {args.input}: no usable row")
    contents = [job.row[key] for job in jobs]
    names: Dict[int, List[str]] = {}
    for job, content in zip(jobs, contents):
        names[job.line] = [REFERENCE]
        ref = P.Reference(job.line, job.row, content, tokenizer, contents, random.Random(args.seed * 1_000_003 + job.line))
        for name, fn in kinds.items():
            out = P.apply(fn, name, ref)
            if out is None:
                continue
            prompt_ids, response_ids, truncated = response_pair(tokenizer, fmt, job.row, key, out[0], out[1], args.max_len, job.line)
            job.pairs.append((prompt_ids, response_ids))
            job.truncated.append(truncated)
            names[job.line].append(name)
    return jobs, names, bad


def add_continuations(pool, args, jobs: Sequence[Job], names: Dict[int, List[str]], eos_id: int) -> None:
    """continue_sft: the reference without its EOS, then what the SFT model samples after it
    (temperature 1, top_p 1, at most --continue_tokens); skipped where it stops at once."""
    prefixes = []
    for job in jobs:
        prompt_ids, response_ids = job.pairs[0]
        prefix = list(response_ids[:-1] if response_ids and response_ids[-1] == eos_id else response_ids)
        prefixes.append(prefix)
    requests = [(args.seed * 1_000_003 + job.line, list(job.pairs[0][0]) + prefix) for job, prefix in zip(jobs, prefixes)]
    samples = pool.sample(
        requests, chunk=8, n=1, max_new_tokens=args.continue_tokens, temperature=1.0, top_p=1.0, rounds=1
    )
    for job, prefix, drawn in zip(jobs, prefixes, samples):
        new = drawn[0] if drawn else []
        if not new or new == [eos_id]:
            continue
        response = prefix + list(new)
        prompt_len = len(job.pairs[0][0])
        job.truncated.append(prompt_len + len(response) > args.max_len)
        job.pairs.append((job.pairs[0][0], response[: max(0, args.max_len - prompt_len)]))  # as references are cut
        names[job.line].append(P.CONTINUATION)


# --- analysis -------------------------------------------------------------------------------


def rewards_by_aggregation(scores: Dict[int, Dict[str, dict]], floor: float) -> Tuple[Dict[str, Dict[int, Dict[str, float]]], float, int]:
    """{aggregation: {line: {kind: reward}}}, the floor's anchor (references' mean per-token
    log p_SFT) and how many responses the floor replaced."""
    def per_token(s):
        return s["numerator_logp"] / max(s["length"], 1)

    anchor = statistics.fmean(per_token(kinds[REFERENCE]) for kinds in scores.values())
    out: Dict[str, Dict[int, Dict[str, float]]] = {}
    floored = 0
    for agg in ("sum", "mean"):
        plain = {
            line: {k: (s["reward"] if agg == "sum" else s["reward"] / max(s["length"], 1)) for k, s in kinds.items()}
            for line, kinds in scores.items()
        }
        out[agg] = plain
        lowest = min(r for kinds in plain.values() for r in kinds.values())
        off = {(line, k) for line, kinds in scores.items() for k, s in kinds.items() if per_token(s) < anchor - floor}
        floored = len(off)
        out[f"{agg}+floor"] = {
            line: {k: (lowest if (line, k) in off else r) for k, r in kinds.items()} for line, kinds in plain.items()
        }
    return out, anchor, floored


def pearson(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    if len(xs) < 3:
        return None
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # a constant series
        return None


def kind_stats(rewards: Dict[int, Dict[str, float]], lengths: Dict[int, Dict[str, int]], kind: str) -> Optional[dict]:
    lines = [line for line, kinds in rewards.items() if kind in kinds]
    if not lines:
        return None
    margins = [rewards[l][REFERENCE] - rewards[l][kind] for l in lines]
    wins = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]
    d_reward = [-m for m in margins]
    d_length = [lengths[l][kind] - lengths[l][REFERENCE] for l in lines]
    corr = pearson(d_reward, d_length)
    return {
        "n": len(lines),
        "win_rate": round(statistics.fmean(wins), 4),
        "mean_margin": round(statistics.fmean(margins), 4),
        "mean_length_change": round(statistics.fmean(d_length), 2),
        "reward_length_corr": None if corr is None else round(corr, 4),
    }


AGGREGATION_FLAGS = {
    "sum": [],
    "mean": ["--coherent.aggregate", "mean"],
    "sum+floor": ["--coherent.sft_logp_floor", "{floor}"],
    "mean+floor": ["--coherent.aggregate", "mean", "--coherent.sft_logp_floor", "{floor}"],
}


def verdict(table: Dict[str, Dict[str, dict]], flag_below: float, floor: float) -> dict:
    """Flags (aggregation, kind) where the reward prefers the perturbation, and the flags of the
    aggregation that prefers the fewest kinds (ties: higher mean win rate; then the simpler one)."""
    preferred = {
        agg: [k for k, s in kinds.items() if s and s["win_rate"] < flag_below] for agg, kinds in table.items()
    }

    def mean_win(agg):
        wins = [s["win_rate"] for s in table[agg].values() if s]
        return statistics.fmean(wins) if wins else 0.5  # no kind applied to any row

    best = min(AGGREGATIONS, key=lambda a: (len(preferred[a]), -mean_win(a), AGGREGATIONS.index(a)))
    best_flags = " ".join(f.format(floor=floor) for f in AGGREGATION_FLAGS[best]) or "the defaults (--coherent.aggregate sum, no floor)"
    lines = []
    for agg in AGGREGATIONS:
        for k in preferred[agg]:
            s = table[agg][k]
            direction = "longer" if s["mean_length_change"] > 0 else "shorter" if s["mean_length_change"] < 0 else "same-length"
            text = f"{agg}: prefers {k} on {round(100 * (1 - s['win_rate']))}% of prompts (a {direction} response"
            text += f", {s['mean_length_change']:+.1f} tokens)"
            if direction == "shorter":
                text += " -> this reward shortens answers"
            elif direction == "longer":
                text += " -> this reward lengthens answers (the repetition hack)"
            if agg != best and k not in preferred[best]:
                text += f"; {best} does not: {best_flags}"
            lines.append(text)
    # Close calls of the recommendation: a reference that wins barely more often than a coin flip
    # is a direction PPO can still move in (few prompts need to tip).
    close = [k for k, st in table[best].items() if st and flag_below <= st["win_rate"] < flag_below + 0.1]
    lines += [
        f"{best}: close call, the reference beats {k} on only {round(100 * table[best][k]['win_rate'])}% of prompts "
        f"({table[best][k]['mean_length_change']:+.1f} tokens)"
        for k in close
    ]
    summary = (
        f"recommended: {best} ({best_flags}); it still prefers {', '.join(preferred[best])}"
        if preferred[best]
        else f"recommended: {best} ({best_flags}); it prefers no perturbation over the reference on most prompts"
    )
    if close:
        summary += f" (close calls: {', '.join(close)})"
    return {"flags": lines, "preferred": preferred, "close_calls": close, "recommended": best, "recommended_flags": best_flags, "summary": summary}


def analyse(scores: Dict[int, Dict[str, dict]], kinds: Sequence[str], truncated: Dict[str, int], args) -> dict:
    rewards, anchor, floored = rewards_by_aggregation(scores, args.sft_logp_floor)
    lengths = {line: {k: s["length"] for k, s in ks.items()} for line, ks in scores.items()}
    table = {agg: {k: kind_stats(rewards[agg], lengths, k) for k in kinds} for agg in AGGREGATIONS}
    overall = {}
    for agg in AGGREGATIONS:
        pairs = [(r, lengths[line][k]) for line, ks in rewards[agg].items() for k, r in ks.items()]
        corr = pearson([p[0] for p in pairs], [p[1] for p in pairs])
        overall[agg] = None if corr is None else round(corr, 4)
    return {
        "tool": "openrlhf_coherent.cli.audit",
        "rows": len(scores),
        "kinds": list(kinds),
        "aggregations": list(AGGREGATIONS),
        "sft_logp_floor": {"value": args.sft_logp_floor, "anchor_per_token_sft_logp": round(anchor, 4), "responses_floored": floored},
        "per_kind": table,
        "reward_length_corr_all_responses": overall,
        "truncated_by_max_len": truncated,
        "verdict": verdict(table, args.flag_below, args.sft_logp_floor),
    }


# --- outputs ------------------------------------------------------------------------------


def markdown(result: dict, plot_name: str) -> str:
    aggs = result["aggregations"]
    out = [
        f"# Reward audit ({result['rows']} prompts)",
        "",
        f"SFT `{result['models']['sft']['path']}`, base `{result['models']['base']['path']}`, input `{result['input']}`.",
        "",
        "Reference win rate per perturbation (ties count half; below 0.5 the reward prefers the perturbation), "
        "mean margin r(ref) - r(perturbed) in brackets:",
        "",
        "| kind | n | " + " | ".join(aggs) + " | length change |",
        "|---|---|" + "---|" * len(aggs) + "---|",
    ]
    for k in result["kinds"]:
        stats = [result["per_kind"][a][k] for a in aggs]
        if not stats[0]:
            out.append(f"| {k} | 0 |" + " - |" * len(aggs) + " - |")
            continue
        cells = [f"{s['win_rate']:.2f} ({s['mean_margin']:+.2f})" for s in stats]
        out.append(f"| {k} | {stats[0]['n']} | " + " | ".join(cells) + f" | {stats[0]['mean_length_change']:+.1f} |")
    v = result["verdict"]
    out += ["", "## Verdict", "", v["summary"], ""] + [f"- {line}" for line in v["flags"]]
    out += ["", f"![win rate per kind]({plot_name})", ""]
    return "\n".join(out)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in result["kinds"] if result["per_kind"]["sum"][k]]
    aggs = result["aggregations"]
    width = 0.8 / len(aggs)
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(kinds) + 2), 4.5))
    for i, agg in enumerate(aggs):
        xs = [j + (i - (len(aggs) - 1) / 2) * width for j in range(len(kinds))]
        ax.bar(xs, [result["per_kind"][agg][k]["win_rate"] for k in kinds], width, label=agg)
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels(kinds, rotation=35, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("reference win rate")
    ax.set_title(f"Coherent reward audit: does the reference beat each perturbation? ({result['rows']} prompts)")
    ax.legend(title="aggregation", fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")  # off the bars
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    text = dumps(result)  # strict JSON: a NaN fails here, before anything is written
    with open(os.path.join(folder, "audit.json"), "x", encoding="utf-8") as f:
        f.write(text + "\n")
    plot(result, os.path.join(folder, "audit.png"))
    with open(os.path.join(folder, "audit.md"), "x", encoding="utf-8") as f:
        f.write(markdown(result, "audit.png"))


# --- the run ------------------------------------------------------------------------------


def run(args) -> dict:
    check_args(args)
    fmt = text_format(args)
    if not fmt.prompt_key:
        raise ConfigError("--prompt_key: the audit needs a prompt field and a reference response field")
    check_number("--sft_logp_floor", args.sft_logp_floor, low=0)
    check_number("--flag_below", args.flag_below, low=0, high=1)
    if args.continue_tokens < 0:
        raise ConfigError(f"--continue_tokens must be >= 0, got {args.continue_tokens}")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # the plot comes last: fail before any scoring
        raise ConfigError("the audit's plot needs matplotlib: pip install matplotlib")
    if not os.path.isfile(args.input):
        raise ConfigError(f"--input {args.input}: no such file")
    check_output_folder(args)
    kinds = selected_kinds(args)
    check_model_pair((args.sft_model, "--sft_model"), (args.base_model, "--base_model"), args.trust_remote_code)

    from transformers import AutoTokenizer

    from openrlhf_coherent.data_tools.runner import ScorerPool, ray_session

    tokenizer = AutoTokenizer.from_pretrained(args.sft_model, trust_remote_code=args.trust_remote_code)
    jobs, names, bad = build_jobs(args, tokenizer, fmt, kinds)
    scores: Dict[int, Dict[str, dict]] = {}
    failed: List[BadRow] = []

    def done(job: Job, s: List[dict]) -> None:
        scores[job.line] = dict(zip(names[job.line], s))

    with ray_session(args.num_actors):
        sampler = args.sft_model if args.continue_tokens else None
        with ScorerPool(
            args.num_actors, args.sft_model, args.base_model,
            batch_tokens=args.batch_tokens, trust_remote_code=args.trust_remote_code, sampler=sampler,
        ) as pool:  # fmt: skip
            if args.continue_tokens:
                add_continuations(pool, args, jobs, names, tokenizer.eos_token_id)
            pool.score(jobs, done, "auditing", on_bad=bad_row_handler(args.input, args.on_bad_row, failed, report=True))
    if not scores:
        raise ConfigError(f"--input {args.input}: every row failed to score")
    all_kinds = [*kinds] + ([P.CONTINUATION] if args.continue_tokens else [])
    truncated = {k: 0 for k in [REFERENCE, *all_kinds]}
    for job in jobs:
        for name, cut in zip(names[job.line], job.truncated):
            truncated[name] += int(cut)
    result = analyse(scores, all_kinds, truncated, args)
    result.update(
        input=args.input,
        models={"sft": model_identity(args.sft_model), "base": model_identity(args.base_model)},
        skipped_bad_rows=[e.line for e in bad + failed],
        settings={k: getattr(args, k) for k in ("max_len", "apply_chat_template", "input_template", "prompt_key", "response_key", "perturbations", "continue_tokens", "seed", "flag_below")},
    )
    write_outputs(result, args.output)
    print(result["verdict"]["summary"])
    for line in result["verdict"]["flags"]:
        print("  " + line)
    print(f"[openrlhf_coherent] audit written to {args.output}/audit.json, audit.md, audit.png", file=sys.stderr)
    return result


def main(argv=None) -> None:
    run_cli(run, argv, parser())


if __name__ == "__main__":
    main()
