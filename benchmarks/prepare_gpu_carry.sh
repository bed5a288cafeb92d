#!/usr/bin/env bash
# Downloads, on this machine, the wheels that benchmarks/gpu_check.sh installs on the lent GPU machine (which has
# Python 3.12, torch, transformers, accelerate and most of diffusers' dependencies, but no diffusers and no network:
# /work/.library/device/KINDS.md lists its packages). They go to .gpu-carry/wheels (ignored by git); the device
# call names ".gpu-carry" in `carry`. Run it from anywhere, in the checkout the device call sends:
#
#     bash benchmarks/prepare_gpu_carry.sh [PYTHON]      # PYTHON: the pip to download with (default python3)
#
# What is carried and why:
#   diffusers 0.42.1          the reference side of bench_gpu.py (pure Python)
#   importlib_metadata, zipp  diffusers' requirements missing from the device's list (installed only if absent)
#   scipy-openblas32          our build and run dependency (cp312 manylinux wheel)
#   setuptools, wheel, numpy  our build dependencies: the device has them; installed only if absent
# Every other requirement of diffusers (filelock, huggingface-hub>=1.32, numpy, regex, requests, safetensors>=0.8,
# Pillow) is on the device's list; the script prints each wheel's Requires-Dist so a new one is seen here.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-python3}"
DEST="$ROOT/.gpu-carry/wheels"
LIMIT_MIB=64 # the device call's working-tree limit (tree + carried paths)

# one pinned version of each: two versions of one package stop the whole install there
WHEELS=(
    diffusers==0.42.1
    importlib_metadata==8.7.0
    zipp==4.1.2
    scipy-openblas32==0.3.34.481.3
    setuptools==84.2.1
    wheel==0.48.0
    numpy==2.4.6
)

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"

echo "wheels in $DEST:"
for w in "$DEST"/*.whl; do
    printf '  %-90s %6s KiB\n' "$(basename "$w")" "$(($(stat -c %s "$w") / 1024))"
    "$PY" - "$w" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
    reqs = [r for r in reqs if "extra ==" not in r]
    if reqs:
        print("      requires: " + "; ".join(reqs))
EOF
done
n=$(find "$DEST" -name "*.whl" | wc -l)
[ "$n" -eq "${#WHEELS[@]}" ] || { echo "expected ${#WHEELS[@]} wheels, got $n" >&2; exit 1; }

# what the device call would send: tracked + untracked-not-ignored files, plus the carried folder
cd "$ROOT"
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
carry_bytes=$(du -sb .gpu-carry | cut -f1)
total_mib=$(((tree_bytes + carry_bytes) / 1048576))
echo "working tree $((tree_bytes / 1048576)) MiB + .gpu-carry $((carry_bytes / 1048576)) MiB = $total_mib MiB (limit $LIMIT_MIB MiB)"
[ "$total_mib" -lt "$LIMIT_MIB" ] || { echo "over the device call's $LIMIT_MIB MiB limit" >&2; exit 1; }
git check-ignore -q .gpu-carry || { echo ".gpu-carry is not ignored by git: it would travel twice" >&2; exit 1; }
echo "ready: run the device call with carry [\".gpu-carry\"] (see benchmarks/gpu_check.sh)"
