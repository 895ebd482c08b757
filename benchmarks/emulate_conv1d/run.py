"""The causal conv1d kernels (csrc/kernels/causal_conv1d.cu: the forward, the channel-first backward and
the token-major one, with the second pass that sums dweight/dbias) run on the CPU against the float64
reference, for checking a change of them where no GPU is at hand:

    python benchmarks/emulate_conv1d/run.py            # every case (under a minute on 2 cores)
    python benchmarks/emulate_conv1d/run.py --quick    # the bf16 cases
    python benchmarks/emulate_conv1d/run.py --base <(git show main:csrc/kernels/causal_conv1d.cu)

The kernel's source is compiled with g++ against benchmarks/emulate_scan_bwd/fake (one std::thread per
CUDA thread, blocks one after another, shuffles through an exchange array, shared memory poisoned with
NaN before every block), its launches rewritten to emu_launch. Inputs are fresh random tensors (seed =
case index) inside NaN guards (a read before or past a tensor poisons the result; the guards must
still be NaN after the call: no stray writes); outputs start as NaN (every element must be written).
out, dx, dweight and dbias are compared with autograd through ssm_tools.reference.causal_conv1d_ref in
float64 on the same (upcast) inputs, as tests/test_mamba_block_ops.py does; the token-major dx must
equal the channel-first one bit for bit (the GPU test test_conv_bwd_cat_is_conv_bwd_then_transpose_cat
asks that); with --base, out and dx must also have the bits of another version of the kernels (a
change meant to keep the arithmetic). Errors are max |got - ref| / max |ref|. What it cannot see: the
GPU's rounding (the CPU's expf stands in for __expf), memory ordering, timing. Exits 1 if any case
fails.
"""
from __future__ import annotations

import argparse
import ctypes
import pathlib
import re
import sys
import tempfile

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/: _emulate
from _emulate import compile_library  # noqa: E402
from ssm_tools.reference import causal_conv1d_ref

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TYPE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# out and dx are rounded to the dtype once (half an ulp: at most 2^-8 of the value in bf16, 2^-11 in
# fp16); dweight and dbias are float32 sums of float32 products of the same upcast inputs.
TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 1e-3}
GRAD_TOL = 2e-5
GUARD = 64  # NaN elements before and after every tensor
SEQLENS = (216, 640, 1000, 37)


