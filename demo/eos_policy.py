"""Base/SFT pairs whose EOS differ: what should the reward score at a finished response's end?

When the SFT model stops on an id the base does not (Qwen2.5 base `<|endoftext|>` vs Instruct
`<|im_end|>`; Llama-3 base `<|end_of_text|>` vs `<|eot_id|>`), a finished response y = c + EOS
(c: its N content tokens) can be scored three ways:

  exclude   sum over c only (`--coherent.eos_policy exclude`, the only behaviour before this measurement):
            a finished response and the same N tokens truncated get the same reward; the reward says
            nothing about stopping.
  base_eos  sum over c + [log p_SFT(EOS_sft | x, c) - log p_base(EOS_base | x, c)]: each model's own
            probability of stopping there (`--coherent.eos_policy base_eos`, the default it chose).
  sft_eos   sum over c + [log p_SFT(EOS_sft | .) - log p_base(EOS_sft | .)]: the SFT's EOS scored by
            the base as an ordinary token (a base that never learned it gives every finished response
            a near-constant bonus).

The reference, `shared`: the same SFT recipe with the base's own EOS, so nothing differs (the tiny
world only; on SmolLM2 the base copy's weights know `<|im_end|>`, so `sft_eos` is that reference).

Two pairs:

* **tiny** (the demo's world, seed 0): the demo's base, pretrained with `</s>` ending every document;
  SFT `shared` = the demo's SFT (responses end with `</s>`); SFT `swapped` = the same SFT from a copy
  of the base whose tokenizer's EOS is `<s>`, an id pretraining never showed (as Llama-3 base never
  trained `<|eot_id|>`). Scored on the validation prompts (`world.val_in` / `val_out`): the correct
  response against `demo.reward_check`'s wrong kinds, the same response truncated (no EOS), and the
  same response stopped after each earlier token ("premature").
* **SmolLM2** (`--smollm2`): SFT = SmolLM2-135M-Instruct (stops on `<|im_end|>`), base = an
  EOS-swapped copy that stops on `<|endoftext|>` (the pretraining document end), two ways: one that
  only declares it (final norm scaled by 0.8 so the two differ; its weights still end turns with
  `<|im_end|>`), and one fine-tuned briefly to end turns with it (`teach_eos`). Scored on the SFT's
  own finished greedy responses to `demo_real`'s 48 evaluation prompts: finished vs truncated and
  premature stops.
* **PPO** (`--ppo`): SRPPO at the main demo's settings, guarded and paper-faithful, on the tiny pairs
  under each policy, 3 PPO seeds, evaluated on the validation prompts.

Reported: how often the correct (or the SFT's own finished) response scores above each alternative
(ties count half), for the summed reward (the paper's) and the length-normalised one (`mean`), and
the final-position term's mean and spread.

    python -m demo.eos_policy --out eos_policy_out                    # tiny world, under a minute
    python -m demo.eos_policy --out eos_policy_out --ppo --smollm2    # everything (docs/eos_policy.md)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import torch

POLICIES = ("exclude", "base_eos", "sft_eos")


def rewards(sft, base, n: int, finished: bool, policy: str) -> Tuple[float, float]:
    """(summed, length-normalised) reward of the first `n` content tokens, stopped there when
    `finished`. `sft` / `base`: `score` outputs whose stop columns are (SFT's EOS, base's EOS)."""
    total = float((sft[0][:n] - base[0][:n]).sum())
    length = n
    if finished and policy != "exclude":
        base_col = 1 if policy == "base_eos" else 0
        total += float(sft[1][n, 0] - base[1][n, base_col])
        length += 1
    return total, total / max(length, 1)


def win_rate(pairs: Sequence[Tuple[float, float]]) -> Optional[float]:
    """Fraction of (better, worse) pairs where better > worse; ties count half."""
    if not pairs:
        return None
    return round(sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs), 3)


def spread(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": round(statistics.fmean(values), 3), "sd": round(statistics.pstdev(values), 3), "n": len(values)}


def comparisons(cases, scored, policy: str) -> Dict[str, Dict[str, Optional[float]]]:
    """Win rates of each case's correct response over its alternatives, per alternative kind.

    `cases`: [(correct_index, [(kind, index, n_tokens, finished)])] into `scored` (a list of
    (sft, base) score pairs); the correct response is finished, scored at its full length."""
    by_kind: Dict[str, Dict[str, list]] = {}
    for correct, alternatives in cases:
        sft, base = scored[correct]
        good = rewards(sft, base, len(sft[0]), True, policy)
        for kind, index, n, finished in alternatives:
            bad = rewards(*scored[index], n, finished, policy)
            entry = by_kind.setdefault(kind, {"sum": [], "mean": []})
            entry["sum"].append((good[0], bad[0]))
            entry["mean"].append((good[1], bad[1]))
    return {kind: {agg: win_rate(p) for agg, p in v.items()} for kind, v in by_kind.items()}


def stop_terms(cases, scored, policy: str) -> Dict[str, float]:
    """The final-position term of the correct responses under `policy`."""
    values = []
    for correct, _ in cases:
        sft, base = scored[correct]
        n = len(sft[0])
        values.append(rewards(sft, base, n, True, policy)[0] - rewards(sft, base, n, False, policy)[0])
    return spread(values)


def swap_eos(src: str, dst: str, eos_token: str, model=None) -> str:
    """A copy of the model folder `src` at `dst` whose tokenizer, config and generation config stop on
    `eos_token`; `model`: save these weights instead of copying `src`'s."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    if os.path.exists(dst):
        raise FileExistsError(f"{dst} exists: the measurement writes fresh folders only")
    if model is None:
        shutil.copytree(src, dst)
    else:
        model.save_pretrained(dst)
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.eos_token = eos_token
    tokenizer.save_pretrained(dst)
    eos_id = tokenizer.convert_tokens_to_ids(eos_token)
    config = AutoConfig.from_pretrained(dst)
    config.eos_token_id = eos_id
    config.save_pretrained(dst)
    try:
        gen = GenerationConfig.from_pretrained(src)
    except OSError:
        gen = GenerationConfig()
    gen.eos_token_id = eos_id
    gen.save_pretrained(dst)
    return dst


