/* Attention for many queries at once (a prefill, an encoder) with bf16 products, on CPUs with AVX512-BF16
 * (AMD Zen 4+, Intel Cooper Lake / Sapphire Rapids+): Q K^T and P V as bf16 dot products accumulated
 * in fp32 (vdpbf16ps, twice fp32's FMA rate), the scores, mask, soft-cap and softmax in fp32. What
 * rounds to bf16: q * scale, k, v and the softmax numerators. Built and called as csrc/decode.c is
 * (encore/model/native.py, encore/model/fused.py `FusedAttend`); elsewhere `encore_attend_bf16`
 * returns -2 and the caller keeps SDPA.
 *
 * The same loops in fp32 (`encore_attend_fp32`, any AVX-512 CPU: FMA where vdpbf16ps was, fp32 K / V
 * panels and numerators): a prefill's attention where bf16 is not wanted or not there. Each query's
 * sums run in one order over its own keys whatever the batch around it: a key past the mask's last
 * (padding) adds exact zeros, so a prompt prefilled beside longer ones gets the bits it gets alone
 * (SDPA's flash kernel splits the keys by the padded length: 5e-6 apart, enough to turn a near-tie of
 * a greedy decode).
 *
 *   out[b, t, h] = softmax_s(cap(q[b, h, t] . k[b, g, s] * scale), mask[b, t, s]) @ v[b, g, s],  g = h / (H / KH)
 *
 * Each KV head's K and V are packed once into vdpbf16ps's layout (pairs of bf16 along the reduced
 * dimension); then each (row, head, block of query positions) is a task: its scores over the keys
 * its mask allows (the block's first to last allowed key: a causal or sliding mask skips the rest),
 * the softmax of each row, and the weighted values, as two small GEMMs through one 6 x 64 tile.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include "simd.h"

enum { MB = 48, MR = 6, NP = 64 }; /* query positions per task; rows per tile; columns per packed panel */
#ifdef __AVX512BF16__
#define BF16_BUILT 1
#else
#define BF16_BUILT 0
#endif

/* C[m, 0:16 NB] = sum_k A[m, k] . B[k, 0:16 NB] for m < mr: A, B hold bf16 pairs as 32-bit words (A: rows
 * lda words apart; B: a packed panel, rows NP words apart), K2 words to reduce; C fp32, rows ldc apart.
 * F32: the words are fp32 numbers, one product each (FMA). */
static inline __attribute__((always_inline)) void tile(const uint32_t *A, int64_t lda, const uint32_t *B, int64_t K2,
                                                       float *C, int64_t ldc, const int mr, const int NB, const int F32) {
    __m512 acc[MR][4];
    for (int m = 0; m < mr; m++)
        for (int i = 0; i < NB; i++) acc[m][i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K2; k++) {
        __m512 b[4];
        for (int i = 0; i < NB; i++) b[i] = _mm512_loadu_ps(B + k * NP + 16 * i);
        for (int m = 0; m < mr; m++) {
            if (F32) {
                const __m512 a = _mm512_set1_ps(((const float *)A)[m * lda + k]);
                for (int i = 0; i < NB; i++) acc[m][i] = _mm512_fmadd_ps(a, b[i], acc[m][i]);
            } else {
#if BF16_BUILT
                const __m512bh a = (__m512bh)_mm512_set1_epi32((int)A[m * lda + k]);
                for (int i = 0; i < NB; i++) acc[m][i] = _mm512_dpbf16_ps(acc[m][i], a, (__m512bh)b[i]);
#endif
            }
        }
    }
    for (int m = 0; m < mr; m++)
        for (int i = 0; i < NB; i++) _mm512_storeu_ps(C + m * ldc + 16 * i, acc[m][i]);
}

