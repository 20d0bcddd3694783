#!/usr/bin/env bash
# Sets up and runs the whole test suite. Extra arguments go to pytest.
#   PYTHON=python3.13 DJANGO_VERSION=6.1.3 VENV=.venv-django6 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
. scripts/venv.sh "${PYTHON:-python3}" "$VENV" "${REQUIREMENTS:-requirements-dev.txt}"
"$VENV/bin/python" -m django --version | sed 's/^/==> Django /'
"$VENV/bin/python" --version | sed 's/^/==> /'
set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
