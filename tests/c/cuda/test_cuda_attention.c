/* The CUDA attention ops (ops/cuda/attention.cu) against their CPU twins (ops/cpu/attention.c) and against each
 * other: the flash kernels (tensor cores in F16 / BF16, SIMT in F32), the cuBLAS-tiled twin, and T5's biased
 * attention, at small and odd sizes (S = 1, 17, 100; head dims 5 .. 64; 1 .. 3 heads; batch 1 .. 2), which is what
 * the emulation runs in seconds. Also: the measuring pass sizes exactly what the real pass takes, scratch is given
 * back, bad arguments are refused with their message.
 *
 * With CVX_CUDA_TEST_BIG=1 (benchmarks/gpu_check.sh sets it on a real GPU) also the 2b size, S = 17,776, 30 heads,
 * hd 64: flash against the tiled twin and against double precision on a few rows of every head, with the times. */
#define _POSIX_C_SOURCE 200809L
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../../csrc/mem/arena.h"
#include "../../../csrc/ops/ops.h"
#include "cuda_test.h"

#define TOL_F32 1e-5
#define TOL_HALF 2e-2

static cvx_ctx CPU = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};
static const cvx_dtype DTYPES[] = {CVX_F32, CVX_F16, CVX_BF16};
#define NUM_DTYPES 3

static const char *dtype_name(cvx_dtype dt) { return dt == CVX_F16 ? "f16" : dt == CVX_BF16 ? "bf16" : "f32"; }
static int64_t cuda_live(void) { return stats(CVX_DEVICE_CUDA).allocated_bytes; }
static void to_host(float *host, const float *dev, int64_t n) { dev_download(host, dev, (size_t)n * sizeof(float)); }

typedef struct {
    int64_t B, S;
    int heads, hd;
} shape;

/* Flash and tiled attention against the CPU twin and each other, in every compute dtype; neither leaves a byte. */
static void test_attention_vs_cpu(void) {
    const shape shapes[] = {
        {1, 1, 1, 8},    {1, 17, 2, 16}, {2, 17, 3, 8}, {1, 100, 1, 64},
        {2, 100, 2, 16}, {1, 33, 2, 24}, {1, 17, 3, 5}, /* odd head dim: no 16-byte loads, zero padding inside the tile
                                                         */
        {2, 130, 1, 40}, /* two query tiles of the tensor-core kernel, a last key tile of 2 */
        {1, 20, 1, 136}, /* past the flash kernels' 128: the tiled fallback */
        {1, 300, 2, 64}, /* the CogVideoX head dim over 5 key tiles, 3 query tiles of 128 */
    };
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape sh = shapes[si];
        const int64_t n = sh.B * sh.S * sh.heads * sh.hd;
        const float scale = 1.0f / sqrtf((float)sh.hd);
        float *q = xmalloc((size_t)n * sizeof(float)), *k = xmalloc((size_t)n * sizeof(float));
        float *v = xmalloc((size_t)n * sizeof(float)), *ref = xmalloc((size_t)n * sizeof(float));
        float *got = xmalloc((size_t)n * sizeof(float)), *twin = xmalloc((size_t)n * sizeof(float));
        fill(q, n, 2.0f, 0.0f), fill(k, n, 2.0f, 0.1f), fill(v, n, 1.0f, 0.0f);
        CVX_EXPECT(cvx_attention(&CPU, q, k, v, sh.B, sh.S, sh.heads, sh.hd, scale, ref) == CVX_OK, "cpu attention: %s",
                   cvx_error_message());
        float *dq = dev_upload(q, n), *dk = dev_upload(k, n), *dv = dev_upload(v, n), *dout = dev_upload(NULL, n);
        for (int di = 0; di < NUM_DTYPES; di++) {
            cvx_ctx c = cuda_ctx(DTYPES[di]);
            const double tol = DTYPES[di] == CVX_F32 ? TOL_F32 : TOL_HALF;
            char what[128];
            const int64_t base = cuda_live();
            CVX_EXPECT(cvx_cuda_attention(&c, dq, dk, dv, sh.B, sh.S, sh.heads, sh.hd, scale, dout) == CVX_OK,
                       "flash: %s", cvx_error_message());
            to_host(got, dout, n);
            snprintf(what, sizeof what, "flash %s B %lld S %lld heads %d hd %d vs cpu", dtype_name(DTYPES[di]),
                     (long long)sh.B, (long long)sh.S, sh.heads, sh.hd);
            expect_rel(what, got, ref, n, tol);
            CVX_EXPECT(cuda_live() == base, "flash left %lld device bytes", (long long)(cuda_live() - base));

            CVX_EXPECT(cvx_cuda_attention_tiled(&c, dq, dk, dv, sh.B, sh.S, sh.heads, sh.hd, scale, dout) == CVX_OK,
                       "tiled: %s", cvx_error_message());
            to_host(twin, dout, n);
            snprintf(what, sizeof what, "tiled %s B %lld S %lld heads %d hd %d vs cpu", dtype_name(DTYPES[di]),
                     (long long)sh.B, (long long)sh.S, sh.heads, sh.hd);
            expect_rel(what, twin, ref, n, tol);
            CVX_EXPECT(cuda_live() == base, "tiled left %lld device bytes", (long long)(cuda_live() - base));
            snprintf(what, sizeof what, "flash %s vs tiled", dtype_name(DTYPES[di]));
            expect_rel(what, got, twin, n, tol);
        }
        cvx_mem_free(dq), cvx_mem_free(dk), cvx_mem_free(dv), cvx_mem_free(dout);
        free(q), free(k), free(v), free(ref), free(got), free(twin);
    }
}