#define TILE_ROWS(NB)                                      \
    switch (mr) {                                          \
    case 6: tile(A, lda, B, K2, C, ldc, 6, NB, F32); break; \
    case 5: tile(A, lda, B, K2, C, ldc, 5, NB, F32); break; \
    case 4: tile(A, lda, B, K2, C, ldc, 4, NB, F32); break; \
    case 3: tile(A, lda, B, K2, C, ldc, 3, NB, F32); break; \
    case 2: tile(A, lda, B, K2, C, ldc, 2, NB, F32); break; \
    default: tile(A, lda, B, K2, C, ldc, 1, NB, F32); break; \
    }

/* C[M, N] = A[M, K2 pairs] B[K2 pairs, N] (N a multiple of 16), tile by tile; B packed in panels of NP
 * columns, `panel` words apart (a panel's rows NP words apart, so that a tile reads its B contiguously).
 * F32: K2 fp32 numbers, not pairs. */
static inline __attribute__((always_inline)) void gemm(const uint32_t *A0, int64_t lda, const uint32_t *B0,
                                                       int64_t panel, int64_t K2, float *C0, int64_t ldc, int64_t M,
                                                       int64_t N, const int F32) {
    for (int64_t n = 0; n < N; n += NP) {
        const int nb = N - n >= NP ? 4 : (int)((N - n) / 16);
        for (int64_t m = 0; m < M; m += MR) {
            const int mr = M - m >= MR ? MR : (int)(M - m);
            const uint32_t *A = A0 + m * lda, *B = B0 + n / NP * panel;
            float *C = C0 + m * ldc + n;
            if (nb == 4) {
                TILE_ROWS(4)
            } else if (nb == 3) {
                TILE_ROWS(3)
            } else if (nb == 2) {
                TILE_ROWS(2)
            } else {
                TILE_ROWS(1)
            }
        }
    }
}

#include "amx.h"
#ifdef ENCORE_AMX
/* `gemm` on AMX's bf16 tiles: C[M, N] for M rows rounded up to 16 (the caller's buffers hold MB rows; the
 * rows past M are scratch), N a multiple of 16, K2 a multiple of 16 pairs. 2 x 2 blocks of 16 x 16. */
static void gemm_amx(const uint32_t *A0, int64_t lda, const uint32_t *B0, int64_t panel, int64_t K2, float *C0,
                     int64_t ldc, int64_t M, int64_t N) {
    const int64_t MB16 = (M + 15) / 16, NB16 = N / 16;
    for (int64_t nb = 0; nb < NB16; nb += 2) {
        const int two_n = nb + 1 < NB16;
        const uint32_t *b0 = B0 + (nb * 16) / NP * panel + (nb * 16) % NP;
        const uint32_t *b1 = B0 + ((nb + 1) * 16) / NP * panel + ((nb + 1) * 16) % NP;
        for (int64_t mb = 0; mb < MB16; mb += 2) {
            const int two_m = mb + 1 < MB16;
            const uint32_t *a0 = A0 + mb * 16 * lda, *a1 = a0 + 16 * lda;
            AMX_TILES_2X2(_tile_dpbf16ps, K2 / 16, a0, a1, 16, lda * 4, b0, b1, 16 * NP, NP * 4, two_m, two_n, (void)0);
            float *c = C0 + mb * 16 * ldc + nb * 16;
            _tile_stored(0, c, ldc * 4);
            if (two_n) _tile_stored(1, c + 16, ldc * 4);
            if (two_m) _tile_stored(2, c + 16 * ldc, ldc * 4);
            if (two_m && two_n) _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
        }
    }
}
#endif

#if BF16_BUILT
/* 16 floats -> 16 bf16 (round to nearest even), zero-extended into 32-bit lanes. */
static inline __m512i bf16_lanes(__m512 x) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)); }

/* One KV head's K [S, Dh] (rows k_s apart) and V [S, Dh] (rows v_s apart) packed for `gemm`, zeros past S:
 * K^T's panels of NP keys, kp[s / NP][d / 2][s % NP] = (k[s, d], k[s, d + 1]), and V's panels of NP
 * columns, vp[d / NP][s / 2][d % NP] = (v[s, d], v[s + 1, d]), for s < S64. */
