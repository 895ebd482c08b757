"""mamba_ssm's selective-scan CUDA kernel, the public state of the art, for side-by-side timing.

`load()` returns mamba_ssm's `selective_scan_cuda` extension: the installed one if mamba_ssm is
installed, else one built (sm_90, JIT through torch.utils.cpp_extension) from the sources in
$MAMBA_SSM_SRC (benchmarks/fetch_mamba_ssm.sh puts them in .device-carry/), else None.
`fwd` / `fwd_bwd` call it like mamba_ssm's SelectiveScanFn does, on the benchmark's input dict.
"""
import os
from pathlib import Path


def load(verbose=False):
    try:
        import selective_scan_cuda  # noqa: F401  (an installed mamba_ssm)
        return selective_scan_cuda
    except ImportError:
        pass
    src = os.environ.get("MAMBA_SSM_SRC")
    if not src or not Path(src).is_dir():
        return None
    from torch.utils.cpp_extension import load as build

    src = Path(src).resolve()
    arch = os.environ.get("MAMBA_SSM_ARCH", "90")
    # The flags of mamba_ssm's setup.py, for one architecture.
    cuda_flags = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                  "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                  "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                  "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
                  f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    sources = [str(src / "selective_scan.cpp")] + sorted(str(p) for p in src.glob("*.cu"))
    build_dir = Path(__file__).resolve().parents[1] / "build" / "mamba_ssm"  # git-ignored
    build_dir.mkdir(parents=True, exist_ok=True)
    return build("selective_scan_cuda", sources, extra_cflags=["-O3", "-std=c++17"],
                 extra_cuda_cflags=cuda_flags, build_directory=str(build_dir), verbose=verbose)


def version():
    src = os.environ.get("MAMBA_SSM_SRC")
    try:
        import mamba_ssm
        return mamba_ssm.__version__
    except ImportError:
        return (Path(src) / "VERSION").read_text().strip() if src and (Path(src) / "VERSION").is_file() else None


def fwd(ext, i):
    return ext.fwd(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], True)


def fwd_bwd(ext, i, dout):
    out, x, *rest = fwd(ext, i)
    return ext.bwd(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], dout, x, out,
                   None, True, False)
