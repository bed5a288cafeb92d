/* CogVideoXTransformer3DModel, read top to bottom like diffusers' cogvideox_transformer_3d.py.
 *
 * Legend: B batch, F latent frames, C channels, H/W latent height/width, p / p_t spatial / temporal patch, L text
 * tokens, N video tokens, S = L + N, D width (heads * head_dim), E time_embed_dim.
 * Tokens are kept as one [B, S, D] buffer with the text first, as diffusers concatenates them for attention and the
 * feed-forward; the text/video split only selects which modulation and gate a row gets. */
#include "transformer.h"

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../mem/residency.h"
#include "../ops/backend.h"
#include "weights.h"

/* Every weight, vectors included, stays in the checkpoint dtype (weight bytes = checkpoint bytes); vectors are
 * widened to f32 where they are used. */
typedef struct tr_lora tr_lora;

typedef struct tr_linear {
    const void *w; /* [out, in]; first: the weight's slot is the linear's address (find_linear relies on it) */
    const void *b; /* [out] or NULL */
    int in, out;
    tr_lora *lora; /* the unfused adapter terms on this linear, in load order (NULL: none) */
    int decl;      /* the weight's declaration index (set when a LoRA first targets the linear) */
    /* fuse_lora: the weight reads `fused` (W + sum s B A, run dtype) while adapters are merged; unfused terms are
     * then skipped, as peft's merged layers do. `baked`: a fused copy that unload_lora_weights kept as the linear's
     * own weight. `orig`: the checkpoint's bytes, kept untouched for unfuse_lora (set at the first fuse). */
    void *fused, *baked;
    const void *orig;
} tr_linear;

/* One adapted linear of one adapter: y += s * B (A x), s = scaling x the call's weight for the adapter. */
struct tr_lora {
    const void *A, *B; /* weight slots: A [rank, in], B [out, rank] in the run dtype */
    const void *host_A, *host_B;
    int rank, adapter, group; /* adapter: its index in cvx_transformer.adapters */
    float scaling;            /* lora_alpha / r (or / sqrt(r) with rslora), as the caller derived it */
    tr_linear *target;
    tr_lora *next;
};

/* A loaded adapter: its tensors read in place from its mapped file where stored in the run dtype, else from one
 * converted host copy. */
typedef struct tr_adapter {
    cvx_st_file *file;
    void *converted;
    int64_t mapped_bytes, bytes; /* bytes: the device-layout bytes its tensors add to their groups */
    int count;
    tr_lora *terms;
} tr_adapter;

typedef struct tr_norm { /* LayerNorm affine (NULL when norm_elementwise_affine is false) */
    const void *w, *b;
} tr_norm;

typedef struct tr_block {                 /* CogVideoXBlock */
    tr_linear norm1_linear, norm2_linear; /* CogVideoXLayerNormZero: E -> 6D */
    tr_norm norm1, norm2;
    tr_linear to_q, to_k, to_v, to_out;
    tr_norm norm_q, norm_k; /* over head_dim, eps 1e-6 */
    tr_linear ff_in, ff_out;
} tr_block;

struct cvx_transformer {
    cvx_transformer_config cfg;
    int D;
    cvx_dtype dtype;
    tr_linear patch_proj; /* Conv2d [D, C, p, p] viewed as [D, C*p*p], or Linear [D, C*p_t*p*p] (1.5) */
    tr_linear text_proj;
    const void *pos_embedding; /* learned table [1, rows, D] */
    tr_linear time_linear_1, time_linear_2, ofs_linear_1, ofs_linear_2;
    tr_block *blocks;
    tr_norm norm_final, norm_out;
    tr_linear norm_out_linear, proj_out;
    cvx_weights weights;
    tr_adapter **adapters; /* in load order; a forward's lora_scales are indexed alike */
    int num_adapters;
    int64_t fused_bytes; /* the private fused copies */
};

/* ---- config and weights ----------------------------------------------------------------------------------------- */

