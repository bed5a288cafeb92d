/* CogVideoXTransformer3DModel (diffusers) on the CPU: every released variant (2b sincos, 5b RoPE, 5b-I2V learned
 * table, 1.5 with temporal patches and ofs), weights grouped per block. */
#ifndef CVX_TRANSFORMER_H
#define CVX_TRANSFORMER_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/safetensors.h"
#include "config.h"
#include "weights.h"

typedef struct cvx_transformer_config {
    int num_attention_heads, attention_head_dim;
    int in_channels, out_channels;
    int flip_sin_to_cos, freq_shift;
    int time_embed_dim, ofs_embed_dim; /* ofs_embed_dim 0: no ofs embedding */
    int text_embed_dim, num_layers;
    int attention_bias, patch_bias, norm_elementwise_affine;
    int patch_size, patch_size_t; /* patch_size_t 0: CogVideoX 1.0 (Conv2d patches) */
    int max_text_seq_length;
    int use_learned_positional_embeddings;
    int learned_table_rows; /* rows of patch_embed.pos_embedding when learned */
    float norm_eps;
} cvx_transformer_config;

/* The fields above by name (the keys a config dict passes), ended by a NULL key. */
extern const cvx_config_field cvx_transformer_config_fields[];

typedef struct cvx_transformer cvx_transformer;

/* Builds the model and loads its weights from `st` (or, with st NULL, draws them from a seeded generator: for
 * benchmarks at the real sizes without a checkpoint). */
cvx_status cvx_transformer_create(const cvx_transformer_config *cfg, const cvx_st_file *st, cvx_dtype dtype,
                                  uint64_t seed, cvx_transformer **out);
void cvx_transformer_free(cvx_transformer *tr);
/* Only the declarations create makes for `cfg` (the config checked as create checks it): names, shapes, groups,
 * nothing loaded or allocated beyond the table, every slot NULL. `out` is filled on success; cvx_weights_free it. */
cvx_status cvx_transformer_schema(const cvx_transformer_config *cfg, cvx_dtype dtype, cvx_weights *out);
int64_t cvx_transformer_weight_bytes(const cvx_transformer *tr);
int cvx_transformer_num_weight_groups(const cvx_transformer *tr);
/* The weight declarations and their loaded data (read-only), e.g. for writing a checkpoint. */
const cvx_weights *cvx_transformer_weights(const cvx_transformer *tr);

typedef struct cvx_transformer_inputs {
    const cvx_tensor *hidden; /* latents [B, F, C, H, W] */
    const cvx_tensor *text;   /* encoder_hidden_states [B, L, text_embed_dim] */
    const float *timestep;    /* [timestep_len], one per batch item */
    const float *ofs;         /* [ofs_len] or NULL */
    const float *pos_table;   /* [pos_rows, pos_cols] = [L + N, D] added to every row (sincos), or NULL */
    int use_learned_table;    /* add patch_embed.pos_embedding instead */
    const float *rope_cos;    /* [rope_rows, rope_cols] = [N, head_dim] or NULL: no rotary embedding */
    const float *rope_sin;    /* the same shape as rope_cos */
    /* what the caller's arrays hold: the forward checks them against the shapes it reads, whichever layer calls */
    int64_t timestep_len, ofs_len;
    int64_t pos_rows, pos_cols;
    int64_t rope_rows, rope_cols;
} cvx_transformer_inputs;

/* out: [B, F, out_channels, H, W], a host tensor allocated here (none in a measuring pass). The inputs are host
 * arrays; they are uploaded into the ctx, every activation comes from it, and the weight groups are acquired around
 * their use inside one pass over the block groups (cvx_ctx_begin / end around the whole forward): group 0 (outside
 * the blocks) for the whole forward, group 1 + i around block i. */
cvx_status cvx_transformer_forward(cvx_ctx *ctx, cvx_transformer *tr, const cvx_transformer_inputs *in,
                                   cvx_tensor *out);

#endif
