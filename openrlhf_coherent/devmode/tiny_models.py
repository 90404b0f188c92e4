"""Tiny local models and tokenizers for tests, examples and smoke runs (no model hub needed).

`make_tiny_llama(path)` writes a randomly initialised Llama-style causal LM and a word-level
tokenizer to a folder in the standard Hugging Face layout (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json), so the code under test loads it exactly like a user's
model: `AutoModelForCausalLM.from_pretrained(path)`.

`finetune_copy(src, dst)` trains a copy a few steps on some text: two models that share a
tokenizer but differ, i.e. a "base" and an "SFT" model for the coherent reward.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]

# A small closed vocabulary: every word the tests, examples and prompts use.
DEFAULT_WORDS = (
    "the a an is are was of to and in on for with what which who how many much name color "
    "red green blue yellow black white cat dog bird fish tree house sun moon star river "
    "one two three four five six seven eight nine ten zero answer question user assistant "
    "say hello hi yes no please tell me write short long word words sentence story about "
    "big small happy sad fast slow good bad first last number count list add plus minus "
    "equals : . , ? ! ( ) -"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'user : ' + message['content'] + ' assistant :' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


def build_tokenizer(words: Sequence[str] = DEFAULT_WORDS, model_max_length: int = 512):
    """A word-level tokenizer (whitespace + punctuation split) wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=model_max_length,
        padding_side="left",
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def make_tiny_llama(
    path: str,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    words: Sequence[str] = DEFAULT_WORDS,
) -> str:
    """Write a random tiny Llama + tokenizer to `path` (safetensors). Returns `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(words, model_max_length=max_position_embeddings)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def finetune_copy(src: str, dst: str, texts: Iterable[str], *, steps: int = 20, lr: float = 3e-3, seed: int = 0) -> str:
    """Fine-tune a copy of the model at `src` on `texts` for a few steps and save it to `dst`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    texts = list(texts)
    for step in range(steps):
        batch = tokenizer(
            [texts[(step + i) % len(texts)] + tokenizer.eos_token for i in range(4)],
            return_tensors="pt",
            padding=True,
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.save_pretrained(dst, safe_serialization=True)
    tokenizer.save_pretrained(dst)
    return dst


# Prompt/response demonstrations in OpenRLHF's SFT format (`--data.input_key input
# --data.output_key output --data.apply_chat_template`): stage 1 of the tiny recipe trains on them.
DEMONSTRATIONS = [
    ("what is the color of the sun ?", "the sun is yellow ."),
    ("say hello", "hello !"),
    ("how many legs has a dog ?", "a dog has four ."),
    ("name a big river", "the big river is blue ."),
    ("what is two plus two ?", "two plus two is four ."),
    ("count to three", "one , two , three ."),
    ("tell me a short story", "a cat and a dog are happy ."),
    ("name a color", "the color is green ."),
]


def write_demonstrations(path: str) -> str:
    """Write DEMONSTRATIONS as JSONL rows {"input", "output"} to `path`. Returns `path`."""
    import json

    with open(path, "w") as f:
        f.writelines(json.dumps({"input": p, "output": r}) + "\n" for p, r in DEMONSTRATIONS)
    return path


def main(argv=None) -> None:
    """`python -m openrlhf_coherent.devmode.tiny_models OUT_DIR`: write OUT_DIR/base, OUT_DIR/sft,
    OUT_DIR/prompts.jsonl and OUT_DIR/demos.jsonl, the smallest inputs an SRPPO command line (or the
    whole recipe, examples/configs/tiny_cpu.yaml) can run on (CPU examples)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    demos = [
        "user : what is the color of the sun ? assistant : the sun is yellow .",
        "user : say hello assistant : hello !",
        "user : how many legs has a dog ? assistant : a dog has four .",
        "user : name a big river assistant : the big river is blue .",
    ]
    base = make_tiny_llama(os.path.join(args.out_dir, "base"))
    finetune_copy(base, os.path.join(args.out_dir, "sft"), demos, steps=30)
    prompts = ["what is the color of the sun ?", "say hello", "how many legs has a dog ?", "name a big river",
               "tell me a short story", "what is two plus two ?", "write a long sentence", "count to three"]  # fmt: skip
    with open(os.path.join(args.out_dir, "prompts.jsonl"), "w") as f:
        f.writelines(json.dumps({"input": p}) + "\n" for p in prompts)
    write_demonstrations(os.path.join(args.out_dir, "demos.jsonl"))
    print(f"wrote {args.out_dir}/base, {args.out_dir}/sft, {args.out_dir}/prompts.jsonl, {args.out_dir}/demos.jsonl")


if __name__ == "__main__":
    main()
