/* Internals shared by the emulation's sources (runtime.cpp, fiber.cpp, cublas.cpp, blas.cpp); not for kernels. */
#ifndef CVX_EMU_INTERNAL_H
#define CVX_EMU_INTERNAL_H

#include <cuda_runtime.h>

#include <functional>

#include "kernel.h"

namespace cvx_emu {
/* Runs fn in stream order on the stream's worker thread; stream 0 (the legacy default stream) runs it now, in the
 * caller, after the blocking streams have drained. Returns cudaErrorInvalidResourceHandle for a destroyed or
 * unknown stream. */
cudaError_t enqueue(cudaStream_t stream, std::function<void()> fn);
/* An error of work that ran on a stream (a failed kernel): reported by the next synchronising call and by
 * cudaGetLastError (which clears it: the emulation's errors are not sticky for the process, CUDA's are). */
void set_async_error(cudaError_t e);
/* Records e as the calling thread's last error (cudaGetLastError) and returns it. */
cudaError_t fail(cudaError_t e);
/* The dynamic shared memory limit set with cudaFuncSetAttribute (48 KiB by default). */
size_t max_dynamic_smem(const void *func);
/* Runs every block of the launch on the calling thread (fiber.cpp); cudaSuccess or the kernel's error. */
cudaError_t execute(const kernel_launch &launch);
} // namespace cvx_emu

#endif
