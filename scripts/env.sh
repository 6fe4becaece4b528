# Source this file: it creates (once) the project's virtualenv and activates it with this checkout's
# code.
#
# The virtualenv holds the pinned dependencies only. It lives outside the checkout, keyed by a hash of
# the pinned requirements, so clean clones and CI runs reuse it and a change of pins builds a fresh one:
#   ${CATLIP_CACHE:-~/.cache/catlip-engine}/venv-<hash>      (or $CATLIP_VENV)
# The checkout is never installed into it (every clone shares it): this script puts the checkout first
# on PYTHONPATH and its bin/ (the `catlip` command) first on PATH, replacing another checkout's that an
# earlier `source` put there, so `catlip`, `python -m engine.train` and the workers torchrun or the
# deepspeed launcher start (they inherit PYTHONPATH) all run this checkout's code.
# NLTK data goes to ~/nltk_data (NLTK's default search path), built once by `catlip setup-nltk`.
#
# The caller's shell options are left as they were: the build runs in a subshell under
# `set -euo pipefail`, and a failure returns 1 (an interactive shell stays open). Scripts that want
# those options set them themselves (scripts/run_tests.sh, scripts/run_main.sh).
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
  # A venv built when env.sh still installed the checkout holds one clone, editable: taken out, so
  # that no clone's code is found there.
  if compgen -G "$venv/lib/python*/site-packages/catlip_engine-*.dist-info" >/dev/null; then
    flock "$(dirname "$venv")/.lock-$(basename "$venv")" \
      "$venv/bin/python" -m pip uninstall -q -y catlip-engine >&2 || exit 1
  fi
  echo "$venv"
)
if [ -z "$VENV" ] || [ ! -f "$VENV/bin/activate" ]; then
  echo "[catlip] setting up the virtualenv failed (above); nothing was activated" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
_catlip_without() {  # _catlip_without LIST ITEM: the :-separated LIST less every ITEM
  local out="" part parts
  IFS=: read -r -a parts <<<"$1"
  for part in "${parts[@]}"; do [ "$part" = "$2" ] || out=${out:+$out:}$part; done
  printf '%s' "$out"
}
if [ -n "${CATLIP_CHECKOUT:-}" ]; then  # an earlier `source` of this or another checkout's env.sh
  PYTHONPATH=$(_catlip_without "${PYTHONPATH:-}" "$CATLIP_CHECKOUT")
  PATH=$(_catlip_without "$PATH" "$CATLIP_CHECKOUT/bin")
fi
unset -f _catlip_without
export CATLIP_CHECKOUT=$CATLIP_ROOT
export PYTHONPATH=$CATLIP_ROOT${PYTHONPATH:+:$PYTHONPATH}
export PATH=$CATLIP_ROOT/bin:$PATH
cd "$CATLIP_ROOT" || return 1 2>/dev/null || exit 1
