"""Issue 17, "correct on real clusters": the dev mode only where wanted, real base/SFT pairs, edge
cases refused before Ray or handled, the response-window head.

Before-Ray checks run in this process; the device decision for a driver without CUDA that joins a
cluster with GPUs runs against a real `ray start` head (its own temp dir and ports, so no other
Ray on the machine can find it) in a subprocess driver.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
import ray
import torch

from openrlhf_coherent import devmode
from openrlhf_coherent.cli.train_ppo_ray import _parse, _SelectionProbe, main, parse_args
from openrlhf_coherent.config import ConfigError, check_same_tokenizer
from openrlhf_coherent.plugin import CoherentRewardPlugin
from openrlhf_coherent.reward import coherent_reward
from srppo_helpers import free_ports, remove_ray_cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def srppo_argv(sft, base, *extra):
    return ["--actor.model_name_or_path", sft, "--critic.model_name_or_path", sft,
            "--reward.model_name_or_path", "coherent", "--coherent.base_model", base,
            "--data.prompt_dataset", "unused.jsonl", *extra]  # fmt: skip


def refused(argv, capsys):
    assert main(argv) == 2
    assert not ray.is_initialized(), "must fail before Ray starts"
    return capsys.readouterr().err


# ---- item 1: where the CPU development mode is on ----------------------------------------------


def test_device_from_the_cluster_nodes():
    node = lambda **res: {"Alive": True, "Resources": {"CPU": 8.0, **res}}  # noqa: E731
    assert devmode.device_from_nodes([node(GPU=8.0, **{"accelerator_type:H100": 1.0}), node()])[0] == "cuda"
    # `ray start --num-gpus N` on CPU machines: GPUs declared, no hardware detected -> the CPU mode.
    assert devmode.device_from_nodes([node(GPU=5.0)])[0] == "cpu"
    assert devmode.device_from_nodes([node()])[0] == "cpu"
    dead = {"Alive": False, "Resources": {"GPU": 8.0, "accelerator_type:A100": 1.0}}
    assert devmode.device_from_nodes([dead, node()])[0] == "cpu"


def test_bad_device_switch_is_refused(monkeypatch):
    monkeypatch.setenv(devmode.DEVICE_ENV, "gpu")
    with pytest.raises(devmode.DeviceError, match="OPENRLHF_COHERENT_DEVICE='gpu'"):
        devmode.requested_device()


@pytest.fixture
def gpu_cluster():
    """A running Ray head that looks like a GPU node to the job: 2 GPUs and the accelerator_type
    resource Ray adds when it detects GPU hardware. Own temp dir: no other process finds it."""
    temp_dir = tempfile.mkdtemp(prefix="rgc", dir="/tmp")  # short: AF_UNIX path limit
    port, *extra = free_ports(6)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    flags = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")  # fmt: skip
    cmd = [ray_bin, "start", "--head", "--port", str(port), "--num-gpus", "2", "--num-cpus", "4",
           "--resources", json.dumps({"accelerator_type:H100": 1}), "--temp-dir", temp_dir,
           "--include-dashboard", "false", "--disable-usage-stats",
           *[arg for flag, p in zip(flags, extra) for arg in (f"--{flag}", str(p))]]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    try:
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        remove_ray_cluster(temp_dir)


DRIVER = """
import json, os, sys, torch
assert not torch.cuda.is_available()  # the simulated login node / CPU-only head pod
from openrlhf_coherent import devmode
from openrlhf_coherent.cli.train_ppo_ray import parse_args
from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.plugin import CoherentRewardPlugin
import ray

from openrlhf_coherent.cli.train_ppo_ray import plugin_installed

plugin = CoherentRewardPlugin()
plugin.validate(parse_args(json.loads(sys.argv[1])))  # a stock command line: no models needed
kwargs, real_init = {}, ray.init

def recording_init(*args, **kw):  # the last call is the job's own (the plugin may probe first)
    kwargs.clear(); kwargs.update(kw)
    return real_init(*args, **kw)

ray.init = recording_init
try:  # through the CLI's ray.init hook, as OpenRLHF's train() calls it, with OpenRLHF's own runtime_env
    with plugin_installed(plugin, coherent=False):
        ray.init(runtime_env={"env_vars": {"NCCL_DEBUG": "WARN"}})
except ConfigError as e:
    print("REFUSED", e); sys.exit(0)

