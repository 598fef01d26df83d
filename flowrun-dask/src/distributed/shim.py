"""Runs one flowrun task attempt on a stock Dask worker.

Shipped with every task and compiled once per worker process (see
flowrun_dask::protocol::PythonShim). The worker calls run() with the
task's key, the task program's argv, the stdin parts (dependencies already
replaced by their values) and params from the flow:
  topic  the event topic the flow listens on
  env    the environment variable that starts the program in task mode
  magic  the bytes (latin-1) that start a task-mode result
  scheduler_env, control_env, tls_env
         the environment variables that tell the task its scheduler's
         address, the fd of the pipe on which it asks to secede, and
         (comma-separated) its worker's TLS CA, certificate and key
  quiet  seconds a task may run before it reports that it started

  session
         the flow run's session: its tasks are calls into long-lived task
         processes of the session (a pool per worker process, one process
         per task running at once); absent, every task starts a process
  serve_env
         the environment variable that makes a task process long-lived

Events cost the scheduler about as much as a small task, so a task only
reports its start once it has run for `quiet` seconds (short tasks show as
started when they finish), and its output only if it printed something.

A long-lived task process reads requests on stdin (u64 length, then the
input a one-task process reads) and answers each on stdout with messages
of one kind byte and a u64 length (after `magic` once, as a hello that
ends what the program printed before it became a task process):
b"s" (empty) asks to secede, b"o" is
the task's tagged output, then b"r" the result frame, b"R" the path of a
file holding it (large results), or b"f" the failure frame ends the call.
A large request is the length 2**64-1, a u64 count of parts and each part
as a kind byte, a u64 length and its payload: b"i" the part itself, b"f"
the path of a file in shared memory holding it (the task process deletes
it), b"p" the path of a result this worker holds in shared memory: a pipe
moves large data in small pieces, a process switch each, which on a busy
machine costs seconds per 100 MiB. A large result (b"R") stays in the
shared-memory file the task process wrote: the task's value is a read-only
memoryview of it (bytes-like, so Dask sizes, moves and spills it as any
bytes), and a task on this worker that takes it as input maps the same
memory: a value passing a chain is not copied between the worker and its
task processes. A held result goes as b"n", the name of the write that
made it, a NUL and its path: the task process that wrote it keeps its
last large result as a value for a while and takes it without a read. A
released result's file is not closed but kept (_Spares, bounded) and
offered to the next call before its request (length 2**64-2, then a u64
length and its path): the task process writes a large result over it and
answers b"U" with the write's name, since overwriting pages costs less
than faulting in fresh ones; freed files also take large inputs. A
task process offered none asks once its large result is ready (b"A",
empty): the shim answers on stdin with a u64 length and the path of a
file freed meanwhile (or nothing). The session's Plugin (a Dask WorkerPlugin the flow
registers, so workers that join later have it too) stops them when the
flow run ends; one that dies fails its running call and is replaced.
"""

import contextlib
import heapq
import itertools
import mmap
import os
import select
import selectors
import subprocess
import threading
import time
import weakref

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except Exception:  # only ever loaded on Dask workers; keep it importable
    WorkerPlugin = object

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


class _Died(Exception):
    """The task process ended (or broke its pipe) in the middle of a call."""


# Requests and results this large go through a file in _SHARED.
_LARGE = 1 << 20
# The request length that says "the input is in this file".
_IN_FILE = (1 << 64) - 1
# The request length that says "write a large result over this file".
_SPARE = (1 << 64) - 2
_SHARED = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
_names = itertools.count()


def _shared_path(what):
    import tempfile

    return os.path.join(
        _SHARED or tempfile.gettempdir(),
        "flowrun-%s-%d-%d" % (what, os.getpid(), next(_names)),
    )


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# The fd and name of each result held in shared memory, by the id of its
# mmap, while the value lives (a finalizer gives the fd to _spares).
_held = {}
_proc_fd = os.path.isdir("/proc/self/fd")