def split_top(text: str) -> list[str]:
    """text split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "(<[{"
        depth -= ch in ")>]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in parts + [text[start:]]]


def launch_to_emu(m: re.Match) -> str:
    grid, threads, smem = split_top(m.group(2))[:3]
    return f"emu_launch({m.group(1)}, {grid}, {threads}, {smem}, {m.group(3)});"


def shared_to_emu(slots):
    return lambda m: f"auto& {m.group(2)} = *reinterpret_cast<{m.group(1)}(*){m.group(3)}>(emu_static({next(slots)}));"


def emulation_source(text: str) -> str:
    text, n = re.subn(r"(\w+(?:<[^;]*?>)?)<<<(.*?)>>>\((.*?)\);", launch_to_emu, text, flags=re.S)
    text = re.sub(r"__shared__ (\w+) (\w+)((?:\[[^\]]*\])+);", shared_to_emu(iter(range(8))), text)
    if n < 4 or "<<<" in text or "__shared__" in text or "asm" in text:
        sys.exit("emulate_conv1d: the kernel has GPU-only code run.py does not replace; update run.py")
    return text


def build(tmp: pathlib.Path, text: str, plant: str | None, name: str) -> ctypes.CDLL:
    if plant:
        old, new = plant.split("=>")
        if text.count(old) != 1:
            sys.exit(f"emulate_conv1d: --plant: {old!r} occurs {text.count(old)} times in the kernel")
        text = text.replace(old, new)
    dll = compile_library(tmp, name, emulation_source(text), HERE / "harness.cpp")
    i, v, ll = ctypes.c_int, ctypes.c_void_p, ctypes.c_longlong
    dll.emu_conv_partials.restype = ll
    dll.emu_conv_partials.argtypes = [i, i, i, i, ll, v, i]
    dll.emu_conv_fwd.argtypes = [i] * 5 + [v] * 5 + [i]
    dll.emu_conv_bwd.argtypes = [i] * 5 + [v] * 6 + [ll] + [v] * 3 + [i]
    return dll


def ptr(t):
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def guarded(shape, dtype, offset, fill=None):
    """(tensor of `shape` at `offset` elements past a NaN guard, its storage)."""
    n = torch.Size(shape).numel()
    store = torch.full((n + 2 * GUARD + 1,), float("nan"), dtype=dtype)
    t = store[GUARD + offset:GUARD + offset + n].view(shape)
    if fill is not None:
        t.copy_(fill)
    return t, store


def guards_intact(store, t, offset):
    n = t.numel()
    return bool(store[:GUARD + offset].isnan().all() and store[GUARD + offset + n:].isnan().all())


def rel_err(got, ref):
    got = got.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def seq_index(gen, batch, seqlen):
    """Packed rows: row 0 with sequences of 1, 2 and 3 positions and starts at and around the chunk
    boundaries, the others random starts (one row of one sequence where batch > 2)."""
    out = torch.zeros(batch, seqlen, dtype=torch.int32)
    for b in range(batch):
        if b == 0:
            starts = [s for s in (1, 2, 4, 7, 8, 15, 16, 17, 31, 32, 33, 127, 128, 130, 256, 299) if s < seqlen]
        elif b == 2:
            starts = []
        else:
            starts = (torch.randperm(seqlen - 1, generator=gen)[:max(1, seqlen // 10)] + 1).tolist()
        label = 0
        for t in range(seqlen):
            if t in starts:
                label += 1 + int(torch.randint(0, 3, (), generator=gen))
            out[b, t] = label % 4
    return out


def inputs(case, gen):
    """The case's tensors (x and dout inside NaN guards) and their guards' storage."""
    batch, dim, seqlen, width, dtype, packed, offset, silu, bias, extra_cols = case
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=gen) * scale  # noqa: E731
    shape = (batch, dim, seqlen)
    x, xs = guarded(shape, dtype, offset, rnd(*shape).to(dtype))
    dout, ds = guarded(shape, dtype, offset, rnd(*shape).to(dtype))
    w = rnd(dim, width, scale=0.5)
    b = rnd(dim) if bias else None
    seq_idx = seq_index(gen, batch, seqlen) if packed else None
    return {"x": x, "dout": dout, "w": w, "b": b, "seq_idx": seq_idx}, [(xs, x), (ds, dout)]


def kernel_outputs(lib, case, t_in):
    """out, dx, dweight, dbias (and the token-major dx, dweight, dbias) of the emulated kernels, the
    launchers' error codes, and the guards of the outputs."""
    batch, dim, seqlen, width, dtype, packed, offset, silu, bias, extra_cols = case
    shape, t, seq_idx = (batch, dim, seqlen), TYPE[dtype], t_in["seq_idx"]
    args = (batch, dim, seqlen, width, int(silu), ptr(t_in["x"]), ptr(t_in["w"]), ptr(t_in["b"]), ptr(seq_idx))
    nan_like = lambda *s: torch.full(s, float("nan"))  # noqa: E731
    o = {"out": guarded(shape, dtype, offset), "dx": guarded(shape, dtype, offset)}
    o["dw"], o["db"] = nan_like(dim, width), nan_like(dim) if bias else None
    errs = [lib.emu_conv_fwd(*args, ptr(o["out"][0]), t)]
    partials = nan_like(lib.emu_conv_partials(batch, dim, seqlen, width, 0, ptr(seq_idx), t))
    errs.append(lib.emu_conv_bwd(*args, ptr(t_in["dout"]), ptr(o["dx"][0]), 0, ptr(o["dw"]), ptr(o["db"]),
                                 ptr(partials), t))
    if extra_cols is not None:  # the token-major backward into columns [0, dim) of dim + extra_cols
        cols = dim + extra_cols
        o["tm dx"] = guarded((batch, seqlen, cols), dtype, 0)
        o["tm dw"], o["tm db"] = nan_like(dim, width), nan_like(dim) if bias else None
        partials = nan_like(lib.emu_conv_partials(batch, dim, seqlen, width, cols, ptr(seq_idx), t))
        errs.append(lib.emu_conv_bwd(*args, ptr(t_in["dout"]), ptr(o["tm dx"][0]), cols, ptr(o["tm dw"]),
                                     ptr(o["tm db"]), ptr(partials), t))
    return o, errs


def run_case(lib, case, gen, base=None):
    """Forward and backward of one case: (failed, errors by output, notes). base: a library of another
    version of the kernels, whose out and dx must have the same bits."""
    batch, dim, seqlen, width, dtype, packed, offset, silu, bias, extra_cols = case
    t_in, in_guards = inputs(case, gen)
    o, errs = kernel_outputs(lib, case, t_in)
    (out, out_store), (dx, dx_store) = o["out"], o["dx"]
    up = [v.double().requires_grad_() for v in (t_in["x"], t_in["w"], t_in["b"]) if v is not None]
    ref = causal_conv1d_ref(up[0], up[1], up[2] if bias else None, silu, seq_idx=t_in["seq_idx"])
    ref_grads = torch.autograd.grad(ref, up, t_in["dout"].double())
    e = {"out": rel_err(out, ref.detach()), "dx": rel_err(dx, ref_grads[0]), "dw": rel_err(o["dw"], ref_grads[1])}
    if bias:
        e["db"] = rel_err(o["db"], ref_grads[2])
    ok = (all(v == 0 for v in errs) and e["out"] < TOL[dtype] and e["dx"] < TOL[dtype]
          and e["dw"] < GRAD_TOL and e.get("db", 0) < GRAD_TOL
          and all(guards_intact(s, v, offset) for s, v in in_guards + [(out_store, out), (dx_store, dx)]))
    notes = []
    if extra_cols is not None:
        dxt, dxt_store = o["tm dx"]
        same = torch.equal(dxt[..., :dim], dx.transpose(1, 2))
        untouched = bool(dxt[..., dim:].isnan().all()) and guards_intact(dxt_store, dxt, 0)
        e["tm dw"] = rel_err(o["tm dw"], ref_grads[1])
        if bias:
            e["tm db"] = rel_err(o["tm db"], ref_grads[2])
        ok = ok and same and untouched and e["tm dw"] < GRAD_TOL and e.get("tm db", 0) < GRAD_TOL
        notes.append(f"token-major dx {'==' if same else '!='} channel-first" + ("" if untouched else ", other columns written"))
    if base is not None:
        b, _ = kernel_outputs(base, case, t_in)
        part = {"out": lambda t: t, "dx": lambda t: t, "tm dx": lambda t: t[..., :dim]}
        same = [k for k in part if k in o and torch.equal(part[k](o[k][0]), part[k](b[k][0]))]
        ok = ok and len(same) == len([k for k in ("out", "dx", "tm dx") if k in o])
        e["dw vs base"] = rel_err(o["dw"], b["dw"].double())
        notes.append(f"{', '.join(same) or 'nothing'} equal to base")
    return not ok, e, notes


