"""The tiny workflow through a real single-node SLURM cluster, submitted with the repository's
`profiles/slurm` (overridden only where a one-machine cluster differs), checked against a local
run of the same config: the metrics must be identical.

Needs root and Debian's slurm packages (installed with apt-get when missing); otherwise, or when
the daemons do not come up, the test is skipped with the reason. Everything the cluster writes
lives in a temporary directory: slurm.conf and gres.conf (two count-only fake GPUs: character
devices), state, spool, logs, and a private munged (its own key and socket). Nothing
system-wide changes besides the apt install, and every daemon started here is stopped by PID.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from test_workflow import TINY

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel", "srun", "munged"]
LOCK = Path("/tmp/ntkpipe-slurm-test.lock")  # one test cluster at a time on a machine

pytestmark = pytest.mark.slow


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _ensure_packages() -> None:
    """apt-get install the slurm packages unless present; skip when that cannot be done."""
    if all(_which(b) for b in BINARIES):
        return
    if not _which("apt-get"):
        pytest.skip("slurm is not installed and apt-get is unavailable")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd, limit in ((["apt-get", "update", "-qq"], 300),
                       (["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                         *PACKAGES], 600)):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"cannot install slurm ({' '.join(cmd[:2])}): {err}")
        if done.returncode != 0:
            pytest.skip(f"cannot install slurm ({' '.join(cmd[:2])}): {done.stderr[-500:]}")
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        pytest.skip(f"slurm installed but {missing} not found")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 1500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


class Cluster:
    """Daemons started here, by PID; `stop` ends exactly those."""

    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        for name in list(self.env):  # a test inside a SLURM job must not talk to that cluster
            if name.startswith("SLURM_") and name != "SLURM_CONF":
                del self.env[name]

    def configure(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log", "munge", "dev", "bin"):
            (r / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        # snakemake-executor-plugin-slurm-jobstep 0.6 drops SLURM_CONF (with every SLURM_*
        # variable) before its nested `srun`, which then finds no config. A cluster with
        # /etc/slurm/slurm.conf or configless slurmd never notices; ours lives in a temporary
        # directory, so an `srun` first on PATH puts SLURM_CONF back, and records each call
        # with the CUDA_VISIBLE_DEVICES the job step got.
        wrapper = r / "bin" / "srun"
        wrapper.write_text(f"""#!/bin/sh
export SLURM_CONF={r}/slurm.conf
echo "CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-unset}} $*" >> {r}/log/srun_calls.log
exec {_which("srun")} "$@"
""")
        wrapper.chmod(0o755)
        self.env["PATH"] = f"{r}/bin:{self.env.get('PATH', '')}"
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for i in range(2):  # count-only fake GPUs: slurmd drops GPUs without device files
            try:
                os.mknod(r / "dev" / f"fakegpu{i}", 0o600 | 0o020000, os.makedev(1, 3))
            except OSError as err:
                pytest.skip(f"cannot mknod fake GPU devices: {err}")
        mem_total = int(next(line.split()[1] for line in open("/proc/meminfo")
                             if line.startswith("MemTotal")))  # kB
        real_memory = min(20000, int(mem_total / 1024 * 0.8))
        cpus = os.cpu_count() or 1
        (r / "slurm.conf").write_text(f"""\
