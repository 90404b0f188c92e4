"""Tests for the CPU development mode (openrlhf_coherent/devmode/__init__.py, cpu_rollout.py).

Unit tests check the import stand-ins, the bert_padding helpers, `apply()`'s idempotence and the
CPU rollout engine; one integration test runs stock OpenRLHF PPO (GAE + critic, reward model,
reference model, 2 steps) on tiny models in a subprocess.
"""

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from openrlhf_coherent import devmode
from openrlhf_coherent.devmode.tiny_models import make_tiny_llama



def is_really_installed(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.loader is not None  # a stand-in's spec has no loader


REAL_PACKAGES_PRESENT = is_really_installed("vllm") or is_really_installed("flash_attn")


def run_python(code: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a fresh local Ray
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-8000:]}"
    return result


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_llama(str(tmp_path_factory.mktemp("tiny") / "llama"))


# ---- import stand-ins ------------------------------------------------------------------------


@pytest.mark.skipif(REAL_PACKAGES_PRESENT, reason="the stand-ins only apply where vllm / flash_attn are missing")
def test_stand_ins_make_openrlhf_importable():
    run_python(
        """
        import importlib.util
        from openrlhf_coherent import devmode
        devmode.install_import_stand_ins()
        devmode.install_import_stand_ins()  # idempotent

        import vllm
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.utils import random_uuid
        from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input
        assert importlib.util.find_spec("vllm") is not None
        assert SamplingParams(max_tokens=3).max_tokens == 3 and random_uuid() != random_uuid()

        # Anything else in vllm fails with a message that names the cause.
        try:
            vllm.AsyncLLMEngine
        except AttributeError as e:
            assert "not installed" in str(e)
        else:
            raise AssertionError("vllm.AsyncLLMEngine should not exist")

        # OpenRLHF's log-prob path must still see flash-attn's Triton kernels as missing.
        try:
            from flash_attn.ops.triton.cross_entropy import cross_entropy_loss
        except ImportError:
            pass
        else:
            raise AssertionError("flash_attn.ops should stay missing")

        # The modules that import vllm / flash_attn at import time.
        import openrlhf.cli.train_ppo_ray, openrlhf.models.ring_attn_utils, openrlhf.trainer.ppo_trainer
        """
    )


def test_bert_padding_round_trip():
    devmode.install_import_stand_ins()
    from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input

    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])  # left, none, right padded
    unpadded, indices, cu_seqlens, max_seqlen, used_seqlens = unpad_input(hidden, mask)

    assert unpadded.shape == (int(mask.sum()), 4)
    assert torch.equal(unpadded, hidden[mask.bool()])
    assert cu_seqlens.tolist() == [0, 3, 8, 10] and cu_seqlens.dtype == torch.int32
    assert max_seqlen == 5 and used_seqlens.tolist() == [3, 5, 2]
    assert torch.equal(index_first_axis(rearrange(hidden, "b s d -> (b s) d"), indices), unpadded)
    assert torch.equal(pad_input(unpadded, indices, 3, 5), hidden * mask.unsqueeze(-1))


# ---- apply() / ray_init_kwargs ------------------------------------------------------------------


def test_apply_is_idempotent_and_logs_once():
    result = run_python(
        """
        import torch
        from openrlhf_coherent import devmode
        devmode.apply()
        devmode.apply()
        if devmode.cpu_mode():
            from openrlhf.trainer.ray import vllm_engine
            from openrlhf_coherent.devmode.cpu_rollout import CpuRolloutActor
            assert vllm_engine.RolloutRayActor is CpuRolloutActor
            assert torch.zeros(1).to(torch.cuda.current_device()).device.type == "cpu"
            torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.set_device(0)
            # The shims' imports ran with the collector paused (openrlhf_coherent.devmode.startup): it runs again.
            import gc
            assert gc.isenabled() and gc.get_freeze_count() == 0
        """
    )
    expected = 1 if devmode.cpu_mode() else 0
    assert result.stderr.count("openrlhf_coherent dev mode") == expected, result.stderr


