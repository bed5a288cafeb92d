/* AutoencoderKLCogVideoX, read top to bottom like diffusers' autoencoder_kl_cogvideox.py.
 *
 * Legend: B batch, C channels, T frames, H/W height/width; every activation is [B, C, T, H, W] f32.
 * Memory: each module consumes its input and returns a fresh output, so at most a resnet's few tensors are alive;
 * convolutions read causal padding and nearest upsampling through frame references (no padded copies); the spatial
 * norm's 1x1 convolutions run at latent resolution and are resampled on the fly (a 1x1 conv commutes with nearest
 * resampling, so the numbers are those of diffusers' resample-then-convolve). */
#include "vae.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/backend.h"
#include "weights.h"

/* ---- modules ------------------------------------------------------------------------------------------------ */

typedef struct vae_norm {
    const float *gamma, *beta;
} vae_norm;

typedef struct vae_spatial_norm { /* CogVideoXSpatialNorm3D */
    vae_norm norm_layer;
    cvx_conv_weight conv_y, conv_b;
} vae_spatial_norm;

typedef struct vae_resnet { /* CogVideoXResnetBlock3D */
    int in_channels, out_channels;
    vae_norm norm1, norm2;           /* encoder: GroupNorm */
    vae_spatial_norm snorm1, snorm2; /* decoder: SpatialNorm3D */
    cvx_conv_weight conv1, conv2;    /* causal 3x3x3 */
    cvx_conv_weight conv_shortcut;   /* 1x1x1, only when the channel count changes */
    int has_shortcut;
} vae_resnet;

typedef struct vae_block { /* CogVideoXDownBlock3D / CogVideoXUpBlock3D */
    int num_resnets;
    vae_resnet *resnets;
    int has_resample; /* downsamplers.0 / upsamplers.0 */
    int compress_time;
    cvx_conv_weight resample_conv; /* Conv2d 3x3, applied per frame */
} vae_block;

struct cvx_vae {
    cvx_vae_config cfg;
    int compress_levels; /* log2(temporal_compression_ratio) */
    /* encoder */
    cvx_conv_weight enc_conv_in, enc_conv_out;
    vae_block enc_blocks[CVX_VAE_MAX_BLOCKS];
    vae_resnet enc_mid[2];
    vae_norm enc_norm_out;
    int enc_causal_convs;
    /* decoder */
    cvx_conv_weight dec_conv_in, dec_conv_out;
    vae_resnet dec_mid[2];
    vae_block dec_blocks[CVX_VAE_MAX_BLOCKS];
    vae_spatial_norm dec_norm_out;
    int dec_causal_convs;
    cvx_weights weights;
};

/* Weight groups: 0 holds the convs and norms outside the blocks; then one per encoder block, the encoder mid
 * block, the decoder mid block and one per decoder block. */
#define GROUP_REST 0
#define GROUP_ENC_BLOCK(i) (1 + (i))
#define GROUP_ENC_MID(n) (1 + (n))
#define GROUP_DEC_MID(n) (2 + (n))
#define GROUP_DEC_BLOCK(n, i) (3 + (n) + (i))

/* ---- the config by name, and the weights by their diffusers names ----------------------------------------------- */

