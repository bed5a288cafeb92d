/* The CUDA token ops (the transformer and T5) and data movement: the same meaning, checks and messages as the CPU ops
 * (ops/cpu/token_ops.c, linear.c, tensor_ops.c), computed on the compute stream. Rows are row-major [rows, width]
 * f32 activations; weights are f32, f16 or bf16 and are read in their own type (no widened copy of a weight exists
 * except the bounded blocks of linear's f32 path).
 *
 * Row statistics (layer and RMS norms) run one warp per row, accumulated in double as the CPU ops do, so that a row
 * with a large mean (offset 100, spread 0.1) keeps its f32 accuracy. Element-wise ops use libm's accurate expf and
 * tanhf, as PyTorch does (no fast-math intrinsics).
 *
 * Ids and buckets are activations on the device: the host never sees them before the kernel reads them, so a bad
 * one is found on the device. The kernel reads nothing outside the table (it writes a zero row instead) and records
 * one bad index (the first thread to meet one) in a small record in pinned host memory, which the next synchronising
 * call (download, cvx_cuda_device_errors) turns into the CPU op's error. The models also validate ids on the host
 * before uploading them (t5.c), so in a pipeline the device check is a second line. */
#include <pthread.h>

#include "common.cuh"

namespace {

const int THREADS = 256;
const int ROWS_PER_BLOCK = THREADS / 32; /* the row kernels: one warp per row */
/* Element-wise grids stop at one wave of a large GPU (132 SMs x 2048 threads); their grid-stride loops cover the
 * rest (and the emulation runs a thread per fiber, so fewer threads is faster there too). */
const unsigned MAX_BLOCKS = 1024;

unsigned elem_blocks(int64_t n) {
    const unsigned b = cvx_cuda_blocks(n, THREADS);
    return b < MAX_BLOCKS ? b : MAX_BLOCKS;
}

__device__ __forceinline__ float load_w(const void *w, cvx_dtype dt, int64_t i) {
    if (dt == CVX_F16) return __half2float(((const __half *)w)[i]);
    if (dt == CVX_BF16) return __bfloat162float(((const __nv_bfloat16 *)w)[i]);
    return ((const float *)w)[i];
}

__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

cvx_status check_wdt(const char *op, cvx_dtype dt) {
    if (dt == CVX_F32 || dt == CVX_F16 || dt == CVX_BF16) return CVX_OK;
    return CVX_FAIL(CVX_ERR_INVALID, "%s on cuda: weights of type %s (f32, f16 or bf16 expected)", op,
                    cvx_dtype_name(dt));
}

/* ---- the record of a bad index met on the device ----------------------------------------------------------------- */

enum { BAD_EMBEDDING_ID = 1, BAD_BUCKET = 2 };
struct bad_index {
    int count; /* bad indices met since the last read; the first one's details below */
    int op;
    long long pos, value, bound;
};
/* Pinned host memory that kernels write directly (unified addressing makes the host pointer a device pointer) and
 * the host reads after a sync; touched only when an index is bad. A device atomic on host memory is atomic among the
 * GPU's threads only where the link supports it (PCIe AtomicOps); where it does not, two bad indices can mix their
 * details, but the count still becomes nonzero, so the error is never lost. */
bad_index *bad_record;
pthread_once_t bad_once = PTHREAD_ONCE_INIT;
cudaError_t bad_alloc_error = cudaSuccess;

void alloc_bad_record(void) {
    void *p = NULL;
    bad_alloc_error = cudaHostAlloc(&p, sizeof(bad_index), cudaHostAllocMapped);
    if (bad_alloc_error == cudaSuccess) {
        bad_record = (bad_index *)p;
        bad_record->count = 0;
    }
}

cvx_status bad_record_ready(void) {
    pthread_once(&bad_once, alloc_bad_record);
    if (bad_alloc_error != cudaSuccess)
        return cvx_cuda_fail((int)bad_alloc_error, "cudaHostAlloc (the bad-index record)", __FILE__, __LINE__);
    return CVX_OK;
}

__device__ void report_bad(bad_index *rec, int op, int64_t pos, int64_t value, int64_t bound) {
    if (atomicAdd(&rec->count, 1) == 0) {
        rec->op = op;
        rec->pos = pos;
        rec->value = value;
        rec->bound = bound;
    }
}

/* ---- kernels ----------------------------------------------------------------------------------------------------- */

__global__ void fill_kernel(float *__restrict__ x, float value, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = value;
}

/* x [rows, D] -> y: statistics in double (as the CPU op), then (x - mean) * rstd [* gamma] [+ beta]
 * [* (1 + scale) + shift], each step rounded in f32 as torch does. y may be x: each lane reads its elements before
 * writing them. */
__global__ void layer_norm_kernel(const float *x, float *y, int64_t rows, int64_t D, float eps, const void *gamma,
                                  const void *beta, cvx_dtype wdt, const float *__restrict__ scale,
                                  const float *__restrict__ shift) {
    const int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return; /* the whole warp: no block barrier follows */
    const float *xr = x + r * D;
    float *yr = y + r * D;
    double sum = 0.0;
    for (int64_t i = lane; i < D; i += 32) sum += xr[i];
    const double mean = warp_sum(sum) / (double)D;
    double sq = 0.0;
    for (int64_t i = lane; i < D; i += 32) {
        const double d = xr[i] - mean;
        sq += d * d;
    }
    const float rstd = (float)(1.0 / sqrt(warp_sum(sq) / (double)D + (double)eps)), fmean = (float)mean;
    for (int64_t i = lane; i < D; i += 32) {
        float v = (xr[i] - fmean) * rstd;
        if (gamma) v = v * load_w(gamma, wdt, i);
        if (beta) v = v + load_w(beta, wdt, i);
        if (scale) v = v * (1.0f + scale[i]) + shift[i];
        yr[i] = v;
    }
}

/* T5LayerNorm: y = w * (x * (1 / sqrt(mean(x^2) + eps))), the mean of squares in double (the CPU op). */
__global__ void rms_norm_kernel(const float *x, float *y, int64_t rows, int64_t d, float eps, const void *w,
                                cvx_dtype wdt) {
    const int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float *xr = x + r * d;
    float *yr = y + r * d;
    double sq = 0.0;
    for (int64_t i = lane; i < d; i += 32) sq += (double)xr[i] * xr[i];
    const float scale = 1.0f / sqrtf((float)(warp_sum(sq) / (double)d) + eps);
    for (int64_t i = lane; i < d; i += 32) yr[i] = load_w(w, wdt, i) * (xr[i] * scale);
}

__global__ void gated_add_kernel(float *__restrict__ x, const float *__restrict__ gate, const float *__restrict__ y,
                                 int64_t n, int64_t D) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate ? gate[i % D] * y[i] : y[i];
        x[i] += g;
    }
}

