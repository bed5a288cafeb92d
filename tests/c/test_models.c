/* The models end to end under the sanitizers: the tiny VAE (decode and encode), the T5 encoder and two transformers
 * (2b style with a sin-cos table, 1.5 style with RoPE and temporal patches), each run in f32, f16 and bf16 and
 * compared with what diffusers / transformers computed for the same weights (the VAE's tiled decode too).
 *
 * Weights come from the committed checkpoints under tests/fixtures/<model>/; inputs and goldens from
 * tests/fixtures/c/ (raw arrays copied out of the npz goldens by tests/reference/make_c_model_fixtures.py). The 16-bit
 * goldens are the 16-bit weight files computed in float32, which is what a 16-bit run dtype must give: weights stored
 * in 16 bits (rounded through that dtype on load when the file is f32) and widened on use. A run that read 16-bit
 * weights as f32 (issue 7, item 1) reads past its buffers, which ASan reports, and gives NaN, which the checks
 * report. Tolerance as the fixture manifests: max |diff| <= 1e-4 * max(1, max |golden|). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../csrc/core/tensor.h"
#include "../../csrc/io/safetensors.h"
#include "../../csrc/mem/arena.h"
#include "../../csrc/mem/residency.h"
#include "../../csrc/models/t5.h"
#include "../../csrc/models/transformer.h"
#include "../../csrc/models/vae.h"
#include "../../csrc/ops/backend.h"
#include "cvx_test.h"

/* The ops run on the CPU backend, their scratch and outputs straight from the memory manager (no arena). */
static cvx_ctx CTX = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};

#ifndef CVX_FIXTURES
#error "build with -DCVX_FIXTURES='\"<repo>/tests/fixtures\"' (tests/c/Makefile does)"
#endif

#define TOL 1e-4

static const char *const dtype_names[] = {"f32", "f16", "bf16"};
static const cvx_dtype run_dtypes[] = {CVX_F32, CVX_F16, CVX_BF16};

/* tests/fixtures/c/<name>: exactly `count` elements of `esize` bytes, or NULL (the check is counted as failed) */
static void *read_array(const char *name, size_t esize, int64_t count) {
    char path[512];
    snprintf(path, sizeof(path), "%s/c/%s", CVX_FIXTURES, name);
    FILE *f = fopen(path, "rb");
    if (!CVX_EXPECT(f != NULL, "cannot open %s (run tests/reference/make_c_model_fixtures.py)", path)) return NULL;
    void *data = xmalloc((size_t)count * esize);
    const size_t got = fread(data, esize, (size_t)count, f);
    const int at_end = fgetc(f) == EOF;
    fclose(f);
    if (!CVX_EXPECT(got == (size_t)count && at_end, "%s: want exactly %lld values of %zu bytes", path, (long long)count,
                    esize)) {
        free(data);
        return NULL;
    }
    return data;
}

static float *read_f32(const char *name, int64_t count) { return read_array(name, sizeof(float), count); }

/* max |got - want| <= tol * max(1, max |want|), every value finite */
static void expect_matches(const char *what, const float *got, const float *want, int64_t n) {
    double maxdiff = 0.0, maxref = 0.0;
    int64_t worst = 0, bad = -1;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)got[i] - (double)want[i]);
        if (!isfinite(got[i]) && bad < 0) bad = i;
        if (d > maxdiff) maxdiff = d, worst = i;
        if (fabs((double)want[i]) > maxref) maxref = fabs((double)want[i]);
    }
    const double bound = TOL * (maxref > 1.0 ? maxref : 1.0);
    printf("  %-58s max|diff| %.3g (bound %.3g, max|golden| %.3g, %lld values)\n", what, maxdiff, bound, maxref,
           (long long)n);
    CVX_EXPECT(bad < 0, "%s: non-finite output at %lld", what, (long long)bad);
    CVX_EXPECT(maxdiff <= bound, "%s: max |diff| %.3g at %lld (got %.8g, want %.8g)", what, maxdiff, (long long)worst,
               (double)got[worst], (double)want[worst]);
}

static int open_weights(const char *model_dir, const char *file, cvx_st_file **st) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s/%s", CVX_FIXTURES, model_dir, file);
    const cvx_status s = cvx_st_open(path, st);
    return CVX_EXPECT(s == CVX_OK, "open %s: %s", path, cvx_error_message());
}

