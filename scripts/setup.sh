#!/usr/bin/env bash
# Idempotent environment setup for the plugin, the backend and the test suite.
#
#  1. QGIS (qgis + python3-qgis) and xvfb (the X server of the desktop smoke test)
#     from Debian's packages, when /usr/bin/python3 cannot import qgis.core or
#     qgis_process.bin or Xvfb is missing.
#  2. .venv from /usr/bin/python3 with --system-site-packages (so PyQGIS and
#     GDAL's bindings, which Debian compiles for that Python, are visible).
#  3. The backend (editable) and the pinned runtime + test tools.
#
# A second run finds everything in place and changes nothing: pip only runs when
# requirements.txt, backend/pyproject.toml or the interpreter changed (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
STAMP=$VENV/.changeclip-setup-stamp
SYS_PY=/usr/bin/python3

log() { printf '[setup] %s\n' "$*" >&2; }
# pip, with its harmless "Location ... is ignored" lines (local package indexes) hidden;
# on failure the whole log is shown and setup stops.
pip_install() {
  local plog; plog=$(mktemp)
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$plog" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$plog" >&2 || true
    rm -f "$plog"; log "ERROR: pip install $* failed (see above)"; exit 1
  fi
  rm -f "$plog"
}

need_qgis=0
"$SYS_PY" -c "import qgis.core" >/dev/null 2>&1 || need_qgis=1
[ -x /usr/bin/qgis_process.bin ] || [ -x /usr/bin/qgis_process ] || need_qgis=1
"$SYS_PY" -c "import ensurepip" >/dev/null 2>&1 || need_qgis=1   # python3-venv
[ -x /usr/bin/Xvfb ] || need_qgis=1                                # xvfb: the desktop smoke test
if [ "$need_qgis" = 1 ]; then
  log "installing QGIS from Debian packages (qgis, python3-qgis, python3-venv, xvfb)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "ERROR: QGIS is missing and this user is not root; run 'sudo apt-get install qgis python3-qgis python3-venv xvfb' first"; exit 1; }
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends qgis python3-qgis python3-venv xvfb
fi

sys_ver=$("$SYS_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$VENV/bin/python" ]; then
  venv_ver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
  if [ "$venv_ver" != "$sys_ver" ]; then
    log "rebuilding .venv: it was made for Python $venv_ver, /usr/bin/python3 is $sys_ver"
    rm -rf "$VENV"
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating .venv from $SYS_PY ($sys_ver) with system site packages"
  "$SYS_PY" -m venv --system-site-packages "$VENV"
fi

site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pth="$site/qgis_processing.pth"
want=/usr/share/qgis/python/plugins
if [ ! -f "$pth" ] || [ "$(cat "$pth")" != "$want" ]; then
  echo "$want" > "$pth"
fi

# numpy must stay the system's own copy: Debian's GDAL and QGIS bindings are compiled
# against it (1.x on Debian 12, 2.x on Debian 13); a pip numpy in the venv would break them.
sys_numpy=$("$SYS_PY" -c 'import numpy; print(numpy.__version__)')
constraints=$VENV/system-constraints.txt
if [ ! -f "$constraints" ] || [ "$(cat "$constraints")" != "numpy==$sys_numpy" ]; then
  echo "numpy==$sys_numpy" > "$constraints"
fi

want_stamp=$(cat requirements.txt backend/pyproject.toml "$constraints" | sha256sum | cut -d' ' -f1)-$sys_ver
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want_stamp" ]; then
  log "installing pinned Python packages into .venv (first time: a few minutes)"
  pip_install -r requirements.txt -c "$constraints"
  pip_install --no-deps -e backend
  echo "$want_stamp" > "$STAMP"
fi

HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen "$VENV/bin/python" - <<'PY'
import numpy, torch, open_clip, osgeo.gdal_array, changeclip  # noqa: F401
import qgis.core  # noqa: F401
assert numpy.__file__.startswith("/usr/lib/python3/"), f"numpy {numpy.__file__} is not the system's: GDAL would break"
PY
log "ok: .venv ready (python $sys_ver); backend command: .venv/bin/changeclip"
