"""`make demo-real`: SRPPO on a real pretrained chat model (SmolLM2-135M-Instruct, from PyPI) on a CPU.

IFEval-style verifiable instructions graded by lm-eval's own IFEval checkers. See demo_real/run.py
and docs/real_model.md.
"""
