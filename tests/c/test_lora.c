/* LoRA adapters in the C core under the sanitizers: the committed adapter "attn" (tests/fixtures/lora, saved by
 * diffusers/peft) on the tiny 5b-style transformer it was made for. Checks: the residency's groups grow by exactly
 * the adapter's tensors (64-byte aligned) and shrink back when it is deleted; an unfused forward differs from the base
 * and equals the fused one within 1e-5 relative; unfuse and delete give the base output bit for bit and the weights
 * point at the checkpoint's bytes again; the emulated device under sequential residency gives the CPU's numbers; every
 * failing allocation of a load leaves nothing behind; every wrong size in a hand-written adapter file is refused with
 * the key named, before anything is allocated. Parity with diffusers itself is tests/test_lora.py's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../csrc/io/safetensors.h"
#include "../../csrc/mem/residency.h"
#include "../../csrc/models/transformer.h"
#include "../../csrc/ops/backend.h"
#include "cvx_test.h"
#include "tiny_5b.h"

#ifndef CVX_FIXTURES
#error "build with -DCVX_FIXTURES='\"<repo>/tests/fixtures\"' (tests/c/Makefile does)"
#endif

static const char *const MODULES[8] = {"transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k",
                                       "transformer_blocks.0.attn1.to_v", "transformer_blocks.0.attn1.to_out.0",
                                       "transformer_blocks.1.attn1.to_q", "transformer_blocks.1.attn1.to_k",
                                       "transformer_blocks.1.attn1.to_v", "transformer_blocks.1.attn1.to_out.0"};
static const float SCALINGS[8] = {1, 1, 1, 1, 1, 1, 1, 1};

typedef struct run_state {
    cvx_transformer *tr;
    cvx_tensor hidden, text;
    float ts[2], scale;
    int lora;
} run_state;

/* One forward on ctx (no arena: straight from the memory manager), the adapter at weight rs->scale when rs->lora. */
static cvx_status forward(cvx_ctx *ctx, run_state *rs, cvx_tensor *out) {
    const cvx_transformer_inputs in = {.hidden = &rs->hidden,
                                       .text = &rs->text,
                                       .timestep = rs->ts,
                                       .timestep_len = 2,
                                       .lora_scales = rs->lora ? &rs->scale : NULL,
                                       .lora_count = rs->lora ? 1 : 0};
    memset(out, 0, sizeof(*out));
    return cvx_transformer_forward(ctx, rs->tr, &in, out);
}

static double max_rel(const cvx_tensor *a, const cvx_tensor *b) {
    double d = 0, m = 1;
    const int64_t n = cvx_tensor_numel(a);
    for (int64_t i = 0; i < n; i++) {
        const float x = ((const float *)a->data)[i], y = ((const float *)b->data)[i];
        if (fabs(x - y) > d) d = fabs(x - y);
        if (fabs(y) > m) m = fabs(y);
    }
    return d / m;
}

static int same_bytes(const cvx_tensor *a, const cvx_tensor *b) {
    return memcmp(a->data, b->data, cvx_tensor_nbytes(a)) == 0;
}

static int64_t total_group_bytes(cvx_transformer *tr) {
    return cvx_residency_total_bytes(cvx_transformer_weights(tr)->res);
}

