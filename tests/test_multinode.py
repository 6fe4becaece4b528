"""Several nodes, as docs/cluster.md launches them: two torchrun agents (two "nodes" of one CPU rank
each) meeting at a c10d rendezvous train, checkpoint, and resume from that checkpoint with the same
two-agent launch, the resumed losses equal to an uninterrupted run's; and the SLURM script
(scripts/slurm/catlip_pretrain.sbatch) run under stand-ins for srun, scontrol and torchrun that
record what each node would start, parsed by torchrun's and engine.train's own parsers; and
DeepSpeed's hostfile launcher for real with a stand-in for pdsh (its ssh fan-out) that runs each
host's command here."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_launch import _shards

from engine.config import add_train_arguments, load_config
from engine.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "catlip_pretrain.sbatch"
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


# ------------------------------------------------------------------------------ two agents, for real
def _two_nodes(tmp: Path, name: str, *sets: str) -> list[tuple[subprocess.Popen, Path]]:
    """Starts the documented torchrun command on two agents (``--nnodes 2``, one rank each, a c10d
    rendezvous at 127.0.0.1:PORT that the first agent to bind hosts), as two nodes would run it;
    ``--local_addr 127.0.0.1`` keeps the workers' store and gloo on the loopback interface. Returns
    each agent with its output file (for :func:`_finish`)."""
    port, run_id = free_port(), uuid.uuid4().hex
    cmd = [
        TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", run_id, "--local_addr", "127.0.0.1",
        "-m", "engine.train", *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("GLOO_SOCKET_IFNAME", None)
    agents = []
    for node in range(2):
        log = tmp / f"{name}.node{node}.log"
        with open(log, "w") as out:  # each agent a session of its own, as on its own node
            agent = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        agents.append((agent, log))
    return agents


def _finish(agents: list[tuple[subprocess.Popen, Path]], timeout: float = 240) -> str:
    """Both agents' output once they end; fails if either fails (or runs past ``timeout``)."""
    try:
        codes = [agent.wait(timeout=timeout) for agent, _ in agents]
    finally:
        _stop(agents)
    text = "\n".join(f"--- node {n}\n{log.read_text()}" for n, (_, log) in enumerate(agents))
    assert codes == [0, 0], text[-4000:]
    return text


def _stop(agents: list[tuple[subprocess.Popen, Path]]) -> None:
    for agent, _ in agents:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)  # this agent's own session: it and its worker


def _losses(out: Path) -> dict[int, float]:
    """step -> loss of every line in ``out``'s log.jsonl (a resumed run appends)."""
    lines = (out / "log.jsonl").read_text().splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}


@pytest.mark.distributed
@pytest.mark.slow
def test_two_agents_train_checkpoint_and_resume_like_one_uninterrupted_run(
    tmp_path: Path, shared_data: Path
) -> None:
    shards = _shards(tmp_path / "shards", shared_data / "coco_photos")
    sets = [
        "model.image_size=32", f"data.train={shards}", "data.batch_size=4", "data.num_threads=1",
        "parallel.precision=fp32", "run.log_every=1", "checkpoint.every=3",
        # a constant rate after warm-up: the schedule does not depend on run.steps, so the
        # 3-step run continued to 6 follows the uninterrupted 6-step run
        "optim.warmup_steps=1", "optim.min_lr=0.001",
    ]  # fmt: skip
    run, ref = tmp_path / "run", tmp_path / "ref"

    # the uninterrupted run beside the first (each is mostly waiting on its start and rendezvous)
    reference = _two_nodes(tmp_path, "uninterrupted", *sets, f"run.out_dir={ref}", "run.steps=6")
    try:
        first = _finish(_two_nodes(tmp_path, "first", *sets, f"run.out_dir={run}", "run.steps=3"))
        _finish(reference)
    finally:
        _stop(reference)
    assert "held per rank: rank 0: 472,658, rank 1: 472,658" in first, first[-3000:]  # one world of 2
    assert (run / "checkpoints" / "latest").read_text() == "step_00000003"
    resumed = _finish(
        _two_nodes(tmp_path, "resumed", *sets, f"run.out_dir={run}", "run.steps=6", "run.resume=auto")
    )
    assert f"resumed from {run}/checkpoints/step_00000003 at step 3" in resumed, resumed[-3000:]
    assert json.loads((run / "config.json").read_text())["resumed_at_step"] == 3

    losses, expected = _losses(run), _losses(ref)
    assert sorted(losses) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    # every rank restored its own data position, RNG and optimizer partition: the same losses
    assert losses == expected, (losses, expected)
    assert losses[6] < losses[1]  # and it learns
    assert (run / "checkpoints" / "latest").read_text() == "step_00000006"