#define FIELD(key, type, required)                                                                                     \
    { #key, CVX_CONFIG_##type, offsetof(cvx_transformer_config, key), required, 0, 0 }
const cvx_config_field cvx_transformer_config_fields[] = {
    FIELD(num_attention_heads, INT, 1),
    FIELD(attention_head_dim, INT, 1),
    FIELD(in_channels, INT, 1),
    FIELD(out_channels, INT, 1),
    FIELD(flip_sin_to_cos, BOOL, 1),
    FIELD(freq_shift, INT, 1),
    FIELD(time_embed_dim, INT, 1),
    FIELD(ofs_embed_dim, INT, 0), /* 0: no ofs embedding (diffusers' None) */
    FIELD(text_embed_dim, INT, 1),
    FIELD(num_layers, INT, 1),
    FIELD(attention_bias, BOOL, 1),
    FIELD(patch_bias, BOOL, 1),
    FIELD(norm_elementwise_affine, BOOL, 1),
    FIELD(patch_size, INT, 1),
    FIELD(patch_size_t, INT, 0), /* 0: CogVideoX 1.0 (diffusers' None) */
    FIELD(max_text_seq_length, INT, 1),
    FIELD(use_learned_positional_embeddings, BOOL, 0),
    FIELD(learned_table_rows, INT, 0),
    FIELD(norm_eps, FLOAT, 1),
    {NULL, 0, 0, 0, 0, 0},
};
#undef FIELD

static void decl_linear(cvx_weights *ws, int group, tr_linear *l, int out, int in, int bias, const char *name) {
    const int64_t wshape[2] = {out, in}, bshape[1] = {out};
    l->in = in, l->out = out;
    cvx_weights_declare(ws, group, 0, (void **)&l->w, 2, wshape, "%s.weight", name);
    if (bias) cvx_weights_declare(ws, group, 0, (void **)&l->b, 1, bshape, "%s.bias", name);
}

static void decl_norm(cvx_weights *ws, int group, tr_norm *n, int dim, int affine, const char *name) {
    const int64_t shape[1] = {dim};
    if (!affine) return;
    cvx_weights_declare(ws, group, 0, (void **)&n->w, 1, shape, "%s.weight", name);
    cvx_weights_declare(ws, group, 0, (void **)&n->b, 1, shape, "%s.bias", name);
}

static cvx_status declare(cvx_transformer *tr) {
    const cvx_transformer_config *c = &tr->cfg;
    cvx_weights *ws = &tr->weights;
    const int D = tr->D, E = c->time_embed_dim, p = c->patch_size, aff = c->norm_elementwise_affine;
    char name[CVX_WEIGHT_NAME_MAX];
    /* group 0: everything outside the blocks; group 1 + i: block i */
    if (c->patch_size_t) {
        decl_linear(ws, 0, &tr->patch_proj, D, c->in_channels * p * p * c->patch_size_t, 1, "patch_embed.proj");
    } else {
        const int64_t wshape[4] = {D, c->in_channels, p, p}, bshape[1] = {D};
        tr->patch_proj.in = c->in_channels * p * p, tr->patch_proj.out = D;
        cvx_weights_declare(ws, 0, 0, (void **)&tr->patch_proj.w, 4, wshape, "patch_embed.proj.weight");
        if (c->patch_bias)
            cvx_weights_declare(ws, 0, 0, (void **)&tr->patch_proj.b, 1, bshape, "patch_embed.proj.bias");
    }
    decl_linear(ws, 0, &tr->text_proj, D, c->text_embed_dim, 1, "patch_embed.text_proj");
    if (c->use_learned_positional_embeddings) {
        const int64_t shape[3] = {1, c->learned_table_rows, D};
        cvx_weights_declare(ws, 0, 0, (void **)&tr->pos_embedding, 3, shape, "patch_embed.pos_embedding");
    }
    decl_linear(ws, 0, &tr->time_linear_1, E, D, 1, "time_embedding.linear_1");
    decl_linear(ws, 0, &tr->time_linear_2, E, E, 1, "time_embedding.linear_2");
    if (c->ofs_embed_dim) {
        decl_linear(ws, 0, &tr->ofs_linear_1, c->ofs_embed_dim, c->ofs_embed_dim, 1, "ofs_embedding.linear_1");
        decl_linear(ws, 0, &tr->ofs_linear_2, c->ofs_embed_dim, c->ofs_embed_dim, 1, "ofs_embedding.linear_2");
    }
    tr->blocks = calloc((size_t)c->num_layers, sizeof(tr_block));
    if (!tr->blocks) return CVX_FAIL(CVX_ERR_OOM, "out of host memory building the transformer");
    for (int i = 0; i < c->num_layers; i++) {
        tr_block *blk = &tr->blocks[i];
        const int g = 1 + i;
#define BLOCK_NAME(suffix) (snprintf(name, sizeof(name), "transformer_blocks.%d.%s", i, suffix), name)
        decl_linear(ws, g, &blk->norm1_linear, 6 * D, E, 1, BLOCK_NAME("norm1.linear"));
        decl_norm(ws, g, &blk->norm1, D, aff, BLOCK_NAME("norm1.norm"));
        decl_norm(ws, g, &blk->norm_q, c->attention_head_dim, 1, BLOCK_NAME("attn1.norm_q"));
        decl_norm(ws, g, &blk->norm_k, c->attention_head_dim, 1, BLOCK_NAME("attn1.norm_k"));
        decl_linear(ws, g, &blk->to_q, D, D, c->attention_bias, BLOCK_NAME("attn1.to_q"));
        decl_linear(ws, g, &blk->to_k, D, D, c->attention_bias, BLOCK_NAME("attn1.to_k"));
        decl_linear(ws, g, &blk->to_v, D, D, c->attention_bias, BLOCK_NAME("attn1.to_v"));
        decl_linear(ws, g, &blk->to_out, D, D, 1, BLOCK_NAME("attn1.to_out.0"));
        decl_linear(ws, g, &blk->norm2_linear, 6 * D, E, 1, BLOCK_NAME("norm2.linear"));
        decl_norm(ws, g, &blk->norm2, D, aff, BLOCK_NAME("norm2.norm"));
        decl_linear(ws, g, &blk->ff_in, 4 * D, D, 1, BLOCK_NAME("ff.net.0.proj"));
        decl_linear(ws, g, &blk->ff_out, D, 4 * D, 1, BLOCK_NAME("ff.net.2"));
#undef BLOCK_NAME
    }
    decl_norm(ws, 0, &tr->norm_final, D, aff, "norm_final");
    decl_linear(ws, 0, &tr->norm_out_linear, 2 * D, E, 1, "norm_out.linear");
    decl_norm(ws, 0, &tr->norm_out, D, aff, "norm_out.norm");
    const int pt = c->patch_size_t ? c->patch_size_t : 1;
    decl_linear(ws, 0, &tr->proj_out, p * p * pt * c->out_channels, D, 1, "proj_out");
    return CVX_OK;
}

/* Every size the model divides by or multiplies into a C int, with the config key named. */
static cvx_status check_config(const cvx_transformer_config *c) {
    const struct {
        const char *key;
        int value, minimum;
    } sizes[] = {
        {"num_attention_heads", c->num_attention_heads, 1},
        {"attention_head_dim", c->attention_head_dim, 2},
        {"in_channels", c->in_channels, 1},
        {"out_channels", c->out_channels, 1},
        {"time_embed_dim", c->time_embed_dim, 1},
        {"ofs_embed_dim", c->ofs_embed_dim, 0},
        {"text_embed_dim", c->text_embed_dim, 1},
        {"num_layers", c->num_layers, 0},
        {"patch_size", c->patch_size, 1},
        {"patch_size_t", c->patch_size_t, 0},
        {"max_text_seq_length", c->max_text_seq_length, 0},
        {"learned_table_rows", c->learned_table_rows, 0},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        if (sizes[i].value < sizes[i].minimum)
            return CVX_FAIL(CVX_ERR_INVALID, "transformer config '%s' = %d must be at least %d", sizes[i].key,
                            sizes[i].value, sizes[i].minimum);
    if (c->attention_head_dim % 2)
        return CVX_FAIL(CVX_ERR_INVALID, "transformer config 'attention_head_dim' = %d must be even",
                        c->attention_head_dim);
    /* the widest linear is the 6D modulation; the patch features are C p p p_t */
    const int64_t D = (int64_t)c->num_attention_heads * c->attention_head_dim;
    const int64_t pt = c->patch_size_t ? c->patch_size_t : 1, pp = (int64_t)c->patch_size * c->patch_size * pt;
    if (6 * D > INT_MAX || pp * c->in_channels > INT_MAX || pp * c->out_channels > INT_MAX)
        return CVX_FAIL(CVX_ERR_INVALID,
                        "transformer config too large: 6 x heads x head_dim = %lld, in/out_channels x patch_size^2 x "
                        "patch_size_t = %lld / %lld (at most %d each)",
                        (long long)(6 * D), (long long)(pp * c->in_channels), (long long)(pp * c->out_channels),
                        INT_MAX);
    if (c->ofs_embed_dim && c->ofs_embed_dim != c->time_embed_dim)
        return CVX_FAIL(CVX_ERR_INVALID, "ofs_embed_dim %d must equal time_embed_dim %d (their embeddings are added)",
                        c->ofs_embed_dim, c->time_embed_dim);
    /* the timestep frequencies divide by (dim / 2 - freq_shift) */
    if (c->freq_shift == D / 2 || (c->ofs_embed_dim && c->freq_shift == c->ofs_embed_dim / 2))
        return CVX_FAIL(CVX_ERR_INVALID,
                        "transformer config 'freq_shift' = %d divides the timestep frequencies by zero", c->freq_shift);
    if (c->use_learned_positional_embeddings && c->learned_table_rows < 1)
        return CVX_FAIL(CVX_ERR_INVALID, "a learned positional table needs at least one row");
    if (!(c->norm_eps > 0.0f) || !isfinite(c->norm_eps))
        return CVX_FAIL(CVX_ERR_INVALID, "transformer config 'norm_eps' = %g must be positive and finite",
                        (double)c->norm_eps);
    return CVX_OK;
}

/* The model shell and its declarations for `cfg`, nothing loaded: what create loads into and schema reports. */
static cvx_status build(const cvx_transformer_config *cfg, const cvx_st_file *st, cvx_dtype dtype,
                        cvx_transformer **out) {
    *out = NULL;
    CVX_CHECK(check_config(cfg));
    /* a block holds 17 tensors, 3 more with attention biases and 4 more with affine norms */
    const int64_t per_block = 17 + 3 * (cfg->attention_bias != 0) + 4 * (cfg->norm_elementwise_affine != 0);
    CVX_CHECK(cvx_weights_check_count(st, per_block * cfg->num_layers, "num_layers", cfg->num_layers));
    cvx_transformer *tr = calloc(1, sizeof(*tr));
    if (!tr) return CVX_FAIL(CVX_ERR_OOM, "out of host memory building the transformer");
    tr->cfg = *cfg;
    tr->D = cfg->num_attention_heads * cfg->attention_head_dim;
    tr->dtype = dtype;
    tr->weights.dtype = dtype;
    cvx_status st_ = declare(tr);
    if (st_ == CVX_OK) st_ = tr->weights.decl_status;
    if (st_ != CVX_OK) {
        cvx_transformer_free(tr);
        return st_;
    }
    *out = tr;
    return CVX_OK;
}

cvx_status cvx_transformer_create(const cvx_transformer_config *cfg, const cvx_st_file *st, cvx_dtype dtype,
                                  uint64_t seed, cvx_transformer **out) {
    *out = NULL;
    cvx_transformer *tr = NULL;
    CVX_CHECK(build(cfg, st, dtype, &tr));
    cvx_status st_ =
        st ? cvx_weights_load(&tr->weights, st, dtype) : cvx_weights_init_random(&tr->weights, dtype, seed);
    if (st_ != CVX_OK) {
        cvx_transformer_free(tr);
        return st_;
    }
    *out = tr;
    return CVX_OK;
}

cvx_status cvx_transformer_schema(const cvx_transformer_config *cfg, cvx_dtype dtype, cvx_weights *out) {
    memset(out, 0, sizeof(*out));
    cvx_transformer *tr = NULL;
    CVX_CHECK(build(cfg, NULL, dtype, &tr));
    *out = tr->weights; /* the table moves out; its slots pointed into the shell freed below */
    for (int i = 0; i < out->count; i++) out->decls[i].slot = NULL;
    memset(&tr->weights, 0, sizeof(tr->weights));
    cvx_transformer_free(tr);
    return CVX_OK;
}

static int64_t lora_live_bytes; /* every live adapter's and fused copy's host bytes, process-wide (memory_stats) */

static void lora_account(int64_t delta) { __atomic_fetch_add(&lora_live_bytes, delta, __ATOMIC_RELAXED); }
int64_t cvx_lora_live_bytes(void) { return __atomic_load_n(&lora_live_bytes, __ATOMIC_RELAXED); }

static void adapter_free(tr_adapter *a);

void cvx_transformer_free(cvx_transformer *tr) {
    if (!tr) return;
    cvx_weights_free(&tr->weights); /* the residency first: its copies may still read the adapters' bytes */
    for (int i = 0; i < tr->num_adapters; i++) adapter_free(tr->adapters[i]);
    free(tr->adapters);
    tr_linear *all[] = {&tr->patch_proj,   &tr->text_proj,    &tr->time_linear_1,   &tr->time_linear_2,
                        &tr->ofs_linear_1, &tr->ofs_linear_2, &tr->norm_out_linear, &tr->proj_out};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        cvx_mem_free(all[i]->fused);
        cvx_mem_free(all[i]->baked);
    }
    for (int b = 0; tr->blocks && b < tr->cfg.num_layers; b++) {
        tr_block *blk = &tr->blocks[b];
        tr_linear *bl[] = {&blk->norm1_linear, &blk->norm2_linear, &blk->to_q,  &blk->to_k,
                           &blk->to_v,         &blk->to_out,       &blk->ff_in, &blk->ff_out};
        for (size_t i = 0; i < sizeof(bl) / sizeof(bl[0]); i++) {
            cvx_mem_free(bl[i]->fused);
            cvx_mem_free(bl[i]->baked);
        }
    }
    lora_account(-tr->fused_bytes);
    free(tr->blocks);
    free(tr);
}

int64_t cvx_transformer_weight_bytes(const cvx_transformer *tr) { return cvx_weights_total_bytes(&tr->weights); }

int cvx_transformer_num_weight_groups(const cvx_transformer *tr) { return tr->weights.num_groups; }
const cvx_weights *cvx_transformer_weights(const cvx_transformer *tr) { return &tr->weights; }

/* ---- LoRA adapters ------------------------------------------------------------------------------------------------
 * An adapter's A/B tensors join the weight group of the linear they modify (appended after the group's checkpoint
 * tensors in its device layout), so every residency policy moves and streams them with their block; the checkpoint's
 * own bytes are never copied. A fused linear reads a private copy W + sum s_i B_i A_i instead of the checkpoint's
 * bytes; unfusing points it back at the untouched original. */

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* The linear whose weight is declared as `<module>.weight` (every 2-D ".weight" declaration is a tr_linear's w
 * slot: decl_linear is the only place that declares them), or NULL. */
static tr_linear *find_linear(cvx_transformer *tr, const char *module) {
    const size_t len = strlen(module);
    const cvx_weights *ws = &tr->weights;
    for (int i = 0; i < ws->count; i++) {
        const cvx_weight_decl *d = &ws->decls[i];
        if (d->ndim == 2 && strncmp(d->name, module, len) == 0 && strcmp(d->name + len, ".weight") == 0) {
            tr_linear *l = (tr_linear *)(void *)d->slot;
            l->decl = i;
            return l;
        }
    }
    return NULL;
}

/* The residency table: the checkpoint's tensors (a fused weight's entry at its private copy), then every adapter
 * term's A and B after its group's checkpoint tensors. */
static cvx_status retable(cvx_transformer *tr) {
    cvx_weights *ws = &tr->weights;
    int terms = 0;
    for (int a = 0; a < tr->num_adapters; a++) terms += tr->adapters[a]->count;
    cvx_residency_tensor *table = malloc((size_t)(ws->count + 2 * terms + 1) * sizeof(*table));
    int64_t *end = malloc((size_t)ws->num_groups * sizeof(int64_t));
    if (!table || !end) {
        free(table);
        free(end);
        return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the weight table");
    }
    for (int i = 0; i < ws->count; i++) table[i] = cvx_weights_entry(ws, i);
    for (int g = 0; g < ws->num_groups; g++) end[g] = ws->group_bytes[g];
    const size_t esize = cvx_dtype_size(tr->dtype);
    int n = ws->count;
    for (int a = 0; a < tr->num_adapters; a++)
        for (int k = 0; k < tr->adapters[a]->count; k++) {
            tr_lora *t = &tr->adapters[a]->terms[k];
            const size_t bytes_a = (size_t)t->rank * (size_t)t->target->in * esize;
            const size_t bytes_b = (size_t)t->target->out * (size_t)t->rank * esize;
            table[n++] = (cvx_residency_tensor){(void **)&t->A, t->host_A, bytes_a, (size_t)end[t->group], t->group};
            end[t->group] += (int64_t)align64(bytes_a);
            table[n++] = (cvx_residency_tensor){(void **)&t->B, t->host_B, bytes_b, (size_t)end[t->group], t->group};
            end[t->group] += (int64_t)align64(bytes_b);
        }
    const cvx_status st = cvx_residency_retable(ws->res, table, n);
    free(table);
    free(end);
    return st;
}

static void adapter_free(tr_adapter *a) {
    if (!a) return;
    cvx_mem_free(a->converted);
    if (a->file) {
        cvx_mem_add_mapped(CVX_DEVICE_CPU, -a->mapped_bytes);
        cvx_st_close(a->file);
    }
    free(a->terms);
    free(a);
}

/* Takes adapter a's terms off their linears. */
static void unlink_terms(tr_adapter *a) {
    for (int k = 0; k < a->count; k++) {
        tr_lora *t = &a->terms[k];
        for (tr_lora **p = &t->target->lora; *p; p = &(*p)->next)
            if (*p == t) {
                *p = t->next;
                break;
            }
    }
}

int cvx_transformer_num_adapters(const cvx_transformer *tr) { return tr->num_adapters; }

int64_t cvx_transformer_adapter_bytes(const cvx_transformer *tr, int index) {
    return index >= 0 && index < tr->num_adapters ? tr->adapters[index]->bytes : 0;
}

int64_t cvx_transformer_fused_bytes(const cvx_transformer *tr) { return tr->fused_bytes; }

/* Checks one adapter tensor read from the file: 2-D, the given shape. */
static cvx_status check_lora_tensor(const cvx_st_tensor *t, const char *key, int64_t rows, int64_t cols) {
    if (!t) return CVX_FAIL(CVX_ERR_INVALID, "the LoRA file lacks '%s'", key);
    if (t->ndim != 2 || (rows >= 0 && t->shape[0] != rows) || (cols >= 0 && t->shape[1] != cols))
        return CVX_FAIL(CVX_ERR_INVALID,
                        "LoRA tensor '%s' has %d dimension(s) [%lld, %lld]; expected [%lld, %lld] (rank x in for "
                        "lora_A, out x rank for lora_B; -1: any)",
                        key, t->ndim, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                        (long long)rows, (long long)cols);
    return CVX_OK;
}

/* A tensor stored as the terms read it: the run dtype, aligned for it. */
static int lora_in_place(const cvx_st_tensor *t, cvx_dtype dtype) {
    return t->dtype == dtype && (uintptr_t)t->data % cvx_dtype_size(dtype) == 0;
}

cvx_status cvx_transformer_lora_load(cvx_transformer *tr, const cvx_st_file *st, const char *prefix,
                                     const char *const *modules, const float *scalings, int count) {
    if (count < 1 || count > CVX_WEIGHTS_MAX_TENSORS)
        return CVX_FAIL(CVX_ERR_INVALID, "a LoRA adapter must modify between 1 and %d linears, got %d",
                        CVX_WEIGHTS_MAX_TENSORS, count);
    tr_adapter *a = calloc(1, sizeof(*a));
    tr_adapter **grown = a ? realloc(tr->adapters, (size_t)(tr->num_adapters + 1) * sizeof(*grown)) : NULL;
    if (grown) tr->adapters = grown;
    if (a) a->terms = calloc((size_t)count, sizeof(tr_lora));
    if (!a || !grown || !a->terms) {
        adapter_free(a);
        return CVX_FAIL(CVX_ERR_OOM, "out of host memory loading a LoRA adapter");
    }
    const cvx_dtype dtype = tr->dtype;
    const size_t esize = cvx_dtype_size(dtype);
    const cvx_st_tensor *ta[2];
    char key[2][CVX_WEIGHT_NAME_MAX + 64];
    size_t convert_bytes = 0;
    cvx_status status = CVX_OK;
    /* every size first, against the model and the file, before any byte is allocated or converted */
    for (int k = 0; k < count && status == CVX_OK; k++) {
        tr_lora *t = &a->terms[k];
        tr_linear *l = strlen(modules[k]) < CVX_WEIGHT_NAME_MAX ? find_linear(tr, modules[k]) : NULL;
        if (!l) {
            status = CVX_FAIL(CVX_ERR_INVALID, "the transformer has no linear layer '%.200s'", modules[k]);
            break;
        }
        if (!(scalings[k] == scalings[k]) || scalings[k] > 1e30f || scalings[k] < -1e30f) {
            status =
                CVX_FAIL(CVX_ERR_INVALID, "LoRA scaling %g of '%s' is not finite", (double)scalings[k], modules[k]);
            break;
        }
        snprintf(key[0], sizeof(key[0]), "%s%s.lora_A.weight", prefix, modules[k]);
        snprintf(key[1], sizeof(key[1]), "%s%s.lora_B.weight", prefix, modules[k]);
        ta[0] = cvx_st_find(st, key[0]);
        ta[1] = cvx_st_find(st, key[1]);
        if ((status = check_lora_tensor(ta[0], key[0], -1, l->in)) != CVX_OK) break;
        const int64_t rank = ta[0]->shape[0];
        if (rank < 1 || rank > (1 << 20)) {
            status = CVX_FAIL(CVX_ERR_INVALID, "LoRA tensor '%s' has rank %lld; expected 1 to %d", key[0],
                              (long long)rank, 1 << 20);
            break;
        }
        if ((status = check_lora_tensor(ta[1], key[1], l->out, rank)) != CVX_OK) break;
        for (int m = 0; m < k; m++)
            if (a->terms[m].target == l) {
                status = CVX_FAIL(CVX_ERR_INVALID, "LoRA module '%s' is listed twice", modules[k]);
                break;
            }
        t->target = l;
        t->rank = (int)rank;
        t->scaling = scalings[k];
        t->adapter = tr->num_adapters;
        t->group = tr->weights.decls[l->decl].group;
        for (int m = 0; m < 2; m++)
            if (!lora_in_place(ta[m], dtype))
                convert_bytes += align64((size_t)(ta[m]->nbytes / cvx_dtype_size(ta[m]->dtype)) * esize);
    }
    if (status == CVX_OK && convert_bytes) status = cvx_mem_alloc_pages(CVX_MEM_WEIGHTS, convert_bytes, &a->converted);
    size_t at = 0;
    for (int k = 0; k < count && status == CVX_OK; k++) {
        tr_lora *t = &a->terms[k];
        snprintf(key[0], sizeof(key[0]), "%s%s.lora_A.weight", prefix, modules[k]);
        snprintf(key[1], sizeof(key[1]), "%s%s.lora_B.weight", prefix, modules[k]);
        const void **host[2] = {&t->host_A, &t->host_B};
        for (int m = 0; m < 2; m++) {
            const cvx_st_tensor *x = cvx_st_find(st, key[m]);
            const size_t n = (size_t)(x->nbytes / cvx_dtype_size(x->dtype));
            if (lora_in_place(x, dtype)) {
                *host[m] = x->data;
                a->mapped_bytes += (int64_t)(n * esize);
            } else {
                void *dst = (char *)a->converted + at;
                cvx_convert(dst, dtype, x->data, x->dtype, n);
                *host[m] = dst;
                at += align64(n * esize);
            }
            a->bytes += (int64_t)align64(n * esize);
        }
        t->A = t->host_A;
        t->B = t->host_B;
    }
    if (status == CVX_OK && a->mapped_bytes) {
        status = cvx_mem_add_mapped(CVX_DEVICE_CPU, a->mapped_bytes);
        if (status == CVX_OK) {
            a->file = (cvx_st_file *)st; /* retained: the terms read its mapping */
            cvx_st_retain(a->file);
        } else {
            a->mapped_bytes = 0;
        }
    }
    a->count = count;
    if (status != CVX_OK) {
        a->count = 0;
        adapter_free(a);
        return status;
    }
    /* link the terms at the end of their linears' lists (load order, as peft adds adapters in turn) */
    for (int k = 0; k < count; k++) {
        tr_lora **p = &a->terms[k].target->lora;
        while (*p) p = &(*p)->next;
        *p = &a->terms[k];
    }
    tr->adapters[tr->num_adapters++] = a;
    status = retable(tr);
    if (status != CVX_OK) {
        tr->num_adapters--;
        unlink_terms(a);
        adapter_free(a);
        (void)retable(tr); /* back to the table without it (shrinks: needs nothing new on the host) */
        return status;
    }
    lora_account(a->bytes);
    return CVX_OK;
}

cvx_status cvx_transformer_lora_delete(cvx_transformer *tr, int index) {
    if (index < 0 || index >= tr->num_adapters)
        return CVX_FAIL(CVX_ERR_INVALID, "no LoRA adapter %d (the model has %d)", index, tr->num_adapters);
    tr_adapter *a = tr->adapters[index];
    unlink_terms(a);
    for (int i = index + 1; i < tr->num_adapters; i++) {
        tr->adapters[i - 1] = tr->adapters[i];
        for (int k = 0; k < tr->adapters[i - 1]->count; k++) tr->adapters[i - 1]->terms[k].adapter = i - 1;
    }
    tr->num_adapters--;
    /* the table without its tensors first (the residency drops the device copies that read them), then its bytes */
    const cvx_status st = retable(tr);
    lora_account(-a->bytes);
    adapter_free(a);
    return st;
}

/* Calls fn on every linear of the model. */
static void each_linear(cvx_transformer *tr, void (*fn)(cvx_transformer *, tr_linear *, void *), void *arg) {
    tr_linear *all[] = {&tr->patch_proj,   &tr->text_proj,    &tr->time_linear_1,   &tr->time_linear_2,
                        &tr->ofs_linear_1, &tr->ofs_linear_2, &tr->norm_out_linear, &tr->proj_out};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) fn(tr, all[i], arg);
    for (int b = 0; b < tr->cfg.num_layers; b++) {
        tr_block *blk = &tr->blocks[b];
        tr_linear *bl[] = {&blk->norm1_linear, &blk->norm2_linear, &blk->to_q,  &blk->to_k,
                           &blk->to_v,         &blk->to_out,       &blk->ff_in, &blk->ff_out};
        for (size_t i = 0; i < sizeof(bl) / sizeof(bl[0]); i++) fn(tr, bl[i], arg);
    }
}