__global__ void mul_kernel(float *__restrict__ x, const float *__restrict__ y, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] *= y[i];
}

enum unary_op { SILU, GELU_TANH, RELU };

__global__ void unary_kernel(float *__restrict__ x, int64_t n, int op) {
    const float k0 = 0.7978845608028654f, k1 = 0.044715f; /* sqrt(2/pi), as torch's tanh approximation */
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        if (op == SILU) {
            x[i] = v / (1.0f + expf(-v));
        } else if (op == GELU_TANH) {
            const float u = k0 * (v + k1 * v * v * v);
            x[i] = 0.5f * v * (1.0f + tanhf(u));
        } else {
            x[i] = v > 0.0f ? v : 0.0f; /* NaN -> 0, as the CPU op */
        }
    }
}

/* pairs (2k, 2k+1) of each head rotated by cos/sin[row][2k], [2k+1] (diffusers' apply_rotary_emb, real unbind -1) */
__global__ void rope_kernel(float *__restrict__ x, int64_t rows, int64_t ld, int heads, int hd,
                            const float *__restrict__ cos_tab, const float *__restrict__ sin_tab) {
    const int64_t half = hd / 2, n = rows * heads * half;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / (heads * half), h = (i / half) % heads, k = 2 * (i % half);
        float *v = x + r * ld + h * hd;
        const float *c = cos_tab + r * hd, *s = sin_tab + r * hd;
        const float re = v[k], im = v[k + 1];
        const float a = re * c[k], b = -im * s[k];
        const float e = im * c[k + 1], f = re * s[k + 1];
        v[k] = a + b;
        v[k + 1] = e + f;
    }
}

