#!/usr/bin/env bash
# Make sure a Python venv with Dask `distributed` and numpy exists for the
# data benchmark (benches/data.rs), and print the path of its python.
#
# Usage: bench/data-venv.sh [VERSION]
#   VERSION defaults to $FLOWRUN_DASK_VERSION, then to 2026.8.0 (as
#   scripts/dask-venv.sh). The venv lives in <workspace>/target/data-venv/<VERSION>/.
#   Installs once from PyPI; a marker file says it is complete, a lock file
#   serialises concurrent installs.
set -euo pipefail

version="${1:-${FLOWRUN_DASK_VERSION:-2026.8.0}}"
if [[ ! "$version" =~ ^[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)$ ]]; then
  echo "data-venv.sh: not a version: '$version'" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="$root/target/data-venv"
venv="$base/$version"
marker="$venv/.flowrun-data-ready"
python="${PYTHON:-python3}"

mkdir -p "$base"

ready() { [[ -f "$marker" && -x "$venv/bin/python" ]]; }

if ! ready; then
  exec 9>"$base/.lock-$version"
  flock 9
  if ! ready; then
    log="$base/install-$version.log"
    rm -rf "$venv"
    if ! {
      "$python" -m venv "$venv" &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
          "distributed==$version" "dask==$version" numpy
    } >"$log" 2>&1; then
      echo "data-venv.sh: could not install distributed==$version, dask==$version and numpy into $venv; log follows:" >&2
      tail -n 30 "$log" >&2
      rm -rf "$venv"
      exit 1
    fi
    echo "$version" >"$marker"
  fi
fi

echo "$venv/bin/python"
