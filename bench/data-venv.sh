#!/usr/bin/env bash
# Make sure a Python venv with Dask `distributed` and numpy exists for the
# data benchmark (benches/data.rs), and print the path of its python.
#
# Usage: bench/data-venv.sh [VERSION]
#   VERSION as for flowrun-dask/scripts/dask-venv.sh, which does the install
#   (once; a marker and a lock file as there). The venv lives in
#   <workspace>/target/data-venv/<VERSION>/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FLOWRUN_DASK_VENV_DIR="$root/target/data-venv"
export FLOWRUN_DASK_VENV_EXTRA="numpy"
exec bash "$root/flowrun-dask/scripts/dask-venv.sh" "$@"
