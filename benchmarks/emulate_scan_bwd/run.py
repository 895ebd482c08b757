"""The CUDA backward scan (csrc/kernels/selective_scan_bwd.cu) run on the CPU, against the float64
reference, for checking a change of that kernel where no GPU is at hand:

    python benchmarks/emulate_scan_bwd/run.py            # every case, float32 and bfloat16
    python benchmarks/emulate_scan_bwd/run.py --quick    # three cases

The kernel's source is copied with its inline PTX, __shared__ arrays and launch replaced by the
stand-ins of fake/cuda_runtime.h (one thread per CUDA thread, real barriers and warp shuffles, shared
memory poisoned with NaN before every block, cp.async landing at its wait), compiled with g++ and run
on fresh random inputs; the gradients are compared with autograd through ssm_tools.reference in
float64. What it cannot see: timing-dependent races beyond those orders, the GPU's float rounding
(it uses the CPU's), 128-bit atomics (the scalar path runs). Exits 1 if any case fails.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch

from ssm_tools.reference import selective_scan_ref

importlib.import_module("ssm_tools._C")  # registers the CPU ops (the forward gives `saved`)
HERE = pathlib.Path(__file__).resolve().parent
KERNELS = HERE.parents[1] / "csrc" / "kernels"
OPS = torch.ops.ssm_tools
ELEMENT = {torch.float32: (4, 0), torch.bfloat16: (2, 1), torch.float16: (2, 2)}  # size, ScanInputType
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# tests/test_cuda.py's cases (chunk boundaries, aligned and unaligned rows, partial blocks of 8 dims,
# constant B/C, large dstate; its packed rows with their sequence starts), and one without dlast_state.
sys.path.insert(0, str(HERE.parents[1] / "tests"))
test_cuda = importlib.import_module("test_cuda")
CASES = list(test_cuda.CASES) + [(b, d, l, n, dict(o, starts=starts))
                                  for b, d, l, n, starts, o in test_cuda.PACKED_CASES]
CASES.append((2, 8, 300, 16, dict(dlast=False)))
QUICK = [CASES[8], CASES[11], CASES[len(test_cuda.CASES) + 1]]


def rewrite(text: str, old: str, new: str) -> str:
    if old not in text:
        sys.exit(f"emulate_scan_bwd: the kernel no longer contains {old!r}; update run.py")
    return text.replace(old, new)


def replace_body(text: str, signature: str, body: str) -> str:
    """`text` with the body of the function that `signature` opens (up to its closing brace at the
    start of a line) replaced by `body`."""
    if signature not in text:
        sys.exit(f"emulate_scan_bwd: no {signature!r} in the kernel's headers; update run.py")
    start = text.index(signature) + len(signature)
    return text[:start] + "\n" + body + text[text.index("\n}\n", start):]


def emulation_source(build: pathlib.Path) -> None:
    """Copies the kernel's files into build/kernels with what only a GPU runs replaced."""
    out = build / "kernels"
    out.mkdir(parents=True)
    common = (KERNELS / "scan_common.cuh").read_text()
    source = "[off](int l) { return kDown ? l + off : l - off; }"
    common = replace_body(common, "float shfl_in_warp(float v, int off, bool& inside) {",
                          f"  return emu_shuffle(v, {source}, &inside);")
    common = replace_body(common, "void scan_step(float& a, float& b, int off) {",
                          f"  bool inside;\n  const float oa = emu_shuffle(a, {source}, &inside), ob = emu_shuffle(b, {source});\n"
                          "  if (inside) b = fmaf(a, ob, b), a = a * oa;")
    (out / "scan_common.cuh").write_text(common)
    row = rewrite((KERNELS / "scan_row.cuh").read_text(), 'asm volatile("" : "+l"(ptr));', "")
    (out / "scan_row.cuh").write_text(row)
    (out / "selective_scan_params.h").write_text((KERNELS / "selective_scan_params.h").read_text())
    s = (KERNELS / "selective_scan_bwd.cu").read_text()
    cp_async = 'asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\\n" ::"r"(dst), "l"(gmem), "r"(src_bytes)'
    s = rewrite(s, cp_async + ' : "memory");',
                "emu_cp_async(smem, gmem, src_bytes);\n  (void)dst;")
    s = rewrite(s, 'asm volatile("cp.async.wait_all;\\n" ::: "memory");', "emu_cp_async_wait_all();")
    s = rewrite(s, 'asm("" : "+f"(dtu[i]));', "")
    s = rewrite(s, 'asm("" : "+r"(starts));', "")
    s = rewrite(s, 'asm("" : "+l"(red_global));', "")
    s = rewrite(s, 'asm("" : "+l"(next_global));', "")
    s = rewrite(s, "extern __shared__ float s_rows[];", "float* s_rows = emu_dyn_smem;")
    slots = iter(range(8))
    s = re.sub(r"__shared__ (\w+) (\w+)\[.*\];",
               lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(emu_static({next(slots)}));", s)
    s = re.sub(r"kernel<<<(.*), kThreads, smem, stream>>>\(p, blocks_per_group\);",
               r"emu_launch(kernel, \1, kThreads, smem, p, blocks_per_group);", s)
    if "__shared__" in s or "asm" in s or "emu_launch" not in s:
        sys.exit("emulate_scan_bwd: the kernel has GPU-only code run.py does not replace; update run.py")
    (out / "selective_scan_bwd.cu").write_text(s)


def build(folder: pathlib.Path) -> pathlib.Path:
    emulation_source(folder)
    binary = folder / "emulated_bwd"
    subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", f"-I{HERE / 'fake'}", f"-I{folder}", "-x", "c++",
                    str(folder / "kernels" / "selective_scan_bwd.cu"), "-x", "c++", str(HERE / "harness.cpp"),
                    "-o", str(binary)], check=True)
    return binary


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return (t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t).numpy().tobytes()


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """The relative error of `got` against `want` (float64 norms); inf where `got` is not finite."""
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def read_back(path: pathlib.Path, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    data = path.read_bytes()
    if dtype in (torch.bfloat16, torch.float16):
        return torch.from_numpy(np.frombuffer(data, dtype=np.int16).copy()).view(dtype).reshape(like.shape)
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy()).reshape(like.shape)


