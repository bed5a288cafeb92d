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

#include "../ops/backend.h"
#include "weights.h"

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

#define BE (ctx->be)

typedef struct t5_buffers {
    float *x, *y, *q, *k, *v, *attn, *h0, *h1, *bias, *key_mask;
    int64_t *ids;
    int32_t *buckets;
    cvx_tensor result;
} t5_buffers;

static void t5_buffers_free(cvx_ctx *ctx, t5_buffers *bf) {
    void *all[] = {bf->x,  bf->y,  bf->q,    bf->k,        bf->v,   bf->attn,
                   bf->h0, bf->h1, bf->bias, bf->key_mask, bf->ids, bf->buckets};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (all[i]) cvx_ctx_free(ctx, all[i]);
    cvx_tensor_release(&bf->result);
    memset(bf, 0, sizeof(*bf));
}

/* The forward after the checks; `buckets` [2S - 1] and `key_mask` [B S] (or NULL) are host arrays. */
static cvx_status forward(cvx_ctx *ctx, cvx_t5 *t5, const int64_t *ids, const float *key_mask, const int32_t *buckets,
                          int64_t B, int64_t S, t5_buffers *bf, cvx_tensor *out) {
    const cvx_t5_config *c = &t5->cfg;
    const cvx_dtype dt = t5->dtype;
    const int64_t d = c->d_model, H = c->num_heads, kd = c->d_kv, D = H * kd, f = c->d_ff, rows = B * S;
    const int64_t wide = D > f ? D : f;
#define T5_BUFFER(p, n) CVX_CHECK(cvx_ctx_alloc(ctx, (size_t)(n) * sizeof(*(p)), (void **)&(p)))
    T5_BUFFER(bf->ids, rows);
    T5_BUFFER(bf->buckets, 2 * S - 1);
    T5_BUFFER(bf->x, rows * d);
    T5_BUFFER(bf->y, rows * d);
    T5_BUFFER(bf->q, rows * D);
    T5_BUFFER(bf->k, rows * D);
    T5_BUFFER(bf->v, rows * D);
    T5_BUFFER(bf->attn, rows * D);
    T5_BUFFER(bf->h0, rows * wide);
    T5_BUFFER(bf->h1, c->gated ? rows * f : 1);
    T5_BUFFER(bf->bias, H * S * S);
    if (key_mask) T5_BUFFER(bf->key_mask, rows);
#undef T5_BUFFER
    CVX_CHECK(BE->upload(ctx, bf->ids, ids, (size_t)rows * sizeof(int64_t)));
    CVX_CHECK(BE->upload(ctx, bf->buckets, buckets, (size_t)(2 * S - 1) * sizeof(int32_t)));
    if (key_mask) CVX_CHECK(BE->upload(ctx, bf->key_mask, key_mask, (size_t)rows * sizeof(float)));

    /* embedding (no sqrt(d) scaling) */
    CVX_CHECK(BE->embedding(ctx, t5->embedding, dt, c->vocab_size, bf->ids, rows, d, bf->x));

    /* the blocks; block 0's group also holds the relative bias table, from which the position bias [H, S, S] that
     * every block adds is computed */
    cvx_status st = CVX_OK;
    for (int l = 0; l < c->num_layers && st == CVX_OK; l++) {
        if ((st = cvx_ctx_poll(ctx)) != CVX_OK || (st = cvx_ctx_acquire(ctx, 1 + l)) != CVX_OK) break;
        const t5_block *blk = &t5->blocks[l];
#define STEP(call)                                                                                                     \
    if (st == CVX_OK) st = (call)
        if (l == 0)
            STEP(BE->position_bias(ctx, t5->relative_bias, dt, c->relative_attention_num_buckets, bf->buckets, (int)H,
                                   S, bf->bias));
        STEP(BE->rms_norm(ctx, bf->x, rows, d, c->layer_norm_epsilon, blk->attn_norm, dt, bf->y));
        STEP(BE->linear(ctx, bf->y, rows, d, blk->q, dt, NULL, D, bf->q));
        STEP(BE->linear(ctx, bf->y, rows, d, blk->k, dt, NULL, D, bf->k));
        STEP(BE->linear(ctx, bf->y, rows, d, blk->v, dt, NULL, D, bf->v));
        STEP(BE->biased_attention(ctx, bf->q, bf->k, bf->v, B, S, (int)H, (int)kd, bf->bias, bf->key_mask, bf->attn));
        STEP(BE->linear(ctx, bf->attn, rows, D, blk->o, dt, NULL, d, bf->y));
        STEP(BE->gated_add(ctx, bf->x, NULL, bf->y, rows, d));

        STEP(BE->rms_norm(ctx, bf->x, rows, d, c->layer_norm_epsilon, blk->ff_norm, dt, bf->y));
        if (c->gated) {
            STEP(BE->linear(ctx, bf->y, rows, d, blk->wi_0, dt, NULL, f, bf->h0));
            STEP(BE->gelu_tanh(ctx, bf->h0, rows * f)); /* gelu_new */
            STEP(BE->linear(ctx, bf->y, rows, d, blk->wi_1, dt, NULL, f, bf->h1));
            STEP(BE->mul(ctx, bf->h0, bf->h1, rows * f));
        } else {
            STEP(BE->linear(ctx, bf->y, rows, d, blk->wi, dt, NULL, f, bf->h0));
            STEP(BE->relu(ctx, bf->h0, rows * f));
        }
        STEP(BE->linear(ctx, bf->h0, rows, f, blk->wo, dt, NULL, d, bf->y));
        STEP(BE->gated_add(ctx, bf->x, NULL, bf->y, rows, d));
#undef STEP
        cvx_ctx_release(ctx, 1 + l);
    }
    CVX_CHECK(st);
    const int64_t shape[3] = {B, S, d};
    CVX_CHECK(cvx_ctx_tensor(ctx, &bf->result, CVX_F32, 3, shape));
    CVX_CHECK(BE->rms_norm(ctx, bf->x, rows, d, c->layer_norm_epsilon, t5->final_norm, dt, bf->result.data));
    if (ctx->measuring) return CVX_OK; /* a measuring pass allocates no host output */
    CVX_CHECK(cvx_tensor_alloc(out, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 3, shape));
    st = BE->download(ctx, out->data, bf->result.data, cvx_tensor_nbytes(out));
    if (st != CVX_OK) cvx_tensor_release(out);
    return st;
}