__global__ void embedding_kernel(const void *__restrict__ table, cvx_dtype dt, int64_t table_rows,
                                 const int64_t *__restrict__ ids, int64_t n, int64_t d, float *__restrict__ out,
                                 bad_index *rec) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n * d; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = i / d, id = ids[row];
        if (id < 0 || id >= table_rows) {
            report_bad(rec, BAD_EMBEDDING_ID, row, id, table_rows);
            out[i] = 0.0f;
        } else {
            out[i] = load_w(table, dt, id * d + i % d);
        }
    }
}

/* out[h, i, j] = table[buckets[j - i + S - 1], h] */
__global__ void position_bias_kernel(const void *__restrict__ table, cvx_dtype dt, int num_buckets,
                                     const int32_t *__restrict__ buckets, int H, int64_t S, float *__restrict__ out,
                                     bad_index *rec) {
    const int64_t n = (int64_t)H * S * S;
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += (int64_t)gridDim.x * blockDim.x) {
        const int64_t h = o / (S * S), i = (o / S) % S, j = o % S;
        const int64_t r = j - i + S - 1;
        const int32_t bucket = buckets[r];
        if (bucket < 0 || bucket >= num_buckets) {
            report_bad(rec, BAD_BUCKET, r, bucket, num_buckets);
            out[o] = 0.0f;
        } else {
            out[o] = load_w(table, dt, (int64_t)bucket * H + h);
        }
    }
}

/* out[(b, g, i, j), (c, kt, ky, kx)] = h[b, g pt + kt, c, i p + ky, j p + kx]: one thread per output element */
__global__ void gather_patches_kernel(const float *__restrict__ x, int64_t B, int64_t F, int64_t C, int64_t H,
                                      int64_t W, int p, int pt, float *__restrict__ out) {
    const int64_t Fp = F / pt, Hp = H / p, Wp = W / p, feat = C * pt * p * p, n = B * Fp * Hp * Wp * feat;
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += (int64_t)gridDim.x * blockDim.x) {
        const int64_t f = o % feat, tok = o / feat;
        const int64_t j = tok % Wp, i = (tok / Wp) % Hp, g = (tok / (Wp * Hp)) % Fp, b = tok / (Wp * Hp * Fp);
        const int64_t kx = f % p, ky = (f / p) % p, kt = (f / (p * p)) % pt, c = f / (p * p * pt);
        out[o] = x[(((b * F + g * pt + kt) * C + c) * H + i * p + ky) * W + j * p + kx];
    }
}

/* out[b, g pt + kt, c, i p + ky, j p + kx] = tok[(b, g, i, j), (c, kt, ky, kx)]: one thread per output element */
__global__ void unpatchify_kernel(const float *__restrict__ tok, int64_t B, int64_t Fp, int64_t Hp, int64_t Wp,
                                  int64_t C, int p, int pt, float *__restrict__ out) {
    const int64_t F = Fp * pt, H = Hp * p, W = Wp * p, feat = C * pt * p * p, n = B * F * C * H * W;
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += (int64_t)gridDim.x * blockDim.x) {
        const int64_t w = o % W, h = (o / W) % H, c = (o / (W * H)) % C, f = (o / (W * H * C)) % F;
        const int64_t b = o / (W * H * C * F);
        const int64_t g = f / pt, kt = f % pt, i = h / p, ky = h % p, j = w / p, kx = w % p;
        out[o] = tok[(((b * Fp + g) * Hp + i) * Wp + j) * feat + ((c * pt + kt) * p + ky) * p + kx];
    }
}