/* T5's attention: bias and key mask, no scaling. Its scores are f32 in every compute dtype: q k^T past f16's range
 * stays finite and matches the CPU at the f32 tolerance. */
static void test_biased_vs_cpu(void) {
    const shape shapes[] = {{1, 1, 1, 8}, {2, 17, 3, 16}, {1, 40, 2, 64}, {2, 33, 1, 5}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape sh = shapes[si];
        const int64_t n = sh.B * sh.S * sh.heads * sh.hd, nb = (int64_t)sh.heads * sh.S * sh.S;
        for (int big = 0; big < 2; big++)
            for (int masked = 0; masked < 2; masked++) {
                /* big: |q|, |k| up to 300, so |q k^T| reaches ~1e5 * hd / 3: past f16's 65504 */
                const float amp = big ? 300.0f : 1.0f;
                float *q = xmalloc((size_t)n * sizeof(float)), *k = xmalloc((size_t)n * sizeof(float));
                float *v = xmalloc((size_t)n * sizeof(float)), *ref = xmalloc((size_t)n * sizeof(float));
                float *got = xmalloc((size_t)n * sizeof(float)), *bias = xmalloc((size_t)nb * sizeof(float));
                float *mask = xmalloc((size_t)(sh.B * sh.S) * sizeof(float));
                fill(q, n, amp, 0.0f), fill(k, n, amp, 0.0f), fill(v, n, 1.0f, 0.0f), fill(bias, nb, 3.0f, 0.0f);
                /* t5.c's mask: -FLT_MAX on padding. The last key of each batch item (never the only one) is
                 * padding, and past 34 keys also the first 33, so the flash kernel's first key tile of 32 has no
                 * key that counts */
                for (int64_t i = 0; i < sh.B * sh.S; i++) {
                    const int64_t j = i % sh.S;
                    mask[i] = (sh.S > 1 && j == sh.S - 1) || (sh.S > 34 && j < 33) ? -3.4028234663852886e38f : 0.0f;
                }
                const float *hmask = masked ? mask : NULL;
                CVX_EXPECT(cvx_biased_attention(&CPU, q, k, v, sh.B, sh.S, sh.heads, sh.hd, bias, hmask, ref) == CVX_OK,
                           "cpu biased attention: %s", cvx_error_message());
                float *dq = dev_upload(q, n), *dk = dev_upload(k, n), *dv = dev_upload(v, n);
                float *dout = dev_upload(NULL, n), *dbias = dev_upload(bias, nb);
                float *dmask = masked ? dev_upload(mask, sh.B * sh.S) : NULL;
                for (int di = 0; di < NUM_DTYPES; di++)
                    for (int tiled = 0; tiled < 2; tiled++) {
                        cvx_ctx c = cuda_ctx(DTYPES[di]);
                        const int64_t base = cuda_live();
                        const cvx_status st = tiled
                                                  ? cvx_cuda_biased_attention_tiled(&c, dq, dk, dv, sh.B, sh.S,
                                                                                    sh.heads, sh.hd, dbias, dmask, dout)
                                                  : cvx_cuda_biased_attention(&c, dq, dk, dv, sh.B, sh.S, sh.heads,
                                                                              sh.hd, dbias, dmask, dout);
                        CVX_EXPECT(st == CVX_OK, "biased: %s", cvx_error_message());
                        to_host(got, dout, n);
                        char what[128];
                        snprintf(what, sizeof what, "biased %s %s%s%s B %lld S %lld H %d kd %d vs cpu",
                                 tiled ? "tiled" : "flash", dtype_name(DTYPES[di]), big ? " big" : "",
                                 masked ? " masked" : "", (long long)sh.B, (long long)sh.S, sh.heads, sh.hd);
                        expect_rel(what, got, ref, n, TOL_F32);
                        CVX_EXPECT(cuda_live() == base, "%s left %lld device bytes", what,
                                   (long long)(cuda_live() - base));
                    }
                cvx_mem_free(dq), cvx_mem_free(dk), cvx_mem_free(dv), cvx_mem_free(dout), cvx_mem_free(dbias);
                cvx_mem_free(dmask);
                free(q), free(k), free(v), free(ref), free(got), free(bias), free(mask);
            }
    }
}

