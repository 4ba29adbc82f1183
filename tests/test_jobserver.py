"""The job server: a job's script runs in a forked worker with the job's directory,
environment and streams, returns its status, and dies with the job."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntkpipe import jobserver

CLIENT = """
import os, sys
from ntkpipe import jobserver
jobserver.offload(sys.argv)  # returns in the worker, or when no server takes the job
where = "worker" if "NTKPIPE_JOBSERVER_WORKER" in os.environ else "direct"
"""


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """A private server on its own socket, stopped after the test."""
    path = tmp_path / "jobs.sock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "ntkpipe.jobserver", "serve", str(path),
                             "--idle", "60"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), proc.stderr.read() if proc.poll() is not None else "no socket"
    monkeypatch.setattr(jobserver, "socket_path", lambda: path)
    yield path
    proc.terminate()
    proc.wait(10)


def job(tmp_path, body, **env):
    """A job script that offloads itself, run as Snakemake would (its own process)."""
    script = tmp_path / "job.py"
    script.write_text(CLIENT.replace("jobserver.offload", "jobserver.socket_path = lambda: "
                                     f"__import__('pathlib').Path({str(env.pop('sock'))!r}); "
                                     "jobserver.offload") + body)
    return subprocess.Popen([sys.executable, str(script), "an-argument"], cwd=tmp_path,
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_worker_runs_the_script_with_the_jobs_context(server, tmp_path):
    body = """
from pathlib import Path
Path("seen.txt").write_text(" ".join([os.environ["MARK"], sys.argv[1],
                                      os.environ.get("NTKPIPE_JOBSERVER_WORKER", "-")]))
print(where, "to stdout"); print("to stderr", file=sys.stderr)
sys.exit(3)
"""
    proc = job(tmp_path, body, sock=server, MARK="m42")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert (tmp_path / "seen.txt").read_text() == "m42 an-argument 1"  # cwd, env, argv
    assert out.strip() == "worker to stdout" and err.strip() == "to stderr"  # the job's streams


def test_an_exception_fails_the_job_with_its_traceback(server, tmp_path):
    proc = job(tmp_path, "\nraise ValueError('broken on purpose')\n", sock=server)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "ValueError: broken on purpose" in err and "direct" not in err


def test_killing_the_job_kills_its_worker(server, tmp_path):
    body = """
from pathlib import Path
Path("pid").write_text(str(os.getpid()))
import time; time.sleep(60)
"""
    proc = job(tmp_path, body, sock=server)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int((tmp_path / "pid").read_text())
    assert worker != proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{worker}").exists()


def test_disabled_or_inside_slurm_the_job_runs_itself(tmp_path):
    for variable in ("NTKPIPE_JOBSERVER", "SLURM_JOB_ID"):
        env = {variable: "0" if variable == "NTKPIPE_JOBSERVER" else "1"}
        proc = job(tmp_path, "\nprint(os.getpid())", sock=tmp_path / "none.sock", **env)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == str(proc.pid), variable
    assert not (tmp_path / "none.sock").exists()  # and no server was started
