"""Data-parallel training over several processes: one per GPU (NCCL), or CPU processes (gloo).

    ssm-tools train --config addition --scale paper --device cuda --nproc 8
    torchrun --standalone --nproc-per-node 8 -m ssm_tools.cli train ... --device cuda   # the same

`--nproc N` runs the command in N processes through torch's elastic launcher (`launch`, what
torchrun does); a process it started (its environment names RANK and WORLD_SIZE) joins the group in
`setup`. Our convention, which makes
the number of processes invisible in the results:
- Every rank draws the same whole batch from the same seeded stream and trains on its rows
  (rank, rank + world, ...); the loss is each rank's token sum over the whole batch's token count,
  so the averaged gradients are the one-process gradients of the whole batch (up to the order of
  float sums). A run gives the same steps on 1 or 8 GPUs, and resumes on any number.
- Rank 0 writes checkpoints, logs, progress bars and results, and runs evaluations; the others wait
  for it at the next collective (hence the long timeout below).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# Collectives wait this long for a straggler: rank 0 evaluates (minutes at paper scale) while the
# others wait at the next step's all-reduce.
TIMEOUT = timedelta(hours=4)


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> str:
    """Joins the process group if torchrun started this process as one of several (once; later
    calls only resolve the device); returns the device this rank runs on: `cuda` becomes
    cuda:<LOCAL_RANK>, one GPU per process."""
    if not launched():
        return device
    requested = torch.device(device)
    if requested.type == "cuda":
        if requested.index is not None:
            raise ValueError(f"device {device!r}: with several processes each takes the GPU of its "
                             "local rank; give 'cuda'")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"local rank {local} has no GPU: {torch.cuda.device_count()} visible")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif requested.type != "cpu":
        raise ValueError(f"data-parallel training runs on cuda or cpu devices, got {device!r}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if requested.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def all_sum(values: list[float], device) -> list[float]:
    """The sums over ranks of a few numbers (one collective); the numbers themselves alone."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shutdown() -> None:
    """Leaves the process group (at the end of a command; torch warns about a group left open).
    The ranks meet first: a rank that tore its gloo connections down while another was still using
    them could abort that one at exit ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Runs `python -m ssm_tools.cli <argv>` in `nproc` processes on this machine, as `torchrun
    --standalone` does, through torch's launcher API (torchrun's own parser would take options such
    as --n or --nproc for its own); returns 0, or 1 if any process failed."""
    import sys
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Share the cores among the processes (torchrun's default is one thread each).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "ssm_tools.cli", *argv)
    except Exception as e:  # ChildFailedError: each failed rank's exit code and error file
        print(f"ssm-tools: error: {nproc} processes: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
