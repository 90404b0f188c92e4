"""The plugin's `--coherent.*` flag group, the legacy flag aliases, and validation before Ray starts.

Flags are added to OpenRLHF's own `train_ppo_ray` parser, so OpenRLHF's `hierarchize` turns them
into `args.coherent.<name>`, and `args` (inside the strategy) carries them to every Ray actor.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from typing import List, Optional, Sequence

from .errors import ConfigError, exit_status  # noqa: F401 (the CLIs import them from here too)
from .reward import AGGREGATES, REWARD_TYPES

# What a finished response's final position scores when the SFT model stops on an id the base does
# not (see `eos_handling`); the default was chosen by measurement (demo/eos_policy.py, docs/eos_policy.md).
EOS_POLICIES = ("base_eos", "exclude")

logger = logging.getLogger("openrlhf_coherent")

COHERENT = "coherent"  # the value of --reward.model_name_or_path that selects this plugin
ESTIMATORS = ("gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo", "flash_reinforce")
GROUP_ESTIMATORS = ("rloo", "reinforce_baseline", "group_norm", "dr_grpo", "flash_reinforce")

# The pre-2026 spelling used by many OpenRLHF docs and scripts -> the 0.11 dotted flag.
LEGACY_FLAGS = {
    "--pretrain": "--actor.model_name_or_path",
    "--reward_pretrain": "--reward.model_name_or_path",
    "--critic_pretrain": "--critic.model_name_or_path",
    "--prompt_data": "--data.prompt_dataset",
    "--input_key": "--data.input_key",
    "--remote_rm_url": "--reward.remote_url",
    "--init_kl_coef": "--algo.kl.init_coef",
    "--advantage_estimator": "--algo.advantage.estimator",
}


def check_number(flag: str, value, *, low=None, high=None, low_open: bool = True, high_open: bool = False) -> None:
    """ConfigError naming `flag` unless `value` is a finite number in the range (open or closed
    ends; None: unbounded). NaN fails every comparison and inf is refused, so neither slips past."""
    if value is None:
        return
    bounds = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}{')' if high_open or high is None else ']'}"
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"{flag} must be a finite number in {bounds}, got {value}")


def translate_legacy_flags(argv: Sequence[str]) -> List[str]:
    """Rewrite old flag names (also in `--flag=value` form) to the dotted ones, noting each once."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in LEGACY_FLAGS:
            new = LEGACY_FLAGS[name]
            print(f"[openrlhf_coherent] note: {name} is the old spelling of {new}; using {new}")
            arg = new + eq + value
        out.append(arg)
    return out


def flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value given to `flag` on a command line (last one wins, like argparse), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def add_coherent_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SRPPO coherent reward (openrlhf_coherent)")
    group.add_argument(
        "--coherent.base_model",
        type=str,
        default=None,
        help="Pretrained base model (HF path or local folder): the log p_base term. Required with "
        "--reward.model_name_or_path coherent.",
    )
    group.add_argument(
        "--coherent.sft_model",
        type=str,
        default=None,
        help="SFT model for the log p_SFT term. Default: --actor.model_name_or_path (the SFT model PPO starts from).",
    )
    group.add_argument(
        "--coherent.reward_type",
        type=str,
        default="sequence",
        choices=REWARD_TYPES,
        help="sequence: sum of log-ratios at the EOS/last token (paper eq. 3-4). token: each token gets "
        "its own log-ratio (eq. 8); the paper reports unbounded length growth with it, opt-in only.",
    )
    group.add_argument(
        "--coherent.aggregate",
        type=str,
        default="sum",
        choices=AGGREGATES,
        help="sum (paper) or mean: divide by the number of response tokens (length normalisation).",
    )
    group.add_argument(
        "--coherent.eos_policy",
        type=str,
        default="base_eos",
        choices=EOS_POLICIES,
        help="Base/SFT pairs whose EOS differ (Qwen2.5 base vs Instruct, Llama-3 base vs <|eot_id|>): at a "
        "finished response's end, base_eos scores log p_SFT(SFT's EOS) - log p_base(base's own EOS), each "
        "model's probability of its EOS token there; exclude drops that position from both terms (no stopping "
        "signal: a finished response scores as its truncation). Measured in demo/eos_policy.py. No effect "
        "when the two stop on the same ids.",
    )
    group.add_argument("--coherent.scale", type=float, default=1.0, help="Multiply the coherent reward by this.")
    group.add_argument(
        "--coherent.token_clip",
        type=float,
        default=None,
        help="Clamp each token's log p_SFT - log p_base to [-x, x] before aggregating (reward-hacking guard).",
    )
    group.add_argument(
        "--coherent.sft_logp_floor",
        type=float,
        default=None,
        help="Reward-hacking guard: a sample whose per-token log p_SFT is more than this many nats below the "
        "mean of the SFT model's own samples (the first rollout) gets the lowest reward of its rollout batch.",
    )
    group.add_argument(
        "--coherent.alarm",
        type=str,
        default="on",
        choices=["on", "off"],
        help="Reward-hacking alarm: warn when the reward rises while the EOS rate or the SFT per-token "
        "log-likelihood of the samples falls below that of the SFT model's own samples.",
    )
    group.add_argument("--coherent.alarm_window", type=int, default=5, help="Rollouts the alarm compares.")
    group.add_argument(
        "--coherent.alarm_eos_drop", type=float, default=0.15, help="EOS-rate fall (absolute) that counts."
    )
    group.add_argument(
        "--coherent.alarm_logp_drop",
        type=float,
        default=0.5,
        help="Fall of the SFT per-token log-likelihood (nats) that counts.",
    )
    group.add_argument(
        "--coherent.reuse_ref",
        type=str,
        default="auto",
        choices=["auto", "never"],
        help="auto: when the reference model is the SFT model at temperature 1, reuse its log-probs as "
        "log p_SFT (one extra forward per step, the base model). never: always run the SFT model in the "
        "coherent actor (for benchmarking or debugging).",
    )
    group.add_argument(
        "--coherent.rollout_log",
        type=str,
        default=None,
        help="Append every rollout (token ids, text, reward fed to PPO, log p_SFT, log p_base) to this JSONL file.",
    )
    group.add_argument(
        "--coherent.trust_remote_code",
        action="store_true",
        default=False,
        help="Allow custom model code when this plugin validates/loads the base and SFT configs and tokenizers.",
    )
    from . import mix

    mix.add_arguments(group)  # --coherent.weight / rule_weight / mix_normalize: the mix with --reward.remote_url


def _resolve(path: str) -> str:
    return os.path.realpath(path) if os.path.exists(path) else path


def same_model_path(a: Optional[str], b: Optional[str]) -> bool:
    return a is not None and b is not None and _resolve(a) == _resolve(b)


