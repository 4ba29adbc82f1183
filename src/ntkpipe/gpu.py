"""GPU slots for local jobs: one `fcntl.flock` lock file per device.

Snakemake's `resources: gpu=1` plus `--resources gpu=N` only caps how many GPU jobs run at
once; it never says *which* device a job gets (snakemake issue #281), so two local jobs would
both land on `cuda:0`. `acquire` picks a free device by taking an exclusive, non-blocking
`flock` on `<lock_dir>/gpu<i>.lock`, sets `CUDA_VISIBLE_DEVICES=<i>` for the job (so the job
always sees its device as `cuda:0`), and releases the lock on exit. The kernel drops a flock
when its file descriptor closes, including when the process crashes or is killed with
SIGKILL, so a dead job never leaves a stale slot behind (unlike PID files).

Rules:
* Under SLURM (`SLURM_JOB_ID` set) with `CUDA_VISIBLE_DEVICES` set, SLURM already chose the
  devices: respect them and take no lock.
* Otherwise the device pool is `CUDA_VISIBLE_DEVICES` when the user set it (a restriction to
  honour, e.g. `CUDA_VISIBLE_DEVICES=2,3`), else every device the machine has.
* No device, or `n_gpus=0`: the job runs on the CPU at once.

Devices are counted without initialising CUDA in this process (CUDA reads
`CUDA_VISIBLE_DEVICES` once, at initialisation; after `torch.cuda.device_count()` or any CUDA
call, changing it has no effect): `NTKPIPE_FAKE_GPUS` (tests), else `nvidia-smi -L`, else
`/proc/driver/nvidia/gpus/`. torch is never imported here. Call `acquire`/`claim` before the
job touches `torch.cuda`.

Stdlib only, import-light: used by every GPU job before torch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

__all__ = ["GpuSlot", "acquire", "claim", "default_lock_dir", "device_count"]

FAKE_ENV = "NTKPIPE_FAKE_GPUS"
LOCK_DIR_ENV = "NTKPIPE_GPU_LOCK_DIR"


@dataclass
class GpuSlot:
    """The device(s) a job got.

    device:   what the job passes to torch: "cuda:0" (its first visible device) or "cpu".
    physical: the machine's device ids given to the job (CUDA_VISIBLE_DEVICES entries), for
              provenance; () on the CPU.
    source:   "lock" (a slot taken here), "slurm" (chosen by SLURM), "cuda-initialised"
              (CUDA was already up in this process: locked, but CUDA_VISIBLE_DEVICES could not
              be set) or "cpu".
    """

    device: str
    physical: tuple[str, ...] = ()
    source: str = "cpu"
    lock_paths: tuple[str, ...] = ()
    _fds: list[int] = field(default_factory=list, repr=False, compare=False)
    _env_before: str | None = field(default=None, repr=False, compare=False)
    _env_set: bool = field(default=False, repr=False, compare=False)

    @property
    def is_gpu(self) -> bool:
        return self.device != "cpu"

    def describe(self) -> str:
        """One line for provenance and logs, e.g. 'cuda:0 (physical GPU 1, lock)'."""
        if not self.is_gpu:
            return "cpu"
        return f"{self.device} (physical GPU {','.join(self.physical)}, {self.source})"

    def release(self) -> None:
        """Unlock, and put CUDA_VISIBLE_DEVICES back as it was. Idempotent."""
        while self._fds:
            fd = self._fds.pop()
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._env_set:
            if self._env_before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = self._env_before
            self._env_set = False


def default_lock_dir() -> Path:
    """`$NTKPIPE_GPU_LOCK_DIR`, else `/tmp/ntkpipe-gpu-locks-<uid>` (node-local)."""
    env = os.environ.get(LOCK_DIR_ENV)
    return Path(env) if env else Path(f"/tmp/ntkpipe-gpu-locks-{os.getuid()}")


def device_count() -> int:
    """Number of CUDA devices on this machine, without initialising CUDA here."""
    fake = os.environ.get(FAKE_ENV)
    if fake is not None and fake.strip() != "":
        return max(0, int(fake))
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0:
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    return 0


def _cuda_initialised() -> bool:
    """Whether this process already initialised CUDA through torch (too late to choose)."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken torch must not stop the CPU path
        return False


def _pool(count: int | None) -> list[str]:
    """The device ids jobs may use: the user's CUDA_VISIBLE_DEVICES, else 0..count-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        # CUDA stops at the first invalid entry (e.g. "-1" hides every device).
        valid = []
        for v in ids:
            if v.startswith("-"):
                break
            valid.append(v)
        return valid
    n = device_count() if count is None else max(0, int(count))
    return [str(i) for i in range(n)]


def _lock_name(device_id: str) -> str:
    return "gpu" + re.sub(r"[^A-Za-z0-9_.-]", "_", device_id) + ".lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # Who holds it, for someone inspecting the lock dir (the lock, not this text, counts).
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
    return fd


def claim(n_gpus: int = 1, lock_dir: str | Path | None = None, timeout: float | None = None,
          *, device_count: int | None = None, poll: float = 0.5) -> GpuSlot:
    """Take `n_gpus` devices and return the slot; the locks last until `slot.release()` or
    the end of the process (crash and SIGKILL included). Waits, polling every `poll`
    seconds, while every device is taken; raises TimeoutError after `timeout` seconds
    (None: wait for ever). `device_count` overrides detection (tests)."""
    if n_gpus <= 0:
        return GpuSlot("cpu")

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and os.environ.get("SLURM_JOB_ID"):
        ids = tuple(_pool(None))
        return GpuSlot("cuda:0", ids, "slurm") if ids else GpuSlot("cpu")

    pool = _pool(device_count)
    if not pool:
        return GpuSlot("cpu")
    if n_gpus > len(pool):
        raise ValueError(f"{n_gpus} GPUs requested, only {len(pool)} on this machine: {pool}")

    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        fds: list[int] = []
        got: list[str] = []
        for device_id in pool:
            fd = _try_lock(directory / _lock_name(device_id))
            if fd is not None:
                fds.append(fd)
                got.append(device_id)
                if len(got) == n_gpus:
                    break
        if len(got) == n_gpus:
            break
        # Never hold some devices while waiting for others (no deadlock between jobs).
        for fd in fds:
            os.close(fd)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no free GPU slot ({n_gpus} of {pool}) in {directory} "
                               f"after {timeout} s")
        time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    paths = tuple(str(directory / _lock_name(d)) for d in got)
    if _cuda_initialised():
        # Too late for CUDA_VISIBLE_DEVICES: address the device by its index instead.
        index = pool.index(got[0])
        return GpuSlot(f"cuda:{index}", tuple(got), "cuda-initialised", paths, fds)
    slot = GpuSlot("cuda:0", tuple(got), "lock", paths, fds, _env_before=visible, _env_set=True)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(got)
    return slot


@contextlib.contextmanager
def acquire(n_gpus: int = 1, lock_dir: str | Path | None = None, timeout: float | None = None,
            *, device_count: int | None = None, poll: float = 0.5) -> Iterator[GpuSlot]:
    """Context manager around `claim`: yields the slot, releases it on exit.

        with gpu.acquire(1) as slot:
            import torch            # after acquire: CUDA sees only the chosen device
            model.to(slot.device)
    """
    slot = claim(n_gpus, lock_dir, timeout, device_count=device_count, poll=poll)
    try:
        yield slot
    finally:
        slot.release()
