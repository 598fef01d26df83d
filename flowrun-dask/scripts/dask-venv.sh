#!/usr/bin/env bash
# Make sure a Python venv with a pinned Dask `distributed` exists, and print
# the path of its python.
#
# Usage: scripts/dask-venv.sh [VERSION]
#   VERSION defaults to $FLOWRUN_DASK_VERSION, then to 2026.8.0.
#   The venv lives in $FLOWRUN_DASK_VENV_DIR/<VERSION>/ (the tests set it to
#   <target dir>/dask-venv; default: target/dask-venv next to this crate).
#   $PYTHON picks the interpreter that creates the venv (default: python3).
#   $FLOWRUN_DASK_VENV_EXTRA lists more packages to install next to Dask
#   (space-separated pip requirements, e.g. "numpy"); the marker records
#   them, so a venv without them is installed again.
#
# This script ships inside the flowrun-dask crate, so a user of the package
# can install the Dask version the bridge is tested against; the workspace's
# scripts/dask-venv.sh calls it.
#
# The integration tests of flowrun-dask call this script, so a fresh machine
# installs Dask on first use. Running it again is cheap: a finished venv is
# recognised by a marker file and left alone. Several callers may run it at
# once (tests run in parallel): a lock file serialises the installs.
set -euo pipefail

version="${1:-${FLOWRUN_DASK_VERSION:-2026.8.0}}"
if [[ ! "$version" =~ ^[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)$ ]]; then
  echo "dask-venv.sh: not a version: '$version'" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${FLOWRUN_DASK_VENV_DIR:-$root/target/dask-venv}"
venv="$base/$version"
marker="$venv/.flowrun-dask-ready"
python="${PYTHON:-python3}"
read -r -a extra <<<"${FLOWRUN_DASK_VENV_EXTRA:-}"
want="$version${extra[*]:+ ${extra[*]}}"

mkdir -p "$base"

ready() { [[ -f "$marker" && -x "$venv/bin/python" && -x "$venv/bin/dask" && "$(cat "$marker")" == "$want" ]]; }

if ! ready; then
  exec 9>"$base/.lock-$version"
  flock 9
  # Another caller may have finished the install while this one waited.
  if ! ready; then
    log="$base/install-$version.log"
    # A venv without the marker is the remains of an interrupted install:
    # start over rather than trust it.
    rm -rf "$venv"
    if ! {
      "$python" -m venv "$venv" &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
          "distributed==$version" "dask==$version" "${extra[@]}"
    } >"$log" 2>&1; then
      echo "dask-venv.sh: could not install distributed==$version and dask==$version${extra[*]:+ with ${extra[*]}} into $venv" >&2
      echo "dask-venv.sh: (needs '$python' with the venv module, and access to PyPI); log follows:" >&2
      tail -n 30 "$log" >&2
      rm -rf "$venv"
      exit 1
    fi
    echo "$want" >"$marker"
  fi
fi

echo "$venv/bin/python"
