"""The coherent reward mixed with OpenRLHF's rule / verifiable reward (`--reward.remote_url`).

OpenRLHF 0.11.2 uses either a reward model or the rollout's remote reward
(`use_reward_model = samples_list[0].rewards is None`), and builds no reward-model group at all
when `--reward.remote_url` is set. With `--reward.model_name_or_path coherent` and a remote URL,
`validate` takes the URL for the mix and clears OpenRLHF's flag, so OpenRLHF builds the coherent
reward group as usual and its rollout engines compute no reward. The experience maker then
computes the remote reward itself (`RuleReward`, through OpenRLHF's own `SingleTurnAgentExecutor`:
the same `reward_func(queries, prompts, labels)` file loading or HTTP call, the same query text)
and trains on

    total = coherent.weight * T(coherent) + coherent.rule_weight * T(rule)

with T the identity (`--coherent.mix_normalize none`) or a z-score of each term within the
rollout batch (`batch`) or within each prompt's group of samples (`group`), so that two terms on
different scales weigh what their weights say. Every estimator (GAE and the group ones) then sees
one scalar reward per sample, as with a reward model.

Unlike OpenRLHF's rollout path, which logs a raising reward function at INFO and leaves the
reward None, a raising function, a missing reward or a NaN/inf one stops the run with a message
naming the file (or URL) and the sample.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import List, Optional, Sequence

import torch

MIX_NORMALIZE = ("none", "batch", "group")


class RuleRewardError(RuntimeError):
    """The remote reward failed for a sample: the run stops rather than train on a missing reward."""


def add_arguments(group) -> None:
    group.add_argument(
        "--coherent.weight",
        type=float,
        default=1.0,
        help="Weight of the coherent reward in its mix with the --reward.remote_url reward.",
    )
    group.add_argument(
        "--coherent.rule_weight",
        type=float,
        default=1.0,
        help="Weight of the --reward.remote_url reward (reward_func file or HTTP) mixed with the coherent reward.",
    )
    group.add_argument(
        "--coherent.mix_normalize",
        type=str,
        default="none",
        choices=MIX_NORMALIZE,
        help="none: weighted sum of the raw terms. batch / group: z-score each term within the rollout batch / "
        "each prompt's samples before the weighted sum.",
    )


def validate(args) -> None:
    """Take --reward.remote_url for the mix (OpenRLHF then builds the coherent reward group) and
    check the mix flags; config.validate calls it (hence the import here, not at the top)."""
    from .config import ConfigError, check_number

    c = args.coherent
    check_number("--coherent.weight", c.weight, low=0, low_open=False)
    check_number("--coherent.rule_weight", c.rule_weight, low=0, low_open=False)
    url = args.reward.remote_url
    c.rule_reward = None
    if not url:
        if c.weight != 1.0 or c.rule_weight != 1.0 or c.mix_normalize != "none":
            raise ConfigError(
                "--coherent.weight / --coherent.rule_weight / --coherent.mix_normalize weigh the coherent reward "
                "against the --reward.remote_url reward, and none is given (to scale the coherent reward alone: "
                "--coherent.scale)"
            )
        return
    if c.reward_type == "token":
        raise ConfigError(
            "--coherent.reward_type token with --reward.remote_url: the mix adds a scalar rule reward to a scalar "
            "coherent reward; use --coherent.reward_type sequence"
        )
    if c.weight == 0 and c.rule_weight == 0:
        raise ConfigError("--coherent.weight and --coherent.rule_weight are both 0: the total reward would be 0")
    endpoints = url.split(",")
    if endpoints[0].endswith(".py"):
        if not os.path.isfile(endpoints[0]):
            raise ConfigError(f"--reward.remote_url {endpoints[0]}: no such reward_func file")
        # Loaded by the trainer actor, whose working directory is Ray's copy of the job's working_dir.
        url = os.path.abspath(endpoints[0])
    if c.mix_normalize == "group" and args.rollout.n_samples_per_prompt < 2:
        raise ConfigError("--coherent.mix_normalize group needs --rollout.n_samples_per_prompt >= 2")
    coef = args.reward.stop_properly_penalty_coef
    if c.mix_normalize != "none" and coef is not None and coef >= 0:
        raise ConfigError(
            f"--reward.stop_properly_penalty_coef {coef} with --coherent.mix_normalize {c.mix_normalize}: OpenRLHF "
            "multiplies a truncated sample's total by it, and a normalised total is negative for about half of the "
            "samples, which it would move up toward 0; pass a negative coefficient (a fixed reward for truncation)"
        )
    # Both read the rewards that the rollout engines compute, which compute none with the mix.
    for flag, value in (("--eval.dataset", getattr(args.eval, "dataset", None)),
                        ("--algo.dynamic_filtering_enable", getattr(args.algo, "dynamic_filtering_enable", False))):  # fmt: skip
        if value:
            raise ConfigError(f"{flag} with the coherent reward mixed with --reward.remote_url: not supported")
    c.rule_reward = url
    # OpenRLHF builds no reward-model group when remote_url is set, and its rollout engines would
    # compute the reward: the mix computes it in the experience maker instead.
    args.reward.remote_url = None


def zscore(x: torch.Tensor, groups: Optional[int]) -> torch.Tensor:
    """x standardised within the batch (groups None) or within consecutive groups of `groups`
    samples; a constant slice becomes 0 (it ranks nothing)."""
    y = x.reshape(-1, groups) if groups else x.reshape(1, -1)
    std = y.std(dim=-1, unbiased=False, keepdim=True)
    # Constant by equality, not std > 0: the fp32 mean of equal values (0.1 x 16) can be off by an
    # ulp, and (y - mean) / 1e-8 would turn every value into -1 or +1.
    constant = (y == y[..., :1]).all(dim=-1, keepdim=True)
    z = torch.where(constant, torch.zeros_like(y), (y - y.mean(dim=-1, keepdim=True)) / std.clamp(min=1e-12))
    return z.reshape(-1)


def mix(coherent: torch.Tensor, rule: torch.Tensor, weight: float, rule_weight: float, normalize: str, group_size: int) -> torch.Tensor:
    """The total reward of each sample (fp32), from the two terms in prompt order."""
    coherent, rule = coherent.float(), rule.float()
    if normalize != "none":
        groups = group_size if normalize == "group" else None
        coherent, rule = zscore(coherent, groups), zscore(rule, groups)
    return weight * coherent + rule_weight * rule


class RuleReward:
    """The --reward.remote_url reward, computed on the experience maker's side for the mix."""

    def __init__(self, url: str):
        from openrlhf.utils.agent import SingleTurnAgentExecutor

        self.source = url
        self.is_file = url.split(",")[0].endswith(".py")
        # OpenRLHF's own executor: it imports the reward_func file (or cycles over the HTTP endpoints)
        # exactly as its rollout engines would; an import error names the file here, at start-up.
        try:
            self.executor = SingleTurnAgentExecutor(url.split(","))
        except Exception as e:
            raise RuleRewardError(f"--reward.remote_url {url}: loading reward_func failed: {type(e).__name__}: {e}") from e

    def __call__(self, queries: Sequence[str], prompts: Sequence[str], labels: Sequence, step: int) -> List[dict]:
        """{"reward": float, "extra_logs": {...}} per sample, one call per sample as OpenRLHF's rollout makes."""
        fetch = self.executor._fetch_rewards_via_func if self.is_file else self.executor._fetch_rewards_via_http

        async def all_samples():
            return await asyncio.gather(*(fetch([q], [p], [l]) for q, p, l in zip(queries, prompts, labels)), return_exceptions=True)

        out = []
        for i, (result, prompt) in enumerate(zip(asyncio.run(all_samples()), prompts)):
            where = f"--reward.remote_url {self.source}: rollout {step}, sample {i} (prompt {prompt[:80]!r})"
            if isinstance(result, BaseException):
                raise RuleRewardError(f"{where}: reward_func raised {type(result).__name__}: {result}") from result
            info = result[0] if isinstance(result, list) and result else None
            value = info.get("rewards") if isinstance(info, dict) else None
            if value is None:
                raise RuleRewardError(f"{where}: returned no 'rewards' (got {str(result)[:120]})")
            value = torch.as_tensor(value, dtype=torch.float32).flatten()
            if value.numel() != 1 or not math.isfinite(value.item()):
                raise RuleRewardError(f"{where}: returned the reward {value.tolist()}, expected one finite number")
            try:
                extra = {
                    k: float(torch.as_tensor(v, dtype=torch.float32).flatten()[0])
                    for k, v in (info.get("extra_logs") or {}).items()
                }
            except (TypeError, ValueError, IndexError, AttributeError) as e:
                raise RuleRewardError(f"{where}: extra_logs must map names to numbers ({type(e).__name__}: {e})") from e
            out.append({"reward": value.item(), "extra_logs": extra})
        return out
