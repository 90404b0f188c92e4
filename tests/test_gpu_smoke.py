"""GPU smoke test for users, after installing on one CUDA GPU: `pytest -m gpu tests/test_gpu_smoke.py`
(or `bash scripts/gpu_smoke.sh`, which also runs the scorer benchmark). Skips without CUDA.

Run by the authors on one H200 (2026-11-30, in-process: no Ray or vLLM on that machine): 3 passed,
the vLLM test skipped (`benchmarks/results/gpu_smoke_h200/run3/`).
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

    from openrlhf_coherent.devmode.tiny_models import make_tiny_llama

    make_tiny_llama(path)  # tokenizer and files; the weights are replaced below
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 7 // 2, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 256, max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def experience_and_fp32_log_probs(path):
    """A micro-batch as OpenRLHF 0.11.2 makes it (per-sample [prompt | response] rows of different
    lengths, right-padded by its `Experience.concat_experiences`), on CUDA, and its per-token
    response log-probs under the fp32 model."""
    from openrlhf.trainer.ppo_utils.experience import Experience
    from transformers import AutoModelForCausalLM

    from openrlhf_coherent.scoring import action_log_probs

    torch.manual_seed(0)
    samples = []
    for prompt, response in ((384, 128), (284, 128), (384, 67), (300, 100)):
        sequences = torch.randint(10, 32000, (1, prompt + response))
        action_mask = torch.tensor([[0] * (prompt - 1) + [1] * response])  # over sequences[:, 1:]
        samples.append(Experience(sequences=sequences, attention_mask=torch.ones_like(sequences), action_mask=action_mask))
    experience = Experience.concat_experiences(samples, pad_token_id=0)
    batch = tuple(t.cuda() for t in (experience.sequences, experience.attention_mask, experience.action_mask))
    fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    return batch, action_log_probs(fp32, *batch)


def assert_matches(got, fp32, openrlhf, action_mask):
    """Per token: bf16 against fp32 within 0.15 nats (0.03 at most on a CPU's bf16; a target off by
    one position moves a token by 0.8 on average, up to 11), and against OpenRLHF's own bf16 forward
    within 0.05 (only the head's smaller matmul may round differently)."""
    print("summed log-probs fp32", fp32.sum(-1).tolist(), "ours", got.sum(-1).tolist(), "openrlhf", openrlhf.sum(-1).tolist())
    print("max |difference| per token: against fp32", float((got - fp32).abs().max()), "against openrlhf", float((got - openrlhf).abs().max()))
    assert bool(action_mask.any(dim=1).all())  # every row has response tokens to compare
    torch.testing.assert_close(got, fp32, rtol=0, atol=0.15)
    torch.testing.assert_close(got, openrlhf, rtol=0, atol=0.05)


def test_coherent_actor_scoring_in_bf16_against_fp32(tmp_path):
    """The coherent actor's scoring call (`scoring.action_log_probs`) in bf16 on CUDA against the
    same model in fp32, and against OpenRLHF's Actor forward in bf16 (the reference-model path whose
    log-probs are reused as log p_SFT): per-token response log-probs agree to bf16 accuracy."""
    from openrlhf.models import Actor
    from transformers import AutoModelForCausalLM

    from openrlhf_coherent.scoring import action_log_probs

    path = real_shaped_llama(str(tmp_path / "m"))
    (sequences, attention_mask, action_mask), expected = experience_and_fp32_log_probs(path)
    bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    got = action_log_probs(bf16, sequences, attention_mask, action_mask)
    actor = Actor(bf16, temperature=1.0)
    actor.packing_samples = False
    with torch.no_grad():
        openrlhf = actor(sequences, action_mask, attention_mask).float()
    assert_matches(got, expected, openrlhf, action_mask)


def distributed_env(monkeypatch):
    """One rank, for DeepSpeed's `init_distributed` outside a launcher (kept if a launcher set them)."""
    from openrlhf_coherent.devmode.launch import single_process_env

    for name, value in single_process_env().items():
        if name not in os.environ:
            monkeypatch.setenv(name, value)
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_coherent_actor_model_path_in_a_deepspeed_bf16_engine(tmp_path, monkeypatch, zero_stage):
    """The coherent actor's model path without Ray, mirrored in-process (not through
    `CoherentRewardActor._load` itself, which needs Ray): OpenRLHF's Actor, bf16, sdpa, temperature
    1, `get_eval_ds_config` at ZeRO-0 or ZeRO-3 (one rank: nothing is partitioned across ranks), in a
    DeepSpeed eval engine, scored as `_log_probs` scores it: `scoring.action_log_probs` on the engine
    (LM head on the response window only). Against OpenRLHF's own forward on the same engine and
    against plain fp32."""
    import deepspeed
    from openrlhf.models import Actor
    from openrlhf.utils.deepspeed.deepspeed_utils import get_eval_ds_config

    from openrlhf_coherent.reward import check_finite_log_probs
    from openrlhf_coherent.scoring import accepts_logits_to_keep, action_log_probs

    distributed_env(monkeypatch)
    path = real_shaped_llama(str(tmp_path / "m"))
    (sequences, attention_mask, action_mask), expected = experience_and_fp32_log_probs(path)
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
    assert_matches(got, expected, openrlhf, action_mask)


def vllm_tiny_models(root):
    """(base, sft) like the suite's tiny pair, but with one attention head of 64 (the suite's has
    four of 16): vLLM's attention backends refuse some small head sizes (FlashInfer takes 64, 128,
    256; older FlashAttention builds 32, 64, ...); 64 is accepted by every one of them."""
    from conftest import SFT_TEXTS
    from openrlhf_coherent.devmode.tiny_models import finetune_copy, make_tiny_llama

    base, sft = os.path.join(root, "base"), os.path.join(root, "sft")
    make_tiny_llama(base, seed=0, num_heads=1)
    finetune_copy(base, sft, SFT_TEXTS, steps=30)
    return base, sft


def vllm_ppo_argv(sft, base, prompts, out_dir):
    """The command line of `test_two_ppo_steps_through_vllm`. `tests/test_cluster_review2.py` runs it
    through our CLI's parser on CPU, so a flag our validation refuses is found without a GPU."""
    from srppo_helpers import tiny_srppo_argv

    argv = tiny_srppo_argv(sft, base, prompts, out_dir, "--algo.advantage.estimator", "reinforce",
                           "--train.colocate_all", "--vllm.gpu_memory_utilization", "0.3")  # fmt: skip
    argv[argv.index("--ds.param_dtype") + 1] = "bf16"
    argv[argv.index("--ds.attn_implementation") + 1] = "sdpa"
    return argv


# Every GPU test that starts our PPO CLI, by its command-line builder (checked on CPU).
PPO_ARGV_BUILDERS = [vllm_ppo_argv]


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or importlib.util.find_spec("vllm").loader is None,
    reason="vLLM is not installed: the two PPO steps through vLLM are skipped",
)
def test_two_ppo_steps_through_vllm(tmp_path, prompt_file):
    """Two SRPPO steps on one GPU with the real vLLM engine, colocated (every role on the one GPU)."""
    from srppo_helpers import run_srppo, step_logs

    base, sft = vllm_tiny_models(str(tmp_path / "models"))
    log = run_srppo(vllm_ppo_argv(sft, base, prompt_file, str(tmp_path)), timeout=900)
    assert "this job runs on cuda" in log
    assert len(step_logs(log)) == 2
    assert "dev mode" not in log  # no CPU shim anywhere
