#!/usr/bin/env bash
# Create the peers' benchmark environment: LiteLLM and tokencost, kept apart
# from budgetguard's own dependencies. budgetguard itself is installed from
# this checkout so one interpreter runs all three side by side.
#
#   bash benchmarks/peers/setup.sh [VENV]      (default /tmp/peers-venv)
#   LITELLM_LOCAL_MODEL_COST_MAP=True VENV/bin/python benchmarks/peers/compare.py
set -euo pipefail
venv="${1:-/tmp/peers-venv}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# Pinned: the versions these results were taken with (LiteLLM 1.107.0 was a
# compromised release and is withdrawn; never float into it).
"$venv/bin/pip" install --quiet "litellm==1.110.2" "tokencost==0.1.26"
"$venv/bin/pip" install --quiet -e "$root"
echo "peers venv ready: $venv"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
for name in ("litellm", "tokencost", "budgetguard-llm"):
    print(f"  {name} {m.version(name)}")
PY
