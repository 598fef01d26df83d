"""Runs one flowrun task attempt on a stock Dask worker.

Shipped with every task and compiled once per worker process (see
flowrun_dask::protocol::PythonRunner). The worker calls run() with the
task's key, the task program's argv, the stdin parts (dependencies already
replaced by their values) and params from the flow:
  topic  the event topic the flow listens on
  env    the environment variable that starts the program in task mode
  magic  the bytes (latin-1) that start a task-mode result
  quiet  seconds a task may run before it reports that it started

Events cost the scheduler about as much as a small task, so a task only
reports its start once it has run for `quiet` seconds (short tasks show as
started when they finish), and its output only if it printed something.
"""

import heapq
import itertools
import os
import subprocess
import threading
import time

LIMIT = 1 << 20


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except Exception:
        return None


def _publish(worker, topic, message):
    if worker is not None:
        try:
            worker.log_event(topic, message)
        except Exception:
            pass


class _Starts:
    """Reports the start of tasks still running after a while, from one
    thread per worker process (a timer thread per task would cost more
    than the report saves)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.heap = []
        self.live = set()
        self.ids = itertools.count()
        self.thread = None

    def watch(self, delay, report):
        with self.cond:
            n = next(self.ids)
            heapq.heappush(self.heap, (time.monotonic() + delay, n, report))
            self.live.add(n)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="flowrun-starts", daemon=True
                )
                self.thread.start()
            if self.heap[0][1] == n:
                self.cond.notify()
            return n

    def done(self, n):
        with self.cond:
            self.live.discard(n)

    def _run(self):
        while True:
            with self.cond:
                while True:
                    while self.heap and self.heap[0][1] not in self.live:
                        heapq.heappop(self.heap)
                    if not self.heap:
                        self.cond.wait()
                        continue
                    when, n, report = self.heap[0]
                    delay = when - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self.heap)
                        self.live.discard(n)
                        break
                    self.cond.wait(delay)
            report()


_starts = _Starts()


def _tail(data):
    return data if len(data) <= LIMIT else b"...\n" + data[-LIMIT:]


def run(key, argv, stdin, env, params):
    topic = params["topic"]
    worker = _worker()
    data = b"".join(len(part).to_bytes(8, "little") + part for part in stdin)
    env = dict(os.environ if env is None else env)
    env[params["env"]] = "1"
    watch = _starts.watch(
        float(params["quiet"]), lambda: _publish(worker, topic, {"k": key, "s": 1})
    )
    try:
        proc = subprocess.run(
            argv, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
    except OSError as e:
        raise RuntimeError(
            "cannot start the task program %s on this worker: %s"
            % (os.fsdecode(argv[0]), e.strerror or e)
        ) from None
    finally:
        _starts.done(watch)
    err = _tail(proc.stderr)
    if err:
        _publish(worker, topic, {"k": key, "o": err})
    out = proc.stdout
    start = out.find(params["magic"].encode("latin-1"))
    if proc.returncode == 0 and start >= 0:
        return out[start:] if start else out
    raise subprocess.CalledProcessError(proc.returncode, key, _tail(out), err)
