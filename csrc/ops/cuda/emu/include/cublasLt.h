/* CPU emulation of cublasLt.h: the handle and its lifetime; the matmul API is declared in cvx_emu_blas.h
 * (emu/blas.cpp). */
#ifndef CVX_EMU_CUBLASLT_H
#define CVX_EMU_CUBLASLT_H

#include "cublas_v2.h"

struct cublasLtContext {
    int unused;
};
typedef struct cublasLtContext *cublasLtHandle_t;

#ifdef __cplusplus
extern "C" {
#endif
cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle);
#ifdef __cplusplus
}
#endif

#include "cvx_emu_blas.h"

#endif
