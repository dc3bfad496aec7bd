#!/usr/bin/env bash
# Set-up if needed (tools/setup_env.sh is idempotent), the linter (ruff), then the test suite on the CPU.
#   bash tools/test.sh            # everything
#   bash tools/test.sh -k matcher # pytest arguments pass through
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
# Lint first (rules: ruff.toml; a fraction of a second): unused names, import order, syntax warnings.
"$ROOT/.venv/bin/ruff" check . || { echo "[test] ruff found the problems above; most are fixed by" \
    "'.venv/bin/ruff check --fix .'" >&2; exit 1; }
# Generated data sets of the tests go to temporary folders; the shared BCCD copy is read-only input.
# A passed test's folder is deleted (the suite's checkpoints are several GB): only failures are kept to read.
exec "$ROOT/.venv/bin/python" -m pytest tests -q -p no:cacheprovider \
    -o tmp_path_retention_policy=failed -o tmp_path_retention_count=1 "$@"
