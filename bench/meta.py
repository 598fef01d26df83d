"""Writes OUT/meta.json for bench/report.py: what was measured, on what.

usage: python meta.py OUT_DIR COMMAND_LINE FLOWRUN_BIN [MANIFEST]
(run with the bench venv's python, so the Python package versions are the measured ones)
"""
import datetime
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


def main():
    out, command, flowrun_bin = sys.argv[1], sys.argv[2], sys.argv[3]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    manifest = sys.argv[4] if len(sys.argv) > 4 else ""
    # The flowrun that was measured: this checkout, unless the binary was
    # built from another manifest or given prebuilt.
    src = os.path.dirname(os.path.abspath(manifest)) if manifest else None
    versions = {p: version(p) for p in ("prefect", "prefect-dask", "dask", "distributed", "psutil")}
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rev = sh("git", "-C", root, "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", root, "status", "--porcelain", "--untracked-files=no")
    if src is None:
        built = f"prebuilt binary {flowrun_bin} (checkout at {rev})"
    elif src == root:
        built = f"{rev}{' (with uncommitted changes)' if dirty else ''}"
    else:
        built = f"built from {manifest} (this checkout is at {rev})"
    env = {k: os.environ[k] for k in sorted(os.environ) if k.startswith("BENCH_")}
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "rustc": sh("rustc", "-V"),
        "flowrun_rev": rev + (" (with uncommitted changes)" if dirty else ""),
        "flowrun_built": built,
        "flowrun_bin": flowrun_bin,
        "versions": versions,
        "settings": env,
        "os": f"{platform.system()} {platform.machine()}",
    }
    meta["header"] = header(meta)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def header(meta):
    v = meta["versions"]
    env = meta["settings"]
    command = meta["command"]
    return "\n".join([
        f"Measured {meta['date']} with `{command}`" + (f" ({', '.join(f'{k}={x}' for k, x in env.items())})"
                                                      if env else ""),
        "",
        f"- machine: {meta['cores']} cores, {meta['mem_gib']} GiB RAM, {meta.get('os', 'Linux')}",
        f"- flowrun {meta['flowrun_built']}, release build, {meta['rustc']}; `FLOWRUN_LOG=off`",
        f"- Prefect {v['prefect']}, prefect-dask {v['prefect-dask']}, dask {v['dask']}, "
        f"distributed {v['distributed']}, Python {meta['python']} (venv target/bench-venv)",
        "- every run is a fresh process; wall = process start to exit, measured outside; "
        "peak tree RSS = peak of the summed RSS of the whole process tree (workers, servers), sampled every 50 ms",
        "- 'in flow: submit→all results' is timed inside the program, from the first submit to the last result; "
        "per task = that / number of tasks",
        "- Dask runners use the default shape on this machine: a temporary LocalCluster of 2 worker processes "
        "x 1 thread (flowrun and Dask pick it the same way from the core count)",
        "- Prefect runs with its default `ephemeral` profile and a fresh PREFECT_HOME (its SQLite DB created by "
        "an untimed warm-up run): **every Prefect flow call starts a temporary API server (about 3–4 s), and "
        "with prefect-dask every worker process starts its own**, so Prefect's wall and flow times include "
        "those server starts. prefect-dask also creates its cluster lazily at the first submit, so its "
        "'in flow' time includes the cluster start. raw Dask's `LocalCluster()` returns once its workers "
        "are up, before the first submit. flowrun's DaskTaskRunner starts its cluster when the flow starts "
        "without waiting for the worker processes: the first tasks wait for the first worker to join "
        "(a few ms), which is inside flowrun's 'in flow' time and dominates it at 1,000 tasks",
        "",
    ])


if __name__ == "__main__":
    main()