static void pack_kv(const float *k, int64_t k_s, const float *v, int64_t v_s, int64_t S, int64_t S64, int64_t Dh,
                    uint32_t *kp, uint32_t *vp) {
    const int64_t D2 = Dh / 2, S2 = S64 / 2;
    const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd_idx = _mm512_add_epi32(even_idx, _mm512_set1_epi32(1));
    for (int64_t s = 0; s < S64; s++) {
        uint32_t row[D2];
        if (s < S)
            for (int64_t d = 0; d < Dh; d += 32) { /* words (k[d], k[d + 1]): even elements low, odd high */
                const __m512i lo = bf16_lanes(_mm512_loadu_ps(k + s * k_s + d));
                const __m512i hi = bf16_lanes(_mm512_loadu_ps(k + s * k_s + d + 16));
                const __m512i even = _mm512_permutex2var_epi32(lo, even_idx, hi);
                const __m512i odd = _mm512_permutex2var_epi32(lo, odd_idx, hi);
                _mm512_storeu_si512(row + d / 2, _mm512_or_si512(even, _mm512_slli_epi32(odd, 16)));
            }
        else
            memset(row, 0, sizeof(row));
        uint32_t *panel = kp + s / NP * D2 * NP + s % NP;
        for (int64_t d2 = 0; d2 < D2; d2++) panel[d2 * NP] = row[d2];
    }
    for (int64_t s = 0; s < S64; s += 2)
        for (int64_t d = 0; d < Dh; d += 16) {
            const __m512i a = s < S ? bf16_lanes(_mm512_loadu_ps(v + s * v_s + d)) : _mm512_setzero_si512();
            const __m512i b = s + 1 < S ? bf16_lanes(_mm512_loadu_ps(v + (s + 1) * v_s + d)) : _mm512_setzero_si512();
            _mm512_storeu_si512(vp + d / NP * S2 * NP + s / 2 * NP + d % NP, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
        }
}
#endif

/* `pack_kv` in fp32: K^T's panels of NP keys, kp[s / NP][d][s % NP] = k[s, d], and V's panels of NP
 * columns, vp[d / NP][s][d % NP] = v[s, d], zeros past S, for s < S64. */
static void pack_kv_f32(const float *k, int64_t k_s, const float *v, int64_t v_s, int64_t S, int64_t S64, int64_t Dh,
                        float *kp, float *vp) {
    for (int64_t s = 0; s < S64; s++) {
        float *panel = kp + s / NP * Dh * NP + s % NP;
        for (int64_t d = 0; d < Dh; d++) panel[d * NP] = s < S ? k[s * k_s + d] : 0.f;
        for (int64_t d = 0; d < Dh; d += 16)
            _mm512_storeu_ps(vp + d / NP * S64 * NP + s * NP + d % NP,
                             s < S ? _mm512_loadu_ps(v + s * v_s + d) : _mm512_setzero_ps());
    }
}

/* The first and last allowed key of rows [t0, t1) of a mask (rows mask_t apart; NULL: causal if
 * `causal`, else all), as [*lo, *hi); *lo >= *hi when none is. */
static void key_range(const uint8_t *mask, int64_t mask_t, int64_t causal, int64_t t0, int64_t t1, int64_t S,
                      int64_t *lo, int64_t *hi) {
    if (!mask) {
        *lo = 0;
        *hi = causal ? (t1 < S ? t1 : S) : S;
        return;
    }
    int64_t first = S, last = -1;
    for (int64_t t = t0; t < t1; t++) {
        const uint8_t *row = mask + t * mask_t;
        int64_t s = 0;
        for (; s + 64 <= first; s += 64) {
            const __mmask64 m = _mm512_test_epi8_mask(_mm512_loadu_si512(row + s), _mm512_set1_epi8(-1));
            if (m) {
                s += __builtin_ctzll(m);
                break;
            }
        }
        for (; s < first && !row[s]; s++) {}
        if (s < first) first = s;
        int64_t e = S;
        for (; e - 64 >= last + 1 && e >= 64; e -= 64) {
            const __mmask64 m = _mm512_test_epi8_mask(_mm512_loadu_si512(row + e - 64), _mm512_set1_epi8(-1));
            if (m) {
                e -= __builtin_clzll(m);
                break;
            }
        }
        for (; e > last + 1 && !row[e - 1]; e--) {}
        if (e - 1 > last) last = e - 1;
        if (mask_t == 0) break; /* one row for all */
    }
    *lo = first, *hi = last + 1;
}

/* Softmax numerators of one row's scores sc[lo16, hi16) (fp32, scaled; plus `bias`'s row where given)
 * into p (same columns; bf16, or fp32 where F32), masked keys, keys outside [lo, hi) and keys past
 * `allowed_to` (causal) at zero; returns their sum (0: none). */
static inline __attribute__((always_inline)) float row_softmax(float *sc, int64_t lo16, int64_t hi16, int64_t lo,
                                                               int64_t hi, const uint8_t *mask, const float *bias,
                                                               int64_t allowed_to, float softcap, void *p,
                                                               const int F32) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t s = lo16; s < hi16; s += 16) {
        __m512 x = _mm512_loadu_ps(sc + s);
        if (softcap > 0.f) { /* cap tanh(x / cap) = cap (1 - 2 / (e^(2x / cap) + 1)) */
            const __m512 e = exp16(_mm512_mul_ps(x, _mm512_set1_ps(2.f / softcap)));
            const __m512 th = _mm512_sub_ps(_mm512_set1_ps(1.f), _mm512_div_ps(_mm512_set1_ps(2.f), _mm512_add_ps(e, _mm512_set1_ps(1.f))));
            x = _mm512_mul_ps(th, _mm512_set1_ps(softcap));
        }
        if (bias) { /* the row's floats up to its end only */
            const __mmask16 in = s + 16 <= hi ? (__mmask16)0xFFFF : (__mmask16)((1u << (hi - s)) - 1);
            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(in, bias + s));
        }
        const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)s), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        __mmask16 ok = _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32((int)lo)) & _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32((int)(hi < allowed_to ? hi : allowed_to)));
        if (mask) { /* the row's bytes up to its end only */
            const __mmask16 in = s + 16 <= hi ? (__mmask16)0xFFFF : (__mmask16)((1u << (hi - s)) - 1);
            ok &= _mm_test_epi8_mask(_mm_maskz_loadu_epi8(in, mask + s), _mm_set1_epi8(-1));
        }
        x = _mm512_mask_blend_ps(ok, _mm512_set1_ps(-INFINITY), x);
        _mm512_storeu_ps(sc + s, x);
        vmax = _mm512_max_ps(vmax, x);
    }
    const float top = _mm512_reduce_max_ps(vmax);
    if (top == -INFINITY) {
        if (F32)
            memset((float *)p + lo16, 0, sizeof(float) * (size_t)(hi16 - lo16));
        else
            memset((uint16_t *)p + lo16, 0, sizeof(uint16_t) * (size_t)(hi16 - lo16));
        return 0.f;
    }
    __m512 total = _mm512_setzero_ps();
    for (int64_t s = lo16; s < hi16; s += 16) {
        const __m512 x = _mm512_loadu_ps(sc + s);
        const __mmask16 ok = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
        const __m512 e = _mm512_maskz_mov_ps(ok, exp16(_mm512_sub_ps(x, _mm512_set1_ps(top))));
        total = _mm512_add_ps(total, e);
        if (F32)
            _mm512_storeu_ps((float *)p + s, e);
#if BF16_BUILT
        else
            _mm256_storeu_si256((__m256i *)((uint16_t *)p + s), (__m256i)_mm512_cvtneps_pbh(e));
#endif
    }
    return _mm512_reduce_add_ps(total);
}

