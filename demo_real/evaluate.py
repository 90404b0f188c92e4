"""Held-out evaluation of the real-model demo: greedy decoding, graded by lm-eval's IFEval checkers.

Prompts are rendered with the model's own chat template (SmolLM2's, which inserts its default
system prompt), exactly as OpenRLHF's PPO prompt path renders them (`demo.evaluate.render_prompt`;
tests/test_real_model.py checks the ids match), left-padded, decoded greedily in fp32 with HF
`generate` (`demo.evaluate.generate`). A response counts as correct when it ends with EOS within
`max_new_tokens` and IFEval's strict test accepts it; the accuracy is reported per group of
instruction kinds (demonstrated, PPO prompts only, held out).

    python -m demo_real.evaluate --model demo_real_out/smollm2
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Dict, List, Optional, Sequence

MAX_NEW_TOKENS = 80  # the longest demonstration is 3 bullet points, about 40 tokens


def evaluate(
    model_path: str,
    specs: Sequence,
    max_new_tokens: int = MAX_NEW_TOKENS,
    threads: int = 2,
    n_examples: int = 2,
) -> Dict:
    """Accuracy overall and per group and kind, mean response tokens (incl. EOS), truncation rate,
    failure reasons and `n_examples` example outputs per group."""
    import torch

    from demo.evaluate import generate, load
    from demo_real.world import GROUPS

    torch.set_num_threads(threads)
    model, tokenizer = load(model_path)
    responses = generate(model, tokenizer, [s.text for s in specs], max_new_tokens, batch_size=64)
    graded = [s.check(text, finished) for s, (text, finished, _) in zip(specs, responses)]

    def acc(idx: List[int]) -> Optional[float]:
        return round(sum(graded[i][0] for i in idx) / len(idx), 4) if idx else None

    out = {"accuracy": acc(list(range(len(specs))))}
    for group, kinds in GROUPS:
        out[f"accuracy_{group}"] = acc([i for i, s in enumerate(specs) if s.group == group])
    out["mean_response_tokens"] = round(sum(n for _, _, n in responses) / len(responses), 2)
    out["truncation_rate"] = round(sum(not f for _, f, _ in responses) / len(responses), 4)
    out["accuracy_by_kind"] = {
        kind: acc([i for i, s in enumerate(specs) if s.kind == kind]) for _, kinds in GROUPS for kind in kinds
    }
    out["reasons"] = dict(Counter(r for _, r in graded))
    examples = []
    for group, _ in GROUPS:
        for i in [i for i, s in enumerate(specs) if s.group == group][:n_examples]:
            examples.append({"prompt": specs[i].text, "response": responses[i][0], "verdict": graded[i][1]})
    out["examples"] = examples
    return out


def main(argv: Optional[list] = None):
    from demo_real.world import make_world

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n_per_group", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    args = parser.parse_args(argv)
    world = make_world(n_eval_per_group=args.n_per_group)
    print(json.dumps(evaluate(args.model, world.eval_prompts, args.max_new_tokens, n_examples=6), indent=1))


if __name__ == "__main__":
    main()
