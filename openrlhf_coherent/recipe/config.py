"""The recipe's configuration: a YAML file the user copies and edits, `--set KEY=VALUE` overrides,
`${NAME}` expansion, and validation that names the offending key before anything starts.

Every key is a typed dataclass field, so an unknown key, a wrong type or a missing required value
is reported as `config error: <file>: <dotted.key>: ...`. Numbers are coerced from strings because
YAML 1.1 (PyYAML) reads `5e-8` as a string, not a float.

String values may contain `${NAME}` or `${NAME:-default}`: NAME is a top-level key of this config
(`root`, `output_dir`, `base_model`, ...) or else an environment variable. The tiny CPU config
uses `${root}` so `--set root=DIR` moves every path at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from openrlhf_coherent.redact import wandb_key_from_env

METHODS = ("srppo", "sft_extended", "spin", "ppo_rm")
LAUNCHERS = ("auto", "deepspeed", "torchrun", "python")


class RecipeConfigError(ValueError):
    """A bad config file, key, value or path; the message names it."""


@dataclass
class SFTPhase:
    """One supervised fine-tuning run (OpenRLHF `train_sft`). Keys map to its flags as commented."""

    dataset: Optional[str] = None  # --data.dataset (comma-separated list = a blend)
    dataset_probs: Optional[str] = None  # --data.dataset_probs
    dataset_split: str = "train"  # --data.dataset_split
    input_key: str = "input"  # --data.input_key
    output_key: Optional[str] = "output"  # --data.output_key (null: input_key holds whole conversations)
    apply_chat_template: bool = True  # --data.apply_chat_template
    tokenizer_chat_template: Optional[str] = None  # --data.tokenizer_chat_template
    max_len: int = 2048  # --data.max_len
    max_samples: Optional[int] = None  # --data.max_samples
    epochs: int = 2  # --train.max_epochs
    lr: float = 5e-6  # --adam.lr
    warmup_ratio: float = 0.03  # --lr_warmup_ratio
    batch_size: int = 128  # --train.batch_size (global)
    micro_batch_size: int = 2  # --train.micro_batch_size (per GPU)
    seed: int = 42  # --train.seed
    zero_stage: int = 2  # --ds.zero_stage
    param_dtype: str = "bf16"  # --ds.param_dtype
    attn_implementation: str = "flash_attention_2"  # --ds.attn_implementation ("eager" on CPU)
    gradient_checkpointing: bool = False  # --model.gradient_checkpointing_enable
    save_steps: int = -1  # --ckpt.save_steps: DeepSpeed checkpoint interval for resume (-1: none)
    extra_args: List[str] = field(default_factory=list)  # any other train_sft flags, appended last


@dataclass
class SFTConfig(SFTPhase):
    """Stage 1. `then` lists further SFT phases (paper: medium/diminished overlap), each starting
    from the previous phase's model; a phase's keys default to this section's values."""

    launcher: str = "auto"  # auto (deepspeed with CUDA, else one plain python process) | deepspeed | torchrun | python
    launcher_args: List[str] = field(default_factory=list)  # e.g. [--num_gpus, "8"] or a hostfile
    then: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class PPOConfig:
    """Stage 2: PPO with `openrlhf_coherent.cli.train_ppo_ray`. Keys map to OpenRLHF flags as commented."""

    prompt_dataset: Optional[str] = None  # --data.prompt_dataset
    prompt_split: str = "train"  # --data.prompt_split
    input_key: str = "input"  # --data.input_key
    apply_chat_template: bool = True  # --data.apply_chat_template
    tokenizer_chat_template: Optional[str] = None  # --data.tokenizer_chat_template
    max_samples: Optional[int] = None  # --data.max_samples (prompts used)
    max_len: int = 2048  # --data.max_len (prompt + response)
    max_new_tokens: int = 1024  # --rollout.max_new_tokens
    temperature: float = 1.0  # --rollout.temperature
    top_p: float = 1.0  # --rollout.top_p
    rollout_batch_size: int = 1024  # --rollout.batch_size (prompts per rollout buffer)
    n_samples_per_prompt: int = 1  # --rollout.n_samples_per_prompt (buffer = rollout_batch_size x this)
    rollout_micro_batch_size: int = 8  # --rollout.micro_batch_size
    train_batch_size: int = 128  # --train.batch_size
    train_micro_batch_size: int = 4  # --train.micro_batch_size
    max_epochs: int = 1  # --train.max_epochs (passes over each buffer)
    num_episodes: int = 2  # --train.num_episodes (passes over the prompt set)
    estimator: str = "gae"  # --algo.advantage.estimator
    gamma: float = 1.0  # --algo.advantage.gamma
    lambd: float = 0.95  # --algo.advantage.lambd
    kl_coef: float = 0.2  # --algo.kl.init_coef
    eps_clip: float = 0.2  # --actor.eps_clip
    actor_lr: float = 5e-8  # --actor.adam.lr
    critic_lr: float = 9e-6  # --critic.adam.lr
    # Rollout buffers (PPO steps) in which only the critic trains. OpenRLHF's trainer runs the actor
    # when global_step > --critic.freezing_steps with global_step counted from 0, so N buffers of
    # warm-up is --critic.freezing_steps N-1. 0: no warm-up.
    critic_warmup_buffers: int = 0
    seed: int = 42  # --train.seed
    num_nodes: int = 1  # --{actor,critic,ref,reward}.num_nodes
    num_gpus_per_node: int = 8  # --{actor,critic,ref,reward}.num_gpus_per_node
    # Per-group GPUs per node where they differ (null: num_gpus_per_node); "reward" is the coherent
    # actor holding the base model (or the reward model for the ppo_rm baseline).
    actor_gpus: Optional[int] = None
    critic_gpus: Optional[int] = None
    ref_gpus: Optional[int] = None
    reward_gpus: Optional[int] = None
    vllm_num_engines: int = 4  # --vllm.num_engines
    vllm_tensor_parallel_size: int = 2  # --vllm.tensor_parallel_size
    vllm_gpu_memory_utilization: Optional[float] = None  # --vllm.gpu_memory_utilization
    colocate_all: bool = False  # --train.colocate_all (with --vllm.enable_sleep --ds.enable_sleep)
    zero_stage: int = 3  # --ds.zero_stage
    param_dtype: str = "bf16"  # --ds.param_dtype
    attn_implementation: str = "flash_attention_2"  # --ds.attn_implementation
    gradient_checkpointing: bool = True  # --actor.gradient_checkpointing_enable
    save_steps: int = -1  # --ckpt.save_steps: checkpoint every N PPO steps for resume (-1: none)
    coherent: Dict[str, Any] = field(default_factory=dict)  # --coherent.KEY VALUE (true: bare flag)
    extra_args: List[str] = field(default_factory=list)  # any other train_ppo_ray flags, appended last