/* What the linear reads while no adapter is merged: a baked copy, else the checkpoint's bytes. */
static const void *unmerged_weight(const cvx_transformer *tr, const tr_linear *l) {
    return l->baked ? l->baked : l->orig ? l->orig : tr->weights.decls[l->decl].host;
}

static void set_weight_host(cvx_transformer *tr, tr_linear *l, const void *host) {
    tr->weights.decls[l->decl].host = host;
}

typedef struct fuse_job {
    const float *scales; /* per adapter: the factor its terms merge with (0: not merged) */
    int count, safe;
    void **made; /* [made_n] the new fused copies, committed only when every linear succeeded */
    tr_linear **made_for;
    int made_n, made_cap;
    cvx_status status;
} fuse_job;

/* x [n] rounded to dtype and back to f32 in place, through scratch (n elements of dtype). */
static void round_through(float *x, void *scratch, cvx_dtype dtype, size_t n) {
    cvx_convert(scratch, dtype, x, CVX_F32, n);
    cvx_convert(x, CVX_F32, scratch, dtype, n);
}

/* One linear's fused copy: (its current weight) + s B A per merged term, stored in the run dtype. In a 16-bit run
 * each term merges as peft merges on the CPU: the delta (B @ A) * s in f32, rounded to the dtype (get_delta_weight's
 * cast back), then added in the dtype (weight.data += delta), one rounding per adapter; rounding the f32 sum of all
 * terms once instead differs from diffusers by 2e-3 relative in bfloat16. In f32 both are the same sums.
 * safe_fusing (as diffusers): the first adapter whose merge makes a weight non-finite fails the whole fuse. */
