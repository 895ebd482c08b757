#!/usr/bin/env bash
# Fetches the selective-scan CUDA sources of mamba_ssm (the public state of the art the CUDA benchmark
# compares against) from its PyPI source distribution into .device-carry/ (git-ignored), so that a GPU
# machine without network access can build them: run this here, then name .device-carry in the device
# call's carry and set MAMBA_SSM_SRC=.device-carry/mamba_ssm_selective_scan for the benchmark.
# Nothing of mamba_ssm is committed; its BSD licence travels with the sources.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${MAMBA_SSM_VERSION:-2.3.2.post1}
dest=.device-carry/mamba_ssm_selective_scan
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mamba-ssm==$VERSION" -d "$tmp" 2>/dev/null ||
  curl -sSfL "$(curl -sSf https://pypi.org/pypi/mamba-ssm/json | python3 -c 'import json, sys
print(next(u["url"] for u in json.load(sys.stdin)["releases"][sys.argv[1]] if u["packagetype"] == "sdist"))' "$VERSION")" \
    -o "$tmp/mamba_ssm-$VERSION.tar.gz"
tar xzf "$tmp"/mamba_ssm-*.tar.gz -C "$tmp"
rm -rf "$dest" && mkdir -p "$dest"
cp "$tmp"/mamba_ssm-*/csrc/selective_scan/* "$tmp"/mamba_ssm-*/LICENSE "$dest"/
echo "$VERSION" > "$dest/VERSION"
echo "mamba_ssm $VERSION selective_scan sources in $dest"
