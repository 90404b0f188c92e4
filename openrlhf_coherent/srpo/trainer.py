"""OpenRLHF's DPOTrainer with the SRPO loss (loss.py) on six sequences per pair (dataset.py).

Kept from `openrlhf.trainer.dpo_trainer.DPOTrainer`: the constructor (strategy, optimizer,
scheduler, wandb/TensorBoard), `save_logs_and_checkpoints` (logging, eval schedule, DeepSpeed/HF
checkpoints). Replaced: `fit` and `evaluate`, whose batches are DPO's (chosen, rejected) pairs,
and the loss.

Reference log-probs are computed once per pair, before the first step, not every step: the
reference model is frozen, so its log-probs of the six fixed sequences never change. Each rank
scores every world_size-th pair in micro-batches (all ranks run the same number of forwards,
which ZeRO-3's collective forwards need), then the table is all-gathered, so every rank holds
all pairs' log-probs whatever the sampler shuffles to it in later epochs (6 floats per pair).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Dict

import torch
import torch.distributed as dist
from tqdm import tqdm

from openrlhf.trainer.dpo_trainer import DPOTrainer
from openrlhf.utils.distributed_sampler import DistributedSampler

from .loss import SEQUENCES, SRPOLoss, sequence_log_probs


class SRPOTrainer(DPOTrainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        srpo = self.args.srpo
        self.loss_fn = SRPOLoss(beta=srpo.beta, alpha=srpo.alpha)  # replaces DPOLoss
        self.average_log_prob = srpo.average_log_prob
        self.reference_tables: Dict[int, torch.Tensor] = {}  # id(dataset) -> (pairs, 6)
        self.counts = Counter()  # forwards and pairs, for the summary (and the tests)
        # At step 1 the policy is the reference, so every pair's loss is (1 - alpha) + alpha / 2:
        # the summary's first_loss shows that the cached reference rows line up with the batch.
        self.first_loss = self.last_loss = None

    def sequence_logps(self, model, input_ids, attention_mask, prompt_lens):
        """(pairs, 6) completion log-probs (fp32: Actor casts logits to fp32) and the MoE aux loss."""
        device = next(self.model.parameters()).device
        attention_mask = attention_mask.to(device)
        token_logps, output = model(
            input_ids.to(device),
            attention_mask=attention_mask,
            return_output=True,
            return_logprobs=True,
            ring_attn_group=self.strategy.ring_attn_group,
        )
        logps = sequence_log_probs(token_logps, attention_mask, prompt_lens.to(device), self.average_log_prob)
        return logps.view(-1, len(SEQUENCES)), output.get("aux_loss")

    @torch.no_grad()
    def reference_table(self, dataset) -> torch.Tensor:
        """(len(dataset), 6) reference log-probs, computed on the first call for `dataset`."""
        key = id(dataset)
        if key in self.reference_tables:
            return self.reference_tables[key]
        self.ref_model.eval()
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        n = len(dataset)
        per_rank = math.ceil(n / world)
        # Rank r scores pairs r, r + world, ...; past the end it repeats the last pair so every
        # rank runs the same forwards.
        mine = [min(rank + j * world, n - 1) for j in range(per_rank)]
        micro = self.args.train.micro_batch_size
        parts = []
        for start in tqdm(range(0, per_rank, micro), desc="SRPO reference log-probs", disable=not self.strategy.is_rank_0()):
            _, input_ids, attention_mask, prompt_lens = dataset.collate_fn([dataset[i] for i in mine[start : start + micro]])
            logps, _ = self.sequence_logps(self.ref_model, input_ids, attention_mask, prompt_lens)
            parts.append(logps.float())
            self.counts["reference_forwards"] += 1
        local = torch.cat(parts) if parts else torch.zeros((0, len(SEQUENCES)), device=next(self.model.parameters()).device)
        if world > 1:
            gathered = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(gathered, local)
            # gathered[r][j] is pair r + j * world: interleave back into dataset order.
            local = torch.stack(gathered, dim=1).reshape(world * per_rank, len(SEQUENCES))
        table = local[:n]
        self.counts["reference_pairs"] += n
        self.reference_tables[key] = table
        return table

    def step_loss(self, batch, table):
        indices, input_ids, attention_mask, prompt_lens = batch
        policy, aux_loss = self.sequence_logps(self.model, input_ids, attention_mask, prompt_lens)
        self.counts["policy_forwards"] += 1
        loss, terms = self.loss_fn(policy, table[indices.to(table.device)])
        return loss, terms, aux_loss

    def fit(self, args, consumed_samples=0, num_update_steps_per_epoch=None):
        steps_per_epoch = num_update_steps_per_epoch or len(self.train_dataloader) // self.strategy.accumulated_gradient
        if steps_per_epoch <= 0:
            raise ValueError(f"{len(self.train_dataloader.dataset)} pairs make no optimizer step of --train.batch_size {args.train.batch_size}")
        if args.eval.steps == -1:
            args.eval.steps = steps_per_epoch  # once per epoch, as DPO
        if args.ckpt.save_steps == -1:
            args.ckpt.save_steps = float("inf")

        table = self.reference_table(self.train_dataloader.dataset)
        accumulation = self.strategy.accumulated_gradient
        # Resume (as DPOTrainer): micro-step counter, epoch, and samples already used in it.
        step = consumed_samples // args.train.batch_size * accumulation + 1
        start_epoch = consumed_samples // args.train.batch_size // steps_per_epoch
        consumed_samples %= steps_per_epoch * args.train.batch_size
        window = Counter()
        for epoch in range(start_epoch, self.epochs):
            if isinstance(self.train_dataloader.sampler, DistributedSampler):
                self.train_dataloader.sampler.set_epoch(epoch, consumed_samples=consumed_samples if epoch == start_epoch else 0)
            self.model.train()
            bar = tqdm(self.train_dataloader, desc=f"SRPO epoch {epoch}", disable=not self.strategy.is_rank_0())
            for batch in bar:
                loss, terms, aux_loss = self.step_loss(batch, table)
                if self.aux_loss and aux_loss is not None:
                    loss = loss + aux_loss * self.args.model.aux_loss_coef
                self.strategy.backward(loss, self.model, self.optimizer)
                self.strategy.optimizer_step(self.optimizer, self.model, self.scheduler)

                logs = {
                    "loss": loss.item(),
                    "joint_loss": terms["joint"].mean().item(),
                    "self_improve_loss": terms["self_improve"].mean().item(),
                    "margin": terms["margin"].mean().item(),
                    "acc": (terms["margin"] > 0).float().mean().item(),
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": self.strategy.get_grad_norm(self.model),
                }
                logs = self.strategy.all_reduce(logs)
                bar.set_postfix(logs)
                window.update({"loss": logs["loss"], "acc": logs["acc"]})
                self.first_loss = logs["loss"] if self.first_loss is None else self.first_loss
                self.last_loss = logs["loss"]
                if step % accumulation == 0:
                    logs["loss_mean"], logs["acc_mean"] = window["loss"] / accumulation, window["acc"] / accumulation
                    window.clear()
                    global_step = step // accumulation
                    self.counts["optimizer_steps"] += 1
                    client_states = {"consumed_samples": global_step * args.train.batch_size}
                    self.save_logs_and_checkpoints(args, global_step, bar, logs, client_states)
                step += 1

        if self._wandb is not None and self.strategy.is_rank_0():
            self._wandb.finish()
        if self._tensorboard is not None and self.strategy.is_rank_0():
            self._tensorboard.close()
        if self.strategy.is_rank_0():
            summary = dict(self.counts, first_loss=self.first_loss, last_loss=self.last_loss)
            print(f"[openrlhf_coherent] train_srpo summary: {json.dumps(summary)}", flush=True)

    @torch.no_grad()
    def evaluate(self, eval_dataloader, steps=0):
        table = self.reference_table(eval_dataloader.dataset)
        self.model.eval()
        totals = Counter()
        for batch in tqdm(eval_dataloader, desc=f"SRPO eval at step {steps}", disable=not self.strategy.is_rank_0()):
            _, terms, _ = self.step_loss(batch, table)
            totals.update({
                "loss": terms["loss"].sum().item(),
                "acc": (terms["margin"] > 0).sum().item(),
                "pairs": terms["loss"].numel(),
            })
        pairs = max(totals["pairs"], 1)
        logs = self.strategy.all_reduce({"eval_loss": totals["loss"] / pairs, "acc_mean": totals["acc"] / pairs})
        if self.strategy.is_rank_0():
            if self._wandb is not None:
                self._wandb.log({f"eval/{k}": v for k, v in {**logs, "global_step": steps}.items()})
            elif self._tensorboard is not None:
                for k, v in logs.items():
                    self._tensorboard.add_scalar(f"eval/{k}", v, steps)
            self.strategy.print(f"[srpo] eval at step {steps}: {logs}")
        self.model.train()
