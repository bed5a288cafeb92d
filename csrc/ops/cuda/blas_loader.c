/* cvx_cuda_blas_load (blas_api.h): cuBLAS and cuBLASLt loaded on the CUDA backend's first start instead of at import.
 * Built with the CUDA backend for GPUs only (the emulation brings its own functions). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#define CVX_BLAS_LOADER
#include "blas_api.h"

cvx_blas_api cvx_blas;

/* the spelled-out types of the two overloaded names are the C declarations' */
_Static_assert(__builtin_types_compatible_p(cvx_blas_gemm_ex_fn, __typeof__(&cublasGemmEx)), "cublasGemmEx type");
_Static_assert(__builtin_types_compatible_p(cvx_blas_gemm_strided_fn, __typeof__(&cublasGemmStridedBatchedEx)),
               "cublasGemmStridedBatchedEx type");

#define CVX_XSTR(x) CVX_STR(x)
#define CVX_STR(x) #x

#ifndef CVX_CUDA_LIB_DIR
#define CVX_CUDA_LIB_DIR ""
#endif

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[512]; /* empty: loaded */

/* RTLD_LOCAL: the libraries' symbols stay out of the process's global namespace (another copy loaded by torch, say,
 * keeps its own); RTLD_NOW: a missing dependency fails here, not at the first GEMM. */
static void *open_library(const char *stem) {
    char name[64], path[600];
    snprintf(name, sizeof(name), "lib%s.so.%d", stem, CUBLAS_VER_MAJOR);
    if (CVX_CUDA_LIB_DIR[0]) {
        snprintf(path, sizeof(path), "%s/%s", CVX_CUDA_LIB_DIR, name);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h) return h;
    }
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!h) snprintf(load_error, sizeof(load_error), "cannot load %s: %s", name, dlerror());
    return h;
}

static void load(void) {
    void *lt = open_library("cublasLt");
    if (!lt) return;
    void *blas = open_library("cublas");
    if (!blas) return;
    cvx_blas_api api;
    /* each name from the library that exports it (the cublasLt functions from libcublasLt, the rest from libcublas) */
#define CVX_BLAS_RESOLVE(name, type)                                                                                   \
    {                                                                                                                  \
        const char *sym_ = CVX_XSTR(name);                                                                             \
        void *f_ = dlsym(sym_[6] == 'L' && sym_[7] == 't' ? lt : blas, sym_);                                          \
        if (!f_) {                                                                                                     \
            snprintf(load_error, sizeof(load_error), "cuBLAS has no %s: %s", sym_, dlerror());                         \
            return;                                                                                                    \
        }                                                                                                              \
        *(void **)&api.p_##name = f_;                                                                                  \
    }
    CVX_BLAS_FUNCTIONS(CVX_BLAS_RESOLVE)
#undef CVX_BLAS_RESOLVE
    cvx_blas = api; /* published whole, once: pthread_once orders it before every caller's return */
}

cvx_status cvx_cuda_blas_load(void) {
    pthread_once(&load_once, load);
    if (load_error[0]) return CVX_FAIL(CVX_ERR_INTERNAL, "cuda: %s", load_error);
    return CVX_OK;
}