/* The f16 overflow guard of linear (T5's activations exceed f16's 65504): a row whose max |x| reaches 2^15 is
 * multiplied by 2^-e, e the smallest that brings its max below 2^15, before rounding to f16; exps[r] = e (0 for a
 * row that fits). A power of two is exact in f32, and the f16 rounding that follows loses only values below 2^-24
 * of the row's max, which f16 could not hold beside it anyway. One warp per row. */
__global__ void narrow_rows_f16_kernel(const float *__restrict__ x, __half *__restrict__ out, int *__restrict__ exps,
                                       int64_t rows, int64_t K) {
    const int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float *xr = x + r * K;
    float amax = 0.0f;
    for (int64_t i = lane; i < K; i += 32) amax = fmaxf(amax, fabsf(xr[i]));
    amax = warp_max(amax);
    /* the same e in every lane; 113 halvings bring even FLT_MAX below 2^15 (an inf or NaN row stays what it is) */
    int e = 0;
    float s = 1.0f;
    for (float a = amax; a >= 32768.0f && e < 113; a *= 0.5f) e++, s *= 0.5f;
    if (lane == 0) exps[r] = e;
    for (int64_t i = lane; i < K; i += 32) out[r * K + i] = __float2half_rn(xr[i] * s);
}

/* Undoes narrow_rows_f16_kernel's scaling on the GEMM's output rows: y = (y - bias) 2^e + bias (exact without a
 * bias; with one, the bias's f32 rounding is scaled too, negligible next to the row's f16 rounding unless the bias
 * exceeds the scaled product by 2^13). Rows with e = 0 are left as they are. One warp per row. */
__global__ void unscale_rows_kernel(float *__restrict__ y, const int *__restrict__ exps, const float *__restrict__ bias,
                                    int64_t rows, int64_t N) {
    const int64_t r = (int64_t)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows || exps[r] == 0) return;
    float s = 1.0f;
    for (int e = exps[r]; e > 0; e--) s *= 2.0f;
    float *yr = y + r * N;
    for (int64_t i = lane; i < N; i += 32) yr[i] = bias ? (yr[i] - bias[i]) * s + bias[i] : yr[i] * s;
}

