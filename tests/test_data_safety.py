"""Issue 28: the mechanisms that keep data, code and numbers safe, each through every entry point.

1. one temp-file helper (`files.replace_atomically`) and one output/checkpoint-folder check
   (`files.check_training_folders`); 2. one remote-code check (`remote_code.remote_code_source`);
4. a whole-file weights fingerprint, an exclusive lock on an appended output, one numeric-flag
validator (`numeric`); 5/6. failures before Ray and model loads, with messages naming the flag,
file or line. Every case fails before Ray starts and before a model loads (no Ray is started here).
"""

import json
import os
import shutil
import stat

import pytest
import ray

from openrlhf_coherent.cli import evaluate, filter as filter_cli, revise, score, sera, spin_pairs, srppo, train_dpo, train_srpo
from openrlhf_coherent.cli.train_ppo_ray import main as ppo_main
from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.files import check_checkpoint_folder, model_identity, replace_atomically

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(REPO, "openrlhf_coherent/templates/srpo/tldr_revision.txt")
SCORED = [{"line": 1, "coherent_reward": 1.0}, {"line": 2, "coherent_reward": 2.0}]
PAIRS = [{"prompt": "a", "chosen": "b", "rejected": "c"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def exits_2(main, argv, capsys):
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert not ray.is_initialized(), "must fail before Ray starts"
    return err


def ppo_argv(actor, base, *extra, coherent=True):
    reward = ["--reward.model_name_or_path", "coherent", "--coherent.base_model", base] if coherent else ["--reward.model_name_or_path", base]
    return ["--actor.model_name_or_path", actor, "--critic.model_name_or_path", actor, *reward,
            "--data.prompt_dataset", "unused.jsonl", *extra]  # fmt: skip


def tree(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}  # fmt: skip


# --- 1. data destroyed ---------------------------------------------------------------------------------


def test_the_tmp_name_beside_an_output_is_never_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "kept.jsonl.tmp", SCORED)  # the input has the old fixed temp name
    before = (tmp_path / "kept.jsonl.tmp").read_bytes()
    filter_cli.main(["--input", "kept.jsonl.tmp", "--output", "kept.jsonl", "--top_k", "1"])
    assert (tmp_path / "kept.jsonl.tmp").read_bytes() == before
    assert [json.loads(l)["line"] for l in open("kept.jsonl")] == [2]
    # A link at that name: its target is not written either.
    (tmp_path / "victim.txt").write_text("precious\n")
    os.symlink("victim.txt", "out.jsonl.tmp")
    filter_cli.main(["--input", "kept.jsonl.tmp", "--output", "out.jsonl", "--top_k", "1"])
    assert (tmp_path / "victim.txt").read_text() == "precious\n" and os.path.islink("out.jsonl.tmp")
    assert sorted(os.listdir(tmp_path)) == ["kept.jsonl", "kept.jsonl.tmp", "out.jsonl", "out.jsonl.tmp", "victim.txt"]


def test_replace_atomically_keeps_the_old_file_on_failure_and_honours_the_umask(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replace_atomically(str(target)) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]  # no temp file left
    old = os.umask(0o022)
    try:
        with replace_atomically(str(tmp_path / "new.json")) as f:
            f.write("new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o644


@pytest.mark.parametrize("coherent", [True, False])
@pytest.mark.parametrize(
    "where, expected",
    [
        (lambda sft, tmp: ["--ckpt.output_dir", sft], "is the same file or folder as --actor.model_name_or_path"),
        (lambda sft, tmp: ["--ckpt.output_dir", os.path.dirname(sft)], "contains --actor.model_name_or_path"),
        (lambda sft, tmp: ["--ckpt.path", os.path.join(sft, "ckpt"), "--ckpt.save_steps", "1"], "lies inside --actor.model_name_or_path"),
        (lambda sft, tmp: ["--ckpt.save_hf", "--ckpt.path", sft, "--ckpt.save_steps", "1"], "--ckpt.path"),
    ],
)  # fmt: skip
def test_ppo_output_and_checkpoint_folders_never_touch_a_model(where, expected, coherent, tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    before = tree(sft)
    err = exits_2(ppo_main, ppo_argv(sft, base, *where(sft, tmp_path), coherent=coherent), capsys)
    assert expected in err
    assert tree(sft) == before


def test_a_checkpoint_folder_holds_only_what_openrlhf_writes(tiny_models, tmp_path, capsys):
    _, sft = tiny_models
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    ckpt = tmp_path / "D"
    (ckpt / "my_data").mkdir(parents=True)
    (ckpt / "my_data" / "x.txt").write_text("mine")
    common = ["--model.model_name_or_path", sft, "--data.dataset", data, "--data.prompt_key", "prompt",
              "--ckpt.output_dir", str(tmp_path / "out"), "--ckpt.path", str(ckpt), "--ckpt.save_steps", "1"]  # fmt: skip
    for main, extra in ((train_dpo.main, []), (train_srpo.main, ["--srpo.beta", "0.1", "--srpo.revision_template", TEMPLATE])):
        err = exits_2(main, [*common, *extra], capsys)
        assert "--ckpt.path" in err and "my_data" in err and "rotation" in err
    assert (ckpt / "my_data" / "x.txt").read_text() == "mine"
    # What OpenRLHF and DeepSpeed write there is accepted (a resume), in PPO's role folders too.
    ok = tmp_path / "ok"
    for name in ("global_step2", "global_step4_hf", "best_global_step2", "_actor/global_step2", "_critic/global_step2"):
        (ok / name).mkdir(parents=True)
    for name in ("latest", "zero_to_fp32.py", "_actor/latest"):
        (ok / name).write_text("global_step2")
    check_checkpoint_folder(str(ok))
    (ok / "_actor" / "sft").mkdir()
    with pytest.raises(ConfigError, match=r"_actor/sft"):
        check_checkpoint_folder(str(ok))


def test_sera_output_dir_goes_through_the_shared_check(tiny_models, tmp_path, capsys):
    _, sft = tiny_models
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    before = tree(sft)
    err = exits_2(sera.main, ["--sft_model", sft, "--input", data, "--output_dir", sft], capsys)
    assert "--output_dir" in err and "--sft_model" in err
    err = exits_2(sera.main, ["--sft_model", sft, "--input", data, "--output_dir", str(tmp_path)], capsys)
    assert "contains --input" in err
    (tmp_path / "afile").write_text("x")
    err = exits_2(sera.main, ["--sft_model", sft, "--input", data, "--output_dir", str(tmp_path / "afile")], capsys)
    assert "--output_dir" in err and "not a folder" in err
    assert tree(sft) == before


# --- 2. model-folder code ------------------------------------------------------------------------------


def _marker_code(marker):
    return f"open({str(marker)!r}, 'w').write('ran')\n"


@pytest.fixture(params=["custom_generate", "processor_auto_map", "adapter_of_auto_map"])
def code_model(request, tiny_models, tmp_path):
    """A model folder transformers 5.15 would run code from with trust_remote_code=True, three ways."""
    base, _ = tiny_models
    marker = tmp_path / "code_ran"
    folder = tmp_path / request.param
    shutil.copytree(base, folder)
    if request.param == "custom_generate":
        (folder / "custom_generate").mkdir()
        (folder / "custom_generate" / "generate.py").write_text(_marker_code(marker) + "def generate(model, **kw):\n    pass\n")
    elif request.param == "processor_auto_map":
        (folder / "evil.py").write_text(_marker_code(marker))
        (folder / "processor_config.json").write_text(json.dumps({"auto_map": {"AutoProcessor": "evil.P"}}))
    else:
        evil_base = tmp_path / "evil_base"
        shutil.copytree(base, evil_base)
        (evil_base / "evil.py").write_text(_marker_code(marker))
        config = json.loads((evil_base / "config.json").read_text())
        (evil_base / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "evil.C"}}))
        shutil.rmtree(folder)
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(evil_base)}))
    return str(folder), marker