#define FIELD(key, type)                                                                                               \
    { #key, CVX_CONFIG_##type, offsetof(cvx_vae_config, key), 1, 0, 0 }
const cvx_config_field cvx_vae_config_fields[] = {
    FIELD(in_channels, INT),
    FIELD(out_channels, INT),
    FIELD(latent_channels, INT),
    {"block_out_channels", CVX_CONFIG_INT_LIST, offsetof(cvx_vae_config, block_out_channels), 1,
     offsetof(cvx_vae_config, num_blocks), CVX_VAE_MAX_BLOCKS},
    FIELD(layers_per_block, INT),
    FIELD(norm_num_groups, INT),
    FIELD(norm_eps, FLOAT),
    FIELD(temporal_compression_ratio, INT),
    {NULL, 0, 0, 0, 0, 0},
};
#undef FIELD

static void decl_conv(cvx_weights *ws, int group, cvx_conv_weight *cw, int co, int ci, int kt, int kh, int kw, int ndim,
                      const char *prefix) {
    cw->co = co, cw->ci = ci, cw->kt = kt, cw->kh = kh, cw->kw = kw;
    cw->dtype = ws->dtype; /* the weights are stored in the run dtype; the conv widens them on use */
    const int64_t shape5[5] = {co, ci, kt, kh, kw}, shape4[4] = {co, ci, kh, kw}, bias[1] = {co};
    cvx_weights_declare(ws, group, 0, (void **)&cw->w, ndim, ndim == 5 ? shape5 : shape4, "%s.weight", prefix);
    cvx_weights_declare(ws, group, 1, (void **)&cw->bias, 1, bias, "%s.bias", prefix);
}

static void decl_norm(cvx_weights *ws, int group, vae_norm *n, int channels, const char *prefix) {
    const int64_t shape[1] = {channels};
    cvx_weights_declare(ws, group, 1, (void **)&n->gamma, 1, shape, "%s.weight", prefix);
    cvx_weights_declare(ws, group, 1, (void **)&n->beta, 1, shape, "%s.bias", prefix);
}

static void decl_spatial_norm(cvx_weights *ws, int group, vae_spatial_norm *sn, int f, int zq, const char *prefix) {
    char name[CVX_WEIGHT_NAME_MAX];
    snprintf(name, sizeof(name), "%s.norm_layer", prefix);
    decl_norm(ws, group, &sn->norm_layer, f, name);
    snprintf(name, sizeof(name), "%s.conv_y.conv", prefix);
    decl_conv(ws, group, &sn->conv_y, f, zq, 1, 1, 1, 5, name);
    snprintf(name, sizeof(name), "%s.conv_b.conv", prefix);
    decl_conv(ws, group, &sn->conv_b, f, zq, 1, 1, 1, 5, name);
}

static void decl_resnet(cvx_weights *ws, int group, vae_resnet *r, int cin, int cout, int zq, const char *prefix) {
    char name[CVX_WEIGHT_NAME_MAX];
    r->in_channels = cin, r->out_channels = cout;
    snprintf(name, sizeof(name), "%s.norm1", prefix);
    if (zq)
        decl_spatial_norm(ws, group, &r->snorm1, cin, zq, name);
    else
        decl_norm(ws, group, &r->norm1, cin, name);
    snprintf(name, sizeof(name), "%s.conv1.conv", prefix);
    decl_conv(ws, group, &r->conv1, cout, cin, 3, 3, 3, 5, name);
    snprintf(name, sizeof(name), "%s.norm2", prefix);
    if (zq)
        decl_spatial_norm(ws, group, &r->snorm2, cout, zq, name);
    else
        decl_norm(ws, group, &r->norm2, cout, name);
    snprintf(name, sizeof(name), "%s.conv2.conv", prefix);
    decl_conv(ws, group, &r->conv2, cout, cout, 3, 3, 3, 5, name);
    r->has_shortcut = cin != cout;
    if (r->has_shortcut) {
        snprintf(name, sizeof(name), "%s.conv_shortcut", prefix);
        decl_conv(ws, group, &r->conv_shortcut, cout, cin, 1, 1, 1, 5, name);
    }
}

static cvx_status alloc_resnets(vae_block *blk, int count) {
    blk->resnets = calloc((size_t)count, sizeof(vae_resnet));
    if (!blk->resnets) return CVX_FAIL(CVX_ERR_OOM, "out of host memory building the VAE");
    blk->num_resnets = count;
    return CVX_OK;
}

static cvx_status declare_encoder(cvx_vae *vae) {
    const cvx_vae_config *c = &vae->cfg;
    cvx_weights *ws = &vae->weights;
    const int n = c->num_blocks;
    char name[CVX_WEIGHT_NAME_MAX];
    decl_conv(ws, GROUP_REST, &vae->enc_conv_in, c->block_out_channels[0], c->in_channels, 3, 3, 3, 5,
              "encoder.conv_in.conv");
    vae->enc_causal_convs = 1;
    int out_ch = c->block_out_channels[0];
    for (int i = 0; i < n; i++) {
        vae_block *blk = &vae->enc_blocks[i];
        const int in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        CVX_CHECK(alloc_resnets(blk, c->layers_per_block));
        for (int r = 0; r < blk->num_resnets; r++) {
            snprintf(name, sizeof(name), "encoder.down_blocks.%d.resnets.%d", i, r);
            decl_resnet(ws, GROUP_ENC_BLOCK(i), &blk->resnets[r], r == 0 ? in_ch : out_ch, out_ch, 0, name);
            vae->enc_causal_convs += 2;
        }
        blk->has_resample = i != n - 1;
        blk->compress_time = i < vae->compress_levels;
        if (blk->has_resample) {
            snprintf(name, sizeof(name), "encoder.down_blocks.%d.downsamplers.0.conv", i);
            decl_conv(ws, GROUP_ENC_BLOCK(i), &blk->resample_conv, out_ch, out_ch, 1, 3, 3, 4, name);
        }
    }
    for (int r = 0; r < 2; r++) {
        snprintf(name, sizeof(name), "encoder.mid_block.resnets.%d", r);
        decl_resnet(ws, GROUP_ENC_MID(n), &vae->enc_mid[r], out_ch, out_ch, 0, name);
        vae->enc_causal_convs += 2;
    }
    decl_norm(ws, GROUP_REST, &vae->enc_norm_out, out_ch, "encoder.norm_out");
    decl_conv(ws, GROUP_REST, &vae->enc_conv_out, 2 * c->latent_channels, out_ch, 3, 3, 3, 5, "encoder.conv_out.conv");
    vae->enc_causal_convs += 1;
    return CVX_OK;
}

static cvx_status declare_decoder(cvx_vae *vae) {
    const cvx_vae_config *c = &vae->cfg;
    cvx_weights *ws = &vae->weights;
    const int n = c->num_blocks, zq = c->latent_channels;
    char name[CVX_WEIGHT_NAME_MAX];
    const int top = c->block_out_channels[n - 1];
    decl_conv(ws, GROUP_REST, &vae->dec_conv_in, top, zq, 3, 3, 3, 5, "decoder.conv_in.conv");
    vae->dec_causal_convs = 1;
    for (int r = 0; r < 2; r++) {
        snprintf(name, sizeof(name), "decoder.mid_block.resnets.%d", r);
        decl_resnet(ws, GROUP_DEC_MID(n), &vae->dec_mid[r], top, top, zq, name);
        vae->dec_causal_convs += 2;
    }
    int out_ch = top;
    for (int i = 0; i < n; i++) {
        vae_block *blk = &vae->dec_blocks[i];
        const int in_ch = out_ch;
        out_ch = c->block_out_channels[n - 1 - i];
        CVX_CHECK(alloc_resnets(blk, c->layers_per_block + 1));
        for (int r = 0; r < blk->num_resnets; r++) {
            snprintf(name, sizeof(name), "decoder.up_blocks.%d.resnets.%d", i, r);
            decl_resnet(ws, GROUP_DEC_BLOCK(n, i), &blk->resnets[r], r == 0 ? in_ch : out_ch, out_ch, zq, name);
            vae->dec_causal_convs += 2;
        }
        blk->has_resample = i != n - 1;
        blk->compress_time = i < vae->compress_levels;
        if (blk->has_resample) {
            snprintf(name, sizeof(name), "decoder.up_blocks.%d.upsamplers.0.conv", i);
            decl_conv(ws, GROUP_DEC_BLOCK(n, i), &blk->resample_conv, out_ch, out_ch, 1, 3, 3, 4, name);
        }
    }
    decl_spatial_norm(ws, GROUP_REST, &vae->dec_norm_out, out_ch, zq, "decoder.norm_out");
    decl_conv(ws, GROUP_REST, &vae->dec_conv_out, c->out_channels, out_ch, 3, 3, 3, 5, "decoder.conv_out.conv");
    vae->dec_causal_convs += 1;
    return CVX_OK;
}

static cvx_status check_config(const cvx_vae_config *c, int *levels) {
    if (c->num_blocks < 1 || c->num_blocks > CVX_VAE_MAX_BLOCKS)
        return CVX_FAIL(CVX_ERR_INVALID, "block_out_channels has %d entries; 1 to %d are supported", c->num_blocks,
                        CVX_VAE_MAX_BLOCKS);
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1 || c->layers_per_block < 1)
        return CVX_FAIL(CVX_ERR_INVALID, "in/out/latent channels and layers_per_block must be positive");
    if (c->norm_num_groups < 1) return CVX_FAIL(CVX_ERR_INVALID, "norm_num_groups must be positive");
    if (!(c->norm_eps > 0.0f)) /* NaN fails the comparison too */
        return CVX_FAIL(CVX_ERR_INVALID, "VAE config 'norm_eps' = %g must be positive", (double)c->norm_eps);
    for (int i = 0; i < c->num_blocks; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups != 0)
            return CVX_FAIL(CVX_ERR_INVALID,
                            "block_out_channels[%d] = %d is not a positive multiple of "
                            "norm_num_groups = %d",
                            i, c->block_out_channels[i], c->norm_num_groups);
    int r = c->temporal_compression_ratio, l = 0;
    if (r < 1 || (r & (r - 1)) != 0)
        return CVX_FAIL(CVX_ERR_INVALID, "temporal_compression_ratio %d is not a power of two", r);
    while (r > 1) r >>= 1, l++;
    *levels = l;
    return CVX_OK;
}