def tiny_cases(world, tokenizer, max_tokens: int):
    """Responses to score and the comparisons between them, on the validation prompts.
    Returns (prompt_texts, contents (token ids), cases, domains) with `cases` as in `comparisons`."""
    from demo.reward_check import wrong_responses
    from demo.world import ideal_response

    rng = random.Random(12345)
    prompts, contents, cases, domains = [], [], [], []

    def add(text, ids):
        prompts.append(text)
        contents.append(ids)
        return len(contents) - 1

    for domain, specs in (("in_domain", world.val_in), ("out_of_domain", world.val_out)):
        for spec in specs:
            correct_text = ideal_response(spec, rng, ordered=True)
            ids = tokenizer(" " + correct_text, add_special_tokens=False)["input_ids"]
            correct = add(spec.text, ids)
            alternatives = [("truncated", correct, len(ids), False)]
            alternatives += [("premature", correct, k, True) for k in range(1, len(ids))]
            for kind, (text, finished) in wrong_responses(spec, correct_text, rng, max_tokens).items():
                wrong = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
                alternatives.append((kind, add(spec.text, wrong), len(wrong), finished))
            cases.append((correct, alternatives))
            domains.append(domain)
    return prompts, contents, cases, domains


def score_pair(sft_path: str, base_path: str, prompts, contents, stop_ids):
    """[(sft scores, base scores)] per response; prompts rendered with each model's own chat template."""
    from demo.evaluate import load, render_prompt
    from demo.reward_check import score

    per_model = []
    for path in (sft_path, base_path):
        model, tokenizer = load(path)
        prompt_ids = [render_prompt(tokenizer, p) for p in prompts]
        per_model.append(score(model, prompt_ids, contents, stop_ids, tokenizer.pad_token_id))
    return list(zip(*per_model))