/* One op of the four on arena memory: 0 flash, 1 tiled, 2 biased flash, 3 biased tiled. */
static cvx_status run_op(int op, cvx_ctx *c, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                         int heads, int hd, const float *bias, float *out) {
    switch (op) {
    case 0: return cvx_cuda_attention(c, q, k, v, B, S, heads, hd, 0.25f, out);
    case 1: return cvx_cuda_attention_tiled(c, q, k, v, B, S, heads, hd, 0.25f, out);
    case 2: return cvx_cuda_biased_attention(c, q, k, v, B, S, heads, hd, bias, NULL, out);
    default: return cvx_cuda_biased_attention_tiled(c, q, k, v, B, S, heads, hd, bias, NULL, out);
    }
}

/* The measuring pass makes exactly the real pass's allocations: the tiled twin's scores [R, S] f32 (R = S here),
 * and in 16-bit compute also P [R, S], the block's q [R, hd] and the head's k and v [S, hd] in that type, rows
 * padded to 8 elements; the flash kernels take none. Run through a measuring arena, then a real arena reserved at
 * the measured peak: the peaks agree, the scratch is given back, and the measuring pass touched nothing (its
 * addresses are unbacked). */
static void test_measuring(void) {
    const int64_t B = 1, S = 17;
    const int heads = 2, hd = 16;
    const int64_t n = B * S * heads * hd, nb = heads * S * S;
    float *host = xmalloc((size_t)(n + nb) * sizeof(float)); /* q, k, v, then the bias */
    fill(host, n + nb, 1.0f, 0.0f);
    for (int di = 0; di < NUM_DTYPES; di++)
        for (int op = 0; op < 4; op++) {
            const int half = DTYPES[di] != CVX_F32 && op == 1;
            const size_t inputs = (size_t)(4 * n + nb) * sizeof(float);
            const size_t pad_s = (S + 7) / 8 * 8, pad_hd = (hd + 7) / 8 * 8;
            const size_t scratch = op % 2 ? S * S * 4 + (half ? S * pad_s * 2 + 3 * S * pad_hd * 2 : 0) : 0;
            size_t peaks[2] = {0, 0};
            for (int real = 0; real < 2; real++) {
                cvx_arena *arena = NULL;
                if (!CVX_EXPECT(cvx_arena_create(CVX_DEVICE_CUDA, !real, &arena) == CVX_OK, "arena: %s",
                                cvx_error_message()))
                    continue;
                if (real &&
                    !CVX_EXPECT(cvx_arena_reserve(arena, peaks[0]) == CVX_OK, "reserve: %s", cvx_error_message())) {
                    cvx_arena_destroy(arena);
                    continue;
                }
                cvx_ctx c = cuda_ctx(DTYPES[di]);
                c.arena = arena, c.measuring = !real;
                float *q = NULL, *k = NULL, *v = NULL, *out = NULL, *bias = NULL;
                CVX_EXPECT(cvx_ctx_alloc(&c, (size_t)n * sizeof(float), (void **)&q) == CVX_OK &&
                               cvx_ctx_alloc(&c, (size_t)n * sizeof(float), (void **)&k) == CVX_OK &&
                               cvx_ctx_alloc(&c, (size_t)n * sizeof(float), (void **)&v) == CVX_OK &&
                               cvx_ctx_alloc(&c, (size_t)n * sizeof(float), (void **)&out) == CVX_OK &&
                               cvx_ctx_alloc(&c, (size_t)nb * sizeof(float), (void **)&bias) == CVX_OK,
                           "inputs from the arena");
                if (real)
                    CVX_EXPECT(cvx_mem_copy(q, host, (size_t)n * sizeof(float)) == CVX_OK &&
                                   cvx_mem_copy(k, host, (size_t)n * sizeof(float)) == CVX_OK &&
                                   cvx_mem_copy(v, host, (size_t)n * sizeof(float)) == CVX_OK &&
                                   cvx_mem_copy(bias, host + n, (size_t)nb * sizeof(float)) == CVX_OK,
                               "inputs uploaded");
                const size_t in_use = cvx_arena_in_use(arena);
                const cvx_status st = run_op(op, &c, q, k, v, B, S, heads, hd, bias, out);
                CVX_EXPECT(st == CVX_OK, "op %d %s pass: %s", op, real ? "real" : "measuring", cvx_error_message());
                if (real) {
                    float first = NAN;
                    to_host(&first, out, 1); /* waits for the op */
                    CVX_EXPECT(isfinite(first), "op %d output %g", op, first);
                }
                CVX_EXPECT(cvx_arena_in_use(arena) == in_use, "op %d gave back its scratch: %zu in use, %zu before", op,
                           cvx_arena_in_use(arena), in_use);
                peaks[real] = cvx_arena_peak(arena);
                cvx_ctx_free(&c, bias), cvx_ctx_free(&c, out), cvx_ctx_free(&c, v), cvx_ctx_free(&c, k);
                cvx_ctx_free(&c, q);
                cvx_arena_destroy(arena);
            }
            printf("  measuring %s op %d: measured %zu, real %zu (inputs %zu + scratch %zu)\n", dtype_name(DTYPES[di]),
                   op, peaks[0], peaks[1], inputs, scratch);
            CVX_EXPECT(peaks[0] == peaks[1], "op %d %s: measured peak %zu, real peak %zu", op, dtype_name(DTYPES[di]),
                       peaks[0], peaks[1]);
            /* the arena places in 64-byte units: at most 63 bytes more for each of 5 inputs and 5 scratch buffers */
            CVX_EXPECT(peaks[0] >= inputs + scratch && peaks[0] < inputs + scratch + 10 * 64,
                       "op %d %s: peak %zu, want inputs %zu + scratch %zu", op, dtype_name(DTYPES[di]), peaks[0],
                       inputs, scratch);
        }
    free(host);
}

