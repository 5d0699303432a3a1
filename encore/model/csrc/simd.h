/* Helpers shared by the kernels (csrc/decode.c, attend.c, fp32.c, int4.c, int8.c, layer.c, rows.c): a
 * row's largest magnitude, a bias added to rows; with AVX-512, e^x and 16 horizontal sums. */
#ifndef ENCORE_SIMD_H
#define ENCORE_SIMD_H
#include <math.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* max_k |x[k]| over K values (0 for none). */
static inline float absmax(const float *x, int64_t K) {
    float top = 0.f;
    int64_t k = 0;
#ifdef __AVX512F__
    __m512 vmax = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    top = _mm512_reduce_max_ps(vmax);
#endif
    for (; k < K; k++) top = fmaxf(top, fabsf(x[k]));
    return top;
}

/* y[m, n] += bias[n] over M rows of N (bias NULL: nothing). */
static inline void add_bias(float *y, int64_t M, int64_t N, const float *bias) {
    if (!bias) return;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) y[m * N + n] += bias[n];
}

#ifdef __AVX512F__
/* e^x, 16 at a time: 2^n * poly(r), |r| <= ln2 / 2 (~1e-7); x below -87 counts as -87, above ~88 gives
 * inf. Softmax's shifted logits (x <= 0), and the MLP's sigmoids (csrc/layer.c: either sign). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 y = _mm512_set1_ps(1.f / 720);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 120));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 24));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 6));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(y, n);
}

/* [sum(v[0]), ..., sum(v[15])]: 16 horizontal sums as one transposing tree of adds. */
static inline __m512 sum16(const __m512 *v) {
    __m512 r[8], s[4], t[2];
    for (int p = 0; p < 8; p++)
        r[p] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]), _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]));
    for (int p = 0; p < 4; p++) {
        const __m512d a = _mm512_castps_pd(r[2 * p]), b = _mm512_castps_pd(r[2 * p + 1]);
        s[p] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    for (int p = 0; p < 2; p++)
        t[p] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * p], s[2 * p + 1], 0x88),
                             _mm512_shuffle_f32x4(s[2 * p], s[2 * p + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x88), _mm512_shuffle_f32x4(t[0], t[1], 0xDD));
}
#endif
#endif
