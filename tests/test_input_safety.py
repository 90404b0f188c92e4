"""Issue 13: never lose a user's data, never run a user's code unasked, never write NaN silently.

Each case fails before Ray starts (and before a model loads) wherever it can; only the NaN scoring
case runs the evaluator's Ray actors, since per-row NaN detection needs a model to produce NaN.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import ray
import torch

from openrlhf_coherent.cli import bootstrap_pairs, evaluate, filter as filter_cli, revise, score, select_pairs, sera, spin_pairs
from openrlhf_coherent.cli.train_ppo_ray import main as ppo_main, parse_args
from openrlhf_coherent.config import ConfigError, check_causal_lm
from openrlhf_coherent.data_tools.pipeline import ScoringRound, scored_by
from openrlhf_coherent.data_tools.rows import TextFormat, load_jobs, row_to_job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def srppo_argv(sft, base, *extra):
    return [
        "--actor.model_name_or_path", sft, "--critic.model_name_or_path", sft,
        "--reward.model_name_or_path", "coherent", "--coherent.base_model", base,
        "--data.prompt_dataset", "unused.jsonl", *extra,
    ]  # fmt: skip


def exits_2(main, argv, capsys):
    """Run a CLI main expecting exit status 2 before Ray; returns stderr."""
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    assert status == 2
    assert not ray.is_initialized(), "must fail before Ray starts"
    return capsys.readouterr().err


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


SCORE_ROWS = [{"prompt": "say hello", "response": "hello !"}, {"prompt": "name a big river", "response": "the big river is blue ."}]


# --- 1. custom model code ------------------------------------------------------------------


@pytest.fixture
def evil_model(tiny_models, tmp_path):
    """The base model plus an `auto_map` naming evil.py, which leaves a marker file when imported."""
    base, _ = tiny_models
    folder = tmp_path / "evil"
    shutil.copytree(base, folder)
    marker = tmp_path / "evil_code_ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import LlamaConfig as EvilConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder), marker


@pytest.mark.parametrize("role", ["--coherent.base_model", "--actor.model_name_or_path"])
def test_ppo_refuses_a_model_folder_with_custom_code_unless_trusted(role, evil_model, tiny_models, capsys):
    base, sft = tiny_models
    evil, marker = evil_model
    argv = srppo_argv(sft, evil) if role == "--coherent.base_model" else srppo_argv(evil, base, "--critic.model_name_or_path", sft)
    err = exits_2(ppo_main, argv, capsys)
    assert role in err and "auto_map" in err and "--coherent.trust_remote_code" in err
    assert not marker.exists()


def test_ray_worker_loaders_follow_the_drivers_choice(evil_model, tiny_models, monkeypatch):
    """What the CPU rollout engine calls: refuses custom code unless the driver allowed it."""
    from openrlhf_coherent import remote_code

    evil, _ = evil_model
    monkeypatch.delenv(remote_code.TRUST_ENV, raising=False)
    with pytest.raises(ConfigError, match="auto_map"):
        remote_code.trust_remote_code_for(evil, "rollout engine")
    assert remote_code.trust_remote_code_for(tiny_models[0], "rollout engine") is False
    # The driver's validation records the flag for the workers it starts.
    parse_args(srppo_argv(tiny_models[1], tiny_models[0]))
    assert os.environ[remote_code.TRUST_ENV] == "0"
    remote_code.share_with_workers(True)
    assert remote_code.trust_remote_code_for(evil, "rollout engine") is True


def test_evaluator_refuses_custom_code(evil_model, tiny_models, tmp_path, capsys):
    evil, marker = evil_model
    data = write_jsonl(tmp_path / "in.jsonl", SCORE_ROWS)
    err = exits_2(score.main, ["--sft_model", tiny_models[1], "--base_model", evil, "--input", data, "--output", str(tmp_path / "o.jsonl")], capsys)
    assert "--base_model" in err and "--trust_remote_code" in err
    assert not marker.exists()


# --- 2. secrets in job scripts ---------------------------------------------------------------


def test_multi_node_script_masks_forwarded_secrets(tmp_path):
    # A python that records a job submission (submit_job.py) instead of making it, and runs the rest.
    fake_python = tmp_path / "python"
    argv_file = tmp_path / "argv.json"
    fake_python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                           f"if sys.argv[1:2] and sys.argv[1].endswith('submit_job.py'):\n"
                           f"    json.dump(sys.argv[2:], open({str(argv_file)!r}, 'w')); sys.exit(0)\n"
                           f"os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n")  # fmt: skip
    fake_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_ENV_JSON", "FORWARD_ENV", "DRY_RUN")}
    # Secrets are forwarded only when named (Ray logs runtime_env values): then they are masked in print.
    env.update(FORWARD_ENV="HF_HOME HF_TOKEN WANDB_API_KEY", PYTHON=str(fake_python), RAY_ADDRESS="http://10.0.0.1:8265",
               HF_TOKEN="hf_SECRET123", WANDB_API_KEY="wandb_SECRET456", HF_HOME="/data/hf")  # fmt: skip
    proc = subprocess.run(["bash", "examples/scripts/srppo_multi_node.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SECRET" not in proc.stdout + proc.stderr
    assert "forwarding HF_TOKEN WANDB_API_KEY in the runtime_env: Ray writes its values into its logs" in proc.stderr
    (line,) = [l for l in proc.stdout.splitlines() if l.startswith("+ ")]
    shown = shlex.split(line[2:])
    shown_env = json.loads(shown[shown.index("--runtime-env-json") + 1])["env_vars"]
    assert shown_env == {"HF_HOME": "/data/hf", "HF_TOKEN": "***", "WANDB_API_KEY": "***"}  # HF_HOME is no secret
    submitted = json.loads(argv_file.read_text())
    runtime_env = json.loads(submitted[submitted.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"]["HF_TOKEN"] == "hf_SECRET123"  # the job itself gets the real value


# --- 3. output aliasing an input ---------------------------------------------------------------


def test_outputs_that_alias_the_input_are_refused_by_real_path(tiny_models, tmp_path, capsys, monkeypatch):
    base, sft = tiny_models
    monkeypatch.chdir(tmp_path)
    scored = [{**r, "line": i + 1, "coherent_reward": float(i), "coherent_reward_mean": float(i), "sft_logp": -1.0,
               "base_logp": -2.0} for i, r in enumerate(SCORE_ROWS * 150)]  # fmt: skip
    data = write_jsonl(tmp_path / "S.jsonl", scored)
    before = open(data).read()
    os.symlink("S.jsonl", "link.jsonl")
    models = ["--sft_model", sft, "--base_model", base]
    cases = [
        (filter_cli.main, ["--input", "S.jsonl", "--output", "./S.jsonl", "--top_k", "3"], "--output"),
        (filter_cli.main, ["--input", "S.jsonl", "--output", "o.jsonl", "--scores", "link.jsonl", "--top_k", "3", *models], "--scores"),
        (score.main, ["--input", "S.jsonl", "--output", "./S.jsonl", *models], "--output"),
        (select_pairs.main, ["--input", "S.jsonl", "--output", "link.jsonl", "--top_k", "1", *models], "--output"),
        (bootstrap_pairs.main, ["--input", "S.jsonl", "--output", "o.jsonl", "--candidates", "./S.jsonl", "--top_k", "1", *models], "--candidates"),
        (spin_pairs.main, ["--model", sft, "--input", "S.jsonl", "--output", "o.jsonl", "--samples", "link.jsonl"], "--samples"),
        (revise.main, ["--model", sft, "--input", "S.jsonl", "--output", "link.jsonl", "--temperature", "1", "--top_p", "1",
                       "--seed", "0", "--revision_template", os.path.join(REPO, "openrlhf_coherent/templates/srpo/tldr_revision.txt")], "--output"),  # fmt: skip
    ]
    for main, argv, flag in cases:
        err = exits_2(main, argv, capsys)
        assert f"{flag} " in err and "same file as the input --input" in err, (argv, err)
    assert open(data).read() == before


def test_unwritable_outputs_fail_before_generation(tiny_models, tmp_path, capsys):
    _, sft = tiny_models
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "say hello"}])
    (tmp_path / "a_file").write_text("x")
    bad_output = str(tmp_path / "a_file" / "out.jsonl")  # its folder is a file: cannot be created
    err = exits_2(revise.main, ["--model", sft, "--input", data, "--output", bad_output, "--temperature", "1", "--top_p", "1", "--seed", "0",
                                "--revision_template", os.path.join(REPO, "openrlhf_coherent/templates/srpo/tldr_revision.txt")], capsys)  # fmt: skip
    assert "--output" in err and "is a file" in err
    err = exits_2(evaluate.main, ["--model", "/no/such/model", "--output", str(tmp_path / "a_file" / "r.md"), "--tasks", "gsm8k"], capsys)
    assert "--output" in err  # before the model path is even looked at


# --- 4. an existing output we did not write -------------------------------------------------------


def test_score_never_touches_an_unrelated_existing_output(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    data = write_jsonl(tmp_path / "in.jsonl", SCORE_ROWS)
    other = tmp_path / "notes.jsonl"
    other.write_text('{"my": "notes"}\n{"more": "notes", "no newline": true}')
    before = other.read_bytes()
    err = exits_2(score.main, ["--sft_model", sft, "--base_model", base, "--input", data, "--output", str(other)], capsys)
    assert "line 1 is not a row this tool writes" in err and "--output" in err
    assert other.read_bytes() == before
    # A derived whole-file output (filter's --output) is checked the same way before it is replaced.
    scored = write_jsonl(tmp_path / "scored.jsonl", [{"line": 1, "coherent_reward": 1.0}])
    err = exits_2(filter_cli.main, ["--input", scored, "--output", str(other), "--top_k", "1"], capsys)
    assert "is not a row these tools write" in err and other.read_bytes() == before


# --- 5. --coherent.rollout_log that is not ours ------------------------------------------------------


def test_rollout_log_that_is_not_ours_is_refused_before_ray(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    log = tmp_path / "rollouts.jsonl"
    log.write_text("my experiment notes\n")
    err = exits_2(ppo_main, srppo_argv(sft, base, "--coherent.rollout_log", str(log)), capsys)
    assert "--coherent.rollout_log" in err and "line 1" in err
    assert log.read_text() == "my experiment notes\n"
    # Ours (with the partial last line a kill leaves) is accepted.
    row = {"step": 1, "prompt_ids": [1], "response_ids": [2], "reward": 0.5}
    log.write_text(json.dumps(row) + "\n" + '{"step": 2, "pro')
    parse_args(srppo_argv(sft, base, "--coherent.rollout_log", str(log)))



def test_resume_cuts_only_rows_this_run_wrote(tmp_path):
    """A log shared with an earlier run: the resume of run B (checkpoint at rollout 2) drops B's
    rows after rollout 2 and the line its kill cut short; every row of run A stays, whatever its step."""
    from types import SimpleNamespace

    from openrlhf_coherent.experience import CoherentExperienceMaker

    def row(run, step):
        return json.dumps({"run_id": run, "step": step, "prompt_ids": [1], "response_ids": [2], "reward": 0.5}) + "\n"

    log = tmp_path / "rollouts.jsonl"
    earlier = [row("A", s) for s in (1, 2, 3, 4)]
    ours_kept, ours_redone = [row("B", 1), row("B", 2)], [row("B", 3)]
    log.write_text("".join(earlier + ours_kept + ours_redone) + '{"run_id": "B", "st')
    maker = object.__new__(CoherentExperienceMaker)  # only the rollout-log settings are needed
    maker.coherent = SimpleNamespace(rollout_log=str(log))
    assert maker.cut_rollout_log_after(2, "B") == 2
    assert log.read_text() == "".join(earlier + ours_kept)
    # A checkpoint of an older version (no run id): only rows without one are cut.
    log.write_text(row("A", 5) + json.dumps({"step": 5, "prompt_ids": [1], "response_ids": [2], "reward": 0}) + "\n")
    assert maker.cut_rollout_log_after(2, None) == 1 and log.read_text() == row("A", 5)

# --- 6. NaN ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_model(tiny_models, tmp_path_factory):
    """The base model with one NaN weight (the final norm): every log-prob it gives is NaN."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny_models
    folder = str(tmp_path_factory.mktemp("nan") / "nan_base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def test_ppo_stops_on_non_finite_log_probs_naming_the_model(nan_model, tiny_models, one_thread):
    from transformers import AutoModelForCausalLM

    from openrlhf_coherent.reward import NonFiniteLogProbs, check_finite_log_probs, coherent_reward
    from openrlhf_coherent.scoring import action_log_probs

    model = AutoModelForCausalLM.from_pretrained(nan_model, dtype=torch.float32).eval()
    sequences = torch.tensor([[5, 6, 7, 8, 9]])
    action_mask = torch.tensor([[0, 0, 1, 1]])
    with torch.no_grad():
        log_probs = action_log_probs(model, sequences, torch.ones_like(sequences), action_mask)
    # What the coherent actor runs on each model's log-probs, naming the model by role and path.
    with pytest.raises(NonFiniteLogProbs, match="the base model " + nan_model):
        check_finite_log_probs(log_probs, action_mask, f"the base model {nan_model}")
    finite = torch.zeros_like(log_probs)
    with pytest.raises(NonFiniteLogProbs, match="log p_base"):  # the reward itself refuses too
        coherent_reward(finite, log_probs, action_mask)
    with pytest.raises(NonFiniteLogProbs, match="log p_SFT"):  # e.g. reused reference log-probs
        coherent_reward(log_probs, finite, action_mask)
    # NaN at masked (padding) positions is not an error.
    coherent_reward(finite, torch.where(action_mask.bool(), finite, log_probs), action_mask)


def test_evaluate_refuses_a_model_with_nan_weights(nan_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(nan_model, dtype=torch.float32)
    with pytest.raises(ConfigError, match="model.norm.weight holds NaN"):
        evaluate.check_finite_weights(model, nan_model)


def test_score_reports_nan_rows_by_line_and_writes_strict_json(nan_model, tiny_models, tmp_path, capsys):
    _, sft = tiny_models
    data = write_jsonl(tmp_path / "in.jsonl", SCORE_ROWS)
    out = tmp_path / "scored.jsonl"
    argv = ["--sft_model", sft, "--base_model", nan_model, "--input", data, "--output", str(out), "--batch_tokens", "8"]
    try:
        with pytest.raises(SystemExit) as e:
            score.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        message = err.splitlines()[-1]
        assert re.search(r"--input \S+: line [12]: non-finite log-probs \(denominator_logp of " + re.escape(nan_model) + "=nan", message), message
        assert not out.exists()  # the failed run removes the empty output it created
        # --on_bad_row skip: every row is skipped, reported and counted; nothing NaN is written.
        score.main(argv + ["--on_bad_row", "skip"])
        captured = capsys.readouterr()
        assert "skipped line 1" in captured.err and "skipped line 2" in captured.err
        assert '"skipped_bad_rows": 2' in captured.out and out.read_text() == ""
    finally:
        ray.shutdown()


def test_strict_json_everywhere(tmp_path):
    from openrlhf_coherent.data_tools.output import read_rows, write_rows

    with pytest.raises(ValueError):
        write_rows(str(tmp_path / "o.jsonl"), [{"line": 1, "x": float("nan")}])
    (tmp_path / "nan.jsonl").write_text('{"line": 1, "coherent_reward": NaN}\n')
    with pytest.raises(ConfigError, match="line 1"):
        read_rows(str(tmp_path / "nan.jsonl"))


# --- 7. numeric flags -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag,value",
    [("--coherent.scale", "nan"), ("--coherent.scale", "-1"), ("--coherent.scale", "0"), ("--coherent.token_clip", "nan"),
     ("--coherent.sft_logp_floor", "inf"), ("--coherent.alarm_eos_drop", "-1"), ("--coherent.alarm_logp_drop", "nan")],
)  # fmt: skip
def test_ppo_numeric_flags_are_range_checked(flag, value, tiny_models, capsys):
    base, sft = tiny_models
    err = exits_2(ppo_main, srppo_argv(sft, base, flag, value), capsys)
    assert flag in err and "finite number" in err


@pytest.mark.parametrize("flag,value", [("--temperature", "-1"), ("--temperature", "nan"), ("--top_p", "inf"), ("--max_new_tokens", "0")])
def test_spin_pairs_sampling_flags_are_checked_before_the_model(flag, value, tmp_path, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", [{"input": "say hello", "output": "hello !"}])
    err = exits_2(spin_pairs.main, ["--model", "/no/such/model", "--input", data, "--output", str(tmp_path / "o.jsonl"), flag, value], capsys)
    assert flag in err


# --- 8. train_dpo / train_srpo / causal-LM check ---------------------------------------------------


def test_train_dpo_malformed_jsonl_fails_with_its_line_before_models_load(tiny_models, tmp_path, capsys):
    from openrlhf_coherent.cli import train_dpo

    _, sft = tiny_models
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"\n')
    err = exits_2(train_dpo.main, ["--model.model_name_or_path", sft, "--data.dataset", str(data), "--data.prompt_key", "prompt",
                                   "--ckpt.output_dir", str(tmp_path / "out")], capsys)  # fmt: skip
    assert str(data) in err and "line 2" in err


def test_train_dpo_and_srpo_refuse_an_output_dir_equal_to_the_model(tiny_models, tmp_path, capsys):
    from openrlhf_coherent.cli import train_dpo, train_srpo

    _, sft = tiny_models
    data = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    common = ["--model.model_name_or_path", sft, "--data.dataset", data, "--data.prompt_key", "prompt", "--ckpt.output_dir", sft + "/."]
    err = exits_2(train_dpo.main, common, capsys)
    assert "--ckpt.output_dir" in err and "--model.model_name_or_path" in err
    template = os.path.join(REPO, "openrlhf_coherent/templates/srpo/tldr_revision.txt")
    err = exits_2(train_srpo.main, [*common, "--srpo.beta", "0.1", "--srpo.revision_template", template], capsys)
    assert "--ckpt.output_dir" in err and "same file" in err


def test_encoder_config_without_architectures_is_not_a_causal_lm(tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="not a causal language model"):
        check_causal_lm(str(bert), "--model", False)


# --- 9. SeRA with relative paths --------------------------------------------------------------------


def test_sera_resolves_relative_paths_before_the_round_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("sft")
    open("eval.jsonl", "w").close()
    args, train_args = sera.parse(["--sft_model", "sft", "--input", "prefs.jsonl", "--output_dir", "sera_out",
                                   "--eval.dataset", "eval.jsonl", "--logger.tensorboard_dir=tb", "--train.batch_size", "4"])  # fmt: skip
    assert args.sft_model == str(tmp_path / "sft") and args.input == str(tmp_path / "prefs.jsonl")
    assert args.output_dir == str(tmp_path / "sera_out")
    assert train_args == ["--eval.dataset", str(tmp_path / "eval.jsonl"), f"--logger.tensorboard_dir={tmp_path / 'tb'}", "--train.batch_size", "4"]
    args, _ = sera.parse(["--sft_model", "org/hub-model", "--input", "p.jsonl", "--output_dir", "o"])
    assert args.sft_model == "org/hub-model"  # a hub id stays as it is


# --- 10. non-string prompts with a chat template ----------------------------------------------------


def test_non_string_prompts_are_bad_rows_with_their_line(tiny_models, tmp_path, capsys):
    from transformers import AutoTokenizer

    _, sft = tiny_models
    tokenizer = AutoTokenizer.from_pretrained(sft)
    rows = [{"prompt": {"text": "hi"}, "response": "hello !"}, {"prompt": 7, "response": "hello !"},
            {"prompt": [{"role": "user", "content": 3}], "response": "hello !"}, SCORE_ROWS[0],
            {"prompt": "say hello", "response": {"content": "x"}}]  # fmt: skip
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    make = row_to_job(tokenizer, TextFormat("prompt", apply_chat_template=True), ["response"], 64)
    jobs, bad = load_jobs(data, make, "skip")
    assert [j.line for j in jobs] == [4] and [b.line for b in bad] == [1, 2, 3, 5]
    assert all("chat messages" in b.reason for b in bad)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "say hello"}, {"prompt": {"a": 1}}])
    err = exits_2(revise.main, ["--model", sft, "--input", prompts, "--output", str(tmp_path / "o.jsonl"), "--temperature", "1", "--top_p", "1",
                                "--seed", "0", "--apply_chat_template", "--revision_template",
                                os.path.join(REPO, "openrlhf_coherent/templates/srpo/tldr_revision.txt")], capsys)  # fmt: skip
    assert "line 2" in err and "chat messages" in err


# --- 11. resuming a score output with other models -----------------------------------------------------


def test_score_resume_with_other_models_is_refused(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    data = write_jsonl(tmp_path / "in.jsonl", SCORE_ROWS[:1])
    out = tmp_path / "scored.jsonl"
    stamp = scored_by(ScoringRound(sft, base))
    row = {**SCORE_ROWS[0], "line": 1, "coherent_reward": 1.0, "coherent_reward_mean": 0.5, "sft_logp": -1.0,
           "base_logp": -2.0, "response_length": 2, "response_truncated": False, "scored_by": stamp}  # fmt: skip
    out.write_text(json.dumps(row) + "\n")
    before = out.read_bytes()
    err = exits_2(score.main, ["--sft_model", base, "--base_model", sft, "--input", data, "--output", str(out)], capsys)
    assert "line 1 was scored by" in err and "mix" in err
    assert out.read_bytes() == before
    # The same models: the row counts as done, nothing to score (no Ray), the file is unchanged.
    score.main(["--sft_model", sft, "--base_model", base, "--input", data, "--output", str(out)])
    assert '"already_scored": 1' in capsys.readouterr().out and out.read_bytes() == before
