"""On paper: memory per GPU of each role of an 8B SRPPO run on 8 x 80 GB, and the FLOPs that the
reuse of reference log-probs saves per step.

    python -m benchmarks.memory_8b      # seconds; no GPU needed

Parameter counts are counted (not assumed) from a Llama-3-8B-shaped `LlamaConfig` built on the
meta device; the critic is the same decoder with a 1-output value head instead of the LM head
(OpenRLHF's `get_llm_for_sequence_regression`).

Bytes per parameter are DeepSpeed's documented mixed-precision formulas (ZeRO paper, Rajbhandari
et al. 2020, section 3.1; DeepSpeed's ZeRO docs), not measured on a GPU (none was available):
a trained role holds bf16 weights (2 B) + bf16 gradients (2 B) + fp32 master weights, Adam
momentum and variance (12 B) = 16 B/param, all three sharded over the role's GPUs under ZeRO-3
(OpenRLHF's usual `--ds.zero_stage 3`); an inference role (reference, coherent actor) holds bf16
weights, 2 B/param, sharded the same way. vLLM takes `--vllm.gpu_memory_utilization` of each of its
GPUs (weights + KV cache + its own buffers) when it starts. Activations, the logits buffer and
CUDA/NCCL workspaces are not counted: they depend on micro-batch size, sequence length and
gradient checkpointing, and are the reason a layout needs headroom below 80 GB.

Placement (OpenRLHF 0.11.2 `cli/train_ppo_ray.py`): `--train.colocate_all` puts every role and the
vLLM engines in one placement group on the actor's GPUs (each DeepSpeed role takes a 0.2-GPU
share of every GPU, vLLM engines x TP must equal the actor's GPU count); `--train.colocate_actor_ref`
puts actor and reference together; `--train.colocate_critic_reward` puts critic and reward group
(here the coherent actor) together; a role that is not colocated gets GPUs of its own. There is no
flag that pairs only the reward group with the reference: the coherent actor shares GPUs with the
reference model only under `--train.colocate_all`.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.common import table, write_result

GB = 1e9  # decimal GB, as GPU memory is quoted (80 GB)
TRAINED_BYTES = 2 + 2 + 12  # bf16 weights + bf16 grads + fp32 (master, Adam m, Adam v)
INFERENCE_BYTES = 2  # bf16 weights


def count_params(hidden, layers, intermediate, heads, kv_heads, vocab):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate, num_attention_heads=heads,
        num_key_value_heads=kv_heads, vocab_size=vocab, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    return {"policy": total, "critic": total - head + hidden, "lm_head": head}


def layouts(n_gpus: int):
    """Two 8-GPU layouts OpenRLHF's flags can express for PPO with a critic (GAE, as in the paper)."""
    return {
        "colocate_all (coherent actor with reference)": {
            "flags": "--train.colocate_all --ds.zero_stage 3 --vllm.num_engines 8 --vllm.tensor_parallel_size 1",
            "gpus": {"actor": n_gpus, "critic": n_gpus, "reference": n_gpus, "coherent actor": n_gpus, "vLLM": n_gpus},
            "shared": "all roles on all GPUs",
            "vllm_util": 0.5,
        },
        "split (coherent actor with critic)": {
            "flags": "--train.colocate_actor_ref --train.colocate_critic_reward --ds.zero_stage 3 "
            "--actor/ref.num_gpus_per_node 4 --critic/reward.num_gpus_per_node 2 --vllm.num_engines 2",
            "gpus": {"actor": 4, "reference": 4, "critic": 2, "coherent actor": 2, "vLLM": 2},
            "shared": "GPUs 0-3 actor+reference, 4-5 critic+coherent actor, 6-7 vLLM",
            "vllm_util": 0.9,
        },
    }


def role_gb(role, params, gpus, reuse, vllm_util, gpu_gb, vllm_tp=1):
    if role == "actor":
        return TRAINED_BYTES * params["policy"] / gpus / GB
    if role == "critic":
        return TRAINED_BYTES * params["critic"] / gpus / GB
    if role == "reference":
        return INFERENCE_BYTES * params["policy"] / gpus / GB
    if role == "coherent actor":  # the base model, plus the SFT model when log-probs are not reused
        return INFERENCE_BYTES * params["policy"] * (1 if reuse else 2) / gpus / GB
    if role == "vLLM":
        return vllm_util * gpu_gb
    raise ValueError(role)


