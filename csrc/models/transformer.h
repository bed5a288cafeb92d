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
    /* LoRA: per loaded adapter (load order), the factor its terms apply with (set_adapters weight x the call's
     * attention_kwargs scale; 0: inactive); lora_count 0: no adapter applies */
    const float *lora_scales;
    int lora_count;
} cvx_transformer_inputs;

/* out: [B, F, out_channels, H, W], a host tensor allocated here (none in a measuring pass). The inputs are host
 * arrays; they are uploaded into the ctx, every activation comes from it, and the weight groups are acquired around
 * their use inside one pass over the block groups (cvx_ctx_begin / end around the whole forward): group 0 (outside
 * the blocks) for the whole forward, group 1 + i around block i. */
cvx_status cvx_transformer_forward(cvx_ctx *ctx, cvx_transformer *tr, const cvx_transformer_inputs *in,
                                   cvx_tensor *out);

/* ---- LoRA adapters (diffusers/PEFT format) ----
 * Load: the adapter's tensors `<prefix><module>.lora_A.weight` [rank, in] and `.lora_B.weight` [out, rank] for each
 * of `count` linears named by their diffusers module path, with the scaling the caller derived (lora_alpha / r, or
 * / sqrt(r) with rslora). Every size is checked against the model before anything is allocated; the tensors are read
 * in place from the mapped file `st` (retained) when stored in the run dtype, else from one converted host copy, and
 * join the weight group of their block (the residency's groups grow by their bytes). The new adapter gets index
 * cvx_transformer_num_adapters() - 1; deleting one renumbers those after it. */
cvx_status cvx_transformer_lora_load(cvx_transformer *tr, const cvx_st_file *st, const char *prefix,
                                     const char *const *modules, const float *scalings, int count);
cvx_status cvx_transformer_lora_delete(cvx_transformer *tr, int index);
int cvx_transformer_num_adapters(const cvx_transformer *tr);
/* The device-layout bytes adapter `index` adds to the weight groups. */
int64_t cvx_transformer_adapter_bytes(const cvx_transformer *tr, int index);
/* fuse_lora: every linear with a term of an adapter whose scales[a] != 0 reads a private copy W + sum s B A (f32
 * math, stored in the run dtype; W: the weight it reads now); safe_fusing refuses non-finite results before any
 * weight changes. unfuse: back to the untouched original bytes (exactly). bake: unload_lora_weights after a fuse:
 * the fused copies stay as the linears' own weights. */
cvx_status cvx_transformer_lora_fuse(cvx_transformer *tr, const float *scales, int count, int safe_fusing);
cvx_status cvx_transformer_lora_unfuse(cvx_transformer *tr);
cvx_status cvx_transformer_lora_bake(cvx_transformer *tr);
/* Host bytes of the fused copies this model holds. */
int64_t cvx_transformer_fused_bytes(const cvx_transformer *tr);
/* Host bytes of every live adapter and fused copy in the process (memory_stats' lora_bytes). */
int64_t cvx_lora_live_bytes(void);

#endif
