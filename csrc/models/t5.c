/* T5EncoderModel, read top to bottom like transformers' modeling_t5.py (encoder only, eval mode).
 *
 * Legend: B batch, S tokens, d d_model, H heads, k d_kv, F d_ff. Tokens are [B * S, d] f32 rows.
 * No 1/sqrt(k) in the attention (T5 folds it into the weights), no biases, RMS norms; the relative position bias
 * is computed from block 0's table and shared by every block. Computation is f32 whatever the weight dtype, so
 * the half-precision overflow that transformers clamps cannot happen here. */
#include "t5.h"

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/ops.h"
#include "weights.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cblas.h>

typedef struct t5_block {
    const void *q, *k, *v, *o;         /* [H k, d] and [d, H k] */
    const void *attn_norm, *ff_norm;   /* [d] */
    const void *wi, *wi_0, *wi_1, *wo; /* relu: wi; gated: wi_0 (gelu) and wi_1 (linear) */
} t5_block;

struct cvx_t5 {
    cvx_t5_config cfg;
    cvx_dtype dtype;
    const void *embedding;     /* [vocab, d] */
    const void *relative_bias; /* [buckets, H] (block 0) */
    const void *final_norm;    /* [d] */
    t5_block *blocks;
    cvx_weights weights;
};

#define FIELD(key, type, required)                                                                                     \
    { #key, CVX_CONFIG_##type, offsetof(cvx_t5_config, key), required, 0, 0 }
const cvx_config_field cvx_t5_config_fields[] = {
    FIELD(vocab_size, INT, 1),
    FIELD(d_model, INT, 1),
    FIELD(d_kv, INT, 1),
    FIELD(num_heads, INT, 1),
    FIELD(d_ff, INT, 1),
    FIELD(num_layers, INT, 1),
    FIELD(relative_attention_num_buckets, INT, 1),
    FIELD(relative_attention_max_distance, INT, 1),
    FIELD(gated, BOOL, 1),
    FIELD(layer_norm_epsilon, FLOAT, 1),
    FIELD(embedding_name, STRING, 1),
    FIELD(ignored_name, STRING, 0),
    {NULL, 0, 0, 0, 0, 0},
};
#undef FIELD

static void decl(cvx_weights *ws, int group, const void **slot, int64_t rows, int64_t cols, const char *fmt, int i) {
    char name[CVX_WEIGHT_NAME_MAX];
    snprintf(name, sizeof(name), fmt, i);
    const int64_t shape[2] = {rows, cols};
    cvx_weights_declare(ws, group, 0, (void **)slot, cols ? 2 : 1, shape, "%s", name);
}

/* Every size the forward divides by, indexes with or multiplies into a C int, with the config key named. */
static cvx_status check_config(const cvx_t5_config *c) {
    const struct {
        const char *key;
        int value, minimum;
    } sizes[] = {
        {"vocab_size", c->vocab_size, 1},
        {"d_model", c->d_model, 1},
        {"d_kv", c->d_kv, 1},
        {"num_heads", c->num_heads, 1},
        {"d_ff", c->d_ff, 1},
        {"num_layers", c->num_layers, 1},
        /* transformers' buckets: max_exact = num_buckets / 4 is a divisor (ZeroDivisionError below 4), and
           log(max_distance / max_exact) needs max_distance > 0 (a math domain error there) */
        {"relative_attention_num_buckets", c->relative_attention_num_buckets, 4},
        {"relative_attention_max_distance", c->relative_attention_max_distance, 1},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        if (sizes[i].value < sizes[i].minimum)
            return CVX_FAIL(CVX_ERR_INVALID, "T5 config '%s' = %d must be at least %d", sizes[i].key, sizes[i].value,
                            sizes[i].minimum);
    if ((int64_t)c->num_heads * c->d_kv > INT_MAX)
        return CVX_FAIL(CVX_ERR_INVALID, "T5 config num_heads x d_kv = %lld is too large",
                        (long long)c->num_heads * c->d_kv);
    if (!(c->layer_norm_epsilon > 0.0f) || !isfinite(c->layer_norm_epsilon))
        return CVX_FAIL(CVX_ERR_INVALID, "T5 config 'layer_norm_epsilon' = %g must be positive and finite",
                        (double)c->layer_norm_epsilon);
    if (!c->embedding_name) return CVX_FAIL(CVX_ERR_INVALID, "T5 config has no embedding tensor name");
    return CVX_OK;
}

/* The model shell and its declarations for `cfg`, nothing loaded: what create loads into and schema reports. */
static cvx_status build(const cvx_t5_config *cfg, const cvx_st_file *st, cvx_dtype dtype, cvx_t5 **out) {
    *out = NULL;
    CVX_CHECK(check_config(cfg));
    /* each block holds 8 tensors (9 gated): a layer count the checkpoint cannot hold fails before any is declared */
    CVX_CHECK(
        cvx_weights_check_count(st, (int64_t)cfg->num_layers * (cfg->gated ? 9 : 8), "num_layers", cfg->num_layers));
    cvx_t5 *t5 = calloc(1, sizeof(*t5));
    if (!t5) return CVX_FAIL(CVX_ERR_OOM, "out of host memory building T5");
    t5->cfg = *cfg;
    t5->dtype = dtype;
    t5->blocks = calloc((size_t)cfg->num_layers, sizeof(t5_block));
    if (!t5->blocks) {
        free(t5);
        return CVX_FAIL(CVX_ERR_OOM, "out of host memory building T5");
    }
    cvx_weights *ws = &t5->weights;
    ws->dtype = dtype;
    ws->ignored = cfg->ignored_name;
    const int64_t d = cfg->d_model, inner = (int64_t)cfg->num_heads * cfg->d_kv, f = cfg->d_ff;
    /* group 0: embedding and final norm; group 1 + i: block i (block 0 also owns the relative bias table) */
    const int64_t embedding_shape[2] = {cfg->vocab_size, d}; /* its name comes from the caller: not a format */
    cvx_weights_declare(ws, 0, 0, (void **)&t5->embedding, 2, embedding_shape, "%s", cfg->embedding_name);
    decl(ws, 0, &t5->final_norm, d, 0, "encoder.final_layer_norm.weight", 0);
    decl(ws, 1, &t5->relative_bias, cfg->relative_attention_num_buckets, cfg->num_heads,
         "encoder.block.%d.layer.0.SelfAttention.relative_attention_bias.weight", 0);
    for (int i = 0; i < cfg->num_layers; i++) {
        t5_block *b = &t5->blocks[i];
        const int g = 1 + i;
        decl(ws, g, &b->q, inner, d, "encoder.block.%d.layer.0.SelfAttention.q.weight", i);
        decl(ws, g, &b->k, inner, d, "encoder.block.%d.layer.0.SelfAttention.k.weight", i);
        decl(ws, g, &b->v, inner, d, "encoder.block.%d.layer.0.SelfAttention.v.weight", i);
        decl(ws, g, &b->o, d, inner, "encoder.block.%d.layer.0.SelfAttention.o.weight", i);
        decl(ws, g, &b->attn_norm, d, 0, "encoder.block.%d.layer.0.layer_norm.weight", i);
        if (cfg->gated) {
            decl(ws, g, &b->wi_0, f, d, "encoder.block.%d.layer.1.DenseReluDense.wi_0.weight", i);
            decl(ws, g, &b->wi_1, f, d, "encoder.block.%d.layer.1.DenseReluDense.wi_1.weight", i);
        } else {
            decl(ws, g, &b->wi, f, d, "encoder.block.%d.layer.1.DenseReluDense.wi.weight", i);
        }
        decl(ws, g, &b->wo, d, f, "encoder.block.%d.layer.1.DenseReluDense.wo.weight", i);
        decl(ws, g, &b->ff_norm, d, 0, "encoder.block.%d.layer.1.layer_norm.weight", i);
    }
    if (ws->decl_status != CVX_OK) {
        const cvx_status st_ = ws->decl_status;
        cvx_t5_free(t5);
        return st_;
    }
    *out = t5;
    return CVX_OK;
}

cvx_status cvx_t5_create(const cvx_t5_config *cfg, const cvx_st_file *st, cvx_dtype dtype, cvx_t5 **out) {
    *out = NULL;
    cvx_t5 *t5 = NULL;
    CVX_CHECK(build(cfg, st, dtype, &t5));
    cvx_status st_ = cvx_weights_load(&t5->weights, st, dtype);
    if (st_ != CVX_OK) {
        cvx_t5_free(t5);
        return st_;
    }
    *out = t5;
    return CVX_OK;
}

cvx_status cvx_t5_schema(const cvx_t5_config *cfg, cvx_dtype dtype, cvx_weights *out) {
    memset(out, 0, sizeof(*out));
    cvx_t5 *t5 = NULL;
    CVX_CHECK(build(cfg, NULL, dtype, &t5));
    *out = t5->weights; /* the table moves out; its slots pointed into the shell freed below */
    for (int i = 0; i < out->count; i++) out->decls[i].slot = NULL;
    out->ignored = NULL; /* borrowed from the config, which the caller may free */
    memset(&t5->weights, 0, sizeof(t5->weights));
    cvx_t5_free(t5);
    return CVX_OK;
}

void cvx_t5_free(cvx_t5 *t5) {
    if (!t5) return;
    cvx_weights_free(&t5->weights);
    free(t5->blocks);
    free(t5);
}

int64_t cvx_t5_weight_bytes(const cvx_t5 *t5) { return cvx_weights_total_bytes(&t5->weights); }

int cvx_t5_num_weight_groups(const cvx_t5 *t5) { return t5->weights.num_groups; }
const cvx_weights *cvx_t5_weights(const cvx_t5 *t5) { return &t5->weights; }

/* T5's bidirectional relative position bucket of rel = key - query, in f32 as transformers computes it. For the
 * edge configs transformers accepts (max_distance <= max_exact), its log-bucket can come out negative or, through a
 * division by log(1) = 0, non-finite; torch then casts to int64_t (x86: INT64_MIN) and the embedding lookup fails with
 * an index error. The same positions fail here (-1), and positions it maps into range get the same bucket. */
static int relative_bucket(int64_t rel, int num_buckets, int max_distance) {
    const int half = num_buckets / 2, max_exact = half / 2;
    const int offset = rel > 0 ? half : 0;
    const int64_t n = rel < 0 ? -rel : rel;
    if (n < max_exact) return offset + (int)n;
    const float scaled =
        logf((float)n / (float)max_exact) / (float)log((double)max_distance / max_exact) * (float)(half - max_exact);
    if (!(scaled < (float)half)) { /* NaN, infinite or past the top: torch's cast gives INT64_MIN (x86) */
        if (isfinite(scaled) && scaled < 9.2233720e18f) return offset + half - 1;
        return -1;
    }
    if (!(scaled > (float)-(offset + max_exact + 1))) return -1; /* the bucket would be negative */
    const int large = max_exact + (int)scaled;                   /* truncation toward zero, as .to(torch.long) */
    const int bucket = offset + (large < half - 1 ? large : half - 1);
    return bucket >= 0 ? bucket : -1;
}

/* T5LayerNorm: x * rsqrt(mean(x^2) + eps) * w (no mean, no bias). */
static void rms_norm(const float *x, int64_t rows, int64_t d, float eps, const float *w, float *y) {
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(3 * rows * d))
    for (int64_t r = 0; r < rows; r++) {
        double sq = 0.0;
        for (int64_t i = 0; i < d; i++) sq += (double)x[r * d + i] * x[r * d + i];
        const float scale = 1.0f / sqrtf((float)(sq / (double)d) + eps);
        for (int64_t i = 0; i < d; i++) y[r * d + i] = w[i] * (x[r * d + i] * scale);
    }
}

/* Attention with the additive position bias [H, S, S] (+ key mask [S] per batch item): the S x S scores are
 * materialised per (batch, head) in per-thread scratch; T5 sequences are short (226 in CogVideoX). */
static cvx_status biased_attention(const float *q, const float *k, const float *v, int64_t B, int64_t S, int H, int kd,
                                   const float *bias, const float *key_mask, float *out) {
    const int64_t D = (int64_t)H * kd;
    const int threads = cvx_ops_num_threads();
    float *scratch = NULL;
    CVX_CHECK(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, (size_t)(threads * S * S) * sizeof(float),
                            (void **)&scratch));
#pragma omp parallel for schedule(dynamic) num_threads(cvx_ops_threads_for(B *H *S *S *kd / 8))
    for (int64_t task = 0; task < B * H; task++) {
        const int64_t b = task / H, h = task % H;
#ifdef _OPENMP
        float *sc = scratch + (int64_t)omp_get_thread_num() * S * S;
#else
        float *sc = scratch;
#endif
        const float *qb = q + b * S * D + h * kd, *kb = k + b * S * D + h * kd, *vb = v + b * S * D + h * kd;
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)S, (int)S, kd, 1.0f, qb, (int)D, kb, (int)D,
                          0.0f, sc, (int)S);
        for (int64_t i = 0; i < S; i++) {
            float *row = sc + i * S;
            const float *brow = bias + (h * S + i) * S;
            for (int64_t j = 0; j < S; j++) row[j] += brow[j] + (key_mask ? key_mask[b * S + j] : 0.0f);
            const float m = cvx_max(row, S, -INFINITY);
            const float inv = 1.0f / cvx_exp_shifted_sum(row, S, m);
            for (int64_t j = 0; j < S; j++) row[j] *= inv;
        }
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)S, kd, (int)S, 1.0f, sc, (int)S, vb, (int)D,
                          0.0f, out + b * S * D + h * kd, (int)D);
    }
    cvx_mem_free(scratch);
    return CVX_OK;
}