def cases(dtypes):
    """(batch, dim, seqlen, width, dtype, packed, offset, silu, bias, token-major extra columns or None)."""
    out = []
    for dtype in dtypes:
        for seqlen in SEQLENS:
            for width in (2, 3, 4):
                for packed in (False, True):
                    for offset in (0, 1):
                        i = len(out)
                        out.append((2, 3, seqlen, width, dtype, packed, offset, i % 3 != 2, i % 4 != 3, None))
        # Widths outside Mamba's: one tap, the widest; rows one position short of whole vectors.
        out += [(3, 2, 40, 1, dtype, False, 0, True, True, None), (2, 3, 216, 8, dtype, True, 0, True, True, None),
                (2, 3, 7, 4, dtype, False, 0, True, True, None), (2, 3, 15, 4, dtype, True, 0, True, True, None),
                (2, 2, 33, 8, dtype, False, 1, False, True, None), (1, 2, 5, 4, dtype, True, 0, True, True, None)]
        # The folded step's rows (batch 8 x 216 and 32 x 640, a few channels): one block a channel, and
        # several that loop.
        out += [(8, 4, 216, 4, dtype, False, 0, True, True, None), (32, 2, 640, 4, dtype, False, 0, True, True, None)]
        # Token-major: tests/test_mamba_block_ops.py's cat shapes (35 rows loop over 32 batch blocks).
        out += [(2, 70, 45, 4, dtype, False, 0, True, True, 70), (3, 64, 216, 4, dtype, True, 0, True, True, 72),
                (35, 10, 20, 8, dtype, False, 0, True, True, 0), (2, 33, 100, 3, dtype, True, 0, True, False, 5),
                (2, 8, 216, 2, dtype, False, 0, False, True, 8)]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="bfloat16 cases only")
    parser.add_argument("--plant", help="'OLD=>NEW': replace the one occurrence of OLD in the kernel's source first "
                                        "(a planted bug, to see the emulator catch it)")
    parser.add_argument("--base", type=pathlib.Path,
                        help="another version of causal_conv1d.cu (e.g. `git show main:csrc/kernels/causal_conv1d.cu`): "
                             "its out and dx must have the same bits (value equality: -0 == 0)")
    args = parser.parse_args()
    dtypes = (torch.bfloat16,) if args.quick else (torch.float32, torch.bfloat16, torch.float16)
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(pathlib.Path(tmp), (ROOT / "csrc/kernels/causal_conv1d.cu").read_text(), args.plant, "emu")
        base = build(pathlib.Path(tmp), args.base.read_text(), None, "base") if args.base else None
        failures, worst = 0, {}
        for seed, case in enumerate(cases(dtypes)):
            failed, errs, notes = run_case(lib, case, torch.Generator().manual_seed(seed), base)
            failures += failed
            batch, dim, seqlen, width, dtype, packed, offset, silu, bias, extra = case
            for k, v in errs.items():
                worst[str(dtype)[6:], k] = max(worst.get((str(dtype)[6:], k), 0.0), v)
            print(f"({batch}, {dim}, {seqlen}) w{width} {str(dtype)[6:]}{' packed' if packed else ''}"
                  f"{' unaligned' if offset else ''}{'' if silu else ' no-silu'}{'' if bias else ' no-bias'}"
                  f"{'' if extra is None else f' +tm({dim + extra} cols)'} seed {seed}: "
                  + " ".join(f"{k} {v:.1e}" for k, v in errs.items()) + "".join(", " + n for n in notes)
                  + ("  FAIL" if failed else ""), flush=True)
        print("worst: " + ", ".join(f"{d} {k} {v:.1e}" for (d, k), v in worst.items()))
        print(f"{failures} failures")
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