static void fuse_one(cvx_transformer *tr, tr_linear *l, void *arg) {
    fuse_job *job = arg;
    if (job->status != CVX_OK) return;
    int any = 0;
    for (tr_lora *t = l->lora; t; t = t->next) any |= t->adapter < job->count && job->scales[t->adapter] != 0.0f;
    if (!any) return;
    const cvx_dtype dtype = tr->dtype;
    const int64_t n = (int64_t)l->out * l->in;
    float *w = malloc((size_t)n * sizeof(float)), *d = malloc((size_t)l->in * sizeof(float));
    void *row16 = dtype != CVX_F32 ? malloc((size_t)l->in * cvx_dtype_size(dtype)) : NULL;
    float *A = NULL, *B = NULL;
    void *out = NULL;
    if (job->made_n == job->made_cap) {
        const int cap = job->made_cap ? 2 * job->made_cap : 16;
        void **m = realloc(job->made, (size_t)cap * sizeof(void *));
        if (m) job->made = m;
        tr_linear **f = m ? realloc(job->made_for, (size_t)cap * sizeof(tr_linear *)) : NULL;
        if (f) job->made_for = f;
        if (m && f) job->made_cap = cap;
    }
    if (!w || !d || (dtype != CVX_F32 && !row16) || job->made_n == job->made_cap) {
        job->status = CVX_FAIL(CVX_ERR_OOM, "out of host memory fusing a LoRA");
        goto done;
    }
    cvx_convert(w, CVX_F32, tr->weights.decls[l->decl].host, dtype, (size_t)n);
    for (tr_lora *t = l->lora; t; t = t->next) {
        if (t->adapter >= job->count || job->scales[t->adapter] == 0.0f) continue;
        const float s = t->scaling * job->scales[t->adapter];
        const size_t na = (size_t)t->rank * (size_t)l->in, nb = (size_t)l->out * (size_t)t->rank;
        float *a2 = realloc(A, na * sizeof(float)), *b2 = a2 ? realloc(B, nb * sizeof(float)) : NULL;
        if (a2) A = a2;
        if (b2) B = b2;
        if (!a2 || !b2) {
            job->status = CVX_FAIL(CVX_ERR_OOM, "out of host memory fusing a LoRA");
            goto done;
        }
        cvx_convert(A, CVX_F32, t->host_A, dtype, na);
        cvx_convert(B, CVX_F32, t->host_B, dtype, nb);
        int finite = 1;
        for (int o = 0; o < l->out; o++) {
            /* delta row = (B A)[o, :] first, then scaled and added: peft's W + (B @ A) * scaling */
            memset(d, 0, (size_t)l->in * sizeof(float));
            for (int r = 0; r < t->rank; r++) {
                const float b = B[(size_t)o * t->rank + r];
                const float *ar = A + (size_t)r * l->in;
                for (int i = 0; i < l->in; i++) d[i] += b * ar[i];
            }
            float *wr = w + (size_t)o * l->in;
            for (int i = 0; i < l->in; i++) d[i] *= s;
            if (row16) round_through(d, row16, dtype, (size_t)l->in); /* the delta in the dtype */
            for (int i = 0; i < l->in; i++) wr[i] += d[i];
            if (row16) round_through(wr, row16, dtype, (size_t)l->in); /* the add in the dtype (may overflow) */
            for (int i = 0; i < l->in; i++) finite &= isfinite(wr[i]) != 0;
        }
        if (job->safe && !finite) {
            job->status = CVX_FAIL(CVX_ERR_INVALID, "LoRA adapter %d gives non-finite merged weights", t->adapter);
            goto done;
        }
    }
    const size_t bytes = (size_t)n * cvx_dtype_size(dtype);
    if ((job->status = cvx_mem_alloc_pages(CVX_MEM_WEIGHTS, bytes, &out)) != CVX_OK) goto done;
    cvx_convert(out, dtype, w, CVX_F32, (size_t)n);
    job->made[job->made_n] = out;
    job->made_for[job->made_n++] = l;
done:
    free(w);
    free(d);
    free(row16);
    free(A);
    free(B);
}

