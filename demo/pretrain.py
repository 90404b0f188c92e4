"""Stage 0: "pretrain" the demo's base model from scratch on the world's prose corpus.

A word-level tokenizer (`openrlhf_coherent.devmode.tiny_models.build_tokenizer`: chat template
"user : {content} assistant :", EOS `</s>`, no BOS) over `demo.world.vocabulary()`, and a small
Llama-style causal LM trained with plain torch (AdamW, cosine schedule) on `world.corpus`, one
document per row, each ending in EOS. Saved in the Hugging Face layout (config.json,
model.safetensors, tokenizer files), so OpenRLHF and `transformers` load it like any model.

The corpus teaches category membership and the chat frame, never the instruction -> list
behaviour: the base model is the "pretrained policy" whose log-probs the coherent reward subtracts.

    python -m demo.pretrain --out /tmp/demo/base --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch


@dataclass
class PretrainConfig:
    """Model shape and optimisation of the base model (defaults: ~0.4M parameters, ~20 s on 2 cores)."""

    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    steps: int = 500
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    threads: int = 1  # tiny matrices: a second thread only adds synchronisation (and stalls on a shared machine)


def build_demo_tokenizer():
    """The word-level tokenizer over the world's closed vocabulary."""
    from openrlhf_coherent.devmode.tiny_models import build_tokenizer

    from demo.world import vocabulary

    return build_tokenizer(vocabulary(), model_max_length=128)


def pretrain(out_dir: str, world=None, seed: int = 0, config: Optional[PretrainConfig] = None) -> dict:
    """Train the base model on `world.corpus` (default: `make_world(seed)`) and save it to `out_dir`.

    Returns stats: {"wall_s", "final_loss", "num_params", "tokens_seen", "config"}.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from demo.world import make_world

    cfg = config or PretrainConfig()
    world = world or make_world(seed)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    t0 = time.time()

    tokenizer = build_demo_tokenizer()
    docs = [tokenizer(d + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for d in world.corpus]
    assert all(tokenizer.unk_token_id not in d for d in docs), "corpus word missing from the vocabulary"
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
            attn_implementation="eager",
        )
    )
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_at)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    tokens_seen, losses = 0, []
    for step in range(cfg.steps):
        idx = torch.randint(len(docs), (cfg.batch_size,), generator=gen).tolist()
        rows = [docs[i] for i in idx]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        tokens_seen += int(mask.sum())
        losses.append(loss.item())

    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stats = {
        "wall_s": round(time.time() - t0, 2),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "num_params": sum(p.numel() for p in model.parameters()),
        "tokens_seen": tokens_seen,
        "config": asdict(cfg),
    }
    with open(os.path.join(out_dir, "pretrain_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    args = parser.parse_args(argv)
    print(json.dumps(pretrain(args.out, seed=args.seed, config=PretrainConfig(steps=args.steps)), indent=1))


if __name__ == "__main__":
    main()
