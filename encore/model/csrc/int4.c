/* int4 weight-only matrix products for CPU inference: y = x @ W.T (+ bias), W in 4-bit groups.
 *
 * Weights: per output row n, K/64 chunks of 32 bytes; byte i of chunk c holds q[64c + i] in its low
 * nibble and q[64c + 32 + i] in its high one (q in 0..15). Per `group` inputs (32, or a multiple of
 * 64) an fp16 scale and offset (fp16: as llama.cpp stores them; 4 bytes a group of 32 instead of 8): w ~= q * scale[n, g] + min[n, g], where a symmetric weight (`mins`
 * NULL, llama.cpp's Q4_0 levels) has min = -8 * scale, an asymmetric one (Q4_1's) its own min.
 * Activations are quantized per row and per group to int8 (symmetric, round to nearest) for the call,
 * so the products are u8 x s8 dot products in int32 (AVX-512 VNNI `vpdpbusd`), then scaled in fp32:
 * y = sum_g sx[g] * scale[g] * dot_g + sum_g min[g] * sx[g] * sum(xq)_g.
 *
 * Built at first use by encore/model/int4.py (cc -O3 -march=native -fopenmp) and called through
 * ctypes; the OpenMP runtime is the one torch already loaded (same soname), so the threads are
 * torch's. Without AVX-512 VNNI, AVX2's vpmaddubsw takes the products (`encore_int4_simd`); without
 * either the same arithmetic runs in plain C (slow; correct).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "simd.h"
#if defined(__AVX512VNNI__) || defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if !defined(__AVX512VNNI__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define INT4_AVX2 1 /* the products through AVX2 (AMD Zen 2 / 3) */
#else
#define INT4_AVX2 0
#endif

int encore_int4_has_vnni(void) {
#ifdef __AVX512VNNI__
    return 1;
#else
    return 0;
#endif
}

/* Per row m and group j: qx = round(x / s), s = absmax / 127; u[m, j] = s * sum(qx), what the group's
 * weight offsets (min) multiply. */
static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t group, int8_t *qx, float *sx,
                          float *u) {
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
            amax = absmax(xs, group);
            const float inv = amax > 0.f ? 127.f / amax : 0.f;
            int64_t k = 0;
#if INT4_AVX2
            const __m256 vinv = _mm256_set1_ps(inv);
            __m256i vsum = _mm256_setzero_si256();
            for (; k + 8 <= group; k += 8) { /* as the loop below: round to nearest even, clamp to +-127 */
                const __m256i q = round_clamp8(xs + k, vinv);
                vsum = _mm256_add_epi32(vsum, q);
                const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
                _mm_storel_epi64((__m128i *)(qs + k), _mm_packs_epi16(w, w));
            }
            sum = hsum8_epi32(vsum);
#endif
            for (; k < group; k++) {
                int32_t q = (int32_t)nearbyintf(xs[k] * inv);
                q = q > 127 ? 127 : (q < -127 ? -127 : q);
                qs[k] = (int8_t)q;
                sum += q;
            }
#endif
            sx[m * G + j] = amax / 127.f;
            u[m * G + j] = amax / 127.f * (float)sum;
        }
    }
}

/* sum_g min[n, g] * u[m, g]: the weight offsets' share of y[m, n] (min = -8 * scale when symmetric). */
static inline float offsets(const half *sw, const half *mw, const float *u, int64_t n, int64_t m, int64_t G) {
    const half *o = (mw ? mw : sw) + n * G;
    const float *um = u + m * G;
    float total = 0.f;
    int64_t j = 0;
#ifdef __AVX512VNNI__
    __m512 t = _mm512_setzero_ps();
    for (; j + 16 <= G; j += 16)
        t = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(o + j))), _mm512_loadu_ps(um + j), t);
    if (j < G) { /* the last G % 16 groups, masked: no scalar tail (it cost as much as the products) */
        const __mmask16 rest = (__mmask16)((1u << (G - j)) - 1);
        const __m512 w = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(rest, o + j));
        t = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(rest, um + j), t);
        j = G;
    }
    total = _mm512_reduce_add_ps(t);
#elif INT4_AVX2
    __m256 t = _mm256_setzero_ps();
    for (; j + 8 <= G; j += 8) t = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(o + j))), _mm256_loadu_ps(um + j), t);
    total = hsum8_ps(t);
#endif
    for (; j < G; j++) total += h2f(o[j]) * um[j];
    return mw ? total : -8.f * total;
}

