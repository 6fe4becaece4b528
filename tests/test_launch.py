"""python -m engine.launch, the documented one-machine launch: a real 2-rank training run listens on
the loopback interface only (torchrun's own stores listen on every interface)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tree(root: int) -> set[int]:
    """``root`` and its descendants."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return tree


def _address(hex_addr: str) -> str:
    """/proc/net/tcp{,6}'s local address (host byte order words) -> text."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening(pids: set[int]) -> set[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state held by ``pids``."""
    owner = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owner[int(link[8:-1])] = pid
        except OSError:  # the process ended meanwhile
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[9]) in owner:  # 0A: LISTEN
                addr, port = f[1].split(":")
                out.add((_address(addr), int(port, 16), owner[int(f[9])]))
    return out


def _loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _shards(root: Path, photos: Path) -> Path:
    from engine.packing import ShardWriter

    writer = ShardWriter(root, 16)
    for i, image in enumerate(sorted(photos.glob("*.jpg"))[:16]):
        labels = np.asarray([i % 7, 7 + i % 5], "<i4")
        writer.write(f"s{i:02d}", [("jpg", image.read_bytes()), ("lbl", labels.tobytes())])
    writer.close()
    (root / "dataset.json").write_text(
        json.dumps({"samples": 16, "vocab_size": 50, "shard_names": writer.names})
    )
    return root


LAUNCHERS = {
    "engine_launch": [sys.executable, "-m", "engine.launch", "--nproc_per_node", "2", "-m", "engine.train"],
    "deepspeed": [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        "2",
        "--module",
        "engine.train",
    ],
}


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_two_rank_run_listens_on_loopback_only(tmp_path: Path, shared_data: Path, launcher: str) -> None:
    """The README's one-machine launches, for real: engine.launch (CPU ranks) and the deepspeed
    launcher (here on the CPU too), each a 6-step training run, every listening socket of the
    launcher and its ranks sampled while it runs."""
    shards = _shards(tmp_path / "shards", shared_data / "coco_photos")
    cmd = [
        *LAUNCHERS[launcher], "--set", "model.image_size=32", "--set", f"data.train={shards}",
        "--set", "data.batch_size=4", "--set", "data.num_threads=1", "--set", "parallel.precision=fp32",
        "--set", f"run.out_dir={tmp_path / 'run'}", "--set", "run.steps=6", "--set", "run.resume=never",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GLOO_SOCKET_IFNAME", None)
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        seen: set[tuple[str, int, int]] = set()
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < 600:
            seen |= listening(_tree(proc.pid))
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.wait() == 0, text[-3000:]
    assert "loss: step 1 " in text and " -> step 6 " in text, text[-3000:]  # it trained
    # the workers' store (rank 0), gloo's pairs (each rank) and, under engine.launch, the
    # rendezvous store (the agent: this process)
    pids = {pid for *_, pid in seen}
    assert len({port for _, port, _ in seen}) >= 3 and len(pids - {proc.pid}) >= 2, seen
    assert (proc.pid in pids) == (launcher == "engine_launch"), seen
    wide = sorted(s for s in seen if not _loopback(s[0]))
    assert not wide, f"listening beyond the loopback interface (address, port, pid): {wide}"
