"""Held-out evaluation: greedy decoding graded by the world's exact checker.

Prompts are rendered with the model's own chat template (`user : {prompt} assistant :`, no BOS,
as OpenRLHF's SFT and prompt datasets render them), left-padded, and decoded greedily
(`do_sample=False`, temperature 1.0 stated explicitly, `max_new_tokens` limit) with HF `generate`
in fp32. A response that reaches the limit without EOS counts as truncated (and wrong).

    python -m demo.evaluate --model /tmp/demo/sft --seed 0               # the held-out test prompts
    python -m demo.evaluate --model /tmp/demo/sft --seed 0 --split val   # the validation prompts
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import List, Optional, Sequence

import torch

MAX_NEW_TOKENS = 24  # the longest correct response is 4 words + 3 commas + EOS = 8 tokens


def load(model_path: str):
    """(model in fp32 eval mode, tokenizer) from an HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="eager")
    return model.eval(), tokenizer


def render_prompt(tokenizer, text: str) -> List[int]:
    """Token ids of the chat-formatted prompt, exactly as OpenRLHF's datasets tokenize it."""
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tokenizer(chat, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate(model, tokenizer, texts: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 64):
    """Greedy responses: list of (decoded text, finished_with_eos, num_response_tokens)."""
    out = []
    for start in range(0, len(texts), batch_size):
        rows = [render_prompt(tokenizer, t) for t in texts[start : start + batch_size]]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):  # left padding, explicit
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            temperature=1.0,
            top_p=1.0,
            top_k=None,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )[:, width:]
        for row in gen.tolist():
            finished = tokenizer.eos_token_id in row
            n = row.index(tokenizer.eos_token_id) + 1 if finished else len(row)
            text = tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            out.append((text, finished, n))
    return out


def evaluate(model_path: str, specs_in, specs_out, max_new_tokens: int = MAX_NEW_TOKENS, n_examples: int = 6, model=None):
    """Accuracy overall / in-domain / out-of-domain, mean response length (tokens, incl. EOS),
    truncation rate, failure reasons and a few example outputs. `model`: an already loaded
    (model, tokenizer) pair instead of `model_path`."""
    from demo.world import check

    torch.set_num_threads(1)  # tiny models: one thread is as fast, and does not stall on a shared machine
    model, tokenizer = model or load(model_path)
    specs = list(specs_in) + list(specs_out)
    responses = generate(model, tokenizer, [s.text for s in specs], max_new_tokens)
    graded = [check(s, text, finished) for s, (text, finished, _) in zip(specs, responses)]
    n_in = len(specs_in)

    def acc(lo, hi):
        return round(sum(ok for ok, _ in graded[lo:hi]) / max(1, hi - lo), 4)

    examples = []
    for i in list(range(min(n_examples // 2, n_in))) + list(range(n_in, min(n_in + n_examples // 2, len(specs)))):
        examples.append({"prompt": specs[i].text, "response": responses[i][0], "verdict": graded[i][1]})
    return {
        "accuracy": acc(0, len(specs)),
        "accuracy_in_domain": acc(0, n_in),
        "accuracy_out_of_domain": acc(n_in, len(specs)),
        "mean_response_tokens": round(sum(n for _, _, n in responses) / len(responses), 2),
        "truncation_rate": round(sum(not f for _, f, _ in responses) / len(responses), 4),
        "reasons_in_domain": dict(Counter(r for _, r in graded[:n_in])),
        "reasons_out_of_domain": dict(Counter(r for _, r in graded[n_in:])),
        "examples": examples,
    }


def main(argv: Optional[list] = None):
    from demo.world import make_world

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="test: the held-out eval_in/eval_out prompts (final numbers only); "
        "val: the validation prompts val_in/val_out (for choosing settings)",
    )
    args = parser.parse_args(argv)
    specs_in, specs_out = split_specs(make_world(args.seed), args.split)
    print(json.dumps(evaluate(args.model, specs_in, specs_out), indent=1))


def split_specs(world, split: str):
    """(in-domain, out-of-domain) prompts of `split`: "test" (eval_*) or "val" (val_*)."""
    if split == "test":
        return world.eval_in, world.eval_out
    if split == "val":
        return world.val_in, world.val_out
    raise ValueError(f"split must be 'test' or 'val', not {split!r}")


if __name__ == "__main__":
    main()
