/* Placeholder: the emulated cuBLAS/cuBLASLt GEMM API (cublasGemmEx, cublasLtMatmul, ...) is written by helper
 * "token" (declarations here, emulation in emu/blas.cpp). cublas_v2.h and cublasLt.h include it last. */
#ifndef CVX_EMU_BLAS_H
#define CVX_EMU_BLAS_H
#endif
