"""GPU smoke test for users, after installing on one CUDA GPU: `pytest -m gpu tests/test_gpu_smoke.py`
(or `bash scripts/gpu_smoke.sh`, which also runs the scorer benchmark). Skips without CUDA.

Run twice by the authors, on one H200 (2026-11-30, in-process: no Ray or vLLM on that machine):
3 passed, the vLLM test skipped. The output is in `benchmarks/results/gpu_smoke_h200/`.
"""

import importlib.util
import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this is the GPU smoke test)"),
]


def real_shaped_llama(path, vocab=32000, hidden=1024, layers=8):
    """A random Llama with real proportions (GQA, rope, a 32k vocabulary), saved with a tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from openrlhf_coherent.tiny_models import make_tiny_llama

    make_tiny_llama(path)  # tokenizer and files; the weights are replaced below
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 7 // 2, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 256, max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def experience_and_fp32_sums(path):
    """OpenRLHF-layout experience on CUDA (4 rows of 512 tokens, one left-padded, 128-token
    responses, one finished early) and each row's summed response log-probs under the fp32 model."""
    from transformers import AutoModelForCausalLM

    from openrlhf_coherent.scoring import action_log_probs

    torch.manual_seed(0)
    sequences = torch.randint(10, 32000, (4, 512), device="cuda")
    attention_mask = torch.ones_like(sequences)
    attention_mask[1, :100] = 0  # left padding
    action_mask = torch.zeros(4, 511, dtype=torch.long, device="cuda")
    action_mask[:, 383:] = 1  # 128-token responses
    action_mask[2, 450:] = 0  # one finished early
    fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    batch = (sequences, attention_mask, action_mask)
    return batch, action_log_probs(fp32, *batch).sum(-1)


def test_coherent_actor_scoring_in_bf16_against_fp32(tmp_path):
    """The coherent actor's scoring call (`scoring.action_log_probs`) in bf16 on CUDA against the
    same model in fp32, and against OpenRLHF's Actor forward in bf16 (the reference-model path whose
    log-probs are reused as log p_SFT): summed response log-probs agree to bf16 accuracy."""
    from openrlhf.models import Actor
    from transformers import AutoModelForCausalLM

    from openrlhf_coherent.scoring import action_log_probs

    path = real_shaped_llama(str(tmp_path / "m"))
    (sequences, attention_mask, action_mask), expected = experience_and_fp32_sums(path)
    bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    got = action_log_probs(bf16, sequences, attention_mask, action_mask).sum(-1)
    actor = Actor(bf16, temperature=1.0)
    actor.packing_samples = False
    with torch.no_grad():
        openrlhf = actor(sequences, action_mask, attention_mask).float().sum(-1)
    print("summed log-probs fp32", expected.tolist(), "bf16", got.tolist(), "openrlhf bf16", openrlhf.tolist())
    # bf16 carries ~3 significant digits; a 128-token sum of log-probs near -10 each is ~-1300.
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=2.0)
    torch.testing.assert_close(got, openrlhf, rtol=1e-2, atol=2.0)


def distributed_env(monkeypatch):
    """One rank, for DeepSpeed's `init_distributed` outside a launcher (kept if a launcher set them)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        if name not in os.environ:
            monkeypatch.setenv(name, value)
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_coherent_actor_model_path_in_a_deepspeed_bf16_engine(tmp_path, monkeypatch, zero_stage):
    """The coherent actor's model path without Ray: a model loaded as `CoherentRewardActor._load`
    loads it (OpenRLHF's Actor, bf16, sdpa, temperature 1, `get_eval_ds_config`, ZeRO-0 or ZeRO-3
    as `--ds.zero_stage` 3 gives the reward role) and wrapped in a DeepSpeed eval engine, then scored
    as `_log_probs` scores it: `scoring.action_log_probs` on the engine (LM head on the response
    window only). Against OpenRLHF's own forward on the same engine and against plain fp32."""
    import deepspeed
    from openrlhf.models import Actor
    from openrlhf.utils.deepspeed.deepspeed_utils import get_eval_ds_config

    from openrlhf_coherent.reward import check_finite_log_probs
    from openrlhf_coherent.scoring import accepts_logits_to_keep, action_log_probs

    distributed_env(monkeypatch)
    path = real_shaped_llama(str(tmp_path / "m"))
    (sequences, attention_mask, action_mask), expected = experience_and_fp32_sums(path)
    ds_config = get_eval_ds_config(offload=False, stage=zero_stage, param_dtype="bf16")
    ds_config["train_micro_batch_size_per_gpu"], ds_config["train_batch_size"] = 4, 4
    actor = Actor(path, attn_implementation="sdpa", param_dtype="bf16", ds_config=ds_config, temperature=1.0)
    assert accepts_logits_to_keep(actor.model)  # so the actor takes the response-window path
    actor.model, *_ = deepspeed.initialize(model=actor.model, config=ds_config, dist_init_required=True)
    actor.eval()
    with torch.no_grad():
        got = action_log_probs(actor.model, sequences, attention_mask, action_mask)
        openrlhf = actor(sequences, action_mask, attention_mask).float()
    check_finite_log_probs(got.cpu(), action_mask.cpu(), f"the ZeRO-{zero_stage} bf16 engine")
    got, openrlhf = got.sum(-1), openrlhf.sum(-1)
    print(f"ZeRO-{zero_stage} summed log-probs fp32", expected.tolist(), "engine", got.tolist(), "openrlhf", openrlhf.tolist())
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=2.0)
    torch.testing.assert_close(got, openrlhf, rtol=1e-2, atol=2.0)


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or importlib.util.find_spec("vllm").loader is None,
    reason="vLLM is not installed: the two PPO steps through vLLM are skipped",
)
def test_two_ppo_steps_through_vllm(tmp_path, tiny_models, prompt_file):
    """Two SRPPO steps on one GPU with the real vLLM engine, colocated (every role on the one GPU)."""
    from srppo_helpers import run_srppo, step_logs, tiny_srppo_argv

    base, sft = tiny_models
    argv = tiny_srppo_argv(sft, base, prompt_file, str(tmp_path), "--train.colocate_all", "--vllm.gpu_memory_utilization", "0.3")
    argv[argv.index("--ds.param_dtype") + 1] = "bf16"
    argv[argv.index("--ds.attn_implementation") + 1] = "sdpa"
    log = run_srppo(argv, timeout=900)
    assert "this job runs on cuda" in log
    assert len(step_logs(log)) == 2
    assert "dev mode" not in log  # no CPU shim anywhere
