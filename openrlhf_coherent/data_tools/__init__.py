"""Offline tools built on the coherent / implicit reward: score, filter, select and bootstrap preference pairs.

rows.py (input -> token ids), scoring via ../scoring.py, actor.py (Ray actor with two models),
runner.py (Ray + dispatch), pipeline.py (resumable scoring loop), output.py, common.py (CLI pieces).
"""
