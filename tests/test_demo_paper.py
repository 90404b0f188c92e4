"""`demo.paper` (`make demo-paper`): the settings are chosen on the validation split and the test
prompts are read only afterwards; `--quick` runs every phase through the real stack."""

import json
import os

import pytest

import demo.paper as paper
import demo.run as main_demo
from demo.world import make_world


def test_sealed_world_refuses_the_test_prompts_until_unsealed():
    world = make_world(0)
    sealed = paper.SealedWorld(world)
    for name in ("eval_in", "eval_out", "eval_prompts"):
        with pytest.raises(paper.TestPromptsSealed, match=f"world.{name}"):
            getattr(sealed, name)
    # what selection needs passes through unchanged
    assert sealed.val_in == world.val_in and sealed.val_out == world.val_out
    assert sealed.demos == world.demos and sealed.ppo_prompts == world.ppo_prompts and sealed.corpus == world.corpus
    assert sealed.unseal() is world and sealed.unseal().eval_in == world.eval_in


def _row(acc, **setting):
    return {"setting": setting, "val": {"accuracy": acc}}


def test_choose_takes_the_best_validation_accuracy_and_breaks_ties_conservatively():
    grid = [_row(0.5, lr=4e-4, kl=0.2), _row(0.6, lr=1e-4, kl=0.2), _row(0.6, lr=4e-5, kl=0.2), _row(0.6, lr=4e-5, kl=0.5)]
    assert paper.choose(grid)["setting"] == {"lr": 4e-5, "kl": 0.5}  # smallest lr, then the larger KL
    assert paper.choose(grid[:2])["setting"] == {"lr": 1e-4, "kl": 0.2}
    assert paper.choose([_row(0.4, epochs=8), _row(0.4, epochs=4), _row(0.3, epochs=6)])["setting"] == {"epochs": 4}


def test_full_protocol_is_the_issues_grid_and_the_papers_ppo():
    s = paper.PaperSettings()
    assert len(s.lrs) >= 3 and max(s.lrs) == 4e-4 and max(s.lrs) / min(s.lrs) >= 10
    assert set(s.kls) == {0.2, 0.5} and s.episodes == 2
    cfg = s.ppo_config(4e-4, 0.2, "/sft")
    flags = dict(zip(cfg.extra[::2], cfg.extra[1::2]))
    assert cfg.estimator == "gae" and cfg.max_samples == 256 and cfg.rollout_batch_size == 16
    assert flags["--algo.advantage.gamma"] == "1.0" and flags["--algo.advantage.lambd"] == "0.95"
    assert flags["--critic.model_name_or_path"] == "/sft" and flags["--train.num_episodes"] == "2"
    # the paper's warm-up, 35 of ~125 buffers, scaled: 9 of 32, the actor trains from global step 9 (0-based)
    assert s.ppo_steps == 32 and s.warmup_buffers == 9 and flags["--critic.freezing_steps"] == "8"
    # 8 updates per rollout buffer, as the paper's 1024 / 128
    assert cfg.rollout_batch_size * cfg.n_samples_per_prompt // cfg.train_batch_size == 8


def test_quick_run_reads_the_test_prompts_only_after_the_choice(tmp_path, monkeypatch):
    """Every evaluation and the reward check of a real `--quick` run is watched: before
    selection.json exists only the validation prompts are evaluated; the test prompts only after."""
    out = tmp_path / "paper"
    world = make_world(0)
    split_of = {tuple(s.text for s in world.eval_in): "test", tuple(s.text for s in world.val_in): "val"}
    calls = []

    def watch(kind, fn):
        def watched(*args, **kwargs):
            specs_in = args[1] if kind == "evaluate" else args[2].eval_in
            calls.append((kind, split_of.get(tuple(s.text for s in specs_in), "other"), (out / "selection.json").exists()))
            return fn(*args, **kwargs)

        return watched

    # heldout_curve evaluates through demo.run's name, the rest through demo.paper's
    monkeypatch.setattr(paper, "evaluate", watch("evaluate", paper.evaluate))
    monkeypatch.setattr(main_demo, "evaluate", watch("evaluate", main_demo.evaluate))
    monkeypatch.setattr(paper, "check_rewards", watch("reward check", paper.check_rewards))
    results = paper.main(["--out", str(out), "--quick"])

    assert all(split in ("val", "test") for _, split, _ in calls), calls  # the base is evaluated on test
    before = [c for c in calls if not c[2]]
    after = [c for c in calls if c[2]]
    assert before and all(split == "val" for _, split, _ in before), before
    assert after and all(split == "test" for _, split, _ in after), after
    assert ("reward check", "test", True) in after
    assert calls.index(after[0]) == len(before)  # no validation evaluation after the choice

    # outputs: the grid, the choice, the table, strict JSON, the curves
    selection = json.loads((out / "selection.json").read_text())["selection"]
    for method in paper.QUICK_METHODS:
        grid = selection[method]["grid"]
        assert [r["setting"] for r in grid] == [{"lr": lr, "kl": 0.2} for lr in paper.QUICK.lrs]
        assert selection[method]["selected"] in [r["setting"] for r in grid]
        assert results["per_seed"][method][0]["accuracy"] is not None
    assert len(selection[paper.SFT_EXTENDED]["grid"]) == len(paper.QUICK.sft_extended_epochs)
    saved = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert saved["selection"] == selection
    assert set(saved["summary"]) == {"base", "SFT", paper.SFT_EXTENDED, *paper.QUICK_METHODS}
    assert set(saved["relative_to_oracle"]) == {paper.SFT_EXTENDED, *paper.QUICK_METHODS}
    table = (out / "results.md").read_text()
    assert "Selection grid" in table and "fraction of oracle" in table and "Reward-ranking check" in table
    assert (out / "training_curves.png").stat().st_size > 10_000
    # the critic warm-up really froze the actor: step 1 trains the critic only, step 2 both
    for method in paper.QUICK_METHODS:
        steps = saved["curves"][f"{method}_seed0"]["steps"]
        assert [s["step"] for s in steps] == [1, 2]
        assert "critic_loss" in steps[0] and "policy_loss" not in steps[0], steps[0]
        assert "critic_loss" in steps[1] and "policy_loss" in steps[1], steps[1]


def test_demo_paper_refuses_bad_flags_before_any_work(tmp_path, capsys):
    for argv, message in (
        (["--seeds", "0"], "--seeds 0: at least 1"),
        (["--seeds", "2", "--selection_seed", "2"], "--selection_seed 2: must be one of"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            paper.main(["--out", str(tmp_path / "p"), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "p").exists()
