#!/usr/bin/env bash
# The workspace's entry to flowrun-dask/scripts/dask-venv.sh (see there), with
# the venvs in the workspace's target/dask-venv, where the tests look.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FLOWRUN_DASK_VENV_DIR="${FLOWRUN_DASK_VENV_DIR:-$root/target/dask-venv}"
exec bash "$root/flowrun-dask/scripts/dask-venv.sh" "$@"
