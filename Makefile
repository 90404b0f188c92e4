# Newcomer commands (each installs what it needs into .venv first):
#   make demo   the embedded CPU demo: SRPPO end to end on a laptop CPU
#   make test   the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv bench-venv bench test demo demo-quick clean

venv:
	bash scripts/install_cpu.sh

bench-venv: venv
	$(PY) -m pip install --quiet -r requirements/bench.txt

bench: bench-venv
	$(PY) -m benchmarks.reward_overhead --repeats 2 --steps 4
	$(PY) -m benchmarks.scoring_throughput
	$(PY) -m benchmarks.vs_trl
	$(PY) -m benchmarks.memory_8b

test: venv
	$(PY) -m pytest -q --durations=30 tests

demo: venv
	$(PY) -m demo.run --out demo_out

demo-quick: venv
	$(PY) -m demo.run --out demo_out_quick --quick

clean:
	rm -rf demo_out demo_out_quick .pytest_cache
