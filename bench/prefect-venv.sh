#!/usr/bin/env bash
# Make sure the benchmark's Python venv exists (Prefect 3.9.1 + prefect-dask
# 0.3.7, which pull in dask and distributed) and print the path of its python.
#
# The venv lives in <workspace>/target/bench-venv/. A finished venv is
# recognised by a marker file and left alone; a lock file serialises
# concurrent installs; an interrupted install (no marker) is started over.
# $PYTHON picks the interpreter that creates the venv (default: python3).
set -euo pipefail

PREFECT_VERSION="3.9.1"
PREFECT_DASK_VERSION="0.3.7"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="$root/target"
venv="$base/bench-venv"
marker="$venv/.flowrun-bench-ready"
python="${PYTHON:-python3}"
want="prefect==$PREFECT_VERSION prefect-dask==$PREFECT_DASK_VERSION"

mkdir -p "$base"

ready() { [[ -f "$marker" && -x "$venv/bin/python" && "$(cat "$marker")" == "$want" ]]; }

if ! ready; then
  exec 9>"$base/.bench-venv.lock"
  flock 9
  if ! ready; then
    log="$base/bench-venv-install.log"
    echo "bench: creating $venv with $want (one time, about 30 s) ..." >&2
    rm -rf "$venv"
    # shellcheck disable=SC2086
    if ! {
      "$python" -m venv "$venv" &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want psutil
    } >"$log" 2>&1; then
      echo "bench: could not install $want into $venv (needs '$python' with venv, and PyPI); log follows:" >&2
      tail -n 30 "$log" >&2
      rm -rf "$venv"
      exit 1
    fi
    echo "$want" >"$marker"
  fi
fi

echo "$venv/bin/python"
