"""Formats the results of bench/run.py: one markdown table per workload, rows
= systems, medians over the ok runs, ratios against flowrun's DaskTaskRunner.

usage: python report.py OUT_DIR [--all-runs]
Reads OUT_DIR/results.jsonl, OUT_DIR/plan.json and OUT_DIR/meta.json (if any).
"""
import json
import os
import statistics
import sys

SYSTEMS = ["flowrun-dask", "flowrun-thread", "prefect-dask", "prefect-thread", "raw-dask"]
LABEL = {
    "flowrun-dask": "flowrun DaskTaskRunner",
    "flowrun-thread": "flowrun ThreadPoolTaskRunner",
    "prefect-dask": "prefect-dask DaskTaskRunner",
    "prefect-thread": "Prefect ThreadPoolTaskRunner",
    "raw-dask": "raw Dask",
}
RAW_API = {"noop": "`Client.map` + `gather`", "fanout": "`Client.map` + `submit(total, futures)`",
           "count_to": "`client.submit` + `wait`", "startup": "`LocalCluster()` + `submit` + close"}
BASE = "flowrun-dask"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def secs(v):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def per_task(v):
    if v is None:
        return "–"
    if v >= 1:
        return f"{v:.2f} s"
    if v >= 1e-3:
        v *= 1e3
        unit = "ms"
    else:
        v *= 1e6
        unit = "µs"
    return (f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}") + " " + unit


def ratio(v, base):
    if v is None or not base:
        return "–"
    r = v / base
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 10:
        return f"{r:.0f}×"
    return f"{r:.2f}×" if r < 1 else f"{r:.1f}×"


def mb(v, floor=False):
    return "–" if v is None else ("≥" if floor else "") + f"{v:,.0f}"


