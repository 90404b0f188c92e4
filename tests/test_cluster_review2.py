"""Issue 27, the second review of the GPU-cluster path: what a CPU can check of it.

Before-Ray checks run in this process, through our CLI's own parser (`parse_args`: OpenRLHF's
parser, `hierarchize` and the plugin's validation; nothing starts).
"""

import json
import os

import pytest

from openrlhf_coherent.cli.train_ppo_ray import parse_args
from openrlhf_coherent.config import ConfigError
from test_cluster_correctness import srppo_argv  # a stock SRPPO command line, models only

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- item 2: the GPU smoke test's command lines pass our validation ------------------------------


def test_every_gpu_tests_ppo_argv_passes_our_parser(tmp_path, prompt_file):
    """Each GPU test's PPO command line (test_gpu_smoke.PPO_ARGV_BUILDERS) through our CLI's parser
    and validation on CPU, on the models that test builds: its head size is one every vLLM
    attention backend accepts (a multiple of 32, at least 64)."""
    from test_gpu_smoke import PPO_ARGV_BUILDERS, vllm_tiny_models

    base, sft = vllm_tiny_models(str(tmp_path / "models"))
    config = json.load(open(os.path.join(base, "config.json")))
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert head_dim >= 64 and head_dim % 32 == 0, head_dim
    assert PPO_ARGV_BUILDERS
    for build in PPO_ARGV_BUILDERS:
        args = parse_args(build(sft, base, prompt_file, str(tmp_path / build.__name__)))
        assert args.reward.model_name_or_path == "coherent"
        assert args.ds.param_dtype == "bf16"  # a GPU run: the fp32 dev-mode dtype would be refused on CUDA


# ---- item 4: a stop-properly coefficient in [0, 1) would reward truncation -----------------------


@pytest.mark.parametrize("coef", ["0", "0.5"])
def test_stop_properly_scaling_coefficient_is_refused(tiny_models, coef):
    base, sft = tiny_models
    with pytest.raises(ConfigError, match=r"--reward.stop_properly_penalty_coef .*Pass a negative value"):
        parse_args(srppo_argv(sft, base, "--reward.stop_properly_penalty_coef", coef))


def test_stop_properly_replacement_value_is_accepted(tiny_models):
    base, sft = tiny_models
    args = parse_args(srppo_argv(sft, base, "--reward.stop_properly_penalty_coef", "-10"))
    assert args.reward.stop_properly_penalty_coef == -10


def test_alarm_advice_names_a_negative_stop_properly_value():
    from openrlhf_coherent.alarm import GUARD_ADVICE

    assert "--reward.stop_properly_penalty_coef <a negative reward" in GUARD_ADVICE


# ---- item 5: the job's command reaches the cluster unchanged --------------------------------------


