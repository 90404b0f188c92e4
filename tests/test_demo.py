"""The embedded demo's --quick mode: every stage runs through the real stack and writes its outputs;
and the demo's bookkeeping (gains relative to the oracle, the sweep's SFT data) without models."""

import json
import os
import subprocess
import sys

import pytest

from demo.run import ORACLE, relative_to_oracle
from demo.sweep import overlap_demos
from demo.world import make_world


def test_demo_quick_produces_every_output(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "demo.run", "--out", str(out), "--quick"],
        capture_output=True, text=True, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"base", "SFT", "SFT extended", "SRPPO", ORACLE}
    for name, evals in results["per_seed"].items():
        assert 0.0 <= evals[0]["accuracy"] <= 1.0, name
    for name, curve in results["curves"].items():
        assert [s["step"] for s in curve["steps"]] == [1, 2], name
        assert all(s["task_accuracy"] is not None for s in curve["steps"]), name
        # held-out accuracy at step 0 (the SFT model) and at every saved checkpoint
        assert [p["step"] for p in curve["heldout"]] == [0, 1, 2], name
        assert curve["heldout"][0]["accuracy"] == results["per_seed"]["SFT"][0]["accuracy"], name
    assert set(results["relative_to_oracle"]) == {"SFT extended", "SRPPO", ORACLE}
    assert results["reward_check"]["count_plus_one"]["mean_out"] is not None
    text = (out / "results.md").read_text()
    assert text.startswith("Held-out accuracy") and "fraction of oracle" in text and "Reward-ranking check" in text
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert "| SRPPO |" in proc.stdout  # the table is printed on the console
    for stage in ("pretrain base", "SFT seed 0", "reward check seed 0", "SRPPO seed 0", f"{ORACLE} seed 0"):
        assert f"[demo] {stage} done in" in proc.stdout


def _eval(i, o):
    return {"accuracy": (i + o) / 2, "accuracy_in_domain": i, "accuracy_out_of_domain": o}


def test_gain_is_reported_as_a_fraction_of_the_oracles_gain():
    evals = {
        "SFT": [_eval(0.5, 0.1), _eval(0.6, 0.2)],
        "SRPPO": [_eval(0.5, 0.2), _eval(0.6, 0.3)],  # +0.1 out of domain on both seeds
        ORACLE: [_eval(0.7, 0.3), _eval(0.6, 0.4)],  # +0.2 out of domain on both seeds
    }
    rel = relative_to_oracle(evals, [0, 1])
    assert rel["SRPPO"]["out"]["gain_per_seed"] == [0.1, 0.1]
    assert rel["SRPPO"]["out"]["fraction_of_oracle"] == 0.5
    assert rel[ORACLE]["out"]["fraction_of_oracle"] == 1.0
    assert rel["SRPPO"]["in"]["fraction_of_oracle"] == 0.0


def test_sweep_overlap_levels_never_use_held_out_prompts():
    world = make_world(0)
    held_out = {s.text for s in world.eval_prompts}
    minimum, medium, diminished = (overlap_demos(world, lvl) for lvl in ("minimum", "medium", "diminished"))
    assert minimum == world.demos
    assert len(medium) == len(world.demos) + 8 and len(diminished) == len(medium) + 32
    ppo = {s.text for s in world.ppo_prompts}
    assert sum(s.text in ppo for s, _ in medium) == 8  # the overlap with the PPO prompts
    assert not any(s.text in held_out for s, _ in diminished)
    assert all(s.in_domain for s, _ in diminished[len(medium):])


def test_oracle_budget_refuses_bad_input_before_writing_anything(tmp_path, capsys):
    from demo import oracle_budget

    demo_out, out = tmp_path / "demo", tmp_path / "o"

    def refused(*flags) -> str:
        with pytest.raises(SystemExit) as exit_info:
            oracle_budget.main(["--demo_out", str(demo_out), "--out", str(out), *flags])
        assert exit_info.value.code == 2 and not out.exists()
        return capsys.readouterr().err.splitlines()[-1]  # the message, after argparse's usage line

    assert "--demo_out: no SFT model" in refused("--steps", "2", "--lrs", "1e-4")
    for seed in range(3):
        (demo_out / f"sft_seed{seed}").mkdir(parents=True)
        (demo_out / f"sft_seed{seed}" / "config.json").write_text("{}")
    assert "--steps 20: more steps than one pass" in refused("--steps", "20", "--lrs", "1e-4")
    assert "--steps 0: at least 1" in refused("--steps", "0", "--lrs", "1e-4")
    assert "--seeds 0: at least 1" in refused("--steps", "2", "--lrs", "1e-4", "--seeds", "0")
    for lr in ("0", "-0.0001", "nan", "inf"):
        assert "is not a positive finite learning rate" in refused("--steps", "2", "--lrs", lr)
    assert "given twice" in refused("--steps", "2", "--lrs", "1e-4", "0.0001")
    out.mkdir()
    (out / "oracle_budget.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        oracle_budget.main(["--demo_out", str(demo_out), "--out", str(out), "--steps", "2", "--lrs", "1e-4"])
    assert exit_info.value.code == 2 and "exists and is not empty" in capsys.readouterr().err.splitlines()[-1]
    assert os.listdir(out) == ["oracle_budget.json"]


def test_demo_refuses_a_ppo_steps_override_that_is_not_whole_passes(tmp_path, capsys):
    from demo import run

    with pytest.raises(SystemExit) as exit_info:
        run.main(["--out", str(tmp_path / "d"), "--ppo_steps", "20"])
    assert exit_info.value.code == 2 and "--ppo_steps 20: more steps than one pass" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("module", ["demo.run", "demo.sweep", "demo.hacking", "demo_real.run", "demo.paper"])
def test_demo_commands_never_overwrite_a_finished_output(module, tmp_path):
    """A second `make demo` (or sweep, hacking, real-model run) into the same folder is refused
    before any work, naming --out; the first run's files are untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"finished": true}')
    argv = ["--out", str(out)]
    if module == "demo.sweep":
        demo_out = tmp_path / "demo_out"
        demo_out.mkdir()
        (demo_out / "results.json").write_text(json.dumps({"settings": {}, "seeds": [0], "per_seed": {"SFT": [{}]}}))
        argv += ["--demo_out", str(demo_out)]
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--out {out} exists and is not empty" in proc.stderr
    assert os.listdir(out) == ["results.json"] and (out / "results.json").read_text() == '{"finished": true}'


def test_sweep_has_the_learning_rate_lever_and_refuses_an_unknown_one(tmp_path, capsys):
    from dataclasses import replace

    from demo import sweep
    from demo.run import DemoSettings

    lrs = {sweep.LEVERS[name]["settings"]["actor_lr"] for name in ("lr_1.3e-4", "lr_4e-5")}
    assert lrs == {1.3e-4, 4e-5} and all(lr < DemoSettings().actor_lr for lr in lrs)
    cfg = replace(DemoSettings(), **sweep.LEVERS["lr_4e-5"]["settings"]).ppo_config()
    assert cfg.actor_lr == 4e-5 and cfg.kl_coef == DemoSettings().kl_coef  # one lever at a time
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--demo_out", str(tmp_path), "--out", str(tmp_path / "s"), "--levers", "lr_4e-5,lr_1e-9"])
    assert exit_info.value.code == 2 and "--levers: unknown lever 'lr_1e-9'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