/* Bad arguments: refused before anything is allocated or launched, with the reason. */
static void expect_refused(cvx_status st, const char *want, const char *what) {
    CVX_EXPECT(st == CVX_ERR_INVALID, "%s: status %d", what, (int)st);
    CVX_EXPECT(strstr(cvx_error_message(), want) != NULL, "%s: message '%s' lacks '%s'", what, cvx_error_message(),
               want);
    cvx_error_clear(); /* the first failure's message stays until cleared */
}

static void test_bad_args(void) {
    float *d = dev_upload(NULL, 64);
    cvx_ctx c = cuda_ctx(CVX_F16);
    const int64_t before = cuda_live();
    cvx_error_clear();
    expect_refused(cvx_cuda_attention(&c, NULL, d, d, 1, 2, 1, 8, 1.0f, d), "must not be NULL", "NULL q");
    expect_refused(cvx_cuda_attention(&c, d, d, d, 1, 2, 1, 8, 1.0f, NULL), "must not be NULL", "NULL out");
    expect_refused(cvx_cuda_attention(&c, d, d, d, 0, 2, 1, 8, 1.0f, d), "must all be >= 1", "B 0");
    expect_refused(cvx_cuda_attention(&c, d, d, d, 1, 0, 1, 8, 1.0f, d), "must all be >= 1", "S 0");
    expect_refused(cvx_cuda_attention(&c, d, d, d, 1, 2, 0, 8, 1.0f, d), "must all be >= 1", "heads 0");
    expect_refused(cvx_cuda_attention(&c, d, d, d, 1, 2, 1, -8, 1.0f, d), "must all be >= 1", "hd -8");
    expect_refused(cvx_cuda_attention(&c, d, d, d, (int64_t)1 << 40, (int64_t)1 << 30, 1, 8, 1.0f, d), "too large",
                   "B S overflow");
    expect_refused(cvx_cuda_attention_tiled(&c, d, d, d, 1, -1, 1, 8, 1.0f, d), "must all be >= 1", "tiled S -1");
    expect_refused(cvx_cuda_biased_attention(&c, d, d, d, 1, 2, 1, 8, NULL, NULL, d), "position bias", "NULL bias");
    expect_refused(cvx_cuda_biased_attention_tiled(&c, d, d, d, 1, 2, 1, 8, NULL, NULL, d), "position bias",
                   "tiled NULL bias");
    /* sizes the transformer's attention could take, but a bias [32, 2^30, 2^30] has 2^65 elements */
    expect_refused(cvx_cuda_biased_attention(&c, d, d, d, 1, (int64_t)1 << 30, 32, 8, d, NULL, d), "a bias of",
                   "bias overflow");
    CVX_EXPECT(cuda_live() == before, "refusals allocated %lld bytes", (long long)(cuda_live() - before));
    cvx_mem_free(d);
}

