"""The embedded SRPPO demo: a synthetic list-following world and its non-PPO stages.

world.py        prompts, demonstrations, splits, pretraining corpus and the exact checker
pretrain.py     word-level tokenizer + tiny Llama "pretrained" from scratch on the corpus (base)
sft.py          stage 1: OpenRLHF's own train_sft on the demonstrations (CPU dev mode)
evaluate.py     greedy held-out accuracy (in-domain / out-of-domain) with the checker
reward_check.py does the coherent reward rank correct responses above wrong ones? (--audit: the
                general reward audit, with audit_perturbations.py as its user perturbation file)
ppo.py          stage 2: PPO through this package's entry point (SRPPO, or the checker reward)
run.py          the demo driver (`make demo`); sweep.py the paper's levers (`make demo-sweep`)
hacking.py      the reward-hacking reproduction and guard ablation
mix_row.py      the checker plus the coherent reward against the checker alone
"""
