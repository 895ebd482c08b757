"""Benchmark of the CUDA selective-scan kernels (run on a GPU machine: benchmarks/run_gpu.sh).

Measures, with CUDA events (warm-up, median of repeats):
  - the device's copy rate: a large device-to-device copy, counting bytes read plus bytes written;
  - forward and forward+backward time of torch.ops.ssm_tools.selective_scan_{fwd,bwd} at batch 8,
    dim 2048, dstate 16, input-dependent B/C (1 group), D, z, delta_bias, softplus, for bf16 and
    float32 at seqlen 2048/8192/16384; the forward's achieved bandwidth (minimum bytes: each input
    read once, each output written once) as a fraction of the copy rate;
  - the PyTorch reference (ssm_tools.reference) on the same GPU: it materialises
    (batch, dim, seqlen, dstate) tensors and loops over positions in Python, so it runs at batch 1
    (recorded as reference_batch) and the ratio compares both at that batch;
  - the same forward and forward+backward with mamba_ssm's CUDA kernel (benchmarks/mamba_ssm_baseline.py:
    an installed mamba_ssm, or its sources from PyPI built here; set MAMBA_SSM_SRC), with the relative
    difference of the two outputs as a check that both compute the same scan;
  - few long rows: batch 1, dim 5120, seqlen 16384, bf16 (too few (batch, dim) rows to fill the GPU, so
    the forward splits each row into segments; also timed unsplit, SSM_TOOLS_SCAN_SEGMENT=seqlen);
  - one layer of the paper-scale training step (batch 128, dim 1536, seqlen 215, bf16);
  - packed rows: 128 sequences of random lengths 20..215 (dim 1536, bf16) padded to 215 vs packed
    whole into rows of 2048 positions with seq_idx; forward+backward time and real tokens per second;
  - decode step latency (selective_state_update) at batch 1/64/1024/8192, dim 2048, dstate 16: one
    eager call from Python (host overhead included) and the kernel alone (replayed CUDA graph),
    with its bandwidth (state read and written once);
  - the Mamba block's state update (mamba_state_update) alone at the 24 x 768 Mamba's decode shape
    (batch 1/100/1000, dim 1536, dstate 16, dt_rank 48, bf16), replayed in a CUDA graph, against its
    memory floor (bytes / copy rate). --decode-only runs the decode entries alone (under a minute).
Writes JSON (with the exact command) to --out.
"""
import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch

import ssm_tools._C  # noqa: F401  (registers the ops)
from ssm_tools.reference import selective_scan_ref, selective_state_update_ref

import mamba_ssm_baseline

OPS = torch.ops.ssm_tools
DIM, DSTATE, BATCH = 2048, 16, 8


