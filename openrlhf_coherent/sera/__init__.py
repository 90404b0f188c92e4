"""SeRA (Self-Reviewing and Alignment, Algorithm 1) on OpenRLHF's DPO trainer.

rounds.py (per-round files, finished markers, resume), selection.py (eq. 7 round reward models,
global top-k, the round's training rows), loop.py (the rounds); entry point cli/sera.py.
"""