/* The model shell and its declarations for `cfg`, nothing loaded: what create loads into and schema reports. */
static cvx_status build(const cvx_vae_config *cfg, const cvx_st_file *st, cvx_dtype dtype, cvx_vae **out) {
    cvx_status st_ = CVX_OK;
    *out = NULL;
    int levels = 0;
    CVX_CHECK(check_config(cfg, &levels));
    /* every resnet holds at least 8 tensors (norms and convs, weight and bias): a layer count the checkpoint cannot
     * hold fails here, before gigabytes of declarations */
    CVX_CHECK(cvx_weights_check_count(st, 16LL * cfg->num_blocks * cfg->layers_per_block, "layers_per_block",
                                      cfg->layers_per_block));
    cvx_vae *vae = calloc(1, sizeof(*vae));
    if (!vae) return CVX_FAIL(CVX_ERR_OOM, "out of host memory building the VAE");
    vae->cfg = *cfg;
    vae->compress_levels = levels;
    vae->weights.dtype = dtype; /* before declaring: the conv descriptors record it */
    if ((st_ = declare_encoder(vae)) != CVX_OK || (st_ = declare_decoder(vae)) != CVX_OK ||
        (st_ = vae->weights.decl_status) != CVX_OK) {
        cvx_vae_free(vae);
        return st_;
    }
    *out = vae;
    return CVX_OK;
}

cvx_status cvx_vae_create(const cvx_vae_config *cfg, const cvx_st_file *st, cvx_dtype dtype, cvx_vae **out) {
    *out = NULL;
    cvx_vae *vae = NULL;
    CVX_CHECK(build(cfg, st, dtype, &vae));
    cvx_status st_ = cvx_weights_load(&vae->weights, st, dtype);
    if (st_ != CVX_OK) {
        cvx_vae_free(vae);
        return st_;
    }
    *out = vae;
    return CVX_OK;
}

cvx_status cvx_vae_schema(const cvx_vae_config *cfg, cvx_dtype dtype, cvx_weights *out) {
    memset(out, 0, sizeof(*out));
    cvx_vae *vae = NULL;
    CVX_CHECK(build(cfg, NULL, dtype, &vae));
    *out = vae->weights; /* the table moves out; its slots pointed into the shell freed below */
    for (int i = 0; i < out->count; i++) out->decls[i].slot = NULL;
    memset(&vae->weights, 0, sizeof(vae->weights));
    cvx_vae_free(vae);
    return CVX_OK;
}

void cvx_vae_free(cvx_vae *vae) {
    if (!vae) return;
    /* the weights first: dropping their device copies re-points the slots, which live in the resnets */
    cvx_weights_free(&vae->weights);
    for (int i = 0; i < CVX_VAE_MAX_BLOCKS; i++) {
        free(vae->enc_blocks[i].resnets);
        free(vae->dec_blocks[i].resnets);
    }
    free(vae);
}

int64_t cvx_vae_weight_bytes(const cvx_vae *vae) { return cvx_weights_total_bytes(&vae->weights); }

int cvx_vae_num_weight_groups(const cvx_vae *vae) { return vae->weights.num_groups; }
const cvx_weights *cvx_vae_weights(const cvx_vae *vae) { return &vae->weights; }

/* ---- layers ----------------------------------------------------------------------------------------------------- */

/* Every activation below comes from the ctx and every byte of it is touched only by ctx->be's ops. */
#define BE (ctx->be)

/* The causal-conv caches of one frame-batched pass: one slot per CogVideoXCausalConv3d with a temporal kernel,
 * visited in the same order in every batch. */
typedef struct vae_cache {
    cvx_tensor *slots;
    int count, cursor;
} vae_cache;

static cvx_status cache_init(vae_cache *c, int count) {
    c->slots = calloc((size_t)count, sizeof(cvx_tensor));
    c->count = count;
    c->cursor = 0;
    return c->slots ? CVX_OK : CVX_FAIL(CVX_ERR_OOM, "out of host memory for the conv caches");
}

static void cache_free(vae_cache *c) {
    for (int i = 0; c->slots && i < c->count; i++) cvx_tensor_release(&c->slots[i]);
    free(c->slots);
    memset(c, 0, sizeof(*c));
}

/* CogVideoXCausalConv3d: x [B, Ci, T, H, W] -> out [B, Co, T, H, W]. The time padding is kt-1 copies of the first
 * frame in the first batch, the previous batch's last kt-1 padded frames after; those become the next cache. */
static cvx_status causal_conv(cvx_ctx *ctx, const cvx_tensor *x, const cvx_conv_weight *w, vae_cache *cache,
                              cvx_tensor *out) {
    cvx_status st = CVX_OK;
    const int pad = w->kt - 1;
    const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2], H = x->shape[3], W = x->shape[4];
    if (cache->cursor >= cache->count) return CVX_FAIL(CVX_ERR_INTERNAL, "conv cache slots exhausted");
    cvx_tensor *slot = &cache->slots[cache->cursor++];
    cvx_tensor next = {0};
    cvx_frame *frames = malloc((size_t)(T + pad) * sizeof(cvx_frame));
    if (!frames) return CVX_FAIL(CVX_ERR_OOM, "out of host memory");
    if (slot->data)
        cvx_frames_of(slot, 0, pad, frames);
    else
        for (int i = 0; i < pad; i++) cvx_frames_of(x, 0, 1, &frames[i]);
    cvx_frames_of(x, 0, T, frames + pad);
    const cvx_conv_geom g = {1, 1, (w->kh - 1) / 2, (w->kh - 1) / 2, (w->kw - 1) / 2, (w->kw - 1) / 2, 1};
    CVX_TRY(BE->conv3d(ctx, frames, (int)(T + pad), B, H, W, w, &g, out));
    CVX_TRY(BE->gather_frames(ctx, frames + T, pad, B, C, H, W, &next));
    cvx_tensor_move(slot, &next);
