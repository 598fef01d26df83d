"""The raw Dask side of bench/compare: one workload per invocation.

usage: python raw_dask.py WORKLOAD [N]
  WORKLOAD: noop | count_to | fanout | startup

Default `LocalCluster()` (on 2 cores: 2 worker processes x 1 thread) and a
`Client`; the "flow call" is cluster start + work + close. Prints one line
`BENCH {json}` (same keys as the flowrun and Prefect workloads). Adapted from
shared/baselines/prefect/raw_dask.py.
"""
import json
import sys
import time

T0 = time.time()
from distributed import Client, LocalCluster, wait  # noqa: E402


def inc(x):
    return x + 1


def shout(number):
    time.sleep(0.5)
    print(f"#{number}", flush=True)


def total(values):
    return sum(values)


def main():
    workload = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else {"count_to": 10, "startup": 1}.get(workload, 1000)
    t_call = time.time()
    cluster = LocalCluster()
    client = Client(cluster)
    t_up = time.time()
    extra = {"cluster_start_s": t_up - t_call,
             "workers": len(client.scheduler_info()["workers"])}
    if workload == "noop":
        futs = client.map(inc, range(n))
        t1 = time.time()
        check = sum(client.gather(futs))
        expected = n * (n + 1) // 2
    elif workload == "count_to":
        futs = [client.submit(shout, i, pure=False) for i in range(n)]
        t1 = time.time()
        wait(futs)
        client.gather(futs)
        check, expected = len(futs), n
    elif workload == "fanout":
        futs = client.map(inc, range(n))
        tot = client.submit(total, futs)
        t1 = time.time()
        check = tot.result()
        expected = n * (n + 1) // 2
    elif workload == "startup":
        t1 = time.time()
        check = client.submit(inc, 41).result()
        expected = 42
    else:
        sys.exit(f"unknown workload {workload}")
    t2 = time.time()
    client.close()
    cluster.close()
    t_ret = time.time()
    if workload == "startup":
        extra.update(first_result_s=t2 - t_call, teardown_s=t_ret - t2)
    rec = {"system": "raw-dask", "workload": workload, "n": n, "ok": check == expected,
           "setup_s": t_call - T0, "flow_call_s": t_ret - t_call, "submit_s": t1 - t_up,
           "gather_s": t2 - t1, "work_s": t2 - t_up, **extra}
    print("BENCH " + json.dumps(rec), flush=True)
    if check != expected:
        sys.exit(f"wrong result {check} (expected {expected})")


if __name__ == "__main__":
    main()