def step_flops(params, samples, prompt_len, response_len, epochs):
    """Forward = 2 x params x tokens, backward = 2 x forward (attention scores not counted)."""
    n, nc = params["policy"], params["critic"]
    tokens = samples * (prompt_len + response_len)
    parts = {
        "generation (vLLM: prefill + decode)": 2 * n * tokens,
        "actor log-probs (rollout)": 2 * n * tokens,
        "critic values": 2 * nc * tokens,
        "reference log-probs": 2 * n * tokens,
        "coherent actor: base model": 2 * n * tokens,
        "actor training (fwd + bwd)": 6 * n * tokens * epochs,
        "critic training (fwd + bwd)": 6 * nc * tokens * epochs,
    }
    return parts, 2 * n * tokens  # the SFT forward that reuse avoids


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu_gb", type=float, default=80.0)
    p.add_argument("--samples", type=int, default=1024, help="rollout samples per step (the paper's buffer)")
    p.add_argument("--prompt_len", type=int, default=512)
    p.add_argument("--response_len", type=int, default=512)
    p.add_argument("--epochs", type=int, default=1, help="PPO epochs over each rollout")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    params = count_params(args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads, args.vocab)
    result = {"layouts": {}}
    for name, layout in layouts(args.gpus).items():
        per_reuse = {}
        for reuse in (True, False):
            roles = {
                role: role_gb(role, params, g, reuse, layout["vllm_util"], args.gpu_gb) for role, g in layout["gpus"].items()
            }
            # Per physical GPU: the sum of the roles placed on it.
            if name.startswith("colocate_all"):
                per_gpu = {"every GPU": sum(roles.values())}
            else:
                per_gpu = {
                    "actor+reference GPUs": roles["actor"] + roles["reference"],
                    "critic+coherent GPUs": roles["critic"] + roles["coherent actor"],
                    "vLLM GPUs": roles["vLLM"],
                }
            per_reuse["reuse" if reuse else "no_reuse"] = {"roles_gb_per_gpu": roles, "gpu_totals_gb": per_gpu}
        result["layouts"][name] = {**layout, **per_reuse}

    parts, saved = step_flops(params, args.samples, args.prompt_len, args.response_len, args.epochs)
    total_reuse = sum(parts.values())
    flops = {
        "parts": parts,
        "total_with_reuse": total_reuse,
        "total_without_reuse": total_reuse + saved,
        "saved_by_reuse": saved,
        "saved_fraction_of_step": saved / (total_reuse + saved),
    }
    record = {
        "benchmark": "memory_8b",
        "command": "python -m benchmarks.memory_8b",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "params": params,
        "bytes_per_param": {"trained (ZeRO, bf16 + fp32 Adam)": TRAINED_BYTES, "inference (bf16)": INFERENCE_BYTES},
        "bytes_source": "DeepSpeed/ZeRO documented mixed-precision formula, not measured on a GPU",
        **result,
        "flops_per_step": flops,
    }
    path = write_result("memory_8b", record, args.out)

    print(f"8B SRPPO on {args.gpus} x {args.gpu_gb:.0f} GB, GAE with critic, ZeRO-3, bf16 (model states only, no activations)")
    print(f"policy {params['policy'] / 1e9:.2f}B params, critic {params['critic'] / 1e9:.2f}B; "
          f"trained roles {TRAINED_BYTES} B/param, inference roles {INFERENCE_BYTES} B/param (sharded over the role's GPUs)")  # fmt: skip
    rows = []
    for name, layout in result["layouts"].items():
        for role, g in layout["gpus"].items():
            r, nr = layout["reuse"]["roles_gb_per_gpu"][role], layout["no_reuse"]["roles_gb_per_gpu"][role]
            rows.append([name, role, g, f"{r:.1f}", f"{nr:.1f}"])
        for where, total in layout["reuse"]["gpu_totals_gb"].items():
            rows.append([name, f"**total, {where}**", "", f"**{total:.1f}**", f"**{layout['no_reuse']['gpu_totals_gb'][where]:.1f}**"])
    print(table(["layout", "role", "GPUs", "GB/GPU, reuse (default)", "GB/GPU, --coherent.reuse_ref never"], rows))
    print(f"vLLM: gpu_memory_utilization {', '.join(str(l['vllm_util']) for l in layouts(args.gpus).values())} of {args.gpu_gb:.0f} GB")
    print()
    print(f"FLOPs per step ({args.samples} samples x {args.prompt_len}+{args.response_len} tokens, {args.epochs} PPO epoch):")
    frows = [[k, f"{v / 1e15:.1f}"] for k, v in parts.items()]
    frows.append(["**total with reuse**", f"**{total_reuse / 1e15:.1f}**"])
    frows.append(["SFT forward avoided by reuse", f"{saved / 1e15:.1f} ({100 * flops['saved_fraction_of_step']:.1f}% of the step without reuse)"])
    print(table(["part", "PFLOP"], frows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