# Freed result files wait this long, and at most this many bytes of them,
# for a task process to write its next large result into.
_SPARE_MAX = 1 << 30
_SPARE_IDLE = 2.0


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


class _Spares:
    """Freed large result files of this worker (deleted, kept open), for
    the next large result: a task process overwrites one rather than
    faulting in fresh shared-memory pages, which cost as much as writing
    the value. A file comes here only once its value is gone, so nothing
    maps it any more (its mmap unmaps before the finalizer runs, and a
    task process that read it did so within a call that held the value);
    one is handed to one call at a time. Bounded as the local store's
    pool: at most _SPARE_MAX bytes, each closed after _SPARE_IDLE unused
    (a file offered to calls that did not use it keeps its age)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.files = []  # (fd, size, freed at), oldest first
        self.bytes = 0
        self.thread = None

    def put(self, fd, since=None):
        """Pools `fd`, freed at `since` (now, if not given)."""
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = -1
        if not _proc_fd or size < _LARGE or size > _SPARE_MAX:
            _close(fd)
            return
        drop = []
        if since is None:
            since = time.monotonic()
        with self.cond:
            at = len(self.files)
            while at > 0 and self.files[at - 1][2] > since:
                at -= 1
            self.files.insert(at, (fd, size, since))
            self.bytes += size
            while self.bytes > _SPARE_MAX:
                old, old_size, _ = self.files.pop(0)
                self.bytes -= old_size
                drop.append(old)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="flowrun-spares", daemon=True
                )
                self.thread.start()
            self.cond.notify()
        for old in drop:
            _close(old)

    def take(self):
        """(fd, freed at) of the most recently freed file (the caller owns
        the fd), or None."""
        with self.cond:
            if not self.files:
                return None
            fd, size, since = self.files.pop()
            self.bytes -= size
            return fd, since

    def _run(self):
        while True:
            drop = []
            with self.cond:
                if not self.files:
                    self.cond.wait()
                    continue
                now = time.monotonic()
                while self.files and now - self.files[0][2] >= _SPARE_IDLE:
                    fd, size, _ = self.files.pop(0)
                    self.bytes -= size
                    drop.append(fd)
                if not drop:
                    self.cond.wait(_SPARE_IDLE - (now - self.files[0][2]))
            for fd in drop:
                _close(fd)


_spares = _Spares()


def _let_go(ident, fd):
    _held.pop(ident, None)
    _spares.put(fd)


def _map_fd(fd, name):
    """A large result as a read-only view of the file (open at `fd`, which
    the value owns from here on) that a task process wrote, not a copy;
    `name` names that write, for the task process that keeps the value."""
    try:
        m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except BaseException:
        os.close(fd)
        raise
    ident = id(m)
    _held[ident] = (fd, name)
    weakref.finalize(m, _let_go, ident, fd)
    return memoryview(m)


def _map_result(path):
    """A large result in the file at `path`. The name goes at once (a
    worker that dies leaves nothing in shared memory); the fd stays open
    while the value lives, so that a task that takes the value opens the
    same memory."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    _unlink(path)
    return _map_fd(fd, os.fsencode(os.path.basename(path)))


def _held_entry(part):
    """(path, name): the path by which a task process opens `part`, when
    it is (all of) a result held in shared memory by this worker, and the
    name of the write that made it; else None."""
    if not _proc_fd or not isinstance(part, memoryview):
        return None
    m = part.obj
    if not isinstance(m, mmap.mmap) or part.nbytes != len(m):
        return None
    entry = _held.get(id(m))
    if entry is None:
        return None
    fd, name = entry
    return "/proc/%d/fd/%d" % (os.getpid(), fd), name


