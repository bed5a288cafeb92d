/* The CUDA backend's C interface: the runtime state (one device per process, its compute and copy streams, the
 * cuBLAS handles), the GEMM every op reaches cuBLAS through, and the ops of the backend table (ops/backend.h) with
 * the table's signatures. C and CUDA C++ both include it.
 *
 * Streams: every op runs on the compute stream, in order, asynchronously to the host; the copy stream carries the
 * weight groups' host-to-device copies (mem/residency.c) so that they overlap compute. download and download_box
 * synchronise the compute stream before returning (the host reads the bytes next).
 *
 * Measuring: the CUDA table measures itself (cvx_backend.self_measuring). Every op validates its arguments, makes
 * its allocations from the ctx (outputs kept, scratch given back), and when ctx->measuring returns before touching
 * a byte or launching anything. The measuring pass therefore sees exactly the CUDA ops' own allocations.
 *
 * Compute dtype: ctx->compute. CVX_F32 runs every op in f32 (GEMMs in full f32, no TF32: the parity path);
 * CVX_F16 / CVX_BF16 run GEMMs and attention on tensor cores with that storage type and f32 accumulation. */
#ifndef CVX_CUDA_OPS_H
#define CVX_CUDA_OPS_H

#ifdef __cplusplus
extern "C" {
#endif

#include "../backend.h" /* and ops.h, ctx.h: C declarations, so C linkage from a .cu too */

/* ---- runtime (device.cu) ---- */
int cvx_cuda_device_count(void);
/* Selects the device (first call; a later call with another index fails) and creates the streams and handles. */
cvx_status cvx_cuda_init(int device_index);
/* The state of the initialised device (NULL before cvx_cuda_init succeeded): cudaStream_t, cublasHandle_t (bound
 * to the compute stream), cublasLtHandle_t, and a cuBLAS(Lt) workspace on the device. */
void *cvx_cuda_compute_stream(void);
void *cvx_cuda_copy_stream(void);
void *cvx_cuda_cublas(void);
void *cvx_cuda_cublaslt(void);
void *cvx_cuda_workspace(size_t *bytes);
/* Maps the last CUDA error of `call` (a cudaError_t value) to CVX_ERR_OOM (out of memory) or CVX_ERR_INTERNAL,
 * with the call and the runtime's message in the error text. */
cvx_status cvx_cuda_fail(int cuda_error, const char *call, const char *file, int line);

/* ---- memory-manager hooks: mem.c's CVX_DEVICE_CUDA ----
 * alloc.cu: device memory from the caching allocator (the first call initialises cuda:0 unless cvx_cuda_init chose
 * another; 512-byte aligned; see alloc.cu for rounding, reuse and stream safety); a copy in any direction
 * (cudaMemcpyDefault) that first waits for the compute stream's work; zero-fill on the compute stream; the cache
 * given back to the driver (torch.cuda.empty_cache); page-locking host ranges for the copy stream. */
cvx_status cvx_cuda_mem_alloc(size_t bytes, void **out);
void cvx_cuda_mem_free(void *ptr);
cvx_status cvx_cuda_mem_zero(void *ptr, size_t bytes);
cvx_status cvx_cuda_memcpy(void *dst, const void *src, size_t bytes);
void cvx_cuda_empty_cache(void);
typedef struct cvx_cuda_alloc_stats {
    int64_t reserved_bytes; /* held from cudaMalloc, cache included */
    int64_t peak_reserved_bytes;
    int64_t cached_bytes; /* of reserved_bytes, in free blocks */
    int64_t num_segments; /* live cudaMalloc allocations */
    int64_t num_mallocs;  /* cudaMalloc calls that succeeded */
    int64_t num_cache_hits;
    int64_t num_retries; /* cudaMalloc failures that emptied the cache and retried */
} cvx_cuda_alloc_stats;
void cvx_cuda_get_alloc_stats(cvx_cuda_alloc_stats *out);
void cvx_cuda_reset_alloc_peak(void);
cvx_status cvx_cuda_mem_get_info(size_t *free_bytes, size_t *total_bytes);
/* read_only: a read-only mapping (cudaHostRegisterReadOnly; CVX_ERR_INVALID where the device cannot). */
cvx_status cvx_cuda_host_register(void *ptr, size_t bytes, int read_only);
void cvx_cuda_host_unregister(void *ptr);
/* queue.cu: the copy queue on the copy stream (positions and markers, as mem.h's cvx_queue), compute fences
 * (positions in the compute stream), and the two cross-stream orders: copies after a fence, compute after a copy
 * position (both on the device: the host does not block). Fence 0 is always complete. */
cvx_status cvx_cuda_queue_copy(void *dst, const void *src, size_t bytes, int64_t *busy_ns);
uint64_t cvx_cuda_queue_record(void);
int cvx_cuda_queue_done(uint64_t pos);
int64_t cvx_cuda_queue_wait(uint64_t pos);
void cvx_cuda_queue_sync(void);
int64_t cvx_cuda_queue_busy_ns(void);
uint64_t cvx_cuda_fence(void);
int cvx_cuda_fence_done(uint64_t seq);
cvx_status cvx_cuda_copy_after(uint64_t fence);
cvx_status cvx_cuda_compute_after(uint64_t pos, int64_t *wait_ns);

/* ---- GEMM (gemm.cu): C = alpha op(A) op(B) + beta C [+ bias], row-major, on the compute stream ----
 * A is [M, K] (trans_a 0) or [K, M] (1) with row stride lda; B is [K, N] (trans_b 0) or [N, K] (1) with ldb; C is
 * [M, N] f32 with ldc. A and B share ab_type (F32: full f32, F16/BF16: tensor cores, f32 accumulation). batch >= 1
 * strided problems (stride_* in elements). bias [N] f32 or NULL is added to every row (fused where cuBLASLt
 * can). */
typedef struct cvx_gemm {
    int trans_a, trans_b;
    int64_t M, N, K;
    const void *A;
    int64_t lda, stride_a;
    const void *B;
    int64_t ldb, stride_b;
    cvx_dtype ab_type;
    float *C;
    int64_t ldc, stride_c;
    int64_t batch;
    float alpha, beta;
    const float *bias;
} cvx_gemm;
cvx_status cvx_cuda_gemm(const cvx_gemm *g);

/* ---- token ops' internals (token.cu) ----
 * linear's scratch: a 16-bit weight is used either by rounding x to its type (ctx->compute F16/BF16) or by widening
 * the weight to f32 (compute F32), in blocks of at most this many bytes (16 rows or columns where one is larger),
 * plus the bias widened to f32. */
#define CVX_CUDA_LINEAR_BLOCK_BYTES ((int64_t)32 << 20)
size_t cvx_cuda_linear_scratch(int64_t M, int64_t K, cvx_dtype wdt, int64_t N, int has_bias, cvx_dtype compute);
/* After the compute stream was synchronised: CVX_ERR_INVALID with the CPU op's message when an embedding id or a
 * position-bias bucket on the device was out of range since the last call (the kernel read nothing outside its
 * table and wrote zeros instead); CVX_OK otherwise. download calls it; every other synchronising op should too. */
cvx_status cvx_cuda_device_errors(void);

/* dst[n] in `to` = src[n] in `from` (each of f32, f16, bf16; rounded to nearest even), on the compute stream
 * (token.cu): the 16-bit operands the GEMMs take and the weights widened to f32. */
cvx_status cvx_cuda_convert(void *dst, cvx_dtype to, const void *src, cvx_dtype from, int64_t n);

/* ---- the ops of the backend table (same signatures and meaning as the CPU ops in ops/ops.h) ---- */
cvx_status cvx_cuda_upload(cvx_ctx *ctx, void *dst, const void *host, size_t bytes);
cvx_status cvx_cuda_download(cvx_ctx *ctx, void *host, const void *src, size_t bytes);
cvx_status cvx_cuda_copy(cvx_ctx *ctx, void *dst, const void *src, size_t bytes);
cvx_status cvx_cuda_fill(cvx_ctx *ctx, float *x, float value, int64_t n);
cvx_status cvx_cuda_widen(cvx_ctx *ctx, float *dst, const void *w, cvx_dtype dt, int64_t n);
cvx_status cvx_cuda_linear(cvx_ctx *ctx, const float *x, int64_t M, int64_t K, const void *w, cvx_dtype wdt,
                           const void *bias, int64_t N, float *y);
cvx_status cvx_cuda_layer_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t D, float eps, const void *gamma,
                               const void *beta, cvx_dtype wdt, const float *scale, const float *shift, float *y);