@dataclass
class SFTExtendedConfig:
    """Baseline "SFT (Extended)": continue the SFT model with the last SFT phase's data and settings
    until `total_epochs` epochs in all (paper: 2 -> 6)."""

    total_epochs: int = 6
    extra_args: List[str] = field(default_factory=list)


@dataclass
class SpinConfig:
    """Baseline SPIN, first iteration: pairs (demonstration, SFT sample) from `spin_pairs`, then DPO
    (OpenRLHF `train_dpo`) from the SFT model with the SFT model as reference."""

    dataset: Optional[str] = None  # demonstrations JSONL (default: the first SFT phase's dataset)
    input_key: Optional[str] = None  # default: sft.input_key
    output_key: Optional[str] = None  # default: sft.output_key ("" = input_key holds whole conversations)
    max_samples: Optional[int] = None  # demonstrations used (spin_pairs --max_samples)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    num_actors: int = 1  # spin_pairs sampling actors (one GPU each)
    beta: float = 0.1  # --model.beta
    lr: float = 5e-7  # --adam.lr
    epochs: int = 1  # --train.max_epochs
    batch_size: int = 128  # --train.batch_size
    micro_batch_size: int = 1  # --train.micro_batch_size
    max_len: int = 2048  # --data.max_len
    save_steps: int = -1  # --ckpt.save_steps
    extra_args: List[str] = field(default_factory=list)  # extra train_dpo flags
    pairs_extra_args: List[str] = field(default_factory=list)  # extra spin_pairs flags


