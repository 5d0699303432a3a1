/* int4 weight-only matrix products for CPU inference: y = x @ W.T (+ bias), W in 4-bit groups.
 *
 * Weights: per output row n, K/64 chunks of 32 bytes; byte i of chunk c holds q[64c + i] in its low
 * nibble and q[64c + 32 + i] in its high one (q in 0..15, w ~= (q - 8) * scale[n, k / group]). One
 * fp32 scale per `group` inputs (a multiple of 64). Activations are quantized per row and per group to
 * int8 (symmetric, round to nearest) for the call, so the products are u8 x s8 dot products in int32
 * (AVX-512 VNNI `vpdpbusd`), then scaled in fp32. The `- 8` is folded in per group as -8 * sum(xq).
 *
 * Built at first use by encore/model/int4.py (cc -O3 -march=native -fopenmp) and called through
 * ctypes; the OpenMP runtime is the one torch already loaded (same soname), so the threads are
 * torch's. Without VNNI the same arithmetic runs in plain C (slow; correct).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512VNNI__
#include <immintrin.h>
#endif

int encore_int4_has_vnni(void) {
#ifdef __AVX512VNNI__
    return 1;
#else
    return 0;
#endif
}

/* Per row m and group j: qx = round(x / s), s = absmax / 127; corr[m, j] = -8 * sum(qx). */
static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t group, int8_t *qx, float *sx,
                          int32_t *corr) {
    const int64_t G = K / group;
#pragma omp parallel for schedule(static) if (M > 8)
    for (int64_t m = 0; m < M; m++) {
        for (int64_t j = 0; j < G; j++) {
            const float *xs = x + m * K + j * group;
            int8_t *qs = qx + m * K + j * group;
            float amax = 0.f;
            int32_t sum = 0;
#ifdef __AVX512VNNI__
            __m512 vmax = _mm512_setzero_ps();
            for (int64_t k = 0; k < group; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(xs + k)));
            amax = _mm512_reduce_max_ps(vmax);
            const float inv = amax > 0.f ? 127.f / amax : 0.f;
            const __m512 vinv = _mm512_set1_ps(inv);
            __m512i vsum = _mm512_setzero_si512();
            for (int64_t k = 0; k < group; k += 16) {
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xs + k), vinv));
                vsum = _mm512_add_epi32(vsum, q);
                _mm_storeu_si128((__m128i *)(qs + k), _mm512_cvtsepi32_epi8(q));
            }
            sum = _mm512_reduce_add_epi32(vsum);
#else
            for (int64_t k = 0; k < group; k++) amax = fmaxf(amax, fabsf(xs[k]));
            const float inv = amax > 0.f ? 127.f / amax : 0.f;
            for (int64_t k = 0; k < group; k++) {
                int32_t q = (int32_t)nearbyintf(xs[k] * inv);
                q = q > 127 ? 127 : (q < -127 ? -127 : q);
                qs[k] = (int8_t)q;
                sum += q;
            }
#endif
            sx[m * G + j] = amax / 127.f;
            corr[m * G + j] = -8 * sum;
        }
    }
}

#ifdef __AVX512VNNI__
/* Rows ahead to prefetch: one core's hardware prefetcher alone streams ~11 GB/s here; 16 rows ahead
 * doubles that (docs/engine.md). */
#define PREFETCH_ROWS 16

