/* The weight schemas under the sanitizers: cvx_*_schema gives exactly the declarations create checks a checkpoint
 * against (names, shapes, groups, in order; the outside truth is the diffusers-saved checkpoint, which create loaded
 * without a complaint), allocates nothing from the memory manager, leaks nothing, and refuses what create refuses. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../csrc/io/safetensors.h"
#include "../../csrc/mem/mem.h"
#include "../../csrc/models/t5.h"
#include "../../csrc/models/transformer.h"
#include "../../csrc/models/vae.h"
#include "../../csrc/ops/ops.h"
#include "cvx_test.h"

#ifndef CVX_FIXTURES
#error "build with -DCVX_FIXTURES='\"<repo>/tests/fixtures\"' (tests/c/Makefile does)"
#endif

static int64_t allocations(void) {
    cvx_mem_stats s;
    cvx_mem_get_stats(CVX_DEVICE_CPU, &s);
    return s.num_allocs;
}

/* `schema` and the loaded `ws` declare the same tensors in the same order, and each is in the checkpoint `st`. */
static void expect_same(const char *what, const cvx_weights *schema, const cvx_weights *ws, const cvx_st_file *st) {
    if (!CVX_EXPECT(schema->count == ws->count && schema->count == cvx_st_count(st),
                    "%s: schema %d tensors, load %d, checkpoint %d", what, schema->count, ws->count, cvx_st_count(st)))
        return;
    CVX_EXPECT(schema->num_groups == ws->num_groups, "%s: %d groups, load %d", what, schema->num_groups,
               ws->num_groups);
    for (int i = 0; i < schema->count; i++) {
        const cvx_weight_decl *a = &schema->decls[i], *b = &ws->decls[i];
        int same = strcmp(a->name, b->name) == 0 && a->ndim == b->ndim && a->group == b->group &&
                   a->as_f32 == b->as_f32 && a->slot == NULL;
        for (int k = 0; same && k < a->ndim; k++) same = a->shape[k] == b->shape[k];
        const cvx_st_tensor *t = cvx_st_find(st, a->name);
        same = same && t && t->ndim == a->ndim;
        for (int k = 0; same && k < a->ndim; k++) same = t->shape[k] == a->shape[k];
        if (!CVX_EXPECT(same, "%s: tensor %d: schema '%s' vs load '%s'", what, i, a->name, b->name)) return;
    }
}

static int open_weights(const char *model_dir, const char *file, cvx_st_file **st) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s/%s", CVX_FIXTURES, model_dir, file);
    const cvx_status s = cvx_st_open(path, st);
    return CVX_EXPECT(s == CVX_OK, "open %s: %s", path, cvx_error_message());
}

static void vae_schema(void) {
    /* tests/fixtures/vae/tiny/config.json */
    const cvx_vae_config cfg = {3, 3, 4, 4, {8, 8, 8, 8}, 1, 2, 1e-6f, 4};
    cvx_st_file *st = NULL;
    if (!open_weights("vae/tiny", "diffusion_pytorch_model.safetensors", &st)) return;
    cvx_weights schema;
    const int64_t before = allocations();
    const cvx_status s = cvx_vae_schema(&cfg, CVX_BF16, &schema);
    CVX_EXPECT(s == CVX_OK && allocations() == before, "VAE schema: %s", cvx_error_message());
    cvx_vae *vae = NULL;
    if (s == CVX_OK &&
        CVX_EXPECT(cvx_vae_create(&cfg, st, CVX_BF16, &vae) == CVX_OK, "VAE create: %s", cvx_error_message()))
        expect_same("VAE", &schema, cvx_vae_weights(vae), st);
    cvx_vae_free(vae);
    cvx_weights_free(&schema);
    cvx_st_close(st);
    cvx_vae_config bad = cfg;
    bad.norm_num_groups = 3;
    CVX_EXPECT(cvx_vae_schema(&bad, CVX_F32, &schema) == CVX_ERR_INVALID && schema.count == 0,
               "VAE schema of 3 groups over 8 channels: %s", cvx_error_message());
    cvx_error_clear();
}

static void transformer_schema(void) {
    /* tests/fixtures/transformer/t15/config.json: RoPE, temporal patches, no patch bias */
    const cvx_transformer_config cfg = {4, 16, 4, 4, 1, 0, 16, 0, 24, 2, 1, 0, 1, 2, 2, 8, 0, 0, 1e-5f};
    cvx_st_file *st = NULL;
    if (!open_weights("transformer/t15", "diffusion_pytorch_model.safetensors", &st)) return;
    cvx_weights schema;
    const int64_t before = allocations();
    const cvx_status s = cvx_transformer_schema(&cfg, CVX_F32, &schema);
    CVX_EXPECT(s == CVX_OK && allocations() == before, "transformer schema: %s", cvx_error_message());
    cvx_transformer *tr = NULL;
    if (s == CVX_OK && CVX_EXPECT(cvx_transformer_create(&cfg, st, CVX_F32, 0, &tr) == CVX_OK, "transformer create: %s",
                                  cvx_error_message()))
        expect_same("transformer", &schema, cvx_transformer_weights(tr), st);
    cvx_transformer_free(tr);
    cvx_weights_free(&schema);
    cvx_st_close(st);
    cvx_transformer_config bad = cfg;
    bad.num_layers = 1 << 20; /* past CVX_WEIGHTS_MAX_TENSORS: refused before declaring */
    CVX_EXPECT(cvx_transformer_schema(&bad, CVX_F32, &schema) == CVX_ERR_INVALID && schema.count == 0,
               "transformer schema of 2^20 layers: %s", cvx_error_message());
    cvx_error_clear();
}

static void t5_schema(void) {
    /* tests/fixtures/t5/gated/config.json (v1.1: gated-gelu) */
    const cvx_t5_config cfg = {500, 64, 16, 4, 96, 3, 32, 128, 1, 1e-6f, "shared.weight", NULL};
    cvx_st_file *st = NULL;
    if (!open_weights("t5/gated", "model.safetensors", &st)) return;
    cvx_weights schema;
    const int64_t before = allocations();
    const cvx_status s = cvx_t5_schema(&cfg, CVX_F16, &schema);
    CVX_EXPECT(s == CVX_OK && allocations() == before, "T5 schema: %s", cvx_error_message());
    cvx_t5 *t5 = NULL;
    if (s == CVX_OK &&
        CVX_EXPECT(cvx_t5_create(&cfg, st, CVX_F16, &t5) == CVX_OK, "T5 create: %s", cvx_error_message()))
        expect_same("T5", &schema, cvx_t5_weights(t5), st);
    cvx_t5_free(t5);
    cvx_weights_free(&schema);
    cvx_st_close(st);
    cvx_t5_config bad = cfg;
    bad.embedding_name = "%s%n"; /* a name from the caller is never a format */
    CVX_EXPECT(cvx_t5_schema(&bad, CVX_F32, &schema) == CVX_OK && strcmp(schema.decls[0].name, "%s%n") == 0,
               "T5 schema with a '%%' name: %s", cvx_error_message());
    cvx_weights_free(&schema);
}

int main(void) {
    cvx_ops_init();
    vae_schema();
    transformer_schema();
    t5_schema();
    return cvx_test_report();
}
