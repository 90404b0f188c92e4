"""The narrow hook into OpenRLHF's experience making: the coherent reward sees `action_mask`.

OpenRLHF's `RemoteExperienceMaker.make_experience` sends a reward model only `sequences` and
`attention_mask`, and drops the reference log-probs right after the KL. This subclass changes
two things and nothing else:

1. `make_experience` dispatches the coherent actor with `action_mask` *before* OpenRLHF's own
   forwards (so it runs in parallel with actor/critic/reference), marks the samples' rewards as
   provided (so OpenRLHF does not call the reward group itself), lets the parent do everything
   else, then fills in the coherent reward.
2. `_dispatch_forward` keeps the Ray refs of the reference forward, which are still in the object
   store after the parent is done: when the reference model is the SFT model at temperature 1
   they *are* log p_SFT, and SRPPO costs one extra forward (the base model), like a reward model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from typing import List, Optional

import ray
import torch

import openrlhf.trainer.ppo_utils.experience_maker as openrlhf_experience_maker
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

from .mix import RuleReward, mix as mix_terms
from .files import replace_atomically
from .reward import coherent_reward

logger = logging.getLogger("openrlhf_coherent")


class CoherentExperienceMaker(RemoteExperienceMaker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.coherent = self.args.coherent
        self._reference_refs = None
        self._coherent_refs = None  # the coherent forward in flight (make_experience)
        # Forwards run by the coherent actor in the last step (one per micro-batch and model):
        # logged, so a run shows that the SFT model is not run twice when reuse applies.
        self.last_forward_counts = {"base": 0, "sft": 0}
        self.rollout_step = 0
        # Tags this run's rollout-log rows (kept across resumes through the checkpoint), so a resume
        # cuts only rows this run wrote, never those of an earlier run sharing the file.
        self.run_id = uuid.uuid4().hex
        self.sft_logp_reference = None  # --coherent.sft_logp_floor: per-token log p_SFT of the first rollout
        self.floored = 0  # samples the floor guard replaced in the last rollout
        rule = getattr(self.coherent, "rule_reward", None)  # --reward.remote_url, taken by mix.validate
        self.rule = RuleReward(rule) if rule else None

    def _dispatch_forward(self, group, sync_condition, **kwargs):
        critic = group is not None and group is self.critic_model_group
        if critic and self.args.train.colocate_critic_reward and self._coherent_refs is not None:
            # As stock OpenRLHF does for its reward model: the critic shares the reward group's GPUs,
            # so it starts only once the coherent forward is done (the actor and reference forwards,
            # on other GPUs, did not wait).
            ray.get(self._coherent_refs)
            ray.get(self.reward_model_group.async_run_method(method_name="empty_cache"))
        ref = super()._dispatch_forward(group, sync_condition, **kwargs)
        if group is not None and group is self.initial_model_group:
            self._reference_refs = ref
        return ref

    @torch.no_grad()
    def make_experience(self, samples_list: List[Experience]) -> List[Experience]:
        args = self.args
        duplicate_factor = args.ds.ring_attn_size * args.ds.tensor_parallel_size
        padded = padded_for_coherent_group(samples_list, args)  # the extra results are dropped below
        c = self.coherent
        inputs = dict(
            sequences=[s.sequences for s in padded],
            action_mask=[s.action_mask for s in padded],
            attention_mask=[s.attention_mask for s in padded],
        )
        eos = c.eos_handling  # base/SFT pairs whose EOS differ (config.eos_handling); None if they agree
        if eos and eos["swap"]:  # --coherent.eos_policy base_eos
            inputs["base_sequences"] = [base_sequences(s, eos["swap"], eos["base_eos_token_id"]) for s in padded]
        self._coherent_refs = self._dispatch_forward(self.reward_model_group, args.train.colocate_all, **inputs)
        # A non-None reward tells the parent the reward is provided; the real value is set below.
        for samples in samples_list:
            samples.rewards = torch.zeros(len(samples.sequences))

        # The rule reward (with --reward.remote_url) while the coherent actor's forward runs: a failing
        # reward function stops the step before the policy, critic and reference forwards.
        rule_out = self._rule_rewards(samples_list) if self.rule is not None else None
        self._reference_refs = None
        try:
            samples_list = super().make_experience(samples_list)
            terms = self._flatten_results(self._coherent_refs, duplicate_factor)[: len(samples_list)]
        finally:
            self._coherent_refs = None
        if len(terms) != len(samples_list):  # zip below would silently drop samples
            raise RuntimeError(f"the coherent reward group returned {len(terms)} results for {len(samples_list)} micro-batches")
        if self.coherent.reuse_ref_logprobs:
            sft_log_probs = self._flatten_results(self._reference_refs, duplicate_factor)
        else:
            sft_log_probs = [t["sft"] for t in terms]
        self._reference_refs = None
        self.floored = 0
        self.last_forward_counts = {"base": len(terms), "sft": sum("sft" in t for t in terms)}

        options = dict(reward_type=c.reward_type, aggregate=c.aggregate, scale=c.scale, token_clip=c.token_clip)
        results = [
            coherent_reward(sft, t["base"], reward_mask(samples, eos and eos["exclude"]), **options)
            for samples, t, sft in zip(samples_list, terms, sft_log_probs)
        ]
        self._keep_sft_reference(results)
        if self.coherent.sft_logp_floor is not None:
            self._apply_sft_logp_floor(results)

        totals = self._mix_rule_reward(samples_list, results, rule_out) if rule_out is not None else None
        for k, (samples, result) in enumerate(zip(samples_list, results)):
            if result.token_rewards is not None:
                samples.info["coherent_token_rewards"] = result.token_rewards  # consumed below, not logged
            logged_reward = total_reward(result)
            samples.rewards = result.reward
            # Per-sample diagnostics: OpenRLHF's actor averages every info tensor into its training
            # status (logged next to its own metrics); the trainer logs rollout-level coherent/* stats.
            samples.info["reward"] = logged_reward
            samples.info["coherent_reward"] = logged_reward
            samples.info["coherent_sft_logp"] = result.sft_log_prob
            samples.info["coherent_base_logp"] = result.base_log_prob
            samples.info["coherent_log_ratio"] = result.log_ratio_sum
            # Tokens the two terms count (the response less an excluded EOS, eos_handling["exclude"]): per-token stats.
            samples.info["coherent_length"] = result.length.float()
            if totals is not None:
                samples.rewards = samples.info["reward"] = totals[k]
        return samples_list

    def _rule_rewards(self, samples_list) -> List[dict]:
        """mix.RuleReward on every sample of the rollout, in samples_list order."""
        queries, prompts, labels = [], [], []
        for samples in samples_list:
            for i in range(len(samples.sequences)):
                # The text OpenRLHF's rollout executor gives reward_func: prompt + response tokens, special tokens kept.
                ids = samples.sequences[i][samples.attention_mask[i].bool()].tolist()
                queries.append(self.tokenizer.decode(ids, skip_special_tokens=False))
            prompts += list(samples.prompts)
            labels += list(samples.labels)
        return self.rule(queries, prompts, labels, self.rollout_step + 1)

    def _mix_rule_reward(self, samples_list, results, rule_out: List[dict]) -> List[torch.Tensor]:
        """The rule reward of every sample (info["rule_reward"], and its reward_func's extra_logs),
        and the total each trains on (mix.mix), per micro-batch. Normalisation runs in prompt order
        (`Experience.index`, as OpenRLHF's group baselines do), so a group is one prompt's samples."""
        rule = torch.tensor([o["reward"] for o in rule_out], dtype=torch.float32)
        coherent = torch.cat([r.reward for r in results]).float()
        index = torch.tensor([i for samples in samples_list for i in samples.index])
        in_order = lambda x: torch.empty_like(x).index_copy_(0, index, x)  # noqa: E731
        c = self.coherent
        total = mix_terms(in_order(coherent), in_order(rule), c.weight, c.rule_weight, c.mix_normalize,
                          self.args.rollout.n_samples_per_prompt)[index]  # fmt: skip
        sizes = [len(samples.sequences) for samples in samples_list]
        extra_keys = set.intersection(*(set(o["extra_logs"]) for o in rule_out)) if rule_out else set()
        for samples, part, start in zip(samples_list, rule.split(sizes), [sum(sizes[:k]) for k in range(len(sizes))]):
            samples.info["rule_reward"] = part
            for key in sorted(extra_keys - set(samples.info)):  # never over our own keys ("reward", ...)
                samples.info[key] = torch.tensor([o["extra_logs"][key] for o in rule_out[start : start + len(part)]])
        return list(total.split(sizes))

    def _keep_sft_reference(self, results) -> None:
        """The SFT model's own samples (the first rollout of a fresh run) anchor the floor guard: their
        mean per-token log p_SFT is kept, and checkpointed, whether or not a guard is on, so a guard
        switched on at a resume compares with the SFT model, not with the policy being resumed."""
        if self.sft_logp_reference is not None:
            return
        if self.rollout_step > 0:
            if self.coherent.sft_logp_floor is None:
                return  # resumed from a checkpoint without one: nothing measured it from the SFT model
            logger.warning(
                "openrlhf_coherent: --coherent.sft_logp_floor is on but the checkpoint resumed from holds no SFT "
                "reference (written by an older version): the floor is anchored to this rollout's policy, not "
                "to the SFT model's own samples"
            )
        # Responses with no counted token (only an excluded EOS) say nothing about per-token likelihood.
        per_token = torch.cat([(r.sft_log_prob / r.length.clamp(min=1))[r.length > 0] for r in results])
        if len(per_token):
            self.sft_logp_reference = per_token.mean().item()

    def _apply_sft_logp_floor(self, results) -> None:
        """Typical-set guard: a response the SFT model itself finds far less likely per token than its
        own samples is outside what the demonstrations taught; there the reward is dominated by what
        the base finds unlikely (the repetition hack), so it gets the rollout's lowest reward instead.

        "Reward" is the total a sample gets: for the token-wise variant the sum of its per-token
        rewards. A floored token-wise sample loses its per-token rewards and gets the rollout's lowest
        total as one scalar at its last token."""
        per_token = [r.sft_log_prob / r.length.clamp(min=1) for r in results]
        floor = self.sft_logp_reference - self.coherent.sft_logp_floor
        lowest = min(total_reward(r).min().item() for r in results)
        for result, ppt in zip(results, per_token):
            off = ppt < floor
            result.reward = torch.where(off, torch.full_like(result.reward, lowest), result.reward)
            if result.token_rewards is not None:
                result.token_rewards[off] = 0.0
            self.floored += int(off.sum())

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: List[Experience]) -> List[Experience]:
        self.rollout_step += 1
        if self.coherent.reward_type != "token":
            experiences = super().compute_advantages_and_returns(experiences)
        else:
            # Token-wise variant (eq. 8): OpenRLHF's compute_reward only places a scalar on the last
            # token. Add each experience's per-token rewards to what it returns, matched by the
            # experience's KL tensor, which the parent passes to compute_reward for that experience.
            dense = [e.info.pop("coherent_token_rewards") for e in experiences]
            with _add_token_rewards({id(e.kl): d for e, d in zip(experiences, dense)}):
                experiences = super().compute_advantages_and_returns(experiences)
            # The parent's length penalties reset info["reward"] to the scalar part (0 here, plus any
            # overlong penalty): make it the total again, for rollout/reward_mean and its "Sample:" line.
            for e, d in zip(experiences, dense):
                e.info["reward"] = e.rewards + d.to(e.rewards.dtype).sum(dim=-1)
        # Logged after the parent's length penalties: the reward PPO trains on (before baselines and KL).
        if self.coherent.rollout_log:
            self._write_rollout_log(experiences)
        return experiences

    def cut_rollout_log_after(self, rollout_step: int, run_id: Optional[str]) -> int:
        """On resume: drop this run's rows of rollouts after the checkpoint, which the resumed run
        makes again (and a last line cut short by the kill), so each step appears once. Rows of
        other runs stay. `run_id` None (a checkpoint of an older version, whose rows had no run id):
        only rows without one are candidates. Returns the rows dropped.

        Read from the end, and only back to this run's last row at or before the checkpoint (its
        rows are appended in step order): an 8B run's log is gigabytes, the part to cut a few steps."""
        path = self.coherent.rollout_log
        if not path or not os.path.exists(path):
            return 0
        kept, dropped, cut_at, last = [], 0, 0, True
        with open(path, "r+b") as f:
            for offset, raw in _lines_from_end(f):
                if last and not raw:
                    continue  # after the final newline
                try:
                    row = json.loads(raw)
                    ours, step = row.get("run_id") == run_id, row["step"]
                    redone = ours and step > rollout_step
                except (ValueError, KeyError, TypeError, AttributeError):
                    # config.check_rollout_log admitted only our rows, plus a last line a kill cut short.
                    ours, redone = False, last
                last = False
                if redone:
                    dropped += 1
                elif ours:  # this run's rows before it are all older: nothing more to cut
                    cut_at = offset + len(raw) + 1
                    break
                else:
                    kept.append(raw + b"\n")
            if dropped and not kept:
                f.truncate(cut_at)
                return dropped
        if dropped:  # rows of another run lie among the cut ones: rewrite the file without ours
            with open(path, "rb") as f, replace_atomically(path, "wb") as out:
                remaining = cut_at  # copied in blocks: the kept part may be gigabytes
                while remaining > 0:
                    block = f.read(min(remaining, 1 << 20))
                    if not block:
                        break
                    out.write(block)
                    remaining -= len(block)
                out.writelines(reversed(kept))
        return dropped

    def _write_rollout_log(self, experiences: List[Experience]) -> None:
        """Append one JSON line per sample: token ids, text, the reward and its terms."""
        with open(self.coherent.rollout_log, "a", encoding="utf-8") as f:
            for e in experiences:
                for i in range(len(e.sequences)):
                    action = e.action_mask[i].bool()
                    first = int(action.nonzero()[0]) + 1 if action.any() else e.sequences.size(1)
                    prompt_ids = e.sequences[i, :first][e.attention_mask[i, :first].bool()].tolist()
                    response_ids = e.sequences[i, 1:][action].tolist()
                    row = {
                        "run_id": self.run_id,
                        "step": self.rollout_step,
                        "prompt": self.tokenizer.decode(prompt_ids, skip_special_tokens=True),
                        "response": self.tokenizer.decode(response_ids, skip_special_tokens=True),
                        "prompt_ids": prompt_ids,
                        "response_ids": response_ids,
                        "reward": e.info["reward"][i].item(),
                        "sft_logp": e.info["coherent_sft_logp"][i].item(),
                        "base_logp": e.info["coherent_base_logp"][i].item(),
                        "coherent_reward": e.info["coherent_reward"][i].item(),
                        # With --reward.remote_url: the rule term; "reward" is then the weighted total.
                        **({"rule_reward": e.info["rule_reward"][i].item()} if "rule_reward" in e.info else {}),
                        "truncated": bool(e.truncated[i].item()) if e.truncated is not None else None,
                        "label": e.labels[i] if i < len(e.labels) else None,
                    }
                    f.write(json.dumps(row) + "\n")


def padded_for_coherent_group(micro_batches: list, args) -> list:
    """`micro_batches` plus copies of the last one up to a multiple of the coherent group's
    data-parallel size, under ZeRO-3 (unchanged otherwise). OpenRLHF hands each rank a
    ceiling-sized chunk (10 on 4 ranks: 3, 3, 3, 1); under ZeRO-3 every forward gathers parameters
    from all ranks of the group, so a rank with fewer micro-batches would leave the others waiting
    forever."""
    if args.ds.zero_stage != 3:
        return micro_batches
    ranks = args.reward.num_nodes * args.reward.num_gpus_per_node // (args.ds.ring_attn_size * args.ds.tensor_parallel_size)
    return micro_batches + micro_batches[-1:] * (-len(micro_batches) % ranks)


def _lines_from_end(f, block: int = 1 << 20):
    """(offset, bytes without the newline) of each line of the binary file `f`, last line first."""
    f.seek(0, os.SEEK_END)
    pos, head = f.tell(), b""  # head: the bytes from pos on that may still continue before pos
    while pos > 0:
        size = min(block, pos)
        pos -= size
        f.seek(pos)
        parts = (f.read(size) + head).split(b"\n")
        head, offset, complete = parts[0], pos + len(parts[0]) + 1, []
        for part in parts[1:]:
            complete.append((offset, part))
            offset += len(part) + 1
        yield from reversed(complete)
    yield 0, head


def total_reward(result) -> torch.Tensor:
    """(B,) what each sample gets in all: the scalar plus, for the token-wise variant, its per-token rewards."""
    if result.token_rewards is None:
        return result.reward
    return result.reward + result.token_rewards.sum(dim=-1)


def final_eos(samples, eos_token_ids):
    """(rows, action positions) of the samples whose response ends with one of `eos_token_ids`
    (action position j is the token `sequences[:, j + 1]`)."""
    mask = samples.action_mask
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=-1).values  # last response position, -1 if none
    rows = torch.arange(mask.size(0), device=mask.device)
    final_token = samples.sequences[rows, last.clamp(min=0) + 1]
    ends = (last >= 0) & torch.isin(final_token, torch.tensor(eos_token_ids, device=mask.device))
    return rows[ends], last[ends]