def test_the_check_sees_what_transformers_would_import(code_model, tiny_models):
    from openrlhf_coherent.remote_code import remote_code_source

    path, _ = code_model
    assert remote_code_source(path)
    assert remote_code_source(tiny_models[0]) is None


def _routes(model, other, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c", "response": "b"}])
    out = str(tmp_path / "o.jsonl")
    dpo = ["--model.model_name_or_path", model, "--data.dataset", data, "--data.prompt_key", "prompt", "--ckpt.output_dir", str(tmp_path / "d")]
    return {
        "ppo actor": (ppo_main, ppo_argv(model, other, "--critic.model_name_or_path", other), "--coherent.trust_remote_code"),
        "ppo base": (ppo_main, ppo_argv(other, model), "--coherent.trust_remote_code"),
        "plain ppo reward model": (ppo_main, ppo_argv(other, model, coherent=False), "--coherent.trust_remote_code"),
        "train_dpo": (train_dpo.main, dpo, "--coherent.trust_remote_code"),
        "train_srpo": (train_srpo.main, [*dpo, "--srpo.beta", "0.1", "--srpo.revision_template", TEMPLATE], "--coherent.trust_remote_code"),
        "score": (score.main, ["--sft_model", other, "--base_model", model, "--input", data, "--output", out], "--trust_remote_code"),
        "spin_pairs": (spin_pairs.main, ["--model", model, "--input", data, "--output", out, "--input_key", "prompt", "--output_key", "chosen"], "--trust_remote_code"),
        "revise": (revise.main, ["--model", model, "--input", data, "--output", out, "--temperature", "1", "--top_p", "1", "--seed", "0",
                                 "--revision_template", TEMPLATE], "--trust_remote_code"),
        "evaluate": (evaluate.main, ["--model", model, "--output", str(tmp_path / "e.md")], "--trust_remote_code"),
        "sera": (sera.main, ["--sft_model", model, "--input", data, "--output_dir", str(tmp_path / "s")], "--trust_remote_code"),
    }  # fmt: skip


@pytest.mark.parametrize("route", ["ppo actor", "ppo base", "plain ppo reward model", "train_dpo", "train_srpo", "score",
                                   "spin_pairs", "revise", "evaluate", "sera"])  # fmt: skip
def test_every_entry_point_refuses_model_folder_code(route, code_model, tiny_models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, marker = code_model
    main, argv, trust_flag = _routes(model, tiny_models[1], tmp_path)[route]
    err = exits_2(main, argv, capsys)
    assert model in err and trust_flag in err and "runs" in err
    assert not marker.exists()


def test_train_dpo_and_srpo_take_the_trust_flag(code_model, tiny_models, tmp_path):
    """With the flag, the model check passes (and the run goes on to OpenRLHF's own checks)."""
    model, marker = code_model
    args = train_srpo.parse_args(["--model.model_name_or_path", model, "--data.dataset", write_jsonl(tmp_path / "p.jsonl", PAIRS),
                                  "--data.prompt_key", "prompt", "--ckpt.output_dir", str(tmp_path / "d"), "--srpo.beta", "0.1",
                                  "--srpo.revision_template", TEMPLATE, "--coherent.trust_remote_code"])  # fmt: skip
    assert args.coherent.trust_remote_code and not marker.exists()
    ours, _ = train_dpo.split_args(["--coherent.trust_remote_code"])
    assert ours.trust_remote_code


def test_recipe_refuses_model_code_at_dry_run(code_model, tmp_path, capsys):
    model, marker = code_model
    config = os.path.join(REPO, "examples", "configs", "tiny_cpu.yaml")
    assert srppo.main(["--config", config, "--dry-run", "--set", f"root={tmp_path}", "--set", f"base_model={model}"]) == 2
    err = capsys.readouterr().err
    assert "base_model" in err and "trust_remote_code: true" in err
    assert srppo.main(["--config", config, "--dry-run", "--set", f"root={tmp_path}", "--set", f"base_model={model}",
                       "--set", "trust_remote_code=true"]) == 0  # fmt: skip
    assert "--coherent.trust_remote_code" in capsys.readouterr().out
    assert not marker.exists()


def test_ray_worker_loaders_see_custom_generate(code_model, monkeypatch):
    from openrlhf_coherent import remote_code

    model, _ = code_model
    monkeypatch.setenv(remote_code.TRUST_ENV, "0")
    with pytest.raises(ConfigError, match="--coherent.trust_remote_code"):
        remote_code.trust_remote_code_for(model, "CPU rollout engine")


# --- 4. silent wrong numbers ---------------------------------------------------------------------------


def test_fingerprint_covers_every_byte_and_is_cached_by_size_and_mtime(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRLHF_COHERENT_HASH_CACHE", str(tmp_path / "cache.json"))
    base, _ = tiny_models
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(base, a)
    shutil.copytree(base, b)
    weights = b / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2  # past the first and last 64 KiB: a middle tensor's value
    assert 1 << 16 < middle < len(data) - (1 << 16)
    data[middle] ^= 0xFF
    mtime = os.stat(weights).st_mtime_ns
    weights.write_bytes(bytes(data))
    assert model_identity(str(a))["sha"] != model_identity(str(b))["sha"]
    # Cached by (path, size, mtime): a second call reads the cache; a new mtime hashes again.
    cache = json.loads((tmp_path / "cache.json").read_text())
    key = next(k for k in cache if k.startswith(os.path.realpath(weights)))
    cache[key] = "0" * 64
    (tmp_path / "cache.json").write_text(json.dumps(cache))
    forged = model_identity(str(b))["sha"]
    assert forged != model_identity(str(a))["sha"]
    os.utime(weights, ns=(mtime, mtime))
    assert model_identity(str(b))["sha"] != forged


def test_a_second_run_on_one_output_refuses(tiny_models, tmp_path, capsys):
    from openrlhf_coherent.data_tools.output import ScoredStream

    base, sft = tiny_models
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "say hello", "response": "hello !"}])
    out = str(tmp_path / "scored.jsonl")
    with ScoredStream(out, "--output", ("coherent_reward",)):  # a first run, still writing
        err = exits_2(score.main, ["--sft_model", sft, "--base_model", base, "--input", data, "--output", out], capsys)
        assert "--output" in err and "another run is writing" in err
    assert os.path.exists(out)


