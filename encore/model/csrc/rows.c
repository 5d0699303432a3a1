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

/* out[n, k] = bf16(w[n, k] * scale[n]): an int8 weight [N, K] with per-row scales, unpacked for oneDNN's bf16
 * GEMM over a prefill's rows (`Int8Linear`; csrc/int4.c's encore_int4_to_bf16 does the same for int4).
 * Returns 0, or -2 where the compiler did not target AVX512-BF16 (the caller keeps fbgemm's path). */
int encore_int8_to_bf16(const int8_t *w, const float *scale, int64_t N, int64_t K, uint16_t *out) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *row = w + n * K;
        uint16_t *o = out + n * K;
        const __m512 s = _mm512_set1_ps(scale[n]);
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
            const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k)))), s);
            _mm256_storeu_si256((__m256i *)(o + k), (__m256i)_mm512_cvtneps_pbh(v));
        }
        for (; k < K; k++) { /* round to nearest even, as _mm512_cvtneps_pbh does for finite values */
            union { float f; uint32_t u; } v = {.f = (float)row[k] * scale[n]};
            o[k] = (uint16_t)((v.u + 0x7FFF + ((v.u >> 16) & 1)) >> 16);
        }
    }
    return 0;
#else
    (void)w, (void)scale, (void)N, (void)K, (void)out;
    return -2;
#endif
}