fail:
    free(frames);
    if (st != CVX_OK) cvx_tensor_release(out);
    return st;
}

/* A 1x1x1 convolution (conv_shortcut, the spatial norm's conv_y / conv_b). */
static cvx_status pointwise_conv(cvx_ctx *ctx, const cvx_tensor *x, const cvx_conv_weight *w, cvx_tensor *out) {
    const int64_t T = x->shape[2];
    cvx_frame *frames = malloc((size_t)T * sizeof(cvx_frame));
    if (!frames) return CVX_FAIL(CVX_ERR_OOM, "out of host memory");
    cvx_frames_of(x, 0, T, frames);
    const cvx_conv_geom g = {1, 1, 0, 0, 0, 0, 1};
    cvx_status st = BE->conv3d(ctx, frames, (int)T, x->shape[0], x->shape[3], x->shape[4], w, &g, out);
    free(frames);
    return st;
}

/* CogVideoXSpatialNorm3D (+ SiLU): out = GroupNorm(f) * conv_y(zq') + conv_b(zq'), zq' = zq resampled to f. */
static cvx_status spatial_norm(cvx_ctx *ctx, const vae_spatial_norm *sn, int groups, const cvx_tensor *f,
                               const cvx_tensor *zq, int silu, cvx_tensor *out) {
    cvx_status st = CVX_OK;
    cvx_tensor y = {0}, b = {0};
    CVX_TRY(pointwise_conv(ctx, zq, &sn->conv_y, &y));
    CVX_TRY(pointwise_conv(ctx, zq, &sn->conv_b, &b));
    const cvx_norm_modulation mod = {&y, &b};
    /* the GroupNorm inside SpatialNorm3D always uses eps 1e-6 */
    CVX_TRY(BE->group_norm(ctx, f, groups, 1e-6f, sn->norm_layer.gamma, sn->norm_layer.beta, &mod, silu, out));
fail:
    cvx_tensor_release(&y);
    cvx_tensor_release(&b);
    return st;
}

static cvx_status resnet_norm(cvx_ctx *ctx, const cvx_vae *vae, const vae_norm *n, const vae_spatial_norm *sn,
                              const cvx_tensor *x, const cvx_tensor *zq, cvx_tensor *out) {
    if (zq) return spatial_norm(ctx, sn, vae->cfg.norm_num_groups, x, zq, 1, out);
    return BE->group_norm(ctx, x, vae->cfg.norm_num_groups, vae->cfg.norm_eps, n->gamma, n->beta, NULL, 1, out);
}

/* CogVideoXResnetBlock3D: consumes *x, leaves the block output in *x. zq is the chunk's latent (decoder) or NULL
 * (encoder). */
static cvx_status resnet_forward(cvx_ctx *ctx, const cvx_vae *vae, const vae_resnet *r, cvx_tensor *x,
                                 const cvx_tensor *zq, vae_cache *cache) {
    cvx_status st = CVX_OK;
    cvx_tensor h = {0}, h2 = {0}, s = {0};
    CVX_TRY(resnet_norm(ctx, vae, &r->norm1, &r->snorm1, x, zq, &h));
    CVX_TRY(causal_conv(ctx, &h, &r->conv1, cache, &h2));
    cvx_tensor_release(&h);
    CVX_TRY(resnet_norm(ctx, vae, &r->norm2, &r->snorm2, &h2, zq, &h2));
    CVX_TRY(causal_conv(ctx, &h2, &r->conv2, cache, &h));
    cvx_tensor_release(&h2);
    if (r->has_shortcut) {
        CVX_TRY(pointwise_conv(ctx, x, &r->conv_shortcut, &s));
        CVX_TRY(BE->add_inplace(ctx, &h, &s));
    } else {
        CVX_TRY(BE->add_inplace(ctx, &h, x));
    }
    cvx_tensor_move(x, &h);
fail:
    cvx_tensor_release(&h);
    cvx_tensor_release(&h2);
    cvx_tensor_release(&s);
    return st;
}

/* CogVideoXUpsample3D: nearest x2 in space (and in time for compress_time blocks, the first frame of an odd count
 * kept single), then the 3x3 Conv2d per frame. Consumes *x. */
static cvx_status upsample_forward(cvx_ctx *ctx, const vae_block *blk, cvx_tensor *x) {
    cvx_status st = CVX_OK;
    cvx_tensor out = {0};
    const int64_t T = x->shape[2];
    int64_t Tout = T;
    if (blk->compress_time && T > 1) Tout = T % 2 ? 1 + 2 * (T - 1) : 2 * T;
    cvx_frame *frames = malloc((size_t)Tout * sizeof(cvx_frame));
    if (!frames) return CVX_FAIL(CVX_ERR_OOM, "out of host memory");
    for (int64_t t = 0; t < Tout; t++) {
        int64_t src = t;
        if (Tout != T) src = T % 2 ? (t == 0 ? 0 : 1 + (t - 1) / 2) : t / 2;
        cvx_frames_of(x, src, 1, &frames[t]);
    }
    const cvx_conv_geom g = {1, 1, 1, 1, 1, 1, 2};
    CVX_TRY(BE->conv3d(ctx, frames, (int)Tout, x->shape[0], x->shape[3], x->shape[4], &blk->resample_conv, &g, &out));
    cvx_tensor_move(x, &out);
fail:
    free(frames);
    return st;
}

/* CogVideoXDownsample3D: average time pairs (compress_time; an odd first frame kept), pad right/bottom by one,
 * 3x3 Conv2d with stride 2 per frame. Consumes *x. */