def _pref_argv(tiny_models, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    return ["--model.model_name_or_path", tiny_models[1], "--data.dataset", data, "--data.prompt_key", "prompt",
            "--ckpt.output_dir", str(tmp_path / "out")]  # fmt: skip


@pytest.mark.parametrize(
    "tool, extra, flag",
    [
        ("train_srpo", ["--srpo.beta", "nan"], "--srpo.beta"),
        ("train_srpo", ["--srpo.beta", "inf"], "--srpo.beta"),
        ("train_dpo", ["--model.beta", "nan"], "--model.beta"),
        ("train_dpo", ["--dpo.loss", "simpo", "--dpo.simpo_gamma", "nan"], "--dpo.simpo_gamma"),
        ("train_dpo", ["--train.micro_batch_size", "0"], "--train.micro_batch_size"),
        ("train_dpo", ["--train.seed", str(2**64)], "--train.seed"),
        ("ppo", ["--rollout.temperature", "nan"], "--rollout.temperature"),
        ("ppo", ["--rollout.top_p", "0"], "--rollout.top_p"),
        ("ppo", ["--algo.kl.init_coef", "-1"], "--algo.kl.init_coef"),
        ("ppo", ["--actor.adam.lr", "inf"], "--actor.adam.lr"),
        ("sera", ["--temperature", "inf"], "--temperature"),
        ("sera", ["--model.beta", "-1"], "--model.beta"),
        ("sera", ["--seed", str(2**64)], "--seed"),
        ("sera", ["--bootstrap_fraction", "inf"], "--bootstrap_fraction"),
        ("sera", ["--train.micro_batch_size", "0"], "--train.micro_batch_size"),
        ("revise", ["--seed", str(2**64)], "--seed"),
        ("evaluate", ["--limit", "nan"], "--limit"),
        ("evaluate", ["--limit", "inf"], "--limit"),
    ],
)  # fmt: skip
def test_numeric_flags_are_checked_by_one_validator(tool, extra, flag, tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    if tool == "train_dpo":
        main, argv = train_dpo.main, _pref_argv(tiny_models, tmp_path)
    elif tool == "train_srpo":
        main, argv = train_srpo.main, [*_pref_argv(tiny_models, tmp_path), "--srpo.revision_template", TEMPLATE]
        argv += [] if "--srpo.beta" in extra else ["--srpo.beta", "0.1"]
    elif tool == "ppo":
        main, argv = ppo_main, ppo_argv(sft, base)
    elif tool == "sera":
        main, argv = sera.main, ["--sft_model", sft, "--input", data, "--output_dir", str(tmp_path / "s")]
    elif tool == "revise":
        main, argv = revise.main, ["--model", sft, "--input", data, "--output", str(tmp_path / "o.jsonl"), "--temperature", "1",
                                   "--top_p", "1", "--revision_template", TEMPLATE]  # fmt: skip
    else:
        main, argv = evaluate.main, ["--model", sft, "--output", str(tmp_path / "e.md")]
    err = exits_2(main, [*argv, *extra], capsys)
    assert flag in err and "must be" in err, err


def test_openrlhf_defaults_pass_the_validator(tiny_models):
    """The rules must not refuse a default: every leaf of OpenRLHF's PPO and train_dpo args trees."""
    from openrlhf_coherent.cli.train_ppo_ray import parse_args
    from openrlhf_coherent.numeric import check_numeric_flags, tree_items

    base, sft = tiny_models
    args = parse_args(ppo_argv(sft, base))
    check_numeric_flags(tree_items(args))
    assert ("--rollout.temperature", 1.0) in list(tree_items(args))


@pytest.mark.parametrize(
    "key, value, flag",
    [("sft.micro_batch_size", "0", "--train.micro_batch_size"), ("ppo.temperature", ".nan", "--rollout.temperature"),
     ("ppo.max_new_tokens", "0", "--rollout.max_new_tokens"), ("sft.lr", ".inf", "--adam.lr"),
     ("ppo.kl_coef", "-1", "--algo.kl.init_coef"), ("ppo.coherent", "{scale: -1}", "--coherent.scale"),
     ("ppo.train_micro_batch_size", "-2", "--train.micro_batch_size")],
)  # fmt: skip
def test_recipe_values_are_checked_at_dry_run(key, value, flag, tmp_path, capsys):
    config = os.path.join(REPO, "examples", "configs", "tiny_cpu.yaml")
    assert srppo.main(["--config", config, "--dry-run", "--set", f"root={tmp_path}", "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert flag in err and "must be" in err


# --- 5/6. late failures and messages -------------------------------------------------------------------


def test_non_utf8_input_names_its_line_and_leaves_no_output(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff\xfe", "response": "b"}\n')
    out = tmp_path / "scored.jsonl"
    err = exits_2(score.main, ["--sft_model", sft, "--base_model", base, "--input", str(data), "--output", str(out)], capsys)
    assert "line 2" in err and "UTF-8" in err
    assert not out.exists()


def test_an_input_field_named_fold_does_not_break_resume(tiny_models, tmp_path, capsys):
    from openrlhf_coherent.data_tools.pipeline import ScoringRound, scored_by

    base, sft = tiny_models
    row = {"prompt": "say hello", "response": "hello !", "fold": "train"}
    data = write_jsonl(tmp_path / "in.jsonl", [row])
    out = tmp_path / "scored.jsonl"
    scored = {**row, "line": 1, "coherent_reward": 1.0, "coherent_reward_mean": 0.5, "sft_logp": -1.0, "base_logp": -2.0,
              "response_length": 2, "response_truncated": False, "scored_by": scored_by(ScoringRound(sft, base))}  # fmt: skip
    out.write_text(json.dumps(scored) + "\n")
    score.main(["--sft_model", sft, "--base_model", base, "--input", data, "--output", str(out)])
    assert '"already_scored": 1' in capsys.readouterr().out


def test_train_dpo_missing_or_empty_dataset_fails_before_models_load(tiny_models, tmp_path, capsys):
    _, sft = tiny_models
    (tmp_path / "empty.jsonl").write_text("")
    for dataset, message in ((str(tmp_path / "nope.jsonl"), "no such file"), (str(tmp_path / "empty.jsonl"), "is empty")):
        argv = ["--model.model_name_or_path", sft, "--data.dataset", dataset, "--ckpt.output_dir", str(tmp_path / "o")]
        err = exits_2(train_dpo.main, argv, capsys)
        assert "--data.dataset" in err and message in err


def test_an_uncreatable_rollout_log_fails_before_ray(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    (tmp_path / "afile").write_text("x")
    err = exits_2(ppo_main, ppo_argv(sft, base, "--coherent.rollout_log", str(tmp_path / "afile" / "log.jsonl")), capsys)
    assert "--coherent.rollout_log" in err and "is a file" in err


def test_a_newline_in_a_recipe_path_stays_inside_the_dry_run_comment(tmp_path, capsys):
    config = tmp_path / "tiny\nrm -rf x.yaml"
    shutil.copy(os.path.join(REPO, "examples", "configs", "tiny_cpu.yaml"), config)
    assert srppo.main(["--config", str(config), "--dry-run", "--set", f"root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert not any(line.startswith("rm -rf") for line in out.splitlines())
    assert "tiny\\nrm -rf x.yaml" in out


def test_a_nan_in_any_input_field_is_a_bad_row_before_models_load(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "a", "response": "b", "meta": NaN}\n')
    out = tmp_path / "scored.jsonl"
    err = exits_2(score.main, ["--sft_model", sft, "--base_model", base, "--input", str(data), "--output", str(out)], capsys)
    assert "line 1" in err and "NaN" in err
    assert not out.exists()


def test_a_truncated_safetensors_file_is_refused_before_ray(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    cut = tmp_path / "cut"
    shutil.copytree(base, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "response": "b", "chosen": "b", "rejected": "c"}])
    for main, argv, flag in (
        (ppo_main, ppo_argv(sft, str(cut)), "--coherent.base_model"),
        (score.main, ["--sft_model", sft, "--base_model", str(cut), "--input", data, "--output", str(tmp_path / "o.jsonl")], "--base_model"),
        (train_dpo.main, ["--model.model_name_or_path", str(cut), "--data.dataset", data, "--data.prompt_key", "prompt",
                          "--ckpt.output_dir", str(tmp_path / "d")], "--model.model_name_or_path"),
    ):  # fmt: skip
        err = exits_2(main, argv, capsys)
        assert flag in err and "model.safetensors" in err and "truncated" in err


def test_a_logit_scaling_model_is_refused_by_the_scorers_driver(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    scaled = tmp_path / "scaled"
    shutil.copytree(base, scaled)
    config = json.loads((scaled / "config.json").read_text())
    (scaled / "config.json").write_text(json.dumps({**config, "logit_scale": 0.5}))
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "response": "b"}])
    err = exits_2(score.main, ["--sft_model", sft, "--base_model", str(scaled), "--input", data, "--output", str(tmp_path / "o.jsonl")], capsys)
    assert "--base_model" in err and "logit_scale" in err


def test_a_model_with_fewer_embedding_rows_than_tokens_is_refused_before_ray(tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    small = tmp_path / "small"
    shutil.copytree(base, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] - 5}))
    err = exits_2(ppo_main, ppo_argv(sft, str(small)), capsys)
    assert "--coherent.base_model" in err and "vocab_size" in err
