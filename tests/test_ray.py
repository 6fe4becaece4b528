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
    """The vocabulary as one process builds it (here, in the test process)."""
    from catlip.vocab import build_vocabulary

    vocab, stats = build_vocabulary(files=vocab_inputs, min_count=2, progress=False)
    assert stats.captions == 5275 and stats.where == "1 process"
    out = tmp_path_factory.mktemp("v1") / "vocab.tsv"
    vocab.save(out)
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
    assert "labelling: 5,275 caption |" in run.stderr  # one progress report, fed by both workers
    assert out.read_bytes() == vocab_one_worker.read_bytes()


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
    assert "labelling: 5,275 caption |" in run.stderr  # the workers' reports reach the driver's progress
    assert out.read_bytes() == vocab_one_worker.read_bytes()


def test_vocab_corrupt_tar_on_ray_is_named_and_nothing_is_written(vocab_inputs, tmp_path):
    """With --ray alone: on a Ray instance started for the run (and shut down after it)."""
    bad = tmp_path / "bad.tar"
    bad.write_bytes(vocab_inputs[0].read_bytes()[:1500])  # cut inside the second member's header
    out = tmp_path / "vocab.tsv"
    files = [str(vocab_inputs[1]), str(bad), str(vocab_inputs[2])]
    run = catlip("vocab", "--captions", *files, "--out", str(out), "--ray", "--workers", "2")
    assert run.returncode != 0
    assert f"{bad}: unreadable tar shard" in run.stderr and "no vocabulary written" in run.stderr
    assert "catlip vocab:" in run.stderr.splitlines()[-1]  # a message, not a traceback
    assert not out.exists()


# ------------------------------------------------------------------------------------------- pack
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def photo_tsv(tmp_path_factory, shared_data: Path) -> Path:
    """The first 400 captions of the COCO photos (80 images x 5), naming files in coco_photos."""
    lines = (shared_data / "coco_photos" / "captions.tsv").read_text().splitlines()[:400]
    path = tmp_path_factory.mktemp("tsv") / "captions.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _pack_args(photo_tsv: Path, shared_data: Path, vocab: Path, out: Path, shard_size: int) -> list[str]:
    return [
        *("pack", "--tsv", str(photo_tsv), "--images", str(shared_data / "coco_photos")),
        *("--vocab", str(vocab), "--out", str(out), "--shard-size", str(shard_size)),
        *("--holdout-fraction", "0.2", "--quiet"),
    ]


def _one_worker_pack(photo_tsv: Path, shared_data: Path, vocab: Path, out: Path, shard_size: int) -> Path:
    from engine.packing import TsvSource, pack

    source = TsvSource(photo_tsv, shared_data / "coco_photos")
    pack(source, out, vocab, shard_size=shard_size, holdout_fraction=0.2, progress=False)
    return out


@pytest.fixture(scope="module")
def one_worker_pack(tmp_path_factory, photo_tsv, shared_data: Path, photo_vocab: Path) -> Path:
    """The 400 captions packed by one process (here), 20% held out, 32 samples read per shard."""
    return _one_worker_pack(photo_tsv, shared_data, photo_vocab, tmp_path_factory.mktemp("p1") / "shards", 32)


def test_pack_two_workers_equal_one(one_worker_pack, photo_tsv, shared_data, photo_vocab, tmp_path):
    run = catlip(*_pack_args(photo_tsv, shared_data, photo_vocab, tmp_path / "shards", 32), "--workers", "2")
    assert run.returncode == 0, run.stderr
    assert "on 2 local processes" in run.stdout
    assert _tree(tmp_path / "shards") == _tree(one_worker_pack)  # every shard, index, rejects, dataset.json


def test_pack_on_ray_equals_one_worker(
    one_worker_pack, photo_tsv, shared_data, photo_vocab, ray_cluster, tmp_path
):
    run = catlip(
        *_pack_args(photo_tsv, shared_data, photo_vocab, tmp_path / "shards", 32), "--ray", ray_cluster
    )
    assert run.returncode == 0, run.stderr
    assert "on Ray (2 CPUs)" in run.stdout
    assert _tree(tmp_path / "shards") == _tree(one_worker_pack)


def test_killed_worker_then_the_same_command_packs_only_what_is_missing(
    photo_tsv, shared_data, photo_vocab, tmp_path
):
    import psutil

    out = tmp_path / "shards"
    args = [*_pack_args(photo_tsv, shared_data, photo_vocab, out, 4), "--workers", "2"]  # 100 shards
    cli = subprocess.Popen(
        [sys.executable, "-m", "engine", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done = tmp_path / "shards.partial" / "done"
    deadline = time.monotonic() + 180
    while cli.poll() is None and len(list(done.glob("*.json"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(cli.pid).children()
    assert cli.poll() is None and len(workers) == 2, "the pack ended before a worker could be killed"
    workers[0].kill()
    _, stderr = cli.communicate(timeout=120)
    assert cli.returncode != 0 and "a worker process died" in stderr, stderr
    assert not out.exists()  # nothing published
    finished = len(list(done.glob("*.json")))
    assert 5 <= finished < 100

    rerun = catlip(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {tmp_path / 'shards.partial'}: {finished} of 100 shard(s) done before" in rerun.stdout
    assert f"resumed: {finished} shard(s) were done before" in rerun.stdout
    assert _tree(out) == _tree(_one_worker_pack(photo_tsv, shared_data, photo_vocab, tmp_path / "ref", 4))