cvx_status cvx_transformer_lora_fuse(cvx_transformer *tr, const float *scales, int count, int safe_fusing) {
    if (count != tr->num_adapters)
        return CVX_FAIL(CVX_ERR_INVALID, "fuse: %d adapter scales for %d adapters", count, tr->num_adapters);
    fuse_job job = {scales, count, safe_fusing, NULL, NULL, 0, 0, CVX_OK};
    each_linear(tr, fuse_one, &job);
    if (job.status != CVX_OK) {
        for (int i = 0; i < job.made_n; i++) cvx_mem_free(job.made[i]);
        free(job.made);
        free(job.made_for);
        return job.status;
    }
    void **old = calloc((size_t)(job.made_n + 1), sizeof(void *));
    if (!old) {
        for (int i = 0; i < job.made_n; i++) cvx_mem_free(job.made[i]);
        free(job.made);
        free(job.made_for);
        return CVX_FAIL(CVX_ERR_OOM, "out of host memory fusing a LoRA");
    }
    for (int i = 0; i < job.made_n; i++) {
        tr_linear *l = job.made_for[i];
        if (!l->orig) l->orig = tr->weights.decls[l->decl].host; /* the checkpoint's bytes, for unfuse */
        old[i] = l->fused;                                       /* a previous merge's copy, freed after retable */
        l->fused = job.made[i];
        set_weight_host(tr, l, l->fused);
        tr->fused_bytes += (int64_t)cvx_mem_size(l->fused) - (old[i] ? (int64_t)cvx_mem_size(old[i]) : 0);
        lora_account((int64_t)cvx_mem_size(l->fused) - (old[i] ? (int64_t)cvx_mem_size(old[i]) : 0));
    }
    const cvx_status st = retable(tr); /* drops device copies of the old bytes before they are freed */
    for (int i = 0; i < job.made_n; i++) cvx_mem_free(old[i]);
    free(old);
    free(job.made);
    free(job.made_for);
    return st;
}

typedef struct unfuse_job {
    void **drop;
    int n, cap, bake;
} unfuse_job;

static void unfuse_one(cvx_transformer *tr, tr_linear *l, void *arg) {
    unfuse_job *job = arg;
    if (!l->fused || job->n == job->cap) return;
    if (job->bake) {
        /* unload_lora_weights after fuse_lora: the merged weights stay as the linear's own (diffusers keeps them) */
        job->drop[job->n++] = l->baked;
        l->baked = l->fused;
    } else {
        job->drop[job->n++] = l->fused;
    }
    l->fused = NULL;
    set_weight_host(tr, l, unmerged_weight(tr, l));
}

static cvx_status unfuse_all(cvx_transformer *tr, int bake) {
    const int linears = 8 + 8 * tr->cfg.num_layers;
    unfuse_job job = {calloc((size_t)linears, sizeof(void *)), 0, linears, bake};
    if (!job.drop) return CVX_FAIL(CVX_ERR_OOM, "out of host memory unfusing a LoRA");
    each_linear(tr, unfuse_one, &job);
    /* the original bytes were never written: pointing back at them restores the weights exactly (diffusers'
     * unfuse subtracts the delta again, which leaves rounding in 16-bit weights and even in float32) */
    const cvx_status st = retable(tr);
    for (int i = 0; i < job.n; i++) {
        if (job.drop[i]) {
            tr->fused_bytes -= (int64_t)cvx_mem_size(job.drop[i]);
            lora_account(-(int64_t)cvx_mem_size(job.drop[i]));
        }
        cvx_mem_free(job.drop[i]);
    }
    free(job.drop);
    return st;
}

cvx_status cvx_transformer_lora_unfuse(cvx_transformer *tr) { return unfuse_all(tr, 0); }
cvx_status cvx_transformer_lora_bake(cvx_transformer *tr) { return unfuse_all(tr, 1); }

int cvx_transformer_lora_fused(const cvx_transformer *tr) { return tr->fused_bytes > 0; }

/* ---- layers ----------------------------------------------------------------------------------------------------- */

/* Every activation below comes from the ctx and every byte of it is touched only by ctx->be's ops. */
#define BE (ctx->be)

/* What every linear of one forward needs besides its weights: the weight dtype and the call's adapter weights. */
typedef struct tr_run {
    cvx_dtype dt;
    const float *lora_scales; /* [lora_count] per adapter (0: inactive), or NULL: no adapter applies */
    int lora_count;
} tr_run;

