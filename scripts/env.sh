# Source this file: it creates (once) and activates the project's virtualenv.
#
# The virtualenv lives outside the checkout, keyed by a hash of the pinned requirements, so clean
# clones and CI runs reuse it and a change of pins builds a fresh one:
#   ${CATLIP_CACHE:-~/.cache/catlip-engine}/venv-<hash>
# NLTK data goes to ~/nltk_data (NLTK's default search path), built once by `catlip setup-nltk`.
#
# The caller's shell options are left as they were: the build runs in a subshell, every step
# checked, and a failure returns 1 (an interactive shell stays open). Scripts that want
# `set -euo pipefail` set it themselves (scripts/run_tests.sh, scripts/run_main.sh).
CATLIP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CATLIP_CACHE=${CATLIP_CACHE:-$HOME/.cache/catlip-engine}
PY=${CATLIP_PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=$(
  set -o pipefail  # in this subshell only; every step is checked (errexit is off in `source env.sh && ...`)
  pyver=$("$PY" -c 'import sys; print(sys.version)') || exit 1
  hash=$({ cat "$CATLIP_ROOT"/requirements*.txt "$CATLIP_ROOT/constraints.txt"; echo "$pyver"; } \
    | sha256sum | cut -c1-12) || exit 1
  venv=${CATLIP_VENV:-$CATLIP_CACHE/venv-$hash}
  # shellcheck source=scripts/venv.sh
  source "$CATLIP_ROOT/scripts/venv.sh"
  install_project_pins() {
    pip_quiet "$1" -m pip install -q --upgrade "pip>=24" "setuptools>=77" wheel \
      && pip_quiet "$1" -m pip install -q -r "$CATLIP_ROOT/requirements.txt" -c "$CATLIP_ROOT/constraints.txt" \
      && pip_quiet "$1" -m pip install -q --no-deps -r "$CATLIP_ROOT/requirements-nodeps.txt"
  }
  catlip_venv "$PY" "$venv" "pinned requirements; a few minutes, once" install_project_pins >&2 || exit 1
  echo "$venv"
)
if [ -z "$VENV" ] || [ ! -f "$VENV/bin/activate" ]; then
  echo "[catlip] setting up the virtualenv failed (above); nothing was activated" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
# The checkout itself, editable (no dependency resolution: they are pinned above). ~2 s.
pip_log=$(python -m pip install -q --no-deps --no-build-isolation -e "$CATLIP_ROOT" 2>&1) \
  || { echo "$pip_log" >&2; echo "[catlip] installing the checkout failed" >&2; return 1 2>/dev/null || exit 1; }
cd "$CATLIP_ROOT" || return 1 2>/dev/null || exit 1
