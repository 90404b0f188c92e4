"""The SRPPO recipe: one config file -> SFT (stock OpenRLHF train_sft) -> PPO with the coherent
reward (openrlhf_coherent.cli.train_ppo_ray), plus the paper's baselines. Entry point:
`python -m openrlhf_coherent.cli.srppo --config FILE.yaml`."""
