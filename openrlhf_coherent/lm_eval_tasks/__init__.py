"""Benchmark evaluation of checkpoints with lm-evaluation-harness, as in the SRPPO paper (section 4).

tasks.py  which lm-eval tasks, with which few-shot counts ("paper" preset, `task:N` specs), checked
          against lm-eval's task registry before a model is loaded
table.py  lm-eval's results dict -> one table (markdown + JSON), with the paper's headline columns
The command is `python -m openrlhf_coherent.cli.evaluate` (docs/evaluation.md).
"""