/* NR output rows x MR input rows, all K: NR * MR results. NR, MR are constants at each call. */
static inline __attribute__((always_inline)) void tile(const int NR, const int MR, int64_t n, int64_t m, int64_t K,
                                                       int64_t N, int64_t group, const uint8_t *w, const float *sw,
                                                       const int8_t *qx, const float *sx, const int32_t *corr,
                                                       float *y) {
    const int64_t G = K / group;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m512 acc[4][2];
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) acc[a][r] = _mm512_setzero_ps();
    for (int64_t j = 0; j < G; j++) {
        __m512i dot[4][2];
        for (int a = 0; a < NR; a++)
            for (int r = 0; r < MR; r++) dot[a][r] = _mm512_zextsi128_si512(_mm_cvtsi32_si128(corr[(m + r) * G + j]));
        for (int64_t k = j * group; k < (j + 1) * group; k += 64) {
            __m512i xv[2];
            for (int r = 0; r < MR; r++) xv[r] = _mm512_loadu_si512((const void *)(qx + (m + r) * K + k));
            for (int a = 0; a < NR; a++) {
                const uint8_t *row = w + (n + a) * (K / 2) + k / 2;
                _mm_prefetch((const char *)(row + PREFETCH_ROWS * (K / 2)), _MM_HINT_T0);  /* a hint: no fault past the end */
                __m256i v = _mm256_loadu_si256((const __m256i *)row);
                __m256i lo = _mm256_and_si256(v, low);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                for (int r = 0; r < MR; r++) dot[a][r] = _mm512_dpbusd_epi32(dot[a][r], wv, xv[r]);
            }
        }
        for (int a = 0; a < NR; a++) {
            const float s = sw[(n + a) * G + j];
            for (int r = 0; r < MR; r++)
                acc[a][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[a][r]), _mm512_set1_ps(s * sx[(m + r) * G + j]),
                                            acc[a][r]);
        }
    }
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) y[(m + r) * N + n + a] = _mm512_reduce_add_ps(acc[a][r]);
}
#endif

static void products(int64_t M, int64_t K, int64_t N, int64_t group, const uint8_t *w, const float *sw,
                     const int8_t *qx, const float *sx, const int32_t *corr, float *y) {
#pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
#ifdef __AVX512VNNI__
        int64_t m = 0;
        if (n0 + 4 <= N) {
            for (; m + 2 <= M; m += 2) tile(4, 2, n0, m, K, N, group, w, sw, qx, sx, corr, y);
            for (; m < M; m++) tile(4, 1, n0, m, K, N, group, w, sw, qx, sx, corr, y);
        } else {
            for (int64_t n = n0; n < N; n++)
                for (m = 0; m < M; m++) tile(1, 1, n, m, K, N, group, w, sw, qx, sx, corr, y);
        }
#else
        const int64_t G = K / group;
        for (int64_t n = n0; n < N && n < n0 + 4; n++) {
            const uint8_t *wr = w + n * (K / 2);
            for (int64_t m = 0; m < M; m++) {
                float total = 0.f;
                for (int64_t j = 0; j < G; j++) {
                    int32_t dot = corr[m * G + j];
                    for (int64_t k = j * group; k < (j + 1) * group; k += 64)
                        for (int i = 0; i < 32; i++) {
                            const uint8_t b = wr[k / 2 + i];
                            dot += (b & 0x0F) * qx[m * K + k + i] + (b >> 4) * qx[m * K + k + 32 + i];
                        }
                    total += (float)dot * sw[n * G + j] * sx[m * G + j];
                }
                y[m * N + n] = total;
            }
        }
#endif
    }
}

/* y[M, N] = x[M, K] @ W.T (+ bias[N]); returns 0, or -1 when out of memory. */
int encore_int4_linear(const float *x, int64_t M, int64_t K, int64_t N, const uint8_t *w, const float *sw,
                       int64_t group, const float *bias, float *y) {
    const int64_t G = K / group;
    int8_t *qx = aligned_alloc(64, (size_t)((M * K + 63) / 64 * 64));
    float *sx = malloc(sizeof(float) * (size_t)(M * G));
    int32_t *corr = malloc(sizeof(int32_t) * (size_t)(M * G));
    if (!qx || !sx || !corr) {
        free(qx), free(sx), free(corr);
        return -1;
    }
    quantize_rows(x, M, K, group, qx, sx, corr);
    products(M, K, N, group, w, sw, qx, sx, corr, y);
    if (bias)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) y[m * N + n] += bias[n];
    free(qx), free(sx), free(corr);
    return 0;
}
