/* tests/fixtures/pipeline/tiny_5b/transformer/config.json: the tiny 5b-style transformer the LoRA fixtures
 * (tests/fixtures/lora) were made for. */
#ifndef CVX_TEST_TINY_5B_H
#define CVX_TEST_TINY_5B_H

#include "../../csrc/models/transformer.h"

static const cvx_transformer_config TINY_5B = {
    .num_attention_heads = 2,
    .attention_head_dim = 16,
    .in_channels = 4,
    .out_channels = 4,
    .flip_sin_to_cos = 1,
    .freq_shift = 0,
    .time_embed_dim = 2,
    .text_embed_dim = 32,
    .num_layers = 2,
    .attention_bias = 1,
    .patch_bias = 1,
    .norm_elementwise_affine = 1,
    .patch_size = 2,
    .max_text_seq_length = 16,
    .norm_eps = 1e-5f,
};

#endif