/* CVX_CUDA_ATTENTION (read once per process, so each value runs in a child forked before CUDA starts): "tiled"
 * makes cvx_cuda_attention the tiled twin, bit for bit (the parent's flash result differs), and an unknown value is
 * refused by both attention ops with its name. The child sends its output through a pipe. */
static void test_env_choice(void) {
    const int64_t B = 1, S = 17;
    const int heads = 2, hd = 16;
    const int64_t n = B * S * heads * hd;
    float *q = xmalloc((size_t)n * sizeof(float)), *k = xmalloc((size_t)n * sizeof(float));
    float *v = xmalloc((size_t)n * sizeof(float)), *env_out = xmalloc((size_t)n * sizeof(float));
    float *flash = xmalloc((size_t)n * sizeof(float)), *twin = xmalloc((size_t)n * sizeof(float));
    fill(q, n, 2.0f, 0.0f), fill(k, n, 2.0f, 0.0f), fill(v, n, 1.0f, 0.0f);
    int no_device = 0;
    for (int bogus = 0; bogus < 2; bogus++) {
        int fds[2];
        if (!CVX_EXPECT(pipe(fds) == 0, "pipe")) break;
        const pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            setenv("CVX_CUDA_ATTENTION", bogus ? "bogus" : "tiled", 1);
            if (!cuda_test_begin()) _exit(2);
            cvx_ctx c = cuda_ctx(CVX_F16);
            float *dq = dev_upload(q, n), *dk = dev_upload(k, n), *dv = dev_upload(v, n), *dout = dev_upload(NULL, n);
            const cvx_status st = cvx_cuda_attention(&c, dq, dk, dv, B, S, heads, hd, 0.25f, dout);
            int ok;
            if (bogus) {
                ok = st == CVX_ERR_INVALID && strstr(cvx_error_message(), "CVX_CUDA_ATTENTION=bogus") != NULL;
                cvx_error_clear();
                ok = ok &&
                     cvx_cuda_biased_attention(&c, dq, dk, dv, B, S, heads, hd, dq, NULL, dout) == CVX_ERR_INVALID &&
                     strstr(cvx_error_message(), "expected flash or tiled") != NULL;
            } else {
                ok = st == CVX_OK;
                to_host(env_out, dout, n);
                ok = ok && write(fds[1], env_out, (size_t)n * sizeof(float)) == (ssize_t)(n * sizeof(float));
            }
            _exit(ok ? 0 : 1);
        }
        close(fds[1]);
        size_t got = 0;
        if (!bogus)
            while (got < (size_t)n * sizeof(float)) {
                const ssize_t r = read(fds[0], (char *)env_out + got, (size_t)n * sizeof(float) - got);
                if (r <= 0) break;
                got += (size_t)r;
            }
        close(fds[0]);
        int status = 0;
        waitpid(pid, &status, 0);
        /* exit 2: the child found no device (the parent cannot ask: CUDA must not start here before a fork) */
        if (WIFEXITED(status) && WEXITSTATUS(status) == 2) {
            no_device = 1;
            break;
        }
        CVX_EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "CVX_CUDA_ATTENTION=%s child: status %d",
                   bogus ? "bogus" : "tiled", status);
        if (bogus) break;
        CVX_EXPECT(got == (size_t)n * sizeof(float), "the tiled child sent %zu bytes", got);
    }
    if (!no_device && cuda_test_begin()) {
        cvx_ctx c = cuda_ctx(CVX_F16);
        float *dq = dev_upload(q, n), *dk = dev_upload(k, n), *dv = dev_upload(v, n), *dout = dev_upload(NULL, n);
        CVX_EXPECT(cvx_cuda_attention(&c, dq, dk, dv, B, S, heads, hd, 0.25f, dout) == CVX_OK, "flash: %s",
                   cvx_error_message());
        to_host(flash, dout, n);
        CVX_EXPECT(cvx_cuda_attention_tiled(&c, dq, dk, dv, B, S, heads, hd, 0.25f, dout) == CVX_OK, "tiled: %s",
                   cvx_error_message());
        to_host(twin, dout, n);
        CVX_EXPECT(memcmp(env_out, twin, (size_t)n * sizeof(float)) == 0, "CVX_CUDA_ATTENTION=tiled is the tiled twin");
        CVX_EXPECT(memcmp(env_out, flash, (size_t)n * sizeof(float)) != 0, "and not the flash kernel");
        cvx_mem_free(dq), cvx_mem_free(dk), cvx_mem_free(dv), cvx_mem_free(dout);
    }
    free(q), free(k), free(v), free(env_out), free(flash), free(twin);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The 2b size on a real GPU: S = 17,776 (13 x 30 x 45 latent patches + 226 text tokens), 30 heads, hd 64. */