def test_imports_without_gc_pauses_the_collector_and_restores_its_state():
    import gc

    from openrlhf_coherent.devmode.startup import imports_without_gc

    try:
        with imports_without_gc():
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()  # a caller that had paused it keeps it paused, also when the block raises
        with pytest.raises(ImportError):
            with imports_without_gc():
                raise ImportError("no such module")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_ray_init_settings(monkeypatch):
    """Starting a local Ray: the decision is this machine's; every worker receives it and only reads it."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(devmode.DEVICE_ENV, raising=False)
    # Unset (restored afterwards): earlier tests' local Rays already set it in this process.
    monkeypatch.setenv("RAY_prestart_worker_first_driver", "")
    monkeypatch.delenv("RAY_prestart_worker_first_driver")
    device, reason, kwargs = devmode.ray_init_settings(num_gpus=4)
    runtime_env = kwargs["runtime_env"]
    assert runtime_env["env_vars"]["TOKENIZERS_PARALLELISM"] in ("true", os.environ.get("TOKENIZERS_PARALLELISM"))
    assert runtime_env["worker_process_setup_hook"] == "openrlhf_coherent.devmode.worker_setup"
    assert runtime_env["env_vars"][devmode.DEVICE_ENV] == device
    if device == "cpu":
        assert kwargs["num_gpus"] == 4 and kwargs["num_cpus"] >= 6 and "CUDA not available" in reason
        assert runtime_env["env_vars"]["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", "1")
        policy_update = "fixed" if "OMP_NUM_THREADS" in os.environ else "all_cores"
        assert runtime_env["env_vars"][devmode.POLICY_UPDATE_THREADS_ENV] == policy_update
        # read by the raylet this driver starts: no idle workers competing with the actors' start-up
        assert os.environ["RAY_prestart_worker_first_driver"] == "0"
    else:
        assert "num_gpus" not in kwargs and "OMP_NUM_THREADS" not in runtime_env["env_vars"]
    # The evaluator tools' workers (plain transformers) get a set-up hook without the shims.
    plain = devmode.ray_init_settings(num_gpus=4, openrlhf_workers=False)[2]["runtime_env"]
    assert plain["worker_process_setup_hook"] == "openrlhf_coherent.devmode.plain_worker_setup"
    assert plain["env_vars"][devmode.DEVICE_ENV] == device
    # The explicit switch wins over this machine.
    monkeypatch.setenv(devmode.DEVICE_ENV, "cuda")
    forced_device, forced_reason, forced = devmode.ray_init_settings(num_gpus=4)
    assert forced_device == "cuda" and "OPENRLHF_COHERENT_DEVICE=cuda" in forced_reason and "num_gpus" not in forced


# ---- CPU rollout engine -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model):
    devmode.install_import_stand_ins()
    from openrlhf_coherent.devmode.cpu_rollout import CpuRolloutEngine

    return CpuRolloutEngine(tiny_model, seed=0)


def generate(engine, prompt_ids, **params):
    from vllm import SamplingParams

    return asyncio.run(engine.generate(prompt_ids, SamplingParams(**params))).outputs[0]


def test_engine_logprobs_match_the_model(engine):
    """Temperature 1, no top-k / top-p: the reported log-probs are the model's full-vocab ones
    (guards against HF's implicit top_k=50)."""
    prompt = engine.tokenizer("user : say hello assistant :", add_special_tokens=False)["input_ids"]
    out = generate(engine, prompt, temperature=1.0, top_p=1.0, top_k=-1, max_tokens=6, logprobs=1)
    sequence = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(engine.model(sequence).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
    expected = log_probs.gather(-1, torch.tensor(out.token_ids)[:, None]).squeeze(-1)
    reported = torch.tensor([step[tok].logprob for step, tok in zip(out.logprobs, out.token_ids)])
    torch.testing.assert_close(reported, expected, atol=1e-5, rtol=0)


def test_engine_finish_reason(engine, monkeypatch):
    prompt = engine.tokenizer("user : what is the color of the sun ? assistant :", add_special_tokens=False)["input_ids"]
    greedy = generate(engine, prompt, temperature=0.0, max_tokens=6, min_tokens=0)
    if greedy.finish_reason == "length":
        assert len(greedy.token_ids) == 6 and engine.tokenizer.eos_token_id not in greedy.token_ids
    # Make the third greedy token the EOS: generation stops there, keeps it, and reports "stop".
    stop_token = greedy.token_ids[2]
    monkeypatch.setattr(engine, "eos_token_ids", [stop_token])
    stopped = generate(engine, prompt, temperature=0.0, max_tokens=6, min_tokens=0)
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == greedy.token_ids[: greedy.token_ids.index(stop_token) + 1]


def test_engine_load_weights(engine):
    state = {name: torch.full_like(p, 0.5, dtype=torch.bfloat16) for name, p in engine.model.named_parameters()}
    original = {name: p.detach().clone() for name, p in engine.model.named_parameters()}
    try:
        engine.load_weights(state)
        assert all(torch.all(p == 0.5) and p.dtype == torch.float32 for p in engine.model.parameters())
        with pytest.raises(KeyError):
            engine.load_weights({"not.a.parameter": torch.zeros(1)})
    finally:
        engine.model.load_state_dict(original, strict=False)


# ---- integration: stock OpenRLHF PPO on CPU ---------------------------------------------------

PROMPTS = ["what is the color of the sun ?", "say hello", "count one two three", "is the moon white ?"] * 2


@pytest.mark.skipif(not devmode.cpu_mode(), reason="exercises the CPU shims")
def test_stock_openrlhf_ppo_runs_on_cpu(tmp_path, tiny_model):
    """GAE with a critic, a reward model and a reference model, ZeRO-2, 2 PPO steps."""
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"input": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS))
    flags = f"""
        --actor.model_name_or_path {tiny_model} --critic.model_name_or_path {tiny_model}
        --reward.model_name_or_path {tiny_model} --algo.advantage.estimator gae --algo.kl.init_coef 0.01
        --actor.num_gpus_per_node 1 --ref.num_gpus_per_node 1 --critic.num_gpus_per_node 1
        --reward.num_gpus_per_node 1 --vllm.num_engines 1
        --ds.attn_implementation eager --ds.zero_stage 2
        --rollout.batch_size 4 --train.batch_size 4 --rollout.micro_batch_size 2 --train.micro_batch_size 2
        --rollout.max_new_tokens 8 --data.max_len 64 --data.max_samples 8 --train.num_episodes 1
        --data.prompt_dataset {dataset} --data.input_key input --data.apply_chat_template
        --ckpt.output_dir {tmp_path / 'out'} --ckpt.path {tmp_path / 'ckpt'}
    """.split()
    result = run_python(
        f"""
        import runpy, sys
        from openrlhf_coherent import devmode
        devmode.apply()
        import ray
        ray.init(**devmode.ray_init_kwargs(num_gpus=5))  # actor, ref, critic, reward, engine
        sys.argv = ["train_ppo_ray"] + {flags!r}
        try:
            runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__")
        finally:
            ray.shutdown()
        """,
        timeout=240,
        cwd=tmp_path,
    )
    log = result.stdout + result.stderr
    assert "Global step 1:" in log and "Global step 2:" in log and "Global step 3:" not in log
    assert (tmp_path / "out" / "model.safetensors").exists()  # the actor was saved at the end