static cvx_status downsample_forward(cvx_ctx *ctx, const vae_block *blk, cvx_tensor *x) {
    cvx_status st = CVX_OK;
    cvx_tensor pooled = {0}, out = {0};
    cvx_frame *frames = NULL;
    if (blk->compress_time && x->shape[2] > 1) {
        CVX_TRY(BE->avg_pool_time(ctx, x, &pooled));
        cvx_tensor_move(x, &pooled);
    }
    const int64_t T = x->shape[2];
    frames = malloc((size_t)T * sizeof(cvx_frame));
    if (!frames) return CVX_FAIL(CVX_ERR_OOM, "out of host memory");
    cvx_frames_of(x, 0, T, frames);
    const cvx_conv_geom g = {2, 2, 0, 1, 0, 1, 1};
    CVX_TRY(BE->conv3d(ctx, frames, (int)T, x->shape[0], x->shape[3], x->shape[4], &blk->resample_conv, &g, &out));
    cvx_tensor_move(x, &out);
fail:
    free(frames);
    cvx_tensor_release(&pooled);
    return st;
}

/* The resnets of one weight group (and its resampler: up 1, down -1, none 0), the group acquired around them. */
static cvx_status group_forward(cvx_ctx *ctx, const cvx_vae *vae, int group, const vae_resnet *resnets, int count,
                                const vae_block *resample, int dir, cvx_tensor *h, const cvx_tensor *zq,
                                vae_cache *cache) {
    CVX_CHECK(cvx_ctx_acquire(ctx, group));
    cvx_status st = CVX_OK;
    for (int r = 0; r < count && st == CVX_OK; r++) st = resnet_forward(ctx, vae, &resnets[r], h, zq, cache);
    if (st == CVX_OK && dir > 0) st = upsample_forward(ctx, resample, h);
    if (st == CVX_OK && dir < 0) st = downsample_forward(ctx, resample, h);
    cvx_ctx_release(ctx, group);
    return st;
}

/* CogVideoXDecoder3D on one frame batch: z [B, latent, Tz, h, w] -> out [B, out_channels, T, H, W]. */
static cvx_status decoder_forward(cvx_ctx *ctx, const cvx_vae *vae, const cvx_tensor *z, vae_cache *cache,
                                  cvx_tensor *out) {
    cvx_status st = CVX_OK;
    cvx_tensor h = {0};
    const int n = vae->cfg.num_blocks;
    cache->cursor = 0;
    CVX_TRY(causal_conv(ctx, z, &vae->dec_conv_in, cache, &h));
    CVX_TRY(group_forward(ctx, vae, GROUP_DEC_MID(n), vae->dec_mid, 2, NULL, 0, &h, z, cache));
    for (int i = 0; i < n; i++) {
        const vae_block *blk = &vae->dec_blocks[i];
        CVX_TRY(group_forward(ctx, vae, GROUP_DEC_BLOCK(n, i), blk->resnets, blk->num_resnets, blk, blk->has_resample,
                              &h, z, cache));
    }
    CVX_TRY(spatial_norm(ctx, &vae->dec_norm_out, vae->cfg.norm_num_groups, &h, z, 1, &h));
    CVX_TRY(causal_conv(ctx, &h, &vae->dec_conv_out, cache, out));
fail:
    cvx_tensor_release(&h);
    return st;
}

/* CogVideoXEncoder3D on one frame batch: x [B, in_channels, T, H, W] -> moments [B, 2 * latent, T', h, w]. */
static cvx_status encoder_forward(cvx_ctx *ctx, const cvx_vae *vae, const cvx_tensor *x, vae_cache *cache,
                                  cvx_tensor *out) {
    cvx_status st = CVX_OK;
    cvx_tensor h = {0};
    const int n = vae->cfg.num_blocks;
    cache->cursor = 0;
    CVX_TRY(causal_conv(ctx, x, &vae->enc_conv_in, cache, &h));
    for (int i = 0; i < n; i++) {
        const vae_block *blk = &vae->enc_blocks[i];
        CVX_TRY(group_forward(ctx, vae, GROUP_ENC_BLOCK(i), blk->resnets, blk->num_resnets, blk, -blk->has_resample, &h,
                              NULL, cache));
    }
    CVX_TRY(group_forward(ctx, vae, GROUP_ENC_MID(n), vae->enc_mid, 2, NULL, 0, &h, NULL, cache));
    /* encoder.norm_out always uses eps 1e-6 */
    CVX_TRY(BE->group_norm(ctx, &h, vae->cfg.norm_num_groups, 1e-6f, vae->enc_norm_out.gamma, vae->enc_norm_out.beta,
                           NULL, 1, &h));
    CVX_TRY(causal_conv(ctx, &h, &vae->enc_conv_out, cache, out));
fail:
    cvx_tensor_release(&h);
    return st;
}

/* ---- shapes ----------------------------------------------------------------------------------------------------- */

/* Frame batches as diffusers cuts them: batches of bs frames, the first one absorbing the remainder. */
static int64_t frame_batch_count(int64_t n, int64_t bs) { return n / bs > 1 ? n / bs : 1; }

static void frame_batch_range(int64_t n, int64_t bs, int64_t k, int64_t *start, int64_t *end) {
    const int64_t rem = n % bs;
    *start = bs * k + (k == 0 ? 0 : rem);
    *end = bs * (k + 1) + rem;
    if (*end > n) *end = n;
}

static int64_t decoded_frames(const cvx_vae *vae, int64_t t) {
    for (int i = 0; i < vae->cfg.num_blocks; i++) {
        const vae_block *blk = &vae->dec_blocks[i];
        if (blk->has_resample && blk->compress_time && t > 1) t = t % 2 ? 1 + 2 * (t - 1) : 2 * t;
    }
    return t;
}

static int64_t encoded_frames(const cvx_vae *vae, int64_t t) {
    for (int i = 0; i < vae->cfg.num_blocks; i++) {
        const vae_block *blk = &vae->enc_blocks[i];
        if (blk->has_resample && blk->compress_time && t > 1) t = t % 2 + (t - t % 2) / 2;
    }
    return t;
}

/* Output frames of the whole frame-batched pass over n input frames. The batches after the first all have bs
 * frames, so the count is closed-form: a frame count from a caller must not cost time linear in it (codec_shape
 * bounds n first, so nothing here can overflow). */
