/* Rows onto [-1, 1] for int8's activations: unit[m] = x[m] / peak[m], peak[m] = max(max_k |x[m, k]|, 1e-12),
 * what `Int8Linear` does before fbgemm's linear over a prefill's rows (encore/model/kernels.py
 * `unit_rows`): one read of each row for its peak and one more from cache for the division, instead of
 * the eager abs, amax and division (five passes over memory). Built and called as csrc/int4.c is.
 */
#include <math.h>
#include <stdint.h>

#include "simd.h"

void encore_unit_rows(const float *x, int64_t M, int64_t K, float *unit, float *peak) {
#pragma omp parallel for schedule(static) if (M * K >= (1 << 15))
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        float *out = unit + m * K;
        const float top = fmaxf(absmax(row, K), 1e-12f);
        peak[m] = top;
        int64_t k = 0;
#ifdef __AVX512F__
        const __m512 vtop = _mm512_set1_ps(top);
        for (; k + 16 <= K; k += 16) _mm512_storeu_ps(out + k, _mm512_div_ps(_mm512_loadu_ps(row + k), vtop));
#endif
        for (; k < K; k++) out[k] = row[k] / top;
    }
}