static void test_big(void) {
    const char *big = getenv("CVX_CUDA_TEST_BIG");
    if (!big || strcmp(big, "1") != 0) {
        printf("  S = 17,776 flash vs tiled: skipped (CVX_CUDA_TEST_BIG=1 runs it, on a real GPU)\n");
        return;
    }
    const int64_t B = 1, S = 17776;
    const int heads = 30, hd = 64;
    const int64_t D = (int64_t)heads * hd, n = B * S * D;
    const float scale = 0.125f;
    float *q = xmalloc((size_t)n * sizeof(float)), *k = xmalloc((size_t)n * sizeof(float));
    float *v = xmalloc((size_t)n * sizeof(float)), *flash = xmalloc((size_t)n * sizeof(float));
    float *twin = xmalloc((size_t)n * sizeof(float));
    fill(q, n, 2.0f, 0.0f), fill(k, n, 2.0f, 0.1f), fill(v, n, 1.0f, 0.0f);
    float *dq = dev_upload(q, n), *dk = dev_upload(k, n), *dv = dev_upload(v, n), *dout = dev_upload(NULL, n);
    /* rows checked in double precision, in every head: the first, the last, tile edges and one in the middle */
    const int64_t rows[] = {0, 1, 127, 128, 8887, S - 129, S - 1};
    const int nrows = (int)(sizeof rows / sizeof rows[0]);
    double *ref = xmalloc((size_t)nrows * D * sizeof(double)), *sc = xmalloc((size_t)S * sizeof(double));
    float *got = xmalloc((size_t)nrows * D * sizeof(float));
    for (int ri = 0; ri < nrows; ri++)
        for (int h = 0; h < heads; h++) {
            const float *qr = q + rows[ri] * D + h * hd;
            double mx = -INFINITY, sum = 0.0;
            for (int64_t j = 0; j < S; j++) {
                double dot = 0.0;
                for (int d = 0; d < hd; d++) dot += (double)qr[d] * k[j * D + h * hd + d];
                sc[j] = dot * scale;
                if (sc[j] > mx) mx = sc[j];
            }
            for (int64_t j = 0; j < S; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int d = 0; d < hd; d++) {
                double o = 0.0;
                for (int64_t j = 0; j < S; j++) o += sc[j] * v[j * D + h * hd + d];
                ref[ri * D + h * hd + d] = o / sum;
            }
        }
    const double flops = 4.0 * (double)B * heads * (double)S * (double)S * hd;
    for (int di = 0; di < NUM_DTYPES; di++) {
        cvx_ctx c = cuda_ctx(DTYPES[di]);
        const double tol = DTYPES[di] == CVX_F32 ? TOL_F32 : TOL_HALF;
        double t_flash = 0.0, t_tiled = 0.0;
        for (int rep = 0; rep < 3; rep++) { /* the first run warms up; the times are the best of the other two */
            float first;
            double t0 = now_s();
            CVX_EXPECT(cvx_cuda_attention(&c, dq, dk, dv, B, S, heads, hd, scale, dout) == CVX_OK, "flash: %s",
                       cvx_error_message());
            to_host(&first, dout, 1);
            const double tf = now_s() - t0;
            if (rep == 0) to_host(flash, dout, n);
            t0 = now_s();
            CVX_EXPECT(cvx_cuda_attention_tiled(&c, dq, dk, dv, B, S, heads, hd, scale, dout) == CVX_OK, "tiled: %s",
                       cvx_error_message());
            to_host(&first, dout, 1);
            const double tt = now_s() - t0;
            if (rep == 1 || tf < t_flash) t_flash = tf;
            if (rep == 1 || tt < t_tiled) t_tiled = tt;
        }
        to_host(twin, dout, n);
        printf("  S %lld heads %d hd %d %s: flash %.2f ms (%.0f TFLOP/s), tiled %.2f ms (%.0f TFLOP/s)\n", (long long)S,
               heads, hd, dtype_name(DTYPES[di]), 1e3 * t_flash, flops / t_flash * 1e-12, 1e3 * t_tiled,
               flops / t_tiled * 1e-12);
        char what[96];
        snprintf(what, sizeof what, "S 17776 %s flash vs tiled", dtype_name(DTYPES[di]));
        expect_rel(what, flash, twin, n, tol);
        for (int ri = 0; ri < nrows; ri++) memcpy(got + ri * D, flash + rows[ri] * D, (size_t)D * sizeof(float));
        snprintf(what, sizeof what, "S 17776 %s flash rows vs double", dtype_name(DTYPES[di]));
        expect_close_tol(what, got, ref, (int64_t)nrows * D, tol);
    }
    cvx_mem_free(dq), cvx_mem_free(dk), cvx_mem_free(dv), cvx_mem_free(dout);
    free(q), free(k), free(v), free(flash), free(twin), free(ref), free(sc), free(got);
}

int main(void) {
    cvx_ops_init();
    const int64_t host_start = live_bytes();
    test_env_choice(); /* first: its children fork before this process starts CUDA */
    if (!cuda_test_begin()) return 0;
    const int64_t dev_start = cuda_live();
    test_attention_vs_cpu();
    test_biased_vs_cpu();
    test_measuring();
    test_bad_args();
    test_big();
    expect_no_leak("cuda attention tests (host)", host_start);
    CVX_EXPECT(cuda_live() == dev_start, "device bytes left: %lld", (long long)(cuda_live() - dev_start));
    return cvx_test_report();
}