/* Rows of x one LoRA step takes at a time: the scratch stays chunk x (rank + out) floats however long the input. */
#define LORA_CHUNK_ROWS 256

/* y [rows, out] += s B (A x) for every unfused adapter term of l with a nonzero weight (peft's LoRA Linear forward:
 * result + lora_B(lora_A(x)) * scaling per active adapter), through the backend's linear and gated add, in row
 * chunks. Scratch from the ctx: t [chunk, rank], u [chunk, out], the scale vector g [out]. */
static cvx_status lora_apply(cvx_ctx *ctx, const tr_linear *l, const tr_run *run, const float *x, int64_t rows,
                             float *y) {
    if (l->fused || !run->lora_scales) return CVX_OK;
    const int64_t chunk = rows < LORA_CHUNK_ROWS ? rows : LORA_CHUNK_ROWS;
    for (const tr_lora *t = l->lora; t; t = t->next) {
        const float s = t->adapter < run->lora_count ? t->scaling * run->lora_scales[t->adapter] : 0.0f;
        if (s == 0.0f) continue;
        float *tmp = NULL, *u = NULL, *g = NULL;
        cvx_status st = cvx_ctx_alloc(ctx, (size_t)(chunk * t->rank) * sizeof(float), (void **)&tmp);
        if (st == CVX_OK) st = cvx_ctx_alloc(ctx, (size_t)(chunk * l->out) * sizeof(float), (void **)&u);
        if (st == CVX_OK) st = cvx_ctx_alloc(ctx, (size_t)l->out * sizeof(float), (void **)&g);
        if (st == CVX_OK) st = BE->fill(ctx, g, s, l->out);
        for (int64_t r0 = 0; r0 < rows && st == CVX_OK; r0 += chunk) {
            const int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
            st = BE->linear(ctx, x + r0 * l->in, n, l->in, t->A, run->dt, NULL, t->rank, tmp);
            if (st == CVX_OK) st = BE->linear(ctx, tmp, n, t->rank, t->B, run->dt, NULL, l->out, u);
            if (st == CVX_OK) st = BE->gated_add(ctx, y + r0 * l->out, g, u, n, l->out);
        }
        if (g) cvx_ctx_free(ctx, g);
        if (u) cvx_ctx_free(ctx, u);
        if (tmp) cvx_ctx_free(ctx, tmp);
        CVX_CHECK(st);
    }
    return CVX_OK;
}

static cvx_status linear(cvx_ctx *ctx, const tr_linear *l, const tr_run *run, const float *x, int64_t rows, float *y) {
    CVX_CHECK(BE->linear(ctx, x, rows, l->in, l->w, run->dt, l->b, l->out, y));
    return l->lora ? lora_apply(ctx, l, run, x, rows, y) : CVX_OK;
}

/* Timesteps: [cos, sin] (flip_sin_to_cos) or [sin, cos] of t * exp(-ln(10000) k / (half - shift)), in f32 like
 * diffusers' get_timestep_embedding. t [B] -> emb [B, dim], on the host (B * dim scalars, then uploaded). */
static void timestep_sinusoid(const float *t, int64_t B, int dim, int flip, int shift, float *emb) {
    const int half = dim / 2;
    const float neg_log = (float)(-log(10000.0));
    for (int64_t b = 0; b < B; b++) {
        float *e = emb + b * dim;
        for (int k = 0; k < half; k++) {
            const float exponent = (neg_log * (float)k) / (float)(half - shift);
            const float arg = t[b] * expf(exponent);
            const float s = sinf(arg), c = cosf(arg);
            e[flip ? half + k : k] = s;
            e[flip ? k : half + k] = c;
        }
        if (dim % 2) e[dim - 1] = 0.0f;
    }
}

/* TimestepEmbedding of host timesteps t [B]: sinusoid -> linear_1 -> SiLU -> linear_2 -> y [B, out]. `small` holds
 * [2, B, max(D, E)] floats on the device: the sinusoid, then the hidden layer. */
static cvx_status timestep_embedding(cvx_ctx *ctx, const cvx_transformer *tr, const tr_run *run, const tr_linear *l1,
                                     const tr_linear *l2, const float *t, int64_t B, int dim, float *host, float *small,
                                     int64_t small_n, float *y) {
    const cvx_transformer_config *c = &tr->cfg;
    timestep_sinusoid(t, B, dim, c->flip_sin_to_cos, c->freq_shift, host);
    CVX_CHECK(BE->upload(ctx, small, host, (size_t)(B * dim) * sizeof(float)));
    CVX_CHECK(linear(ctx, l1, run, small, B, small + B * small_n));
    CVX_CHECK(BE->silu(ctx, small + B * small_n, B * l1->out));
    return linear(ctx, l2, run, small + B * small_n, B, y);
}

/* ---- the forward pass ---------------------------------------------------------------------------------------------
 */

typedef struct tr_buffers {
    cvx_tensor hidden, text; /* the inputs, uploaded: [B, F, C, H, W], [B, L, text_embed_dim] */
    cvx_tensor pos, rope_cos, rope_sin;
    float *x;                /* [B, S, D] the token stream */
    float *xn;               /* [B, S, D] normalised tokens */
    float *q, *k, *v, *attn; /* [B, S, D] */
    float *ff;               /* [chunk, 4D] feed-forward hidden, processed in row chunks */
    float *mod;              /* [B, 6D] modulation */
    float *temb;             /* [B, E] */
    float *silu_temb;
    float *small;      /* [B, max(D, E)] x2 scratch for the time embeddings */
    float *patches;    /* [B * N, C p p p_t]: the patches in, later proj_out's output */
    float *table;      /* [S, D] the learned positional table, widened */
    cvx_tensor result; /* [B, F, C_out, H, W] on the device */
    tr_run run;
} tr_buffers;

#define FF_CHUNK_ROWS 1024

static void buffers_free(cvx_ctx *ctx, tr_buffers *bf) {
    float **all[] = {&bf->x,   &bf->xn,   &bf->q,         &bf->k,     &bf->v,       &bf->attn, &bf->ff,
                     &bf->mod, &bf->temb, &bf->silu_temb, &bf->small, &bf->patches, &bf->table};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (*all[i]) cvx_ctx_free(ctx, *all[i]);
        *all[i] = NULL;
    }
    cvx_tensor *tensors[] = {&bf->hidden, &bf->text, &bf->pos, &bf->rope_cos, &bf->rope_sin, &bf->result};
    for (size_t i = 0; i < sizeof(tensors) / sizeof(tensors[0]); i++) cvx_tensor_release(tensors[i]);
}

static cvx_status buffer(cvx_ctx *ctx, float **p, int64_t count) {
    return cvx_ctx_alloc(ctx, (size_t)(count > 0 ? count : 1) * sizeof(float), (void **)p);
}

/* A host array uploaded into a new f32 ctx tensor. */
static cvx_status upload(cvx_ctx *ctx, const float *host, int ndim, const int64_t *shape, cvx_tensor *t) {
    CVX_CHECK(cvx_ctx_tensor(ctx, t, CVX_F32, ndim, shape));
    return BE->upload(ctx, t->data, host, cvx_tensor_nbytes(t));
}

/* CogVideoXLayerNormZero + modulation of text rows (enc_shift/enc_scale) and video rows (shift/scale):
 * mod [B, 6D] = (shift, scale, gate, enc_shift, enc_scale, enc_gate). */
static cvx_status modulated_norm(cvx_ctx *ctx, const tr_norm *n, cvx_dtype dt, float eps, const float *x,
                                 const float *mod, int64_t B, int64_t L, int64_t S, int64_t D, float *y) {
    for (int64_t b = 0; b < B; b++) {
        const float *m = mod + b * 6 * D;
        const float *xb = x + b * S * D;
        float *yb = y + b * S * D;
        CVX_CHECK(BE->layer_norm(ctx, xb, L, D, eps, n->w, n->b, dt, m + 4 * D, m + 3 * D, yb));
        CVX_CHECK(BE->layer_norm(ctx, xb + L * D, S - L, D, eps, n->w, n->b, dt, m + D, m, yb + L * D));
    }
    return CVX_OK;
}