static int shape_is(const cvx_tensor *t, int ndim, const int64_t *shape) {
    if (t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

/* ---- the forward's context ----------------------------------------------------------------------------------- */

/* A forward as cvx_ctx_run calls it; it writes its host output into the tensor its arg names. */
typedef cvx_status (*forward_fn)(cvx_ctx *ctx, void *arg);

static int64_t num_allocs(void) { return stats(CVX_DEVICE_CPU).num_allocs; }

/* Runs fn as cvx_ctx_run does and checks the measuring contract on the way: the measuring pass (unbacked
 * addresses: any touch of an activation byte faults) succeeds, allocates nothing from the memory manager and no
 * host output; an arena one alignment unit short of the measured peak runs out (the measure is tight) and leaves
 * nothing allocated in it; the run in an arena reserved at exactly the peak allocates nothing from the memory
 * manager but the host output. Returns the last run's status, its output in *out. */
static cvx_status sized_run(const char *what, forward_fn fn, void *arg, cvx_tensor *out) {
    cvx_arena *arena = NULL;
    if (!CVX_EXPECT(cvx_arena_create(CVX_DEVICE_CPU, 0, &arena) == CVX_OK, "%s: arena: %s", what, cvx_error_message()))
        return CVX_ERR_OOM;
    cvx_ctx ctx = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU, .arena = arena};
    size_t need = 0;
    const int64_t before_measure = num_allocs();
    cvx_status s = cvx_ctx_measure(&ctx, fn, arg, &need);
    CVX_EXPECT(s == CVX_OK && need > 0, "%s: measuring pass: status %d, %zu bytes: %s", what, (int)s, need,
               cvx_error_message());
    CVX_EXPECT(num_allocs() == before_measure, "%s: the measuring pass made %lld memory-manager allocations", what,
               (long long)(num_allocs() - before_measure));
    CVX_EXPECT(out->data == NULL, "%s: the measuring pass allocated a host output", what);
    if (s == CVX_OK && need > 64) {
        s = cvx_arena_reserve(arena, need - 64);
        if (s == CVX_OK) s = fn(&ctx, arg);
        CVX_EXPECT(s == CVX_ERR_OOM && out->data == NULL && cvx_arena_in_use(arena) == 0,
                   "%s: in %zu arena bytes (64 short of the measure): status %d, %zu bytes left in use", what,
                   need - 64, (int)s, cvx_arena_in_use(arena));
        cvx_tensor_release(out);
        cvx_error_clear();
    }
    s = cvx_arena_reserve(arena, need);
    const int64_t before = num_allocs();
    if (s == CVX_OK) s = fn(&ctx, arg);
    if (CVX_EXPECT(s == CVX_OK, "%s: in an arena of exactly the measured %zu bytes: %s", what, need,
                   cvx_error_message()))
        CVX_EXPECT(num_allocs() - before == 1 && cvx_arena_in_use(arena) == 0 && cvx_arena_peak(arena) <= need,
                   "%s: the sized run made %lld memory-manager allocations (want 1: the host output), left %zu arena "
                   "bytes in use, peak %zu of %zu",
                   what, (long long)(num_allocs() - before), cvx_arena_in_use(arena), cvx_arena_peak(arena), need);
    printf("  %-58s arena %zu bytes\n", what, need);
    cvx_arena_destroy(arena);
    return s;
}

/* An allocation failure injected at every allocation of the forward in turn (ops taking their scratch straight
 * from the memory manager, so each op's failure path runs): each run fails with CVX_ERR_OOM, leaves no host output
 * and no byte allocated beyond what the first run left (on emu under sequential residency: no weight group held
 * either), and a run after them succeeds. */
static void fault_loop(const char *what, cvx_ctx *ctx, forward_fn fn, void *arg, cvx_tensor *out) {
    const int64_t base = live_bytes();
    cvx_status s = fn(ctx, arg); /* once first: what is made once and kept (sequential's ring) is not counted */
    cvx_tensor_release(out);
    cvx_mem_fail_at(-1);
    if (s == CVX_OK) s = fn(ctx, arg);
    const int64_t count = cvx_mem_fail_at(-1);
    cvx_tensor_release(out);
    const int64_t emu_base = stats(CVX_DEVICE_EMU).allocated_bytes; /* e.g. sequential's ring, kept between calls */
    if (!CVX_EXPECT(s == CVX_OK && count > 1, "%s: counting run: %s", what, cvx_error_message())) return;
    int64_t bad = -1;
    for (int64_t n = 0; n < count; n++) {
        cvx_mem_fail_at(n);
        s = fn(ctx, arg);
        cvx_mem_fail_at(-1);
        if (bad < 0 && (s != CVX_ERR_OOM || out->data != NULL || live_bytes() != base ||
                        stats(CVX_DEVICE_EMU).allocated_bytes != emu_base))
            bad = n;
        cvx_tensor_release(out);
        cvx_error_clear();
    }
    if (!CVX_EXPECT(bad < 0, "%s on %s: failing allocation %lld of %lld: not a clean CVX_ERR_OOM", what, ctx->be->name,
                    (long long)bad, (long long)count))
        return;
    CVX_EXPECT(fn(ctx, arg) == CVX_OK, "%s: after the faults: %s", what, cvx_error_message());
    cvx_tensor_release(out);
    printf("  %-50s %-7s %lld injected faults, each clean\n", what, ctx->be->name, (long long)count);
}

/* The emulated accelerator over the same forward: without residency (every weight on the host) the first op that
 * reads a weight refuses, loudly; with the component on emu under `sequential` (one block group and one prefetched
 * on the device, the rest on the host: a missing or misplaced acquire fails) and under `none`, the output is the
 * CPU's bit for bit; with `faults`, the fault loop under sequential. The component is back on the CPU afterwards. */
static void emu_runs(const char *what, forward_fn fn, void *arg, cvx_tensor *out, cvx_residency *res,
                     const cvx_tensor *cpu_out, int faults) {
    cvx_ctx ctx = {.be = cvx_backend_for(CVX_DEVICE_EMU), .device = CVX_DEVICE_EMU};
    cvx_error_clear();
    cvx_status s = fn(&ctx, arg);
    CVX_EXPECT(s == CVX_ERR_INTERNAL && strstr(cvx_error_message(), "not resident") != NULL && out->data == NULL,
               "%s on emu without its weights there: status %d, '%s'", what, (int)s, cvx_error_message());
    cvx_error_clear();
    static const cvx_policy policies[] = {CVX_POLICY_SEQUENTIAL, CVX_POLICY_NONE};
    static const char *const names[] = {"sequential", "none"};
    ctx.res = res;
    for (int i = 0; i < 2; i++) {
        s = cvx_residency_set(res, CVX_DEVICE_EMU, policies[i], 1);
        if (s == CVX_OK) s = fn(&ctx, arg);
        if (CVX_EXPECT(s == CVX_OK, "%s on emu (%s): %s", what, names[i], cvx_error_message()))
            CVX_EXPECT(out->ndim == cpu_out->ndim && cvx_tensor_nbytes(out) == cvx_tensor_nbytes(cpu_out) &&
                           memcmp(out->data, cpu_out->data, cvx_tensor_nbytes(out)) == 0,
                       "%s on emu (%s): not the CPU's output bit for bit", what, names[i]);
        cvx_tensor_release(out);
        cvx_error_clear();
    }
    if (faults && CVX_EXPECT(cvx_residency_set(res, CVX_DEVICE_EMU, CVX_POLICY_SEQUENTIAL, 1) == CVX_OK, "%s: %s", what,
                             cvx_error_message()))
        fault_loop(what, &ctx, fn, arg, out);
    CVX_EXPECT(cvx_residency_set(res, CVX_DEVICE_CPU, CVX_POLICY_NONE, 0) == CVX_OK, "%s: back to the CPU: %s", what,
               cvx_error_message());
    CVX_EXPECT(stats(CVX_DEVICE_EMU).allocated_bytes == 0, "%s: %lld emu bytes left", what,
               (long long)stats(CVX_DEVICE_EMU).allocated_bytes);
}

/* ---- the VAE ------------------------------------------------------------------------------------------------- */

typedef struct vae_call {
    cvx_vae *vae;
    const cvx_tensor *x;
    int decode;
    const cvx_vae_tiling *tiling;
    cvx_tensor *out;
} vae_call;

static cvx_status vae_run(cvx_ctx *ctx, void *arg) {
    const vae_call *c = arg;
    return c->decode ? cvx_vae_decode(ctx, c->vae, c->x, 0, c->tiling, c->out)
                     : cvx_vae_encode(ctx, c->vae, c->x, 0, c->tiling, c->out);
}

/* The golden check, then the same call sized by a measuring pass and on emu. */
static void vae_checked(const char *what, vae_call *call, const int64_t *shape, const float *want, int64_t n) {
    cvx_tensor *out = call->out;
    cvx_status s = sized_run(what, vae_run, call, out);
    if (CVX_EXPECT(s == CVX_OK, "%s: %s", what, cvx_error_message()) &&
        CVX_EXPECT(shape_is(out, 5, shape), "%s: wrong output shape", what)) {
        expect_matches(what, out->data, want, n);
        cvx_tensor cpu = *out;
        memset(out, 0, sizeof(*out));
        const int faults = cvx_vae_weights(call->vae)->dtype == CVX_F32;
        emu_runs(what, vae_run, call, out, cvx_vae_weights(call->vae)->res, &cpu, faults);
        cvx_tensor_release(&cpu);
        if (faults) fault_loop(what, &CTX, vae_run, call, out);
    }
    cvx_tensor_release(out);
}

/* tests/fixtures/vae/tiny/config.json */
static const cvx_vae_config tiny_vae = {
    .in_channels = 3,
    .out_channels = 3,
    .latent_channels = 4,
    .num_blocks = 4,
    .block_out_channels = {8, 8, 8, 8},
    .layers_per_block = 1,
    .norm_num_groups = 2,
    .norm_eps = 1e-6f,
    .temporal_compression_ratio = 4,
};

/* Decodes 3 latent frames [1, 4, 3, 3, 5] -> [1, 3, 9, 24, 40] and encodes 9 frames [1, 3, 9, 16, 24] -> moments
 * [1, 8, 3, 2, 3] with the weights of `model_dir` converted to `run`, against the goldens of `golden` weights. */
static void vae_case(const char *model_dir, cvx_dtype run, const char *golden) {
    char what[160], name[96];
    const int64_t base = live_bytes();
    const int64_t z_shape[5] = {1, 4, 3, 3, 5}, sample_shape[5] = {1, 3, 9, 24, 40};
    const int64_t x_shape[5] = {1, 3, 9, 16, 24}, moments_shape[5] = {1, 8, 3, 2, 3};
    cvx_st_file *st = NULL;
    cvx_vae *vae = NULL;
    cvx_tensor z = {0}, x = {0}, out = {0};
    float *z_in = read_f32("vae_decode_f3__input.f32", 180), *x_in = read_f32("vae_encode_f9__input.f32", 10368);
    snprintf(name, sizeof(name), "vae_decode_f3__%s.f32", golden);
    float *want_sample = read_f32(name, 25920);
    snprintf(name, sizeof(name), "vae_encode_f9__%s.f32", golden);
    float *want_moments = read_f32(name, 144);
    if (!z_in || !x_in || !want_sample || !want_moments ||
        !open_weights(model_dir, "diffusion_pytorch_model.safetensors", &st))
        goto done;
    const cvx_status created = cvx_vae_create(&tiny_vae, st, run, &vae);
    cvx_st_close(st); /* the weights were copied into their groups */
    if (!CVX_EXPECT(created == CVX_OK, "%s as %s: %s", model_dir, cvx_dtype_name(run), cvx_error_message())) goto done;

    z.data = z_in, z.dtype = CVX_F32, z.device = CVX_DEVICE_CPU, z.ndim = 5;
    memcpy(z.shape, z_shape, sizeof(z_shape));
    snprintf(what, sizeof(what), "VAE %s run %s: decode 3 latent frames", model_dir, cvx_dtype_name(run));
    vae_call call = {vae, &z, 1, NULL, &out};
    vae_checked(what, &call, sample_shape, want_sample, 25920);

    x.data = x_in, x.dtype = CVX_F32, x.device = CVX_DEVICE_CPU, x.ndim = 5;
    memcpy(x.shape, x_shape, sizeof(x_shape));
    snprintf(what, sizeof(what), "VAE %s run %s: encode 9 frames", model_dir, cvx_dtype_name(run));
    call = (vae_call){vae, &x, 0, NULL, &out};
    vae_checked(what, &call, moments_shape, want_moments, 144);
done:
    cvx_vae_free(vae);
    free(z_in), free(x_in), free(want_sample), free(want_moments);
    expect_no_leak(model_dir, base);
}

/* tests/fixtures/vae/mid/config.json */
static const cvx_vae_config mid_vae = {
    .in_channels = 3,
    .out_channels = 3,
    .latent_channels = 8,
    .num_blocks = 4,
    .block_out_channels = {8, 16, 16, 16},
    .layers_per_block = 2,
    .norm_num_groups = 4,
    .norm_eps = 1e-5f,
    .temporal_compression_ratio = 4,
};

/* The tiled path (tiles blended in place, strips kept for the row below) with 16-bit weights: [1, 8, 1, 7, 11] ->
 * [1, 3, 1, 56, 88] in 3 x 3 tiles. */
static void vae_tiled_case(const char *model_dir, cvx_dtype run, const char *golden) {
    char what[160], name[96];
    const int64_t base = live_bytes();
    const int64_t z_shape[5] = {1, 8, 1, 7, 11}, sample_shape[5] = {1, 3, 1, 56, 88};
    const cvx_vae_tiling tiling = {1, 32, 48, 0.25, 1.0 / 6.0};
    cvx_st_file *st = NULL;
    cvx_vae *vae = NULL;
    cvx_tensor z = {0}, out = {0};
    float *z_in = read_f32("vae_mid_tiled__input.f32", 616);
    snprintf(name, sizeof(name), "vae_mid_tiled__%s.f32", golden);
    float *want = read_f32(name, 14784);
    if (!z_in || !want || !open_weights(model_dir, "diffusion_pytorch_model.safetensors", &st)) goto done;
    const cvx_status created = cvx_vae_create(&mid_vae, st, run, &vae);
    cvx_st_close(st);
    if (!CVX_EXPECT(created == CVX_OK, "%s as %s: %s", model_dir, cvx_dtype_name(run), cvx_error_message())) goto done;
    z.data = z_in, z.dtype = CVX_F32, z.device = CVX_DEVICE_CPU, z.ndim = 5;
    memcpy(z.shape, z_shape, sizeof(z_shape));
    snprintf(what, sizeof(what), "VAE %s run %s: tiled decode", model_dir, cvx_dtype_name(run));
    vae_call call = {vae, &z, 1, &tiling, &out};
    vae_checked(what, &call, sample_shape, want, 14784);
done:
    cvx_vae_free(vae);
    free(z_in), free(want);
    expect_no_leak(model_dir, base);
}

/* A VAE freed while its weights are resident on the emulated device: the residency drops the device copies and
 * re-points the weight slots before anything that holds those slots is freed (ASan reports a write into freed memory
 * otherwise), and nothing stays on the device. */
static void vae_free_on_device(void) {
    cvx_st_file *st = NULL;
    cvx_vae *vae = NULL;
    if (!open_weights("vae/tiny", "diffusion_pytorch_model.safetensors", &st)) return;
    const cvx_status created = cvx_vae_create(&tiny_vae, st, CVX_F32, &vae);
    cvx_st_close(st);
    if (!CVX_EXPECT(created == CVX_OK, "tiny VAE: %s", cvx_error_message())) return;
    const cvx_mem_stats emu0 = stats(CVX_DEVICE_EMU);
    cvx_residency *res = cvx_vae_weights(vae)->res;
    CVX_EXPECT(cvx_residency_set(res, CVX_DEVICE_EMU, CVX_POLICY_NONE, 0) == CVX_OK, "VAE to emu: %s",
               cvx_error_message());
    CVX_EXPECT(stats(CVX_DEVICE_EMU).allocated_bytes - emu0.allocated_bytes == cvx_residency_total_bytes(res),
               "every group resident on emu");
    cvx_vae_free(vae);
    const cvx_mem_stats emu1 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(emu1.allocated_bytes == emu0.allocated_bytes && emu1.num_active == emu0.num_active,
               "freeing the VAE frees its device copies");
}

/* The size checks of issue 7 item 3 answer at once for absurd sizes, without overflow, and name the limit. */
static void vae_size_limits(void) {
    const int64_t base = live_bytes();
    cvx_st_file *st = NULL;
    cvx_vae *vae = NULL;
    if (!open_weights("vae/tiny", "diffusion_pytorch_model.safetensors", &st)) return;
    const cvx_status created = cvx_vae_create(&tiny_vae, st, CVX_F32, &vae);
    cvx_st_close(st);
    if (!CVX_EXPECT(created == CVX_OK, "tiny VAE: %s", cvx_error_message())) return;
    int64_t out[5];
    const int64_t most[5] = {1, 4, CVX_VAE_MAX_EXTENT, 1, 1};
    CVX_EXPECT(cvx_vae_decode_shape(vae, most, NULL, out) == CVX_OK && out[2] == 4 * (int64_t)CVX_VAE_MAX_EXTENT,
               "decode of %d latent frames: %lld frames (want 4 per pair)", CVX_VAE_MAX_EXTENT, (long long)out[2]);
    const int64_t absurd[][5] = {
        {1, 4, (int64_t)1 << 62, 1, 1}, {1, 4, 1, INT64_MAX, 1},           {1, 4, 1, 1, CVX_VAE_MAX_EXTENT + 1},
        {(int64_t)1 << 40, 4, 1, 1, 1}, {1, 4, 1 << 20, 1 << 10, 1 << 10}, {1, 4, 1, 0, 1},
    };
    const char *const why[] = {"over the limit", "over the limit",         "over the limit",
                               "over the limit", "would exceed the limit", "at least 1"};
    for (int i = 0; i < 6; i++) {
        cvx_error_clear(); /* the message kept is the first failure's */
        const cvx_status s = cvx_vae_decode_shape(vae, absurd[i], NULL, out);
        CVX_EXPECT(s == CVX_ERR_INVALID && strstr(cvx_error_message(), why[i]) != NULL,
                   "absurd shape %d: status %d, message '%s' (want '%s')", i, (int)s, cvx_error_message(), why[i]);
    }
    const int64_t encode_absurd[5] = {1, 3, (int64_t)1 << 62, 16, 16};
    cvx_error_clear();
    CVX_EXPECT(cvx_vae_encode_shape(vae, encode_absurd, NULL, out) == CVX_ERR_INVALID &&
                   strstr(cvx_error_message(), "encode: frames is 4611686018427387904, over the limit") != NULL,
               "encode of 2^62 frames: '%s'", cvx_error_message());
    cvx_vae_free(vae);
    expect_no_leak("VAE size limits", base);
}

/* ---- T5 ------------------------------------------------------------------------------------------------------ */

typedef struct t5_call {
    cvx_t5 *t5;
    const int64_t *ids, *mask;
    cvx_tensor *out;
} t5_call;

static cvx_status t5_run(cvx_ctx *ctx, void *arg) {
    const t5_call *c = arg;
    return cvx_t5_forward(ctx, c->t5, c->ids, c->mask, 2, 16, c->out);
}

/* tests/fixtures/t5/gated/config.json (v1.1: gated-gelu), 2 x 16 tokens, no mask (and on emu, with one) */
static void t5_case(const char *model_dir, cvx_dtype run, const char *golden) {
    char what[160], name[96];
    const int64_t base = live_bytes();
    const cvx_t5_config cfg = {500, 64, 16, 4, 96, 3, 32, 128, 1, 1e-6f, "shared.weight", NULL};
    const int64_t out_shape[3] = {2, 16, 64};
    cvx_st_file *st = NULL;
    cvx_t5 *t5 = NULL;
    cvx_tensor out = {0};
    int64_t *ids = read_array("t5_b2_l16__ids.i64", sizeof(int64_t), 32);
    snprintf(name, sizeof(name), "t5_b2_l16__%s.f32", golden);
    float *want = read_f32(name, 2048);
    if (!ids || !want || !open_weights(model_dir, "model.safetensors", &st)) goto done;
    const cvx_status created = cvx_t5_create(&cfg, st, run, &t5);
    cvx_st_close(st);
    if (!CVX_EXPECT(created == CVX_OK, "%s as %s: %s", model_dir, cvx_dtype_name(run), cvx_error_message())) goto done;
    snprintf(what, sizeof(what), "T5 %s run %s: 2 x 16 tokens", model_dir, cvx_dtype_name(run));
    t5_call call = {t5, ids, NULL, &out};
    const cvx_status s = sized_run(what, t5_run, &call, &out);
    if (CVX_EXPECT(s == CVX_OK, "%s: %s", what, cvx_error_message()) &&
        CVX_EXPECT(shape_is(&out, 3, out_shape), "%s: wrong output shape", what))
        expect_matches(what, out.data, want, 2048);
    cvx_tensor_release(&out);
    /* with a mask: the CPU backend without an arena is the reference for emu */
    int64_t mask[32];
    for (int i = 0; i < 32; i++) mask[i] = i % 16 < 11 || i < 16;
    call.mask = mask;
    if (CVX_EXPECT(t5_run(&CTX, &call) == CVX_OK, "%s with a mask: %s", what, cvx_error_message())) {
        cvx_tensor cpu = out;
        memset(&out, 0, sizeof(out));
        emu_runs(what, t5_run, &call, &out, cvx_t5_weights(t5)->res, &cpu, run == CVX_F32);
        cvx_tensor_release(&cpu);
        if (run == CVX_F32) fault_loop(what, &CTX, t5_run, &call, &out);
    }
    cvx_tensor_release(&out);
done:
    cvx_t5_free(t5);
    free(ids), free(want);
    expect_no_leak(model_dir, base);
}

/* ---- the transformer ----------------------------------------------------------------------------------------- */

/* tests/fixtures/transformer/t2b_tiny/config.json: 2 heads of 8, sin-cos table, Conv2d patches of 2 */
static const cvx_transformer_config t2b_tiny = {
    .num_attention_heads = 2,
    .attention_head_dim = 8,
    .in_channels = 4,
    .out_channels = 4,
    .flip_sin_to_cos = 1,
    .freq_shift = 0,
    .time_embed_dim = 2,
    .ofs_embed_dim = 0,
    .text_embed_dim = 8,
    .num_layers = 2,
    .attention_bias = 1,
    .patch_bias = 1,
    .norm_elementwise_affine = 1,
    .patch_size = 2,
    .patch_size_t = 0,
    .max_text_seq_length = 8,
    .norm_eps = 1e-5f,
};

/* tests/fixtures/transformer/t15/config.json: 4 heads of 16, RoPE, temporal patches of 2, no patch bias */
static const cvx_transformer_config t15 = {
    .num_attention_heads = 4,
    .attention_head_dim = 16,
    .in_channels = 4,
    .out_channels = 4,
    .flip_sin_to_cos = 1,
    .freq_shift = 0,
    .time_embed_dim = 16,
    .ofs_embed_dim = 0,
    .text_embed_dim = 24,
    .num_layers = 2,
    .attention_bias = 1,
    .patch_bias = 0,
    .norm_elementwise_affine = 1,
    .patch_size = 2,
    .patch_size_t = 2,
    .max_text_seq_length = 8,
    .norm_eps = 1e-5f,
};

typedef struct transformer_case {
    const cvx_transformer_config *cfg;
    const char *prefix; /* file prefix under tests/fixtures/c */
    int64_t hidden[5];  /* [B, F, C, H, W] */
    int64_t text[3];    /* [B, L, text_embed_dim] */
    int64_t table_rows; /* sin-cos table rows (L + N), 0: none */
    int64_t rope_rows;  /* RoPE tokens, 0: none */
} transformer_case;

static const transformer_case t2b_case = {&t2b_tiny, "t2b_b2_f1", {2, 1, 4, 8, 8}, {2, 8, 8}, 8 + 16, 0};
static const transformer_case t15_case = {&t15, "t15_f2", {1, 2, 4, 8, 8}, {1, 8, 24}, 0, 16};

static int64_t numel(const int64_t *shape, int ndim) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

typedef struct tr_call {
    cvx_transformer *tr;
    const cvx_transformer_inputs *in;
    cvx_tensor *out;
} tr_call;

static cvx_status tr_run(cvx_ctx *ctx, void *arg) {
    const tr_call *c = arg;
    return cvx_transformer_forward(ctx, c->tr, c->in, c->out);
}

static void transformer_run(const transformer_case *tc, const char *model_dir, cvx_dtype run, const char *golden) {
    char what[160], name[96];
    const int64_t base = live_bytes();
    const int64_t D = (int64_t)tc->cfg->num_attention_heads * tc->cfg->attention_head_dim;
    const int64_t hd = tc->cfg->attention_head_dim, n_hidden = numel(tc->hidden, 5), n_text = numel(tc->text, 3);
    cvx_st_file *st = NULL;
    cvx_transformer *tr = NULL;
    cvx_tensor hidden = {0}, text = {0}, out = {0};
    float *h = NULL, *t = NULL, *ts = NULL, *table = NULL, *cos_tab = NULL, *sin_tab = NULL, *want = NULL;
#define READ(dst, suffix, count)                                                                                       \
    do {                                                                                                               \
        snprintf(name, sizeof(name), "%s__%s.f32", tc->prefix, suffix);                                                \
        if (!((dst) = read_f32(name, count))) goto done;                                                               \
    } while (0)
    READ(h, "hidden", n_hidden);
    READ(t, "text", n_text);
    READ(ts, "timestep", tc->hidden[0]);
    READ(want, golden, n_hidden);
    if (tc->table_rows) READ(table, "pos_table", tc->table_rows * D);
    if (tc->rope_rows) {
        READ(cos_tab, "rope_cos", tc->rope_rows * hd);
        READ(sin_tab, "rope_sin", tc->rope_rows * hd);
    }
#undef READ
    if (!open_weights(model_dir, "diffusion_pytorch_model.safetensors", &st)) goto done;
    const cvx_status created = cvx_transformer_create(tc->cfg, st, run, 0, &tr);
    cvx_st_close(st);
    if (!CVX_EXPECT(created == CVX_OK, "%s as %s: %s", model_dir, cvx_dtype_name(run), cvx_error_message())) goto done;

    hidden.data = h, hidden.dtype = CVX_F32, hidden.device = CVX_DEVICE_CPU, hidden.ndim = 5;
    memcpy(hidden.shape, tc->hidden, sizeof(tc->hidden));
    text.data = t, text.dtype = CVX_F32, text.device = CVX_DEVICE_CPU, text.ndim = 3;
    memcpy(text.shape, tc->text, sizeof(tc->text));
    const cvx_transformer_inputs in = {.hidden = &hidden,
                                       .text = &text,
                                       .timestep = ts,
                                       .pos_table = table,
                                       .rope_cos = cos_tab,
                                       .rope_sin = sin_tab,
                                       .timestep_len = tc->hidden[0],
                                       .pos_rows = tc->table_rows,
                                       .pos_cols = tc->table_rows ? D : 0,
                                       .rope_rows = tc->rope_rows,
                                       .rope_cols = tc->rope_rows ? hd : 0};
    snprintf(what, sizeof(what), "transformer %s run %s", model_dir, cvx_dtype_name(run));
    tr_call call = {tr, &in, &out};
    const cvx_status s = sized_run(what, tr_run, &call, &out);
    if (CVX_EXPECT(s == CVX_OK, "%s: %s", what, cvx_error_message()) &&
        CVX_EXPECT(shape_is(&out, 5, tc->hidden), "%s: wrong output shape", what)) {
        expect_matches(what, out.data, want, n_hidden);
        cvx_tensor cpu = out;
        memset(&out, 0, sizeof(out));
        emu_runs(what, tr_run, &call, &out, cvx_transformer_weights(tr)->res, &cpu, run == CVX_F32);
        cvx_tensor_release(&cpu);
        if (run == CVX_F32) fault_loop(what, &CTX, tr_run, &call, &out);
    }
    cvx_tensor_release(&out);
done:
    cvx_transformer_free(tr);
    free(h), free(t), free(ts), free(table), free(cos_tab), free(sin_tab), free(want);
    expect_no_leak(model_dir, base);
}

int main(void) {
    cvx_ops_init();
    const int64_t start = live_bytes();
    /* Each 16-bit weight file in its own dtype, and the f32 file converted to each run dtype: the conversion rounds
     * through that dtype, so both must give the golden of the 16-bit file. */
    static const char *const vae_dirs[] = {"vae/tiny", "vae/tiny_f16", "vae/tiny_bf16"};
    static const char *const t5_dirs[] = {"t5/gated", "t5/gated_fp16", "t5/gated_bf16"};
    static const char *const t2b_dirs[] = {"transformer/t2b_tiny", "transformer/t2b_tiny_f16",
                                           "transformer/t2b_tiny_bf16"};
    for (int d = 0; d < 3; d++) {
        vae_case(vae_dirs[d], run_dtypes[d], dtype_names[d]);
        if (d > 0) vae_case(vae_dirs[0], run_dtypes[d], dtype_names[d]);
    }
    vae_tiled_case("vae/mid_f16", CVX_F16, "f16");
    vae_tiled_case("vae/mid_bf16", CVX_BF16, "bf16");
    vae_tiled_case("vae/mid", CVX_F16, "f16");
    vae_size_limits();
    vae_free_on_device();
    for (int d = 0; d < 3; d++) {
        t5_case(t5_dirs[d], run_dtypes[d], dtype_names[d]);
        if (d > 0) t5_case(t5_dirs[0], run_dtypes[d], dtype_names[d]);
    }
    for (int d = 0; d < 3; d++) {
        transformer_run(&t2b_case, t2b_dirs[d], run_dtypes[d], dtype_names[d]);
        if (d > 0) transformer_run(&t2b_case, t2b_dirs[0], run_dtypes[d], dtype_names[d]);
    }
    transformer_run(&t15_case, "transformer/t15", CVX_F32, "f32");
    transformer_run(&t15_case, "transformer/t15_bf16", CVX_BF16, "bf16");
    transformer_run(&t15_case, "transformer/t15", CVX_BF16, "bf16");
    expect_no_leak("all models", start);
    return cvx_test_report();
}