static void lifecycle(void) {
    const int64_t base_live = live_bytes();
    cvx_st_file *model = NULL, *lora = NULL;
    run_state rs = {0};
    cvx_tensor base = {0}, unfused = {0}, got = {0};
    cvx_ctx cpu = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};
    const cvx_status opened =
        cvx_st_open(CVX_FIXTURES "/pipeline/tiny_5b/transformer/diffusion_pytorch_model.safetensors", &model);
    if (!CVX_EXPECT(opened == CVX_OK, "open the tiny 5b transformer: %s", cvx_error_message())) return;
    CVX_EXPECT(cvx_st_open(CVX_FIXTURES "/lora/attn/pytorch_lora_weights.safetensors", &lora) == CVX_OK,
               "open the attn adapter: %s", cvx_error_message());
    CVX_EXPECT(cvx_transformer_create(&TINY_5B, model, CVX_F32, 0, &rs.tr) == CVX_OK, "create: %s",
               cvx_error_message());
    cvx_st_close(model);
    if (!rs.tr || !lora) goto done;
    const int64_t hshape[5] = {2, 3, 4, 2, 4}, tshape[3] = {2, 16, 32};
    cvx_tensor_alloc(&rs.hidden, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 5, hshape);
    cvx_tensor_alloc(&rs.text, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 3, tshape);
    fill(rs.hidden.data, cvx_tensor_numel(&rs.hidden), 1.0f, 0.0f);
    fill(rs.text.data, cvx_tensor_numel(&rs.text), 1.0f, 0.0f);
    rs.ts[0] = 500, rs.ts[1] = 250, rs.scale = 1.0f;
    CVX_EXPECT(forward(&cpu, &rs, &base) == CVX_OK, "base forward: %s", cvx_error_message());

    const int64_t groups0 = total_group_bytes(rs.tr);
    CVX_EXPECT(cvx_transformer_lora_load(rs.tr, lora, "transformer.", MODULES, SCALINGS, 8) == CVX_OK, "load: %s",
               cvx_error_message());
    /* rank 4: each module adds A [4, 32] and B [32, 4] in f32, 512 bytes each, already 64-byte multiples */
    const int64_t want = 8 * 2 * 4 * 32 * 4;
    CVX_EXPECT(cvx_transformer_adapter_bytes(rs.tr, 0) == want && total_group_bytes(rs.tr) == groups0 + want,
               "adapter bytes %lld, groups grew %lld; expected %lld",
               (long long)cvx_transformer_adapter_bytes(rs.tr, 0), (long long)(total_group_bytes(rs.tr) - groups0),
               (long long)want);
    rs.lora = 1;
    CVX_EXPECT(forward(&cpu, &rs, &unfused) == CVX_OK && !same_bytes(&unfused, &base), "unfused forward: %s",
               cvx_error_message());
    /* the emulated device, streaming one block group at a time: the adapter's tensors come with their block */
    cvx_residency *res = cvx_transformer_weights(rs.tr)->res;
    cvx_ctx emu = {.be = cvx_backend_for(CVX_DEVICE_EMU), .device = CVX_DEVICE_EMU, .res = res};
    CVX_EXPECT(cvx_residency_set(res, CVX_DEVICE_EMU, CVX_POLICY_SEQUENTIAL, 1) == CVX_OK, "to emu: %s",
               cvx_error_message());
    CVX_EXPECT(forward(&emu, &rs, &got) == CVX_OK && same_bytes(&got, &unfused), "emu sequential: %s",
               cvx_error_message());
    cvx_tensor_release(&got);
    cvx_residency_offload(res);
    CVX_EXPECT(cvx_residency_set(res, CVX_DEVICE_CPU, CVX_POLICY_NONE, 0) == CVX_OK, "back: %s", cvx_error_message());

    /* fused: the same numbers from one private copy per modified weight; unfused: the checkpoint's bytes again */
    const void *q_weight = cvx_weights_host(cvx_transformer_weights(rs.tr), 0);
    CVX_EXPECT(cvx_transformer_lora_fuse(rs.tr, &rs.scale, 1, 1) == CVX_OK, "fuse: %s", cvx_error_message());
    CVX_EXPECT(cvx_transformer_fused_bytes(rs.tr) == 8 * 32 * 32 * 4, "fused bytes %lld",
               (long long)cvx_transformer_fused_bytes(rs.tr));
    CVX_EXPECT(forward(&cpu, &rs, &got) == CVX_OK, "fused forward: %s", cvx_error_message());
    const double rel = max_rel(&got, &unfused);
    CVX_EXPECT(rel <= 1e-5, "fused vs unfused: max rel %.3e", rel);
    printf("  fused vs unfused: max rel diff %.2e\n", rel);
    cvx_tensor_release(&got);
    CVX_EXPECT(cvx_transformer_lora_unfuse(rs.tr) == CVX_OK && cvx_transformer_fused_bytes(rs.tr) == 0, "unfuse: %s",
               cvx_error_message());
    CVX_EXPECT(cvx_weights_host(cvx_transformer_weights(rs.tr), 0) == q_weight, "weight 0 moved");
    CVX_EXPECT(forward(&cpu, &rs, &got) == CVX_OK && same_bytes(&got, &unfused), "after unfuse: not the same bytes");
    cvx_tensor_release(&got);
    CVX_EXPECT(cvx_transformer_lora_delete(rs.tr, 0) == CVX_OK && total_group_bytes(rs.tr) == groups0, "delete: %s",
               cvx_error_message());
    rs.lora = 0;
    CVX_EXPECT(forward(&cpu, &rs, &got) == CVX_OK && same_bytes(&got, &base), "after delete: not the base bytes");
    cvx_tensor_release(&got);
    /* a forward naming more adapters than the model holds is refused */
    rs.lora = 1;
    CVX_EXPECT(forward(&cpu, &rs, &got) == CVX_ERR_INVALID && strstr(cvx_error_message(), "LoRA adapter weights"),
               "1 weight for 0 adapters: '%s'", cvx_error_message());
    cvx_error_clear();
