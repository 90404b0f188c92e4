"""Batched log p(response | prompt) for one causal LM: the one scoring path every tool uses.

`response_log_probs(model, pairs, ...)` returns, for each (prompt_ids, response_ids) pair, the
fp32 per-token log-probs of the response tokens. Three things keep it cheap on skewed data:

- Length-sorted, token-budgeted batches (`plan_batches`): rows of similar length share a batch
  and a batch holds at most `batch_tokens` padded tokens, so little compute goes to padding.
- The LM head and log-softmax run only on the positions that predict a response token. The
  prompt's logits are never formed: for a long prompt and a short answer, that is most of the
  vocabulary-sized matmul (and its memory) saved.
- Log-probs are computed in fp32 from the head's output, whatever dtype the model runs in
  (bf16 on GPUs): a sum over hundreds of bf16 log-probs would lose the differences we rank by.

`action_log_probs(model, sequences, attention_mask, action_mask)` is the coherent-reward Ray
actor's version on OpenRLHF's experience tensors: one whole-model call that asks for the logits
of the response window only (`logits_to_keep`), so it also runs under ZeRO-3 and keeps any logit
transform of the model.

Rows are right-padded with explicit attention masks, so each real token keeps the position ids it
has unpadded, and the result of a row does not depend on which rows share its batch.
"""

from __future__ import annotations

import inspect
from typing import List, Optional, Sequence, Tuple

import torch

Pair = Tuple[Sequence[int], Sequence[int]]  # (prompt_ids, response_ids)


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> List[List[int]]:
    """Group row indices into batches of at most `batch_tokens` padded tokens, longest rows first.

    Sorting by length makes every row in a batch about as long as the longest one, which is what
    the padded cost (rows x longest row) charges for. Longest first: an out-of-memory batch shows
    up at the start of a run rather than hours in. A row longer than the budget gets a batch alone.
    """
    if batch_tokens <= 0:
        raise ValueError(f"batch_tokens must be > 0, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: List[List[int]] = []
    for i in order:
        # The batch's first row is its longest, so the padded cost is that length x rows.
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier", "output_multiplier_scale")


def logit_transform(config) -> Optional[str]:
    """The config field that transforms the logits after the LM head, or None. The driver checks it
    on the config (evaluator.common.check_model_pair) before any actor loads the model."""
    return next((name for name in LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1.0)), None)


def check_plain_lm_head(model) -> None:
    """The head-on-response-positions path calls the decoder and the output embedding separately,
    so it is only exact for models whose logits are that linear layer's output."""
    config = model.config
    name = logit_transform(config)
    if name:
        raise NotImplementedError(
            f"{config.model_type}: config.{name} transforms the logits after the LM head; "
            "openrlhf_coherent.scoring computes logits as decoder -> output embedding only"
        )
    if model.base_model is model:
        raise NotImplementedError(f"{type(model).__name__}: no separate decoder (base_model_prefix) to run")


