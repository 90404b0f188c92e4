"""The SRPPO recipe (`python -m openrlhf_coherent.cli.srppo`): the paper's presets, config errors, resume.

The dry-run of every preset in examples/configs/ is parsed back into flags and compared with the
paper's hyperparameters (section 4.1, Appendix D); the expectations below are typed in from the
paper, not from the YAML files. The recipe's resume of a real, killed tiny SRPPO run is in
tests/test_e2e_srppo.py, where it is also the suite's end-to-end check of GAE with a critic.
"""

import glob
import os
import re
import shlex

import pytest

from openrlhf_coherent.cli import srppo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "examples", "configs")
TINY = os.path.join(CONFIGS, "tiny_cpu.yaml")

# The paper's numbers. SFT: batch 128; per-phase (lr, epochs) from Tables 5-7. PPO: buffer 1024,
# train batch 128, KL 0.2, clip 0.2, gamma 1, lambda 0.95, critic lr 9e-6 and 35 warm-up buffers,
# actor lr 5e-8, episodes per table.
PAPER_SFT = {  # preset -> [(lr, epochs) per SFT phase]
    "srppo_mistral_7b_min_overlap": [(5e-6, 2)],
    "srppo_llama3_8b_min_overlap": [(1e-5, 2)],
    "srppo_mistral_7b_medium_overlap": [(5e-6, 2), (1e-6, 10)],
    "srppo_llama3_8b_medium_overlap": [(1e-5, 2), (5e-6, 10)],
    "srppo_mistral_7b_diminished_overlap": [(5e-6, 2), (1e-6, 8)],
}
PAPER_EPISODES = {
    "srppo_mistral_7b_min_overlap": 2,
    "srppo_llama3_8b_min_overlap": 3,
    "srppo_mistral_7b_medium_overlap": 3,
    "srppo_llama3_8b_medium_overlap": 3,
    "srppo_mistral_7b_diminished_overlap": 2,
}
BASE = {"mistral": "mistralai/Mistral-7B-v0.1", "llama3": "meta-llama/Meta-Llama-3-8B"}


def dry_run(capsys, config, *sets):
    """[(stage label, {flag: value or True}, argv)] printed by --dry-run."""
    code = srppo.main(["--config", config, "--dry-run", *[a for s in sets for a in ("--set", s)]])
    out = capsys.readouterr().out
    assert code == 0, out
    stages, label = [], None
    for block in out.split("\n# "):
        head, _, body = block.partition("\n")
        if head.lstrip("# ").startswith("stage "):
            label = head.lstrip("# ")[len("stage ") :].split(":")[0]
            argv = shlex.split(body)
            while argv and re.match(r"^[A-Z_]+=", argv[0]):  # the env prefix (MASTER_ADDR=... PYTHONPATH=...)
                argv.pop(0)
            stages.append((label, flags(argv), argv))
    return stages


def flags(argv):
    parsed, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                parsed[argv[i]] = argv[i + 1]
                i += 2
                continue
            parsed[argv[i]] = True
        i += 1
    return parsed


def assert_paper_ppo(f, episodes, sft_out, base):
    assert int(f["--rollout.batch_size"]) * int(f["--rollout.n_samples_per_prompt"]) == 1024  # rollout buffer
    assert int(f["--train.batch_size"]) == 128
    assert float(f["--algo.kl.init_coef"]) in (0.2, 0.5)
    assert float(f["--actor.eps_clip"]) == 0.2
    assert float(f["--algo.advantage.gamma"]) == 1.0 and float(f["--algo.advantage.lambd"]) == 0.95
    assert f["--algo.advantage.estimator"] == "gae"
    assert f["--critic.model_name_or_path"] == f["--actor.model_name_or_path"] == sft_out  # critic from SFT
    assert float(f["--critic.adam.lr"]) == 9e-6
    # 35 warm-up buffers: OpenRLHF trains the actor once global_step (from 0) > freezing_steps.
    assert int(f["--critic.freezing_steps"]) == 34
    assert float(f["--actor.adam.lr"]) == 5e-8
    assert int(f["--train.num_episodes"]) == episodes
    assert f["--coherent.base_model"] == base and f["--reward.model_name_or_path"] == "coherent"
    assert f["--ckpt.load_enable"] is True


def test_every_srppo_preset_is_covered():
    assert sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIGS, "srppo_*.yaml"))) == sorted(PAPER_SFT)


