"""The Prefect side of bench/compare: one workload per invocation.

usage: python prefect_flows.py WORKLOAD RUNNER [N]
  WORKLOAD: noop | count_to | fanout | startup | warmup
  RUNNER:   dask (prefect_dask.DaskTaskRunner(), default LocalCluster)
            thread (prefect.task_runners.ThreadPoolTaskRunner())

Prints one line `BENCH {json}` with the timings in seconds (same keys as the
flowrun and raw Dask workloads). Adapted from the reference scripts of
shared/baselines/prefect (bench_tasks.py, chain.py, count_to_wait.py).

Prefect runs with its default `ephemeral` profile: the flow call starts a
temporary API server (and, with Dask, every worker process starts its own),
so flow_call_s includes those server starts.
"""
import sys
import time

T0 = time.time()
from prefect import flow, task  # noqa: E402
from prefect.futures import wait  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

WORKLOAD = sys.argv[1]
RUNNER = sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else {"count_to": 10, "startup": 1, "warmup": 0}.get(WORKLOAD, 1000)

if RUNNER == "dask":
    from prefect_dask import DaskTaskRunner

    def make_runner():
        return DaskTaskRunner()
else:
    def make_runner():
        return ThreadPoolTaskRunner()


@task
def noop(x):
    return x + 1


@task
def shout(number):
    time.sleep(0.5)
    print(f"#{number}")


@task
def total(values):
    return sum(values)


def timed(submit, gather):
    """Times `submit()`, then `gather(what it submitted)`: (check, submit_s, gather_s)."""
    t0 = time.time()
    submitted = submit()
    t1 = time.time()
    check = gather(submitted)
    return check, t1 - t0, time.time() - t1


def results(futures):
    wait(futures)
    return [f.result() for f in futures]


@flow(task_runner=make_runner())
def noop_flow(n):
    return timed(lambda: [noop.submit(i) for i in range(n)], lambda futs: sum(results(futs)))


@flow(task_runner=make_runner())
def count_to(highest_number):
    # The waited form (shared/baselines/prefect/count_to_wait.py): without
    # wait(), DaskTaskRunner cancels the running tasks at flow exit.
    return timed(lambda: [shout.submit(number) for number in range(highest_number)],
                 lambda futures: len(results(futures)))


@flow(task_runner=make_runner())
def fanout_flow(n):
    # As chain.py: the reducer takes the list of futures; Prefect resolves them.
    return timed(lambda: total.submit([noop.submit(i) for i in range(n)]), lambda tot: tot.result())


@flow(task_runner=make_runner())
def startup_flow():
    r = noop.submit(41).result()
    return r, time.time()


@flow
def warmup_flow():
    return 0


def main():
    t_call = time.time()
    extra = {}
    if WORKLOAD == "noop":
        check, sub, wt = noop_flow(N)
        expected = N * (N + 1) // 2
    elif WORKLOAD == "count_to":
        check, sub, wt = count_to(N)
        expected = N
    elif WORKLOAD == "fanout":
        check, sub, wt = fanout_flow(N)
        expected = N * (N + 1) // 2
    elif WORKLOAD == "startup":
        check, at = startup_flow()
        sub, wt = 0.0, at - t_call
        expected = 42
        extra = {"first_result_s": at - t_call, "teardown_s": time.time() - at}
    elif WORKLOAD == "warmup":
        check = expected = warmup_flow()
        sub = wt = 0.0
    else:
        sys.exit(f"unknown workload {WORKLOAD}")
    t_ret = time.time()
    rec = {"system": f"prefect-{RUNNER}", "workload": WORKLOAD, "n": N, "ok": check == expected,
           "setup_s": t_call - T0, "flow_call_s": t_ret - t_call, "submit_s": sub, "gather_s": wt,
           "work_s": sub + wt, **extra}
    import json
    print("BENCH " + json.dumps(rec), flush=True)
    if check != expected:
        sys.exit(f"wrong result {check} (expected {expected})")


if __name__ == "__main__":
    main()