/* One task: query positions [t0, t1) of head h in row b, over its KV head's packed K / V (`pack_kv`, or
 * `pack_kv_f32` where F32: then qw holds fp32 queries and p fp32 numerators). */
static inline __attribute__((always_inline)) void attend_block(
    const float *q, int64_t q_t, int64_t S, int64_t Dh, int64_t S64, const uint32_t *kp, const uint32_t *vp,
    const uint8_t *mask, int64_t mask_t, const float *bias, int64_t bias_t, int64_t causal, float scale, float softcap,
    int64_t t0, int64_t t1, float *out, int64_t out_t, uint32_t *qw, float *sc, void *p, float *o, int amx,
    const int F32) {
    const int64_t M = t1 - t0, D2 = F32 ? Dh : Dh / 2; /* words a query / key row: numbers, or bf16 pairs */
    int64_t lo, hi;
    key_range(mask, mask_t, causal, t0, t1, S, &lo, &hi);
    if (lo >= hi) {
        for (int64_t t = t0; t < t1; t++) memset(out + t * out_t, 0, sizeof(float) * (size_t)Dh);
        return;
    }
    const int64_t lo64 = lo & ~(int64_t)(NP - 1), hi16 = (hi + 15) & ~(int64_t)15; /* a panel's start; hi16 <= S64 */
    const __m512 s = _mm512_set1_ps(scale);
    for (int64_t m = 0; m < M; m++) /* q * scale (as bf16, in order: the words are the pairs (d, d + 1)) */
        for (int64_t d = 0; d < Dh; d += 32) {
            const float *x = q + (t0 + m) * q_t + d;
            if (F32) {
                _mm512_storeu_ps((float *)qw + m * Dh + d, _mm512_mul_ps(_mm512_loadu_ps(x), s));
                _mm512_storeu_ps((float *)qw + m * Dh + d + 16, _mm512_mul_ps(_mm512_loadu_ps(x + 16), s));
            } else {
#if BF16_BUILT
                const __m512bh pairs = _mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_loadu_ps(x + 16), s), _mm512_mul_ps(_mm512_loadu_ps(x), s));
                _mm512_storeu_si512(qw + m * D2 + d / 2, (__m512i)pairs);
#endif
            }
        }