def reward_mask(samples, excluded_eos_token_ids) -> torch.Tensor:
    """The response positions the coherent reward counts: `action_mask`, less the final token of a
    response that ends with an EOS the base does not stop on and the reward excludes
    (`config.eos_handling`): the base would score it as an ordinary, often very unlikely token."""
    if not excluded_eos_token_ids:
        return samples.action_mask
    rows, last = final_eos(samples, excluded_eos_token_ids)
    mask = samples.action_mask.clone()
    mask[rows, last] = 0
    return mask


def base_sequences(samples, sft_eos_token_ids, base_eos_token_id: int) -> torch.Tensor:
    """`--coherent.eos_policy base_eos`: the sequences the base model scores, with a final SFT EOS
    (one the base does not stop on) replaced by the base's own EOS, so that position's base term is
    log p_base(stopping) where the SFT term is log p_SFT(stopping). It is the last token, so no other
    position's log-prob changes."""
    rows, last = final_eos(samples, sft_eos_token_ids)
    sequences = samples.sequences.clone()
    sequences[rows, last + 1] = base_eos_token_id
    return sequences


@contextlib.contextmanager
def _add_token_rewards(dense_by_kl_id):
    original = openrlhf_experience_maker.compute_reward

    def compute_reward_with_token_rewards(r, kl_coef, kl, action_mask=None, reward_clip_range=None):
        reward = original(r, kl_coef, kl, action_mask=action_mask, reward_clip_range=reward_clip_range)
        return reward + dense_by_kl_id[id(kl)].to(reward.dtype)

    openrlhf_experience_maker.compute_reward = compute_reward_with_token_rewards
    try:
        yield
    finally:
        openrlhf_experience_maker.compute_reward = original