def check_causal_lm(path: str, flag: str, trust_remote_code: bool, trust_flag: str = "--trust_remote_code"):
    """Fail with a message naming `flag` unless `path` holds a causal-LM config that loads no custom
    code the user did not allow (`trust_flag`). Returns the config."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    from .files import check_weights_complete
    from .remote_code import refuse_remote_code

    if path.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(path)):
        raise ConfigError(f"{flag} {path}: no such directory")
    refuse_remote_code(path, flag, trust_remote_code, trust_flag)
    check_weights_complete(path, flag)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError/ValueError/KeyError depending on what is wrong
        raise ConfigError(f"{flag} {path}: cannot load a model config there ({type(e).__name__}: {e})") from None
    # The saved architecture says what head the weights have (a BERT encoder's model_type also maps
    # to a causal-LM class, but BertModel weights have no LM head); fall back to model_type.
    architectures = getattr(config, "architectures", None) or []
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if architectures:
        is_causal = any(a in causal_classes or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    else:
        # Without `architectures` only the model type is known: an encoder type (BERT, RoBERTa...)
        # also maps to a causal-LM class but is saved as an encoder, so only decoder types pass.
        is_causal = (
            config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        )
    if not is_causal:
        raise ConfigError(
            f"{flag} {path}: not a causal language model (model_type={config.model_type!r}, "
            f"architectures={architectures}); the coherent reward needs next-token log-probs"
        )
    return config


def check_same_tokenizer(
    sft_path: str,
    base_path: str,
    sft_flag: str,
    trust_remote_code: bool,
    base_flag: str = "--coherent.base_model",
    allow_eos_difference: bool = False,
) -> Optional[List[int]]:
    """The two log-probs are only comparable token by token if both models share one tokenizer.

    Base/SFT pairs often differ only in the EOS token (Qwen2.5 base vs Instruct; Llama-3 base's
    <|end_of_text|> vs an SFT model's <|eot_id|>). With `allow_eos_difference` (the PPO path) such a
    pair is accepted and the ids the SFT model stops on but the base does not are returned (the caller
    applies `--coherent.eos_policy` to a finished response ending with one). Otherwise returns None."""
    from transformers import AutoTokenizer

    def load(path, flag):
        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as e:
            raise ConfigError(f"{flag} {path}: cannot load its tokenizer ({type(e).__name__}: {e})") from None

    sft, base = load(sft_path, sft_flag), load(base_path, base_flag)
    if sft.get_vocab() != base.get_vocab():
        only_sft = len(set(sft.get_vocab().items()) - set(base.get_vocab().items()))
        raise ConfigError(
            f"{sft_flag} {sft_path} and {base_flag} {base_path} have different vocabularies "
            f"({len(sft)} vs {len(base)} tokens, {only_sft} token->id entries differ): log p_SFT - log p_base "
            "is only defined for models that share a tokenizer"
        )
    from transformers import AutoConfig

    for path, flag, tokenizer in ((sft_path, sft_flag, sft), (base_path, base_flag, base)):
        # A tokenizer with more ids than the embedding has rows fails inside the Ray actor (an index
        # error on the first such token): found here instead.
        rows = getattr(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).get_text_config(), "vocab_size", None)
        if isinstance(rows, int) and len(tokenizer) > rows:
            raise ConfigError(
                f"{flag} {path}: its tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {rows}: "
                "token ids past it would index outside the embedding"
            )
    for name in ("bos_token_id", "unk_token_id"):
        if getattr(sft, name) != getattr(base, name):
            raise ConfigError(
                f"{sft_flag} {sft_path} and {base_flag} {base_path} have different special tokens: "
                f"{name} {getattr(sft, name)} vs {getattr(base, name)}"
            )
    if sft.eos_token_id != base.eos_token_id and (not allow_eos_difference or sft.eos_token_id is None):
        raise ConfigError(
            f"{sft_flag} {sft_path} and {base_flag} {base_path} have different special tokens: "
            f"eos_token_id {sft.eos_token_id} vs {base.eos_token_id}"
            + ("" if sft.eos_token_id is None else " (PPO with --reward.model_name_or_path coherent accepts such pairs)")
        )
    if not allow_eos_difference:
        return None
    # The rollout engine stops on the tokenizer's EOS and on the generation config's (vLLM's rule;
    # Llama-3-Instruct's <|eot_id|> is only there): every such id the base does not stop on counts.
    return sorted(stop_token_ids(sft_path, sft) - stop_token_ids(base_path, base)) or None


def eos_handling(c, sft_only: List[int], actor_only: List[int], trust_remote_code: bool) -> dict:
    """What a response's final token gets when it is an EOS the base does not stop on, by
    `--coherent.eos_policy` (read by the experience maker; saved in checkpoints):

    - "swap": ids the SFT model stops on; the base scores its own EOS ("base_eos_token_id") there.
    - "exclude": ids excluded from both terms: all of them with `exclude`; with `base_eos`, those only
      the actor stops on (--coherent.sft_model differs from it), which the SFT model would score as an
      ordinary token."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(c.base_model, trust_remote_code=trust_remote_code)

    def names(ids):
        return ", ".join(f"{base.convert_ids_to_tokens(i)!r} (id {i})" for i in ids)

    if c.eos_policy == "exclude" or not sft_only:
        handling = {"swap": [], "exclude": sorted(set(sft_only) | set(actor_only)), "base_eos_token_id": None}
    else:
        # The base's own EOS: its tokenizer's, else its generation config's (the ids it stops on).
        base_eos = base.eos_token_id
        if base_eos is None:
            base_eos = min(stop_token_ids(c.base_model, base), default=None)  # the lowest, if it lists several
        if base_eos is None:
            raise ConfigError(
                f"--coherent.base_model {c.base_model}: neither its tokenizer nor its generation config names an EOS, "
                f"so --coherent.eos_policy base_eos has nothing to score where the SFT model stops ({names(sft_only)}); "
                "pass --coherent.eos_policy exclude"
            )
        handling = {"swap": sorted(sft_only), "exclude": sorted(actor_only), "base_eos_token_id": base_eos}
    if handling["swap"]:
        logger.warning(
            "SRPPO: the SFT model stops on %s and the base (%s) does not: eos_policy=base_eos, a finished response "
            "ending with one of these is scored there as log p_SFT(that token) - log p_base(%s), the base's own EOS "
            "(each model's probability of stopping)", names(handling["swap"]), c.base_model, names([handling["base_eos_token_id"]]),
        )  # fmt: skip
    if handling["exclude"]:
        logger.warning(
            "SRPPO: the %s stops on %s and the base (%s) does not: eos_policy=exclude for %s, a finished response's final "
            "token, when it is one of these, is excluded from both terms of the coherent reward (no stopping signal; with "
            "--coherent.aggregate mean the length counts the tokens before it)",
            "SFT model or the actor" if c.eos_policy == "exclude" else "actor (not the SFT model)",
            names(handling["exclude"]), c.base_model, "these" if c.eos_policy == "exclude" else "them",
        )  # fmt: skip
    return handling


def stop_token_ids(path: str, tokenizer) -> set:
    """The ids generation stops on for the model at `path`: its tokenizer's EOS and its generation
    config's `eos_token_id` (an int or a list), as vLLM collects them."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} - {None}
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):  # no generation_config.json: the tokenizer's EOS only
        eos = None
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids


ROLLOUT_LOG_KEYS = ("step", "prompt_ids", "response_ids", "reward")  # every row the rollout log writes has them


def check_rollout_log(path: str) -> None:
    """An existing --coherent.rollout_log must be one this plugin wrote: a resume cuts the rows of
    rollouts after its checkpoint, and appending or cutting must never touch a file we did not write."""
    from .files import check_outputs

    check_outputs([(path, "--coherent.rollout_log")])  # a folder, or an uncreatable path: now, not after a rollout
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for number, text in enumerate(lines, start=1):
        if not text.strip() or (number == len(lines) and not text.endswith("\n")):
            continue  # a blank line, or the last line a killed run cut short (the resume drops it)
        try:
            row = json.loads(text)
        except ValueError:
            row = None
        if not isinstance(row, dict) or any(key not in row for key in ROLLOUT_LOG_KEYS):
            raise ConfigError(
                f"--coherent.rollout_log {path}: line {number} is not a rollout-log row of openrlhf_coherent "
                f"(no {'/'.join(ROLLOUT_LOG_KEYS)}): this file was not written by this plugin and would be "
                "appended to and cut on resume; choose another path"
            )


def refuse_vision_models(args, configs: dict, trust_remote_code: bool) -> None:
    """A vision-language checkpoint (OpenRLHF's test: a `vision_config` in its HF config) gets its
    prompts' images in the actor and reference forwards but not in the coherent actor, which scores
    text only: refused rather than scored on image placeholders without pixels."""
    from transformers import AutoConfig

    configs = dict(configs)
    if not any(same_model_path(args.actor.model_name_or_path, getattr(cfg, "_name_or_path", None)) for cfg in configs.values()):
        try:
            configs["--actor.model_name_or_path"] = AutoConfig.from_pretrained(
                args.actor.model_name_or_path, trust_remote_code=trust_remote_code
            )
        except Exception:  # OpenRLHF reports an unloadable actor itself
            pass
    for flag, cfg in configs.items():
        if hasattr(cfg, "vision_config"):
            raise ConfigError(
                f"{flag}: a vision-language model ({type(cfg).__name__}); --reward.model_name_or_path coherent "
                "scores text only and would compute log p_base without the prompts' images"
            )


def check_ppo_args(args, coherent: bool) -> None:
    """What train_ppo_ray checks with or without the coherent reward, before Ray starts: every
    numeric flag (OpenRLHF's own too), that no model folder OpenRLHF loads (it always passes
    trust_remote_code=True) runs code the user did not allow, and the output and checkpoint folders."""
    from .files import check_training_folders, check_weights_complete, local_files
    from .numeric import check_numeric_flags, tree_items
    from .remote_code import PPO_TRUST_FLAG, refuse_remote_code, share_with_workers

    check_numeric_flags(tree_items(args))
    trust = args.coherent.trust_remote_code
    models = [(args.actor.model_name_or_path, "--actor.model_name_or_path"),
              (args.critic.model_name_or_path, "--critic.model_name_or_path")]  # fmt: skip
    if coherent:
        models += [(args.coherent.base_model, "--coherent.base_model"), (args.coherent.sft_model, "--coherent.sft_model")]
    elif not args.reward.remote_url:
        models += [(p, "--reward.model_name_or_path") for p in (args.reward.model_name_or_path or "").split(",") if p]
    for path, flag in models:
        refuse_remote_code(path, flag, trust, PPO_TRUST_FLAG)
        check_weights_complete(path, flag)
    share_with_workers(trust)  # for loaders in Ray workers that cannot see args (the CPU rollout engine)
    reads = models + [(p, "--data.prompt_dataset") for p in local_files(args.data.prompt_dataset)]
    reads += [(p, "--eval.dataset") for p in local_files(getattr(args.eval, "dataset", None))]
    outputs = [(args.ckpt.output_dir, "--ckpt.output_dir")]
    if args.critic.model_name_or_path and args.critic.save_value_network:
        outputs.append((args.ckpt.output_dir + "_critic", "--ckpt.output_dir (+ _critic, the value network)"))
    check_training_folders(outputs, (args.ckpt.path, "--ckpt.path"), reads, args.ckpt.save_steps > 0)


def validate(args) -> None:
    """Check an OpenRLHF `args` tree (after hierarchize) that selects the coherent reward, and fill in
    the derived settings. Raises ConfigError naming the flag. Runs in the driver before Ray starts."""
    c = args.coherent
    if args.train.agent_func_path:
        # OpenRLHF turns this into --reward.remote_url "agent" only after this check runs and then
        # builds no reward group: the coherent reward would be dispatched to nothing at the first rollout.
        raise ConfigError(
            f"--train.agent_func_path {args.train.agent_func_path}: the agent supplies the rewards, so it cannot "
            "be combined with --reward.model_name_or_path coherent (no coherent reward group would be built)"
        )
    if getattr(args.data, "max_images_per_prompt", 0) > 0:
        raise ConfigError(
            f"--data.max_images_per_prompt {args.data.max_images_per_prompt}: multimodal prompts are not supported "
            "with --reward.model_name_or_path coherent (the coherent actor scores text only, so log p_base would "
            "be computed without the images the reference model sees)"
        )
    if not c.base_model:
        raise ConfigError(
            "--reward.model_name_or_path coherent needs --coherent.base_model <pretrained base model path>: "
            "the coherent reward is log p_SFT(y|x) - log p_base(y|x)"
        )
    if not args.actor.model_name_or_path:
        raise ConfigError("--actor.model_name_or_path is required (the SFT model PPO starts from)")
    estimator = args.algo.advantage.estimator
    if estimator not in ESTIMATORS:
        raise ConfigError(f"--algo.advantage.estimator {estimator}: not supported, choose from {ESTIMATORS}")
    if estimator == "gae" and not args.critic.model_name_or_path:
        raise ConfigError(
            "--algo.advantage.estimator gae needs an explicit --critic.model_name_or_path (normally the SFT "
            "model): OpenRLHF would otherwise initialise the critic from --reward.model_name_or_path, which "
            "is 'coherent', not a model"
        )
    if c.reward_type == "token" and estimator in GROUP_ESTIMATORS:
        raise ConfigError(
            f"--coherent.reward_type token gives per-token rewards; --algo.advantage.estimator {estimator} "
            "computes a per-prompt baseline of scalar rewards. Use gae or reinforce with the token-wise variant"
        )
    if c.reward_type == "token" and getattr(args.reward, "stop_properly_penalty_coef", None) is not None:
        # OpenRLHF's stop-properly penalty scales or replaces the scalar reward of a truncated sample;
        # the token-wise variant's per-token rewards would pass through it untouched.
        raise ConfigError(
            "--reward.stop_properly_penalty_coef acts on the scalar reward only; with --coherent.reward_type token "
            "the per-token rewards would escape it. Use --coherent.reward_type sequence, or "
            "--reward.overlong_buffer_len (an additive penalty) instead"
        )
    if c.reward_type == "token" and isinstance(args.reward.clip_range, list):  # a tuple: OpenRLHF's default, dropped below
        raise ConfigError(
            "--reward.clip_range clamps the scalar reward only; with --coherent.reward_type token the per-token "
            "rewards would escape it. Bound them with --coherent.token_clip instead"
        )
    stop_coef = getattr(args.reward, "stop_properly_penalty_coef", None)
    if stop_coef is not None and 0 <= stop_coef < 1:
        # OpenRLHF multiplies a truncated sample's reward by a coefficient >= 0. The coherent reward is
        # signed: a negative one moves toward 0, so truncation would pay. Only its replacement form
        # (a negative coefficient is the truncated sample's whole reward) penalises truncation here.
        raise ConfigError(
            f"--reward.stop_properly_penalty_coef {stop_coef}: OpenRLHF multiplies a truncated response's reward by it, "
            "and the coherent reward is signed, so a negative reward would rise toward 0 (truncation rewarded). "
            "Pass a negative value instead: the reward a truncated response gets, below the usual reward range"
        )
    if args.train.async_enable:
        raise ConfigError(
            "--train.async_enable is not supported with the coherent reward yet (the plugin hooks the "
            "synchronous PPOTrainer); drop the flag"
        )
    # A NaN, infinite, zero or negative setting would make every reward NaN, flip its sign or
    # silence a guard; refused here rather than found in the metrics after the run.
    from . import mix

    mix.validate(args)  # takes --reward.remote_url for the mix with a rule reward
    check_number("--coherent.scale", c.scale, low=0)
    check_number("--coherent.token_clip", c.token_clip, low=0)
    check_number("--coherent.sft_logp_floor", c.sft_logp_floor, low=0)
    check_number("--coherent.alarm_eos_drop", c.alarm_eos_drop, low=0, high=1)
    check_number("--coherent.alarm_logp_drop", c.alarm_logp_drop, low=0)
    if c.alarm_window < 2:
        raise ConfigError(f"--coherent.alarm_window must be at least 2, got {c.alarm_window}")
    if c.rollout_log:
        # Checked here, written by the trainer actor: one absolute path for both (the actor's working
        # directory is Ray's copy of working_dir, on a cluster another node's). On a cluster it must
        # be on a filesystem the trainer's node shares with this driver.
        c.rollout_log = os.path.abspath(os.path.expanduser(c.rollout_log))
        check_rollout_log(c.rollout_log)

    from .remote_code import PPO_TRUST_FLAG

    trust = c.trust_remote_code
    base_config = check_causal_lm(c.base_model, "--coherent.base_model", trust, PPO_TRUST_FLAG)
    sft_flag = "--coherent.sft_model" if c.sft_model else "--actor.model_name_or_path"
    c.sft_model = c.sft_model or args.actor.model_name_or_path
    sft_config = check_causal_lm(c.sft_model, sft_flag, trust, PPO_TRUST_FLAG)
    refuse_vision_models(args, {"--coherent.base_model": base_config, sft_flag: sft_config}, trust)
    # OpenRLHF loads the actor (also as reference model and vLLM engine) and the critic with
    # trust_remote_code=True whatever the flag says: check_ppo_args refuses custom code there.
    check_ppo_args(args, coherent=True)
    # Derived setting read by the experience maker: what a response's final token gets when it is an
    # EOS the SFT model (or the actor that generates) stops on and the base does not.
    sft_only = check_same_tokenizer(c.sft_model, c.base_model, sft_flag, trust, allow_eos_difference=True) or []
    actor_only = []
    if not same_model_path(c.sft_model, args.actor.model_name_or_path):
        from transformers import AutoTokenizer

        def stops(path):
            return stop_token_ids(path, AutoTokenizer.from_pretrained(path, trust_remote_code=trust))

        actor_only = sorted(stops(args.actor.model_name_or_path) - stops(c.base_model) - stops(c.sft_model))
    c.eos_handling = eos_handling(c, sft_only, actor_only, trust) if sft_only or actor_only else None

    # OpenRLHF's reference model is loaded from the actor path and scores at the rollout temperature.
    # Only when that is exactly the SFT model at temperature 1 are its log-probs log p_SFT.
    reasons = []
    if c.reuse_ref == "never":
        reasons.append("--coherent.reuse_ref never")
    if args.algo.kl.init_coef <= 0:
        reasons.append("no reference model (--algo.kl.init_coef 0)")
    if args.rollout.temperature != 1.0:
        reasons.append(f"--rollout.temperature {args.rollout.temperature} (reference log-probs are tempered)")
    if not same_model_path(c.sft_model, args.actor.model_name_or_path):
        reasons.append("--coherent.sft_model differs from --actor.model_name_or_path")
    c.reuse_ref_logprobs = not reasons
    if c.reuse_ref_logprobs:
        logger.warning(
            "SRPPO: reusing the reference model's log-probs as log p_SFT; the coherent actor runs only the "
            "base model (one extra forward per step)"
        )
    else:
        logger.warning(
            "SRPPO: the coherent actor computes both log p_SFT and log p_base because %s", "; ".join(reasons)
        )

    # OpenRLHF clamps every reward to --reward.clip_range, (-10, 10) by default. A summed log-ratio
    # over a few hundred tokens is routinely beyond that, and clipping would flatten the signal that
    # ranks responses, so unless the user set a range explicitly, the coherent reward is not clamped.
    # argparse leaves the default as the tuple (-10, 10); a value the user typed arrives as a list.
    if isinstance(args.reward.clip_range, tuple):
        args.reward.clip_range = None
    if c.reward_type == "token":
        logger.warning(
            "SRPPO: --coherent.reward_type token (paper eq. 8). The paper (Appendix E) saw responses grow "
            "without bound with it: watch rollout/response_length_mean and rollout/truncated_rate"
        )
