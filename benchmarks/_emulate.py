"""What the CPU emulators of the CUDA kernels (benchmarks/emulate_state_update/run.py,
benchmarks/emulate_conv1d/run.py) share: a kernel source whose launches are rewritten to emu_launch,
compiled with its harness by g++ against the fake CUDA runtime of benchmarks/emulate_scan_bwd/fake
(one std::thread per CUDA thread) into a shared library, loaded with ctypes."""
from __future__ import annotations

import ctypes
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAKE = ROOT / "benchmarks/emulate_scan_bwd/fake"


def compile_library(tmp: pathlib.Path, name: str, kernels: str, harness: pathlib.Path) -> ctypes.CDLL:
    """tmp/name.so from `kernels` (.cu text, launches already emu_launch) and the harness source;
    __launch_bounds__ is dropped (g++ has no such attribute)."""
    source = tmp / f"{name}.cpp"
    source.write_text("#include <cuda_runtime.h>\n#undef __launch_bounds__\n#define __launch_bounds__(...)\n"
                      + kernels + "\n" + harness.read_text())
    lib = tmp / f"{name}.so"
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", f"-I{FAKE}", f"-I{ROOT / 'csrc'}",
                    str(source), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))