/* x += gate * y for the video rows and enc_gate * y for the text rows. */
static cvx_status gated_residual(cvx_ctx *ctx, float *x, const float *y, const float *mod, int64_t B, int64_t L,
                                 int64_t S, int64_t D) {
    for (int64_t b = 0; b < B; b++) {
        const float *m = mod + b * 6 * D;
        CVX_CHECK(BE->gated_add(ctx, x + b * S * D, m + 5 * D, y + b * S * D, L, D));
        CVX_CHECK(BE->gated_add(ctx, x + (b * S + L) * D, m + 2 * D, y + (b * S + L) * D, S - L, D));
    }
    return CVX_OK;
}

static cvx_status block_forward(cvx_ctx *ctx, const cvx_transformer *tr, const tr_block *blk, tr_buffers *bf, int64_t B,
                                int64_t L, int64_t S, const float *rope_cos, const float *rope_sin) {
    const cvx_transformer_config *c = &tr->cfg;
    const int64_t D = tr->D, rows = B * S;
    const int heads = c->num_attention_heads, hd = c->attention_head_dim;
    const cvx_dtype dt = tr->dtype;
    const tr_run *run = &bf->run;

    /* attention half */
    CVX_CHECK(linear(ctx, &blk->norm1_linear, run, bf->silu_temb, B, bf->mod));
    CVX_CHECK(modulated_norm(ctx, &blk->norm1, dt, c->norm_eps, bf->x, bf->mod, B, L, S, D, bf->xn));
    CVX_CHECK(linear(ctx, &blk->to_q, run, bf->xn, rows, bf->q));
    CVX_CHECK(linear(ctx, &blk->to_k, run, bf->xn, rows, bf->k));
    CVX_CHECK(linear(ctx, &blk->to_v, run, bf->xn, rows, bf->v));
    CVX_CHECK(BE->layer_norm(ctx, bf->q, rows * heads, hd, 1e-6f, blk->norm_q.w, blk->norm_q.b, dt, NULL, NULL, bf->q));
    CVX_CHECK(BE->layer_norm(ctx, bf->k, rows * heads, hd, 1e-6f, blk->norm_k.w, blk->norm_k.b, dt, NULL, NULL, bf->k));
    if (rope_cos)
        for (int64_t b = 0; b < B; b++) {
            CVX_CHECK(BE->rope(ctx, bf->q + (b * S + L) * D, S - L, D, heads, hd, rope_cos, rope_sin));
            CVX_CHECK(BE->rope(ctx, bf->k + (b * S + L) * D, S - L, D, heads, hd, rope_cos, rope_sin));
        }
    CVX_CHECK(BE->attention(ctx, bf->q, bf->k, bf->v, B, S, heads, hd, 1.0f / sqrtf((float)hd), bf->attn));
    CVX_CHECK(linear(ctx, &blk->to_out, run, bf->attn, rows, bf->q)); /* q is free again: reuse it for the output */
    CVX_CHECK(gated_residual(ctx, bf->x, bf->q, bf->mod, B, L, S, D));

    /* feed-forward half, in row chunks so the 4D-wide hidden stays small */
    CVX_CHECK(linear(ctx, &blk->norm2_linear, run, bf->silu_temb, B, bf->mod));
    CVX_CHECK(modulated_norm(ctx, &blk->norm2, dt, c->norm_eps, bf->x, bf->mod, B, L, S, D, bf->xn));
    for (int64_t r0 = 0; r0 < rows; r0 += FF_CHUNK_ROWS) {
        const int64_t n = rows - r0 < FF_CHUNK_ROWS ? rows - r0 : FF_CHUNK_ROWS;
        CVX_CHECK(linear(ctx, &blk->ff_in, run, bf->xn + r0 * D, n, bf->ff));
        CVX_CHECK(BE->gelu_tanh(ctx, bf->ff, n * 4 * D));
        CVX_CHECK(linear(ctx, &blk->ff_out, run, bf->ff, n, bf->q + r0 * D));
    }
    return gated_residual(ctx, bf->x, bf->q, bf->mod, B, L, S, D);
}

/* The forward after its inputs are checked: bf's tensors are freed by the caller. */
static cvx_status forward(cvx_ctx *ctx, cvx_transformer *tr, const cvx_transformer_inputs *in, tr_buffers *bf,
                          cvx_tensor *out) {
    const cvx_transformer_config *c = &tr->cfg;
    const cvx_tensor *h = in->hidden, *txt = in->text;
    const int64_t B = h->shape[0], F = h->shape[1], C = h->shape[2], H = h->shape[3], W = h->shape[4];
    const int p = c->patch_size, pt = c->patch_size_t ? c->patch_size_t : 1;
    const int64_t D = tr->D, E = c->time_embed_dim, L = txt->shape[1];
    const int64_t Fp = F / pt, Hp = H / p, Wp = W / p, N = Fp * Hp * Wp, S = L + N;
    const int64_t feat = C * p * p * pt, small = D > E ? D : E;
    const cvx_dtype dt = tr->dtype;
    const tr_run *run = &bf->run;

    CVX_CHECK(upload(ctx, h->data, 5, h->shape, &bf->hidden));
    CVX_CHECK(upload(ctx, txt->data, 3, txt->shape, &bf->text));
    if (in->pos_table) {
        const int64_t shape[2] = {S, D};
        CVX_CHECK(upload(ctx, in->pos_table, 2, shape, &bf->pos));
    }
    if (in->rope_cos) {
        const int64_t shape[2] = {N, c->attention_head_dim};
        CVX_CHECK(upload(ctx, in->rope_cos, 2, shape, &bf->rope_cos));
        CVX_CHECK(upload(ctx, in->rope_sin, 2, shape, &bf->rope_sin));
    }
    CVX_CHECK(buffer(ctx, &bf->x, B * S * D));
    CVX_CHECK(buffer(ctx, &bf->xn, B * S * D));
    CVX_CHECK(buffer(ctx, &bf->q, B * S * D));
    CVX_CHECK(buffer(ctx, &bf->k, B * S * D));
    CVX_CHECK(buffer(ctx, &bf->v, B * S * D));
    CVX_CHECK(buffer(ctx, &bf->attn, B * S * D));
    CVX_CHECK(buffer(ctx, &bf->ff, (B * S < FF_CHUNK_ROWS ? B * S : FF_CHUNK_ROWS) * 4 * D));
    CVX_CHECK(buffer(ctx, &bf->mod, B * 6 * D));
    CVX_CHECK(buffer(ctx, &bf->temb, B * E));
    CVX_CHECK(buffer(ctx, &bf->silu_temb, B * E));
    CVX_CHECK(buffer(ctx, &bf->small, 2 * B * small));

    /* time (and ofs) embedding: emb [B, E]; the blocks and norm_out take SiLU(emb). The sinusoids are B x D
     * scalars computed on the host. */
    float *host = malloc((size_t)(B * small) * sizeof(float));
    if (!host) return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the timestep embedding");
    cvx_status st = timestep_embedding(ctx, tr, run, &tr->time_linear_1, &tr->time_linear_2, in->timestep, B, (int)D,
                                       host, bf->small, small, bf->temb);
    if (st == CVX_OK && c->ofs_embed_dim) {
        st = timestep_embedding(ctx, tr, run, &tr->ofs_linear_1, &tr->ofs_linear_2, in->ofs, B, c->ofs_embed_dim, host,
                                bf->small, small, bf->silu_temb);
        if (st == CVX_OK) st = BE->gated_add(ctx, bf->temb, NULL, bf->silu_temb, B, E);
    }
    free(host);
    CVX_CHECK(st);
    CVX_CHECK(BE->copy(ctx, bf->silu_temb, bf->temb, (size_t)(B * E) * sizeof(float)));
    CVX_CHECK(BE->silu(ctx, bf->silu_temb, B * E));

    /* patch embedding: [text_proj(text), proj(patches)] (+ positional table) */
    for (int64_t b = 0; b < B; b++)
        CVX_CHECK(linear(ctx, &tr->text_proj, run, (const float *)bf->text.data + b * L * c->text_embed_dim, L,
                         bf->x + b * S * D));
    CVX_CHECK(buffer(ctx, &bf->patches, B * N * feat));
    CVX_CHECK(BE->gather_patches(ctx, &bf->hidden, p, pt, bf->patches));
    CVX_CHECK(linear(ctx, &tr->patch_proj, run, bf->patches, B * N, bf->xn));
    cvx_ctx_free(ctx, bf->patches);
    bf->patches = NULL;
    for (int64_t b = 0; b < B; b++)
        CVX_CHECK(BE->copy(ctx, bf->x + (b * S + L) * D, bf->xn + b * N * D, (size_t)(N * D) * sizeof(float)));
    const float *table = bf->pos.data;
    if (in->use_learned_table) {
        CVX_CHECK(buffer(ctx, &bf->table, S * D));
        CVX_CHECK(BE->widen(ctx, bf->table, tr->pos_embedding, dt, S * D));
        table = bf->table;
    }
    if (table)
        for (int64_t b = 0; b < B; b++) CVX_CHECK(BE->gated_add(ctx, bf->x + b * S * D, NULL, table, S, D));

    /* the blocks: one weight group each */
    for (int i = 0; i < c->num_layers && st == CVX_OK; i++) {
        if ((st = cvx_ctx_poll(ctx)) != CVX_OK || (st = cvx_ctx_acquire(ctx, 1 + i)) != CVX_OK) break;
        st = block_forward(ctx, tr, &tr->blocks[i], bf, B, L, S, bf->rope_cos.data, bf->rope_sin.data);
        cvx_ctx_release(ctx, 1 + i);
    }
    CVX_CHECK(st);

    /* norm_final on the video rows, AdaLayerNorm (shift first), proj_out, unpatchify */
    CVX_CHECK(linear(ctx, &tr->norm_out_linear, run, bf->silu_temb, B, bf->mod));
    for (int64_t b = 0; b < B; b++) {
        float *xv = bf->x + (b * S + L) * D, *yv = bf->xn + b * N * D;
        CVX_CHECK(BE->layer_norm(ctx, xv, N, D, c->norm_eps, tr->norm_final.w, tr->norm_final.b, dt, NULL, NULL, xv));
        CVX_CHECK(BE->layer_norm(ctx, xv, N, D, c->norm_eps, tr->norm_out.w, tr->norm_out.b, dt,
                                 bf->mod + b * 2 * D + D, bf->mod + b * 2 * D, yv));
    }
    /* proj_out's features (C_out p p p_t) may be wider than D: a buffer of its own */
    CVX_CHECK(buffer(ctx, &bf->patches, B * N * tr->proj_out.out));
    CVX_CHECK(linear(ctx, &tr->proj_out, run, bf->xn, B * N, bf->patches));
    const int64_t oshape[5] = {B, F, c->out_channels, H, W};
    CVX_CHECK(cvx_ctx_tensor(ctx, &bf->result, CVX_F32, 5, oshape));
    CVX_CHECK(BE->unpatchify(ctx, bf->patches, B, Fp, Hp, Wp, c->out_channels, p, pt, bf->result.data));
    if (ctx->measuring) return CVX_OK; /* a measuring pass allocates no host output */
    CVX_CHECK(cvx_tensor_alloc(out, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 5, oshape));
    st = BE->download(ctx, out->data, bf->result.data, cvx_tensor_nbytes(out));
    if (st != CVX_OK) cvx_tensor_release(out);
    return st;
}

