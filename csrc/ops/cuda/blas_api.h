/* cuBLAS and cuBLASLt as the CUDA backend calls them: the libraries are loaded when the backend first starts
 * (cvx_cuda_init -> cvx_cuda_blas_load), not when the extension is imported. Mapping libcublasLt alone makes about
 * 150 MiB resident (its relocations and static initialisers), which a CUDA-built extension running on the CPU would
 * otherwise pay on every import. Each function the backend uses is a pointer in cvx_blas, typed from cuBLAS's own
 * declaration, and its name is a macro for the call through that pointer, so the sources read as plain cuBLAS.
 * The CPU emulation of CUDA (CVX_CUDA_EMU) defines the functions itself: there, this is the headers alone. */
#ifndef CVX_CUDA_BLAS_API_H
#define CVX_CUDA_BLAS_API_H

#include <cublasLt.h>
#include <cublas_v2.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "../../core/status.h" /* C declarations: C linkage from a .cu too */
#ifdef __cplusplus
}
#endif

#ifndef CVX_CUDA_EMU

/* C++ sees two overloads of each of these (cublas_api.h keeps wrappers taking the old cudaDataType compute type),
 * so their pointer types are spelled out: the C declarations' (blas_loader.c checks they are the same type) */
typedef cublasStatus_t (*cvx_blas_gemm_ex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                              const void *, const void *, cudaDataType, int, const void *, cudaDataType,
                                              int, const void *, void *, cudaDataType, int, cublasComputeType_t,
                                              cublasGemmAlgo_t);
typedef cublasStatus_t (*cvx_blas_gemm_strided_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                                   const void *, const void *, cudaDataType, int, long long int,
                                                   const void *, cudaDataType, int, long long int, const void *, void *,
                                                   cudaDataType, int, long long int, int, cublasComputeType_t,
                                                   cublasGemmAlgo_t);

/* every function the backend calls, by its exported name (cublas_v2.h maps cublasCreate to cublasCreate_v2, ...),
 * with its pointer type */
#define CVX_BLAS_FUNCTIONS(X)                                                                                          \
    X(cublasCreate_v2, __typeof__(&cublasCreate_v2))                                                                   \
    X(cublasSetStream_v2, __typeof__(&cublasSetStream_v2))                                                             \
    X(cublasSetWorkspace_v2, __typeof__(&cublasSetWorkspace_v2))                                                       \
    X(cublasGemmEx, cvx_blas_gemm_ex_fn)                                                                               \
    X(cublasGemmStridedBatchedEx, cvx_blas_gemm_strided_fn)                                                            \
    X(cublasGetStatusString, __typeof__(&cublasGetStatusString))                                                       \
    X(cublasLtCreate, __typeof__(&cublasLtCreate))                                                                     \
    X(cublasLtMatmul, __typeof__(&cublasLtMatmul))                                                                     \
    X(cublasLtMatmulAlgoGetHeuristic, __typeof__(&cublasLtMatmulAlgoGetHeuristic))                                     \
    X(cublasLtMatmulDescCreate, __typeof__(&cublasLtMatmulDescCreate))                                                 \
    X(cublasLtMatmulDescDestroy, __typeof__(&cublasLtMatmulDescDestroy))                                               \
    X(cublasLtMatmulDescSetAttribute, __typeof__(&cublasLtMatmulDescSetAttribute))                                     \
    X(cublasLtMatmulPreferenceCreate, __typeof__(&cublasLtMatmulPreferenceCreate))                                     \
    X(cublasLtMatmulPreferenceDestroy, __typeof__(&cublasLtMatmulPreferenceDestroy))                                   \
    X(cublasLtMatmulPreferenceSetAttribute, __typeof__(&cublasLtMatmulPreferenceSetAttribute))                         \
    X(cublasLtMatrixLayoutCreate, __typeof__(&cublasLtMatrixLayoutCreate))                                             \
    X(cublasLtMatrixLayoutDestroy, __typeof__(&cublasLtMatrixLayoutDestroy))

#define CVX_BLAS_FIELD(name, type) type p_##name; /* C++: a member may not reuse the name its type names */
typedef struct cvx_blas_api {
    CVX_BLAS_FUNCTIONS(CVX_BLAS_FIELD)
} cvx_blas_api;
#undef CVX_BLAS_FIELD

#ifdef __cplusplus
extern "C" {
#endif
/* Filled by cvx_cuda_blas_load; every pointer is NULL before (no cuBLAS call is made before cvx_cuda_init). */
extern cvx_blas_api cvx_blas;
#ifdef __cplusplus
}
#endif

/* from here on a call by a cuBLAS name goes through the loaded pointer (the p_ fields are other names);
 * blas_loader.c itself needs the plain names */
#ifndef CVX_BLAS_LOADER
#define cublasCreate_v2 (*cvx_blas.p_cublasCreate_v2)
#define cublasSetStream_v2 (*cvx_blas.p_cublasSetStream_v2)
#define cublasSetWorkspace_v2 (*cvx_blas.p_cublasSetWorkspace_v2)
#define cublasGemmEx (*cvx_blas.p_cublasGemmEx)
#define cublasGemmStridedBatchedEx (*cvx_blas.p_cublasGemmStridedBatchedEx)
#define cublasGetStatusString (*cvx_blas.p_cublasGetStatusString)
#define cublasLtCreate (*cvx_blas.p_cublasLtCreate)
#define cublasLtMatmul (*cvx_blas.p_cublasLtMatmul)
#define cublasLtMatmulAlgoGetHeuristic (*cvx_blas.p_cublasLtMatmulAlgoGetHeuristic)
#define cublasLtMatmulDescCreate (*cvx_blas.p_cublasLtMatmulDescCreate)
#define cublasLtMatmulDescDestroy (*cvx_blas.p_cublasLtMatmulDescDestroy)
#define cublasLtMatmulDescSetAttribute (*cvx_blas.p_cublasLtMatmulDescSetAttribute)
#define cublasLtMatmulPreferenceCreate (*cvx_blas.p_cublasLtMatmulPreferenceCreate)
#define cublasLtMatmulPreferenceDestroy (*cvx_blas.p_cublasLtMatmulPreferenceDestroy)
#define cublasLtMatmulPreferenceSetAttribute (*cvx_blas.p_cublasLtMatmulPreferenceSetAttribute)
#define cublasLtMatrixLayoutCreate (*cvx_blas.p_cublasLtMatrixLayoutCreate)
#define cublasLtMatrixLayoutDestroy (*cvx_blas.p_cublasLtMatrixLayoutDestroy)
#endif

#endif /* CVX_CUDA_EMU */

#ifdef CVX_CUDA_EMU
static inline cvx_status cvx_cuda_blas_load(void) { return CVX_OK; }
#else
#ifdef __cplusplus
extern "C" {
#endif
/* Loads libcublasLt and libcublas (the major version the backend was compiled against: from the toolkit's lib64
 * folder the build saw, else by the dynamic linker's search) and resolves every function, once per process; a
 * library or symbol that cannot be found is CVX_ERR_INTERNAL naming it (dlerror's text). The emulation: nothing to
 * load. */
cvx_status cvx_cuda_blas_load(void);
#ifdef __cplusplus
}
#endif
#endif

#endif
