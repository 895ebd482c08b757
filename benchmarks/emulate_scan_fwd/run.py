"""The CUDA forward scan (csrc/kernels/selective_scan_fwd.cu) run on the CPU, against the float64
reference, for checking a change of that kernel where no GPU is at hand:

    python benchmarks/emulate_scan_fwd/run.py            # every case, float32, bfloat16 and float16
    python benchmarks/emulate_scan_fwd/run.py --quick    # a few cases

The kernel's source is copied with its __shared__ arrays and launch replaced by the stand-ins of
../emulate_scan_bwd/fake (one thread per CUDA thread, real barriers, warp shuffles and ballots, shared
memory poisoned with NaN before every block), compiled with g++ and run on fresh random inputs. out and
the last state are compared with ssm_tools.reference in float64, `saved` (the state entering each
chunk) with the CPU op's. The kernel's one inline PTX statement, an L2 prefetch (a hint), becomes a
no-op. Cases: tests/test_cuda.py's (its CASES and PACKED_CASES; its cases of the
forward split into segments, read from that test's parameters, each also with packed rows), and inputs
one element past a 16-byte boundary (the scalar loads). First, softplus_accuracy.cpp checks the kernels'
branch-free softplus against long double over float32 inputs in [-104, 104]. What it cannot see: timing-dependent races
beyond a barrier-ordered run, the GPU's float rounding and its exp2 (the CPU's are used). Exits 1 if any
case fails.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import pathlib
import subprocess
import sys
import tempfile

import torch

from ssm_tools.reference import selective_scan_ref

HERE = pathlib.Path(__file__).resolve().parent
BWD = HERE.parent / "emulate_scan_bwd"
_spec = importlib.util.spec_from_file_location("emulate_scan_bwd_run", BWD / "run.py")
bwd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bwd)  # shared: input generation, byte conversion, tolerances, test cases
OPS, KERNELS, ELEMENT, TOL, test_cuda, rel = bwd.OPS, bwd.KERNELS, bwd.ELEMENT, bwd.TOL, bwd.test_cuda, bwd.rel

# (batch, dim, seqlen, dstate, options, segment length (0: no split), misaligned)
CASES = [(b, d, l, n, o, 0, False) for b, d, l, n, o in test_cuda.CASES]
CASES += [(b, d, l, n, dict(o, starts=s), 0, False) for b, d, l, n, s, o in test_cuda.PACKED_CASES]
_split = next(m for m in test_cuda.test_forward_split_into_segments_matches_reference.pytestmark
              if m.name == "parametrize" and m.args[0] == "segment,case")
SPLIT_STARTS = [1, 63, 64, 255, 256, 300]  # and seqlen - 1, as in that test
for segment, (b, d, l, n, o) in _split.args[1]:
    CASES.append((b, d, l, n, o, segment, False))
    CASES.append((b, d, l, n, dict(o, starts=SPLIT_STARTS + [l - 1]), segment, False))
CASES += [(2, 6, 520, 8, dict(), 0, True), (2, 16, 520, 16, dict(groups=2), 0, True),
          (1, 3, 7, 5, dict(variable_B=False, variable_C=False, z=False), 0, True)]
QUICK = [c for c in CASES if c[:4] in [(2, 16, 2049, 16), (3, 16, 549, 16), (2, 8, 700, 40), (2, 6, 520, 8)]][:5]


SOFTPLUS_BOUND = 3e-7  # largest relative error allowed (5 ulp; __expf on the GPU adds more for large |v|)


def check_softplus(folder: pathlib.Path) -> bool:
    binary = folder / "softplus_accuracy"
    subprocess.run(["g++", "-std=c++20", "-O2", f"-I{BWD / 'fake'}", f"-I{KERNELS.parent}",
                    str(HERE / "softplus_accuracy.cpp"), "-o", str(binary)], check=True)
    return subprocess.run([str(binary), str(SOFTPLUS_BOUND)]).returncode == 0


def emulation_source(build: pathlib.Path) -> None:
    """Copies the kernel's files into build/kernels with what only a GPU runs replaced."""
    out = build / "kernels"
    out.mkdir(parents=True)
    for name in ("scan_common.cuh", "selective_scan_params.h"):
        (out / name).write_text((KERNELS / name).read_text())
    s = (KERNELS / "selective_scan_fwd.cu").read_text()
    # The L2 prefetch is a hint with no effect on results: nothing on the CPU.
    s = bwd.rewrite(s, 'asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr));', "(void)ptr;")
    s = bwd.rewrite(s, "extern __shared__ float4 smem4[];", "float4* smem4 = reinterpret_cast<float4*>(emu_dyn_smem);")
    s = bwd.rewrite(s, "__shared__ uint32_t s_starts[kTile / 32];",
                    "uint32_t* s_starts = reinterpret_cast<uint32_t*>(emu_static(0));")
    s = bwd.rewrite(s, "kernel<<<dim3(p.n_groups * blocks_per_group, p.batch, segments), kThreads, smem, stream>>>"
                    "(p, blocks_per_group);",
                    "emu_launch(kernel, dim3(p.n_groups * blocks_per_group, p.batch, segments), kThreads, smem, p, "
                    "blocks_per_group);")
    if "__shared__" in s or "asm" in s:
        sys.exit("emulate_scan_fwd: the kernel has GPU-only code run.py does not replace; update run.py")
    (out / "selective_scan_fwd.cu").write_text(s)


