"""The decode's state update kernels (csrc/kernels/selective_state_update.cu: mamba_state_update's lean
and general kernels, selective_state_update's) run on the CPU against the float64 reference, for
checking a change of them where no GPU is at hand:

    python benchmarks/emulate_state_update/run.py

The kernel's source is compiled with g++ against benchmarks/emulate_scan_bwd/fake (one std::thread per
CUDA thread, warp shuffles through an exchange array between warp barriers), its launches rewritten to
emu_launch; inputs are fresh random tensors (seed = case index), the state and y compared with
ssm_tools.reference as tests/test_mamba_block_ops.py and tests/test_cuda.py do. Each case also names
the kernel path its inputs select. What it cannot see: the GPU's rounding (the CPU's expf / exp2f stand
in for the fast-math ones), memory ordering, timing. Exits 1 if any case fails.
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
from ssm_tools.reference import mamba_state_update_ref, selective_state_update_ref

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TYPE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# (batch, dim, dstate, dt_rank, xdbl_offset): tests/test_mamba_block_ops.py's contiguous-xdbl cases but
# batch 1,000 (a minute of threads here), and a strided one (element loads everywhere).
MAMBA_CASES = [(1, 1536, 16, 48, 0), (100, 1536, 16, 48, 0), (3, 7, 32, 40, 0), (4, 9, 8, 4, 0),
               (2, 6, 12, 96, 0), (3, 5, 128, 8, 0), (2, 6, 16, 48, 1), (2, 6, 16, 48, 4), (5, 12, 7, 5, "strided")]
# (batch, dim, dstate, groups): tests/test_cuda.py's decode cases.
SSU_CASES = [(1, 3, 16, 1), (7, 130, 5, 2), (8192, 64, 16, 4), (3, 8, 256, 1), (2, 4, 40, 1)]


def build(tmp: pathlib.Path) -> ctypes.CDLL:
    text = (ROOT / "csrc/kernels/selective_state_update.cu").read_text()
    launch = re.compile(r"(\w+(?:<[^;]*?>)?)<<<(\w+), (\w+), (\w+), \w+>>>\(([^;]*)\);")
    text, n = launch.subn(r"emu_launch(\1, \2, \3, \4, \5);", text)
    if n < 2:
        sys.exit("emulate_state_update: the kernel's launches no longer match; update run.py")
    return compile_library(tmp, "emu", text, HERE / "harness.cpp")


def ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def rel_err(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def mamba_path(batch, dim, dstate, dt_rank, aligned):
    team = 1
    while team * 4 < dstate and team < 32:
        team *= 2
    vec = aligned and dstate % 4 == 0 and dt_rank % 4 == 0
    return "lean" if vec and 2 <= team <= 8 else "general, " + ("runs" if vec else "elements")


def run_mamba(lib, case, dtype, gen):
    batch, dim, dstate, dt_rank, offset = case
    width = dt_rank + 2 * dstate
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=gen) * scale  # noqa: E731
    if offset == "strided":
        xdbl = rnd(batch, width + 3).to(dtype)[:, :width]
    else:
        xdbl = rnd(batch * width + offset).to(dtype)[offset:].view(batch, width)
    z = rnd(batch, 2 * dim).to(dtype)[:, dim:]
    x = rnd(batch, dim).to(dtype)
    dt_w, dt_b = rnd(dim, dt_rank, scale=dt_rank ** -0.5), rnd(dim) - 2
    A_log, D, state = rnd(dim, dstate, scale=0.5), rnd(dim), rnd(batch, dim, dstate)
    ref_state = state.double()
    y = torch.empty(batch, dim, dtype=dtype)
    err = lib.emu_mamba_state_update(batch, dim, dstate, dt_rank, ptr(state), ptr(x), ptr(xdbl),
                                     ctypes.c_longlong(xdbl.stride(0)), ptr(z), ctypes.c_longlong(z.stride(0)),
                                     ptr(dt_w), ptr(dt_b), ptr(A_log), ptr(D), ptr(y), TYPE[dtype])
    ref = mamba_state_update_ref(ref_state, *(t.double() for t in (x, xdbl, dt_w, dt_b, A_log, D, z)))
    aligned = offset != "strided" and (xdbl.data_ptr() % (4 * xdbl.element_size()) == 0) and xdbl.stride(0) % 4 == 0
    return err, rel_err(y, ref), rel_err(state, ref_state), mamba_path(batch, dim, dstate, dt_rank, aligned)


def run_ssu(lib, case, dtype, gen):
    batch, dim, dstate, groups = case
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x, dt, z = (rnd(batch, dim).to(dtype) for _ in range(3))
    B, C = (rnd(batch, groups, dstate).to(dtype) for _ in range(2))
    A, D, bias = -(torch.rand(dim, dstate, generator=gen) + 0.5), rnd(dim), rnd(dim) * 0.3
    state = rnd(batch, dim, dstate)
    ref_state = state.double()
    y = torch.empty(batch, dim, dtype=dtype)
    err = lib.emu_selective_state_update(batch, dim, dstate, groups, 1, ptr(state), ptr(x), ptr(dt), ptr(z), ptr(B),
                                         ptr(C), ptr(A), ptr(D), ptr(bias), ptr(y), TYPE[dtype])
    ref = selective_state_update_ref(ref_state, x.double(), dt.double(), A.double(), B.double(), C.double(),
                                     D.double(), z.double(), bias.double(), True)
    return err, rel_err(y, ref), rel_err(state, ref_state), "runs" if dstate % 4 == 0 else "elements"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="only cases of at most 10,000 rows (the batch-100 and batch-8192 ones take most of the time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(pathlib.Path(tmp))
        failures = 0
        seed = 0
        for name, cases, fn in (("mamba_state_update", MAMBA_CASES, run_mamba),
                                ("selective_state_update", SSU_CASES, run_ssu)):
            for case in cases:
                if args.small and case[0] * case[1] > 10_000:
                    seed += 3
                    continue
                for dtype in (torch.float32, torch.bfloat16, torch.float16):
                    gen = torch.Generator().manual_seed(seed)
                    err, ey, es, path = fn(lib, case, dtype, gen)
                    ok = err == 0 and ey < TOL[dtype] and es < 1e-5
                    failures += not ok
                    print(f"{name} {case} {str(dtype)[6:]} seed {seed} ({path}): y {ey:.1e} state {es:.1e}"
                          f"{'' if ok else '  FAIL'}", flush=True)
                    seed += 1
        print(f"{failures} failures")
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
