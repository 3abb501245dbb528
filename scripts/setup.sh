#!/usr/bin/env bash
# One idempotent setup step for development, tests and demos:
#   1. create the virtualenv .venv (CPython 3.11: the ROS 2 wheels are cp311) if missing;
#   2. pip-install requirements.txt + requirements-ros.txt when they changed (hash stamp in .venv);
#   3. point the ROS wheels' CMake files at this venv's Python/numpy headers (they ship with the
#      paths of the manylinux build image, /opt/python/cp311-cp311/...);
#   4. configure, build and install this ament_cmake package (messages, launchers, ament index)
#      with CMake into the venv as prefix, when its inputs changed (build dir: build/);
#   5. `pip install -e .` of the source tree (console scripts; pure-Python code stays live).
# A second run with nothing changed takes about a second.
#
# System requirements on a fresh Debian/Ubuntu machine (nothing else is needed, ROS included):
#   python3.11 with venv support and headers (Debian: python3.11 python3.11-venv python3.11-dev),
#   cmake >= 3.20, a C and C++ compiler and make (Debian: build-essential).
# Environment: PEBAL_PYTHON (interpreter used to create the venv, default python3.11),
#   PEBAL_VENV (venv location, default .venv), PEBAL_JOBS (parallel build jobs).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$HERE/env.sh"
ROOT="$PEBAL_ROOT"
BUILD="$ROOT/build"
STAMPS="$VENV/.pebal-stamps"
cd "$ROOT"

