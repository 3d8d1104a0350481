#!/usr/bin/env bash
# Run the whole check, as CI does (.ci/run execs this): set-up, import contracts, tests.
# Arguments go to pytest, e.g. `bash scripts/test.sh tests/engine -k window`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

export QT_QPA_PLATFORM=offscreen

echo "[test] ruff (lint)"
.venv/bin/ruff check .

echo "[test] lint-imports (layer contracts in pyproject.toml)"
.venv/bin/lint-imports

if command -v xvfb-run >/dev/null 2>&1; then
    echo "[test] pytest under xvfb-run"
    exec xvfb-run -a .venv/bin/python -m pytest "$@"
else
    {
        echo "################################################################################"
        echo "# WARNING: xvfb-run not found: running pytest WITHOUT a virtual X screen."
        echo "# Tests marked 'display' may fail. Run scripts/setup.sh as root to install xvfb."
        echo "################################################################################"
    } >&2
    exec .venv/bin/python -m pytest "$@"
fi
