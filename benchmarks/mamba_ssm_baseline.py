"""mamba_ssm, the public state of the art, for side-by-side timing.

`load()` returns mamba_ssm's `selective_scan_cuda` extension: the installed one if mamba_ssm is
installed, else one built (sm_90, JIT through torch.utils.cpp_extension) from the sources in
$MAMBA_SSM_SRC (benchmarks/fetch_mamba_ssm.sh puts them in .device-carry/), else None.
`fwd` / `fwd_bwd` call it like mamba_ssm's SelectiveScanFn does, on the benchmark's input dict.
`lm_head_model()` returns mamba_ssm's MambaLMHeadModel and MambaConfig classes, from the installed
package or from the source distributions in $MAMBA_SSM_PKG and $CAUSAL_CONV1D_PKG with both CUDA
extensions (selective_scan_cuda, causal_conv1d_cuda) built from them.
Builds go to $MAMBA_SSM_BUILD_ROOT (default build/ here), so that a warm machine reuses them.
"""
import importlib
import os
import sys
import types
from pathlib import Path

# The flags of mamba_ssm's and causal-conv1d's setup.py, for one architecture.
_CUDA_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
               "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"]


def _build(name, src, verbose):
    from torch.utils.cpp_extension import load as build

    arch = os.environ.get("MAMBA_SSM_ARCH", "90")
    sources = [str(p) for p in sorted(src.glob("*.cpp"))] + sorted(str(p) for p in src.glob("*.cu"))
    root = Path(os.environ.get("MAMBA_SSM_BUILD_ROOT", Path(__file__).resolve().parents[1] / "build"))  # git-ignored
    build_dir = root / ("mamba_ssm" if name == "selective_scan_cuda" else name)
    build_dir.mkdir(parents=True, exist_ok=True)
    return build(name, sources, extra_cflags=["-O3", "-std=c++17"],
                 extra_cuda_cflags=_CUDA_FLAGS + [f"-gencode=arch=compute_{arch},code=sm_{arch}"],
                 build_directory=str(build_dir), verbose=verbose)


def _extension(name, src, verbose):
    """The installed extension module `name`, else one built from the sources in the folder `src`,
    else None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    if not src or not Path(src).is_dir():
        return None
    return _build(name, Path(src).resolve(), verbose)


def load(verbose=False):
    return _extension("selective_scan_cuda", os.environ.get("MAMBA_SSM_SRC"), verbose)


def load_causal_conv1d(verbose=False):
    """causal-conv1d's CUDA extension: installed, or built from $CAUSAL_CONV1D_PKG/csrc; else None."""
    pkg = os.environ.get("CAUSAL_CONV1D_PKG")
    return _extension("causal_conv1d_cuda", pkg and Path(pkg) / "csrc", verbose)


def lm_head_model(verbose=False):
    """(MambaLMHeadModel, MambaConfig) of mamba_ssm with its CUDA kernels, or None where they are not
    to be had. From sources, the two extensions are registered under the module names the packages
    import, and mamba_ssm's package __init__ is skipped (it imports Mamba3, whose kernels need
    packages the benchmark does not)."""
    try:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        return MambaLMHeadModel, MambaConfig
    except ImportError:
        pass
    pkg, conv_pkg = os.environ.get("MAMBA_SSM_PKG"), os.environ.get("CAUSAL_CONV1D_PKG")
    if not pkg or not conv_pkg:
        return None
    scan, conv = load(verbose), load_causal_conv1d(verbose)
    if scan is None or conv is None:
        return None
    sys.modules["selective_scan_cuda"], sys.modules["causal_conv1d_cuda"] = scan, conv
    sys.path[:0] = [str(Path(conv_pkg).resolve())]
    package = types.ModuleType("mamba_ssm")
    package.__path__ = [str(Path(pkg).resolve() / "mamba_ssm")]
    package.__version__ = (Path(pkg) / "VERSION").read_text().strip()
    sys.modules["mamba_ssm"] = package
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    return MambaLMHeadModel, MambaConfig


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