static int64_t codec_frames(const cvx_vae *vae, int decode, int64_t n) {
    const int64_t bs = decode ? 2 : 8, batches = frame_batch_count(n, bs);
    int64_t first_start, first_end;
    frame_batch_range(n, bs, 0, &first_start, &first_end);
    const int64_t first = first_end - first_start, rest = batches - 1;
    return decode ? decoded_frames(vae, first) + rest * decoded_frames(vae, bs)
                  : encoded_frames(vae, first) + rest * encoded_frames(vae, bs);
}

/* Output rows (or columns) for `size` input rows; 0 when the input is too small for the encoder's stride-2 convs. */
static int64_t codec_extent(const cvx_vae *vae, int decode, int64_t size) {
    for (int i = 0; i < vae->cfg.num_blocks - 1; i++) {
        if (decode)
            size *= 2;
        else
            size = size >= 2 ? (size - 2) / 2 + 1 : 0;
    }
    return size;
}

/* diffusers' tile arithmetic (Python doubles truncated by int()). `in_*` are in input units, `blend_*` and
 * `limit_*` in output units. */
typedef struct tile_plan {
    int64_t in_h, in_w;         /* tile size */
    int64_t stride_h, stride_w; /* distance between tile starts */
    int64_t blend_h, blend_w;
    int64_t limit_h, limit_w; /* kept rows / columns of each blended tile */
} tile_plan;

static cvx_status make_tile_plan(const cvx_vae *vae, int decode, const cvx_vae_tiling *t, tile_plan *p) {
    const double factor = (double)(1 << (vae->cfg.num_blocks - 1));
    const int64_t lat_h = (int64_t)((double)t->tile_sample_min_height / factor);
    const int64_t lat_w = (int64_t)((double)t->tile_sample_min_width / factor);
    const double fh = t->tile_overlap_factor_height, fw = t->tile_overlap_factor_width;
    if (decode) {
        p->in_h = lat_h, p->in_w = lat_w;
        p->stride_h = (int64_t)((double)lat_h * (1.0 - fh)), p->stride_w = (int64_t)((double)lat_w * (1.0 - fw));
        p->blend_h = (int64_t)((double)t->tile_sample_min_height * fh);
        p->blend_w = (int64_t)((double)t->tile_sample_min_width * fw);
        p->limit_h = t->tile_sample_min_height - p->blend_h, p->limit_w = t->tile_sample_min_width - p->blend_w;
    } else {
        p->in_h = t->tile_sample_min_height, p->in_w = t->tile_sample_min_width;
        p->stride_h = (int64_t)((double)t->tile_sample_min_height * (1.0 - fh));
        p->stride_w = (int64_t)((double)t->tile_sample_min_width * (1.0 - fw));
        p->blend_h = (int64_t)((double)lat_h * fh), p->blend_w = (int64_t)((double)lat_w * fw);
        p->limit_h = lat_h - p->blend_h, p->limit_w = lat_w - p->blend_w;
    }
    if (p->in_h < 1 || p->in_w < 1 || p->stride_h < 1 || p->stride_w < 1 || p->limit_h < 1 || p->limit_w < 1)
        return CVX_FAIL(CVX_ERR_INVALID,
                        "tiling parameters (tile %dx%d, overlap %g/%g) give an empty tile, stride or kept region",
                        t->tile_sample_min_height, t->tile_sample_min_width, fh, fw);
    return CVX_OK;
}

static int uses_tiles(const cvx_vae *vae, int decode, const cvx_vae_tiling *t, int64_t h, int64_t w) {
    if (!t || !t->enabled) return 0;
    const double factor = (double)(1 << (vae->cfg.num_blocks - 1));
    if (decode)
        return w > (int64_t)((double)t->tile_sample_min_width / factor) ||
               h > (int64_t)((double)t->tile_sample_min_height / factor);
    return w > t->tile_sample_min_width || h > t->tile_sample_min_height;
}

/* Output rows of a tiled pass along one axis of `size` input rows: the tiles that start at or before size - tile
 * are whole and alike, so only the few partial ones at the end are visited. */
static int64_t tiled_extent(const cvx_vae *vae, int decode, int64_t size, int64_t tile, int64_t stride, int64_t limit) {
    const int64_t whole = size >= tile ? (size - tile) / stride + 1 : 0;
    const int64_t whole_out = codec_extent(vae, decode, tile);
    int64_t total = whole * (whole_out < limit ? whole_out : limit);
    for (int64_t i = whole * stride; i < size; i += stride) {
        const int64_t out = codec_extent(vae, decode, size - i);
        total += out < limit ? out : limit;
    }
    return total;
}

static cvx_status codec_shape(const cvx_vae *vae, int decode, const int64_t in[5], const cvx_vae_tiling *tiling,
                              int64_t out[5]) {
    const cvx_vae_config *c = &vae->cfg;
    const int want_c = decode ? c->latent_channels : c->in_channels;
    const char *op = decode ? "decode" : "encode";
    if (in[1] != want_c)
        return CVX_FAIL(CVX_ERR_INVALID, "%s expects %d channels, got %lld", op, want_c, (long long)in[1]);
    static const char *const dim_names[5] = {"batch", "channels", "frames", "height", "width"};
    for (int i = 0; i < 5; i++) {
        if (in[i] < 1)
            return CVX_FAIL(CVX_ERR_INVALID, "%s: %s is %lld; every dimension must be at least 1", op, dim_names[i],
                            (long long)in[i]);
        /* before any size arithmetic: bounded inputs keep every output size far inside int64 */
        if (in[i] > CVX_VAE_MAX_EXTENT)
            return CVX_FAIL(CVX_ERR_INVALID, "%s: %s is %lld, over the limit of %d", op, dim_names[i], (long long)in[i],
                            CVX_VAE_MAX_EXTENT);
    }
    out[0] = in[0];
    out[1] = decode ? c->out_channels : 2 * (int64_t)c->latent_channels;
    out[2] = codec_frames(vae, decode, in[2]);
    if (uses_tiles(vae, decode, tiling, in[3], in[4])) {
        tile_plan p;
        CVX_CHECK(make_tile_plan(vae, decode, tiling, &p));
        out[3] = tiled_extent(vae, decode, in[3], p.in_h, p.stride_h, p.limit_h);
        out[4] = tiled_extent(vae, decode, in[4], p.in_w, p.stride_w, p.limit_w);
    } else {
        out[3] = codec_extent(vae, decode, in[3]);
        out[4] = codec_extent(vae, decode, in[4]);
    }
    if (out[3] < 1 || out[4] < 1)
        return CVX_FAIL(CVX_ERR_INVALID, "a %lldx%lld input (or tile) is too small for the encoder's %d downsamplings",
                        (long long)in[3], (long long)in[4], c->num_blocks - 1);
    /* the product is compared with the limit by division before each multiplication, so it never overflows */
    const int64_t max_elems = CVX_VAE_MAX_OUTPUT_BYTES / (int64_t)sizeof(float);
    int64_t elems = 1;
    for (int i = 0; i < 5; i++) {
        if (elems > max_elems / out[i])
            return CVX_FAIL(CVX_ERR_INVALID,
                            "%s: the output [%lld, %lld, %lld, %lld, %lld] would exceed the limit of %lld bytes", op,
                            (long long)out[0], (long long)out[1], (long long)out[2], (long long)out[3],
                            (long long)out[4], (long long)CVX_VAE_MAX_OUTPUT_BYTES);
        elems *= out[i];
    }
    return CVX_OK;
}

