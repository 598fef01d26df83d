"""Runs the comparison plan of bench/compare: every workload in flowrun,
Prefect 3.9 + prefect-dask and raw Dask, one process per run, each under
bench/measure.py. Repeats are interleaved (rep 0 of every configuration,
then rep 1, ...; the order of systems alternates between reps). Appends one
JSON record per run to OUT/results.jsonl and keeps each run's console
output in OUT/logs/.

usage: python run.py --flowrun-bin PATH --out DIR [--python PATH] [--quick] [--no-prefect]
                     [--only WORKLOAD[,WORKLOAD]]
Settings from the environment (defaults in brackets):
  BENCH_SIZES                no-op overhead sizes                     [1000 10000 100000]
  BENCH_REPEATS              repeats of flowrun and raw Dask runs     [3]
  BENCH_RAW_DASK_BIG         raw Dask sizes >= this run once          [100000]
  BENCH_PREFECT_REPEATS      repeats of Prefect runs                  [1]
  BENCH_PREFECT_SIZES        no-op sizes Prefect runs (both runners)  [1000]
  BENCH_FANOUT               fan-out width                            [1000]
  BENCH_TIMEOUT              seconds before a run is killed           [600]
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import measure  # noqa: E402

SYSTEMS = ["flowrun-dask", "flowrun-thread", "prefect-dask", "prefect-thread", "raw-dask"]


def sizes(var, default):
    return [int(x) for x in os.environ.get(var, default).replace(",", " ").split()]


def plan(args):
    """[(workload, n, system, reps)], in display order."""
    quick = args.quick
    reps = 1 if quick else int(os.environ.get("BENCH_REPEATS", "3"))
    preps = int(os.environ.get("BENCH_PREFECT_REPEATS", "1"))
    noop_sizes = [100, 1000] if quick else sizes("BENCH_SIZES", "1000 10000 100000")
    prefect_sizes = [100] if quick else sizes("BENCH_PREFECT_SIZES", "1000")
    big = int(os.environ.get("BENCH_RAW_DASK_BIG", "100000"))
    fan = 100 if quick else int(os.environ.get("BENCH_FANOUT", "1000"))
    prefect = not args.no_prefect
    out = []
    # Cheap before expensive, so a broken harness shows early.
    out.append(("startup", 1, "flowrun-dask", reps))
    out.append(("startup", 1, "raw-dask", reps))
    if prefect:
        out.append(("startup", 1, "prefect-dask", preps))
    for n in noop_sizes:
        out.append(("noop", n, "flowrun-dask", reps))
        out.append(("noop", n, "flowrun-thread", reps))
        out.append(("noop", n, "raw-dask", 1 if n >= big else reps))
        if prefect and n in prefect_sizes:
            out.append(("noop", n, "prefect-dask", preps))
            out.append(("noop", n, "prefect-thread", preps))
    for system in ["flowrun-dask", "flowrun-thread", "raw-dask"]:
        out.append(("count_to", 10, system, reps))
    if prefect:
        out.append(("count_to", 10, "prefect-dask", preps))
        out.append(("count_to", 10, "prefect-thread", preps))
    for system in ["flowrun-dask", "flowrun-thread", "raw-dask"]:
        out.append(("fanout", fan, system, reps))
    if prefect:
        out.append(("fanout", fan, "prefect-dask", preps))
        out.append(("fanout", fan, "prefect-thread", preps))
    if args.only:
        keep = set(args.only.split(","))
        out = [p for p in out if p[0] in keep]
    return out


def command(args, workload, n, system):
    wl = os.path.join(HERE, "workloads")
    if system.startswith("flowrun-"):
        return [args.flowrun_bin, f"{workload}-{system.split('-')[1]}", str(n)]
    if system.startswith("prefect-"):
        return [args.python, os.path.join(wl, "prefect_flows.py"), workload, system.split("-")[1], str(n)]
    return [args.python, os.path.join(wl, "raw_dask.py"), workload, str(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flowrun-bin", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-prefect", action="store_true")
    ap.add_argument("--only")
    args = ap.parse_args()

    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    results = os.path.join(args.out, "results.jsonl")
    timeout = float(os.environ.get("BENCH_TIMEOUT", "600"))
    env = os.environ.copy()
    env["FLOWRUN_LOG"] = "off"
    env["PYTHONUNBUFFERED"] = "1"
    prefect_home = os.path.join(args.out, "prefect-home")
    env["PREFECT_HOME"] = prefect_home

    the_plan = plan(args)
    with open(os.path.join(args.out, "plan.json"), "w") as f:
        json.dump([{"workload": w, "n": n, "system": s, "reps": r} for w, n, s, r in the_plan], f)
    total_runs = sum(r for *_, r in the_plan)
    started = time.time()
    done = 0

    def go(workload, n, system, rep, note=""):
        nonlocal done
        cmd = command(args, workload, n, system)
        log = os.path.join(args.out, "logs", f"{workload}-{n}-{system}-r{rep}.log")
        print(f"[{time.time() - started:6.0f}s] {done + 1:>3}/{total_runs} {workload:<8} n={n:<6} "
              f"{system:<14} rep {rep} ...", end="", flush=True)
        load_before = os.getloadavg()[0]
        m = measure.run(cmd, log, env=env, timeout=timeout)
        done += 1
        # The 1-minute load average after the run, minus the run's own share, is
        # a rough sign of other work on the machine while it ran.
        rec = {"workload": workload, "n": n, "system": system, "rep": rep, "cmd": cmd, "log": log,
               "load_before": load_before, "load_after": os.getloadavg()[0], **m}
        b = m["bench"] or {}
        ok = m["rc"] == 0 and not m["timed_out"] and b.get("ok") is True
        if workload == "count_to":
            ok = ok and m["shouts"] == list(range(n))
        rec["ok"] = ok
        status = "ok" if ok else ("TIMEOUT" if m["timed_out"] else f"FAILED rc={m['rc']}")
        extra = f" {len(m['leftovers'])} leftover process(es) stopped" if m["leftovers"] else ""
        print(f" {status} wall {m['wall_s']:.2f}s peak tree RSS {m['peak_tree_rss_mb']:.0f} MB "
              f"(load {rec['load_before']:.1f}){extra}{note}",
              flush=True)
        if not ok:
            print("      last lines of " + log + ":", flush=True)
            for line in open(log, errors="replace").read().splitlines()[-8:]:
                print("      | " + line[:200], flush=True)
        with open(results, "a") as f:
            f.write(json.dumps(rec) + "\n")

    # Prefect's first run in a fresh PREFECT_HOME creates and migrates its
    # SQLite DB (several seconds); do that once, untimed.
    if any(s.startswith("prefect-") for _, _, s, _ in the_plan):
        print(f"[{time.time() - started:6.0f}s] Prefect warm-up (creates the DB in {prefect_home}, not timed) ...",
              end="", flush=True)
        m = measure.run([args.python, os.path.join(HERE, "workloads", "prefect_flows.py"), "warmup", "thread"],
                        os.path.join(args.out, "logs", "prefect-warmup.log"), env=env, timeout=timeout)
        print(f" rc={m['rc']} {m['wall_s']:.1f}s", flush=True)

    max_reps = max((r for *_, r in the_plan), default=0)
    for rep in range(max_reps):
        for workload in ["startup", "noop", "count_to", "fanout"]:
            groups = {}
            for w, n, s, r in the_plan:
                if w == workload and rep < r:
                    groups.setdefault(n, []).append(s)
            for n, systems in groups.items():
                order = sorted(systems, key=SYSTEMS.index)
                if rep % 2 == 1:
                    order.reverse()
                for s in order:
                    go(workload, n, s, rep)
    print(f"[{time.time() - started:6.0f}s] all {total_runs} runs done", flush=True)


if __name__ == "__main__":
    main()