# ------------------------------------------------------------------------------ DeepSpeed's hostfile launcher
# pdsh's part: run the command on every host of -w (here, on this one), %n its index in the list
PDSH = """#!/bin/bash
printf "%s\\0" "$@" > "$RECORD/pdsh.argv"
while [[ $1 == -* ]]; do
    case $1 in -w) hosts=$2; shift 2;; -f) shift 2;; *) shift;; esac
done
IFS=, read -ra names <<< "$hosts"
for i in "${!names[@]}"; do
    bash -c "${*//%n/$i}" > "$RECORD/${names[$i]}.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || { code=$?; (( code > status )) && status=$code; }; done
exit $status
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeeds_hostfile_launcher_trains_on_two_hosts(tmp_path: Path, shared_data: Path) -> None:
    """docs/cluster.md's `deepspeed --hostfile` launch: DeepSpeed's pdsh runner builds each host's
    command (deepspeed.launcher.launch with that host's --node_rank); a stand-in for pdsh runs both
    here instead of over ssh, and the two hosts' ranks train as one world of 2."""
    shards = _shards(tmp_path / "shards", shared_data / "coco_photos")
    bin_dir, out = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    (bin_dir / "pdsh").write_text(PDSH)
    (bin_dir / "pdsh").chmod(0o755)
    (tmp_path / "hostfile").write_text("node-a slots=1\nnode-b slots=1\n")
    cmd = [
        str(Path(sys.executable).parent / "deepspeed"), "--hostfile", str(tmp_path / "hostfile"),
        "--num_nodes", "2", "--num_gpus", "1", "--no_ssh_check", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "--module", "engine.train",
        "--set", "model.image_size=32", "--set", f"data.train={shards}", "--set", "data.batch_size=4",
        "--set", "data.num_threads=1", "--set", "parallel.precision=fp32", "--set", f"run.out_dir={out}",
        "--set", "run.steps=3", "--set", "run.log_every=1",
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "RECORD": str(tmp_path),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    env.pop("GLOO_SOCKET_IFNAME", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    hosts = {
        h: (tmp_path / f"{h}.log").read_text()
        for h in ("node-a", "node-b")
        if (tmp_path / f"{h}.log").exists()
    }
    assert proc.returncode == 0, (proc.stderr[-2000:], {h: t[-2000:] for h, t in hosts.items()})
    pdsh = _argv(tmp_path / "pdsh.argv")
    assert pdsh[pdsh.index("-w") + 1] == "node-a,node-b" and "--node_rank=%n" in pdsh, pdsh
    assert "nnodes=2, num_local_procs=1, node_rank=1" in hosts["node-b"], hosts["node-b"][-2000:]
    assert "held per rank: rank 0: 472,658, rank 1: 472,658" in hosts["node-a"], hosts["node-a"][-2000:]
    assert "loss: step 1 " in hosts["node-a"] and " -> step 3 " in hosts["node-a"]
    assert (out / "checkpoints" / "latest").read_text() == "step_00000003"


# ------------------------------------------------------------------------------ the SLURM script
STAND_INS = {
    # the job's node list as SLURM expands it
    "scontrol": '[[ "$1 $2 $3" == "show hostnames gpu-node[07-08]" ]] || exit 9\nprintf "gpu-node07\\ngpu-node08\\n"',
    # one task per node, in this shell: SLURM_NODEID and the node's name set as srun sets them
    "srun": (
        'printf "%s\\0" "$@" > "$RECORD/srun.argv"\n'
        "while [[ $1 == --* ]]; do shift; done\n"
        "for id in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do\n"
        '    SLURM_NODEID=$id SLURM_PROCID=$id SLURMD_NODENAME=gpu-node0$((7 + id)) "$@" || exit\n'
        "done"
    ),
    # what each node would start, and the NCCL settings it would start it with
    "torchrun": (
        'printf "%s\\0" "$@" > "$RECORD/torchrun.$SLURM_NODEID.argv"\n'
        'env | grep -E "^(NCCL_|OMP_NUM_THREADS=)" | sort > "$RECORD/torchrun.$SLURM_NODEID.env"'
    ),
}


def _sbatch(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    bin_dir, record = tmp / "bin", tmp / "record"
    bin_dir.mkdir(exist_ok=True)
    record.mkdir(exist_ok=True)
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-node[07-08]",
        "SLURM_GPUS_ON_NODE": "8", "RECORD": str(record), "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NCCL_", "GPUS_PER_NODE"))}
    return subprocess.run(
        ["bash", str(SBATCH), *args],
        cwd=ROOT,
        env={**full_env, **slurm, **env},
        capture_output=True,
        text=True,
    )


def _argv(path: Path) -> list[str]:
    return path.read_text().split("\0")[:-1]


def test_the_slurm_script_starts_torchrun_on_every_node_with_one_rendezvous(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    given = ["--set", "data.train=/shared/shards/train", "--set", "run.out_dir=/shared/runs/b 16"]
    proc = _sbatch(tmp_path, "configs/catlip_vit_b16.yaml", *given, NCCL_SOCKET_IFNAME="ib0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("catlip: 2 nodes x 8 GPUs, rendezvous at gpu-node07:29400"), proc.stdout
    record = tmp_path / "record"
    srun = _argv(record / "srun.argv")
    assert srun[:3] == ["--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"], srun

    from torch.distributed.run import get_args_parser

    train_parser = argparse.ArgumentParser(prog="python -m engine.train")
    add_train_arguments(train_parser)  # engine.train's own arguments
    for node in (0, 1):
        argv = _argv(record / f"torchrun.{node}.argv")
        args = get_args_parser().parse_args(argv)  # as torchrun reads them
        assert (args.nnodes, args.nproc_per_node) == ("2", "8"), shlex.join(argv)
        assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == (
            "c10d",
            "gpu-node07:29400",
            "catlip-4242",
        )
        assert args.rdzv_conf == f"is_host={1 if node == 0 else 0}"  # the first node hosts the rendezvous
        assert args.module and args.training_script == "engine.train"
        train = train_parser.parse_args(args.training_script_args)
        assert train.config == Path("configs/catlip_vit_b16.yaml")
        assert train.overrides == ["data.train=/shared/shards/train", "run.out_dir=/shared/runs/b 16"]
        cfg = load_config(train.config, train.overrides)  # a run config engine.train accepts
        assert cfg.run.out_dir == "/shared/runs/b 16" and cfg.model.name == "vit_b16"
        env = (record / f"torchrun.{node}.env").read_text().splitlines()
        assert env == ["NCCL_DEBUG=WARN", "NCCL_SOCKET_IFNAME=ib0", "OMP_NUM_THREADS=1"], env


def test_the_slurm_script_takes_its_settings_and_refuses_a_missing_config(tmp_path: Path) -> None:
    proc = _sbatch(tmp_path, "configs/catlip_vit_b16.yaml", GPUS_PER_NODE="4", RDZV_PORT="29555")
    assert proc.returncode == 0, proc.stderr
    args = _argv(tmp_path / "record" / "torchrun.1.argv")
    assert args[args.index("--nproc_per_node") + 1] == "4"
    assert args[args.index("--rdzv_endpoint") + 1] == "gpu-node07:29555"
    proc = _sbatch(tmp_path, "--set", "run.steps=3")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: sbatch [--nodes N]"), proc.stderr
    proc = _sbatch(tmp_path, "configs/catlip_vit_b16.yaml", SLURM_JOB_NUM_NODES="")
    assert proc.returncode != 0 and "not inside a SLURM job" in proc.stderr, proc.stderr
