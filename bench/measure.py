"""Run one command and measure it: wall time, and peak RSS of its whole
process tree (the summed RSS of every process in it, sampled every ~50 ms).

Used by bench/run.py for every workload of every system (flowrun's bench
binary and the Python scripts alike), so the figures are taken the same way.
Adapted from shared/baselines/prefect/scripts/measure.py (which sampled
every 100 ms). Samples come every 10 ms during the first 0.5 s, then every
50 ms; the command's exit is noticed at once (pidfd), so short runs get an
exact wall time. When /usr/bin/time exists, the command runs under it and its
max RSS (largest single process) is the floor of the tree figure, for runs
too short for the sampler.

The tree is the command's descendants found through their parents at each
sample, plus every process seen before that is still alive (so a process
that was orphaned to PID 1, such as a Prefect worker's temporary API server,
is still counted). When the command exits, processes of its tree that are
still alive are given a short grace period, then reported as leftovers and
stopped by PID (only processes this run started: PID + start time checked).

CLI: python measure.py [--timeout S] [--log FILE] -- cmd ...  (prints a JSON record)
"""
import json
import os
import re
import select
import subprocess
import sys
import time

import psutil

SAMPLE_S = 0.05
TIME_BIN = "/usr/bin/time"
LEFTOVER_GRACE_S = 3.0

BENCH_RE = re.compile(r"^BENCH (\{.*\})\s*$")
# A `#n` line may run into the next log line's timestamp when two processes
# write at once ("#023:15:42.119 | INFO ..."): the number stops before it.
SHOUT_RE = re.compile(r"#(\d+?)(?=\d\d:\d\d:\d\d|\D|$)")


def _key(p):
    try:
        return (p.pid, p.create_time())
    except psutil.Error:
        return None


def _alive(known):
    """The processes of `known` (pid -> create_time) that are still the same processes."""
    out = []
    for pid, ct in list(known.items()):
        try:
            p = psutil.Process(pid)
            if p.create_time() == ct and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
            else:
                del known[pid]
        except psutil.Error:
            del known[pid]
    return out


def run(cmd, log_path, env=None, timeout=None, cwd=None):
    """Runs `cmd` with stdout+stderr to `log_path`; returns a dict of measurements."""
    known = {}  # pid -> create_time of every process seen in the tree
    peak_rss = 0
    peak_nproc = 0
    samples = 0
    timed_out = False
    single_max_kb = 0
    # /usr/bin/time (a small C program) forks the command and reports its
    # max RSS (the largest single process of the tree that it reaped). It is
    # a floor for the tree peak when a run is too short for the sampler.
    # (The kernel's max RSS of a process forked from this Python process
    # would start at this process's size, hence the small middleman.)
    time_file = log_path + ".maxrss"
    use_time = os.access(TIME_BIN, os.X_OK)
    if use_time:
        cmd = [TIME_BIN, "-f", "%M", "-o", time_file] + list(cmd)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL)
        # Readable when the command exits: lets the sampler sleep without
        # adding up to one sampling interval to the wall time.
        pidfd = os.pidfd_open(proc.pid)
        try:
            root = psutil.Process(proc.pid)
            if not use_time:
                known[root.pid] = root.create_time()
        except psutil.Error:
            root = None
        while True:
            elapsed = time.perf_counter() - t0
            if timeout is not None and elapsed > timeout:
                timed_out = True
                break
            procs = {}
            if root is not None:
                try:
                    for p in ([] if use_time else [root]) + root.children(recursive=True):
                        k = _key(p)
                        if k is not None:
                            known.setdefault(k[0], k[1])
                            procs[p.pid] = p
                except psutil.Error:
                    pass
            for p in _alive(known):
                procs.setdefault(p.pid, p)
            total = 0
            for p in procs.values():
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            samples += 1
            peak_rss = max(peak_rss, total)
            peak_nproc = max(peak_nproc, len(procs))
            # Denser samples while the command is young, so short runs are seen.
            interval = SAMPLE_S if elapsed > 0.5 else 0.01
            if select.select([pidfd], [], [], interval)[0]:
                break
        if timed_out:
            for p in _alive(known):
                try:
                    p.kill()
                except psutil.Error:
                    pass
        rc = proc.wait()
        wall = time.perf_counter() - t0
        os.close(pidfd)
        if use_time:
            try:
                single_max_kb = int(open(time_file).read().split()[-1])
                os.unlink(time_file)
            except (OSError, ValueError, IndexError):
                pass

    # Whatever of the tree outlives the command: wait a little, then stop it.
    known.pop(proc.pid, None)
    deadline = time.perf_counter() + LEFTOVER_GRACE_S
    left = _alive(known)
    while left and time.perf_counter() < deadline:
        time.sleep(0.1)
        left = _alive(known)
    leftovers = []
    for p in left:
        try:
            leftovers.append(f"{p.pid}:{' '.join(p.cmdline())[:120]}")
            p.kill()
        except psutil.Error:
            pass

    text = open(log_path, "rb").read().decode("utf-8", "replace")
    bench = None
    for line in text.splitlines():
        m = BENCH_RE.match(line)
        if m:
            bench = json.loads(m.group(1))
    shouts = sorted({int(x) for x in SHOUT_RE.findall(
        "\n".join(l for l in text.splitlines() if not l.startswith("BENCH ")))})
    return {
        "rc": rc,
        "timed_out": timed_out,
        "wall_s": wall,
        "peak_tree_rss_mb": max(peak_rss / 2**20, single_max_kb / 1024),
        "sampled_tree_rss_mb": peak_rss / 2**20,
        "max_single_rss_mb": single_max_kb / 1024,
        "peak_nproc": peak_nproc,
        "samples": samples,
        "leftovers": leftovers,
        "shouts": shouts,
        "log_lines": text.count("\n"),
        "bench": bench,
    }


def main():
    args = sys.argv[1:]
    timeout = None
    log = "/dev/null"
    while args and args[0] != "--":
        if args[0] == "--timeout":
            timeout = float(args[1])
            args = args[2:]
        elif args[0] == "--log":
            log = args[1]
            args = args[2:]
        else:
            sys.exit(__doc__)
    if not args or len(args) < 2:
        sys.exit(__doc__)
    print(json.dumps(run(args[1:], log, env=os.environ.copy(), timeout=timeout)))


if __name__ == "__main__":
    main()