cvx_status cvx_cuda_rms_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t d, float eps, const void *w,
                             cvx_dtype wdt, float *y);
cvx_status cvx_cuda_gated_add(cvx_ctx *ctx, float *x, const float *gate, const float *y, int64_t rows, int64_t D);
cvx_status cvx_cuda_mul(cvx_ctx *ctx, float *x, const float *y, int64_t n);
cvx_status cvx_cuda_silu(cvx_ctx *ctx, float *x, int64_t n);
cvx_status cvx_cuda_gelu_tanh(cvx_ctx *ctx, float *x, int64_t n);
cvx_status cvx_cuda_relu(cvx_ctx *ctx, float *x, int64_t n);
cvx_status cvx_cuda_rope(cvx_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads, int hd, const float *cos_tab,
                         const float *sin_tab);
cvx_status cvx_cuda_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                              int heads, int hd, float scale, float *out);
cvx_status cvx_cuda_biased_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                                     int H, int kd, const float *bias, const float *key_mask, float *out);
/* attention.cu's cuBLAS-tiled twins of the two above (the flash kernels' tested twin; cvx_cuda_attention runs it
 * instead of flash when the environment has CVX_CUDA_ATTENTION=tiled). Same arguments, checks and results. */
cvx_status cvx_cuda_attention_tiled(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                                    int heads, int hd, float scale, float *out);
cvx_status cvx_cuda_biased_attention_tiled(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B,
                                           int64_t S, int H, int kd, const float *bias, const float *key_mask,
                                           float *out);
