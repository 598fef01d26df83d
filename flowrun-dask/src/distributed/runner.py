"""Runs one flowrun task attempt on a stock Dask worker.

Shipped with every task and compiled once per worker process (see
flowrun_dask::protocol::PythonRunner). The worker calls run() with the
task's key, the task program's argv, the stdin parts (dependencies already
replaced by their values) and params from the flow:
  topic  the event topic the flow listens on
  env    the environment variable that starts the program in task mode
  magic  the bytes (latin-1) that start a task-mode result
  scheduler_env, control_env
         the environment variables that tell the task its scheduler's
         address and the fd of the pipe on which it asks to secede
  quiet  seconds a task may run before it reports that it started

Events cost the scheduler about as much as a small task, so a task only
reports its start once it has run for `quiet` seconds (short tasks show as
started when they finish), and its output only if it printed something.
"""

import heapq
import itertools
import os
import select
import selectors
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


def _exchange(proc, data, control, on_secede):
    """Writes stdin, reads stdout and stderr, and watches the control pipe,
    all from this thread: secede() must be called from the task's own
    thread. Writes go in PIPE_BUF pieces, as subprocess.communicate does."""
    sel = selectors.DefaultSelector()
    out, err = [], []
    view, pos = memoryview(data), 0
    if data:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    sel.register(control, selectors.EVENT_READ, None)
    while sel.get_map():
        ready = sel.select(timeout=0.25)
        if not ready and proc.poll() is not None:
            # The task process has ended. What it wrote before it ended is
            # in the pipes now: read that, but do not wait for the end of
            # the pipes, which a process it left behind may hold open.
            ready = sel.select(timeout=0)
            if not ready:
                for key in list(sel.get_map().values()):
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                break
        for key, _ in ready:
            if key.fileobj is proc.stdin:
                try:
                    pos += os.write(key.fd, view[pos : pos + select.PIPE_BUF])
                except BrokenPipeError:
                    pos = len(data)
                if pos >= len(data):
                    sel.unregister(proc.stdin)
                    proc.stdin.close()
                continue
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                sel.unregister(key.fileobj)
                key.fileobj.close()
            elif key.data is None:
                on_secede()
            else:
                key.data.append(chunk)
    sel.close()
    proc.wait()
    return b"".join(out), b"".join(err)


def run(key, argv, stdin, env, params):
    topic = params["topic"]
    worker = _worker()
    data = b"".join(len(part).to_bytes(8, "little") + part for part in stdin)
    env = dict(os.environ if env is None else env)
    env[params["env"]] = "1"
    if worker is not None:
        env[params["scheduler_env"]] = worker.scheduler.address
    # The task asks on this pipe to give its thread back while it waits for
    # tasks it submitted itself (get_dask_client in the task).
    control_r, control_w = os.pipe()
    env[params["control_env"]] = str(control_w)
    seceded = []

    def on_secede():
        if worker is not None and not seceded:
            from distributed import secede

            secede()
            seceded.append(True)

    watch = _starts.watch(
        float(params["quiet"]), lambda: _publish(worker, topic, {"k": key, "s": 1})
    )
    try:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                pass_fds=(control_w,),
            )
        except BaseException as e:
            os.close(control_r)
            if not isinstance(e, OSError):
                raise
            raise RuntimeError(
                "cannot start the task program %s on this worker: %s"
                % (os.fsdecode(argv[0]), e.strerror or e)
            ) from None
        finally:
            os.close(control_w)
        with proc, open(control_r, "rb", buffering=0) as control:
            stdout, stderr = _exchange(proc, data, control, on_secede)
    finally:
        _starts.done(watch)
        if seceded:
            from distributed import rejoin

            rejoin()
    err = _tail(stderr)
    if err:
        _publish(worker, topic, {"k": key, "o": err})
    start = stdout.find(params["magic"].encode("latin-1"))
    if proc.returncode == 0 and start >= 0:
        return stdout[start:] if start else stdout
    raise subprocess.CalledProcessError(proc.returncode, key, _tail(stdout), err)