ClusterName=ntkpipetest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
MailProg=/bin/true
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        (r / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.host} Name=gpu File={r}/dev/fakegpu[0-1]\n")

    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)

    def _check_alive(self, what: str) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                logs = "\n".join(f"--- {p.name}\n{_tail(p, 600)}"
                                 for p in sorted((self.root / "log").iterdir()))
                pytest.skip(f"{name} exited ({proc.returncode}) while {what}:\n{logs}")

    def start(self) -> None:
        r = self.root
        self._start("munged", [_which("munged"), "--foreground", "--force",
                               f"--socket={r}/munge/munge.socket",
                               f"--key-file={r}/munge/munge.key",
                               f"--pid-file={r}/munge/munged.pid",
                               f"--log-file={r}/log/munged.log",
                               f"--seed-file={r}/munge/munged.seed"])
        deadline = time.monotonic() + 20
        while not (r / "munge" / "munge.socket").exists():
            self._check_alive("starting munged")
            if time.monotonic() > deadline:
                pytest.skip(f"munged did not create its socket:\n{_tail(r / 'log/munged.log')}")
            time.sleep(0.2)
        conf = str(r / "slurm.conf")
        self._start("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", conf])
        time.sleep(1)
        self._start("slurmd", [_which("slurmd"), "-D", "-f", conf, "-N", self.host])
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            self._check_alive("waiting for the node")
            out = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%t"], env=self.env,
                                 capture_output=True, text=True)
            state = (out.stdout + out.stderr).strip()
            if out.returncode == 0 and state == "idle":
                return
            time.sleep(0.5)
        pytest.skip(f"the node did not become idle in 60 s (sinfo: {state!r}):\n"
                    f"{_tail(r / 'log/slurmctld.log')}\n{_tail(r / 'log/slurmd.log')}")

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run([_which("scancel"), "--full", "--user", "root"], env=self.env,
                           capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a test SLURM cluster needs root on Linux (daemons, apt-get, mknod)")
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another test cluster held {LOCK} for 15 minutes")
                time.sleep(2)
        _ensure_packages()
        c = Cluster(tmp_path_factory.mktemp("slurm"))
        try:
            c.configure()
            c.start()
            yield c
        finally:
            c.stop()


def slurm_profile(directory: Path) -> Path:
    """profiles/slurm with only what a one-machine cluster without accounting needs changed:
    partition `debug`, no account, squeue status checks, small sizes."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    profile["default-resources"] = {"slurm_partition": "debug", "runtime": 10, "mem_mb": 1000}
    profile.update({"slurm-no-account": True, "slurm-status-command": "squeue",
                    "slurm-init-seconds-before-status-checks": 2, "latency-wait": 5,
                    "retries": 0, "jobs": 4, "keep-going": False, "cores": 2,
                    "resources": {"mem_mb": 4000}})
    # The rules' own threads, as in the local run (identical numerics), and CPUs to match.
    profile.pop("set-threads", None)
    threads = {"extract_ntk": 2}
    for rule, res in profile["set-resources"].items():
        res.update(mem_mb=1000, runtime=10)
        if "cpus_per_task" in res:
            res["cpus_per_task"] = threads.get(rule, 1)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


def run(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY))
    return subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory",
                           str(workdir), "--configfile", str(workdir / "config.yaml"), *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def test_tiny_workflow_on_slurm_matches_local(cluster, tmp_path):
    profile = slurm_profile(tmp_path / "profile")
    start = time.monotonic()
    on_slurm = run(tmp_path / "slurm", cluster.env, "--workflow-profile", str(profile))
    slurm_s = time.monotonic() - start
    assert on_slurm.returncode == 0, (on_slurm.stdout[-2000:] + on_slurm.stderr[-4000:])
    log = on_slurm.stdout + on_slurm.stderr
    assert "Job stats" in log
    # One sbatch per train/extract job (2 + 3 + 3), one for the prep group (prepare_data and
    # the 3 splits) and one for the metrics group (3 jobs); the localrules ran here. (A new
    # rule that is neither local nor grouped adds its jobs here: give it set-resources.)
    assert log.count("has been submitted with SLURM jobid") == 10, log[-6000:]
    # The GPU rules' job steps saw the GPU SLURM gave them; the others saw none.
    calls = (cluster.root / "log/srun_calls.log").read_text().splitlines()
    for rule in ("train_phase1", "train_phase2", "extract_ntk", "metrics"):
        mine = [c for c in calls if f"--target-jobs {rule}:" in c]
        assert mine, f"no job step for {rule}"
        gpu_rule = rule != "metrics"
        for call in mine:
            visible = call.split()[0].removeprefix("CUDA_VISIBLE_DEVICES=")
            assert (visible in ("0", "1")) == gpu_rule, (rule, visible)
    assert (tmp_path / "slurm/out/summary/metrics.nc").exists()

    local = run(tmp_path / "local", {k: v for k, v in os.environ.items()
                                     if not k.startswith("SLURM_")}, "--cores", "2")
    assert local.returncode == 0, local.stderr[-3000:]
    # The same files (outputs, logs, benchmarks) as the local run.
    files = {d: sorted(str(p.relative_to(tmp_path / d / "out"))
                       for p in (tmp_path / d / "out").rglob("*") if p.is_file())
             for d in ("slurm", "local")}
    assert files["slurm"] == files["local"]

    a = xr.open_dataset(tmp_path / "slurm/out/summary/metrics.nc")
    b = xr.open_dataset(tmp_path / "local/out/summary/metrics.nc")
    assert sorted(a.data_vars) == sorted(b.data_vars) and len(a.data_vars) > 0
    for name in a.data_vars:
        assert a[name].dims == b[name].dims, name
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for name in a.coords:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    print(f"\nSLURM run of the tiny workflow: {slurm_s:.0f} s")