@ray.remote(num_gpus=1)
class Probe:
    def report(self):
        import torch
        from openrlhf_coherent import devmode
        return {"env": os.environ.get(devmode.DEVICE_ENV), "decision": devmode._decision,
                "set_device_patched": torch.cuda.set_device.__module__ != "torch.cuda"}

from openrlhf.trainer.ray import vllm_engine
from openrlhf_coherent.devmode.cpu_rollout import CpuRolloutActor
print("RESULT", json.dumps({
    "kwargs": sorted(kwargs), "env": kwargs["runtime_env"]["env_vars"][devmode.DEVICE_ENV],
    "nccl": kwargs["runtime_env"]["env_vars"]["NCCL_DEBUG"],
    "cpu_mode": devmode.cpu_mode(), "cpu_engine": vllm_engine.RolloutRayActor is CpuRolloutActor,
    "worker": ray.get(Probe.remote().report.remote()),
}))
"""


def run_driver(address, argv, **env):
    full_env = {**{k: v for k, v in os.environ.items() if k != devmode.DEVICE_ENV}, "RAY_ADDRESS": address, **env}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(DRIVER), json.dumps(argv)], capture_output=True,
                          text=True, timeout=300, env=full_env, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for line in proc.stdout.splitlines():
        if line.startswith("REFUSED"):
            return line
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])


def test_cuda_less_driver_joining_a_gpu_cluster_does_not_use_the_cpu_mode(gpu_cluster, tiny_models):
    address, temp_dir = gpu_cluster
    _, sft = tiny_models
    # A `ray start` cluster on this machine is joined by ray.init() even without RAY_ADDRESS.
    assert devmode.joins_existing_cluster(None, temp_dir)
    stock = ["--actor.model_name_or_path", sft, "--reward.model_name_or_path", sft, "--data.prompt_dataset", "p.jsonl",
             "--algo.advantage.estimator", "reinforce"]  # fmt: skip

    auto = run_driver(address, stock)
    assert auto["kwargs"] == ["runtime_env"]  # no num_gpus/num_cpus: Ray refuses them when joining
    assert auto["env"] == "cuda" and auto["nccl"] == "WARN"
    assert auto["cpu_mode"] is False and auto["cpu_engine"] is False  # vLLM's RolloutRayActor stays
    assert auto["worker"] == {"env": "cuda", "decision": "cuda", "set_device_patched": False}

    # fp32 exists only in the CPU mode: refused before any actor starts, naming the flag.
    refusal = run_driver(address, [*stock, "--ds.param_dtype", "fp32"])
    assert refusal.startswith("REFUSED --ds.param_dtype fp32") and "runs on CUDA" in refusal

    # The explicit switch still forces the CPU mode on the same cluster.
    forced = run_driver(address, stock, OPENRLHF_COHERENT_DEVICE="cpu")
    assert forced["kwargs"] == ["runtime_env"] and forced["env"] == "cpu"
    assert forced["cpu_mode"] is True and forced["cpu_engine"] is True
    assert forced["worker"] == {"env": "cpu", "decision": "cpu", "set_device_patched": True}


def test_env_vars_the_submitted_job_sets_are_not_set_again(monkeypatch):
    """Inside `ray job submit`, Ray refuses a driver runtime_env that repeats a job env var (even
    with the same value): those are dropped; a different value is refused, naming the variable."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"env_vars": {devmode.DEVICE_ENV: "cuda", "HF_HOME": "/data/hf"}}}))  # fmt: skip
    assert devmode.drop_job_env_vars({devmode.DEVICE_ENV: "cuda", "NCCL_DEBUG": "WARN"}) == {"NCCL_DEBUG": "WARN"}
    with pytest.raises(devmode.DeviceError, match=f"{devmode.DEVICE_ENV}='cuda' in the submitted job"):
        devmode.drop_job_env_vars({devmode.DEVICE_ENV: "cpu"})
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert devmode.drop_job_env_vars({devmode.DEVICE_ENV: "cpu"}) == {devmode.DEVICE_ENV: "cpu"}


# ---- items 3, 4, 8: refused or resolved before Ray ----------------------------------------------


def test_agent_func_path_is_refused_before_ray(tiny_models, capsys):
    base, sft = tiny_models
    err = refused(srppo_argv(sft, base, "--train.agent_func_path", "agent.py"), capsys)
    assert "--train.agent_func_path agent.py" in err


