/* AutoencoderKLCogVideoX (diffusers) on the CPU: the causal 3D VAE, with frame-batched decode/encode, slicing and
 * tiling exactly as diffusers runs them. */
#ifndef CVX_VAE_H
#define CVX_VAE_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/safetensors.h"
#include "config.h"
#include "weights.h"

#define CVX_VAE_MAX_BLOCKS 8

typedef struct cvx_vae_config {
    int in_channels, out_channels, latent_channels;
    int num_blocks; /* len(block_out_channels) == len(down_block_types) == len(up_block_types) */
    int block_out_channels[CVX_VAE_MAX_BLOCKS];
    int layers_per_block;
    int norm_num_groups;
    float norm_eps;
    int temporal_compression_ratio;
} cvx_vae_config;

/* The fields above by name (the keys a config dict passes; block_out_channels also sets num_blocks), ended by a
 * NULL key. */
extern const cvx_config_field cvx_vae_config_fields[];

typedef struct cvx_vae_tiling {
    int enabled;
    int tile_sample_min_height, tile_sample_min_width;
    double tile_overlap_factor_height, tile_overlap_factor_width;
} cvx_vae_tiling;

typedef struct cvx_vae cvx_vae;

/* What decode and encode accept, checked before any work (CVX_ERR_INVALID past them): each input size (batch,
 * frames, height, width) at most CVX_VAE_MAX_EXTENT, and an f32 output of at most CVX_VAE_MAX_OUTPUT_BYTES. Far
 * above any real video (CogVideoX decodes 13 latent frames of 60x90 into 49 frames of 480x720), they keep every
 * size computation far inside int64. */
#define CVX_VAE_MAX_EXTENT (1 << 20)
#define CVX_VAE_MAX_OUTPUT_BYTES ((int64_t)1 << 40)

/* Builds the module tree for `cfg` and loads its weights from `st` converted to `dtype`. */
cvx_status cvx_vae_create(const cvx_vae_config *cfg, const cvx_st_file *st, cvx_dtype dtype, cvx_vae **out);
void cvx_vae_free(cvx_vae *vae);
/* Only the declarations create makes for `cfg` (the config checked as create checks it): names, shapes, groups,
 * nothing loaded or allocated beyond the table, every slot NULL. `out` is filled on success; cvx_weights_free it. */
cvx_status cvx_vae_schema(const cvx_vae_config *cfg, cvx_dtype dtype, cvx_weights *out);
int64_t cvx_vae_weight_bytes(const cvx_vae *vae);
int cvx_vae_num_weight_groups(const cvx_vae *vae);
/* The weight declarations and their loaded data (read-only), e.g. for writing a checkpoint. */
const cvx_weights *cvx_vae_weights(const cvx_vae *vae);

/* z [B, latent, F, h, w] (host) -> out [B, out_channels, F', h', w'], a host tensor allocated here (none in a
 * measuring pass) and written frame batch by frame batch (tile by tile). Output size is known before any work:
 * cvx_vae_decode_shape. Weight groups: group 0 for the whole call; one pass (cyclic: it reruns per frame batch and
 * tile) over the decoder's mid and up-block groups, each acquired around its resnets. Encode likewise with the
 * encoder's groups. */
cvx_status cvx_vae_decode_shape(const cvx_vae *vae, const int64_t zshape[5], const cvx_vae_tiling *tiling,
                                int64_t out_shape[5]);
cvx_status cvx_vae_decode(cvx_ctx *ctx, cvx_vae *vae, const cvx_tensor *z, int slicing, const cvx_vae_tiling *tiling,
                          cvx_tensor *out);
/* x [B, in_channels, F, H, W] -> moments [B, 2 * latent, F', H', W'] (mean then logvar). */
cvx_status cvx_vae_encode_shape(const cvx_vae *vae, const int64_t xshape[5], const cvx_vae_tiling *tiling,
                                int64_t out_shape[5]);
cvx_status cvx_vae_encode(cvx_ctx *ctx, cvx_vae *vae, const cvx_tensor *x, int slicing, const cvx_vae_tiling *tiling,
                          cvx_tensor *out);

#endif