def time_ms(fn, warmup, reps):
    """Median milliseconds of fn() over reps, timed with CUDA events after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_rate_bytes_per_s(reps):
    src = torch.randn(2**29, device="cuda")  # 2 GiB, far past the L2 cache
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), 3, reps)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def scan_inputs(batch, seqlen, dtype, dim=DIM):
    dev = "cuda"
    return dict(
        u=torch.randn(batch, dim, seqlen, device=dev).to(dtype),
        delta=(torch.randn(batch, dim, seqlen, device=dev) * 0.5 - 1.0).to(dtype),
        A=-(torch.rand(dim, DSTATE, device=dev) + 0.5),
        B=torch.randn(batch, 1, DSTATE, seqlen, device=dev).to(dtype),
        C=torch.randn(batch, 1, DSTATE, seqlen, device=dev).to(dtype),
        D=torch.randn(dim, device=dev),
        z=torch.randn(batch, dim, seqlen, device=dev).to(dtype),
        delta_bias=torch.randn(dim, device=dev) * 0.3,
    )


def fwd(i):
    return OPS.selective_scan_fwd(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], True,
                                  i.get("seq_idx"))


def fwd_bwd(i, dout):
    out, last, saved = fwd(i)
    return OPS.selective_scan_bwd(dout, None, i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"],
                                  i["delta_bias"], True, saved, i.get("seq_idx"))


def ref_fwd(i):
    return selective_scan_ref(i["u"], i["delta"], i["A"], i["B"], i["C"], D=i["D"], z=i["z"],
                              delta_bias=i["delta_bias"], delta_softplus=True)


def ref_fwd_bwd(i, dout):
    leaves = {k: v.detach().requires_grad_() for k, v in i.items()}
    out = ref_fwd(leaves)
    return torch.autograd.grad(out, list(leaves.values()), dout)


def forward_min_bytes(i, out, last, saved):
    """Each input read once and each output written once."""
    tensors = list(i.values()) + [out, last, saved]
    return sum(t.numel() * t.element_size() for t in tensors)


def compare_mamba_ssm(row, mamba, i, dout, out, reps):
    """mamba_ssm's kernel on the same inputs: its times, our speedup over it, and the outputs' difference."""
    if mamba is None:
        return
    theirs = mamba_ssm_baseline.fwd(mamba, i)[2]  # the z-gated output
    row["mamba_ssm_rel_diff"] = ((out.float() - theirs.float()).norm() / theirs.float().norm()).item()
    row["mamba_ssm_fwd_ms"] = time_ms(lambda: mamba_ssm_baseline.fwd(mamba, i), 2, reps)
    row["mamba_ssm_fwd_bwd_ms"] = time_ms(lambda: mamba_ssm_baseline.fwd_bwd(mamba, i, dout), 1, max(3, reps // 4))
    row["speedup_fwd_vs_mamba_ssm"] = row["mamba_ssm_fwd_ms"] / row["fwd_ms"]
    row["speedup_fwd_bwd_vs_mamba_ssm"] = row["mamba_ssm_fwd_bwd_ms"] / row["fwd_bwd_ms"]


def bench_scan(dtype, seqlen, copy_rate, reps, ref_reps, ref_bwd, mamba):
    i = scan_inputs(BATCH, seqlen, dtype)
    out, last, saved = fwd(i)
    dout = torch.randn_like(out)
    fwd_ms = time_ms(lambda: fwd(i), 2, reps)
    fwd_bwd_ms = time_ms(lambda: fwd_bwd(i, dout), 1, max(3, reps // 4))
    nbytes = forward_min_bytes(i, out, last, saved)
    row = dict(dtype=str(dtype).replace("torch.", ""), batch=BATCH, dim=DIM, dstate=DSTATE, seqlen=seqlen,
               fwd_ms=fwd_ms, fwd_bwd_ms=fwd_bwd_ms, fwd_min_bytes=nbytes,
               fwd_bandwidth_GBps=nbytes / (fwd_ms * 1e-3) / 1e9,
               fwd_fraction_of_copy_rate=nbytes / (fwd_ms * 1e-3) / copy_rate)
    compare_mamba_ssm(row, mamba, i, dout, out, reps)
    del i, out, last, saved, dout
    # The reference at batch 1 (see the module docstring), against our kernel at the same batch.
    small = scan_inputs(1, seqlen, dtype)
    row["reference_batch"] = 1
    row["kernel_fwd_ms_at_reference_batch"] = time_ms(lambda: fwd(small), 2, reps)
    row["reference_fwd_ms"] = time_ms(lambda: ref_fwd(small), 1, ref_reps)
    row["speedup_fwd_vs_reference"] = row["reference_fwd_ms"] / row["kernel_fwd_ms_at_reference_batch"]
    if ref_bwd:
        dout_small = torch.randn_like(small["u"])
        row["kernel_fwd_bwd_ms_at_reference_batch"] = time_ms(lambda: fwd_bwd(small, dout_small), 1, reps)
        row["reference_fwd_bwd_ms"] = time_ms(lambda: ref_fwd_bwd(small, dout_small), 1, ref_reps)
        row["speedup_fwd_bwd_vs_reference"] = row["reference_fwd_bwd_ms"] / row["kernel_fwd_bwd_ms_at_reference_batch"]
    torch.cuda.empty_cache()
    return row


def bench_train_shape(reps, mamba, batch=128, dim=1536, seqlen=215):
    """One layer of the paper-scale Mamba's training step (bf16, batch 128 trajectories of <= 5-digit
    additions, padded to 215): the short-sequence case, where the backward runs its smallest block."""
    i = scan_inputs(batch, seqlen, torch.bfloat16, dim)
    dout = torch.randn_like(i["u"])
    row = dict(dtype="bfloat16", batch=batch, dim=dim, dstate=DSTATE, seqlen=seqlen,
               fwd_ms=time_ms(lambda: fwd(i), 2, reps), fwd_bwd_ms=time_ms(lambda: fwd_bwd(i, dout), 2, reps))
    compare_mamba_ssm(row, mamba, i, dout, fwd(i)[0], reps)
    small = scan_inputs(8, seqlen, torch.bfloat16, dim)  # the reference at batch 8 (it loops over positions)
    dout_small = torch.randn_like(small["u"])
    row["reference_batch"] = 8
    row["kernel_fwd_bwd_ms_at_reference_batch"] = time_ms(lambda: fwd_bwd(small, dout_small), 2, reps)
    row["reference_fwd_bwd_ms"] = time_ms(lambda: ref_fwd_bwd(small, dout_small), 1, 3)
    row["speedup_fwd_bwd_vs_reference"] = row["reference_fwd_bwd_ms"] / row["kernel_fwd_bwd_ms_at_reference_batch"]
    return row


def bench_long_rows(reps, mamba, batch=1, dim=5120, seqlen=16384):
    """Few long rows (bf16): the forward as the launcher splits it and unsplit, both against mamba_ssm."""
    i = scan_inputs(batch, seqlen, torch.bfloat16, dim)
    dout = torch.randn_like(i["u"])
    out = fwd(i)[0]
    row = dict(dtype="bfloat16", batch=batch, dim=dim, dstate=DSTATE, seqlen=seqlen,
               fwd_ms=time_ms(lambda: fwd(i), 2, reps), fwd_bwd_ms=time_ms(lambda: fwd_bwd(i, dout), 1, max(3, reps // 4)))
    os.environ["SSM_TOOLS_SCAN_SEGMENT"] = str(seqlen - seqlen % 256 + 256)  # one segment: the unsplit forward
    try:
        unsplit = fwd(i)[0]
        row["unsplit_rel_diff"] = ((out.float() - unsplit.float()).norm() / unsplit.float().norm()).item()
        row["unsplit_fwd_ms"] = time_ms(lambda: fwd(i), 2, reps)
    finally:
        del os.environ["SSM_TOOLS_SCAN_SEGMENT"]
    row["speedup_fwd_split_vs_unsplit"] = row["unsplit_fwd_ms"] / row["fwd_ms"]
    compare_mamba_ssm(row, mamba, i, dout, out, reps)
    return row


def bench_packed(reps, n_seqs=128, dim=1536, max_len=215, row_len=2048):
    """Mixed-length training batch: padded to the longest vs packed whole into rows with seq_idx."""
    lengths = torch.randint(20, max_len + 1, (n_seqs,)).tolist()
    rows, fill = [[]], 0  # first fit in order: a sequence that does not fit starts a new row
    for n in lengths:
        if fill + n > row_len:
            rows.append([])
            fill = 0
        rows[-1].append(n)
        fill += n
    padded = scan_inputs(n_seqs, max_len, torch.bfloat16, dim)
    packed = scan_inputs(len(rows), row_len, torch.bfloat16, dim)
    seq_idx = torch.full((len(rows), row_len), -1, dtype=torch.int32)  # the unused tail: its own sequence
    for r, row in enumerate(rows):
        seq_idx[r, :sum(row)] = torch.repeat_interleave(torch.arange(len(row), dtype=torch.int32), torch.tensor(row))
    packed["seq_idx"] = seq_idx.cuda()
    result = dict(dtype="bfloat16", dim=dim, dstate=DSTATE, sequences=n_seqs, tokens=sum(lengths),
                  padded_shape=[n_seqs, max_len], packed_shape=[len(rows), row_len])
    for name, i in (("padded", padded), ("packed", packed)):
        dout = torch.randn_like(i["u"])
        result[f"{name}_fwd_bwd_ms"] = time_ms(lambda: fwd_bwd(i, dout), 2, reps)
        result[f"{name}_tokens_per_s"] = sum(lengths) / (result[f"{name}_fwd_bwd_ms"] * 1e-3)
    result["speedup_packed_vs_padded"] = result["padded_fwd_bwd_ms"] / result["packed_fwd_bwd_ms"]
    return result


def graph_step_ms(step, reps):
    """Milliseconds of one step() alone: 20 steps captured in a CUDA graph and replayed, as a decode
    loop would run them."""
    graph, steps = torch.cuda.CUDAGraph(), 20
    step()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            step()
    return time_ms(graph.replay, 3, max(5, reps // 10)) / steps


def bench_decode(batch, copy_rate, reps):
    dev = "cuda"
    dtype = torch.bfloat16
    state = torch.randn(batch, DIM, DSTATE, device=dev)
    x, dt, z = (torch.randn(batch, DIM, device=dev).to(dtype) for _ in range(3))
    A = -(torch.rand(DIM, DSTATE, device=dev) + 0.5)
    B, C = (torch.randn(batch, DSTATE, device=dev).to(dtype) for _ in range(2))
    D, dt_bias = torch.randn(DIM, device=dev), torch.randn(DIM, device=dev) * 0.3
    step = lambda: OPS.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True)  # noqa: E731
    ms = time_ms(step, 5, reps)  # one eager call from Python: host overhead included
    graph_ms = graph_step_ms(step, reps)
    ref_state = state.clone()
    ref_ms = time_ms(lambda: selective_state_update_ref(ref_state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                                        dt_softplus=True), 3, max(5, reps // 4))
    # The state read and written; inputs read; y (shaped like x) written.
    nbytes = 2 * state.numel() * 4 + sum(t.numel() * t.element_size() for t in (x, dt, z, A, B, C, D, dt_bias, x))
    return dict(batch=batch, dim=DIM, dstate=DSTATE, dtype="bfloat16", state_dtype="float32", step_us=ms * 1e3,
                graph_step_us=graph_ms * 1e3, graph_bandwidth_GBps=nbytes / (graph_ms * 1e-3) / 1e9,
                graph_fraction_of_copy_rate=nbytes / (graph_ms * 1e-3) / copy_rate,
                reference_step_us=ref_ms * 1e3, speedup_vs_reference=ref_ms / ms)


def bench_mamba_decode(batch, copy_rate, reps, dim=1536, dstate=16, dt_rank=48):
    """The Mamba block's state update alone (ops.mamba_state_update: dt_proj + softplus, the state step, D
    and the z gate) at the 24 x 768 Mamba's decode shape, bf16, xdbl and z laid out as the model's step
    has them (x_proj's contiguous output; z a strided half of in_proj's), replayed in a CUDA graph."""
    dev, dtype = "cuda", torch.bfloat16
    state = torch.randn(batch, dim, dstate, device=dev)
    x = torch.randn(batch, dim, device=dev).to(dtype)
    xdbl = torch.randn(batch, dt_rank + 2 * dstate, device=dev).to(dtype)
    z = torch.randn(batch, 2 * dim, device=dev).to(dtype)[:, dim:]
    dt_w = torch.randn(dim, dt_rank, device=dev) * dt_rank ** -0.5
    dt_b, D = torch.randn(dim, device=dev) - 2, torch.randn(dim, device=dev)
    A_log = torch.randn(dim, dstate, device=dev) * 0.5
    step = lambda: OPS.mamba_state_update(state, x, xdbl, z, dt_w, dt_b, A_log, D)  # noqa: E731
    graph_ms = graph_step_ms(step, reps)
    # The state read and written; x, z read, y written; xdbl, dt_weight, dt_bias, A_log, D read once.
    nbytes = 2 * state.numel() * 4 + 3 * x.numel() * 2 + sum(t.numel() * t.element_size()
                                                              for t in (xdbl, dt_w, dt_b, A_log, D))
    return dict(batch=batch, dim=dim, dstate=dstate, dt_rank=dt_rank, dtype="bfloat16", state_dtype="float32",
                graph_step_us=graph_ms * 1e3, bytes=nbytes, floor_us=nbytes / copy_rate * 1e6,
                graph_bandwidth_GBps=nbytes / (graph_ms * 1e-3) / 1e9,
                graph_fraction_of_copy_rate=nbytes / (graph_ms * 1e-3) / copy_rate)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/bench_selective_scan_cuda.json")
    parser.add_argument("--reps", type=int, default=20, help="timed repeats of each kernel")
    parser.add_argument("--ref-reps", type=int, default=2, help="timed repeats of the (slow) reference")
    parser.add_argument("--seqlens", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--decode-only", action="store_true",
                        help="only the copy rate and the decode entries (decode, mamba_decode)")
    args = parser.parse_args()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    copy_rate = copy_rate_bytes_per_s(args.reps)
    mamba_decodes = []
    for batch in (1, 100, 1000):
        row = bench_mamba_decode(batch, copy_rate, args.reps * 10)
        print(json.dumps(row), flush=True)
        mamba_decodes.append(row)
    if args.decode_only:
        decodes = [bench_decode(batch, copy_rate, args.reps * 10) for batch in (1, 64, 1024, 8192)]
        result = dict(command=" ".join(shlex.quote(a) for a in [sys.executable] + sys.argv), device=props.name,
                      torch=torch.__version__, copy_rate_GBps=copy_rate / 1e9, decode=decodes,
                      mamba_decode=mamba_decodes)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        for r in decodes + mamba_decodes:
            print(json.dumps(r))
        print(f"wrote {args.out}")
        return
    mamba = mamba_ssm_baseline.load()
    print(f"mamba_ssm kernel: {mamba_ssm_baseline.version() if mamba else 'not available (set MAMBA_SSM_SRC)'}")
    print(f"{props.name}: device-to-device copy {copy_rate / 1e9:.0f} GB/s (read + write)", flush=True)
    scans = []
    for dtype in (torch.bfloat16, torch.float32):
        for seqlen in args.seqlens:
            row = bench_scan(dtype, seqlen, copy_rate, args.reps, args.ref_reps, seqlen == min(args.seqlens), mamba)
            print(json.dumps(row), flush=True)
            scans.append(row)
    long_rows = bench_long_rows(args.reps, mamba)
    print(json.dumps(long_rows), flush=True)
    train_shape = bench_train_shape(args.reps, mamba)
    print(json.dumps(train_shape), flush=True)
    packed = bench_packed(args.reps)
    print(json.dumps(packed), flush=True)
    decodes = []
    for batch in (1, 64, 1024, 8192):
        row = bench_decode(batch, copy_rate, args.reps * 10)
        print(json.dumps(row), flush=True)
        decodes.append(row)
    result = dict(
        command=" ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        device=props.name, torch=torch.__version__, copy_rate_GBps=copy_rate / 1e9,
        mamba_ssm=mamba_ssm_baseline.version() if mamba else None,
        notes=("Minimum forward bytes: u, delta, z, B, C, A, D, delta_bias read once; out, last_state, saved "
               "written once. The PyTorch reference runs at batch 1 (reference_batch): at batch 8 it "
               "materialises several (8, 2048, seqlen, 16) float32 tensors and is too slow to repeat; its ratio "
               "compares both at batch 1. mamba_ssm_*: mamba_ssm's selective_scan_cuda (version in "
               "mamba_ssm) built from its PyPI sources for the same GPU, timed on the same inputs."),
        scan=scans, long_rows=long_rows, train_shape=train_shape, packed=packed, decode=decodes,
        mamba_decode=mamba_decodes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'dtype':9} {'seqlen':>6} {'fwd ms':>8} {'fwd+bwd ms':>10} {'GB/s':>7} {'of copy':>7} {'x ref':>7} "
          f"{'x mamba_ssm fwd':>15} {'fwd+bwd':>8}")
    for r in scans:
        print(f"{r['dtype']:9} {r['seqlen']:6d} {r['fwd_ms']:8.3f} {r['fwd_bwd_ms']:10.3f} "
              f"{r['fwd_bandwidth_GBps']:7.0f} {r['fwd_fraction_of_copy_rate']:7.1%} "
              f"{r['speedup_fwd_vs_reference']:7.1f} {r.get('speedup_fwd_vs_mamba_ssm', float('nan')):15.2f} "
              f"{r.get('speedup_fwd_bwd_vs_mamba_ssm', float('nan')):8.2f}")
    r = long_rows
    print(f"\nlong rows ({r['batch']}, {r['dim']}, {r['seqlen']}) bf16: fwd {r['fwd_ms']:.3f} ms (unsplit "
          f"{r['unsplit_fwd_ms']:.3f}), fwd+bwd {r['fwd_bwd_ms']:.3f} ms; x mamba_ssm fwd "
          f"{r.get('speedup_fwd_vs_mamba_ssm', float('nan')):.2f}, fwd+bwd {r.get('speedup_fwd_bwd_vs_mamba_ssm', float('nan')):.2f}")
    print(f"packed rows: {packed['packed_fwd_bwd_ms']:.3f} ms vs padded {packed['padded_fwd_bwd_ms']:.3f} ms "
          f"({packed['speedup_packed_vs_padded']:.2f}x)")
    t = train_shape
    print(f"\ntraining shape ({t['batch']}, {t['dim']}, {t['seqlen']}) bf16: fwd {t['fwd_ms']:.3f} ms, "
          f"fwd+bwd {t['fwd_bwd_ms']:.3f} ms, {t['speedup_fwd_bwd_vs_reference']:.0f}x the reference at batch 8")
    print(f"\n{'decode batch':>12} {'us/step':>8} {'graph us':>8} {'GB/s':>7} {'of copy':>7} {'x ref':>7}")
    for r in decodes:
        print(f"{r['batch']:12d} {r['step_us']:8.1f} {r['graph_step_us']:8.1f} {r['graph_bandwidth_GBps']:7.0f} "
              f"{r['graph_fraction_of_copy_rate']:7.1%} {r['speedup_vs_reference']:7.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
