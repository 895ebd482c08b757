"""Benchmark of the causal depthwise conv1d kernels (forward and backward, SiLU and bias, width 4,
channel-first (batch, dim, seqlen)) against their memory floor and mamba_ssm's causal_conv1d.

Per shape and dtype, with CUDA events (warm-up, median of repeats):
  - fwd_us / bwd_us: torch.ops.ssm_tools.causal_conv1d_{fwd,bwd} (the backward call includes its
    allocations and its second, dweight/dbias pass);
  - the memory floor: the bytes each call must move (forward: x read, out written; backward: x and
    dout read, dx written; seq_idx read where packed) at the H200's nominal 4.2e12 B/s
    (floor_*_us, x_floor_*) and at this device's measured copy rate (of_copy_rate_*);
  - mamba_ssm's causal_conv1d_cuda (benchmarks/mamba_ssm_baseline.py: installed, or built from
    $CAUSAL_CONV1D_PKG), called as its Python wrapper does (allocations included), with the relative
    difference of its outputs and gradients from ours; speedup_*_vs_mamba_ssm = its time / ours.
Shapes: the paper-scale training step's conv (batch 128, dim 1536 = 2 x 768, seqlen 216: 48 forward
and 24 backward calls a step, step_conv_ms), the kernel benchmark's 8 x 2048 x 2048 and 1 x 5120 x
16384, and the training shape with packed rows (seq_idx: random sequence lengths 1..216 filling each
row; mamba_ssm's channel-first kernel takes no seq_idx).
Also transpose_cat of one (batch, dim, seqlen) part at the first shape (what the step's in_proj
gradient does per part) against its floor and PyTorch's own transpose copy, x.mT.contiguous().
Writes JSON (with the exact command) to --out. --device cpu is a dry run of the same code on the CPU
ops with perf_counter timing (use tiny --shapes).
"""
import argparse
import json
import statistics
import time

import torch

import ssm_tools._C  # noqa: F401  (registers the ops)
import bench_selective_scan_cuda
import mamba_ssm_baseline
from _results import write_result

OPS = torch.ops.ssm_tools
NOMINAL_BYTES_PER_S = 4.2e12  # the H200's HBM3e rate
WIDTH = 4
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def time_us(fn, device, warmup, reps):
    if device == "cuda":
        return 1e3 * bench_selective_scan_cuda.time_ms(fn, warmup, reps)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def packed_seq_idx(batch, seqlen, device, gen):
    """Rows filled with sequences of random lengths 1..seqlen (the last one cut at the row's end)."""
    lengths = torch.randint(1, seqlen + 1, (batch * seqlen,), generator=gen)
    starts = torch.zeros(batch, seqlen, dtype=torch.int32)
    for b in range(batch):
        ends = lengths[b * seqlen:(b + 1) * seqlen].cumsum(0)
        starts[b, ends[ends < seqlen]] = 1
    return starts.cumsum(1, dtype=torch.int32).to(device)