def _write_spare(fd, part):
    """Writes `part` over the spare file at `fd` (opened again for writing
    through /proc: the held fd is read-only) and cuts it to its length."""
    w = os.open("/proc/self/fd/%d" % fd, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        view, pos = memoryview(part).cast("B"), 0
        while pos < len(view):
            pos += os.pwrite(w, view[pos : pos + (1 << 30)], pos)
        os.ftruncate(w, len(view))
    finally:
        os.close(w)


class _Server:
    """One long-lived task process; one call at a time."""

    def __init__(self, argv, env, hello):
        self.hello = hello
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.fd = self.proc.stdout.fileno()
        # poll, not select: a busy worker's fds may pass FD_SETSIZE.
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)
        # Larger pipes: fewer process switches for mid-sized data.
        try:
            import fcntl

            for pipe in (self.proc.stdin, self.proc.stdout):
                fcntl.fcntl(pipe.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ
        except OSError:
            pass

    def _read(self, n):
        buf = bytearray(n)
        view, pos = memoryview(buf), 0
        while pos < n:
            ready = self.poller.poll(250)
            # A process that ended is not waited for on its pipe, which a
            # child it left behind may hold open.
            if not ready and self.proc.poll() is not None:
                ready = self.poller.poll(0)
                if not ready:
                    raise _Died()
            if ready:
                got = os.readv(self.fd, [view[pos:]])
                if not got:
                    raise _Died()
                pos += got
        return buf

    def _greeted(self):
        """Skips what the program printed before it became a task process
        (a test harness's banner), up to its hello."""
        seen = b""
        while self.hello is not None:
            seen = (seen + bytes(self._read(1)))[-len(self.hello) :]
            if seen == self.hello:
                self.hello = None

    def _send(self, stdin, spare, borrowed):
        """Writes the request: through the pipe, or, when large, part by
        part, large parts as files in shared memory whose paths go through
        the pipe (a pipe moves large data in small pieces, a process switch
        each). A result this worker holds in shared memory is not written
        again: its path and name go. `spare`, a freed result file, is
        offered first for the result; other freed files take large parts
        (their fds go to `borrowed`, back to _spares after the call)."""
        size = sum(8 + len(part) for part in stdin)
        write = self.proc.stdin.write
        if spare is not None:
            path = os.fsencode("/proc/%d/fd/%d" % (os.getpid(), spare))
            write(_SPARE.to_bytes(8, "little"))
            write(len(path).to_bytes(8, "little"))
            write(path)
        if size < _LARGE:
            write(size.to_bytes(8, "little"))
            for part in stdin:
                write(len(part).to_bytes(8, "little"))
                write(part)
            self.proc.stdin.flush()
            return
        made = []
        try:
            entries = []
            for part in stdin:
                if len(part) < _LARGE:
                    entries.append((b"i", part))
                    continue
                held = _held_entry(part)
                if held is not None:
                    path, name = held
                    entries.append((b"n", name + b"\0" + os.fsencode(path)))
                    continue
                taken = _spares.take()
                if taken is not None:
                    fd = taken[0]
                    try:
                        _write_spare(fd, part)
                    except OSError:
                        # Only a saving lost: a fresh file will do.
                        _close(fd)
                    else:
                        borrowed.append(fd)
                        path = "/proc/%d/fd/%d" % (os.getpid(), fd)
                        entries.append((b"p", os.fsencode(path)))
                        continue
                path = _shared_path("input")
                made.append(path)
                with open(path, "wb") as f:
                    f.write(part)
                entries.append((b"f", os.fsencode(path)))
            write(_IN_FILE.to_bytes(8, "little"))
            write(len(entries).to_bytes(8, "little"))
            for kind, payload in entries:
                write(kind)
                write(len(payload).to_bytes(8, "little"))
                write(payload)
            self.proc.stdin.flush()
        except BaseException:
            for path in made:
                _unlink(path)
            raise

    def call(self, stdin, on_secede):
        """(ok, frame, output) of one task."""
        spare, since = _spares.take() or (None, None)
        borrowed = []
        clean = False
        try:
            try:
                self._send(stdin, spare, borrowed)
            except OSError:
                raise _Died() from None
            self._greeted()
            output = b""
            while True:
                head = self._read(9)
                n = int.from_bytes(head[1:], "little")
                kind = bytes(head[:1])
                if kind == b"s":
                    on_secede()
                elif kind == b"o":
                    output = bytes(self._read(n))
                elif kind in (b"r", b"f"):
                    frame = bytes(self._read(n))
                    clean = True
                    return kind == b"r", frame, output
                elif kind == b"R":
                    path = os.fsdecode(bytes(self._read(n)))
                    try:
                        result = _map_result(path)
                    finally:
                        _unlink(path)
                    clean = True
                    return True, result, output
                elif kind == b"A":
                    # A large result and no file offered with the request:
                    # one freed while the task ran (in a chain, the file of
                    # the value two links back) saves fresh pages.
                    if spare is None:
                        spare, since = _spares.take() or (None, None)
                    path = b""
                    if spare is not None:
                        path = os.fsencode("/proc/%d/fd/%d" % (os.getpid(), spare))
                    try:
                        self.proc.stdin.write(len(path).to_bytes(8, "little"))
                        self.proc.stdin.write(path)
                        self.proc.stdin.flush()
                    except OSError:
                        raise _Died() from None
                elif kind == b"U" and spare is not None:
                    name = bytes(self._read(n))
                    fd, spare = spare, None
                    clean = True
                    return True, _map_fd(fd, name), output
                else:
                    raise _Died()
        finally:
            # Files lent to a call that ended cleanly are free again (its
            # task process no longer uses them); after anything else the
            # process may still write them: they go.
            for fd in borrowed:
                if clean:
                    _spares.put(fd)
                else:
                    _close(fd)
            if spare is not None:
                if clean:
                    _spares.put(spare, since)
                else:
                    _close(spare)

    def died(self):
        """The exit status of a process that failed a call."""
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self, force):
        try:
            if force:
                self.proc.kill()
            else:
                self.proc.stdin.close()
        except OSError:
            pass


