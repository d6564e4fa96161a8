#!/usr/bin/env bash
# Put `lambent` where a shell finds it: a two-line launcher that runs this checkout's .venv/bin/lambent,
# written to $LAMBENT_BIN_DIR, else /usr/local/bin as root, else ~/.local/bin. `make up` and `make venv`
# run it after scripts/venv.sh.
#
#   scripts/link-cli.sh
#
# A `lambent` there that this script did not write is left alone (and said so); one it wrote for another
# checkout is replaced. Progress goes to stderr.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MARK="# lambent launcher written by scripts/link-cli.sh"
CLI="$LAMBENT_ROOT/.venv/bin/lambent"
[[ -x "$CLI" ]] || die "$CLI is missing: run scripts/venv.sh (or make venv) first"

if [[ -n "${LAMBENT_BIN_DIR:-}" ]]; then
    BIN_DIR="$LAMBENT_BIN_DIR"
elif [[ "$(id -u)" -eq 0 ]]; then
    BIN_DIR=/usr/local/bin
else
    BIN_DIR="$HOME/.local/bin"
fi
TARGET="$BIN_DIR/lambent"
LAUNCHER="#!/usr/bin/env bash
$MARK for $LAMBENT_ROOT
exec $(printf '%q' "$CLI") \"\$@\""

if [[ -e "$TARGET" || -L "$TARGET" ]]; then
    if ! grep -qF "$MARK" "$TARGET" 2>/dev/null; then
        log "$TARGET exists and is not Lambent's launcher: left as it is; run $CLI, or put" \
            "$LAMBENT_ROOT/.venv/bin first on PATH"
        exit 0
    fi
    if [[ "$(cat "$TARGET")" == "$LAUNCHER" ]]; then
        exit 0
    fi
    log "$TARGET ran another checkout's lambent ($(sed -n 2p "$TARGET" | sed "s|^$MARK for ||")); now this one's"
fi
mkdir -p "$BIN_DIR"
printf '%s\n' "$LAUNCHER" >"$TARGET.new"
chmod 755 "$TARGET.new"
mv -f "$TARGET.new" "$TARGET"
log "lambent is now $TARGET (it runs $CLI)"
case ":$PATH:" in
    *":$BIN_DIR:"*) ;;
    *) log "note: $BIN_DIR is not on your PATH: add it (export PATH=\"$BIN_DIR:\$PATH\"), or run $CLI" ;;
esac