def test_submit_job_passes_arguments_unchanged_through_a_real_job_server():
    """submit_job.py (what srppo_multi_node.sh runs) against a real `ray start --head` job server:
    arguments with $, backslashes, quotes, globs and spaces arrive exactly as given. `ray job
    submit` would join them for Windows and let /bin/sh expand `${root}/x` to `/x`."""
    import subprocess
    import sys
    import tempfile
    import time

    from srppo_helpers import free_ports, job_driver_logs, remove_ray_cluster

    tricky = ["${root}/x", "$HOME", "a\\b", "it's", '"q"', "*", "a b", "", "--set", "k=[1, 2]"]
    ray_tmp = tempfile.mkdtemp(prefix="rsj", dir="/tmp")
    port, dash, *extra = free_ports(7)
    # A loaded 2-core machine can miss Ray's start-up defaults: more time, as tests/test_job_scripts.py gives.
    env = dict(os.environ, RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT="300", RAY_DASHBOARD_STARTUP_TIMEOUT_S="300",
               RAY_raylet_start_wait_time_s="300")  # fmt: skip
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    try:
        flags = zip(("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                     "runtime-env-agent-port", "metrics-export-port"), extra)  # fmt: skip
        started = subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "true",
                                  "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "1",
                                  "--num-gpus", "0", "--temp-dir", ray_tmp, "--disable-usage-stats",
                                  *[x for flag, p in flags for x in (f"--{flag}", str(p))]],
                                 capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 300
        while subprocess.run([ray_bin, "job", "list", "--address", address], capture_output=True, env=env).returncode != 0:
            assert time.time() < deadline, "the Ray job server did not come up"
            time.sleep(3)
        code = "import json, sys; print('ARGV=' + json.dumps(sys.argv[1:]))"
        proc = subprocess.run([sys.executable, os.path.join(REPO, "openrlhf_coherent", "submit_job.py"), "--address", address,
                               "--runtime-env-json", json.dumps({"env_vars": {"root": "/should/not/expand"}}),
                               "--", sys.executable, "-c", code, *tricky],
                              capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:] + job_driver_logs(ray_tmp)
        line = next((x for x in out.splitlines() if x.startswith("ARGV=")), None)
        assert line is not None, out[-4000:]
        assert json.loads(line[len("ARGV="):]) == tricky
        assert "succeeded" in out
    finally:
        remove_ray_cluster(ray_tmp)


# ---- item 6: GPUs without an accelerator tag are probed where the work runs ------------------------


def test_untagged_gpus_are_probed_on_the_cluster_and_never_guessed(monkeypatch):
    """A running cluster declaring a GPU Ray tagged with no accelerator type (here fake: `ray start
    --num-gpus 1` on a CPU machine; on a real cluster NVML failing in a container) is not taken
    for a CPU cluster from its resources: a one-GPU task asks torch there. With the GPU held by
    another job, so the probe cannot start, the job is refused naming OPENRLHF_COHERENT_DEVICE."""
    import subprocess
    import sys
    import tempfile

    from openrlhf_coherent import devmode
    from srppo_helpers import free_ports, remove_ray_cluster

    temp_dir = tempfile.mkdtemp(prefix="rgp", dir="/tmp")
    port, *extra = free_ports(6)
    flags = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", devmode.DEVICE_ENV)}
    env["RAY_raylet_start_wait_time_s"] = "300"  # a loaded 2-core machine can miss Ray's default
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(devmode.DEVICE_ENV, raising=False)
    holder = None
    try:
        started = subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--num-gpus", "1", "--num-cpus", "2",
                                  "--temp-dir", temp_dir, "--include-dashboard", "false", "--disable-usage-stats",
                                  *[a for flag, p in zip(flags, extra) for a in (f"--{flag}", str(p))]],
                                 capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        address = f"127.0.0.1:{port}"
        device, reason, joining = devmode.job_device(address, temp_dir, num_gpus=1)
        assert (device, joining) == ("cpu", True)
        assert "declares 1 GPUs but Ray detected no GPU hardware" in reason and "a one-GPU task there sees no CUDA" in reason

        hold = ("import ray, time\nray.init(address=%r, _temp_dir=%r)\n"
                "@ray.remote(num_gpus=1, num_cpus=0)\nclass Hold:\n    def ping(self): return 1\n"
                "h = Hold.remote(); ray.get(h.ping.remote()); print('HOLDING', flush=True); time.sleep(600)\n") % (address, temp_dir)  # fmt: skip
        holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True, env=env)
        assert holder.stdout.readline().strip() == "HOLDING"
        monkeypatch.setenv(devmode.GPU_PROBE_TIMEOUT_ENV, "5")
        with pytest.raises(devmode.DeviceError, match="OPENRLHF_COHERENT_DEVICE=cuda or OPENRLHF_COHERENT_DEVICE=cpu"):
            devmode.job_device(address, temp_dir, num_gpus=1)
        # The explicit switch needs no probe.
        monkeypatch.setenv(devmode.DEVICE_ENV, "cpu")
        assert devmode.job_device(address, temp_dir, num_gpus=1)[0] == "cpu"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        remove_ray_cluster(temp_dir)


# ---- item 9: smaller ones ------------------------------------------------------------------------


def test_resume_cut_reads_the_rollout_log_from_the_end_only(tmp_path):
    """The resume cut stops at this run's last row at or before the checkpoint: what lies before is
    neither read nor rewritten (here 200 KB of bytes that are not even UTF-8, which the whole-file
    read failed on), and the cut is exact."""
    from types import SimpleNamespace

    from openrlhf_coherent.experience import CoherentExperienceMaker

    def row(run, step):
        return (json.dumps({"run_id": run, "step": step, "prompt_ids": [1], "response_ids": [2], "reward": 0.5}) + "\n").encode()

    prefix = b"\xff\xfe not json \n" * 20000
    log = tmp_path / "rollouts.jsonl"
    kept = prefix + b"".join(row("B", s) for s in (1, 2))
    log.write_bytes(kept + b"".join(row("B", s) for s in (3, 4)) + b'{"run_id": "B", "st')
    maker = object.__new__(CoherentExperienceMaker)
    maker.coherent = SimpleNamespace(rollout_log=str(log))
    assert maker.cut_rollout_log_after(2, "B") == 3
    assert log.read_bytes() == kept
    assert maker.cut_rollout_log_after(2, "B") == 0 and log.read_bytes() == kept


def test_token_wise_reward_with_a_clip_range_is_refused(tiny_models):
    base, sft = tiny_models
    with pytest.raises(ConfigError, match="--reward.clip_range clamps the scalar reward only"):
        parse_args(srppo_argv(sft, base, "--coherent.reward_type", "token", "--reward.clip_range", "-5", "5"))


def test_recipe_refuses_auto_launcher_args_without_cuda_here(tmp_path, monkeypatch):
    from openrlhf_coherent.recipe.config import RecipeConfigError, load_config
    from openrlhf_coherent.recipe.stages import build_stages

    monkeypatch.setenv("SRPPO_TINY_ROOT", str(tmp_path))
    cfg = load_config(os.path.join(REPO, "examples", "configs", "tiny_cpu.yaml"), ["sft.launcher_args=[--hostfile,/h]"])
    with pytest.raises(RecipeConfigError, match="sft.launcher auto: no CUDA on this machine"):
        build_stages(cfg, cuda=False)
    assert build_stages(cfg, cuda=True)[0].argv[:3] == ["deepspeed", "--hostfile", "/h"]


