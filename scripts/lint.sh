#!/usr/bin/env bash
# Lint and type-check all the Python code (runtime/, tests/, bench/, functions/), as configured in pyproject.toml.
#
#   scripts/lint.sh
#
# Runs `.venv/bin/ruff check` and `.venv/bin/mypy` from the repository root (no arguments: pyproject.toml says
# what they check; their caches live in .state). Takes seconds; scripts/test.sh runs it before any server starts.
# Exit status: 0 when both are clean, else 1, after naming the command that reproduces the findings.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$LAMBENT_ROOT"
failed=()
.venv/bin/ruff check --quiet || failed+=(".venv/bin/ruff check")
.venv/bin/mypy || failed+=(".venv/bin/mypy")
if (( ${#failed[@]} )); then
    for command in "${failed[@]}"; do
        log "error: $command found the problems above; run it from $LAMBENT_ROOT to see them again"
    done
    exit 1
fi
log "ruff and mypy: clean"