#ifdef ENCORE_AMX
    if (amx && !F32)
        gemm_amx(qw, D2, kp + lo64 / NP * D2 * NP, D2 * NP, D2, sc + lo64, S64, M, hi16 - lo64);
    else
#endif
        gemm(qw, D2, kp + lo64 / NP * D2 * NP, D2 * NP, D2, sc + lo64, S64, M, hi16 - lo64, F32);
    float sums[MB];
    for (int64_t m = 0; m < M; m++) {
        const int64_t t = t0 + m;
        void *row = F32 ? (void *)((float *)p + m * S64) : (void *)((uint16_t *)p + m * S64);
        sums[m] = row_softmax(sc + m * S64, lo64, hi16, lo, hi, mask ? mask + t * mask_t : NULL,
                              bias ? bias + t * bias_t : NULL, causal && !mask ? t + 1 : S, softcap, row, F32);
    }
    if (F32) /* P V over the keys [lo64, hi16): p's rows are S64 numbers apart, V's panels S64 rows deep */
        gemm((const uint32_t *)p + lo64, S64, vp + lo64 * NP, S64 * NP, hi16 - lo64, o, Dh, M, Dh, 1);
    else { /* P V over the pairs of keys [lo64, hi16): p's rows are S64 / 2 words apart */
#ifdef ENCORE_AMX
        if (amx) { /* the tiles reduce 32 keys at a time: the numerators up to the next 32 are zero */
            const int64_t hi32 = lo64 + ((hi16 - lo64 + 31) & ~(int64_t)31);
            for (int64_t m = 0; m < M; m++) memset((uint16_t *)p + m * S64 + hi16, 0, sizeof(uint16_t) * (size_t)(hi32 - hi16));
            gemm_amx((const uint32_t *)p + lo64 / 2, S64 / 2, vp + lo64 / 2 * NP, S64 / 2 * NP, (hi32 - lo64) / 2, o, Dh, M, Dh);
        } else
#endif
            gemm((const uint32_t *)p + lo64 / 2, S64 / 2, vp + lo64 / 2 * NP, S64 / 2 * NP, (hi16 - lo64) / 2, o, Dh, M, Dh, 0);
    }
    for (int64_t m = 0; m < M; m++) {
        float *y = out + (t0 + m) * out_t;
        const __m512 inv = _mm512_set1_ps(sums[m] > 0.f ? 1.f / sums[m] : 0.f);
        for (int64_t d = 0; d < Dh; d += 16) _mm512_storeu_ps(y + d, _mm512_mul_ps(_mm512_loadu_ps(o + m * Dh + d), inv));
    }
}