@torch.no_grad()
def response_log_probs(
    model,
    pairs: Sequence[Pair],
    *,
    batch_tokens: int = 16384,
    pad_token_id: Optional[int] = None,
    head_chunk: int = 4096,
) -> List[torch.Tensor]:
    """Per-token log p(response_j | prompt, response_<j) of each pair, fp32 on the CPU, in input order.

    model: a Hugging Face causal LM (`model.base_model` the decoder, `get_output_embeddings()` the
        head), on the device it should run on, in eval mode.
    pairs: (prompt_ids, response_ids); prompts must be non-empty (the first response token needs a
        position to be predicted from).
    batch_tokens: the padded-token budget of one forward (see `plan_batches`).
    head_chunk: response positions sent through the head at once: bounds the fp32 logits
        buffer to head_chunk x vocab, whatever the batch size.
    """
    check_plain_lm_head(model)
    for prompt, _ in pairs:
        if len(prompt) == 0:
            raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    pad = 0 if pad_token_id is None else pad_token_id
    decoder, head = model.base_model, model.get_output_embeddings()

    results: List[Optional[torch.Tensor]] = [None] * len(pairs)
    lengths = [len(p) + len(r) for p, r in pairs]
    for batch in plan_batches(lengths, batch_tokens):
        width = lengths[batch[0]]
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, i in enumerate(batch):
            prompt, response = pairs[i]
            ids = torch.tensor(list(prompt) + list(response), dtype=torch.long)
            input_ids[b, : len(ids)] = ids
            attention_mask[b, : len(ids)] = 1
            # Hidden state at position t predicts token t+1: the response's tokens
            # [p, p+r) are predicted from positions [p-1, p+r-1).
            p, r = len(prompt), len(response)
            rows.append(torch.full((r,), b, dtype=torch.long))
            cols.append(torch.arange(p - 1, p + r - 1))
            targets.append(ids[p:])
        hidden = decoder(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
        ).last_hidden_state
        picked = hidden[torch.cat(rows).to(device), torch.cat(cols).to(device)]  # (response tokens, hidden)
        target = torch.cat(targets).to(device)
        token_log_probs = []
        for h, t in zip(picked.split(head_chunk), target.split(head_chunk)):
            logits = head(h).float()
            token_log_probs.append(logits.gather(-1, t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1))
        flat = torch.cat(token_log_probs).cpu()
        for i, row_log_probs in zip(batch, flat.split([len(pairs[i][1]) for i in batch])):
            results[i] = row_log_probs
    return results


def accepts_logits_to_keep(model) -> bool:
    """transformers' causal LMs (Llama, Mistral, Qwen, Gemma, Granite, ...) take `logits_to_keep`;
    a remote-code model may not."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def action_log_probs(model, sequences: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """OpenRLHF's experience layout, logits only for the response window.

    The same as `openrlhf.models.Actor(...)(sequences, action_mask, attention_mask)` at
    temperature 1 (same model call, same position ids: the attention mask's running count), except
    that the model is asked for the logits from the batch's first response position on
    (`logits_to_keep`). OpenRLHF's Actor turns the logits of every position into fp32 (batch x
    length x vocab: 6 GB for 8 rows of 1.5k tokens with Llama-3's 128k vocabulary) and keeps the
    response's. Equal in fp32; in bf16 the head's matmul on a smaller input may round differently.

    `model` is called whole, once (a transformers model or the DeepSpeed engine around it): ZeRO-3
    gathers each weight once per forward on every rank, and the model's own logit transforms
    (soft-capping, scaling) apply. Returns (batch, A) fp32, zero where action_mask is 0.
    """
    num_actions = action_mask.size(1)
    log_probs = torch.zeros(action_mask.shape, dtype=torch.float32, device=sequences.device)
    first = first_response_position(action_mask)
    if first is None:
        # No response token in this micro-batch (a prompt that fills --data.max_len): run the model
        # anyway on the last position, so every ZeRO-3 rank makes the same call and parameter gathers.
        first = num_actions - 1
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    # Action j (of A) is token S-A+j, predicted at position S-A-1+j: keep the positions from the
    # first action any row has on (the last one predicts nothing). In OpenRLHF 0.11.2 action_mask
    # spans all of sequences[:, 1:] (A = S-1), so its width alone would keep every position; the
    # batch's first response position is what trims the prompt.
    # The number kept may differ between ZeRO-3 ranks: it only slices hidden states before the LM
    # head, every rank still makes the same model call and the same parameter gathers.
    logits = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=num_actions + 1 - first,
        use_cache=False,
    ).logits[:, :-1]
    targets = sequences[:, sequences.size(1) - num_actions + first :]
    for row in range(len(sequences)):  # one row's fp32 logits at a time: (A - first) x vocab
        row_logits = logits[row].float()
        log_probs[row, first:] = row_logits.gather(-1, targets[row, :, None])[:, 0] - torch.logsumexp(row_logits, dim=-1)
    return log_probs * action_mask


def first_response_position(action_mask: torch.Tensor) -> Optional[int]:
    """The first column where any row's action_mask is 1 (None if no row has a response token)."""
    columns = action_mask.bool().any(dim=0).nonzero()
    return int(columns[0]) if len(columns) else None
