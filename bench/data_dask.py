"""The raw Dask side of benches/data.rs: one workload per invocation.

usage: python data_dask.py chain|fanin

On `LocalCluster(n_workers=2, threads_per_worker=1)` with a `Client`:
  chain  one task makes a 256 MiB uint8 array, 7 tasks in a row each add 1
         to it (8 tasks passing 256 MiB), then a task sums it;
  fanin  64 tasks each make a 16 MiB array, one task sums all 64.
The client never fetches an array, only the sums. Prints one line
`BENCH {json}`: work_s (first submit to result), call_s (cluster start to
close), peak_mb (this client process's peak RSS above its RSS when the work
starts: VmHWM after `echo 5 > /proc/self/clear_refs`) and the check value.
"""
import json
import sys
import time

from distributed import Client, LocalCluster, wait  # noqa: F401

import numpy as np

MIB = 1 << 20


def make(n, fill):
    return np.full(n, fill, dtype=np.uint8)


def step(x):
    return x + np.uint8(1)


def total(x):
    return int(x.sum(dtype=np.uint64))


def total_all(xs):
    return sum(int(x.sum(dtype=np.uint64)) for x in xs)


def kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise KeyError(field)


def main():
    workload = sys.argv[1]
    t_call = time.time()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    client.wait_for_workers(2)
    # Warm-up, as the flowrun side does: both sides start timing with workers up.
    client.submit(total, np.zeros(1, dtype=np.uint8)).result()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start_kb = kb("VmRSS:")
    t0 = time.time()
    if workload == "chain":
        x = client.submit(make, 256 * MIB, 1, pure=False)
        for _ in range(7):
            x = client.submit(step, x, pure=False)
        check = client.submit(total, x, pure=False).result()
        expected = 256 * MIB * 8
    elif workload == "fanin":
        xs = [client.submit(make, 16 * MIB, i, pure=False) for i in range(64)]
        check = client.submit(total_all, xs, pure=False).result()
        expected = 16 * MIB * sum(range(64))
    else:
        sys.exit(f"unknown workload {workload}")
    t1 = time.time()
    peak_kb = kb("VmHWM:") - start_kb
    client.close()
    cluster.close()
    rec = {"system": "raw-dask", "workload": workload, "work_s": t1 - t0,
           "call_s": time.time() - t_call, "peak_mb": peak_kb / 1024,
           "ok": check == expected}
    print("BENCH " + json.dumps(rec), flush=True)
    if check != expected:
        sys.exit(f"wrong result {check} (expected {expected})")


if __name__ == "__main__":
    main()