cvx_status cvx_transformer_forward(cvx_ctx *ctx, cvx_transformer *tr, const cvx_transformer_inputs *in,
                                   cvx_tensor *out) {
    const cvx_transformer_config *c = &tr->cfg;
    const cvx_tensor *h = in->hidden, *txt = in->text;
    memset(out, 0, sizeof(*out));
    if (h->ndim != 5 || txt->ndim != 3)
        return CVX_FAIL(CVX_ERR_INVALID, "hidden_states must be [B, F, C, H, W] and encoder_hidden_states [B, L, D]");
    const int64_t B = h->shape[0], F = h->shape[1], C = h->shape[2], H = h->shape[3], W = h->shape[4];
    const int p = c->patch_size, pt = c->patch_size_t ? c->patch_size_t : 1;
    if (C != c->in_channels)
        return CVX_FAIL(CVX_ERR_INVALID, "hidden_states has %lld channels; the config's in_channels is %d",
                        (long long)C, c->in_channels);
    if (H % p || W % p)
        return CVX_FAIL(CVX_ERR_INVALID, "latent height %lld and width %lld must be divisible by patch_size %d",
                        (long long)H, (long long)W, p);
    if (F % pt)
        return CVX_FAIL(CVX_ERR_INVALID, "%lld latent frames do not divide into temporal patches of %d", (long long)F,
                        pt);
    if (txt->shape[0] != B || txt->shape[2] != c->text_embed_dim)
        return CVX_FAIL(CVX_ERR_INVALID, "encoder_hidden_states must be [%lld, L, %d]", (long long)B,
                        c->text_embed_dim);
    const int64_t D = tr->D, L = txt->shape[1];
    const int64_t Fp = F / pt, Hp = H / p, Wp = W / p, N = Fp * Hp * Wp, S = L + N;
    if (B < 1 || N < 1)
        return CVX_FAIL(CVX_ERR_INVALID, "hidden_states [%lld, %lld, %lld, %lld, %lld] holds no patch of %d x %d",
                        (long long)B, (long long)F, (long long)C, (long long)H, (long long)W, p, p);
    /* every table is read at the size this input implies: refuse one that holds less (or other) than that */
    if (!in->timestep || in->timestep_len != B)
        return CVX_FAIL(CVX_ERR_INVALID, "timestep has %lld values; the batch has %lld items",
                        (long long)in->timestep_len, (long long)B);
    if (c->ofs_embed_dim && in->ofs && in->ofs_len != B)
        return CVX_FAIL(CVX_ERR_INVALID, "ofs has %lld values; the batch has %lld items", (long long)in->ofs_len,
                        (long long)B);
    if (in->pos_table && (in->pos_rows != S || in->pos_cols != D))
        return CVX_FAIL(CVX_ERR_INVALID, "the positional table is [%lld, %lld]; this input needs [%lld, %lld]",
                        (long long)in->pos_rows, (long long)in->pos_cols, (long long)S, (long long)D);
    if (in->rope_cos && (!in->rope_sin || in->rope_rows != N || in->rope_cols != c->attention_head_dim))
        return CVX_FAIL(CVX_ERR_INVALID,
                        "image_rotary_emb must be two [%lld, %d] tables (video tokens x attention_head_dim), got "
                        "[%lld, %lld]%s",
                        (long long)N, c->attention_head_dim, (long long)in->rope_rows, (long long)in->rope_cols,
                        in->rope_sin ? "" : " without a sin table");
    if (c->ofs_embed_dim && !in->ofs) return CVX_FAIL(CVX_ERR_INVALID, "this model has an ofs embedding: pass ofs");
    if (in->use_learned_table && (!tr->pos_embedding || c->learned_table_rows != S))
        return CVX_FAIL(CVX_ERR_INVALID, "the learned positional table has %d rows; this input needs %lld",
                        c->learned_table_rows, (long long)S);
    if (in->lora_count < 0 || (in->lora_count && !in->lora_scales) || in->lora_count > tr->num_adapters)
        return CVX_FAIL(CVX_ERR_INVALID, "%d LoRA adapter weights for a model with %d adapters", in->lora_count,
                        tr->num_adapters);
    for (int a = 0; a < in->lora_count; a++)
        if (!isfinite(in->lora_scales[a]))
            return CVX_FAIL(CVX_ERR_INVALID, "LoRA adapter %d's weight %g is not finite", a,
                            (double)in->lora_scales[a]);
    tr_buffers bf;
    memset(&bf, 0, sizeof(bf));
    bf.run = (tr_run){tr->dtype, in->lora_count ? in->lora_scales : NULL, in->lora_count};
    /* one pass over the block groups 1..num_layers for the whole forward; group 0 (everything outside the blocks),
     * acquired inside the pass, is held until it ends. Cyclic: the next denoising step starts again at block 1, so
     * the last block's prefetch already copies it (measured: the wait for copies halves, 0.14 -> 0.07 s a call) */
    CVX_CHECK(cvx_ctx_begin(ctx, 1, c->num_layers, 1));
    cvx_status st = cvx_ctx_acquire(ctx, 0);
    if (st == CVX_OK) {
        st = forward(ctx, tr, in, &bf, out);
        cvx_ctx_release(ctx, 0);
    }
    cvx_ctx_end(ctx); /* also after a failure */
    buffers_free(ctx, &bf);
    return st;
}