def make_inputs(batch, dim, seqlen, dstate, dtype, seed, groups=1, variable_B=True, variable_C=True, D=True, z=True,
                delta_bias=True, softplus=True, A_scale=1.0, starts=None):
    """Fresh random inputs of one case (as tests/test_cuda.py makes them, on the CPU) from `seed`, a
    generator for what the caller draws next, and seq_idx (None unless `starts`)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dt)

    inputs = dict(
        u=rnd(batch, dim, seqlen),
        delta=rnd(batch, dim, seqlen, scale=0.5, shift=-1.0) if softplus else
        (torch.rand(batch, dim, seqlen, generator=g) * 0.2 + 0.01).to(dtype),
        A=-(torch.rand(dim, dstate, generator=g) + 0.5) * A_scale,
        B=rnd(batch, groups, dstate, seqlen) if variable_B else rnd(dim, dstate, dt=torch.float32),
        C=rnd(batch, groups, dstate, seqlen) if variable_C else rnd(dim, dstate, dt=torch.float32),
        D=rnd(dim, dt=torch.float32) if D else None,
        z=rnd(batch, dim, seqlen) if z else None,
        delta_bias=(rnd(dim, dt=torch.float32, scale=0.3) if softplus else torch.rand(dim, generator=g) * 0.1)
        if delta_bias else None,
    )
    seq_idx = None
    if starts is not None:  # row 0 starts sequences at `starts`, the other rows at random positions
        seq_idx = torch.zeros(batch, seqlen, dtype=torch.int32)
        for b in range(batch):
            row = starts if b == 0 else torch.randint(1, seqlen, (max(1, seqlen // 97),), generator=g).tolist()
            for t in sorted(t for t in set(row) if t < seqlen):
                seq_idx[b, t:] = (seq_idx[b, t - 1] + 1) % 3
    return inputs, g, seq_idx


def run_case(binary, batch, dim, seqlen, dstate, dtype, seed, groups=1, variable_B=True, variable_C=True, D=True,
             z=True, delta_bias=True, softplus=True, A_scale=1.0, dlast=True, starts=None) -> float:
    """The largest relative error (norm) of any gradient against float64; inf if one is not finite."""
    inputs, g, seq_idx = make_inputs(batch, dim, seqlen, dstate, dtype, seed, groups, variable_B, variable_C, D, z,
                                     delta_bias, softplus, A_scale, starts)
    i = inputs
    out, last, saved = OPS.selective_scan_fwd(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"],
                                              i["delta_bias"], softplus, seq_idx)
    dout = torch.randn(out.shape, generator=g).to(dtype)
    dlast_state = torch.randn(last.shape, generator=g) if dlast else None
    names = [k for k, v in inputs.items() if v is not None]
    up = {k: v.double().requires_grad_() if v is not None else None for k, v in inputs.items()}
    ref_out, ref_last = selective_scan_ref(up["u"], up["delta"], up["A"], up["B"], up["C"], D=up["D"], z=up["z"],
                                           delta_bias=up["delta_bias"], delta_softplus=softplus,
                                           return_last_state=True, seq_idx=seq_idx)
    loss = (ref_out * dout.double()).sum() + ((ref_last * dlast_state.double()).sum() if dlast else 0)
    want = dict(zip(names, torch.autograd.grad(loss, [up[k] for k in names])))

    with tempfile.TemporaryDirectory() as folder:
        d = pathlib.Path(folder)
        size, type_code = ELEMENT[dtype]
        flags = [variable_B, variable_C, D, z, delta_bias, softplus, dlast, starts is not None]
        (d / "meta.txt").write_text(" ".join(map(str, [batch, dim, seqlen, dstate, groups, *map(int, flags),
                                                       size, type_code])))
        files = dict(u=i["u"], delta=i["delta"], dout=dout, B=i["B"], C=i["C"], A=i["A"], saved=saved,
                     z=i["z"], D=i["D"], bias=i["delta_bias"], dlast=dlast_state, seq=seq_idx)
        for name, t in files.items():
            if t is not None:
                (d / f"{name}.bin").write_bytes(raw_bytes(t))
        subprocess.run([str(binary), str(d)], check=True)
        got = dict(u=read_back(d / "out_du.bin", i["u"], dtype), delta=read_back(d / "out_ddelta.bin", i["u"], dtype),
                   A=read_back(d / "out_dA.bin", i["A"], torch.float32),
                   B=read_back(d / "out_dB.bin", i["B"], torch.float32),
                   C=read_back(d / "out_dC.bin", i["C"], torch.float32))
        if D:
            got["D"] = read_back(d / "out_dD.bin", i["D"], torch.float32)
        if z:
            got["z"] = read_back(d / "out_dz.bin", i["z"], dtype)
        if delta_bias:
            got["delta_bias"] = read_back(d / "out_dbias.bin", i["delta_bias"], torch.float32)
    errors = {name: rel(got[name], want[name]) for name in names}
    print(f"({batch}, {dim}, {seqlen}, {dstate}) {str(dtype)[6:]} seed {seed} "
          f"groups={groups} variable_B={variable_B} variable_C={variable_C} D={D} z={z} delta_bias={delta_bias} "
          f"softplus={softplus} A_scale={A_scale} dlast={dlast} packed={starts is not None}: "
          + " ".join(f"d{k} {e:.1e}" for k, e in errors.items()), flush=True)
    return max(errors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three cases instead of all")
    parser.add_argument("--seed", type=int, default=0, help="added to each case's seed")
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        binary = build(pathlib.Path(folder))
        for dtype in (torch.float32, torch.bfloat16):
            for n, (batch, dim, seqlen, dstate, options) in enumerate(QUICK if args.quick else CASES):
                worst = run_case(binary, batch, dim, seqlen, dstate, dtype, args.seed + n, **options)
                if not worst < TOL[dtype]:
                    failures.append((batch, dim, seqlen, dstate, options, str(dtype), worst))
    print(f"{len(failures)} failed: {failures}" if failures else "all cases within tolerance")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