def run_tiny(out: str, threads: int) -> dict:
    from transformers import AutoTokenizer

    from demo.evaluate import MAX_NEW_TOKENS, evaluate
    from demo.pretrain import pretrain
    from demo.sft import SFTConfig, run_sft
    from demo.world import make_world

    torch.set_num_threads(threads)
    world = make_world(0)
    base = os.path.join(out, "tiny_base")
    pretrain(base, world, seed=0)
    sft_shared = os.path.join(out, "tiny_sft_shared")
    run_sft(base, world.demos, sft_shared, SFTConfig(seed=0))
    # The SFT model with its own EOS: SFT from a copy of the base whose tokenizer ends turns with <s>.
    base_new_eos = swap_eos(base, os.path.join(out, "tiny_base_eos_swapped"), "<s>")
    sft_swapped = os.path.join(out, "tiny_sft_swapped")
    run_sft(base_new_eos, world.demos, sft_swapped, SFTConfig(seed=0))

    tokenizer = AutoTokenizer.from_pretrained(base)
    base_eos, sft_eos = tokenizer.convert_tokens_to_ids("</s>"), tokenizer.convert_tokens_to_ids("<s>")
    sanity = {
        name: {k: v for k, v in evaluate(path, world.val_in, world.val_out).items() if k.startswith(("accuracy", "trunc"))}
        for name, path in (("sft_shared", sft_shared), ("sft_swapped", sft_swapped))
    }
    prompts, contents, cases, domains = tiny_cases(world, tokenizer, MAX_NEW_TOKENS)
    swapped = score_pair(sft_swapped, base, prompts, contents, (sft_eos, base_eos))
    shared = score_pair(sft_shared, base, prompts, contents, (base_eos, base_eos))
    result = {"validation_accuracy": sanity, "models": {"base": base, "sft_shared": sft_shared, "sft_swapped": sft_swapped}, "policies": {}}
    for name, scored, policy in [(p, swapped, p) for p in POLICIES] + [("shared (reference)", shared, "sft_eos")]:
        entry = {}
        for domain in ("in_domain", "out_of_domain"):
            subset = [c for c, d in zip(cases, domains) if d == domain]
            entry[domain] = comparisons(subset, scored, policy)
        entry["stop_term"] = stop_terms(cases, scored, policy)
        result["policies"][name] = entry
    return result


PPO_RUNS = (  # (name, which SFT model, its policy flags): the swapped pair under each policy, and the reference
    ("shared (reference)", "sft_shared", []),
    ("exclude", "sft_swapped", ["--coherent.eos_policy", "exclude"]),
    ("base_eos", "sft_swapped", ["--coherent.eos_policy", "base_eos"]),
)


def run_tiny_ppo(out: str, models: Dict[str, str], seeds: Sequence[int] = (0, 1, 2)) -> dict:
    """SRPPO on the tiny pairs at the main demo's settings (guarded and paper-faithful), on the same
    SFT models with PPO seeds `seeds`: what each policy does to a PPO run, on the validation prompts."""
    from demo.evaluate import evaluate
    from demo.ppo import coherent_reward_flags, run_ppo
    from demo.run import RECOMMENDED_GUARD, DemoSettings
    from demo.world import make_world, write_prompts_jsonl

    world = make_world(0)
    prompts = write_prompts_jsonl(os.path.join(out, "ppo_prompts.jsonl"), world.ppo_prompts)
    cfg = DemoSettings().ppo_config()
    keys = ("accuracy", "accuracy_in_domain", "accuracy_out_of_domain", "truncation_rate", "mean_response_tokens")
    rows = {}
    for reward, guard in (("guarded (mean, floor 0.5)", RECOMMENDED_GUARD), ("unguarded (sum)", [])):
        for name, sft, flags in PPO_RUNS:
            runs = []
            for seed in seeds:
                run_dir = os.path.join(out, f"ppo_{'guarded' if guard else 'unguarded'}_{name.split()[0]}_seed{seed}")
                reward_flags = coherent_reward_flags(models["base"], run_dir, [*guard, *flags])
                result = run_ppo(models[sft], prompts, run_dir, reward_flags, cfg, seed)
                final = evaluate(result.model_path, world.val_in, world.val_out)
                runs.append({k: final[k] for k in keys})
            rows[f"{reward} / {name}"] = {k: spread([r[k] for r in runs]) for k in keys}
    return rows