#ifdef __AVX512VNNI__
/* Rows ahead to prefetch: one core's hardware prefetcher alone streams ~11 GB/s here; 16 rows ahead
 * doubles that (docs/engine.md). */
#define PREFETCH_ROWS 16

static inline __attribute__((always_inline)) __m512i unpack(const uint8_t *row, const __m256i low) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)row);
    const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  /* inputs 0..31 | 32..63 of the chunk */
}

/* NR output rows x MR input rows, all K: NR * MR results. NR, MR are constants at each call. A group
 * of 64 or more spans whole chunks; a group of 32 is half a chunk (its dot products land in lanes 0-7
 * and 8-15 of one vector). */
static inline __attribute__((always_inline)) void tile(const int NR, const int MR, int64_t n, int64_t m, int64_t K,
                                                       int64_t N, int64_t group, const uint8_t *w, const half *sw,
                                                       const half *mw, const int8_t *qx, const float *sx,
                                                       const float *u, float *y) {
    const int64_t G = K / group;
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m512i pairs = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[4][2];
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) acc[a][r] = _mm512_setzero_ps();
    const int64_t step = group >= 64 ? group : 64; /* inputs per pass: one group, or two of 32 */
    for (int64_t k0 = 0; k0 < K; k0 += step) {
        __m512i dot[4][2];
        for (int a = 0; a < NR; a++)
            for (int r = 0; r < MR; r++) dot[a][r] = _mm512_setzero_si512();
        for (int64_t k = k0; k < k0 + step; k += 64) {
            __m512i xv[2];
            for (int r = 0; r < MR; r++) xv[r] = _mm512_loadu_si512((const void *)(qx + (m + r) * K + k));
            for (int a = 0; a < NR; a++) {
                const uint8_t *row = w + (n + a) * (K / 2) + k / 2;
                _mm_prefetch((const char *)(row + PREFETCH_ROWS * (K / 2)), _MM_HINT_T0);  /* a hint: no fault past the end */
                const __m512i wv = unpack(row, low);
                for (int r = 0; r < MR; r++) dot[a][r] = _mm512_dpbusd_epi32(dot[a][r], wv, xv[r]);
            }
        }
        const int64_t j = k0 / group; /* the pass's (first) group */
        if (group >= 64) {
            for (int a = 0; a < NR; a++)
                for (int r = 0; r < MR; r++)
                    acc[a][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[a][r]),
                                                _mm512_set1_ps(h2f(sw[(n + a) * G + j]) * sx[(m + r) * G + j]), acc[a][r]);
        } else { /* groups j, j + 1: lanes 0-7 and 8-15 */
            __m512 xs[2];
            for (int r = 0; r < MR; r++) xs[r] = _mm512_permutexvar_ps(pairs, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)(sx + (m + r) * G + j)))));
            for (int a = 0; a < NR; a++) {
                int32_t two; /* the two groups' fp16 scales */
                memcpy(&two, sw + (n + a) * G + j, 4);
                const __m512 ws = _mm512_permutexvar_ps(pairs, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(two))));
                for (int r = 0; r < MR; r++)
                    acc[a][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[a][r]), _mm512_mul_ps(ws, xs[r]), acc[a][r]);
            }
        }
    }
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) y[(m + r) * N + n + a] = _mm512_reduce_add_ps(acc[a][r]) + offsets(sw, mw, u, n + a, m + r, G);
}
#elif INT4_AVX2
#define PREFETCH_ROWS 16

/* [a, b, ., .] -> [a, a, b, b, a, a, b, b]: two groups' numbers in the lanes `_mm256_hadd_epi32` gives them. */
static inline __m256 pair_lanes(__m128 two) {
    const __m128 p = _mm_shuffle_ps(two, two, _MM_SHUFFLE(1, 1, 0, 0));
    return _mm256_insertf128_ps(_mm256_castps128_ps256(p), p, 1);
}

/* `tile` on AVX2 without AVX-512 (AMD Zen 2 / 3): a chunk's low nibbles (inputs 0..31) and high ones
 * (32..63) as u8 against the int8 inputs through vpmaddubsw (at most 2 * 15 * 127 a pair: no
 * saturation), vpmaddwd by ones into 8 int32 sums; a group's sums scaled in fp32 (a group of 32 is
 * half a chunk: the low and high halves are two groups). The same integers as the VNNI path; its
 * float sums in another order. */
