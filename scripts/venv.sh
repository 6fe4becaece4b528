# Sourced by scripts/env*.sh: building a cached virtualenv once, in place, under a lock.
#
# Each environment lives outside the checkout (${CATLIP_CACHE:-~/.cache/catlip-engine}), named by a
# hash of its pins and interpreter that its script computes, so clean clones and CI reuse it and a
# change of pins builds a fresh one. CI, clean clones and parallel shells share the cache, and a
# venv cannot be moved once built (its scripts hold absolute paths), so it is built where it stays,
# one builder at a time (flock on .lock-<name> beside it), and marked complete only at the end.

pip_quiet() {  # pip, without the notices about this machine's local index folders
  "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}

# catlip_venv PYTHON VENV DESCRIPTION INSTALL: unless VENV/.complete exists, (re)create VENV with
# PYTHON and run `INSTALL VENV/bin/python` (a shell function that returns non-zero when a step
# fails). On a failure it returns 1 and leaves VENV incomplete, so the next try starts it afresh; the
# statuses are checked here, not left to `set -e`, which bash ignores in a `source x && ...` context.
catlip_venv() {
  local python=$1 venv=$2 what=$3 install=$4 lock status=0
  mkdir -p "$(dirname "$venv")" || return 1
  exec {lock}>"$(dirname "$venv")/.lock-$(basename "$venv")" || return 1
  flock "$lock"
  if [ ! -f "$venv/.complete" ]; then
    echo "[catlip] creating $venv ($what)"
    rm -rf "$venv"
    if "$python" -m venv "$venv" && "$install" "$venv/bin/python"; then
      touch "$venv/.complete"
    else
      echo "[catlip] building $venv failed; the next try starts it afresh" >&2
      status=1
    fi
  fi
  flock -u "$lock"
  exec {lock}>&-
  return "$status"
}