cvx_status cvx_t5_forward(cvx_t5 *t5, const int64_t *ids, const int64_t *mask, int64_t B, int64_t S, cvx_tensor *out) {
    cvx_status st = CVX_OK;
    const cvx_t5_config *c = &t5->cfg;
    const cvx_dtype dt = t5->dtype;
    const int64_t d = c->d_model, H = c->num_heads, kd = c->d_kv, D = H * kd, f = c->d_ff, rows = B * S;
    memset(out, 0, sizeof(*out));
    if (B < 1 || S < 1) return CVX_FAIL(CVX_ERR_INVALID, "input_ids must have at least one row and one token");
    /* the [H, S, S] bias and the per-thread S x S scores: sizes that overflow are refused, not wrapped */
    if ((double)H * (double)S * (double)S > 1e17 || (double)cvx_ops_num_threads() * (double)S * (double)S > 1e17)
        return CVX_FAIL(CVX_ERR_OOM, "%lld tokens need an attention bias of %lld x %lld x %lld floats", (long long)S,
                        (long long)H, (long long)S, (long long)S);
    for (int64_t i = 0; i < rows; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return CVX_FAIL(CVX_ERR_INVALID, "token id %lld at position %lld is outside the vocabulary of %d",
                            (long long)ids[i], (long long)i, c->vocab_size);
    float *x = NULL, *y = NULL, *q = NULL, *k = NULL, *v = NULL, *attn = NULL, *h0 = NULL, *h1 = NULL, *bias = NULL,
          *key_mask = NULL, *norm = NULL, *table = NULL;
    const int64_t wide = D > f ? D : f;
#define T5_BUFFER(p, n)                                                                                                \
    CVX_TRY(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, (size_t)(n) * sizeof(float), (void **)&(p)))
    T5_BUFFER(x, rows * d);
    T5_BUFFER(y, rows * d);
    T5_BUFFER(q, rows * D);
    T5_BUFFER(k, rows * D);
    T5_BUFFER(v, rows * D);
    T5_BUFFER(attn, rows * D);
    T5_BUFFER(h0, rows * wide);
    T5_BUFFER(h1, c->gated ? rows * f : 1);
    T5_BUFFER(bias, H * S * S);
    T5_BUFFER(norm, d);
    T5_BUFFER(table, (int64_t)c->relative_attention_num_buckets * H);
    if (mask) {
        /* transformers' extended mask: 0 where attended, the dtype's lowest value where not */
        T5_BUFFER(key_mask, rows);
        for (int64_t i = 0; i < rows; i++) key_mask[i] = mask[i] ? 0.0f : -3.4028234663852886e38f;
    }
#undef T5_BUFFER

    /* embedding (no sqrt(d) scaling) */
    const size_t esize = cvx_dtype_size(dt);
    for (int64_t i = 0; i < rows; i++)
        cvx_convert(x + i * d, CVX_F32, (const char *)t5->embedding + (size_t)(ids[i] * d) * esize, dt, (size_t)d);

    /* position bias [H, S, S] from block 0's table */
    {
        const int nb = c->relative_attention_num_buckets;
        cvx_convert(table, CVX_F32, t5->relative_bias, dt, (size_t)(nb * H));
        for (int64_t i = 0; i < S; i++)
            for (int64_t j = 0; j < S; j++) {
                const int bucket = relative_bucket(j - i, nb, c->relative_attention_max_distance);
                if (bucket < 0) {
                    st = CVX_FAIL(CVX_ERR_INVALID,
                                  "relative_attention_num_buckets = %d with relative_attention_max_distance = %d "
                                  "gives relative position %lld no bucket (transformers fails there too); %lld "
                                  "tokens need a larger max_distance",
                                  nb, c->relative_attention_max_distance, (long long)(j - i), (long long)S);
                    goto fail;
                }
                for (int64_t h = 0; h < H; h++) bias[(h * S + i) * S + j] = table[bucket * H + h];
            }
    }

    for (int l = 0; l < c->num_layers; l++) {
        const t5_block *blk = &t5->blocks[l];
        cvx_convert(norm, CVX_F32, blk->attn_norm, dt, (size_t)d);
        rms_norm(x, rows, d, c->layer_norm_epsilon, norm, y);
        CVX_TRY(cvx_linear(y, rows, d, blk->q, dt, NULL, D, q));
        CVX_TRY(cvx_linear(y, rows, d, blk->k, dt, NULL, D, k));
        CVX_TRY(cvx_linear(y, rows, d, blk->v, dt, NULL, D, v));
        CVX_TRY(biased_attention(q, k, v, B, S, (int)H, (int)kd, bias, key_mask, attn));
        CVX_TRY(cvx_linear(attn, rows, D, blk->o, dt, NULL, d, y));
        cvx_gated_add(x, NULL, y, rows, d);

        cvx_convert(norm, CVX_F32, blk->ff_norm, dt, (size_t)d);
        rms_norm(x, rows, d, c->layer_norm_epsilon, norm, y);
        if (c->gated) {
            CVX_TRY(cvx_linear(y, rows, d, blk->wi_0, dt, NULL, f, h0));
            cvx_gelu_tanh(h0, rows * f); /* gelu_new */
            CVX_TRY(cvx_linear(y, rows, d, blk->wi_1, dt, NULL, f, h1));
            for (int64_t i = 0; i < rows * f; i++) h0[i] *= h1[i];
        } else {
            CVX_TRY(cvx_linear(y, rows, d, blk->wi, dt, NULL, f, h0));
            for (int64_t i = 0; i < rows * f; i++) h0[i] = h0[i] > 0.0f ? h0[i] : 0.0f;
        }
        CVX_TRY(cvx_linear(h0, rows, f, blk->wo, dt, NULL, d, y));
        cvx_gated_add(x, NULL, y, rows, d);
    }
    const int64_t shape[3] = {B, S, d};
    CVX_TRY(cvx_tensor_alloc(out, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 3, shape));
    cvx_convert(norm, CVX_F32, t5->final_norm, dt, (size_t)d);
    rms_norm(x, rows, d, c->layer_norm_epsilon, norm, out->data);
fail:
    cvx_mem_free(x), cvx_mem_free(y), cvx_mem_free(q), cvx_mem_free(k), cvx_mem_free(v), cvx_mem_free(attn);
    cvx_mem_free(h0), cvx_mem_free(h1), cvx_mem_free(bias), cvx_mem_free(key_mask), cvx_mem_free(norm);
    cvx_mem_free(table);
    return st;
}
