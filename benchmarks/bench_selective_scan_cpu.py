"""Benchmark of the CPU selective scan against the plain-PyTorch reference, measured in one run.

At (batch 2, dim 512, dstate 16, seqlen 2048), float32, input-dependent B/C (1 group), D, z,
delta_bias, softplus: wall time (min over repeats, the run least disturbed by other processes;
the median is recorded too) of
  - forward:            ssm_tools.selective_scan vs ssm_tools.reference.selective_scan_ref
  - forward + backward: both through autograd, gradients of every input (the reference's backward
                        is PyTorch autograd through its loop)
and the forward's state updates per second (batch * dim * dstate * seqlen / time), also per
CPU-second of the process (all threads) and with one thread (per core), which are less sensitive to
other processes sharing the cores; the load average is recorded for the same reason. Prints the
ratios; writes JSON (with the exact command, torch version and thread count) to --out.

    .venv/bin/python benchmarks/bench_selective_scan_cpu.py
"""
import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import ssm_tools
from ssm_tools.reference import selective_scan_ref

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)


def timings(fn, reps, warmup=1):
    """Wall seconds of fn(): min and median over reps, and the min process CPU seconds (all threads).
    The min is the run least disturbed by other processes on the shared cores."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return dict(min_s=min(wall), median_s=statistics.median(wall), min_cpu_s=min(cpu))


def single_thread(fn):
    """fn() with one intra-op thread: the per-core speed, which other processes disturb less than
    the speed of both threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def make_inputs(batch, dim, dstate, seqlen):
    return dict(
        u=torch.randn(batch, dim, seqlen),
        delta=torch.randn(batch, dim, seqlen) * 0.5 - 1.0,
        A=-(torch.rand(dim, dstate) + 0.5),
        B=torch.randn(batch, 1, dstate, seqlen),
        C=torch.randn(batch, 1, dstate, seqlen),
        D=torch.randn(dim),
        z=torch.randn(batch, dim, seqlen),
        delta_bias=torch.randn(dim) * 0.3,
    )


def forward(fn, inputs):
    with torch.no_grad():
        return fn(**inputs, delta_softplus=True)


def forward_backward(fn, inputs, dout):
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves, delta_softplus=True)
    return torch.autograd.grad(out, list(leaves.values()), dout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dstate", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=7, help="timed repeats of the op")
    parser.add_argument("--ref-reps", type=int, default=3, help="timed repeats of the reference")
    parser.add_argument("--out", type=Path, default=Path("results/bench_selective_scan_cpu.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    inputs = make_inputs(args.batch, args.dim, args.dstate, args.seqlen)
    dout = torch.randn(args.batch, args.dim, args.seqlen)
    updates = args.batch * args.dim * args.dstate * args.seqlen

    load_before = os.getloadavg()[0]
    fwd = timings(lambda: forward(ssm_tools.selective_scan, inputs), args.reps)
    fwd_1t = single_thread(lambda: timings(lambda: forward(ssm_tools.selective_scan, inputs), args.reps))
    ref_fwd = timings(lambda: forward(selective_scan_ref, inputs), args.ref_reps)
    fwd_bwd = timings(lambda: forward_backward(ssm_tools.selective_scan, inputs, dout), args.reps)
    ref_fwd_bwd = timings(lambda: forward_backward(selective_scan_ref, inputs, dout), args.ref_reps)

    result = dict(
        threads=torch.get_num_threads(),
        load_average_1min=dict(before=load_before, after=os.getloadavg()[0]),
        shape=dict(batch=args.batch, dim=args.dim, dstate=args.dstate, seqlen=args.seqlen),
        dtype="float32", B_C="input-dependent, 1 group", options="D, z, delta_bias, delta_softplus",
        timing="min over reps (median alongside); speedups compare mins",
        fwd_ms=fwd["min_s"] * 1e3, fwd_median_ms=fwd["median_s"] * 1e3,
        reference_fwd_ms=ref_fwd["min_s"] * 1e3, speedup_fwd=ref_fwd["min_s"] / fwd["min_s"],
        fwd_bwd_ms=fwd_bwd["min_s"] * 1e3, fwd_bwd_median_ms=fwd_bwd["median_s"] * 1e3,
        reference_fwd_bwd_ms=ref_fwd_bwd["min_s"] * 1e3,
        speedup_fwd_bwd=ref_fwd_bwd["min_s"] / fwd_bwd["min_s"],
        fwd_state_updates_per_s=updates / fwd["min_s"],
        fwd_state_updates_per_cpu_s=updates / fwd["min_cpu_s"],
        fwd_1thread_ms=fwd_1t["min_s"] * 1e3,
        fwd_1thread_state_updates_per_s=updates / fwd_1t["min_s"],
        fwd_bwd_state_updates_per_s=updates / fwd_bwd["min_s"],
    )
    print(f"threads {result['threads']}, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}, "
          f"(batch, dim, dstate, seqlen) = ({args.batch}, {args.dim}, {args.dstate}, {args.seqlen}) float32, "
          "min of repeats")
    print(f"forward          {result['fwd_ms']:8.1f} ms   reference {result['reference_fwd_ms']:8.1f} ms   "
          f"x{result['speedup_fwd']:.1f}   {result['fwd_state_updates_per_s']:.3g} state updates/s "
          f"({result['fwd_state_updates_per_cpu_s']:.3g} per CPU-second)")
    print(f"forward, 1 thread {result['fwd_1thread_ms']:7.1f} ms   "
          f"{result['fwd_1thread_state_updates_per_s']:.3g} state updates/s")
    print(f"forward+backward {result['fwd_bwd_ms']:8.1f} ms   reference {result['reference_fwd_bwd_ms']:8.1f} ms   "
          f"x{result['speedup_fwd_bwd']:.1f}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