def test_multimodal_prompts_are_refused_before_ray(tiny_models, capsys):
    base, sft = tiny_models
    err = refused(srppo_argv(sft, base, "--data.max_images_per_prompt", "1",
                             "--algo.advantage.estimator", "reinforce"), capsys)  # fmt: skip
    assert "--data.max_images_per_prompt 1" in err


def test_vision_language_checkpoint_is_refused_before_ray(tiny_models, tmp_path, capsys):
    from transformers import Gemma3Config

    base, sft = tiny_models
    vlm = tmp_path / "vlm"
    Gemma3Config().save_pretrained(vlm)  # gemma3 is a causal-LM type with a vision tower
    err = refused(srppo_argv(sft, str(vlm)), capsys)
    assert "--coherent.base_model: a vision-language model" in err


def test_abbreviated_reward_flag_selects_the_plugin_everywhere(tiny_models, capsys):
    base, sft = tiny_models
    argv = ["--actor.model_name_or_path", sft, "--critic.model_name_or_path", sft,
            "--reward.model_name_or_pat", "coherent", "--data.prompt_dataset", "p.jsonl"]  # fmt: skip
    # What main() installs the coherent reward actor and trainer by ...
    assert CoherentRewardPlugin().selected(_parse(argv, _SelectionProbe()))
    # ... and validation runs by the same test: no base model -> refused before Ray.
    assert "--coherent.base_model" in refused(argv, capsys)


def test_coherent_flags_without_the_coherent_reward_warn(tiny_models, caplog):
    _, sft = tiny_models
    parse_args(["--actor.model_name_or_path", sft, "--reward.model_name_or_path", sft, "--data.prompt_dataset",
                "p.jsonl", "--algo.advantage.estimator", "reinforce", "--coherent.scale", "2"])  # fmt: skip
    assert "--coherent.scale set" in caplog.text and "no effect" in caplog.text


# ---- item 2: base/SFT pairs that differ only in EOS ---------------------------------------------


@pytest.fixture(scope="module")
def sft_with_own_eos(tiny_models, tmp_path_factory):
    """The tiny SFT model with another EOS token, like Llama-3 base vs an <|eot_id|> SFT model."""
    from transformers import AutoTokenizer

    _, sft = tiny_models
    path = tmp_path_factory.mktemp("eos") / "sft"
    shutil.copytree(sft, path)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    new_eos = next(t for t in tokenizer.get_vocab() if t not in tokenizer.all_special_tokens)
    tokenizer.eos_token = new_eos
    tokenizer.save_pretrained(path)
    return str(path), tokenizer.convert_tokens_to_ids(new_eos)


def test_eos_only_difference_is_accepted_for_ppo_and_named_in_the_log(tiny_models, sft_with_own_eos, caplog):
    from transformers import AutoTokenizer

    base, _ = tiny_models
    sft, eos_id = sft_with_own_eos
    args = parse_args(srppo_argv(sft, base))
    # The default (demo/eos_policy.py measured it): score the base's own EOS at the SFT model's stop.
    base_eos = AutoTokenizer.from_pretrained(base).eos_token_id
    assert args.coherent.eos_handling == {"swap": [eos_id], "exclude": [], "base_eos_token_id": base_eos} and base_eos != eos_id
    assert "eos_policy=base_eos" in caplog.text
    caplog.clear()
    args = parse_args(srppo_argv(sft, base, "--coherent.eos_policy", "exclude"))
    assert args.coherent.eos_handling == {"swap": [], "exclude": [eos_id], "base_eos_token_id": None}
    assert "eos_policy=exclude" in caplog.text
    assert parse_args(srppo_argv(base, base)).coherent.eos_handling is None  # the same stop ids: nothing to do


def test_base_eos_needs_a_base_eos_and_falls_back_to_its_generation_config(tiny_models, sft_with_own_eos, tmp_path, capsys):
    """A base tokenizer without eos_token: its generation config's EOS is its own; with neither,
    base_eos is refused before Ray, naming the flag."""
    from transformers import AutoTokenizer, GenerationConfig

    base, _ = tiny_models
    sft, eos_id = sft_with_own_eos
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    tokenizer = AutoTokenizer.from_pretrained(base)
    stop = tokenizer.eos_token_id
    tokenizer.eos_token = None
    tokenizer.save_pretrained(copy)
    GenerationConfig(eos_token_id=stop).save_pretrained(copy)
    assert parse_args(srppo_argv(sft, str(copy))).coherent.eos_handling["base_eos_token_id"] == stop
    os.remove(copy / "generation_config.json")
    err = refused(srppo_argv(sft, str(copy)), capsys)
    assert "--coherent.base_model" in err and "--coherent.eos_policy exclude" in err
    assert parse_args(srppo_argv(sft, str(copy), "--coherent.eos_policy", "exclude")).coherent.eos_handling["exclude"] == sorted({stop, eos_id})  # its generation config stops on the base EOS too
    # Tools that have no such handling still refuse the pair.
    with pytest.raises(ConfigError, match="eos_token_id"):
        check_same_tokenizer(sft, base, "--sft_model", False, base_flag="--base_model")


