"""SRPO (Self-Improving Robust Preference Optimization, Choi et al.) on OpenRLHF's DPO pieces.

loss.py: the sample losses (paper eq. 15, 16, 17); templates.py: the revision prompt R(x, y);
dataset.py: six sequences per preference pair; trainer.py: OpenRLHF's DPOTrainer with the SRPO
loss and reference log-probs computed once. Entry points: cli/train_srpo.py, cli/revise.py.
"""
