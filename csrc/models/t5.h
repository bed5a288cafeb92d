/* T5EncoderModel (transformers) on the CPU: the CogVideoX text encoder. */
#ifndef CVX_T5_H
#define CVX_T5_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/safetensors.h"
#include "config.h"
#include "weights.h"

typedef struct cvx_t5_config {
    int vocab_size, d_model, d_kv, num_heads, d_ff, num_layers;
    int relative_attention_num_buckets, relative_attention_max_distance;
    int gated; /* feed_forward_proj "gated-gelu" (v1.1); otherwise "relu" */
    float layer_norm_epsilon;
    const char *embedding_name; /* "encoder.embed_tokens.weight" when the file has it (transformers then uses it),
                                   else "shared.weight" */
    const char *ignored_name;   /* a tied duplicate in the file to skip, or NULL */
} cvx_t5_config;

/* The fields above by name (the keys a config dict passes), ended by a NULL key. */
extern const cvx_config_field cvx_t5_config_fields[];

typedef struct cvx_t5 cvx_t5;

cvx_status cvx_t5_create(const cvx_t5_config *cfg, const cvx_st_file *st, cvx_dtype dtype, cvx_t5 **out);
void cvx_t5_free(cvx_t5 *t5);
/* Only the declarations create makes for `cfg` (the config checked as create checks it): names, shapes, groups,
 * nothing loaded or allocated beyond the table, every slot NULL. `out` is filled on success; cvx_weights_free it. */
cvx_status cvx_t5_schema(const cvx_t5_config *cfg, cvx_dtype dtype, cvx_weights *out);
int64_t cvx_t5_weight_bytes(const cvx_t5 *t5);
int cvx_t5_num_weight_groups(const cvx_t5 *t5);
/* The weight declarations and their loaded data (read-only), e.g. for writing a checkpoint. */
const cvx_weights *cvx_t5_weights(const cvx_t5 *t5);

/* ids [B, S] (int64, host) -> out [B, S, d_model] f32, a host tensor allocated here (none in a measuring pass).
 * mask [B, S] (host; 1 attend, 0 not) or NULL. Weight groups: 0 (embedding, final norm) for the whole forward,
 * 1 + i around block i (block 0's also holds the relative bias table). */
cvx_status cvx_t5_forward(cvx_ctx *ctx, cvx_t5 *t5, const int64_t *ids, const int64_t *mask, int64_t B, int64_t S,
                          cvx_tensor *out);

#endif