say() { printf 'setup: %s\n' "$*"; }
die() { trap - ERR; printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "unexpected failure (exit $?) at scripts/setup.sh line $LINENO: $BASH_COMMAND"' ERR
# run LOG CMD...: run quietly into LOG; on failure show the log's tail and stop with one message.
run_logged() {
  local log="$1"; shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 25 "$log" >&2 || true
    die "'$*' failed (full log: $log)"
  fi
}
hash_of() {  # hash_of FILE|DIR...: one sha256 over the contents (and names) of the files given
  local f
  for f in "$@"; do
    if [ -d "$f" ]; then
      find "$f" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
        | xargs -0 -r sha256sum
    elif [ -e "$f" ]; then
      sha256sum "$f"
    else
      echo "missing $f"
    fi
  done | sha256sum | cut -d' ' -f1
}
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS" && printf '%s\n' "$2" >"$STAMPS/$1"; }

command -v cmake >/dev/null || die "cmake not found (need cmake >= 3.20; Debian: apt-get install cmake)"
command -v c++ >/dev/null || command -v g++ >/dev/null \
  || die "no C++ compiler found (Debian: apt-get install build-essential)"

# Concurrent runs (parallel test sessions) wait for each other instead of racing venv, pip and
# cmake: the lock is held on this script itself, so no lock file is left behind.
if command -v flock >/dev/null; then
  exec 9<"$HERE/setup.sh"
  flock 9
fi

# --- 1. virtualenv ---------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  PY="${PEBAL_PYTHON:-python3.11}"
  if ! command -v "$PY" >/dev/null && [ -z "${PEBAL_PYTHON:-}" ] \
     && [ "$(python3 -c 'import sys; print(sys.version_info[:2] == (3, 11))' 2>/dev/null)" = True ]; then
    PY=python3
  fi
  command -v "$PY" >/dev/null || die "$PY not found: the ROS 2 wheels need CPython 3.11 (Debian: apt-get install python3.11 python3.11-venv python3.11-dev)"
  say "creating virtualenv $VENV ($("$PY" --version 2>&1))"
  "$PY" -m venv "$VENV" || die "'$PY -m venv $VENV' failed (Debian: apt-get install python3.11-venv)"
fi
PYV="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
  || die "$VENV/bin/python does not run; delete $VENV and re-run"
[ "$PYV" = "3.11" ] || die "$VENV uses Python $PYV, but the ROS 2 wheels need 3.11: delete $VENV and re-run with python3.11"

mkdir -p "$STAMPS" "$BUILD"

# --- 2. Python requirements ------------------------------------------------------------------------
req_hash="$(hash_of requirements.txt requirements-ros.txt)-$PYV"
if ! stamp_ok requirements "$req_hash"; then
  say "installing requirements.txt + requirements-ros.txt into $VENV (first time: several minutes)"
  run_logged "$BUILD/pip-requirements.log" \
    "$VENV/bin/python" -m pip install --disable-pip-version-check \
    -r requirements.txt -r requirements-ros.txt
  stamp_set requirements "$req_hash"
fi

# --- 3. ROS wheels' CMake files: /opt/python/cp311-cp311/... -> this venv -------------------------
mapfile -t bad_cmake < <(grep -lF /opt/python/cp311-cp311 "$VENV"/share/*/cmake/*.cmake 2>/dev/null || true)
if [ "${#bad_cmake[@]}" -gt 0 ]; then
  py_inc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_inc="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')" \
    || die "numpy is not importable in $VENV"
  [ -f "$py_inc/Python.h" ] || die "Python headers missing ($py_inc/Python.h; Debian: apt-get install python3.11-dev)"
  say "rewriting /opt/python/cp311-cp311 paths in ${#bad_cmake[@]} CMake files of the ROS wheels"
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g" "${bad_cmake[@]}"
  if grep -lF /opt/python/cp311-cp311 "${bad_cmake[@]}" >/dev/null; then
    die "unexpected /opt/python/cp311-cp311 paths left in: $(grep -lF /opt/python/cp311-cp311 "${bad_cmake[@]}" | tr '\n' ' ')"
  fi
fi

# --- 4. CMake build + install into the venv ------------------------------------------------------
cmake_args=(
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_INSTALL_PREFIX="$VENV"
  -DPython3_EXECUTABLE="$VENV/bin/python"
  -DPEBAL_INSTALL_PYTHON_SOURCES=OFF
  -DBUILD_TESTING=OFF
)
build_hash="$(hash_of CMakeLists.txt package.xml msg scripts/ros_entry_point.py.in \
  pebal_perception/__init__.py launch config)-$(printf '%s ' "${cmake_args[@]}" | sha256sum | cut -c1-16)"
if ! stamp_ok cmake "$build_hash" || [ ! -f "$BUILD/CMakeCache.txt" ] \
   || [ ! -f "$VENV/share/ament_index/resource_index/packages/pebal_perception" ]; then
  say "building messages + launchers with CMake (build/) and installing into $VENV"
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  run_logged "$BUILD/cmake-configure.log" cmake -S "$ROOT" -B "$BUILD" "${cmake_args[@]}"
  run_logged "$BUILD/cmake-build.log" cmake --build "$BUILD" -j "${PEBAL_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  run_logged "$BUILD/cmake-install.log" cmake --install "$BUILD"
  stamp_set cmake "$build_hash"
fi

# --- 5. editable install of the source tree (console scripts) -------------------------------------
# setup.py lists only the console scripts whose module exists, so the stamp includes the CLI files.
cli_files="$(find pebal_perception pebal_training -path '*/cli/*.py' 2>/dev/null | LC_ALL=C sort || true)"
pip_hash="$(hash_of setup.py pyproject.toml)-$(printf '%s' "$cli_files" | sha256sum | cut -c1-16)"
if ! stamp_ok editable "$pip_hash"; then
  say "pip install -e . (console scripts -> source tree)"
  run_logged "$BUILD/pip-editable.log" \
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  stamp_set editable "$pip_hash"
fi

# --- check: the generated messages and the live source tree import from outside the repository ----
check_log="$BUILD/import-check.log"
if ! (cd / && "$VENV/bin/python" - >"$check_log" 2>&1) <<EOF
import os, pebal_perception, pebal_perception.core, pebal_training
from pebal_perception.msg import AnomalyResult, Obstacle
src = os.path.realpath("$ROOT")
core = os.path.realpath(pebal_perception.core.__file__)
assert core.startswith(src + os.sep), "pebal_perception.core comes from %s, not the source tree" % core
EOF
then
  tail -n 15 "$check_log" >&2
  die "import check failed (pebal_perception.msg / source tree); full log: $check_log"
fi
say "ready: $VENV (ROS_DOMAIN_ID=$ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE)"
