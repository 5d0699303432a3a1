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

/* y[M, N] = x[M, K] @ bf16(w * scale).T (+ bias) on AMX's bf16 tiles, fp32 out: what `encore_int8_to_bf16`
 * then oneDNN's bf16 GEMM compute for a prefill's rows, without writing the bf16 weight to memory (each
 * thread unpacks 32 weight rows at a time into a buffer that stays in its cache) nor rounding the output
 * to bf16. The weights are the tiles' first operand (16 rows x 32 columns, read in place from that
 * buffer), the activations the second, packed per call as [k/2][row][k%2] per 16-row block. */
#include "amx.h"
#if defined(ENCORE_AMX) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <stdlib.h>
#define ENCORE_AMX_BF16 1

/* Rows of x as bf16 in the tiles' layout: per block of 16 rows and 32 columns, 1 KiB of [k/2][row][k%2]
 * (a row's pair q at 32-bit slot q * 16); rows past M are zero. */
static void pack_rows_bf16(const float *x, int64_t M, int64_t K, uint16_t *xp) {
    const int64_t KB = K / 32, MP = (M + 15) / 16 * 16;
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < MP; m++) {
        uint32_t *slots = (uint32_t *)(xp + (m / 16) * KB * 512) + m % 16;
        if (m >= M) {
            for (int64_t q = 0; q < K / 2; q++) slots[q * 16] = 0;
            continue;
        }
        for (int64_t k = 0; k < K; k += 16) {
            uint32_t pairs[8];
            _mm256_storeu_si256((__m256i *)pairs, (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + m * K + k)));
            for (int j = 0; j < 8; j++) slots[(k / 2 + j) * 16] = pairs[j];
        }
    }
}

static void unpack_rows(const int8_t *w, const float *scale, int64_t n, int64_t rows, int64_t K, uint16_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        const __m512 s = _mm512_set1_ps(scale[n + r]);
        for (int64_t k = 0; k < K; k += 16) {
            const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + (n + r) * K + k)));
            _mm256_storeu_si256((__m256i *)(out + r * K + k), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_cvtepi32_ps(q), s)));
        }
    }
}
#endif

int encore_int8_linear_amx_bf16_available(void) {
#ifdef ENCORE_AMX_BF16
    return amx_permitted();
#else
    return 0;
#endif
}

/* Returns 0; -1 when out of memory; -2 where this CPU or build has no AMX bf16, or K % 32 or N % 16. */
int encore_int8_linear_amx_bf16(const float *x, int64_t M, int64_t K, int64_t N, const int8_t *w, const float *scale,
                                const float *bias, float *y) {
#ifdef ENCORE_AMX_BF16
    if (!amx_permitted() || K % 32 || N % 16) return -2;
    const int64_t KB = K / 32, MB = (M + 15) / 16, NB = N / 16;
    uint16_t *xp = aligned_alloc(64, (size_t)(MB * 16 * K * 2));
    if (!xp) return -1;
    pack_rows_bf16(x, M, K, xp);
    int failed = 0;
#pragma omp parallel
    {
        amx_tiles_on();
        uint16_t *wb = aligned_alloc(64, (size_t)(32 * K * 2)); /* this thread's 32 weight rows, bf16 */
        float c[4][256] __attribute__((aligned(64)));          /* [weight row][input row] per accumulator */
        if (!wb) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t nb = 0; nb < NB; nb += 2) {
            if (!wb) continue;
            const int two_n = nb + 1 < NB;
            unpack_rows(w, scale, nb * 16, 16 * (1 + two_n), K, wb);
            for (int64_t mb = 0; mb < MB; mb += 2) {
                const int two_m = mb + 1 < MB;
                const uint16_t *x0 = xp + mb * KB * 512, *x1 = x0 + KB * 512;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int64_t kb = 0; kb < KB; kb++) {
                    _tile_loadd(4, wb + kb * 32, K * 2);
                    _tile_loadd(6, x0 + kb * 512, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    if (two_m) {
                        _tile_loadd(7, x1 + kb * 512, 64);
                        _tile_dpbf16ps(1, 4, 7);
                    }
                    if (two_n) {
                        _tile_loadd(5, wb + 16 * K + kb * 32, K * 2);
                        _tile_dpbf16ps(2, 5, 6);
                        if (two_m) _tile_dpbf16ps(3, 5, 7);
                    }
                }
                _tile_stored(0, c[0], 64);
                _tile_stored(1, c[1], 64);
                _tile_stored(2, c[2], 64);
                _tile_stored(3, c[3], 64);
                for (int t = 0; t < 4; t++) {
                    const int64_t n0 = (nb + t / 2) * 16, m0 = (mb + t % 2) * 16;
                    if ((t / 2 && !two_n) || (t % 2 && !two_m)) continue;
                    for (int64_t j = 0; j < 16 && m0 + j < M; j++)
                        for (int64_t i = 0; i < 16; i++)
                            y[(m0 + j) * N + n0 + i] = c[t][i * 16 + j] + (bias ? bias[n0 + i] : 0.f);
                }
            }
        }
        free(wb);
        _tile_release();
    }
    free(xp);
    return failed ? -1 : 0;
#else
    (void)x, (void)M, (void)K, (void)N, (void)w, (void)scale, (void)bias, (void)y;
    return -2;
#endif
}
