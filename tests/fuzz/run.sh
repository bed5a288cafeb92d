#!/usr/bin/env bash
# Fuzzes the checkpoint loaders, LoRA adapters and image/video inputs for a bounded time and reports what it found;
# exits non-zero on any finding.
#
#   tests/fuzz/run.sh [SECONDS_PER_LIBFUZZER_TARGET [PYTHON_SECONDS]]     (defaults: 20 and 60)
#
# 1. libFuzzer (clang -fsanitize=fuzzer,address,undefined) over the C JSON reader, the safetensors parser, the
#    sharded-index loader and the LoRA load path (fuzz_lora.c: an adapter file through cvx_st_open and
#    cvx_transformer_lora_load on a tiny random transformer, then forward / fuse / unfuse / delete), from the seed
#    corpora in tests/fuzz/corpus/. Skipped, with a message, where clang cannot build libFuzzer targets. CLANG=...
#    picks the compiler. The LoRA target links the whole C core and its BLAS (scipy-openblas32, found by PYTHON).
# 2. Three mutational loops in Python, PYTHON_SECONDS split between them (half for configs, a quarter each for LoRA
#    and for images/videos), each case run in a worker subprocess with a per-case timeout; anything but a clean
#    ValueError / OSError / NotImplementedError / OutOfMemoryError is a finding, and so is memory a case leaves:
#    fuzz_configs.py (mutated config.json / model_index.json / scheduler and tokenizer configs of the tiny fixture
#    pipeline, loaded and run), fuzz_lora.py (mutated LoRA adapter files and metadata through load_lora_weights,
#    set_adapters, a step, fuse_lora, unfuse_lora, unload_lora_weights) and fuzz_media.py (odd arrays, PIL images
#    and mutated image / video files through the image-to-video, video-to-video and Fun-Control pipelines).
#    PYTHON=... picks the interpreter (it must import cogvideo_c).
#
# Inputs that crash are kept under build/fuzz/artifacts/; the corpora grown while fuzzing under build/fuzz/work/.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LF_SECONDS=${1:-20}
PY_SECONDS=${2:-60}
CLANG=${CLANG:-clang}
PYTHON=${PYTHON:-python3}
BUILD=$ROOT/build/fuzz
mkdir -p "$BUILD/artifacts" "$BUILD/work"
# The targets rewrite one file per input: tmpfs makes that ~30x faster than a disk-backed /tmp.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then SCRATCH=$(mktemp -d /dev/shm/cvx_fuzz.XXXXXX); else SCRATCH=$(mktemp -d); fi
trap 'rm -rf "$SCRATCH"' EXIT
findings=0

# mem.c: the loader pins its mappings through the memory manager (a no-op without CUDA)
SRCS="$ROOT/csrc/io/json.c $ROOT/csrc/io/safetensors.c $ROOT/csrc/core/status.c $ROOT/csrc/core/dtype.c $ROOT/csrc/mem/mem.c"
if command -v "$CLANG" >/dev/null 2>&1 &&
    echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
    "$CLANG" -x c -fsanitize=fuzzer - -o "$SCRATCH/probe" >/dev/null 2>&1; then
    for target in json safetensors index lora; do
        bin=$BUILD/fuzz_$target
        if [ "$target" = lora ]; then
            # the whole C core (the transformer, its CPU ops and their BLAS), built as tests/c/Makefile builds it
            if ! blas_inc=$("$PYTHON" -c "import scipy_openblas32 as s; print(s.get_include_dir())" 2>/dev/null) ||
                ! blas_lib=$("$PYTHON" -c "import scipy_openblas32 as s; print(s.get_lib_dir())" 2>/dev/null); then
                echo "libFuzzer lora: skipped ('$PYTHON' cannot import scipy_openblas32: pip install scipy-openblas32)"
                continue
            fi
            # shellcheck disable=SC2054 # -Wl,-rpath,DIR is one argument
            extra=(-ffp-contract=off -fno-trapping-math -fno-math-errno -pthread -fopenmp -DCVX_HAVE_OPENBLAS
                -I"$blas_inc" "$ROOT"/csrc/core/*.c "$ROOT"/csrc/mem/*.c "$ROOT"/csrc/io/*.c "$ROOT"/csrc/models/*.c
                "$ROOT"/csrc/ops/cpu/*.c -L"$blas_lib" -Wl,-rpath,"$blas_lib" -lscipy_openblas)
            srcs=()
        else
            extra=()
            read -r -a srcs <<<"$SRCS"
        fi
        if ! "$CLANG" -g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Wall -Wextra \
            -Werror "$ROOT/tests/fuzz/fuzz_$target.c" "${srcs[@]}" "${extra[@]}" -o "$bin" -lm; then
            echo "libFuzzer $target: BUILD FAILED"
            findings=$((findings + 1))
            continue
        fi
        mkdir -p "$BUILD/work/$target" "$SCRATCH/$target"
        log=$BUILD/$target.log
        # one OpenMP thread: the LoRA target's forwards are tiny, and a thread pool per input only slows it down
        TMPDIR=$SCRATCH/$target OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1 "$bin" -max_total_time="$LF_SECONDS" -print_final_stats=1 \
            -timeout=10 -rss_limit_mb=2048 -dict="$ROOT/tests/fuzz/loaders.dict" \
            -artifact_prefix="$BUILD/artifacts/$target-" "$BUILD/work/$target" "$ROOT/tests/fuzz/corpus/$target" \
            >"$log" 2>&1
        rc=$?
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        if [ "$rc" -eq 0 ]; then
            echo "libFuzzer $target: ${execs:-?} executions in ${LF_SECONDS} s, 0 crashes"
        else
            echo "libFuzzer $target: CRASH (exit $rc) after ${execs:-?} executions; input and log:"
            grep -E "^==[0-9]+==ERROR|SUMMARY|Test unit written|runtime error" "$log" | head -5
            echo "  full log: $log"
            findings=$((findings + 1))
        fi
    done
else
    echo "libFuzzer: skipped ('$CLANG' missing or without -fsanitize=fuzzer); only the Python loop runs"
fi

# half of the Python time for configs, a quarter each for LoRA files and images/videos (at least 1 s each)
for part in "configs 2" "lora 4" "media 4"; do
    read -r name share <<<"$part"
    seconds=$((PY_SECONDS / share > 0 ? PY_SECONDS / share : 1))
    TMPDIR=$SCRATCH "$PYTHON" "$ROOT/tests/fuzz/fuzz_$name.py" --seconds "$seconds"
    rc=$?
    [ "$rc" -ne 0 ] && findings=$((findings + 1))
done

if [ "$findings" -ne 0 ]; then
    echo "fuzz: FAILED ($findings target(s) with findings)"
    exit 1
fi
echo "fuzz: 0 findings"