@pytest.mark.parametrize("preset", sorted(PAPER_SFT))
def test_preset_dry_run_has_the_papers_hyperparameters(preset, capsys, tmp_path):
    stages = dry_run(capsys, os.path.join(CONFIGS, preset + ".yaml"), f"output_dir={tmp_path}")
    *sft, (ppo_label, ppo, ppo_argv) = stages
    assert ppo_label == "ppo" and ppo_argv[1:3] == ["-m", "openrlhf_coherent.cli.train_ppo_ray"]
    assert len(sft) == len(PAPER_SFT[preset])
    base = BASE[preset.split("_")[1]]
    previous = base
    for (label, f, argv), (lr, epochs) in zip(sft, PAPER_SFT[preset]):
        assert "openrlhf.cli.train_sft" in argv
        assert float(f["--adam.lr"]) == lr and int(f["--train.max_epochs"]) == epochs
        assert int(f["--train.batch_size"]) == 128
        assert f["--model.model_name_or_path"] == previous  # each phase continues the previous model
        previous = f["--ckpt.output_dir"]
    assert sft[0][1]["--data.dataset"] == "allenai/tulu-v2-sft-mixture"
    if "medium" in preset or "diminished" in preset:
        assert "ultrafeedback" in sft[1][1]["--data.dataset"]
    if "diminished" in preset:
        assert "tulu" in sft[1][1]["--data.dataset"].split(",")[1]
    assert previous == str(tmp_path / "sft")
    assert ppo["--data.prompt_dataset"] == "openbmb/UltraFeedback"
    assert_paper_ppo(ppo, PAPER_EPISODES[preset], previous, base)


def test_set_overrides_any_key_and_yaml_floats(capsys, tmp_path):
    (_, sft, _), (_, ppo, _) = dry_run(
        capsys, os.path.join(CONFIGS, "srppo_mistral_7b_min_overlap.yaml"),
        f"output_dir={tmp_path}", "ppo.actor_lr=2e-8", "ppo.kl_coef=0.5", "sft.epochs=3",
        "ppo.extra_args=[--logger.wandb.project, x]", "ppo.coherent={aggregate: mean, sft_logp_floor: 0.5}",
    )  # fmt: skip
    assert float(ppo["--actor.adam.lr"]) == 2e-8 and float(ppo["--algo.kl.init_coef"]) == 0.5
    assert sft["--train.max_epochs"] == "3" and ppo["--logger.wandb.project"] == "x"
    assert ppo["--coherent.aggregate"] == "mean" and ppo["--coherent.sft_logp_floor"] == "0.5"


def test_tiny_config_root_from_set_or_environment(capsys, tmp_path, monkeypatch):
    (_, sft, argv), (_, ppo, _) = dry_run(capsys, TINY, f"root={tmp_path}")
    assert sft["--model.model_name_or_path"] == str(tmp_path / "base")
    assert sft["--data.dataset"] == str(tmp_path / "demos.jsonl")
    assert ppo["--actor.model_name_or_path"] == str(tmp_path / "recipe" / "sft")
    assert ppo["--coherent.base_model"] == str(tmp_path / "base")
    assert int(ppo["--critic.freezing_steps"]) == 0  # 1 warm-up buffer
    monkeypatch.setenv("SRPPO_TINY_ROOT", str(tmp_path / "env"))
    (_, sft, _), _ = dry_run(capsys, TINY)
    assert sft["--model.model_name_or_path"] == str(tmp_path / "env" / "base")