def test_policy_update_takes_every_core_only_when_the_driver_asks(monkeypatch):
    """`make test` sets OMP_NUM_THREADS=1, so its PPO runs never take this branch: checked here."""
    import torch
    from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer

    seen = []
    # monkeypatch restores the original method at teardown, over the wrapper the patch installs
    monkeypatch.setattr(ActorPPOTrainer, "ppo_train", lambda self: seen.append(torch.get_num_threads()))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv(devmode.POLICY_UPDATE_THREADS_ENV, "fixed")
        devmode._patch_policy_update_threads()
        ActorPPOTrainer.ppo_train(None)
        monkeypatch.setenv(devmode.POLICY_UPDATE_THREADS_ENV, "all_cores")
        devmode._patch_policy_update_threads()
        ActorPPOTrainer.ppo_train(None)
        assert seen == [1, devmode.usable_cores()] and torch.get_num_threads() == 1  # restored after the update
    finally:
        torch.set_num_threads(threads)


def test_usable_cores_follow_affinity_and_the_cgroup_cpu_quota(tmp_path):
    """A container's CPU quota, not the host's core count, sets the CPU mode's thread counts."""
    affinity = len(os.sched_getaffinity(0))

    def cores(proc_cgroup: str, files: dict) -> int:
        for name, text in files.items():
            (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "fs" / name).write_text(text)
        (tmp_path / "cgroup").write_text(proc_cgroup)
        try:
            return devmode.usable_cores(str(tmp_path / "fs"), str(tmp_path / "cgroup"))
        finally:
            shutil.rmtree(tmp_path / "fs", ignore_errors=True)

    # no cgroup files, no quota ("max"), a missing /proc file: the affinity alone
    assert cores("0::/\n", {}) == affinity
    assert cores("0::/\n", {"cpu.max": "max 100000\n"}) == affinity
    assert devmode.usable_cores(str(tmp_path / "fs"), str(tmp_path / "missing")) == affinity
    assert cores("garbage\n\n0::/\n", {"cpu.max": "100000 0\n"}) == affinity  # unreadable: no quota
    # cgroup v2: 1.5 CPUs -> 1 thread; the smallest quota on the path wins (a parent's 0.5 -> 1, never 0)
    assert cores("0::/\n", {"cpu.max": "150000 100000\n"}) == 1
    assert cores("0::/kubepods/pod1\n", {"kubepods/pod1/cpu.max": "max 100000", "kubepods/cpu.max": "50000 100000"}) == 1
    # cgroup v1, cpu and cpuacct mounted together; -1 is "no quota"
    v1 = "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n"
    assert cores(v1, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}) == affinity
    assert cores(v1, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}) == 1
    # a quota above the affinity does not raise the count
    assert cores("0::/\n", {"cpu.max": f"{100000 * (affinity + 4)} 100000"}) == affinity