def teach_eos(model, tokenizer, prompts, contents, eos_id: int, steps: int = 30, batch: int = 4, lr: float = 3e-5) -> None:
    """Fine-tune `model` in place to end these responses with `eos_id` (loss on the response and
    that EOS only): a base that ends its turns with its own EOS, as a pretrained base ends documents."""
    from demo.evaluate import render_prompt

    torch.manual_seed(0)
    rows = [(render_prompt(tokenizer, p), list(c) + [eos_id]) for p, c in zip(prompts, contents)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        chunk = [rows[(step * batch + i) % len(rows)] for i in range(batch)]
        width = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((batch, width), tokenizer.pad_token_id)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros_like(ids)
        for i, (p, r) in enumerate(chunk):  # right padding
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
            mask[i, : len(p) + len(r)] = 1
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def finished_responses(model, tokenizer, prompts, max_new_tokens: int):
    """The SFT model's greedy responses that end with its EOS: (prompts, content token ids)."""
    from demo.evaluate import generate

    kept, contents = [], []
    for prompt, (text, finished, _) in zip(prompts, generate(model, tokenizer, prompts, max_new_tokens, batch_size=16)):
        if finished:  # only a finished response has an end to score
            kept.append(prompt)
            contents.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return kept, contents


def run_smollm2(out: str, threads: int, max_new_tokens: int = 128) -> dict:
    """Two EOS-swapped copies of SmolLM2-135M-Instruct as the base: one that only declares
    <|endoftext|> (final norm x 0.8, so the pair differs; its weights still end turns with
    <|im_end|>, like a base whose EOS never ends a chat turn), and one fine-tuned to end the SFT
    model's own responses (to demo_real's PPO prompts) with <|endoftext|> (like a base that ends
    documents with its own EOS). Scored on the SFT model's finished greedy responses to the 48
    evaluation prompts."""
    from demo.evaluate import load
    from demo_real.run import convert
    from demo_real.world import make_world

    torch.set_num_threads(threads)
    world = make_world(0)
    sft_path = convert(os.path.join(out, "smollm2"))
    model, tokenizer = load(sft_path)
    sft_eos, base_eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eval_prompts, eval_contents = finished_responses(model, tokenizer, [s.text for s in world.eval_prompts], max_new_tokens)
    train_prompts, train_contents = finished_responses(model, tokenizer, [s.text for s in world.ppo_prompts], max_new_tokens)
    with torch.no_grad():
        model.model.norm.weight.mul_(0.8)
    declared = swap_eos(sft_path, os.path.join(out, "smollm2_base_declares_endoftext"), "<|endoftext|>", model=model)
    model, _ = load(sft_path)
    teach_eos(model, tokenizer, train_prompts, train_contents, base_eos)
    trained = swap_eos(sft_path, os.path.join(out, "smollm2_base_trained_endoftext"), "<|endoftext|>", model=model)
    del model

    cases = [(i, [("truncated", i, len(c), False)] + [("premature", i, k, True) for k in range(1, len(c))])
             for i, c in enumerate(eval_contents)]  # fmt: skip
    results = {}
    for label, base_path in (("base declares <|endoftext|>", declared), ("base trained to end turns with <|endoftext|>", trained)):
        scored = score_pair(sft_path, base_path, eval_prompts, eval_contents, (sft_eos, base_eos))
        names = [("exclude", "exclude"), ("base_eos", "base_eos")]
        # The declared-only copy's weights end turns with <|im_end|>: scoring that id is the shared-EOS reward.
        names.append(("sft_eos = shared (reference)" if label.startswith("base declares") else "sft_eos", "sft_eos"))
        entry = {"finished": f"{len(eval_prompts)} of {len(world.eval_prompts)} (taught on {len(train_prompts)})", "policies": {}}
        for name, policy in names:
            entry["policies"][name] = {"all": comparisons(cases, scored, policy), "stop_term": stop_terms(cases, scored, policy)}
        # What the base gives each EOS where the SFT model stopped.
        entry["base_log_p_endoftext_at_end"] = spread([float(b[1][len(b[0]), 1]) for _, b in scored])
        entry["base_log_p_im_end_at_end"] = spread([float(b[1][len(b[0]), 0]) for _, b in scored])
        results[f"smollm2, {label}"] = entry
    return results


KIND_ORDER = ("truncated", "premature", "count_minus_one", "count_plus_one", "all_members", "overlong_repeat",
              "wrong_category_demo", "wrong_category_new", "duplicate", "excluded_word")  # fmt: skip


def distance(entry, reference, domains, kinds, agg: str) -> float:
    """How far a policy's win rates are from the reference's: the mean absolute difference."""
    gaps = [abs(entry[d][k][agg] - reference[d][k][agg]) for d in domains for k in kinds if k in entry[d]]
    return statistics.fmean(gaps)


def format_ppo(rows: dict) -> str:
    n = next(iter(rows.values()))["accuracy"]["n"]
    lines = [f"### tiny, SRPPO at the main demo's settings: validation prompts after 16 steps (mean ± sd of {n} PPO seeds)\n",
             "| reward / policy | accuracy | in-domain | out-of-domain | truncation | mean tokens |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['sd']:.3f}" for k in ("accuracy", "accuracy_in_domain", "accuracy_out_of_domain", "truncation_rate")]
        cells.append(f"{row['mean_response_tokens']['mean']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_tables(result: dict) -> str:
    lines = []
    for world, data in result.items():
        if world == "tiny_ppo":
            lines.append(format_ppo(data))
            continue
        lines.append(f"### {world}\n")
        domains = [d for d in next(iter(data["policies"].values())) if d != "stop_term"]
        header = [k for k in KIND_ORDER if k in next(iter(data["policies"].values()))[domains[0]]]
        for agg in ("sum", "mean"):
            lines.append(f"Win rate of the correct response ({agg} reward); columns: the alternative it is compared with.\n")
            lines.append("| policy | domain | " + " | ".join(header) + " |")
            lines.append("|---|---|" + "---|" * len(header))
            for policy, entry in data["policies"].items():
                for domain in domains:
                    row = [entry[domain].get(k, {}).get(agg) for k in header]
                    lines.append(f"| {policy} | {domain} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in row) + " |")
            lines.append("")
        reference = next((entry for policy, entry in data["policies"].items() if "reference" in policy), None)
        if reference is not None:
            lines.append("Mean |win rate - the reference's win rate| over the cells above (sum / mean reward):\n")
            for policy, entry in data["policies"].items():
                if entry is not reference:
                    gaps = {agg: distance(entry, reference, domains, header, agg) for agg in ("sum", "mean")}
                    lines.append(f"- {policy}: {gaps['sum']:.3f} / {gaps['mean']:.3f}")
            lines.append("")
        lines.append("Final-position term of the correct responses (summed reward, nats): mean, sd\n")
        for policy, entry in data["policies"].items():
            s = entry["stop_term"]
            lines.append(f"- {policy}: {s['mean']:+.2f} (sd {s['sd']:.2f}, n {s['n']})")
        for key in ("validation_accuracy", "base_log_p_endoftext_at_end", "base_log_p_im_end_at_end", "finished"):
            if key in data:
                lines.append(f"- {key}: {json.dumps(data[key])}")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="a new folder for the models and results")
    parser.add_argument("--smollm2", action="store_true", help="also measure SmolLM2-135M-Instruct with an EOS-swapped copy")
    parser.add_argument("--ppo", action="store_true", help="also run SRPPO on the tiny pairs under each policy, 3 PPO seeds (about 10 min)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and os.listdir(args.out):
        parser.error(f"--out {args.out}: not empty; the measurement writes a new folder")
    os.makedirs(args.out, exist_ok=True)
    result = {"tiny": run_tiny(args.out, args.threads)}
    if args.ppo:
        result["tiny_ppo"] = run_tiny_ppo(args.out, result["tiny"]["models"])
    if args.smollm2:
        result.update(run_smollm2(args.out, args.threads))
    with open(os.path.join(args.out, "eos_policy.json"), "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    table = format_tables(result)
    with open(os.path.join(args.out, "eos_policy.md"), "w") as f:
        f.write(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
