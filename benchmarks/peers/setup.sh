#!/usr/bin/env bash
# Create the peers' benchmark environment, kept apart from budgetguard's own
# dependencies: LiteLLM, tokencost, LangChain (get_openai_callback lives in
# langchain-community), limits, OpenLLMetry's openai instrumentation and the
# OpenTelemetry SDK it reports to. budgetguard itself is installed from this
# checkout so one interpreter runs everything side by side.
#
#   bash benchmarks/peers/setup.sh [VENV]      (default /tmp/peers-venv)
#   VENV/bin/python benchmarks/peers/run_all.py            (everything, one table;
#                                                          limits runs in VENV-limits)
#   VENV/bin/python benchmarks/peers/compare.py            (LiteLLM and tokencost only)
set -euo pipefail
venv="${1:-/tmp/peers-venv}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# LiteLLM stays pinned to one reviewed release: 1.107.0 was a compromised
# release (withdrawn), so this environment never floats onto a LiteLLM it has
# not been run with. Everything else takes lower bounds: the versions run
# with are printed by run_all.py and kept in benchmarks/results/side_by_side.json.
"$venv/bin/pip" install --quiet \
    "litellm==1.110.2" \
    "tokencost>=0.1.26" \
    "openai>=1.40" \
    "langchain-openai>=0.3" \
    "langchain-community>=0.3" \
    "redis>=8.0" \
    "opentelemetry-sdk>=1.24" \
    "opentelemetry-instrumentation-openai>=0.62" \
    "wrapt>=1.16"
"$venv/bin/pip" install --quiet -e "$root[redis,tokens]"
# limits caps redis-py below 8 (limits[redis] 5.x: redis<8), and budgetguard's
# Redis ledger fails on redis-py 7.4 (it calls read_response(timeout=), which
# redis-py 8 has), hence redis>=8.0 above, whatever budgetguard-llm[redis] says:
# limits gets an environment of its own, with the redis-py it declares, and
# run_all.py drives it there against the same redis-server.
python3 -m venv "$venv-limits"
"$venv-limits/bin/pip" install --quiet --upgrade pip
"$venv-limits/bin/pip" install --quiet "limits[redis]>=4.0"
echo "peers venv ready: $venv"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
names = (
    "budgetguard-llm", "litellm", "tokencost", "openai", "langchain-openai",
    "langchain-community", "redis", "opentelemetry-sdk",
    "opentelemetry-instrumentation-openai",
)
for name in names:
    print(f"  {name} {m.version(name)}")
PY
echo "limits venv ready: $venv-limits"
"$venv-limits/bin/python" - <<'PY'
import importlib.metadata as m
for name in ("limits", "redis"):
    print(f"  {name} {m.version(name)}")
PY
