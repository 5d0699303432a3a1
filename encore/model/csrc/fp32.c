/* fp32 matrix products for CPU decoding: y = x @ W.T, W fp32 [N, K] as the model holds it (no copy).
 *
 * What the fused decoder layer (csrc/layer.c) runs for an fp32 model's projections: the weights are
 * streamed once per call, each weight row shared by up to 4 input rows, threads over N; a decode step
 * then reads an fp32 layer at ~the memory bandwidth instead of ~1/3 of it through a dozen eager calls.
 * Included by csrc/layer.c; AVX-512, AVX2 + FMA 8 wide, or plain C (slow; correct).
 */
#include <stdint.h>

#include "simd.h"
#ifdef __AVX512F__

/* NR weight rows x MR input rows over all K (a tail of K % 16 through masked loads). */
static inline __attribute__((always_inline)) void tile32(const int NR, const int MR, int64_t n, int64_t m, int64_t K,
                                                         int64_t N, const float *w, const float *x, float *y) {
    __m512 acc[4][4];
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) acc[a][r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv[4];
        for (int r = 0; r < MR; r++) xv[r] = _mm512_loadu_ps(x + (m + r) * K + k);
        for (int a = 0; a < NR; a++) {
            const __m512 wv = _mm512_loadu_ps(w + (n + a) * K + k);
            for (int r = 0; r < MR; r++) acc[a][r] = _mm512_fmadd_ps(wv, xv[r], acc[a][r]);
        }
    }
    if (k < K) {
        const __mmask16 tail = (__mmask16)((1u << (K - k)) - 1);
        __m512 xv[4];
        for (int r = 0; r < MR; r++) xv[r] = _mm512_maskz_loadu_ps(tail, x + (m + r) * K + k);
        for (int a = 0; a < NR; a++) {
            const __m512 wv = _mm512_maskz_loadu_ps(tail, w + (n + a) * K + k);
            for (int r = 0; r < MR; r++) acc[a][r] = _mm512_fmadd_ps(wv, xv[r], acc[a][r]);
        }
    }
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) y[(m + r) * N + n + a] = _mm512_reduce_add_ps(acc[a][r]);
}
#define TILE32_MR 4
#elif defined(__AVX2__) && defined(__FMA__)
/* `tile32` 8 wide for CPUs with AVX2 and no AVX-512 (AMD Zen 2 / 3): up to 4 x 2 accumulators (16 ymm
 * registers; 4 x 4 would spill), a tail of K % 8 through masked loads. */
static inline __attribute__((always_inline)) void tile32(const int NR, const int MR, int64_t n, int64_t m, int64_t K,
                                                         int64_t N, const float *w, const float *x, float *y) {
    __m256 acc[4][2];
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) acc[a][r] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[2];
        for (int r = 0; r < MR; r++) xv[r] = _mm256_loadu_ps(x + (m + r) * K + k);
        for (int a = 0; a < NR; a++) {
            const __m256 wv = _mm256_loadu_ps(w + (n + a) * K + k);
            for (int r = 0; r < MR; r++) acc[a][r] = _mm256_fmadd_ps(wv, xv[r], acc[a][r]);
        }
    }
    if (k < K) {
        const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(K - k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 xv[2];
        for (int r = 0; r < MR; r++) xv[r] = _mm256_maskload_ps(x + (m + r) * K + k, tail);
        for (int a = 0; a < NR; a++) {
            const __m256 wv = _mm256_maskload_ps(w + (n + a) * K + k, tail);
            for (int r = 0; r < MR; r++) acc[a][r] = _mm256_fmadd_ps(wv, xv[r], acc[a][r]);
        }
    }
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) y[(m + r) * N + n + a] = hsum8_ps(acc[a][r]);
}
#define TILE32_MR 2
#endif

/* y[M, N] = x[M, K] @ w[N, K].T. */
static void products32(int64_t M, int64_t K, int64_t N, const float *w, const float *x, float *y) {
#pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
#ifdef TILE32_MR
        int64_t m = 0;
        if (n0 + 4 <= N) {
            for (; m + TILE32_MR <= M; m += TILE32_MR) tile32(4, TILE32_MR, n0, m, K, N, w, x, y);
            for (; m < M; m++) tile32(4, 1, n0, m, K, N, w, x, y);
        } else {
            for (int64_t n = n0; n < N; n++)
                for (m = 0; m < M; m++) tile32(1, 1, n, m, K, N, w, x, y);
        }
#else
        for (int64_t n = n0; n < N && n < n0 + 4; n++)
            for (int64_t m = 0; m < M; m++) {
                float s = 0.f;
                for (int64_t k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
                y[m * N + n] = s;
            }
#endif
    }
}

/* y[M, N] = x[M, K] @ w[N, K].T (+ bias[N]). */
void encore_fp32_linear(const float *x, int64_t M, int64_t K, int64_t N, const float *w, const float *bias, float *y) {
    products32(M, K, N, w, x, y);
    add_bias(y, M, N, bias);
}
