"""Before training: does the coherent reward rank correct responses above wrong ones?

For every held-out prompt, a correct response (`world.ideal_response`) is scored against
hand-made wrong ones with r(x, y) = sum over response tokens (EOS included when the response
ends) of log p_SFT(y_t | x, y_<t) - log p_base(y_t | x, y_<t), both fp32 plain transformers at
temperature 1: the sequence-level coherent reward of SRPPO, before any guard or clipping.

Wrong kinds (each the same prompt):
  wrong_category_demo  `count` distinct words of another category the demonstrations use
  wrong_category_new   ... of another category the demonstrations do not use
  count_minus_one  correct category, one item fewer
  count_plus_one   correct category, one item more
  duplicate        `count` items, the last replaced by a repeat of the first
  excluded_word    (prompts with "but not X") one item replaced by X
  all_members      every allowed word of the category (7-8 items), then EOS: a longer list
  overlong_repeat  "a , b , a , b , ..." of the category up to the generation limit, no EOS:
                   the repetition hack of design.md 1.7; expected to win (the guards' job)

Reported per kind and per domain: the fraction of prompts where r(correct) > r(wrong) ("win
rate"; ties count half) and the mean margin r(correct) - r(wrong); also the win rates of the
length-normalised reward (`aggregate="mean"` of `openrlhf_coherent.reward.coherent_reward`,
which computes all of these) and of the SFT log-likelihood alone (what subtracting log p_base
changes).

    python -m demo.reward_check --sft /tmp/demo/sft --base /tmp/demo/base --seed 0

With `--audit OUT` it runs the general reward audit instead (`openrlhf_coherent.cli.audit`) on the
same held-out prompts and correct responses, with the wrong kinds above as a user perturbation file
(demo/audit_perturbations.py) next to the audit's task-agnostic kinds: OUT/audit.json, audit.md,
audit.png; the references it audits are written to OUT.references.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Dict, List, Optional, Sequence, Tuple

import torch

KINDS = ("wrong_category_demo", "wrong_category_new", "count_minus_one", "count_plus_one", "duplicate", "excluded_word", "all_members", "overlong_repeat")


def wrong_responses(spec, correct: str, rng: random.Random, max_tokens: int) -> Dict[str, Tuple[str, bool]]:
    """{kind: (text, finished)} for one prompt; `correct` is its ideal response in the category's
    order (the demonstrations' convention). Wrong lists keep that order where they can, so a
    comparison measures the error, not the order."""
    from demo import world
    from demo.world import CATEGORIES, SEPARATOR

    def ordered(words):
        members = CATEGORIES[spec.category][1]
        return SEPARATOR.join(sorted(words, key=lambda w: members.index(w) if w in members else 0))

    items = correct.split(SEPARATOR)
    extra = [w for w in spec.allowed if w not in items]
    out = {}
    # A wrong category the demonstrations showed, and one they did not: SFT raises the former's
    # words everywhere, the overfitting signature the reward inherits.
    for kind, seen in (("wrong_category_demo", True), ("wrong_category_new", False)):
        pool = [c for c in CATEGORIES if c != spec.category and (c in world.IN_DOMAIN_CATEGORIES) == seen]
        if pool:
            words = CATEGORIES[rng.choice(pool)][1]
            out[kind] = (SEPARATOR.join(sorted(rng.sample(words, spec.count), key=words.index)), True)
    out["count_minus_one"] = (SEPARATOR.join(items[:-1]), True)
    out["count_plus_one"] = (ordered(items + [rng.choice(extra)]), True)
    out["duplicate"] = (SEPARATOR.join(items[:-1] + [items[0]]), True)  # necessarily out of order
    if spec.exclude:
        out["excluded_word"] = (ordered(items[:-1] + [spec.exclude]), True)
    out["all_members"] = (SEPARATOR.join(spec.allowed), True)
    a, b = items[:2]
    out["overlong_repeat"] = (" ".join(([a, ",", b, ","] * max_tokens)[:max_tokens]), False)
    return out


@torch.no_grad()
def score(model, prompt_ids: Sequence[List[int]], contents: Sequence[List[int]], stop_ids: Sequence[int], pad_id: int, batch_size: int = 64):
    """Per response: (log p of each content token (N,), log p of each id in `stop_ids` after j content
    tokens, j = 0..N, shape (N + 1, len(stop_ids))), fp32, temperature 1, right padding."""
    out = []
    stop = torch.tensor(list(stop_ids), dtype=torch.long)
    for lo in range(0, len(contents), batch_size):
        rows = [list(p) + list(c) for p, c in zip(prompt_ids[lo : lo + batch_size], contents[lo : lo + batch_size])]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_id)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for i, row in enumerate(rows):
            start, end = len(prompt_ids[lo + i]), len(row)
            # logits at position t predict token t + 1: content token j is predicted at start - 1 + j
            content_lp = logp[i, start - 1 : end - 1].gather(-1, ids[i, start:end, None]).squeeze(-1)
            out.append((content_lp.clone(), logp[i, start - 1 : end][:, stop].clone()))
    return out


def response_log_probs(model, tokenizer, prompts: Sequence[str], responses: Sequence[Tuple[str, bool]], batch_size: int = 128):
    """Per-token log p(response token | prompt, previous tokens), one 1-D tensor per pair; EOS
    appended when `finished`."""
    from demo.evaluate import render_prompt

    prompt_ids = [render_prompt(tokenizer, p) for p in prompts]
    contents = [
        tokenizer(" " + text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if finished else [])
        for text, finished in responses
    ]
    return [content_lp for content_lp, _ in score(model, prompt_ids, contents, (), tokenizer.pad_token_id, batch_size)]


def reward_check(sft_path: str, base_path: str, specs_in, specs_out, seed: int = 0, max_tokens: Optional[int] = None) -> dict:
    """Win rates of the correct response over each wrong kind, overall / in-domain / out-of-domain."""
    from demo.evaluate import MAX_NEW_TOKENS, load
    from demo.world import ideal_response

    torch.set_num_threads(1)  # tiny models: one thread is as fast, and does not stall on a shared machine
    max_tokens = max_tokens or MAX_NEW_TOKENS
    rng = random.Random(seed + 12345)
    cases = []  # (domain, kind, prompt, correct, wrong)
    for domain, specs in (("in_domain", specs_in), ("out_of_domain", specs_out)):
        for spec in specs:
            correct = ideal_response(spec, rng, ordered=True)
            for kind, wrong in wrong_responses(spec, correct, rng, max_tokens).items():
                cases.append((domain, kind, spec.text, (correct, True), wrong))
    prompts = [c[2] for c in cases] * 2
    responses = [c[3] for c in cases] + [c[4] for c in cases]
    from openrlhf_coherent.reward import coherent_reward

    per_token = {}
    for name, path in (("sft", sft_path), ("base", base_path)):
        model, tokenizer = load(path)
        per_token[name] = response_log_probs(model, tokenizer, prompts, responses)
    pad = torch.nn.utils.rnn.pad_sequence
    action_mask = pad([torch.ones(len(t)) for t in per_token["sft"]], batch_first=True)
    sft_lp, base_lp = pad(per_token["sft"], batch_first=True), pad(per_token["base"], batch_first=True)
    # The project's own reward function: "sum" is the paper's reward, "mean" its length-normalised option.
    scores = {
        "sum": coherent_reward(sft_lp, base_lp, action_mask, aggregate="sum").reward.tolist(),
        "mean": coherent_reward(sft_lp, base_lp, action_mask, aggregate="mean").reward.tolist(),
        "sft_loglik": sft_lp.sum(-1).tolist(),
    }
    reward, n = scores["sum"], len(cases)

    def summary(select) -> dict:
        idx = [i for i, c in enumerate(cases) if select(c)]
        if not idx:
            return {}

        def win(values):
            return round(sum((values[i] > values[n + i]) + 0.5 * (values[i] == values[n + i]) for i in idx) / len(idx), 3)

        return {
            "n": len(idx),
            "win_rate": win(reward),
            "mean_margin": round(sum(reward[i] - reward[n + i] for i in idx) / len(idx), 2),
            "mean_aggregate_win_rate": win(scores["mean"]),
            "sft_loglik_win_rate": win(scores["sft_loglik"]),
        }

    result = {"mean_reward_correct": round(sum(reward[:n]) / n, 2)}
    for domain in ("all", "in_domain", "out_of_domain"):
        result[domain] = {
            kind: summary(lambda c, k=kind, d=domain: c[1] == k and d in ("all", c[0])) for kind in KINDS
        }
    return result


def format_table(result: dict) -> str:
    """Win rates as a small text table: kinds x domains, for the summed reward (with its mean
    margin), the length-normalised one ("mean") and the SFT log-likelihood alone ("sft")."""
    lines = [
        f"{'kind':<20}{'all':>14}{'in-domain':>14}{'out-of-domain':>15}  | mean-aggregate in/out | sft-loglik in/out",
        f"{'':<20}{'(summed coherent reward: win rate, mean margin)':>43}",
    ]
    for kind in KINDS:
        cells = []
        for d in ("all", "in_domain", "out_of_domain"):
            s = result[d].get(kind)
            cells.append(f"{s['win_rate']:.2f} ({s['mean_margin']:+.1f})" if s else "-")
        ind, ood = result["in_domain"].get(kind), result["out_of_domain"].get(kind)
        extra = "   ".join(
            f"{(ind or {}).get(k, float('nan')):.2f} / {(ood or {}).get(k, float('nan')):.2f}"
            for k in ("mean_aggregate_win_rate", "sft_loglik_win_rate")
        )
        lines.append(f"{kind:<20}{cells[0]:>14}{cells[1]:>14}{cells[2]:>15}  |     {extra}")
    return "\n".join(lines)


def write_audit_input(path: str, specs, seed: int = 0) -> str:
    """The held-out prompts with a correct response each (the audit's references) and their spec."""
    from demo.world import ideal_response

    rng = random.Random(seed + 12345)
    with open(path, "x", encoding="utf-8") as f:  # "x": never over an existing file
        for spec in specs:
            row = {"prompt": spec.text, "response": ideal_response(spec, rng, ordered=True), "spec": spec.to_dict()}
            f.write(json.dumps(row) + "\n")
    return path


def audit_argv(sft: str, base: str, references: str, out: str) -> List[str]:
    """The audit command line of the demo world (its chat template, its generation limit)."""
    import os

    from demo.evaluate import MAX_NEW_TOKENS

    perturbations = os.path.join(os.path.dirname(os.path.abspath(__file__)), "audit_perturbations.py")
    return [
        "--sft_model", sft, "--base_model", base, "--input", references, "--output", out,
        "--apply_chat_template", "--perturbations", perturbations, "--continue_tokens", str(MAX_NEW_TOKENS),
    ]  # fmt: skip


def main(argv: Optional[List[str]] = None):
    from demo.world import make_world

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--audit", default=None, help="run openrlhf_coherent.cli.audit into this new folder instead")
    args = parser.parse_args(argv)
    world = make_world(args.seed)
    if args.audit:
        from openrlhf_coherent.cli import audit

        references = write_audit_input(args.audit.rstrip("/") + ".references.jsonl", world.eval_in + world.eval_out, args.seed)
        return audit.main(audit_argv(args.sft, args.base, references, args.audit))
    result = reward_check(args.sft, args.base, world.eval_in, world.eval_out, seed=args.seed)
    print(json.dumps(result, indent=1) if args.json else format_table(result))


if __name__ == "__main__":
    main()