static inline __attribute__((always_inline)) void tile(const int NR, const int MR, int64_t n, int64_t m, int64_t K,
                                                       int64_t N, int64_t group, const uint8_t *w, const half *sw,
                                                       const half *mw, const int8_t *qx, const float *sx,
                                                       const float *u, float *y) {
    const int64_t G = K / group;
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[4][2];
    __m256i dot[4][2];
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) acc[a][r] = _mm256_setzero_ps(), dot[a][r] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K; k += 64) {
        __m256i xlo[2], xhi[2];
        __m256 xs[2]; /* a group of 32: the rows' scales of groups k / 32, k / 32 + 1 as hadd lays them out */
        for (int r = 0; r < MR; r++) {
            xlo[r] = _mm256_loadu_si256((const __m256i *)(qx + (m + r) * K + k));
            xhi[r] = _mm256_loadu_si256((const __m256i *)(qx + (m + r) * K + k + 32));
            if (group == 32) xs[r] = pair_lanes(_mm_castpd_ps(_mm_load_sd((const double *)(sx + (m + r) * G + k / 32))));
        }
        for (int a = 0; a < NR; a++) {
            const uint8_t *row = w + (n + a) * (K / 2) + k / 2;
            _mm_prefetch((const char *)(row + PREFETCH_ROWS * (K / 2)), _MM_HINT_T0); /* a hint: no fault past the end */
            const __m256i v = _mm256_loadu_si256((const __m256i *)row);
            const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            __m256 ws = _mm256_setzero_ps();
            if (group == 32) {
                int32_t two; /* the two groups' fp16 scales */
                memcpy(&two, sw + (n + a) * G + k / 32, 4);
                ws = pair_lanes(_mm_cvtph_ps(_mm_cvtsi32_si128(two)));
            }
            for (int r = 0; r < MR; r++) {
                const __m256i dlo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xlo[r]), ones);
                const __m256i dhi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xhi[r]), ones);
                if (group == 32) /* lanes [lo lo hi hi | lo lo hi hi]: groups k / 32, k / 32 + 1 */
                    acc[a][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(dlo, dhi)),
                                                _mm256_mul_ps(ws, xs[r]), acc[a][r]);
                else
                    dot[a][r] = _mm256_add_epi32(dot[a][r], _mm256_add_epi32(dlo, dhi));
            }
        }
        if (group > 32 && (k + 64) % group == 0) { /* the end of group k / group */
            const int64_t j = k / group;
            for (int a = 0; a < NR; a++)
                for (int r = 0; r < MR; r++) {
                    const __m256 scale = _mm256_set1_ps(h2f(sw[(n + a) * G + j]) * sx[(m + r) * G + j]);
                    acc[a][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[a][r]), scale, acc[a][r]);
                    dot[a][r] = _mm256_setzero_si256();
                }
        }
    }
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) y[(m + r) * N + n + a] = hsum8_ps(acc[a][r]) + offsets(sw, mw, u, n + a, m + r, G);
}
#endif

static void products(int64_t M, int64_t K, int64_t N, int64_t group, const uint8_t *w, const half *sw,
                     const half *mw, const int8_t *qx, const float *sx, const float *u, float *y) {
#pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
#if defined(__AVX512VNNI__) || INT4_AVX2
        int64_t m = 0;
        if (n0 + 4 <= N) {
            for (; m + 2 <= M; m += 2) tile(4, 2, n0, m, K, N, group, w, sw, mw, qx, sx, u, y);
            for (; m < M; m++) tile(4, 1, n0, m, K, N, group, w, sw, mw, qx, sx, u, y);
        } else {
            for (int64_t n = n0; n < N; n++)
                for (m = 0; m < M; m++) tile(1, 1, n, m, K, N, group, w, sw, mw, qx, sx, u, y);
        }
#else
        const int64_t G = K / group;
        for (int64_t n = n0; n < N && n < n0 + 4; n++) {
            const uint8_t *wr = w + n * (K / 2);
            for (int64_t m = 0; m < M; m++) {
                float total = offsets(sw, mw, u, n, m, G);
                for (int64_t j = 0; j < G; j++) {
                    int32_t dot = 0;
                    for (int64_t k = j * group; k < (j + 1) * group; k++) {
                        const uint8_t b = wr[k / 64 * 32 + k % 32];
                        dot += (k % 64 < 32 ? b & 0x0F : b >> 4) * qx[m * K + k];
                    }
                    total += sx[m * G + j] * h2f(sw[n * G + j]) * (float)dot;
                }
                y[m * N + n] = total;
            }
        }
#endif
    }
}

