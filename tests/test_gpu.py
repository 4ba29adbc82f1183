"""GPU slots (ntkpipe.gpu) without a GPU: devices are simulated with NTKPIPE_FAKE_GPUS or the
`device_count` argument; concurrency is tested across real processes, as jobs are."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ntkpipe import gpu

# A job holding a slot: prints the slot as JSON, then holds it until stdin closes.
HOLDER = textwrap.dedent("""
    import json, os, sys
    from ntkpipe import gpu
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else None
    try:
        slot = gpu.claim(int(sys.argv[1]), timeout=timeout, poll=0.05)
    except TimeoutError:
        print(json.dumps({"timeout": True}), flush=True)
        sys.exit(3)
    print(json.dumps({"device": slot.device, "physical": list(slot.physical),
                      "source": slot.source,
                      "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "torch_imported": "torch" in sys.modules}), flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean environment: private lock dir, no SLURM, no CUDA_VISIBLE_DEVICES."""
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", gpu.FAKE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path / "locks"))
    return tmp_path / "locks"


def holder(n_fake: int, n_gpus: int = 1, timeout: float = 60) -> subprocess.Popen:
    """A job process claiming `n_gpus` of `n_fake` devices (giving up after `timeout` s)."""
    env = {**os.environ, gpu.FAKE_ENV: str(n_fake)}
    env.pop("CUDA_VISIBLE_DEVICES", None)  # a fresh job, not a child of a slot holder
    args = [sys.executable, "-c", HOLDER, str(n_gpus), str(timeout)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)


def first_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, f"holder exited without a slot (rc {proc.wait()})"
    return json.loads(line)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_no_device_yields_cpu_at_once(env, monkeypatch):
    start = time.monotonic()
    with gpu.acquire(1, device_count=0) as slot:
        assert slot.device == "cpu" and not slot.is_gpu and slot.physical == ()
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv(gpu.FAKE_ENV, "0")
    with gpu.acquire(1) as slot:
        assert slot.device == "cpu" and slot.describe() == "cpu"
    with gpu.acquire(0, device_count=4) as slot:
        assert slot.device == "cpu"
    assert time.monotonic() - start < 1
    assert not env.exists(), "the CPU path takes no lock"


def test_slot_sets_visible_devices_and_restores_them(env):
    with gpu.acquire(1, device_count=2) as slot:
        assert slot.device == "cuda:0" and slot.physical == ("0",) and slot.source == "lock"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert slot.describe() == "cuda:0 (physical GPU 0, lock)"
        assert (env / "gpu0.lock").exists()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with gpu.acquire(1, device_count=2) as slot:  # released: the same device is free again
        assert slot.physical == ("0",)


def test_two_jobs_never_share_a_device_and_a_third_waits(env):
    a, b = holder(2), holder(2)
    try:
        got_a, got_b = first_line(a), first_line(b)
        assert {tuple(got_a["physical"]), tuple(got_b["physical"])} == {("0",), ("1",)}
        for got in (got_a, got_b):
            assert got["device"] == "cuda:0"
            assert got["visible"] == got["physical"][0]
            assert not got["torch_imported"]
        # Both taken: a bounded wait times out ...
        with pytest.raises(TimeoutError, match="no free GPU slot"):
            gpu.claim(1, timeout=0.3, device_count=2, poll=0.05)
        # ... and an unbounded one waits until a holder releases.
        c = holder(2)
        try:
            time.sleep(1.0)
            assert c.poll() is None
            stop(a)
            got_c = first_line(c)
            assert got_c["physical"] == got_a["physical"]
        finally:
            stop(c)
    finally:
        stop(a)
        stop(b)


def test_sigkilled_holder_frees_its_slot(env):
    proc = holder(1)
    try:
        assert first_line(proc)["physical"] == ["0"]
        with pytest.raises(TimeoutError):
            gpu.claim(1, timeout=0.2, device_count=1, poll=0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    finally:
        stop(proc)
    with gpu.acquire(1, timeout=5, device_count=1) as slot:
        assert slot.physical == ("0",)


def test_multi_gpu_slot_takes_distinct_devices_without_hold_and_wait(env):
    with gpu.acquire(2, device_count=3) as slot:
        assert slot.physical == ("0", "1")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        other = holder(3)
        try:
            assert first_line(other)["physical"] == ["2"]
            # Only device 2 left, taken: a 2-GPU job must not sit on one device meanwhile.
            waiting = holder(3, n_gpus=2, timeout=0.5)
            assert first_line(waiting) == {"timeout": True}
            waiting.wait(timeout=10)
        finally:
            stop(other)
    with pytest.raises(ValueError, match="3 GPUs requested, only 2"):
        gpu.claim(3, device_count=2)


def test_slurm_devices_are_respected_without_a_lock(env, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with gpu.acquire(1, device_count=4) as slot:
        assert slot.device == "cuda:0" and slot.physical == ("1",) and slot.source == "slurm"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert not env.exists(), "no lock under SLURM"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a SLURM job without GPUs
    with gpu.acquire(1, device_count=4) as slot:
        assert slot.device == "cpu"


def test_user_visible_devices_are_the_pool(env, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with gpu.acquire(1) as first:
        assert first.physical == ("2",) and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
        assert (env / "gpu2.lock").exists()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with gpu.acquire(1) as slot:
        assert slot.device == "cpu"


def test_lock_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv(gpu.LOCK_DIR_ENV, raising=False)
    assert str(gpu.default_lock_dir()) == f"/tmp/ntkpipe-gpu-locks-{os.getuid()}"
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path))
    assert gpu.default_lock_dir() == tmp_path


def test_device_count_env_and_no_driver(monkeypatch):
    monkeypatch.setenv(gpu.FAKE_ENV, "3")
    assert gpu.device_count() == 3
    monkeypatch.delenv(gpu.FAKE_ENV)
    monkeypatch.setenv("PATH", "/nonexistent")
    expected = len(os.listdir("/proc/driver/nvidia/gpus")) if os.path.isdir(
        "/proc/driver/nvidia/gpus") else 0
    assert gpu.device_count() == expected
