"""Benchmarks (issue 6): not part of the test suite. Run from the repository root, e.g.
`python -m benchmarks.reward_overhead`; each prints a table and writes benchmarks/results/*.json."""