cvx_status cvx_vae_decode_shape(const cvx_vae *vae, const int64_t zshape[5], const cvx_vae_tiling *tiling,
                                int64_t out_shape[5]) {
    return codec_shape(vae, 1, zshape, tiling, out_shape);
}

cvx_status cvx_vae_encode_shape(const cvx_vae *vae, const int64_t xshape[5], const cvx_vae_tiling *tiling,
                                int64_t out_shape[5]) {
    return codec_shape(vae, 0, xshape, tiling, out_shape);
}

/* ---- frame batches, tiles, slices ---------------------------------------------------------------------------------
 */

/* The frame-batched pass (diffusers' _decode / _encode without tiling): runs x batch by batch, carrying the conv
 * caches, and writes each batch's output into dst at offset (b, t, y, x) = d: a device tensor (a tile), or with
 * dst_host the forward's host output, which each batch is downloaded into. */
static cvx_status run_frame_batches(cvx_ctx *ctx, const cvx_vae *vae, int decode, const cvx_tensor *x, cvx_tensor *dst,
                                    int dst_host, const int64_t d[4]) {
    cvx_status st = CVX_OK;
    vae_cache cache = {0};
    cvx_tensor chunk = {0}, chunk_out = {0};
    const int64_t n = x->shape[2], bs = decode ? 2 : 8;
    CVX_TRY(cache_init(&cache, decode ? vae->dec_causal_convs : vae->enc_causal_convs));
    int64_t t_out = d[1];
    for (int64_t k = 0; k < frame_batch_count(n, bs); k++) {
        int64_t s, e;
        frame_batch_range(n, bs, k, &s, &e);
        CVX_TRY(cvx_ctx_poll(ctx));
        CVX_TRY(BE->slice_frames(ctx, x, s, e - s, &chunk));
        CVX_TRY(decode ? decoder_forward(ctx, vae, &chunk, &cache, &chunk_out)
                       : encoder_forward(ctx, vae, &chunk, &cache, &chunk_out));
        cvx_tensor_release(&chunk);
        const int64_t at[4] = {d[0], t_out, d[2], d[3]}, from[4] = {0, 0, 0, 0};
        const int64_t box[4] = {chunk_out.shape[0], chunk_out.shape[2], chunk_out.shape[3], chunk_out.shape[4]};
        CVX_TRY(dst_host ? BE->download_box(ctx, dst, at, &chunk_out, from, box)
                         : BE->copy_box(ctx, dst, at, &chunk_out, from, box));
        t_out += chunk_out.shape[2];
        cvx_tensor_release(&chunk_out);
    }
fail:
    cvx_tensor_release(&chunk);
    cvx_tensor_release(&chunk_out);
    cache_free(&cache);
    return st;
}

/* diffusers' tiled_decode / tiled_encode, streamed: tiles are visited in the same order and blended in place the
 * same way, but instead of keeping every decoded tile, only the left neighbour and, per column, the last rows of
 * the tile above (all that blending reads) are kept, and each blended tile's kept part goes straight into the host
 * output dst. Working memory is therefore one tile's, whatever the frame size. */
static cvx_status run_tiled(cvx_ctx *ctx, const cvx_vae *vae, int decode, const cvx_vae_tiling *tiling,
                            const cvx_tensor *x, const int64_t out_shape[5], cvx_tensor *dst, int64_t b0) {
    cvx_status st = CVX_OK;
    tile_plan p;
    CVX_CHECK(make_tile_plan(vae, decode, tiling, &p));
    const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2], H = x->shape[3], W = x->shape[4];
    const int64_t cols = (W + p.stride_w - 1) / p.stride_w;
    const int64_t out_c = out_shape[1], out_t = out_shape[2];
    cvx_tensor *above = calloc((size_t)(2 * cols), sizeof(cvx_tensor)); /* [0, cols): row i-1, [cols, 2cols): row i */
    int64_t *above_rows = calloc((size_t)(2 * cols), sizeof(int64_t));  /* full height of the tile each came from */
    cvx_tensor tile_in = {0}, tile = {0}, left = {0};
    if (!above || !above_rows) {
        st = CVX_FAIL(CVX_ERR_OOM, "out of host memory");
        goto fail;
    }
    int64_t y_out = 0;
    for (int64_t i = 0; i < H; i += p.stride_h) {
        const int64_t th = H - i < p.in_h ? H - i : p.in_h;
        int64_t x_out = 0, kept_h = 0;
        for (int64_t j = 0, col = 0; j < W; j += p.stride_w, col++) {
            const int64_t tw = W - j < p.in_w ? W - j : p.in_w;
            CVX_TRY(cvx_ctx_tensor5(ctx, &tile_in, B, C, T, th, tw));
            const int64_t zero[4] = {0, 0, 0, 0}, from[4] = {0, 0, i, j}, box_in[4] = {B, T, th, tw};
            CVX_TRY(BE->copy_box(ctx, &tile_in, zero, x, from, box_in));
            const int64_t oh = codec_extent(vae, decode, th), ow = codec_extent(vae, decode, tw);
            CVX_TRY(cvx_ctx_tensor5(ctx, &tile, B, out_c, out_t, oh, ow));
            CVX_TRY(run_frame_batches(ctx, vae, decode, &tile_in, &tile, 0, zero));
            cvx_tensor_release(&tile_in);

            if (i > 0) CVX_TRY(BE->blend_rows(ctx, &above[col], &tile, above_rows[col], p.blend_h));
            if (j > 0) CVX_TRY(BE->blend_cols(ctx, &left, &tile, p.blend_w));

            kept_h = oh < p.limit_h ? oh : p.limit_h;
            const int64_t kept_w = ow < p.limit_w ? ow : p.limit_w;
            const int64_t at[4] = {b0, 0, y_out, x_out}, box_out[4] = {B, out_t, kept_h, kept_w};
            CVX_TRY(BE->download_box(ctx, dst, at, &tile, zero, box_out));
            x_out += kept_w;

            /* keep what the tile below will blend with: its last min(oh, blend_h) rows */
            const int64_t keep = oh < p.blend_h ? oh : p.blend_h;
            cvx_tensor *strip = &above[cols + col];
            cvx_tensor_release(strip);
            CVX_TRY(cvx_ctx_tensor5(ctx, strip, B, out_c, out_t, keep, ow));
            const int64_t strip_from[4] = {0, 0, oh - keep, 0}, strip_box[4] = {B, out_t, keep, ow};
            CVX_TRY(BE->copy_box(ctx, strip, zero, &tile, strip_from, strip_box));
            above_rows[cols + col] = oh;
            cvx_tensor_move(&left, &tile);
        }
        cvx_tensor_release(&left);
        for (int64_t col = 0; col < cols; col++) {
            cvx_tensor_move(&above[col], &above[cols + col]);
            above_rows[col] = above_rows[cols + col];
        }
        y_out += kept_h;
    }