/* CVX_CU for a function that frees its scratch at `fail` (status in `st`) */
#define CVX_TRY_CU(call)                                                                                               \
    do {                                                                                                               \
        const cudaError_t cvx_try_cu_err_ = (call);                                                                    \
        if (cvx_try_cu_err_ != cudaSuccess) {                                                                          \
            st = cvx_cuda_fail((int)cvx_try_cu_err_, #call, __FILE__, __LINE__);                                       \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

unsigned row_blocks(int64_t rows) { return (unsigned)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

cvx_status launch_widen(float *dst, const void *w, cvx_dtype dt, int64_t n) {
    if (n <= 0) return CVX_OK;
    if (dt == CVX_F32) {
        CVX_CU(cudaMemcpyAsync(dst, w, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, CVX_STREAM()));
        return CVX_OK;
    }
    return cvx_cuda_convert(dst, CVX_F32, w, dt, n);
}

/* ---- linear: the plan ---------------------------------------------------------------------------------------------
 * f32 weights                   one f32 GEMM of x by w, the bias fused (cvx_cuda_gemm); no scratch.
 * 16-bit weights, compute F32   the parity path: w widened to f32 in column blocks of at most
 *                               CVX_CUDA_LINEAR_BLOCK_BYTES, one f32 GEMM per block (as the CPU op, no x rounding).
 * 16-bit weights, compute 16    x rounded to the weight's type in row blocks of at most CVX_CUDA_LINEAR_BLOCK_BYTES
 *                               (f16: with the per-row overflow guard), one tensor-core GEMM per block with f32
 *                               output.
 * A 16-bit bias is widened to f32 once (cuBLASLt's bias for an f32 output is f32). All of it is one scratch
 * allocation: [bias f32 N | row exponents (f16 rows) | block]. */
struct linear_plan {
    int narrow_x;       /* 1: x is rounded to wdt row block by row block; 0: w is widened column block by block */
    int64_t block;      /* rows (narrow_x) or columns of w per block */
    size_t bias_bytes;  /* the widened bias (16-bit bias only) */
    size_t exp_bytes;   /* the per-row exponents of an f16 row block */
    size_t block_bytes; /* the narrowed x block or the widened w block */
};

size_t round64(size_t b) { return (b + 63) / 64 * 64; }

/* Elements of `esize` bytes per block of `width`: the count of rows (or columns) in CVX_CUDA_LINEAR_BLOCK_BYTES,
 * rounded down to a multiple of 16 (at least 16, at most `count`). */
int64_t block_count(int64_t width, size_t esize, int64_t count) {
    int64_t b = width > 0 ? CVX_CUDA_LINEAR_BLOCK_BYTES / (width * (int64_t)esize) : count;
    b = b < 16 ? 16 : b - b % 16;
    return b > count ? count : b;
}

linear_plan plan_linear(int64_t M, int64_t K, cvx_dtype wdt, int64_t N, int has_bias, cvx_dtype compute) {
    linear_plan p = {0, 0, 0, 0, 0};
    if (wdt == CVX_F32) return p;
    p.bias_bytes = has_bias ? round64((size_t)N * sizeof(float)) : 0;
    p.narrow_x = compute != CVX_F32;
    if (p.narrow_x) {
        p.block = block_count(K, 2, M);
        p.exp_bytes = wdt == CVX_F16 ? round64((size_t)p.block * sizeof(int)) : 0;
        p.block_bytes = (size_t)(p.block * K) * 2;
    } else {
        p.block = block_count(K, sizeof(float), N);
        p.block_bytes = (size_t)(p.block * K) * sizeof(float);
    }
    return p;
}

/* dst[n] (To) = src[n] (From), rounded to nearest even. */
template <typename From, typename To>
__global__ void convert_kernel(To *__restrict__ dst, const From *__restrict__ src, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = cvx_from_f32<To>(cvx_to_f32<From>(src[i]));
}

template <typename From> cvx_status convert_from(void *dst, cvx_dtype to, const From *src, int64_t n) {
    const unsigned blocks = cvx_cuda_blocks(n, 256);
    switch (to) {
    case CVX_F32: CVX_LAUNCH((convert_kernel<From, float>), blocks, 256, 0, (float *)dst, src, n); break;
    case CVX_F16: CVX_LAUNCH((convert_kernel<From, __half>), blocks, 256, 0, (__half *)dst, src, n); break;
    default: CVX_LAUNCH((convert_kernel<From, __nv_bfloat16>), blocks, 256, 0, (__nv_bfloat16 *)dst, src, n); break;
    }
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

} // namespace

extern "C" cvx_status cvx_cuda_convert(void *dst, cvx_dtype to, const void *src, cvx_dtype from, int64_t n) {
    switch (from) {
    case CVX_F32: return convert_from(dst, to, (const float *)src, n);
    case CVX_F16: return convert_from(dst, to, (const __half *)src, n);
    default: return convert_from(dst, to, (const __nv_bfloat16 *)src, n);
    }
}

/* ---- data movement ----------------------------------------------------------------------------------------------- */

/* Synchronous for the host side, as the CPU op: the host buffer is the caller's again when upload returns (the
 * transformer refills and frees its sinusoid buffer right after). From pageable memory cudaMemcpyAsync already waits
 * for the stream and stages the bytes before returning; from pinned memory it would read them later, so the wait is
 * explicit. The models upload only their inputs, once per forward, when the stream has little queued. */
extern "C" cvx_status cvx_cuda_upload(cvx_ctx *ctx, void *dst, const void *host, size_t bytes) {
    if (ctx->measuring || bytes == 0) return CVX_OK;
    CVX_CU(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, CVX_STREAM()));
    CVX_CU(cudaStreamSynchronize(CVX_STREAM()));
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_device_errors(void) {
    if (!bad_record) return CVX_OK;
    volatile bad_index *rec = bad_record;
    if (rec->count == 0) return CVX_OK;
    const long long pos = rec->pos, value = rec->value, bound = rec->bound;
    const int op = rec->op;
    rec->count = 0;
    if (op == BAD_EMBEDDING_ID)
        return CVX_FAIL(CVX_ERR_INVALID, "embedding: id %lld at position %lld is outside [0, %lld)", value, pos, bound);
    return CVX_FAIL(CVX_ERR_INVALID, "position bias: bucket %d is outside [0, %d)", (int)value, (int)bound);
}

extern "C" cvx_status cvx_cuda_download(cvx_ctx *ctx, void *host, const void *src, size_t bytes) {
    if (ctx->measuring) return CVX_OK;
    if (bytes) CVX_CU(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, CVX_STREAM()));
    CVX_CU(cudaStreamSynchronize(CVX_STREAM())); /* the host reads the bytes next */
    return cvx_cuda_device_errors();
}

extern "C" cvx_status cvx_cuda_copy(cvx_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (ctx->measuring || bytes == 0) return CVX_OK;
    CVX_CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, CVX_STREAM()));
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_fill(cvx_ctx *ctx, float *x, float value, int64_t n) {
    if (ctx->measuring || n <= 0) return CVX_OK;
    CVX_LAUNCH(fill_kernel, elem_blocks(n), THREADS, 0, x, value, n);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_widen(cvx_ctx *ctx, float *dst, const void *w, cvx_dtype dt, int64_t n) {
    CVX_CHECK(check_wdt("widen", dt));
    if (ctx->measuring) return CVX_OK;
    return launch_widen(dst, w, dt, n);
}

/* ---- linear ------------------------------------------------------------------------------------------------------ */

extern "C" size_t cvx_cuda_linear_scratch(int64_t M, int64_t K, cvx_dtype wdt, int64_t N, int has_bias,
                                          cvx_dtype compute) {
    if (M <= 0 || N <= 0) return 0;
    const linear_plan p = plan_linear(M, K, wdt, N, has_bias, compute);
    return p.bias_bytes + p.exp_bytes + p.block_bytes;
}

extern "C" cvx_status cvx_cuda_linear(cvx_ctx *ctx, const float *x, int64_t M, int64_t K, const void *w, cvx_dtype wdt,
                                      const void *bias, int64_t N, float *y) {
    if (M <= 0 || N <= 0) return CVX_OK;
    CVX_CHECK(check_wdt("linear", wdt));
    if (K < 0 || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
        return CVX_FAIL(CVX_ERR_INVALID, "linear: x [%lld, %lld] by a weight [%lld, %lld] (sizes must be in [0, %d])",
                        (long long)M, (long long)K, (long long)N, (long long)K, INT32_MAX);
    const linear_plan p = plan_linear(M, K, wdt, N, bias != NULL, ctx->compute);
    const size_t scratch_bytes = p.bias_bytes + p.exp_bytes + p.block_bytes;
    char *scratch = NULL;
    if (scratch_bytes) CVX_CHECK(cvx_ctx_alloc(ctx, scratch_bytes, (void **)&scratch));
    if (ctx->measuring) {
        cvx_ctx_free(ctx, scratch);
        return CVX_OK;
    }
    cvx_status st = CVX_OK;
    const float *bias32 = (const float *)bias;
    if (bias && wdt != CVX_F32) {
        CVX_TRY(launch_widen((float *)scratch, bias, wdt, N));
        bias32 = (const float *)scratch;
    }
    {
        int *exps = (int *)(scratch + p.bias_bytes);
        void *block = scratch + p.bias_bytes + p.exp_bytes;
        /* y = x w^T: A = x [M, K], B = w [N, K] transposed */
        cvx_gemm g = {};
        g.trans_b = 1;
        g.batch = 1;
        g.alpha = 1.0f;
        g.M = M, g.N = N, g.K = K;
        g.A = x, g.lda = K > 1 ? K : 1; /* cuBLAS wants ld >= 1 even for K = 0 */
        g.B = w, g.ldb = g.lda;
        g.ab_type = wdt;
        g.C = y, g.ldc = N;
        g.bias = bias32;
        if (wdt == CVX_F32) {
            CVX_TRY(cvx_cuda_gemm(&g));
        } else if (!p.narrow_x) {
            g.ab_type = CVX_F32;
            g.B = block;
            for (int64_t n0 = 0; n0 < N; n0 += p.block) {
                g.N = N - n0 < p.block ? N - n0 : p.block;
                g.C = y + n0;
                g.bias = bias32 ? bias32 + n0 : NULL;
                CVX_TRY(launch_widen((float *)block, (const char *)w + (size_t)(n0 * K) * 2, wdt, g.N * K));
                CVX_TRY(cvx_cuda_gemm(&g));
            }
        } else {
            g.A = block;
            for (int64_t m0 = 0; m0 < M; m0 += p.block) {
                g.M = M - m0 < p.block ? M - m0 : p.block;
                g.C = y + m0 * N;
                if (wdt == CVX_F16)
                    CVX_LAUNCH(narrow_rows_f16_kernel, row_blocks(g.M), THREADS, 0, x + m0 * K, (__half *)block, exps,
                               g.M, K);
                else
                    CVX_TRY(cvx_cuda_convert(block, wdt, x + m0 * K, CVX_F32, g.M * K));
                CVX_TRY_CU(cudaGetLastError());
                CVX_TRY(cvx_cuda_gemm(&g));
                if (wdt == CVX_F16) {
                    CVX_LAUNCH(unscale_rows_kernel, row_blocks(g.M), THREADS, 0, y + m0 * N, exps, bias32, g.M, N);
                    CVX_TRY_CU(cudaGetLastError());
                }
            }
        }
    }
fail:
    cvx_ctx_free(ctx, scratch); /* stream-ordered: the arena's next user runs after these kernels */
    return st;
}

/* ---- norms and element-wise ops ---------------------------------------------------------------------------------- */

extern "C" cvx_status cvx_cuda_layer_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t D, float eps,
                                          const void *gamma, const void *beta, cvx_dtype wdt, const float *scale,
                                          const float *shift, float *y) {
    if (gamma || beta) CVX_CHECK(check_wdt("layer_norm", wdt));
    if (scale && !shift) return CVX_FAIL(CVX_ERR_INVALID, "layer_norm: a modulation scale without its shift");
    if (ctx->measuring || rows <= 0 || D <= 0) return CVX_OK;
    CVX_LAUNCH(layer_norm_kernel, row_blocks(rows), THREADS, 0, x, y, rows, D, eps, gamma, beta, wdt, scale, shift);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_rms_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t d, float eps, const void *w,
                                        cvx_dtype wdt, float *y) {
    CVX_CHECK(check_wdt("rms_norm", wdt));
    if (ctx->measuring || rows <= 0 || d <= 0) return CVX_OK;
    CVX_LAUNCH(rms_norm_kernel, row_blocks(rows), THREADS, 0, x, y, rows, d, eps, w, wdt);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_gated_add(cvx_ctx *ctx, float *x, const float *gate, const float *y, int64_t rows,
                                         int64_t D) {
    if (ctx->measuring || rows <= 0 || D <= 0) return CVX_OK;
    CVX_LAUNCH(gated_add_kernel, elem_blocks(rows * D), THREADS, 0, x, gate, y, rows * D, D);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_mul(cvx_ctx *ctx, float *x, const float *y, int64_t n) {
    if (ctx->measuring || n <= 0) return CVX_OK;
    CVX_LAUNCH(mul_kernel, elem_blocks(n), THREADS, 0, x, y, n);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

static cvx_status launch_unary(cvx_ctx *ctx, float *x, int64_t n, int op) {
    if (ctx->measuring || n <= 0) return CVX_OK;
    CVX_LAUNCH(unary_kernel, elem_blocks(n), THREADS, 0, x, n, op);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_silu(cvx_ctx *ctx, float *x, int64_t n) { return launch_unary(ctx, x, n, SILU); }
extern "C" cvx_status cvx_cuda_gelu_tanh(cvx_ctx *ctx, float *x, int64_t n) {
    return launch_unary(ctx, x, n, GELU_TANH);
}
extern "C" cvx_status cvx_cuda_relu(cvx_ctx *ctx, float *x, int64_t n) { return launch_unary(ctx, x, n, RELU); }

extern "C" cvx_status cvx_cuda_rope(cvx_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads, int hd,
                                    const float *cos_tab, const float *sin_tab) {
    if (hd < 0 || hd % 2 != 0)
        return CVX_FAIL(CVX_ERR_INVALID, "rope: head width %d is odd or negative (pairs are rotated)", hd);
    if (heads < 0 || ld < (int64_t)heads * hd)
        return CVX_FAIL(CVX_ERR_INVALID, "rope: %d heads of %d do not fit in rows of %lld", heads, hd, (long long)ld);
    if (ctx->measuring || rows <= 0 || heads == 0 || hd == 0) return CVX_OK;
    CVX_LAUNCH(rope_kernel, elem_blocks(rows * heads * (hd / 2)), THREADS, 0, x, rows, ld, heads, hd, cos_tab, sin_tab);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

/* ---- lookups ----------------------------------------------------------------------------------------------------- */

extern "C" cvx_status cvx_cuda_embedding(cvx_ctx *ctx, const void *table, cvx_dtype dt, int64_t table_rows,
                                         const int64_t *ids, int64_t n, int64_t d, float *out) {
    CVX_CHECK(check_wdt("embedding", dt));
    if (ctx->measuring || n <= 0 || d <= 0) return CVX_OK;
    CVX_CHECK(bad_record_ready());
    CVX_LAUNCH(embedding_kernel, elem_blocks(n * d), THREADS, 0, table, dt, table_rows, ids, n, d, out, bad_record);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_position_bias(cvx_ctx *ctx, const void *table, cvx_dtype dt, int num_buckets,
                                             const int32_t *buckets, int H, int64_t S, float *out) {
    CVX_CHECK(check_wdt("position_bias", dt));
    if (ctx->measuring || H <= 0 || S <= 0) return CVX_OK;
    CVX_CHECK(bad_record_ready());
    CVX_LAUNCH(position_bias_kernel, elem_blocks((int64_t)H * S * S), THREADS, 0, table, dt, num_buckets, buckets, H, S,
               out, bad_record);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

/* ---- the patch embedding's gathers ------------------------------------------------------------------------------- */

extern "C" cvx_status cvx_cuda_gather_patches(cvx_ctx *ctx, const cvx_tensor *h, int p, int pt, float *out) {
    if (p < 1 || pt < 1) return CVX_FAIL(CVX_ERR_INVALID, "gather_patches: patch sizes %d, %d", p, pt);
    if (h->ndim != 5) return CVX_FAIL(CVX_ERR_INVALID, "gather_patches: latents of rank %d (5 expected)", h->ndim);
    const int64_t B = h->shape[0], F = h->shape[1], C = h->shape[2], H = h->shape[3], W = h->shape[4];
    const int64_t n = B * (F / pt) * (H / p) * (W / p) * C * pt * p * p;
    if (ctx->measuring || n <= 0) return CVX_OK;
    CVX_LAUNCH(gather_patches_kernel, elem_blocks(n), THREADS, 0, (const float *)h->data, B, F, C, H, W, p, pt, out);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_unpatchify(cvx_ctx *ctx, const float *tok, int64_t B, int64_t Fp, int64_t Hp, int64_t Wp,
                                          int64_t C, int p, int pt, float *out) {
    if (p < 1 || pt < 1) return CVX_FAIL(CVX_ERR_INVALID, "unpatchify: patch sizes %d, %d", p, pt);
    const int64_t n = B * Fp * Hp * Wp * C * pt * p * p;
    if (ctx->measuring || B <= 0 || Fp <= 0 || Hp <= 0 || Wp <= 0 || C <= 0) return CVX_OK;
    CVX_LAUNCH(unpatchify_kernel, elem_blocks(n), THREADS, 0, tok, B, Fp, Hp, Wp, C, p, pt, out);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}
