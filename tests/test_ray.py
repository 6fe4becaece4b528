"""Data preparation on worker processes and on a real Ray cluster: the same outputs as one process.

A Ray head is started once for this module (``ray start --head --block``, 2 CPUs, its own temp
folder) and stopped at the end; the commands connect to it with ``--ray 127.0.0.1:PORT`` in their
own processes, so no Ray driver lives in the test process. One run uses ``--ray`` alone, which
starts a Ray instance for the run."""

from __future__ import annotations

import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("nltk_ready")


# The module's cluster and its drivers share a token of their own (Ray's token authentication),
# not ~/.ray/auth_token, which any other local Ray instance may rewrite.
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}


def catlip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``catlip ARGS`` in a new process (the way a user runs it), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **RAY_ENV},
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head on this machine with 2 CPUs; its address as ``127.0.0.1:PORT``."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live below it
    port = _free_port()
    head = subprocess.Popen(
        [
            *(sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"),
            *(f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"),
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **RAY_ENV},
    )
    try:
        deadline = time.monotonic() + 120
        for line in head.stdout:  # "... will now block forever": the head is up
            if "block forever" in line or time.monotonic() > deadline:
                break
        assert head.poll() is None, "ray start --head failed"
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        subprocess.run(["rm", "-rf", temp], check=False)


# ------------------------------------------------------------------------------------------ vocab
def _caption_tars(folder: Path, captions: list[str], per_tar: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for t in range(0, len(captions), per_tar):
        path = folder / f"{t // per_tar:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, caption in enumerate(captions[t : t + per_tar]):
                data = caption.encode()
                info = tarfile.TarInfo(f"{t + i:09d}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def vocab_inputs(tmp_path_factory, shared_data: Path) -> list[Path]:
    """COCO val captions: 4,000 in WebDataset tars (a task each) and the photos' TSV (chunked)."""
    from catlip.captions import iter_captions

    root = tmp_path_factory.mktemp("vocab")
    captions = [c for _, c in iter_captions(shared_data / "coco_captions_val2017.json")][:4000]
    return [*_caption_tars(root / "tars", captions, 1000), shared_data / "coco_photos" / "captions.tsv"]


@pytest.fixture(scope="module")
def vocab_one_worker(vocab_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v1") / "vocab.tsv"
    run = catlip(
        "vocab",
        "--captions",
        *map(str, vocab_inputs),
        "--min-count",
        "2",
        "--out",
        str(out),
        "--workers",
        "1",
    )
    assert run.returncode == 0, run.stderr
    assert "over 1 process" in run.stdout
    return out


def test_vocab_two_workers_equal_one(vocab_inputs, vocab_one_worker, tmp_path):
    out = tmp_path / "vocab.tsv"
    run = catlip(
        "vocab",
        "--captions",
        *map(str, vocab_inputs),
        "--min-count",
        "2",
        "--out",
        str(out),
        "--workers",
        "2",
    )
    assert run.returncode == 0, run.stderr
    assert "over 2 local processes" in run.stdout and "captions: 5,275" in run.stdout
    assert out.read_bytes() == vocab_one_worker.read_bytes()
    assert out.with_suffix(".tsv.json").read_bytes() == vocab_one_worker.with_suffix(".tsv.json").read_bytes()


def test_vocab_on_ray_equals_one_worker(vocab_inputs, vocab_one_worker, ray_cluster, tmp_path):
    out = tmp_path / "vocab.tsv"
    run = catlip(
        "vocab",
        "--captions",
        *map(str, vocab_inputs),
        "--min-count",
        "2",
        "--out",
        str(out),
        "--ray",
        ray_cluster,
    )
    assert run.returncode == 0, run.stderr
    assert "over Ray (2 CPUs)" in run.stdout
    assert out.read_bytes() == vocab_one_worker.read_bytes()


def test_vocab_corrupt_tar_is_named_and_nothing_is_written(vocab_inputs, tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(vocab_inputs[0].read_bytes()[:1500])  # cut inside the second member
    out = tmp_path / "vocab.tsv"
    run = catlip(
        "vocab",
        "--captions",
        str(vocab_inputs[1]),
        str(bad),
        str(vocab_inputs[2]),
        "--out",
        str(out),
        "--workers",
        "2",
    )
    assert run.returncode != 0
    assert f"{bad}: unreadable tar shard" in run.stderr and "no vocabulary written" in run.stderr
    assert not out.exists()