cvx_status cvx_cuda_embedding(cvx_ctx *ctx, const void *table, cvx_dtype dt, int64_t table_rows, const int64_t *ids,
                              int64_t n, int64_t d, float *out);
cvx_status cvx_cuda_position_bias(cvx_ctx *ctx, const void *table, cvx_dtype dt, int num_buckets,
                                  const int32_t *buckets, int H, int64_t S, float *out);
cvx_status cvx_cuda_gather_patches(cvx_ctx *ctx, const cvx_tensor *h, int p, int pt, float *out);
cvx_status cvx_cuda_unpatchify(cvx_ctx *ctx, const float *tok, int64_t B, int64_t Fp, int64_t Hp, int64_t Wp, int64_t C,
                               int p, int pt, float *out);
cvx_status cvx_cuda_conv3d(cvx_ctx *ctx, const cvx_frame *frames, int num_frames, int64_t batch, int64_t height,
                           int64_t width, const cvx_conv_weight *wt, const cvx_conv_geom *geom, cvx_tensor *out);
cvx_status cvx_cuda_group_norm(cvx_ctx *ctx, const cvx_tensor *x, int groups, float eps, const float *gamma,
                               const float *beta, const cvx_norm_modulation *mod, int apply_silu, cvx_tensor *out);
cvx_status cvx_cuda_add_inplace(cvx_ctx *ctx, cvx_tensor *x, const cvx_tensor *y);
cvx_status cvx_cuda_avg_pool_time(cvx_ctx *ctx, const cvx_tensor *x, cvx_tensor *out);
cvx_status cvx_cuda_slice_frames(cvx_ctx *ctx, const cvx_tensor *x, int64_t first, int64_t count, cvx_tensor *out);
cvx_status cvx_cuda_copy_box(cvx_ctx *ctx, cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src,
                             const int64_t s[4], const int64_t n[4]);
cvx_status cvx_cuda_download_box(cvx_ctx *ctx, cvx_tensor *host_dst, const int64_t d[4], const cvx_tensor *src,
                                 const int64_t s[4], const int64_t n[4]);
cvx_status cvx_cuda_gather_frames(cvx_ctx *ctx, const cvx_frame *frames, int count, int64_t B, int64_t C, int64_t H,
                                  int64_t W, cvx_tensor *out);
cvx_status cvx_cuda_blend_rows(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t a_full_rows, int64_t extent);
cvx_status cvx_cuda_blend_cols(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t extent);

#ifdef __cplusplus
}
#endif

#endif