/* `encore_attend_bf16` / `encore_attend_fp32` (F32), both built here. */
static int attend_all(const float *q, int64_t B, int64_t H, int64_t KH, int64_t T, int64_t S, int64_t Dh, int64_t q_b,
                      int64_t q_h, int64_t q_t, const float *k, int64_t k_b, int64_t k_h, int64_t k_s, const float *v,
                      int64_t v_b, int64_t v_h, int64_t v_s, const uint8_t *mask, int64_t mask_b, int64_t mask_t,
                      const float *bias, int64_t bias_b, int64_t bias_h, int64_t bias_t, int64_t causal, float scale,
                      float softcap, float *out, const int F32) {
    if (Dh % 32 || Dh > 512 || H % KH) return -2;
    const int64_t S64 = (S + NP - 1) & ~(int64_t)(NP - 1), G = H / KH, blocks = (T + MB - 1) / MB;
    const int64_t kv_words = (F32 ? Dh : Dh / 2) * S64, v_words = (Dh + NP - 1) / NP * (F32 ? S64 : S64 / 2) * NP;
    uint32_t *kp = malloc(sizeof(uint32_t) * (size_t)(B * KH * kv_words));
    uint32_t *vp = malloc(sizeof(uint32_t) * (size_t)(B * KH * v_words));
    if (!kp || !vp) {
        free(kp), free(vp);
        return -1;
    }
#pragma omp parallel for schedule(static)
    for (int64_t bg = 0; bg < B * KH; bg++) {
        const int64_t b = bg / KH, g = bg % KH;
        const float *kb = k + b * k_b + g * k_h, *vb = v + b * v_b + g * v_h;
        if (F32)
            pack_kv_f32(kb, k_s, vb, v_s, S, S64, Dh, (float *)(kp + bg * kv_words), (float *)(vp + bg * v_words));
#if BF16_BUILT
        else
            pack_kv(kb, k_s, vb, v_s, S, S64, Dh, kp + bg * kv_words, vp + bg * v_words);
#endif
    }
    int failed = 0;
#ifdef ENCORE_AMX
    const int amx = !F32 && amx_permitted();
#else
    const int amx = 0;
#endif
#pragma omp parallel
    {
#ifdef ENCORE_AMX
        if (amx) amx_tiles_on(); /* the tile configuration is per thread */
#endif
        uint32_t *qw = malloc(sizeof(uint32_t) * (size_t)(MB * Dh));
        float *sc = malloc(sizeof(float) * (size_t)(MB * S64)), *o = malloc(sizeof(float) * (size_t)(MB * Dh));
        void *p = malloc((F32 ? sizeof(float) : sizeof(uint16_t)) * (size_t)(MB * S64));
        const int ok = qw && sc && o && p;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < B * H * blocks; task++) {
            if (!ok) continue;
            const int64_t b = task / (H * blocks), h = task / blocks % H, blk = task % blocks, g = b * KH + h / G;
            const int64_t t0 = blk * MB, t1 = t0 + MB < T ? t0 + MB : T;
            attend_block(q + b * q_b + h * q_h, q_t, S, Dh, S64, kp + g * kv_words, vp + g * v_words,
                         mask ? mask + b * mask_b : NULL, mask_t, bias ? bias + b * bias_b + h * bias_h : NULL,
                         bias_t, causal, scale, softcap, t0, t1, out + b * T * H * Dh + h * Dh, H * Dh, qw, sc, p, o,
                         amx, F32);
        }
        free(qw), free(sc), free(o), free(p);
#ifdef ENCORE_AMX
        if (amx) _tile_release();
#endif
    }
    free(kp), free(vp);
    return failed ? -1 : 0;
}
#endif