def test_recipe_makes_the_rollout_log_absolute(tmp_path, monkeypatch):
    from openrlhf_coherent.recipe.config import load_config
    from openrlhf_coherent.recipe.stages import build_stages

    monkeypatch.setenv("SRPPO_TINY_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(os.path.join(REPO, "examples", "configs", "tiny_cpu.yaml"), ["ppo.coherent.rollout_log=rel/r.jsonl"])
    ppo = build_stages(cfg, cuda=False)[-1].argv
    assert ppo[ppo.index("--coherent.rollout_log") + 1] == str(tmp_path / "rel" / "r.jsonl")


def test_ppo_cli_makes_the_rollout_log_absolute(tiny_models, tmp_path, monkeypatch):
    base, sft = tiny_models
    monkeypatch.chdir(tmp_path)
    args = parse_args(srppo_argv(sft, base, "--coherent.rollout_log", "logs/r.jsonl"))
    assert args.coherent.rollout_log == str(tmp_path / "logs" / "r.jsonl")


# ---- item 3: a ZeRO-3 coherent group gets as many micro-batches on every rank ---------------------


def test_zero3_coherent_group_with_an_odd_micro_batch_count(tmp_path):
    """Two CoherentRewardActor ranks (gloo, fake GPUs) at ZeRO-3, weights large enough to be
    partitioned (DeepSpeed keeps parameters under 1e5 elements whole), three micro-batches. Padded
    by `padded_for_coherent_group` to four, the forward finishes and the copy scores as its
    original; the unpadded list (2 on rank 0, 1 on rank 1) leaves rank 0 waiting in a parameter
    gather: the hang the padding prevents."""
    import ray
    import torch
    from openrlhf.trainer.ray.launcher import RayActorGroup
    from openrlhf.utils import get_strategy
    from transformers import AutoTokenizer

    from openrlhf_coherent import devmode
    from openrlhf_coherent.actor import CoherentRewardActor
    from openrlhf_coherent.experience import padded_for_coherent_group
    from openrlhf_coherent.devmode.tiny_models import make_tiny_llama
    from test_actor import PAIRS, openrlhf_batch

    base = make_tiny_llama(str(tmp_path / "wide"), hidden_size=384, num_heads=6, intermediate_size=768)
    args = parse_args(["--actor.model_name_or_path", base, "--reward.model_name_or_path", "coherent",
                       "--coherent.base_model", base, "--coherent.reuse_ref", "never", "--algo.advantage.estimator",
                       "reinforce", "--reward.num_gpus_per_node", "2", "--ds.param_dtype", "fp32",
                       "--ds.attn_implementation", "eager", "--ds.zero_stage", "3", "--data.prompt_dataset", "p.jsonl"])  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(base)
    batches = [openrlhf_batch(tokenizer, [pair])[0] for pair in PAIRS[:3]]
    padded = padded_for_coherent_group(batches, args)
    assert len(padded) == 4 and padded[3] is batches[2]
    ray.init(**devmode.ray_init_kwargs(num_gpus=2))
    try:
        group = RayActorGroup(1, 2, CoherentRewardActor, num_gpus_per_actor=1)
        ray.get(group.async_init_model_from_pretrained(get_strategy(args), "coherent"))
        def forward(micro_batches, timeout):
            refs = group.async_run_method_batch(method_name="forward", sequences=[b.sequences for b in micro_batches],
                                                action_mask=[b.action_mask for b in micro_batches],
                                                attention_mask=[b.attention_mask for b in micro_batches])  # fmt: skip
            return [out for chunk in ray.get(refs, timeout=timeout) for out in chunk]

        outputs = forward(padded, timeout=300)
        assert len(outputs) == 4 and all(torch.isfinite(o["base"]).all() for o in outputs)
        torch.testing.assert_close(outputs[3]["base"], outputs[2]["base"])  # the copy scores as its original
        with pytest.raises(ray.exceptions.GetTimeoutError):
            forward(batches, timeout=60)
    finally:
        ray.shutdown()


def test_colocated_critic_and_coherent_reward_run(tiny_models, prompt_file, tmp_path):
    """`--train.colocate_critic_reward` (critic and coherent group share GPUs): the coherent forward
    is awaited only before the critic's (as stock OpenRLHF awaits its reward model), and the run's
    rewards are still the log-ratios plain transformers computes."""
    from srppo_helpers import check_rewards_match_independent_computation, run_srppo, step_logs, tiny_srppo_argv

    base, sft = tiny_models
    log = run_srppo(tiny_srppo_argv(sft, base, prompt_file, str(tmp_path), "--critic.model_name_or_path", sft,
                                    "--train.colocate_critic_reward"))  # fmt: skip
    assert [s for s, _ in step_logs(log)] == [1, 2]
    check_rewards_match_independent_computation(str(tmp_path), sft, base, 2)
