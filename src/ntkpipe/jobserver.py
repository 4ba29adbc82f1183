"""A fork server for the workflow's jobs: each job runs in a fork of a process that has already
imported torch, numpy, scipy, xarray and matplotlib, instead of paying those imports again.

A Snakemake `script:` job is a fresh Python process; on the default run its imports cost 2–4 s
of CPU per job (torch alone 2.5 s), more than many jobs compute. `ntkpipe.smk.setup` hands the
job to this server when one can run (local runs; never inside a SLURM job, never with
`NTKPIPE_JOBSERVER=0`): the job's process sends its script, working directory, environment
and standard streams over a Unix socket and waits; the server forks a worker that runs the
script exactly as Python would (ntkpipe itself is imported afresh in every worker, so edited
code is never stale) and sends back the exit status. Killing the job's process kills its
worker. The server starts on first use and exits when idle.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import runpy
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

DISABLE = "NTKPIPE_JOBSERVER"  # "0" runs every job in its own process
IN_WORKER = "NTKPIPE_JOBSERVER_WORKER"
IDLE_SECONDS = 300
PRELOAD = ("numpy", "scipy.linalg", "scipy.sparse.linalg", "scipy.stats", "netCDF4", "xarray",
           "matplotlib.pyplot", "yaml", "jsonschema", "torch", "torch.func",
           "snakemake.script")
# Libraries read their thread counts when they load: the server loads them single-threaded
# and each worker raises torch's count to its job's `threads`.
_SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1"}


def enabled() -> bool:
    """Whether jobs of this process may go to the server."""
    return (os.environ.get(DISABLE, "1") != "0" and IN_WORKER not in os.environ
            and "SLURM_JOB_ID" not in os.environ and hasattr(socket, "send_fds"))


def socket_path() -> Path:
    """The server's socket: one per user, Python interpreter and version of this module."""
    key = hashlib.sha256((sys.executable + "\0" + Path(__file__).read_text()).encode())
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    return base / f"ntkpipe-jobs-{os.getuid()}-{key.hexdigest()[:12]}.sock"


# ---- the job's side ---------------------------------------------------------------------------

def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _start_server(path: Path) -> socket.socket | None:
    """Connect, starting the server first if none answers (one starter at a time)."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(path)
        if sock is not None:
            return sock
        with open(f"{path}.log", "a") as log:
            subprocess.Popen([sys.executable, "-m", "ntkpipe.jobserver", "serve", str(path)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, env={**os.environ, **_SINGLE_THREADED})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
            sock = _connect(path)
            if sock is not None:
                return sock
    return None


def offload(argv: list[str]) -> None:
    """Run this job's script (`argv`) in a server worker and exit with its status; return
    without doing anything when no server can take it (the caller then runs it itself)."""
    if not enabled():
        return
    path = socket_path()
    sock = _connect(path) or _start_server(path)
    if sock is None:
        return
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        socket.send_fds(sock, [struct.pack("!Q", len(request))], [0, 1, 2])
        sock.sendall(request)
        status = b""
        while len(status) < 4:
            chunk = sock.recv(4 - len(status))
            if not chunk:
                break
            status += chunk
    except OSError:
        status = b""
    if len(status) < 4:
        print("ntkpipe: the job server's worker ended without a status", file=sys.stderr)
        os._exit(1)
    os._exit(struct.unpack("!i", status)[0])


# ---- the server's side ------------------------------------------------------------------------

def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the job went away")
        data += chunk
    return data


def _watch(sock: socket.socket) -> None:
    """Kill this worker (and what it started) when the job's process goes away."""
    try:
        while sock.recv(1):
            pass
    except OSError:
        pass
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _work(sock: socket.socket) -> int:
    """In a forked worker: take the job's streams and environment, run its script."""
    header, fds, _, _ = socket.recv_fds(sock, 8, 3)
    size = struct.unpack("!Q", header)[0]
    request = json.loads(_recv_exact(sock, size))
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[IN_WORKER] = "1"
    threading.Thread(target=_watch, args=(sock,), daemon=True).start()
    sys.argv = list(request["argv"])
    sys.path[0] = str(Path(sys.argv[0]).resolve().parent)
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 — report it as Python would, then fail the job
        try:
            sys.excepthook(*sys.exc_info())
        except SystemExit as done:  # ntkpipe's hook turns bad input into one line and exit 1
            return done.code if isinstance(done.code, int) else 1
        return 1


def _fork_worker(conn: socket.socket, listener: socket.socket) -> None:
    if os.fork() != 0:
        conn.close()
        return
    code = 1
    try:
        listener.close()
        os.setpgrp()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess needs its exit statuses
        code = _work(conn)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            conn.sendall(struct.pack("!i", code))
        except OSError:
            pass
        os._exit(code)


def serve(path: Path, idle: float = IDLE_SECONDS) -> None:
    """Import the heavy libraries, then fork a worker per job until idle for `idle` seconds."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 — a library missing here is loaded by the job
            print(f"preload of {name} failed: {err}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        path.unlink(missing_ok=True)
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    listener.settimeout(5)
    inode, last = path.stat().st_ino, time.monotonic()
    print(f"serving on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    while time.monotonic() - last < idle:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  struct.calcsize("3i")))[1]
        if uid != os.getuid():
            conn.close()
            continue
        last = time.monotonic()
        _fork_worker(conn, listener)
    try:
        if path.stat().st_ino == inode:  # not a newer server's socket
            path.unlink()
    except FileNotFoundError:
        pass


def main(argv: list[str] | None = None) -> int:
    """`python -m ntkpipe.jobserver serve PATH` (started by the first job that needs it)."""
    parser = argparse.ArgumentParser(prog="python -m ntkpipe.jobserver")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve jobs on a Unix socket until idle")
    run.add_argument("socket", type=Path)
    run.add_argument("--idle", type=float, default=IDLE_SECONDS)
    args = parser.parse_args(argv)
    serve(args.socket, args.idle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