fail:
    for (int64_t k = 0; above && k < 2 * cols; k++) cvx_tensor_release(&above[k]);
    free(above);
    free(above_rows);
    cvx_tensor_release(&tile_in);
    cvx_tensor_release(&tile);
    cvx_tensor_release(&left);
    return st;
}

/* One batch item (slicing) or the whole batch through the tiled or frame-batched pass, into dst at batch b0. */
static cvx_status run_items(cvx_ctx *ctx, const cvx_vae *vae, int decode, const cvx_vae_tiling *tiling,
                            const cvx_tensor *x, const int64_t out_shape[5], cvx_tensor *dst, int64_t b0) {
    if (uses_tiles(vae, decode, tiling, x->shape[3], x->shape[4]))
        return run_tiled(ctx, vae, decode, tiling, x, out_shape, dst, b0);
    const int64_t at[4] = {b0, 0, 0, 0};
    return run_frame_batches(ctx, vae, decode, x, dst, 1, at);
}

/* The codec after its checks: x uploaded, then every item; the block groups' pass spans all frame batches and tiles
 * (cyclic), group 0 is held throughout. */
static cvx_status run_uploaded(cvx_ctx *ctx, const cvx_vae *vae, int decode, const cvx_tensor *x, int slicing,
                               const cvx_vae_tiling *tiling, const int64_t shape[5], cvx_tensor *out) {
    cvx_status st = CVX_OK;
    cvx_tensor xd = {0};
    const int n = vae->cfg.num_blocks;
    CVX_CHECK(cvx_ctx_tensor(ctx, &xd, CVX_F32, 5, x->shape));
    CVX_TRY(BE->upload(ctx, xd.data, x->data, cvx_tensor_nbytes(&xd)));
    /* one cyclic pass over the block groups; group 0, acquired inside it, is held until it ends */
    CVX_TRY(decode ? cvx_ctx_begin(ctx, GROUP_DEC_MID(n), GROUP_DEC_BLOCK(n, n - 1), 1)
                   : cvx_ctx_begin(ctx, GROUP_ENC_BLOCK(0), GROUP_ENC_MID(n), 1));
    if ((st = cvx_ctx_acquire(ctx, GROUP_REST)) == CVX_OK) {
        if (slicing && x->shape[0] > 1) {
            /* diffusers' enable_slicing: one batch item at a time (a view of the uploaded input) */
            cvx_tensor item = xd;
            item.arena = NULL; /* a view: never released */
            item.shape[0] = 1;
            const int64_t item_elems = cvx_tensor_numel(&item);
            for (int64_t b = 0; b < x->shape[0] && st == CVX_OK; b++) {
                item.data = (float *)xd.data + b * item_elems;
                st = run_items(ctx, vae, decode, tiling, &item, shape, out, b);
            }
        } else {
            st = run_items(ctx, vae, decode, tiling, &xd, shape, out, 0);
        }
        cvx_ctx_release(ctx, GROUP_REST);
    }
    cvx_ctx_end(ctx); /* also after a failure */
fail:
    cvx_tensor_release(&xd);
    return st;
}

static cvx_status run_codec(cvx_ctx *ctx, cvx_vae *vae, int decode, const cvx_tensor *x, int slicing,
                            const cvx_vae_tiling *tiling, cvx_tensor *out) {
    int64_t shape[5];
    memset(out, 0, sizeof(*out));
    if (x->ndim != 5 || x->dtype != CVX_F32)
        return CVX_FAIL(CVX_ERR_INVALID, "%s expects a 5-D float32 tensor [B, C, F, H, W], got %d-D",
                        decode ? "decode" : "encode", x->ndim);
    CVX_CHECK(codec_shape(vae, decode, x->shape, tiling, shape));
    /* the host output is written batch by batch (tile by tile); a measuring pass has none */
    if (!ctx->measuring) CVX_CHECK(cvx_tensor_alloc(out, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 5, shape));
    const cvx_status st = run_uploaded(ctx, vae, decode, x, slicing, tiling, shape, out);
    if (st != CVX_OK) cvx_tensor_release(out);
    return st;
}

cvx_status cvx_vae_decode(cvx_ctx *ctx, cvx_vae *vae, const cvx_tensor *z, int slicing, const cvx_vae_tiling *tiling,
                          cvx_tensor *out) {
    return run_codec(ctx, vae, 1, z, slicing, tiling, out);
}

cvx_status cvx_vae_encode(cvx_ctx *ctx, cvx_vae *vae, const cvx_tensor *x, int slicing, const cvx_vae_tiling *tiling,
                          cvx_tensor *out) {
    return run_codec(ctx, vae, 0, x, slicing, tiling, out);
}