class _Pool:
    """The long-lived task processes of one session in this worker."""

    def __init__(self):
        self.lock = threading.Lock()
        self.idle = []
        self.busy = set()
        self.closed = False

    def take(self, argv, env, hello):
        with self.lock:
            if self.closed:
                return None
            if self.idle:
                server = self.idle.pop()
            else:
                server = None
        if server is None:
            server = _Server(argv, env, hello)
        with self.lock:
            self.busy.add(server)
        return server

    def give(self, server, healthy):
        with self.lock:
            self.busy.discard(server)
            if healthy and not self.closed:
                self.idle.append(server)
                return
        server.stop(force=not healthy)
        if not healthy:
            server.died()

    def close(self):
        """Idle processes end on the end of their input; running calls are
        ended: the flow run is over."""
        with self.lock:
            self.closed = True
            servers = self.idle + list(self.busy)
            idle = list(self.idle)
            self.idle = []
        for server in servers:
            server.stop(force=server not in idle)

        def reap():
            deadline = time.monotonic() + 5
            for server in servers:
                try:
                    server.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    server.proc.kill()
                    server.proc.wait()

        threading.Thread(target=reap, name="flowrun-reap", daemon=True).start()


_pools = {}
_ended = set()
_pools_lock = threading.Lock()


def _pool(session):
    with _pools_lock:
        if session in _ended:
            return None
        pool = _pools.get(session)
        if pool is None:
            pool = _pools[session] = _Pool()
        return pool


class Plugin(WorkerPlugin):
    """Ties a session's task processes on a worker to the flow run: the
    flow registers it at the start and removes it at the end."""

    def __init__(self, params):
        # Without a session (isolated tasks) it only installs this module.
        self.session = params.get("session")

    def setup(self, worker):
        if self.session is not None:
            _pool(self.session)

    def teardown(self, worker):
        if self.session is None:
            return
        with _pools_lock:
            _ended.add(self.session)
            pool = _pools.pop(self.session, None)
        if pool is not None:
            pool.close()


