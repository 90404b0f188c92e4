"""Secrets (issue 27 item 8, issue 28 group 3): one masker (openrlhf_coherent/redact.py) for every
command, argument list and config we print or write, and the wandb key taken from WANDB_API_KEY,
never from a command line (OpenRLHF prints every argument and uploads them as the wandb config)."""

import glob
import json
import os
import shlex
import subprocess
import sys
import tempfile

import pytest

from openrlhf_coherent import redact
from openrlhf_coherent.config import ConfigError

from test_cluster_correctness import srppo_argv  # a stock SRPPO command line, models only

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "wandbKEY0123456789abcdef"  # what a user's key looks like to us: a long opaque string


# ---- the masker ----------------------------------------------------------------------------------


def test_mask_argv_hides_secret_flags_and_secret_env_values_only(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh12345")
    argv = ["python", "-m", "x", "--logger.wandb.key", "k1234567", "--logger.wandb.ke=k2", "--hf_token", "t",
            "--api-key", "a", "--data.input_key", "input", "--data.chosen_key", "chosen", "--rollout.max_new_tokens", "12",
            "--logger.wandb.project", "p", "--set", "x=hf_abcdefgh12345/y"]  # fmt: skip
    assert redact.mask_argv(argv) == [
        "python", "-m", "x", "--logger.wandb.key", "***", "--logger.wandb.ke=***", "--hf_token", "***",
        "--api-key", "***", "--data.input_key", "input", "--data.chosen_key", "chosen", "--rollout.max_new_tokens", "12",
        "--logger.wandb.project", "p", "--set", "x=***/y"]  # fmt: skip


def test_mask_tree_hides_secret_keys_env_vars_and_flag_lists(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    tree = {"env_vars": {"HF_TOKEN": "x", "HF_HOME": "/data/hf", "TOKENIZERS_PARALLELISM": "false"},
            "ppo": {"extra_args": ["--logger.wandb.key", "abc", "--x", 1], "input_key": "input", "lr": 1e-6},
            "note": f"key={KEY}", "api_key": "s"}  # fmt: skip
    masked = redact.mask_tree(tree)
    assert masked["env_vars"] == {"HF_TOKEN": "***", "HF_HOME": "/data/hf", "TOKENIZERS_PARALLELISM": "***"}
    assert masked["ppo"] == {"extra_args": ["--logger.wandb.key", "***", "--x", "1"], "input_key": "input", "lr": 1e-6}
    assert masked["note"] == "key=***" and masked["api_key"] == "***"


def test_a_secret_flag_inside_another_value_is_masked(monkeypatch):
    """A key written inside a recipe override is masked even when no environment variable holds it."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    shown = redact.mask_argv(["--set", "ppo.extra_args=[--logger.wandb.key,notExportedKey123]", "--data.input_key", "q"])
    assert shown == ["--set", "ppo.extra_args=[--logger.wandb.key,***]", "--data.input_key", "q"]
    assert redact.mask_text("extra=[--logger.wandb.key, env]") == "extra=[--logger.wandb.key, env]"


def test_submit_job_refuses_a_command_that_holds_a_secret(capsys):
    """Ray keeps a job's entrypoint in its job table: a key in it is refused before any connection."""
    script = os.path.join(os.path.dirname(redact.__file__), "submit_job.py")
    proc = subprocess.run(
        [sys.executable, script, "--address", "http://127.0.0.1:1", "--", "python", "-m", "x",
         "--set", "ppo.extra_args=[--logger.wandb.key,notExportedKey123]"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "holds a secret" in proc.stderr
    assert "notExportedKey123" not in proc.stdout + proc.stderr


def test_redact_as_a_file_prints_the_masked_shell_line(monkeypatch):
    """How the job scripts call it: as a file, with only the standard library."""
    env = dict(os.environ, WANDB_API_KEY=KEY)
    env.pop("PYTHONPATH", None)
    script = os.path.join(REPO, "openrlhf_coherent", "redact.py")
    out = subprocess.run([sys.executable, script, "a b", "--hf_token", "x", "--set", f"k={KEY}"], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert shlex.split(out) == ["a b", "--hf_token", "***", "--set", "k=***"]
    out = subprocess.run([sys.executable, script, "--json", json.dumps({"env_vars": {"WANDB_API_KEY": KEY}})],
                         env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert json.loads(out) == {"env_vars": {"WANDB_API_KEY": "***"}}


# ---- the key never on a command line -------------------------------------------------------------


def test_ppo_cli_refuses_a_literal_wandb_key_before_ray(tiny_models, monkeypatch):
    from openrlhf_coherent.cli.train_ppo_ray import parse_args

    base, sft = tiny_models
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for flag in ("--logger.wandb.key", "--logger.wandb.ke"):  # argparse's abbreviation too
        with pytest.raises(ConfigError, match="--logger.wandb.key: the key itself is refused") as e:
            parse_args(srppo_argv(sft, base, flag, KEY))
        assert KEY not in str(e.value)
    with pytest.raises(ConfigError, match="reads the key from WANDB_API_KEY, which is not set"):
        parse_args(srppo_argv(sft, base, "--logger.wandb.key", "env"))
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert parse_args(srppo_argv(sft, base, "--logger.wandb.key", "env")).logger.wandb.key == "env"


def test_dpo_and_srpo_clis_refuse_a_literal_wandb_key(tiny_models, tmp_path, capsys):
    from openrlhf_coherent.cli import train_dpo, train_srpo

    base, sft = tiny_models
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "say hello", "chosen": "hello", "rejected": "no"}) + "\n")
    common = ["--model.model_name_or_path", sft, "--data.dataset", str(data), "--ckpt.output_dir", str(tmp_path / "o"),
              "--logger.wandb.key", KEY]  # fmt: skip
    assert train_dpo.main(common) == 2
    err = capsys.readouterr().err
    assert "--logger.wandb.key: the key itself is refused" in err and KEY not in err
    with pytest.raises(ConfigError, match="--logger.wandb.key: the key itself is refused"):
        train_srpo.parse_args([*common, "--srpo.beta", "0.1"])


def test_recipe_takes_the_key_from_the_environment_and_masks_what_it_prints(tmp_path, monkeypatch, capsys):
    """`${WANDB_API_KEY}` in a config's flag list becomes `env`; another literal key is refused
    without being shown; the dry run shows no secret."""
    from openrlhf_coherent.cli import srppo

    monkeypatch.setenv("SRPPO_TINY_ROOT", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh12345")
    config = os.path.join(REPO, "examples", "configs", "tiny_cpu.yaml")
    sets = ["--set", "ppo.extra_args=[--logger.wandb.key,'${WANDB_API_KEY}',--hf_token,'${HF_TOKEN}']",
            "--set", "sft.extra_args=[--logger.wandb.key,'${WANDB_API_KEY}']"]  # fmt: skip
    assert srppo.main(["--config", config, "--dry-run", *sets]) == 0
    out = capsys.readouterr().out
    assert KEY not in out and "hf_abcdefgh12345" not in out
    assert out.count("--logger.wandb.key env") == 2 and "--hf_token '***'" in out
    assert srppo.main(["--config", config, "--dry-run", "--set", "ppo.extra_args=[--logger.wandb.key,otherKEY12345678]"]) == 2
    err = capsys.readouterr().err
    assert "ppo.extra_args: --logger.wandb.key: the key itself is refused" in err and "otherKEY12345678" not in err
    # A config error that quotes a value (here an unparseable list) shows no secret either.
    assert srppo.main(["--config", config, "--dry-run", "--set", "ppo.extra_args=[--x,${WANDB_API_KEY}]"]) == 2
    err = capsys.readouterr().err
    assert "ppo.extra_args: expected a list" in err and KEY not in err


def test_sera_takes_the_key_from_the_environment(tiny_models, tmp_path, monkeypatch):
    from openrlhf_coherent.cli import sera

    sft = tiny_models[1]
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    required = ["--sft_model", sft, "--input", str(tmp_path / "p.jsonl"), "--output_dir", str(tmp_path / "o")]
    _, train_args = sera.parse([*required, "--logger.wandb.key", KEY])
    assert train_args[train_args.index("--logger.wandb.key") + 1] == "env" and KEY not in train_args
    with pytest.raises(ConfigError, match="sera: --logger.wandb.key: the key itself is refused"):
        sera.parse([*required, "--logger.wandb.key", "otherKEY12345678"])


def test_job_scripts_print_no_secret(tmp_path):
    """DRY_RUN of the single- and multi-node scripts (the Slurm one ends in the multi-node one):
    neither the forwarded environment nor an argument that carries a key is printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTIME_ENV_JSON", "FORWARD_ENV", "DRY_RUN", "STAGES"))}
    env.update(PYTHON=sys.executable, DRY_RUN="1", SRPPO_TINY_ROOT=str(tmp_path), WANDB_API_KEY=KEY,
               HF_TOKEN="hf_abcdefgh12345", RAY_ADDRESS="http://10.0.0.1:8265", CONFIG="examples/configs/tiny_cpu.yaml")  # fmt: skip
    args = ["--set", "ppo.extra_args=[--logger.wandb.key,'${WANDB_API_KEY}']", "--set", f"sft.extra_args=[--logger.wandb.key,{KEY}]"]
    for script in ("srppo_single_node.sh", "srppo_multi_node.sh"):
        proc = subprocess.run(["bash", os.path.join(REPO, "examples", "scripts", script), *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        output = proc.stdout + proc.stderr
        assert KEY not in output and "hf_abcdefgh12345" not in output, output
        assert output.count("--logger.wandb.key env") == 2  # the recipe's dry run: both stages, the key from the environment


# ---- a real tiny run: the key in no output file or log --------------------------------------------


def test_key_appears_in_no_output_file_or_log_of_a_tiny_recipe_run(tmp_path):
    """The whole tiny recipe (SFT, then 2 PPO steps through Ray), wandb on in offline mode with the
    key from `${WANDB_API_KEY}` in both stages' extra_args: wandb runs (one offline run per stage,
    whose record holds the uploaded config), and the key string is in no file under the output, wandb and Ray folders,
    nor in anything printed."""
    root = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "openrlhf_coherent.devmode.tiny_models", str(root)], check=True, capture_output=True)
    ray_tmp = tempfile.mkdtemp(prefix="rsec", dir="/tmp")  # short: Ray's unix sockets live under it
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    env = dict(os.environ, WANDB_API_KEY=KEY, WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), RAY_TMPDIR=ray_tmp,
               SRPPO_TINY_ROOT=str(root), TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")  # fmt: skip
    sets = ["--set", "ppo.extra_args=[--logger.wandb.key,'${WANDB_API_KEY}',--logger.wandb.project,secrets_test]",
            "--set", "sft.extra_args=[--logger.wandb.key,'${WANDB_API_KEY}',--logger.wandb.project,secrets_test]"]  # fmt: skip
    try:
        proc = subprocess.run([sys.executable, "-m", "openrlhf_coherent.cli.srppo", "--config", "examples/configs/tiny_cpu.yaml", *sets],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-6000:]
        assert "[srppo] stage ppo done" in log
        runs = glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
        assert len(runs) == 2, f"wandb did not run once per stage: {runs}\n{log[-3000:]}"
        for run in runs:  # the run record (config included) is there, with the placeholder
            data = open(run, "rb").read()
            assert b"secrets_test" in data and b"env" in data
        assert KEY not in log
        leaked = []
        for folder in (root, wandb_dir, ray_tmp):
            for dirpath, _, files in os.walk(folder):
                for name in files:
                    path = os.path.join(dirpath, name)
                    try:
                        with open(path, "rb") as f:
                            if KEY.encode() in f.read():
                                leaked.append(path)
                    except OSError:  # sockets, vanished files
                        pass
        assert not leaked, leaked
    finally:
        from srppo_helpers import remove_ray_cluster

        remove_ray_cluster(ray_tmp)