def build(folder: pathlib.Path) -> pathlib.Path:
    emulation_source(folder)
    binary = folder / "emulated_fwd"
    subprocess.run(["g++", "-std=c++20", "-O1", "-fno-strict-aliasing", "-pthread", f"-I{BWD / 'fake'}",
                    f"-I{folder}", "-x", "c++", str(folder / "kernels" / "selective_scan_fwd.cu"), "-x", "c++",
                    str(HERE / "harness.cpp"), "-o", str(binary)], check=True)
    return binary


def run_case(binary, batch, dim, seqlen, dstate, dtype, seed, options, segment, misaligned) -> float:
    """The largest relative error of out, last state and saved; inf if one is not finite."""
    o = dict(options)
    softplus = o.get("softplus", True)
    i, _, seq_idx = bwd.make_inputs(batch, dim, seqlen, dstate, dtype, seed, **o)
    up = {k: v.double() if v is not None else None for k, v in i.items()}
    ref_out, ref_last = selective_scan_ref(up["u"], up["delta"], up["A"], up["B"], up["C"], D=up["D"], z=up["z"],
                                           delta_bias=up["delta_bias"], delta_softplus=softplus,
                                           return_last_state=True, seq_idx=seq_idx)
    _, _, cpu_saved = OPS.selective_scan_fwd(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"],
                                             i["delta_bias"], softplus, seq_idx)
    with tempfile.TemporaryDirectory() as folder:
        d = pathlib.Path(folder)
        size, type_code = ELEMENT[dtype]
        flags = [o.get("variable_B", True), o.get("variable_C", True), i["D"] is not None, i["z"] is not None,
                 i["delta_bias"] is not None, softplus, seq_idx is not None]
        (d / "meta.txt").write_text(" ".join(map(str, [batch, dim, seqlen, dstate, o.get("groups", 1),
                                                       *map(int, flags), size, type_code, segment, int(misaligned)])))
        files = dict(u=i["u"], delta=i["delta"], B=i["B"], C=i["C"], A=i["A"], z=i["z"], D=i["D"],
                     bias=i["delta_bias"], seq=seq_idx)
        for name, t in files.items():
            if t is not None:
                (d / f"{name}.bin").write_bytes(bwd.raw_bytes(t))
        subprocess.run([str(binary), str(d)], check=True)
        out = bwd.read_back(d / "out_out.bin", i["u"], dtype)
        last = bwd.read_back(d / "out_last.bin", ref_last, torch.float32)
        saved = bwd.read_back(d / "out_saved.bin", cpu_saved, torch.float32)
    errors = dict(out=rel(out, ref_out), last=rel(last, ref_last), saved=rel(saved, cpu_saved))
    print(f"({batch}, {dim}, {seqlen}, {dstate}) {str(dtype)[6:]} seed {seed} segment={segment} "
          f"misaligned={misaligned} " + " ".join(f"{k}={v}" for k, v in options.items() if k != "starts")
          + f" packed={'starts' in options}: " + " ".join(f"{k} {e:.1e}" for k, e in errors.items()), flush=True)
    return max(errors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few cases instead of all")
    parser.add_argument("--seed", type=int, default=0, help="added to each case's seed")
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        sys.stdout.flush()
        if not check_softplus(pathlib.Path(folder)):
            failures.append("softplus")
        binary = build(pathlib.Path(folder))
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for n, (batch, dim, seqlen, dstate, options, segment, misaligned) in enumerate(
                    QUICK if args.quick else CASES):
                worst = run_case(binary, batch, dim, seqlen, dstate, dtype, args.seed + n, options, segment,
                                 misaligned)
                if not worst < TOL[dtype]:
                    failures.append((batch, dim, seqlen, dstate, options, segment, misaligned, str(dtype), worst))
    print(f"{len(failures)} failed: {failures}" if failures else "all cases within tolerance")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