def _scheduler_env(env, params, worker):
    """Tells the task its scheduler, and the worker's TLS files for it."""
    if worker is None:
        return
    env[params["scheduler_env"]] = worker.scheduler.address
    security = getattr(worker, "security", None)
    if security is None:
        return
    files = (
        security.tls_ca_file,
        security.tls_worker_cert or security.tls_client_cert,
        security.tls_worker_key or security.tls_client_key,
    )
    for name, value in zip(params["tls_env"].split(","), files):
        if value:
            env[name] = value


def _served(key, argv, stdin, env, params, worker, on_secede):
    """Runs the task in a long-lived task process of its session; None
    when the session has ended on this worker."""
    pool = _pool(params["session"])
    if pool is None:
        return None
    env = dict(os.environ if env is None else env)
    env[params["env"]] = "1"
    env[params["serve_env"]] = "1"
    env[params["shared_env"]] = os.path.dirname(_shared_path("result"))
    _scheduler_env(env, params, worker)
    try:
        server = pool.take(argv, env, params["magic"].encode("latin-1"))
    except OSError as e:
        raise RuntimeError(
            "cannot start the task program %s on this worker: %s"
            % (os.fsdecode(argv[0]), e.strerror or e)
        ) from None
    if server is None:
        return None
    try:
        ok, frame, output = server.call(stdin, on_secede)
    except _Died:
        pool.give(server, healthy=False)
        code = server.died()
        raise subprocess.CalledProcessError(code, key, b"", b"") from None
    except BaseException:
        pool.give(server, healthy=False)
        raise
    pool.give(server, healthy=True)
    return ok, frame, output


@contextlib.contextmanager
def _attempt(worker, topic, key, quiet):
    """The frame of one task attempt: it reports the start once the task has
    run `quiet` seconds, yields the function that gives the worker thread
    back (once) when the task waits on tasks it submitted, and takes the
    thread again when the attempt ends."""
    seceded = []

    def secede_once():
        if worker is not None and not seceded:
            from distributed import secede

            secede()
            seceded.append(True)

    watch = _starts.watch(
        float(quiet), lambda: _publish(worker, topic, {"k": key, "s": 1})
    )
    try:
        yield secede_once
    finally:
        _starts.done(watch)
        if seceded:
            from distributed import rejoin

            rejoin()


def run(key, argv, stdin, env, params):
    topic = params["topic"]
    worker = _worker()
    if "session" in params:
        with _attempt(worker, topic, key, params["quiet"]) as secede_once:
            served = _served(key, argv, stdin, env, params, worker, secede_once)
        if served is not None:
            ok, frame, output = served
            err = _tail(output)
            if err:
                _publish(worker, topic, {"k": key, "o": err})
            if ok:
                return frame
            raise subprocess.CalledProcessError(
                int(params["failed_exit"]), key, frame, err
            )
    data = b"".join(x for part in stdin for x in (len(part).to_bytes(8, "little"), part))
    env = dict(os.environ if env is None else env)
    env[params["env"]] = "1"
    _scheduler_env(env, params, worker)
    # The task asks on this pipe to give its thread back while it waits for
    # tasks it submitted itself (get_dask_client in the task).
    control_r, control_w = os.pipe()
    env[params["control_env"]] = str(control_w)
    with _attempt(worker, topic, key, params["quiet"]) as on_secede:
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
    err = _tail(stderr)
    if err:
        _publish(worker, topic, {"k": key, "o": err})
    start = stdout.find(params["magic"].encode("latin-1"))
    if proc.returncode == 0 and start >= 0:
        return stdout[start:] if start else stdout
    raise subprocess.CalledProcessError(proc.returncode, key, _tail(stdout), err)