def test_stages_subset(capsys, tmp_path):
    stages = dry_run(capsys, TINY, f"root={tmp_path}")
    assert [s[0] for s in stages] == ["sft", "ppo"]
    code = srppo.main(["--config", TINY, "--dry-run", "--stages", "ppo", "--set", f"root={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0 and "train_sft" not in out and "train_ppo_ray" in out
    assert "stage sft has not finished" in out  # warned: ppo alone needs sft's output


@pytest.mark.parametrize(
    "sets, message",
    [
        (["ppo.actor_lrr=1e-7"], "unknown key ppo.actor_lrr"),
        (["bogus=1"], "unknown key bogus"),
        (["ppo.train_batch_size=abc"], "ppo.train_batch_size: expected an integer"),
        (["sft.apply_chat_template=yes please"], "sft.apply_chat_template: expected true or false"),
        (["sft.extra_args=--x"], "sft.extra_args: expected a list"),
        (["method=dpo"], "method: 'dpo' is not one of"),
        (["ppo.critic_warmup_buffers=3", "ppo.estimator=rloo"], "critic_warmup_buffers needs ppo.estimator gae"),
        (["root=${NO_SUCH_VARIABLE_X}"], "${NO_SUCH_VARIABLE_X} is neither"),
        (["sft.then=[{lr: 1e-6, epoch: 3}]"], "unknown key sft.then[0].epoch"),
        (["method=ppo_rm", "ppo_rm.reward_model=null"], "ppo_rm.reward_model is required"),
    ],
)
def test_config_errors_name_the_key(sets, message, capsys, tmp_path):
    argv = ["--config", TINY, "--dry-run", "--set", f"root={tmp_path}"]
    for s in sets:
        argv += ["--set", s]
    assert srppo.main(argv) == 2
    err = capsys.readouterr().err
    assert "config error" in err and message in err, err


def test_file_errors_stop_before_anything_runs(capsys, tmp_path):
    assert srppo.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: [unclosed\n")
    assert srppo.main(["--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    # A real run with missing inputs names them and writes nothing.
    assert srppo.main(["--config", TINY, "--set", f"root={tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err
    assert "sft.dataset" in err and "demos.jsonl does not exist" in err and "base_model" in err
    assert not (tmp_path / "empty").exists()
    assert srppo.main(["--config", TINY, "--dry-run", "--stages", "sft,dpo", "--set", f"root={tmp_path}"]) == 2
    assert "'dpo' is not a stage of method srppo" in capsys.readouterr().err


def test_outputs_are_never_overwritten(capsys, tmp_path, tiny_models):
    base, _ = tiny_models
    (tmp_path / "demos.jsonl").write_text('{"input": "say hello", "output": "hello !"}\n')
    stray = tmp_path / "recipe" / "sft"
    stray.mkdir(parents=True)
    (stray / "model.safetensors").write_text("someone else's")
    assert srppo.main(["--config", TINY, "--stages", "sft", "--set", f"root={tmp_path}", "--set", f"base_model={base}"]) == 2
    err = capsys.readouterr().err
    assert "never overwrites" in err and str(stray) in err
    assert (stray / "model.safetensors").read_text() == "someone else's"


def _ppo_stage(tmp_path):
    from openrlhf_coherent.recipe.stages import Stage

    gae = ["--critic.model_name_or_path", str(tmp_path / "sft")]
    return Stage("ppo", "ppo", gae, str(tmp_path / "out" / "ppo"), str(tmp_path / "ckpt" / "ppo"), {})


def _save(role_dir, steps, latest):
    for step in steps:
        (role_dir / f"global_step{step}").mkdir(parents=True)
        (role_dir / f"global_step{step}" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if latest is not None:
        (role_dir / "latest").write_text(latest)


def test_a_killed_ppo_run_resumes_every_role_from_one_finished_step(tmp_path):
    """DeepSpeed rewrites `latest` in place: a kill can leave it empty, or leave the critic a step
    behind the actor. The recipe points every role at the newest step all of them finished."""
    from openrlhf_coherent.recipe import resume
    from openrlhf_coherent.recipe.config import RecipeConfigError

    stage = _ppo_stage(tmp_path)
    actor, critic = tmp_path / "ckpt" / "ppo" / "_actor", tmp_path / "ckpt" / "ppo" / "_critic"
    # the case seen in a killed GAE run: actor at step 2 (step 3 half-saved), critic's latest empty
    _save(actor, [1, 2, 3], "global_step2")
    _save(critic, [1, 2, 3], "")
    assert resume.resume_step(stage) == 2 and resume.latest_checkpoint(stage) == "global_step2"
    message = resume.align_checkpoints(stage)
    assert "critic: latest (empty" in message and "-> global_step2" in message and "from step 2" in message
    assert (critic / "latest").read_text() == "global_step2" and (actor / "latest").read_text() == "global_step2"
    assert sorted(os.listdir(critic)) == ["global_step1", "global_step2", "global_step3", "latest"]  # nothing deleted
    assert resume.align_checkpoints(stage) is None  # already consistent: nothing to do
    # the critic a step behind: the actor goes back to the critic's step
    (critic / "latest").write_text("global_step1")
    assert resume.resume_step(stage) == 1 and "actor: latest global_step2 -> global_step1" in resume.align_checkpoints(stage)
    # a best-metric tag is a finished save too, and is what the role points at for its step
    (actor / "global_step1").rename(actor / "best_global_step1")
    (actor / "latest").write_text("best_global_step1")
    assert resume.resume_step(stage) == 1 and resume.align_checkpoints(stage) is None
    # `latest` naming a folder OpenRLHF's rotation deleted: the newer folder may be half-written
    (critic / "latest").write_text("global_step7")
    with pytest.raises(RecipeConfigError, match="not a checkpoint folder there"):
        resume.resume_step(stage)


def test_resume_with_a_role_that_never_finished_a_save(tmp_path):
    from openrlhf_coherent.recipe import resume
    from openrlhf_coherent.recipe.config import RecipeConfigError

    stage = _ppo_stage(tmp_path)
    actor, critic = tmp_path / "ckpt" / "ppo" / "_actor", tmp_path / "ckpt" / "ppo" / "_critic"
    _save(actor, [1], "global_step1")
    _save(critic, [1], None)  # killed during its first save: no `latest` yet
    assert resume.resume_step(stage) == 1
    assert "critic: no finished save, starts from its initial weights" in resume.align_checkpoints(stage)
    assert not (critic / "latest").exists()
    (actor / "latest").unlink()
    (critic / "latest").write_text("global_step1")
    with pytest.raises(RecipeConfigError, match="the critic saved a checkpoint but the actor never finished"):
        resume.resume_step(stage)
    # SFT/DPO stages: one checkpoint folder, the model's own
    from openrlhf_coherent.recipe.stages import Stage

    sft = Stage("sft", "sft", [], str(tmp_path / "out" / "sft"), str(tmp_path / "ckpt" / "sft"), {})
    assert resume.resume_step(sft) is None
    _save(tmp_path / "ckpt" / "sft", [5, 10], "global_step10")
    assert resume.resume_step(sft) == 10 and resume.align_checkpoints(sft) is None
    # a REINFORCE stage (no critic flag) ignores a `_critic` folder left by another run
    reinforce = Stage("ppo", "ppo", [], stage.output, stage.ckpt, {})
    (actor / "latest").write_text("global_step1")
    assert resume.resume_step(reinforce) == 1 and resume.align_checkpoints(reinforce) is None
