"""The coherent PPO trainer's checkpoint states when `_actor` holds no finished checkpoint (a job
killed during its first save): OpenRLHF's loader returns {} and its fit() would raise KeyError on
every retry; the run must start at step 0 instead. The trainer class is used without Ray."""

from openrlhf_coherent import devmode


def test_actor_folder_without_a_finished_checkpoint_is_a_fresh_run(monkeypatch):
    devmode.install_import_stand_ins()
    from openrlhf.trainer.ppo_trainer import BasePPOTrainer

    from openrlhf_coherent.trainer import CoherentPPOTrainer

    trainer_class = CoherentPPOTrainer.__ray_actor_class__
    trainer = trainer_class.__new__(trainer_class)  # no models: only the checkpoint-state logic runs
    fresh = {"episode": 0, "global_step": 0, "total_consumed_prompts": 0, "data_loader_state_dict": {}}
    monkeypatch.setattr(BasePPOTrainer, "init_checkpoint_states", lambda self: {})
    assert trainer.init_checkpoint_states() == fresh
    monkeypatch.setattr(BasePPOTrainer, "init_checkpoint_states", lambda self: dict(fresh))
    assert trainer.init_checkpoint_states() == fresh
