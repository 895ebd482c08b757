#!/usr/bin/env bash
# Fetches the sources of mamba_ssm (the public state of the art the CUDA benchmarks compare against)
# and of causal-conv1d (its conv kernel) as the source distributions of the two packages, by name
# through pip, into .device-carry/ (git-ignored): run it where pip can download, and copy the folder
# to a GPU machine without network access to build them there.
#   .device-carry/mamba_ssm_selective_scan  the selective-scan CUDA sources (MAMBA_SSM_SRC, kernel benchmark)
#   .device-carry/mamba_ssm_sdist           the whole package: Python modules + csrc (MAMBA_SSM_PKG)
#   .device-carry/causal_conv1d_sdist       the whole causal-conv1d package (CAUSAL_CONV1D_PKG)
# benchmarks/mamba_ssm_baseline.py builds the extensions there. Nothing of theirs is committed; their
# BSD licences travel with the sources. DEST overrides .device-carry (e.g. the main checkout's).
# PYTHON must have torch (pip runs the packages' setup.py for their metadata; the CUDA builds are
# skipped here).
set -euo pipefail
cd "$(dirname "$0")/.."
MAMBA_VERSION=${MAMBA_SSM_VERSION:-2.3.2.post1}
CONV_VERSION=${CAUSAL_CONV1D_VERSION:-1.5.2}
PYTHON=${PYTHON:-.venv/bin/python}
DEST=${DEST:-.device-carry}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE "$PYTHON" -m pip download -q --no-deps \
  --no-binary :all: --no-build-isolation "mamba-ssm==$MAMBA_VERSION" "causal-conv1d==$CONV_VERSION" -d "$tmp"
mkdir -p "$DEST"
for pkg in mamba_ssm causal_conv1d; do
  tar xzf "$tmp/$pkg"-*.tar.gz -C "$tmp"
  rm -rf "${DEST:?}/${pkg}_sdist"
  mv "$(find "$tmp" -maxdepth 1 -type d -name "$pkg-*")" "$DEST/${pkg}_sdist"
done
echo "$MAMBA_VERSION" > "$DEST/mamba_ssm_sdist/VERSION"
echo "$CONV_VERSION" > "$DEST/causal_conv1d_sdist/VERSION"
scan=$DEST/mamba_ssm_selective_scan
rm -rf "$scan" && mkdir -p "$scan"
cp "$DEST"/mamba_ssm_sdist/csrc/selective_scan/* "$DEST"/mamba_ssm_sdist/LICENSE "$scan"/
echo "$MAMBA_VERSION" > "$scan/VERSION"
echo "mamba_ssm $MAMBA_VERSION and causal-conv1d $CONV_VERSION sources in $DEST"
