"""Preference rows -> the six token sequences SRPO scores per pair (see loss.SEQUENCES).

Rows are OpenRLHF's preference format (`--data.prompt_key/chosen_key/rejected_key`, with or
without `--data.apply_chat_template`; without a prompt key, chosen/rejected are whole
conversations whose last message is the completion, as in OpenRLHF's DPO). `SRPODataset` takes
the place of OpenRLHF's `RewardDataset` in `openrlhf.cli.train_dpo` (same constructor), and
tokenizes each of the six (prompt, completion) texts exactly as `RewardDataset` tokenizes DPO's
chosen/rejected: prompt + completion, right-stripped of newlines, " " + EOS unless it ends with
EOS, no special tokens added, cut at --data.max_len with EOS as the last token; the prompt's
token count is the boundary. Pairs whose (revision) prompt leaves fewer than 2 tokens are dropped
and counted, as OpenRLHF drops over-long DPO prompts.

Each item carries its dataset index, so the trainer can look up reference log-probs computed once.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.data_tools.rows import BadRow, read_jsonl

from .loss import SEQUENCES
from .templates import TextFormat, content, load_template

Keys = Tuple[Optional[str], str, str]  # prompt, chosen, rejected


def read_pair(row: dict, keys: Keys, chat: bool, line: int):
    """(prompt, chosen, rejected) of one row; BadRow naming the line for a missing key, an empty
    completion, or a row SRPO cannot build revision prompts for."""
    prompt_key, chosen_key, rejected_key = keys
    for key, flag in ((prompt_key, "prompt_key"), (chosen_key, "chosen_key"), (rejected_key, "rejected_key")):
        if key and row.get(key) is None:
            raise BadRow(line, f"missing key {key!r} (--data.{flag})")
    chosen, rejected = row[chosen_key], row[rejected_key]
    if prompt_key:
        prompt = row[prompt_key]
    elif chat and isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) >= 2 and len(rejected) >= 2:
        # OpenRLHF's DPO without a prompt key: the prompt is the conversation before the last message.
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    else:
        raise BadRow(line, "SRPO's revision prompt needs the prompt: pass --data.prompt_key (or "
                     "--data.apply_chat_template with chosen/rejected conversations)")
    for key, value in ((chosen_key, chosen), (rejected_key, rejected)):
        if not content(value).strip():
            raise BadRow(line, f"empty completion in {key!r}")
    if prompt_key and not content(prompt).strip():
        raise BadRow(line, f"empty prompt in {prompt_key!r}")
    return prompt, chosen, rejected


def six_texts(fmt: TextFormat, tokenizer, prompt, chosen, rejected, line: int) -> List[Tuple[str, str]]:
    """(prompt text, completion text) of the six sequences, in loss.SEQUENCES order."""
    gen = fmt.generation_context(prompt, line)
    after_l = fmt.revision_context(prompt, rejected, line)  # R(x, y_l)
    after_w = fmt.revision_context(prompt, chosen, line)  # R(x, y_w)
    by_name = {
        "w|x": (gen, chosen),
        "l|x": (gen, rejected),
        "w|l": (after_l, chosen),
        "l|w": (after_w, rejected),
        "l|l": (after_l, rejected),
        "w|w": (after_w, chosen),
    }
    return [fmt.texts(tokenizer, *by_name[name]) for name in SEQUENCES]


def check_jsonl(path: str, flag: str, keys: Keys, chat: bool) -> int:
    """Validate a local JSONL preference file before any model loads; returns its row count."""
    rows = 0
    for line, row in read_jsonl(path):
        try:
            if isinstance(row, BadRow):
                raise row
            read_pair(row, keys, chat, line)
        except BadRow as e:
            raise ConfigError(f"{flag} {path}: {e}") from None
        rows += 1
    return rows


class SRPODataset(Dataset):
    """Drop-in for `openrlhf.datasets.RewardDataset(..., is_dpo=True)` in train_dpo's `train()`."""

    def __init__(self, dataset, tokenizer, max_length: int, strategy, input_template=None, is_dpo=True, num_processors=None):
        super().__init__()
        args = strategy.args
        self.tokenizer, self.max_length = tokenizer, max_length
        chat = bool(args.data.apply_chat_template)
        if chat and getattr(args.data, "tokenizer_chat_template", None):
            tokenizer.chat_template = args.data.tokenizer_chat_template
        fmt = TextFormat(load_template(args.srpo.revision_template, "--srpo.revision_template", revision=True), chat, input_template)
        keys = (args.data.prompt_key, args.data.chosen_key, args.data.rejected_key)
        texts = []
        for row_number, row in enumerate(dataset, start=1):
            try:
                texts.append(six_texts(fmt, tokenizer, *read_pair(row, keys, chat, row_number), line=row_number))
            except BadRow as e:
                raise ConfigError(f"--data.dataset row {e.line}: {e.reason}") from None
        self.pairs, dropped = self._tokenize(texts)
        strategy.print(f"[srpo] {len(self.pairs)} pairs x {len(SEQUENCES)} sequences ({dropped} dropped: a prompt "
                       f"or revision prompt left < 2 tokens within --data.max_len {max_length})")

    def _tokenize(self, texts: Sequence[List[Tuple[str, str]]]):
        tok, eos = self.tokenizer, self.tokenizer.eos_token
        flat = [pc for pair in texts for pc in pair]
        joined = []
        for prompt, completion in flat:
            text = (prompt + completion).rstrip("\n")
            joined.append(text if text.endswith(eos) else text + " " + eos)
        common = dict(max_length=self.max_length, truncation=True, add_special_tokens=False)
        ids = tok(joined, **common)["input_ids"] if flat else []
        prompt_lens = [len(p) for p in tok([p for p, _ in flat], **common)["input_ids"]] if flat else []
        pairs, dropped, n = [], 0, len(SEQUENCES)
        for i in range(len(texts)):
            rows = range(i * n, (i + 1) * n)
            if any(prompt_lens[r] >= self.max_length - 2 for r in rows):
                dropped += 1
                continue
            # The last token is EOS even when the text was cut (as RewardDataset does).
            pairs.append([(ids[r][:-1] + [tok.eos_token_id], prompt_lens[r]) for r in rows])
        return pairs, dropped

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int):
        return idx, self.pairs[idx]

    def collate_fn(self, items):
        """-> (indices (B,), input_ids (6B, T), attention_mask (6B, T), prompt_lens (6B,)); row
        6b + s is sequence SEQUENCES[s] of pair b; right padding."""
        rows = [seq for _, pair in items for seq in pair]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, _) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[r, : len(ids)] = 1
        indices = torch.tensor([idx for idx, _ in items], dtype=torch.long)
        prompt_lens = torch.tensor([p for _, p in rows], dtype=torch.long)
        return indices, input_ids, attention_mask, prompt_lens