cvx_status cvx_t5_forward(cvx_ctx *ctx, cvx_t5 *t5, const int64_t *ids, const int64_t *mask, int64_t B, int64_t S,
                          cvx_tensor *out) {
    cvx_status st = CVX_OK;
    const cvx_t5_config *c = &t5->cfg;
    const int64_t H = c->num_heads, rows = B * S;
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
    /* on the host, from the sizes alone: the bucket of each relative position j - i in [-(S-1), S-1], and
     * transformers' extended mask (0 where attended, the dtype's lowest value where not) */
    int32_t *buckets = malloc((size_t)(2 * S - 1) * sizeof(int32_t));
    float *key_mask = mask ? malloc((size_t)rows * sizeof(float)) : NULL;
    t5_buffers bf;
    memset(&bf, 0, sizeof(bf));
    if (!buckets || (mask && !key_mask)) {
        st = CVX_FAIL(CVX_ERR_OOM, "out of host memory");
        goto done;
    }
    const int nb = c->relative_attention_num_buckets;
    for (int64_t r = 0; r < 2 * S - 1; r++) {
        const int bucket = relative_bucket(r - (S - 1), nb, c->relative_attention_max_distance);
        if (bucket < 0) {
            st = CVX_FAIL(CVX_ERR_INVALID,
                          "relative_attention_num_buckets = %d with relative_attention_max_distance = %d gives "
                          "relative position %lld no bucket (transformers fails there too); %lld tokens need a "
                          "larger max_distance",
                          nb, c->relative_attention_max_distance, (long long)(r - (S - 1)), (long long)S);
            goto done;
        }
        buckets[r] = bucket;
    }
    for (int64_t i = 0; mask && i < rows; i++) key_mask[i] = mask[i] ? 0.0f : -3.4028234663852886e38f;
    /* one pass over the block groups for the whole forward; group 0 (embedding, final norm), acquired inside it,
     * is held until it ends. Cyclic: a second prompt list (the negative prompt) starts again at block 1 */
    if ((st = cvx_ctx_begin(ctx, 1, c->num_layers, 1)) != CVX_OK) goto done;
    if ((st = cvx_ctx_acquire(ctx, 0)) == CVX_OK) {
        st = forward(ctx, t5, ids, key_mask, buckets, B, S, &bf, out);
        cvx_ctx_release(ctx, 0);
    }
    cvx_ctx_end(ctx); /* also after a failure */
done:
    t5_buffers_free(ctx, &bf);
    free(buckets);
    free(key_mask);
    return st;
}