/* 1 where this build runs encore_attend_bf16 (the compiler targeted AVX512-BF16), else 0. */
int encore_attend_bf16_built(void) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    return 1;
#else
    return 0;
#endif
}

/* 1 where this build runs encore_attend_fp32 (AVX-512), else 0. */
int encore_attend_fp32_built(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    return 1;
#else
    return 0;
#endif
}

#define ATTEND_ARGS                                                                                                  \
    const float *q, int64_t B, int64_t H, int64_t KH, int64_t T, int64_t S, int64_t Dh, int64_t q_b, int64_t q_h,     \
        int64_t q_t, const float *k, int64_t k_b, int64_t k_h, int64_t k_s, const float *v, int64_t v_b, int64_t v_h, \
        int64_t v_s, const uint8_t *mask, int64_t mask_b, int64_t mask_t, const float *bias, int64_t bias_b,         \
        int64_t bias_h, int64_t bias_t, int64_t causal, float scale, float softcap, float *out
#define ATTEND_CALL(F32)                                                                                            \
    attend_all(q, B, H, KH, T, S, Dh, q_b, q_h, q_t, k, k_b, k_h, k_s, v, v_b, v_h, v_s, mask, mask_b, mask_t, bias, \
               bias_b, bias_h, bias_t, causal, scale, softcap, out, F32)
#define ATTEND_UNUSED                                                                                               \
    (void)q, (void)B, (void)H, (void)KH, (void)T, (void)S, (void)Dh, (void)q_b, (void)q_h, (void)q_t, (void)k,       \
        (void)k_b, (void)k_h, (void)k_s, (void)v, (void)v_b, (void)v_h, (void)v_s, (void)mask, (void)mask_b,        \
        (void)mask_t, (void)bias, (void)bias_b, (void)bias_h, (void)bias_t, (void)causal, (void)scale,              \
        (void)softcap, (void)out

/* out [B, T, H * Dh] (contiguous) = attention of q [B, H, T, Dh] over k, v [B, KH, S, Dh] (strides in
 * elements; the last dimension contiguous), fp32 in and out. mask: bool [B | 1, T | 1, S] (batches
 * mask_b apart, rows mask_t apart, 0: broadcast), or NULL: every key, or key s <= t where `causal`.
 * bias: fp32 [B | 1, H | 1, T | 1, S] added to the scaled logits (batches, heads, rows bias_b, bias_h,
 * bias_t apart; -inf hides a key; NULL: none): T5's relative positions. A query with no key to attend
 * gets zeros. Returns 0; -1 out of memory; -2 not built for this CPU or shapes it does not take (Dh not
 * a multiple of 32): the caller runs SDPA. */
int encore_attend_bf16(ATTEND_ARGS) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    return ATTEND_CALL(0);
#else
    ATTEND_UNUSED;
    return -2;
#endif
}

/* `encore_attend_bf16`'s call with fp32 products (FMA) and fp32 numerators: any AVX-512 CPU. */
int encore_attend_fp32(ATTEND_ARGS) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    return ATTEND_CALL(1);
#else
    ATTEND_UNUSED;
    return -2;
#endif
}
