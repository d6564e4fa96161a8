#!/usr/bin/env bash
# Create .venv in the repository root (with python3.11+) if it is missing, and
# install the project editable with its test extras whenever pyproject.toml is
# newer than the stamp file .venv/.installed. A second run is a no-op.
# Progress goes to stderr.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$LAMBENT_ROOT"
VENV="$LAMBENT_ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.installed"

venv_ok() {
    [[ -x "$VPY" ]] &&
        "$VPY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

if ! venv_ok; then
    PYTHON="$(find_python)"
    if [[ -e "$VENV" ]]; then
        # Broken (e.g. its interpreter was removed) or too old: rebuild in place.
        log "existing .venv is unusable; recreating it with $PYTHON ($("$PYTHON" -V 2>&1))"
        "$PYTHON" -m venv --clear "$VENV"
    else
        log "creating .venv with $PYTHON ($("$PYTHON" -V 2>&1))"
        "$PYTHON" -m venv "$VENV"
    fi
    rm -f "$STAMP"
fi

if [[ ! -f "$STAMP" || pyproject.toml -nt "$STAMP" ]]; then
    log "installing lambent (editable) with [test] extras into .venv"
    # Stamp with the time the install *started*, so an edit to pyproject.toml
    # made while pip runs still triggers a reinstall next time.
    touch "$STAMP.new"
    if ! "$VPY" -m pip install -q --disable-pip-version-check -e '.[test]' >&2; then
        rm -f "$STAMP.new"
        die "pip install -e '.[test]' failed"
    fi
    mv -f "$STAMP.new" "$STAMP"
    log "done"
else
    log ".venv is up to date"
fi