@dataclass
class PPORMConfig:
    """Baseline "PPO with a preference reward model": stage 2 with `reward_model` instead of the
    coherent reward (every other PPO setting from the `ppo` section)."""

    reward_model: Optional[str] = None  # --reward.model_name_or_path
    extra_args: List[str] = field(default_factory=list)


@dataclass
class RecipeConfig:
    method: str = "srppo"  # srppo | sft_extended | spin | ppo_rm
    root: str = "."  # a directory other values can refer to as ${root}
    output_dir: Optional[str] = None  # every stage writes under here (see docs/cluster.md)
    base_model: Optional[str] = None  # the pretrained model: SFT starts here; log p_base
    sft_model: Optional[str] = None  # an existing SFT model: stage 1 is not run, stage 2 starts from this
    sft: SFTConfig = field(default_factory=SFTConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sft_extended: SFTExtendedConfig = field(default_factory=SFTExtendedConfig)
    spin: SpinConfig = field(default_factory=SpinConfig)
    ppo_rm: PPORMConfig = field(default_factory=PPORMConfig)
    description: str = ""  # free text: where the values come from
    # Allow custom code from base_model / sft_model / ppo_rm.reward_model (auto_map, custom_generate,
    # an adapter's base): checked at plan time, since the train_sft/train_dpo stages run OpenRLHF's
    # own CLIs, which always load with trust_remote_code=True. Passed on to the PPO and SPIN tools.
    trust_remote_code: bool = False

    def sft_phases(self) -> List[SFTPhase]:
        """The SFT phases in order: the `sft` section, then each `then` entry over its defaults."""
        base = {f.name: getattr(self.sft, f.name) for f in dataclasses.fields(SFTPhase)}
        phases = [SFTPhase(**base)]
        for i, overrides in enumerate(self.sft.then):
            phases.append(_build(SFTPhase, {**base, **overrides}, f"sft.then[{i}]", self._source))
        return phases

    _source: str = "<config>"


# ---- loading --------------------------------------------------------------------------------


def load_config(path: str, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Read `path` (YAML), apply `--set KEY=VALUE` overrides, expand `${...}`, validate."""
    import yaml

    if not os.path.isfile(path):
        raise RecipeConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise RecipeConfigError(f"{path}: not valid YAML: {e}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RecipeConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    raw = expand(raw, raw, path)
    cfg = _build(RecipeConfig, raw, "", path)
    cfg._source = path
    _check(cfg, path)
    cfg.sft_phases()  # validates every `then` entry now, not when stage 1 starts
    return cfg


def apply_override(raw: dict, item: str) -> None:
    """`KEY=VALUE`: KEY a dotted path into the mapping, VALUE parsed as YAML (`[a, b]`, `true`, `1e-5`)."""
    import yaml

    if "=" not in item:
        raise RecipeConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set ppo.actor_lr=5e-8")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeConfigError(f"--set {item!r}: empty key part in {key!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeConfigError(f"--set {item!r}: {part!r} is not a section")
    node[parts[-1]] = value


_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value, top: dict, source: str, key: str = ""):
    """Replace ${NAME} / ${NAME:-default} in every string: a top-level config key, else the environment."""
    if isinstance(value, dict):
        return {k: expand(v, top, source, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, top, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(match, depth=0):
        name, default = match.group(1), match.group(2)
        if name in top and isinstance(top[name], (str, int, float)) and not isinstance(top[name], bool):
            found = str(top[name])
            return _REF.sub(lambda m: sub(m, depth + 1), found) if depth < 5 else found
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise RecipeConfigError(
            f"{source}: {key}: ${{{name}}} is neither a top-level config key nor a set environment variable "
            f"(use ${{{name}:-default}} for a default)"
        )

    return _REF.sub(sub, value)


# ---- typed construction ---------------------------------------------------------------------


def _build(cls, raw: Any, prefix: str, source: str):
    if not isinstance(raw, dict):
        raise RecipeConfigError(f"{source}: {prefix or 'top level'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise RecipeConfigError(
            f"{source}: unknown key {where}{unknown[0]} (known keys{' in ' + prefix if prefix else ''}: "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, source)
    return cls(**kwargs)


def _coerce(value, hint, key: str, source: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, args[0], key, source)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, source)
    if origin in (list, List):
        if not isinstance(value, list):
            raise RecipeConfigError(f"{source}: {key}: expected a list, got {value!r}")
        if args and args[0] is str:
            bad = [v for v in value if isinstance(v, (dict, list)) or v is None]
            if bad:
                raise RecipeConfigError(f"{source}: {key}: list items must be strings or numbers, got {bad[0]!r}")
            try:  # a `${WANDB_API_KEY}` in a flag list becomes `env`: the key stays off every command line
                return wandb_key_from_env([_flag_text(v) for v in value], f"{source}: {key}")
            except ValueError as e:
                raise RecipeConfigError(str(e)) from None
        return [v if isinstance(v, dict) else _fail(key, source, "a list of mappings", value) for v in value]
    if origin in (dict, Dict):
        return dict(value) if isinstance(value, dict) else _fail(key, source, "a mapping", value)
    if hint is bool:
        return value if isinstance(value, bool) else _fail(key, source, "true or false", value)
    if hint is int:
        if isinstance(value, bool):
            _fail(key, source, "an integer", value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else _fail(key, source, "an integer", value)
            except ValueError:
                pass
        return _fail(key, source, "an integer", value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 leaves 5e-8 a string
            except ValueError:
                pass
        return _fail(key, source, "a number", value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None or isinstance(value, bool):
            return _fail(key, source, "a string", value)
        return str(value)
    return value


def _fail(key, source, expected, value):
    raise RecipeConfigError(f"{source}: {key}: expected {expected}, got {value!r}")


def _flag_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check(cfg: RecipeConfig, source: str) -> None:
    """Checks across keys (types are checked while building)."""
    if cfg.method not in METHODS:
        raise RecipeConfigError(f"{source}: method: {cfg.method!r} is not one of {', '.join(METHODS)}")
    for key in ("output_dir", "base_model"):
        if not getattr(cfg, key):
            raise RecipeConfigError(f"{source}: {key} is required")
    if not cfg.sft.dataset:
        raise RecipeConfigError(f"{source}: sft.dataset is required")
    if cfg.sft.launcher not in LAUNCHERS:
        raise RecipeConfigError(f"{source}: sft.launcher: {cfg.sft.launcher!r} is not one of {', '.join(LAUNCHERS)}")
    positive = [("sft.epochs", cfg.sft.epochs), ("sft.batch_size", cfg.sft.batch_size),
                ("ppo.rollout_batch_size", cfg.ppo.rollout_batch_size), ("ppo.train_batch_size", cfg.ppo.train_batch_size),
                ("ppo.n_samples_per_prompt", cfg.ppo.n_samples_per_prompt), ("ppo.num_episodes", cfg.ppo.num_episodes)]  # fmt: skip
    for key, value in positive:
        if value < 1:
            raise RecipeConfigError(f"{source}: {key} must be >= 1, got {value}")
    if cfg.ppo.critic_warmup_buffers < 0:
        raise RecipeConfigError(f"{source}: ppo.critic_warmup_buffers must be >= 0")
    if cfg.ppo.critic_warmup_buffers and cfg.ppo.estimator != "gae":
        raise RecipeConfigError(f"{source}: ppo.critic_warmup_buffers needs ppo.estimator gae (a critic to warm up)")
    if cfg.method in ("srppo", "ppo_rm") and not cfg.ppo.prompt_dataset:
        raise RecipeConfigError(f"{source}: ppo.prompt_dataset is required for method {cfg.method}")
    if cfg.method == "ppo_rm" and not cfg.ppo_rm.reward_model:
        raise RecipeConfigError(f"{source}: ppo_rm.reward_model is required for method ppo_rm")
    if cfg.method == "sft_extended" and cfg.sft_extended.total_epochs <= cfg.sft_phases()[-1].epochs:
        raise RecipeConfigError(
            f"{source}: sft_extended.total_epochs ({cfg.sft_extended.total_epochs}) must exceed the SFT epochs "
            f"({cfg.sft_phases()[-1].epochs})"
        )
    for name, value in cfg.ppo.coherent.items():
        if not re.fullmatch(r"[a-z_]+", str(name)) or isinstance(value, (dict, list)):
            raise RecipeConfigError(f"{source}: ppo.coherent.{name}: expected a flag name with a scalar value")