def rel_diff(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def mamba_ssm_calls(ext, x, w, b, dout):
    """mamba_ssm's forward and backward as causal_conv1d's cpp_functions call them."""
    def fwd():
        out = torch.empty_like(x)
        ext.causal_conv1d_fwd(x, w, b, None, None, out, None, True)
        return out

    def bwd():
        dx, dw, db = torch.empty_like(x), torch.zeros_like(w), torch.zeros_like(b)
        ext.causal_conv1d_bwd(x, w, b, dout, None, None, None, dx, dw, db, None, True)
        return dx, dw, db
    return fwd, bwd


def bench_case(shape, dtype, packed, args, copy_rate, mamba, gen):
    batch, dim, seqlen = shape
    dev = args.device
    x = torch.randn(shape, generator=gen).to(dev, dtype)
    dout = torch.randn(shape, generator=gen).to(dev, dtype)
    w = (0.5 * torch.randn(dim, WIDTH, generator=gen)).to(dev)
    b = torch.randn(dim, generator=gen).to(dev)
    seq_idx = packed_seq_idx(batch, seqlen, dev, gen) if packed else None
    act_bytes = x.numel() * x.element_size()
    q_bytes = seq_idx.numel() * 4 if packed else 0
    row = dict(batch=batch, dim=dim, seqlen=seqlen, width=WIDTH, dtype=str(dtype).removeprefix("torch."),
               packed=packed, fwd_bytes=2 * act_bytes + q_bytes, bwd_bytes=3 * act_bytes + q_bytes)
    row["fwd_us"] = time_us(lambda: OPS.causal_conv1d_fwd(x, w, b, True, seq_idx), dev, 3, args.reps)
    row["bwd_us"] = time_us(lambda: OPS.causal_conv1d_bwd(dout, x, w, b, True, seq_idx), dev, 3, args.reps)
    for kind in ("fwd", "bwd"):
        row[f"floor_{kind}_us"] = 1e6 * row[f"{kind}_bytes"] / NOMINAL_BYTES_PER_S
        row[f"x_floor_{kind}"] = row[f"{kind}_us"] / row[f"floor_{kind}_us"]
        if copy_rate:
            row[f"of_copy_rate_{kind}"] = row[f"{kind}_bytes"] / (row[f"{kind}_us"] * 1e-6) / copy_rate
    if mamba is not None and not packed:
        fwd, bwd = mamba_ssm_calls(mamba, x, w, b, dout)
        ours = [OPS.causal_conv1d_fwd(x, w, b, True), *OPS.causal_conv1d_bwd(dout, x, w, b, True)]
        row["mamba_ssm_rel_diff"] = {name: rel_diff(a, t) for name, a, t in
                                     zip(("out", "dx", "dweight", "dbias"), ours, [fwd(), *bwd()])}
        row["mamba_ssm_fwd_us"] = time_us(fwd, dev, 3, args.reps)
        row["mamba_ssm_bwd_us"] = time_us(bwd, dev, 3, args.reps)
        for kind in ("fwd", "bwd"):
            row[f"speedup_{kind}_vs_mamba_ssm"] = row[f"mamba_ssm_{kind}_us"] / row[f"{kind}_us"]
    return row


def bench_transpose(shape, dtype, args, gen):
    x = torch.randn(shape, generator=gen).to(args.device, dtype)
    assert torch.equal(OPS.transpose_cat([x]), x.mT.contiguous())
    row = dict(batch=shape[0], dim=shape[1], seqlen=shape[2], dtype=str(dtype).removeprefix("torch."),
               bytes=2 * x.numel() * x.element_size())
    row["us"] = time_us(lambda: OPS.transpose_cat([x]), args.device, 3, args.reps)
    row["torch_us"] = time_us(lambda: x.mT.contiguous(), args.device, 3, args.reps)
    row["floor_us"] = 1e6 * row["bytes"] / NOMINAL_BYTES_PER_S
    row["x_floor"] = row["us"] / row["floor_us"]
    row["speedup_vs_torch"] = row["torch_us"] / row["us"]
    return row


def parse_shape(text):
    try:
        batch, dim, seqlen = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxDIMxSEQLEN, got {text!r}") from None
    if min(batch, dim, seqlen) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return batch, dim, seqlen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bench_conv1d_cuda.json")
    ap.add_argument("--shapes", type=parse_shape, nargs="+", default=[(128, 1536, 216), (8, 2048, 2048), (1, 5120, 16384)],
                    help="BATCHxDIMxSEQLEN; the first is the training step's (also timed packed and in every dtype)")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bfloat16", "float32"],
                    help="dtypes of the first shape (the others run in the first dtype)")
    ap.add_argument("--reps", type=int, default=50, help="timed repeats of each call")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run on the CPU ops")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU (use --device cpu for a dry run)")
    gen = torch.Generator().manual_seed(args.seed)
    copy_rate = bench_selective_scan_cuda.copy_rate_bytes_per_s(args.reps) if args.device == "cuda" else None
    mamba = mamba_ssm_baseline.load_causal_conv1d() if args.device == "cuda" else None
    print(f"mamba_ssm causal_conv1d: {'loaded' if mamba else 'not available (set CAUSAL_CONV1D_PKG)'}", flush=True)
    first, dtype0 = args.shapes[0], DTYPES[args.dtypes[0]]
    cases = [(first, DTYPES[d], False) for d in args.dtypes] + [(first, dtype0, True)]
    cases += [(s, dtype0, False) for s in args.shapes[1:]]
    rows = []
    for shape, dtype, packed in cases:
        rows.append(bench_case(shape, dtype, packed, args, copy_rate, mamba, gen))
        print(json.dumps(rows[-1]), flush=True)
    transpose = bench_transpose(first, dtype0, args, gen)
    print(json.dumps(transpose), flush=True)
    train = rows[0]
    write_result(args.out, dict(
        device_kind=args.device, seed=args.seed, reps=args.reps,
        copy_rate_GBps=copy_rate / 1e9 if copy_rate else None, nominal_GBps=NOMINAL_BYTES_PER_S / 1e9,
        mamba_ssm_causal_conv1d=mamba is not None,
        step_conv_ms=(48 * train["fwd_us"] + 24 * train["bwd_us"]) / 1e3,
        step_conv_floor_ms=(48 * train["floor_fwd_us"] + 24 * train["floor_bwd_us"]) / 1e3,
        notes=("step_conv_*: the first shape's 48 forward (24 + 24 recomputed in the backward) and 24 backward "
               "calls of one training step of the 24-layer model. Floors count each activation read or "
               "written once; neighbouring taps come from L1."),
        cases=rows, transpose=transpose))
    print(f"\n{'shape':>18} {'dtype':9} {'packed':6} {'fwd us':>8} {'x floor':>7} {'bwd us':>8} {'x floor':>7} "
          f"{'x mamba fwd':>11} {'bwd':>6}")
    for r in rows:
        print(f"{r['batch']:>5}x{r['dim']}x{r['seqlen']:<6} {r['dtype']:9} {str(r['packed']):6} {r['fwd_us']:8.1f} "
              f"{r['x_floor_fwd']:7.2f} {r['bwd_us']:8.1f} {r['x_floor_bwd']:7.2f} "
              f"{r.get('speedup_fwd_vs_mamba_ssm', float('nan')):11.2f} {r.get('speedup_bwd_vs_mamba_ssm', float('nan')):6.2f}")
    t = transpose
    print(f"transpose_cat one part: {t['us']:.1f} us, {t['x_floor']:.2f}x its floor, {t['speedup_vs_torch']:.2f}x "
          f"x.mT.contiguous()")


if __name__ == "__main__":
    main()