def test_generation_config_eos_counts_as_an_sft_eos(tiny_models, tmp_path):
    """Same tokenizer EOS, but the SFT model's generation config also stops on another id (as
    Llama-3-Instruct's <|eot_id|>): that id is excluded; a pair that stops alike excludes nothing."""
    from transformers import AutoTokenizer, GenerationConfig

    base, sft = tiny_models
    copy = tmp_path / "sft"
    shutil.copytree(sft, copy)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    turn_end = tokenizer.convert_tokens_to_ids("!")
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, turn_end]).save_pretrained(copy)
    assert check_same_tokenizer(str(copy), base, "--coherent.sft_model", False, allow_eos_difference=True) == [turn_end]
    assert check_same_tokenizer(sft, base, "--coherent.sft_model", False, allow_eos_difference=True) is None


def eos_samples():
    from openrlhf.trainer.ppo_utils.experience import Experience

    # OpenRLHF 0.11.2 layout: action_mask spans sequences[:, 1:]; row 0 finished with the SFT EOS (7),
    # row 1 truncated (its last token is no EOS), row 2 ends with EOS followed by padding.
    sequences = torch.tensor([[1, 2, 3, 4, 7], [1, 2, 3, 4, 5], [1, 2, 3, 7, 0]])
    action_mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0]])
    return Experience(sequences=sequences, action_mask=action_mask)


def test_final_sft_eos_is_excluded_from_both_terms():
    from openrlhf_coherent.experience import reward_mask

    eos = 7
    samples = eos_samples()
    action_mask = samples.action_mask
    mask = reward_mask(samples, [eos])
    assert mask.tolist() == [[0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert reward_mask(samples, None) is action_mask  # tokenizers agree, or base_eos: every position counts
    sft = torch.tensor([[0.0, 0.0, -1.0, -0.1]] * 3)
    base = torch.tensor([[0.0, 0.0, -2.0, -9.0]] * 3)  # the base finds the SFT EOS very unlikely
    result = coherent_reward(sft, base, mask, aggregate="mean")
    assert result.reward.tolist() == pytest.approx([1.0, (1.0 + 8.9) / 2, 0.0])


def test_base_eos_policy_gives_the_base_its_own_eos_at_the_final_position_only():
    from openrlhf_coherent.experience import base_sequences

    samples = eos_samples()
    swapped = base_sequences(samples, [7], 3)
    # Rows ending with the SFT-only EOS get the base's EOS there; a truncated row, the padding and
    # every earlier token (including an SFT EOS that is not final) are untouched.
    assert swapped.tolist() == [[1, 2, 3, 4, 3], [1, 2, 3, 4, 5], [1, 2, 3, 3, 0]]
    assert samples.sequences.tolist()[0] == [1, 2, 3, 4, 7]  # a copy: the policy's sequences are not edited


# ---- items 5, 6: the floor's reference, the token-wise variant ----------------------------------


def bare_maker(floor):
    """The real CoherentExperienceMaker methods on the state they use (no Ray groups needed)."""
    from types import SimpleNamespace

    from openrlhf_coherent.experience import CoherentExperienceMaker

    maker = object.__new__(CoherentExperienceMaker)
    maker.coherent = SimpleNamespace(sft_logp_floor=floor)
    maker.sft_logp_reference, maker.rollout_step, maker.floored = None, 0, 0
    return maker


def token_results():
    # Three samples with totals -2, 4 and 1; the third is far less SFT-likely per token.
    sft = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-9.0, -9.0]])
    base = torch.tensor([[0.0, 0.0], [-3.0, -3.0], [-9.5, -9.5]])
    return [coherent_reward(sft[i : i + 1], base[i : i + 1], torch.ones(1, 2), reward_type="token") for i in range(3)]