def load(out):
    recs = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
    plan = json.load(open(os.path.join(out, "plan.json")))
    meta_path = os.path.join(out, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    return recs, plan, meta


def summarize(recs, workload, n, system):
    runs = [r for r in recs if r["workload"] == workload and r["n"] == n and r["system"] == system]
    ok = [r for r in runs if r["ok"]]

    def m(f):
        return med([f(r) for r in ok])

    def b(key):
        return lambda r: (r["bench"] or {}).get(key)

    return {
        "runs": len(runs), "ok": len(ok), "failed": len(runs) - len(ok),
        "wall": m(lambda r: r["wall_s"]),
        "walls": [r["wall_s"] for r in ok],
        "rss": m(lambda r: r["peak_tree_rss_mb"]),
        "rss_floor": any(r.get("sampled_tree_rss_mb", 1e9) < r.get("max_single_rss_mb", 0) for r in ok),
        "nproc": m(lambda r: r["peak_nproc"]),
        "setup": m(b("setup_s")),
        "flow_call": m(b("flow_call_s")),
        "work": m(b("work_s")),
        "submit": m(b("submit_s")),
        "per_task": m(lambda r: r["bench"]["work_s"] / r["bench"]["n"]),
        "first": m(b("first_result_s")),
        "teardown": m(b("teardown_s")),
        "cluster_start": m(b("cluster_start_s")),
        "shouts": m(lambda r: len(r["shouts"])),
        "leftovers": sum(len(r["leftovers"]) for r in runs),
    }


def table(recs, plan, workload, n, prefect_planned):
    systems = [s for s in SYSTEMS if any(p["workload"] == workload and p["n"] == n and p["system"] == s
                                         for p in plan)]
    stats = {s: summarize(recs, workload, n, s) for s in systems}
    base = stats.get(BASE)
    lines = []
    if workload in ("noop", "fanout"):
        head = ["system", "runs", "wall s", "in flow: submit→all results s", "per task",
                "peak tree RSS MB", "procs", "per task vs flowrun-dask", "wall vs flowrun-dask"]
    elif workload == "count_to":
        head = ["system", "runs", "wall s", "flow call s", "submit→all done s", "`#n` lines",
                "peak tree RSS MB", "procs", "wall vs flowrun-dask"]
    else:
        head = ["system", "runs", "wall s", "import s", "flow start→first result s", "teardown s",
                "peak tree RSS MB", "procs", "wall vs flowrun-dask", "first result vs flowrun-dask"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    notes = []
    for s in systems:
        st = stats[s]
        name = LABEL[s] + (f" ({RAW_API[workload]})" if s == "raw-dask" else "")
        runs = f"{st['ok']}" + (f" (+{st['failed']} failed)" if st["failed"] else "")
        if st["ok"] == 0:
            lines.append(f"| {name} | {runs} | FAILED |" + " |" * (len(head) - 3))
            continue
        if st["leftovers"]:
            notes.append(f"{LABEL[s]}: {st['leftovers']} process(es) outlived the run and were stopped")
        if workload in ("noop", "fanout"):
            cells = [secs(st["wall"]), secs(st["work"]), per_task(st["per_task"]), mb(st["rss"], st["rss_floor"]),
                     ("≥" if st["rss_floor"] else "") + f"{st['nproc']:.0f}", ratio(st["per_task"], base and base["per_task"]),
                     ratio(st["wall"], base and base["wall"])]
        elif workload == "count_to":
            cells = [secs(st["wall"]), secs(st["flow_call"]), secs(st["work"]), f"{st['shouts']:.0f}/{n}",
                     mb(st["rss"], st["rss_floor"]), ("≥" if st["rss_floor"] else "") + f"{st['nproc']:.0f}", ratio(st["wall"], base and base["wall"])]
        else:
            cells = [secs(st["wall"]), secs(st["setup"]), secs(st["first"]), secs(st["teardown"]),
                     mb(st["rss"], st["rss_floor"]), ("≥" if st["rss_floor"] else "") + f"{st['nproc']:.0f}", ratio(st["wall"], base and base["wall"]),
                     ratio(st["first"], base and base["first"])]
        lines.append(f"| {name} | {runs} | " + " | ".join(cells) + " |")
    if prefect_planned:
        for s in ("prefect-dask", "prefect-thread"):
            if s not in systems:
                lines.append(f"| {LABEL[s]} | 0 | skipped: over the Prefect time budget (see notes) |"
                             + " |" * (len(head) - 3))
    return lines, notes


TITLES = {
    "startup": "Cluster start-up and teardown: a flow with one no-op task",
    "noop": "Per-task overhead: {n:,} no-op tasks, submit then gather",
    "count_to": "count_to({n}): {n} tasks sleeping 0.5 s, each printing `#n`",
    "fanout": "Fan-out/fan-in: {n:,} tasks into one reducer ({np1:,} tasks)",
}


def main():
    out = sys.argv[1]
    all_runs = "--all-runs" in sys.argv
    recs, plan, meta = load(out)
    prefect_planned = any(p["system"].startswith("prefect-") for p in plan)
    keys = []
    for p in plan:
        k = (p["workload"], p["n"])
        if k not in keys:
            keys.append(k)
    print()
    if meta:
        print(meta.get("header", ""))
    all_notes = []
    for workload, n in keys:
        print(f"### {TITLES[workload].format(n=n, np1=n + 1)}")
        print()
        lines, notes = table(recs, plan, workload, n,
                             prefect_planned and workload == "noop")
        print("\n".join(lines))
        print()
        all_notes += [f"{workload} n={n}: {x}" for x in notes]
    if all_notes:
        print("Leftover processes:")
        for x in all_notes:
            print(f"- {x}")
        print()
    reps = {}
    for p in plan:
        reps.setdefault(p["system"], set()).add(p["reps"])
    print("Notes:")
    print()
    print("- runs = ok runs whose median is shown; repeats were interleaved across systems (rep 0 of every "
          "configuration, then rep 1, ...). Repeats per system: "
          + "; ".join(f"{LABEL[s]} {'/'.join(str(r) for r in sorted(reps[s]))}" for s in SYSTEMS if s in reps)
          + " (raw Dask runs its largest no-op size once)")
    if prefect_planned:
        pn = sorted({p["n"] for p in plan if p["system"].startswith("prefect-") and p["workload"] == "noop"})
        skipped = sorted({p["n"] for p in plan if p["workload"] == "noop"} - set(pn))
        if skipped:
            est = "; ".join(f"{n:,} tasks about {n * 0.072 / 60:,.0f} min (prefect-dask) and "
                            f"{n * 0.0075 / 60:,.1f} min (ThreadPool)" for n in skipped)
            print(f"- Prefect runs the no-op workload only at {', '.join(f'{n:,}' for n in pn)} tasks. At the "
                  "per-task cost measured in shared/baselines/prefect (about 72 ms/task with prefect-dask, "
                  f"7.5 ms/task with the ThreadPool runner) the larger sizes would take {est}; they are skipped to "
                  "keep Prefect's part of the benchmark to about 5 minutes")
        spent = sum(r["wall_s"] for r in recs if r["system"].startswith("prefect-"))
        print(f"- the timed Prefect runs took {spent / 60:.1f} min in total (plus an untimed warm-up run)")
        print("- Prefect's count_to is the waited form (`wait(futures)`, shared/baselines/prefect/count_to_wait.py): "
              "without it prefect-dask cancels the running tasks at flow exit and prints nothing")
    print("- fan-out/fan-in: Prefect and raw Dask pass the list of " + ", ".join(sorted({f"{p['n']:,}" for p in plan if p["workload"] == "fanout"})) + " futures to the reducer (resolved by the "
          "runner); flowrun has no list-of-futures argument, so its flow gathers the values and submits the "
          "reducer with them (the examples/map_reduce.rs pattern)")
    loads = [r["load_before"] for r in recs if "load_before" in r]
    if loads:
        print(f"- machine load (1-min load average before each run, {os.cpu_count()} cores): median "
              f"{statistics.median(loads):.1f}, max {max(loads):.1f}. The benchmark itself accounts for up to about 2 (it decays over a "
              "minute); well above that, other work shared the cores and the figures are inflated, "
              "the long CPU-bound Python runs the most")
    print("- peak tree RSS marked ≥: the run was too short for the 50 ms sampler to see its whole tree; "
          "the figure is the max RSS of the largest single process (from /usr/bin/time), a lower bound; "
          "likewise procs")
    print("- flowrun's workers are the bench binary started again; Prefect's and Dask's are Python processes "
          "(Prefect's with their own API server each)")
    print()
    if all_runs:
        print("All runs (wall s, in order of the ok runs):")
        print()
        for workload, n in keys:
            for s in SYSTEMS:
                st = summarize(recs, workload, n, s)
                if st["runs"]:
                    print(f"- {workload} n={n} {s}: " + ", ".join(f"{w:.2f}" for w in st["walls"])
                          + (f" ({st['failed']} failed)" if st["failed"] else ""))
        print()


if __name__ == "__main__":
    main()
