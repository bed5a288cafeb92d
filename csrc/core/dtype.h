/* Element types and exact conversions between f32 and the 16-bit floats. */
#ifndef CVX_DTYPE_H
#define CVX_DTYPE_H

#include <stddef.h>
#include <stdint.h>

/* CVX_F64 is a storage type only (read from checkpoints and converted); computation uses the other three. */
typedef enum cvx_dtype { CVX_F32 = 0, CVX_F16 = 1, CVX_BF16 = 2, CVX_F64 = 3 } cvx_dtype;

size_t cvx_dtype_size(cvx_dtype dt);
const char *cvx_dtype_name(cvx_dtype dt); /* "float32", "float16", "bfloat16", "float64" */

/* IEEE binary16 <-> binary32. Widening is exact; narrowing rounds to nearest even (as torch's .to(float16)),
 * with overflow to inf and correct subnormals. */
float cvx_f16_to_f32(uint16_t h);
uint16_t cvx_f32_to_f16(float f);
/* bfloat16 <-> binary32: widening is exact; narrowing rounds to nearest even, NaN stays NaN. */
float cvx_bf16_to_f32(uint16_t h);
uint16_t cvx_f32_to_bf16(float f);

/* Converts n elements between any two dtypes; src may be unaligned (src and dst must not overlap unless
 * identical). */
void cvx_convert(void *dst, cvx_dtype dst_dt, const void *src, cvx_dtype src_dt, size_t n);

#endif
