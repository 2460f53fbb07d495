#!/usr/bin/env bash
# Run a command inside tune_prune's virtual environment, creating and filling
# .venv first when no virtual environment is active. Idempotent: the install is
# skipped while pyproject.toml and constraints.txt are unchanged.
#   ./run.sh python -m tune_prune.search
#   ./run.sh python -m pytest
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
stamp="$VIRTUAL_ENV/.tune_prune-install"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "run.sh: installing tune_prune and its dependencies into $VIRTUAL_ENV" >&2
  python -m pip install -q --upgrade pip
  python -m pip install -q -c constraints.txt "$(grep '^torch==' constraints.txt)"
  python -m pip install -q -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
if [ "$#" -eq 0 ]; then
  exit 0
fi
exec "$@"
