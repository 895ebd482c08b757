#!/usr/bin/env bash
# Fetches the selective-scan CUDA sources of mamba_ssm (the public state of the art the CUDA benchmark
# compares against) from its source distribution, through pip by package name, into $MAMBA_SSM_SRC
# (default build/mamba_ssm_selective_scan, git-ignored). Run it where pip can download; then
# `MAMBA_SSM_SRC=<that folder> bash benchmarks/run_gpu.sh` builds and times mamba_ssm's kernels beside
# ours, also on a GPU machine without network access if the folder is copied there.
# Nothing of mamba_ssm is committed; its BSD licence travels with the sources.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${MAMBA_SSM_VERSION:-2.3.2.post1}
dest=${MAMBA_SSM_SRC:-build/mamba_ssm_selective_scan}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mamba-ssm==$VERSION" -d "$tmp"
tar xzf "$tmp"/mamba_ssm-*.tar.gz -C "$tmp"
rm -rf "$dest" && mkdir -p "$dest"
cp "$tmp"/mamba_ssm-*/csrc/selective_scan/* "$tmp"/mamba_ssm-*/LICENSE "$dest"/
echo "$VERSION" > "$dest/VERSION"
echo "mamba_ssm $VERSION selective_scan sources in $dest"
