# Source this file: it creates (once) and activates the project's virtualenv.
#
# The virtualenv lives outside the checkout, keyed by a hash of the pinned requirements, so clean
# clones and CI runs reuse it and a change of pins builds a fresh one:
#   ${CATLIP_CACHE:-~/.cache/catlip-engine}/venv-<hash>
# NLTK data goes to ~/nltk_data (NLTK's default search path), built once by `catlip setup-nltk`.
set -euo pipefail
CATLIP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CATLIP_CACHE=${CATLIP_CACHE:-$HOME/.cache/catlip-engine}
PY=${CATLIP_PYTHON:-$(command -v python3.11 || command -v python3)}
hash=$(cat "$CATLIP_ROOT"/requirements*.txt "$CATLIP_ROOT/constraints.txt" <("$PY" -c 'import sys; print(sys.version)') \
  | sha256sum | cut -c1-12)
VENV=${CATLIP_VENV:-$CATLIP_CACHE/venv-$hash}
pip_quiet() {  # pip, without the notices about this machine's local index folders
  "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
mkdir -p "$CATLIP_CACHE"
# One builder at a time: CI, clean clones and parallel shells share the cache, and a venv cannot be
# moved once built (its scripts hold absolute paths), so it is built in place under a lock.
exec 9>"$CATLIP_CACHE/.lock-venv-$hash"
flock 9
if [ ! -f "$VENV/.complete" ]; then
  echo "[catlip] creating $VENV (pinned requirements; a few minutes, once)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  pip_quiet "$VENV/bin/python" -m pip install -q --upgrade "pip>=24" "setuptools>=77" wheel
  pip_quiet "$VENV/bin/python" -m pip install -q -r "$CATLIP_ROOT/requirements.txt" -c "$CATLIP_ROOT/constraints.txt"
  pip_quiet "$VENV/bin/python" -m pip install -q --no-deps -r "$CATLIP_ROOT/requirements-nodeps.txt"
  touch "$VENV/.complete"
fi
flock -u 9
exec 9>&-
# shellcheck disable=SC1091
source "$VENV/bin/activate"
# The checkout itself, editable (no dependency resolution: they are pinned above). ~2 s.
pip_log=$(python -m pip install -q --no-deps --no-build-isolation -e "$CATLIP_ROOT" 2>&1) \
  || { echo "$pip_log" >&2; echo "[catlip] installing the checkout failed" >&2; exit 1; }
cd "$CATLIP_ROOT"