/* The fp32 weight [N, K] the int4 weight stands for (q * scale + min; min = -8 * scale when `mw` is
 * NULL), for a prefill's many rows where the CPU has no bf16 products: oneDNN's fp32 GEMM over the rows
 * then beats the int4 products (their activations to int8 per group and the nibbles' unpacking in
 * every row block). A chunk's 32 bytes give inputs 0..31 (low nibbles) and 32..63 (high ones). */
void encore_int4_to_fp32(const uint8_t *w, const half *sw, const half *mw, int64_t N, int64_t K, int64_t group,
                         float *out) {
    const int64_t G = K / group;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < K / 64; c++) {
            const uint8_t *b = w + n * (K / 2) + c * 32;
            const int64_t j0 = n * G + 64 * c / group, j1 = n * G + (64 * c + 32) / group;
            const float s0 = h2f(sw[j0]), s1 = h2f(sw[j1]);
            const float m0 = mw ? h2f(mw[j0]) : -8.f * s0, m1 = mw ? h2f(mw[j1]) : -8.f * s1;
            float *o = out + n * K + 64 * c;
            for (int i = 0; i < 32; i++) {
                o[i] = (float)(b[i] & 0x0F) * s0 + m0;
                o[32 + i] = (float)(b[i] >> 4) * s1 + m1;
            }
        }
}

/* Which products run: 2 AVX-512 VNNI, 1 AVX2 (the same integers), 0 plain C (correct, slow). */
int encore_int4_simd(void) {
#if defined(__AVX512VNNI__)
    return 2;
#elif INT4_AVX2
    return 1;
#else
    return 0;
#endif
}

/* y[M, N] = x[M, K] @ W.T (+ bias[N]); `mw` NULL for symmetric weights; returns 0, or -1 when out of memory. */
int encore_int4_linear(const float *x, int64_t M, int64_t K, int64_t N, const uint8_t *w, const half *sw,
                       const half *mw, int64_t group, const float *bias, float *y) {
    const int64_t G = K / group;
    int8_t *qx = aligned_alloc(64, (size_t)((M * K + 63) / 64 * 64));
    float *sx = malloc(sizeof(float) * (size_t)(M * G));
    float *u = malloc(sizeof(float) * (size_t)(M * G));
    if (!qx || !sx || !u) {
        free(qx), free(sx), free(u);
        return -1;
    }
    quantize_rows(x, M, K, group, qx, sx, u);
    products(M, K, N, group, w, sw, mw, qx, sx, u, y);
    add_bias(y, M, N, bias);
    free(qx), free(sx), free(u);
    return 0;
}

/* The weight as bf16 [N, K] (out), w = q * scale + min rounded to nearest even: what a many-row call (a
 * prefill) multiplies through oneDNN's bf16 GEMM on CPUs with AVX512-BF16, 4-5x this file's products at
 * 512 rows (encore/model/int4.py). Returns 0, or -2 where the compiler did not target AVX512-BF16. */
int encore_int4_to_bf16(const uint8_t *w, const half *sw, const half *mw, int64_t N, int64_t K, int64_t group,
                        uint16_t *out) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    const int64_t G = K / group;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = w + n * (K / 2);
        uint16_t *o = out + n * K;
        for (int64_t c = 0; c < K / 64; c++) {
            const __m256i bytes = _mm256_loadu_si256((const __m256i *)(row + 32 * c));
            for (int half_ = 0; half_ < 2; half_++) { /* low nibbles: inputs 64c..64c+31; high: +32 */
                const int64_t k0 = 64 * c + 32 * half_, g = k0 / group;
                const float s = h2f(sw[n * G + g]), lo = mw ? h2f(mw[n * G + g]) : -8.f * s;
                const __m256i nib = half_ ? _mm256_and_si256(_mm256_srli_epi16(bytes, 4), _mm256_set1_epi8(0x0F))
                                          : _mm256_and_si256(bytes, _mm256_set1_epi8(0x0F));
                for (int q = 0; q < 2; q++) { /* 16 inputs at a time */
                    const __m128i part = q ? _mm256_extracti128_si256(nib, 1) : _mm256_castsi256_si128(nib);
                    const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part)), _mm512_set1_ps(s),
                                                     _mm512_set1_ps(lo));
                    _mm256_storeu_si256((__m256i *)(o + k0 + 16 * q), (__m256i)_mm512_cvtneps_pbh(v));
                }
            }
        }
    }
    return 0;
#else
    (void)w, (void)sw, (void)mw, (void)N, (void)K, (void)group, (void)out;
    return -2;
#endif
}
