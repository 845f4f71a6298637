#!/usr/bin/env bash
# Run the whole test suite (unit, integration, and the slow tests on the two real models).
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: the set-up is broken (run scripts/setup.sh)" >&2
fi
exit "$status"