done:
    cvx_tensor_release(&got);
    cvx_tensor_release(&base);
    cvx_tensor_release(&unfused);
    cvx_tensor_release(&rs.hidden);
    cvx_tensor_release(&rs.text);
    cvx_transformer_free(rs.tr);
    cvx_st_close(lora);
    expect_no_leak("lora lifecycle", base_live);
}

/* A bfloat16 model: the f32 adapter is converted into one host copy (the load's only memory-manager allocation),
 * so every failing allocation of the load can be injected: each a clean OOM that leaves nothing behind. */
static void load_faults(void) {
    const int64_t base_live = live_bytes();
    cvx_st_file *model = NULL, *lora = NULL;
    cvx_transformer *tr = NULL;
    if (cvx_st_open(CVX_FIXTURES "/pipeline/tiny_5b/transformer/diffusion_pytorch_model.safetensors", &model) !=
            CVX_OK ||
        cvx_st_open(CVX_FIXTURES "/lora/attn/pytorch_lora_weights.safetensors", &lora) != CVX_OK ||
        cvx_transformer_create(&TINY_5B, model, CVX_BF16, 0, &tr) != CVX_OK) {
        (void)CVX_EXPECT(0, "bf16 tiny 5b and its adapter: %s", cvx_error_message());
        goto done;
    }
    const int64_t groups0 = total_group_bytes(tr), live0 = live_bytes();
    int64_t bad = -1, count = -1;
    for (int64_t n = 0; n < 64 && bad < 0; n++) { /* until the load gets through: n is then its allocation count */
        cvx_mem_fail_at(n);
        const cvx_status s = cvx_transformer_lora_load(tr, lora, "transformer.", MODULES, SCALINGS, 8);
        cvx_mem_fail_at(-1);
        if (s == CVX_OK) {
            count = n;
            break;
        }
        if (s != CVX_ERR_OOM || live_bytes() != live0 || total_group_bytes(tr) != groups0 ||
            cvx_transformer_num_adapters(tr) != 0)
            bad = n;
        cvx_error_clear();
    }
    CVX_EXPECT(bad < 0 && count >= 1, "lora load with allocation %lld failing: not clean (%lld allocations)",
               (long long)bad, (long long)count);
    /* bf16: A [4, 32] and B [32, 4] take 256 bytes each in the layout */
    CVX_EXPECT(cvx_transformer_adapter_bytes(tr, 0) == 8 * 2 * 256, "bf16 adapter bytes %lld",
               (long long)cvx_transformer_adapter_bytes(tr, 0));
    printf("  lora load (bf16, converted): %lld injected faults, each clean\n", (long long)count);
    /* fuse: one private copy per modified weight; a failing one frees those made before it */
    const float one = 1.0f;
    const int64_t live1 = live_bytes();
    bad = -1, count = -1;
    for (int64_t n = 0; n < 64 && bad < 0; n++) {
        cvx_mem_fail_at(n);
        const cvx_status s = cvx_transformer_lora_fuse(tr, &one, 1, 0);
        cvx_mem_fail_at(-1);
        if (s == CVX_OK) {
            count = n;
            break;
        }
        if (s != CVX_ERR_OOM || live_bytes() != live1 || cvx_transformer_fused_bytes(tr) != 0) bad = n;
        cvx_error_clear();
    }
    CVX_EXPECT(bad < 0 && count == 8, "lora fuse with allocation %lld failing: not clean (%lld allocations)",
               (long long)bad, (long long)count);
    CVX_EXPECT(cvx_transformer_lora_unfuse(tr) == CVX_OK && live_bytes() == live1, "unfuse: %s", cvx_error_message());
    printf("  lora fuse (bf16): %lld injected faults, each clean\n", (long long)count);
done:
    cvx_transformer_free(tr);
    cvx_st_close(model);
    cvx_st_close(lora);
    expect_no_leak("lora load faults", base_live);
}

