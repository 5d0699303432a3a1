/* Helpers shared by the kernels (csrc/decode.c, attend.c, fp32.c, int4.c, int8.c, layer.c, rows.c): a
 * row's largest magnitude, a bias added to rows, the MLP activations' numbers; with AVX-512, e^x, erf,
 * the activations 16 at a time and 16 horizontal sums. */
#ifndef ENCORE_SIMD_H
#define ENCORE_SIMD_H
#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifdef __AVX2__
/* The 8 lanes of v summed: floats (attention's dot products, int4's groups) and int32 (int8's dot products),
 * for the kernels' AVX2 paths (CPUs without AVX-512: AMD Zen 2 / 3). */
static inline float hsum8_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* 8 inputs x * inv rounded to nearest even and clamped to +-127, as int32: an activation's int8 level,
 * as `nearbyintf` and the clamp give it in plain C (csrc/int8.c and int4.c's row quantization). */
static inline __m256i round_clamp8(const float *x, __m256 inv) {
    const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), inv));
    return _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(-127)), _mm256_set1_epi32(127));
}

/* The largest of v's 8 lanes. */
static inline float hmax8_ps(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

static inline int32_t hsum8_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
}
#endif

/* max_k |x[k]| over K values (0 for none). */
static inline float absmax(const float *x, int64_t K) {
    float top = 0.f;
    int64_t k = 0;
#ifdef __AVX512F__
    __m512 vmax = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    top = _mm512_reduce_max_ps(vmax);
#elif defined(__AVX2__)
    __m256 vmax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
    top = hmax8_ps(vmax);
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

/* The MLP activations (`act`, as encore/model/fused.py's ACT numbers them): */
enum { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_GELU = 2, ACT_RELU = 3 };

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

/* erf(x), 16 at a time: Abramowitz and Stegun 7.1.26 (|error| <= 1.5e-7), odd in x. */
static inline __m512 erf16(__m512 x) {
    const __m512 a = _mm512_abs_ps(x);
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, _mm512_set1_ps(1.f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
    const __m512 y = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.f));  /* erf(|x|) */
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y),
                                               _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000))));
}

/* act(v), 16 at a time (`activate` in csrc/decode.c runs it over a row): SiLU v sigmoid(v); GELU-tanh
 * v sigmoid(C (v + 0.044715 v^3)); GELU 0.5 v (1 + erf(v / sqrt 2)); ReLU max(v, 0). */
static inline __m512 act16(__m512 v, int act) {
    if (act == ACT_RELU) return _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == ACT_GELU)
        return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v),
                             _mm512_add_ps(_mm512_set1_ps(1.f), erf16(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)))));
    __m512 z = v;
    if (act == ACT_GELU_TANH) /* sqrt(8 / pi) (v + 0.044715 v^3) */
        z = _mm512_mul_ps(_mm512_set1_ps(1.5957691216057308f),
                          _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), _mm512_mul_ps(v, v), v));
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), z)); /* e^-z (inf for z < -88: sigmoid 0) */
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), e));
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

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define ACT8 1 /* exp8 / erf8 / act8: exp16 / erf16 / act16 8 wide, for CPUs with AVX2 and no AVX-512 */

/* e^x, 8 at a time, exp16's polynomial; 2^n built in the exponent bits (no vscalefps): x below -87
 * counts as -87, above 88.3 as 88.3 (e^88.3 ~ 2e38, where exp16 gives up to inf). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 y = _mm256_set1_ps(1.f / 720);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.f / 120));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.f / 24));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.f / 6));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.f));
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(two_n));
}

/* erf(x), 8 at a time: erf16's. */
static inline __m256 erf8(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.f), a = _mm256_andnot_ps(sign, x);
    const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, _mm256_set1_ps(1.f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
    const __m256 y = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.f)); /* erf(|x|) */
    return _mm256_or_ps(y, _mm256_and_ps(x, sign));
}

/* act(v), 8 at a time: act16's. */
static inline __m256 act8(__m256 v, int act) {
    if (act == ACT_RELU) return _mm256_max_ps(v, _mm256_setzero_ps());
    if (act == ACT_GELU)
        return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v),
                             _mm256_add_ps(_mm256_set1_ps(1.f), erf8(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f)))));
    __m256 z = v;
    if (act == ACT_GELU_TANH)
        z = _mm256_mul_ps(_mm256_set1_ps(1.5957691216057308f),
                          _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v), _mm256_mul_ps(v, v), v));
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), z));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.f), e));
}
#endif
#endif