def test_floored_token_wise_sample_gets_the_rollouts_lowest_total():
    from openrlhf_coherent.experience import total_reward

    maker = bare_maker(floor=0.5)
    results = token_results()
    maker._keep_sft_reference(results)
    maker._apply_sft_logp_floor(results)
    assert [total_reward(r).item() for r in results] == pytest.approx([-2.0, 4.0, -2.0])
    assert maker.floored == 1


def test_sft_reference_is_kept_without_a_guard_and_not_retaken_after_a_resume():
    maker = bare_maker(floor=None)
    maker._keep_sft_reference(token_results())
    assert maker.sft_logp_reference == pytest.approx((-1 - 1 - 9) / 3)  # first rollout, no guard on
    resumed = bare_maker(floor=0.5)
    resumed.rollout_step, resumed.sft_logp_reference = 3, maker.sft_logp_reference  # from the checkpoint
    resumed._keep_sft_reference([coherent_reward(torch.full((1, 2), -5.0), torch.zeros(1, 2), torch.ones(1, 2))])
    assert resumed.sft_logp_reference == maker.sft_logp_reference


def test_token_wise_variant_with_stop_properly_penalty_is_refused(tiny_models, capsys):
    base, sft = tiny_models
    err = refused(srppo_argv(sft, base, "--coherent.reward_type", "token", "--algo.advantage.estimator", "reinforce",
                             "--reward.stop_properly_penalty_coef", "-5"), capsys)  # fmt: skip
    assert "--reward.stop_properly_penalty_coef" in err


# ---- item 7: logits from the batch's first response position on ---------------------------------


def test_response_window_trims_the_prompt_positions(tiny_models):
    from transformers import AutoModelForCausalLM

    from openrlhf_coherent.scoring import action_log_probs

    _, sft = tiny_models
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32, attn_implementation="eager").eval()
    asked = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        asked.append(kwargs["logits_to_keep"])
        return forward(*args, **kwargs)

    model.forward = recording_forward
    sequences = torch.randint(3, 30, (2, 35))
    attention_mask = torch.ones_like(sequences)
    action_mask = torch.zeros(2, 34, dtype=torch.long)  # OpenRLHF 0.11.2: all of sequences[:, 1:]
    action_mask[0, 20:] = 1  # responses start at token 21 and 25
    action_mask[1, 24:] = 1
    got = action_log_probs(model, sequences, attention_mask, action_mask)
    assert asked == [35 - 20]  # positions 20..34, not all 35
    full = torch.log_softmax(forward(input_ids=sequences, attention_mask=attention_mask).logits.float(), -1)
    expected = full[:, :-1].gather(-1, sequences[:, 1:, None])[..., 0] * action_mask
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # A micro-batch without any response token (a prompt filling --data.max_len) still makes the
    # model call: under ZeRO-3 a rank that skipped it would leave its peers waiting in a gather.
    asked.clear()
    empty = action_log_probs(model, sequences, attention_mask, torch.zeros_like(action_mask))
    assert len(asked) == 1 and not empty.any()


# The token-wise variant's end-to-end check (the total reward PPO trains on is what OpenRLHF logs)
# shares the real PPO run of tests/test_patch.py::test_stock_cli_runs_srppo_after_the_patch.


def test_a_resume_keeps_the_checkpoints_eos_handling():
    """The reward, the floor's reference and the alarm's window were measured under the saved
    handling: a resume under another is refused, naming the flag; older checkpoints excluded."""
    from types import SimpleNamespace

    from openrlhf_coherent.trainer import check_same_eos_handling

    swap = {"swap": [43], "exclude": [], "base_eos_token_id": 3}
    exclude = {"swap": [], "exclude": [43], "base_eos_token_id": None}
    run = SimpleNamespace(eos_handling=swap, eos_policy="base_eos")
    check_same_eos_handling({"eos_handling": swap}, run)
    with pytest.raises(ValueError, match="--coherent.eos_policy"):
        check_same_eos_handling({"eos_handling": exclude}, run)
    with pytest.raises(ValueError, match="predates the flag"):
        check_same_eos_handling({}, run)  # written before the flag: it excluded the SFT-only EOS
    check_same_eos_handling({}, SimpleNamespace(eos_handling=exclude, eos_policy="exclude"))
    check_same_eos_handling({}, SimpleNamespace(eos_handling=None, eos_policy="base_eos"))  # the same stop ids
