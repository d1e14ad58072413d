#!/usr/bin/env bash
# Builds .gpu-kit/ (git-ignored) on a machine with pip and network, for bench/gpu_check.sh on a GPU machine that
# has python3 with torch, timm, pandas, ... but neither Snakemake nor jsonschema, and no Fashion-MNIST:
#   .gpu-kit/wheels/         Snakemake and jsonschema (this venv's versions) with their dependencies, as
#                            wheels for CPython 3.12 on x86-64 Linux, less those such an image already has
#   .gpu-kit/fashion-mnist/  the first 20,000 training and 2,000 test images of Fashion-MNIST, as IDX files
#
#   bash bench/gpu_kit.sh            # about 25 MB; then carry .gpu-kit with the working tree
set -eu
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KIT=$ROOT/.gpu-kit
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || PY=python3
TARGET="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64"
# on the GPU image already (/work/.library/device/KINDS.md lists its packages): not carried, not shadowed
PRESENT="attrs certifi charset_normalizer idna jinja2 markupsafe packaging psutil pyyaml requests tabulate
         typing_extensions urllib3 wrapt"

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

rm -rf "$KIT/wheels"
mkdir -p "$KIT/wheels"
# pip wheel: some dependencies (connection_pool) are source only; they build here into pure-Python wheels
"$PY" -m pip wheel -q -w "$KIT/wheels" "snakemake==$(version snakemake)" "jsonschema==$(version jsonschema)"
cd "$KIT/wheels"
for wheel in *.whl; do
    name=${wheel%%-*}
    lower=$(echo "$name" | tr 'A-Z-' 'a-z_')
    case " $(echo $PRESENT) " in *" $lower "*) rm "$wheel"; continue ;; esac
    case "$wheel" in *-none-any.whl) continue ;; esac
    # compiled for this interpreter: fetch the same version built for CPython 3.12
    rest=${wheel#*-}
    rm "$wheel"
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps $TARGET -d . "$name==${rest%%-*}"
done
cd "$ROOT"
"$PY" - "$KIT/fashion-mnist" <<'EOF'
"""The first images of Fashion-MNIST as gzipped IDX files (the format soupflow reads)."""
import gzip
import sys
from pathlib import Path

SOURCE = Path("/usr/share/datasets/fashion-mnist")
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for prefix, count in (("train", 20000), ("t10k", 2000)):
    for kind, item in (("images-idx3-ubyte", 784), ("labels-idx1-ubyte", 1)):
        raw = gzip.decompress((SOURCE / f"{prefix}-{kind}.gz").read_bytes())
        header = bytearray(raw[: 16 if item > 1 else 8])
        header[4:8] = count.to_bytes(4, "big")
        body = raw[len(header): len(header) + count * item]
        (out / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(bytes(header) + body, 6))
EOF
du -sh "$KIT/wheels" "$KIT/fashion-mnist"