/* A hand-written adapter file: header JSON (data offsets filled in) over zero bytes. */
static int write_adapter(const char *path, const char *const *names, const int64_t (*shapes)[2], int n) {
    char header[4096];
    size_t at = 0, off = 0;
    at += (size_t)snprintf(header + at, sizeof(header) - at, "{");
    for (int i = 0; i < n; i++) {
        const size_t bytes = (size_t)(shapes[i][0] * shapes[i][1]) * 4;
        at += (size_t)snprintf(header + at, sizeof(header) - at,
                               "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}",
                               i ? "," : "", names[i], (long long)shapes[i][0], (long long)shapes[i][1], off,
                               off + bytes);
        off += bytes;
    }
    at += (size_t)snprintf(header + at, sizeof(header) - at, "}");
    while (at % 8) header[at++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    const uint64_t len = at;
    fwrite(&len, 8, 1, f);
    fwrite(header, 1, at, f);
    for (size_t i = 0; i < off; i++) fputc(0, f);
    fclose(f);
    return 1;
}

static void bad_sizes(void) {
    const int64_t base_live = live_bytes();
    cvx_st_file *model = NULL;
    cvx_transformer *tr = NULL;
    if (cvx_st_open(CVX_FIXTURES "/pipeline/tiny_5b/transformer/diffusion_pytorch_model.safetensors", &model) !=
            CVX_OK ||
        cvx_transformer_create(&TINY_5B, model, CVX_F32, 0, &tr) != CVX_OK) {
        (void)CVX_EXPECT(0, "tiny 5b: %s", cvx_error_message());
        cvx_st_close(model);
        return;
    }
    cvx_st_close(model);
    const char *q = "transformer_blocks.0.attn1.to_q", *a = "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight",
               *b = "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight";
    static const struct {
        int64_t a[2], b[2];
        const char *module, *needle;
    } cases[] = {
        {{2, 31}, {32, 2}, NULL, "lora_A.weight' has 2 dimension(s) [2, 31]; expected [-1, 32]"},
        {{2, 32}, {16, 2}, NULL, "lora_B.weight' has 2 dimension(s) [16, 2]; expected [32, 2]"},
        {{2, 32}, {32, 3}, NULL, "expected [32, 2]"},
        {{0, 32}, {32, 0}, NULL, "rank 0"},
        {{2, 32}, {32, 2}, "transformer_blocks.9.attn1.to_q", "no linear layer 'transformer_blocks.9.attn1.to_q'"},
        {{2, 32}, {32, 2}, "transformer_blocks.0.norm1.norm", "no linear layer"},
    };
    char path[256];
    snprintf(path, sizeof(path), "/tmp/cvx_test_lora_%d.safetensors", (int)getpid());
    const int64_t groups0 = total_group_bytes(tr), live0 = live_bytes();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *names[2] = {a, b};
        const int64_t shapes[2][2] = {{cases[i].a[0], cases[i].a[1]}, {cases[i].b[0], cases[i].b[1]}};
        cvx_st_file *st = NULL;
        if (!write_adapter(path, names, shapes, 2) || cvx_st_open(path, &st) != CVX_OK) {
            (void)CVX_EXPECT(0, "case %zu: the file did not open: %s", i, cvx_error_message());
            continue;
        }
        const char *module = cases[i].module ? cases[i].module : q;
        const cvx_status s = cvx_transformer_lora_load(tr, st, "transformer.", &module, SCALINGS, 1);
        cvx_st_close(st);
        CVX_EXPECT(s == CVX_ERR_INVALID && strstr(cvx_error_message(), cases[i].needle), "case %zu: '%s' lacks '%s'", i,
                   cvx_error_message(), cases[i].needle);
        CVX_EXPECT(live_bytes() == live0 && total_group_bytes(tr) == groups0 && cvx_transformer_num_adapters(tr) == 0,
                   "case %zu left something behind", i);
        cvx_error_clear();
    }
    /* a file without lora_B for the module */
    {
        const char *names[1] = {a};
        const int64_t shapes[1][2] = {{2, 32}};
        cvx_st_file *st = NULL;
        if (write_adapter(path, names, shapes, 1) && cvx_st_open(path, &st) == CVX_OK) {
            CVX_EXPECT(cvx_transformer_lora_load(tr, st, "transformer.", &q, SCALINGS, 1) == CVX_ERR_INVALID &&
                           strstr(cvx_error_message(), "lacks 'transformer.transformer_blocks.0.attn1.to_q.lora_B"),
                       "missing lora_B: '%s'", cvx_error_message());
            cvx_st_close(st);
        }
        cvx_error_clear();
    }
    unlink(path);
    cvx_transformer_free(tr);
    expect_no_leak("lora bad sizes", base_live);
}

int main(void) {
    cvx_ops_init();
    lifecycle();
    load_faults();
    bad_sizes();
    return cvx_test_report();
}
