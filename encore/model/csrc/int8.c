/* int8 weight-only matrix products for CPU decoding: y = x @ W.T (+ bias), W int8 per output row.
 *
 * Weights: w[n, k] in -127..127 with an fp32 scale per row (W ~= w * scale[n]), and the row's sum
 * sum_k w[n, k] (int32, made once). Activations are quantized per row to int8 for the call (symmetric,
 * round to nearest) and offset by 128 into u8, so the products are u8 x s8 dot products in int32
 * (AVX-512 VNNI `vpdpbusd`): y = sx[m] * scale[n] * (sum_k (qx + 128) w - 128 * sum_k w).
 *
 * What the fused decoder layer (csrc/layer.c) runs for an int8 model's projections: one call a layer
 * instead of fbgemm's ~12 us per call. Built and called as csrc/int4.c is; without VNNI the same
 * arithmetic runs in plain C (slow; correct).
 *
 * Many rows (a decode step of many requests or beams) on a CPU with AMX (Intel Xeon since Sapphire
 * Rapids): the same integers through the matrix unit's tiles (`products8_amx`), 4-6x the VNNI rate at 64
 * rows. The weights stay as they are: a weight tile is 16 of its rows x 64 bytes, read in place; the
 * activations are quantized into the tile layout the other operand needs (`pack_rows`). Same
 * quantization, same int32 sums: the same result as the VNNI path.
 *
 * Many rows without AMX (a prefill on an AVX-512 VNNI CPU: Ice Lake, Cascade Lake, a Xeon whose AMX the
 * hypervisor hides): the rows are packed the same way, offset into u8, and each vpdpbusd takes 16 of
 * them against 4 weights of one row broadcast (`products8_vnni`): 1.1-1.26 int8 TOP/s on 2 cores of
 * a 1.26 TOP/s VNNI peak in the best of 30 calls, 1.2-2x fbgemm's packed GEMM over a prefill's rows.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"
#if defined(__AVX512VNNI__) || defined(__AMX_INT8__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#define PREFETCH_ROWS_8 8 /* tile8 reads each weight row's bytes 8 rows ahead into L1 */
#include "amx.h"

#if defined(__AVX512VNNI__) || defined(ENCORE_AMX)
/* 16 inputs x * inv rounded to nearest, plus `offset`, saturated to bytes: u8 where offset is 128 (for
 * vpdpbusd), s8 where 0 (AMX's int8 tiles). */
static inline __m128i quantize16(const float *x, __m512 inv, int offset) {
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), inv)), _mm512_set1_epi32(offset));
    return offset ? _mm512_cvtusepi32_epi8(q) : _mm512_cvtsepi32_epi8(q);
}
#endif

/* Per row m: qx = round(x / s) + 128 (u8), s = absmax / 127 into sx[m]. */
static void quantize_rows_u8(const float *x, int64_t M, int64_t K, uint8_t *qx, float *sx) {
#pragma omp parallel for schedule(static) if (M > 8)
    for (int64_t m = 0; m < M; m++) {
        const float *xs = x + m * K;
        uint8_t *qs = qx + m * K;
        const float amax = absmax(xs, K);
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        int64_t k = 0;
#ifdef __AVX512VNNI__
        const __m512 vinv = _mm512_set1_ps(inv);
        for (; k + 16 <= K; k += 16) _mm_storeu_si128((__m128i *)(qs + k), quantize16(xs + k, vinv, 128));
#elif defined(__AVX2__)
        const __m256 vinv = _mm256_set1_ps(inv);
        for (; k + 8 <= K; k += 8) { /* as the loop below: round to nearest even, clamp to +-127, + 128 */
            const __m256i q = _mm256_add_epi32(round_clamp8(xs + k, vinv), _mm256_set1_epi32(128));
            const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64((__m128i *)(qs + k), _mm_packus_epi16(w, w));
        }
#endif
        for (; k < K; k++) {
            int32_t q = (int32_t)nearbyintf(xs[k] * inv);
            q = q > 127 ? 127 : (q < -127 ? -127 : q);
            qs[k] = (uint8_t)(q + 128);
        }
        sx[m] = amax / 127.f;
    }
}

#if defined(__AVX512VNNI__) || defined(ENCORE_AMX)
/* Rows of x quantized as quantize_rows_u8 does, plus `offset` (128: u8 for vpdpbusd; 0: s8 for AMX's
 * tiles), in 16-row blocks of [k / 4][row][k % 4] (a block is 16 * K bytes; each 4-byte slot holds one
 * row's 4 consecutive inputs): what a tile's second operand holds, and what one zmm of vpdpbusd takes
 * against 4 inputs of one weight row broadcast. Rows past M are zero; K a multiple of 16. xp holds
 * ceil(M / 16) * 16 * K bytes, sx as many floats. */
static void pack_rows(const float *x, int64_t M, int64_t K, int8_t *xp, float *sx, int offset) {
    const int64_t MP = (M + 15) / 16 * 16;
#pragma omp parallel for schedule(static) if (M > 8)
    for (int64_t m = 0; m < MP; m++) {
        int32_t *block = (int32_t *)(xp + (m / 16) * 16 * K) + m % 16; /* this row's 4-byte slots, 16 apart */
        if (m >= M) {
            for (int64_t q = 0; q < K / 4; q++) block[q * 16] = 0;
            sx[m] = 0.f;
            continue;
        }
        const float *xs = x + m * K;
        const float amax = absmax(xs, K);
        const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        for (int64_t k = 0; k < K; k += 16) {
            int32_t quads[4];
            _mm_storeu_si128((__m128i *)quads, quantize16(xs + k, inv, offset));
            for (int j = 0; j < 4; j++) block[(k / 4 + j) * 16] = quads[j]; /* slot (k/4) of the 16-row block */
        }
        sx[m] = amax / 127.f;
    }
}
#endif

#ifdef __AVX512VNNI__
#define TILE8_K 64 /* inputs per step of tile8 */
#define TILE8_MR 4 /* input rows a tile */
#define UNROLL _Pragma("GCC unroll 8")
/* acc += u8 x . s8 w in place: gcc 12's intrinsic copies each accumulator to a new register every step
 * (two moves per vpdpbusd, a third of the front end's width) */
#define DPBUSD(acc, x, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w))
#define VNNI_MIN_ROWS 16 /* fewer rows: tile8 (a packed block holds 16 rows) */
#ifndef VNNI_PACKED_BYTES
#define VNNI_PACKED_BYTES (768 << 10)
#endif


/* NR weight rows x MR input rows over all K (a multiple of 64). */
static inline __attribute__((always_inline)) void tile8(const int NR, const int MR, int64_t n, int64_t m, int64_t K,
                                                        int64_t N, const int8_t *w, const float *sw,
                                                        const int32_t *sums, const uint8_t *qx, const float *sx,
                                                        float *y) {
    __m512i dot[4][4];
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) dot[a][r] = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
        __m512i xv[4];
        for (int r = 0; r < MR; r++) xv[r] = _mm512_loadu_si512((const void *)(qx + (m + r) * K + k));
        for (int a = 0; a < NR; a++) {
            const int8_t *row = w + (n + a) * K + k;
            _mm_prefetch((const char *)(row + PREFETCH_ROWS_8 * K), _MM_HINT_T0); /* a hint: no fault past the end */
            const __m512i wv = _mm512_loadu_si512((const void *)row);
            for (int r = 0; r < MR; r++) dot[a][r] = _mm512_dpbusd_epi32(dot[a][r], xv[r], wv);
        }
    }
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++)
            y[(m + r) * N + n + a] =
                sx[m + r] * sw[n + a] * (float)(_mm512_reduce_add_epi32(dot[a][r]) - 128 * sums[n + a]);
}

/* Many rows without AMX: 8 weight rows x up to 3 blocks of 16 input rows (24 accumulators) over all K.
 * Each step broadcasts 4 inputs' weights of a row (its 4 bytes, read in place) against one zmm of 16
 * packed rows (`pack_rows`, offset 128): every lane is an output, so nothing is summed across lanes
 * (tile8 sums 16 lanes per output), and 11 loads feed 24 vpdpbusd. The products are the VNNI path's
 * (the same int32 sums, the same float steps); `bias` (or NULL) is added and `act` (-1: none) applied
 * here too, an ungated MLP's up projection then needing no pass of its own (0.97-0.98x a prefill). Written
 * through an 8 x 16 transpose to out (row mb * 16 of the outputs, column n; rows ldo apart); rows from
 * M on are not written. */
static inline __attribute__((always_inline)) void rows8x48(const int NR, const int MBR, int64_t n, int64_t mb,
                                                           int64_t M, int64_t K, const int8_t *w, const float *sw,
                                                           const int32_t *sums, const int8_t *xp, const float *sx,
                                                           const float *bias, int act, float *out, int64_t ldo) {
    __m512i acc[8][3];
    UNROLL for (int a = 0; a < NR; a++)
        UNROLL for (int j = 0; j < MBR; j++) acc[a][j] = _mm512_setzero_si512();
    const __m512i *xb = (const __m512i *)(xp + mb * 16 * K); /* block mb + j starts K / 4 zmm after mb + j - 1 */
    const int64_t Q = K / 4;
    for (int64_t q = 0; q < Q; q++) {
        /* the next 8 weight rows' line at this step, into L2: a short prompt's first pass over them
         * waits on memory otherwise (0.94-0.96x a 128-token prefill, 512 unchanged; a hint: no fault) */
        if (NR == 8 && (q & 15) == 0)
            UNROLL for (int a = 0; a < 8; a++) _mm_prefetch((const char *)(w + (n + 8 + a) * K + 4 * q), _MM_HINT_T1);
        __m512i xv[3];
        UNROLL for (int j = 0; j < MBR; j++) xv[j] = _mm512_load_si512(xb + j * Q + q);
        UNROLL for (int a = 0; a < NR; a++) {
            int32_t quad;
            __builtin_memcpy(&quad, w + (n + a) * K + 4 * q, 4);
            const __m512i wv = _mm512_set1_epi32(quad);
            UNROLL for (int j = 0; j < MBR; j++) DPBUSD(acc[a][j], xv[j], wv);
        }
    }
    int32_t sum[8][3][16] __attribute__((aligned(64))); /* the epilogue reads them back: gcc keeps acc in registers */
    UNROLL for (int a = 0; a < NR; a++)
        UNROLL for (int j = 0; j < MBR; j++) _mm512_store_si512(sum[a][j], acc[a][j]);
    UNROLL for (int j = 0; j < MBR; j++) {
        const int64_t m0 = (mb + j) * 16;
        float *o = out + j * 16 * ldo;
        const __m512 rows = _mm512_loadu_ps(sx + m0); /* sx holds the padded rows too */
        __m512 v[8];
        UNROLL for (int a = 0; a < NR; a++) {
            const __m512i d = _mm512_sub_epi32(_mm512_load_si512(sum[a][j]), _mm512_set1_epi32(128 * sums[n + a]));
            v[a] = _mm512_mul_ps(_mm512_mul_ps(rows, _mm512_set1_ps(sw[n + a])), _mm512_cvtepi32_ps(d));
            if (bias) v[a] = _mm512_add_ps(v[a], _mm512_set1_ps(bias[n + a]));
            if (act >= 0) v[a] = act16(v[a], act);
        }
        if (NR == 8 && m0 + 16 <= M) { /* [8 outputs][16 rows] -> 16 rows of 8 outputs */
            const __m512 t0 = _mm512_unpacklo_ps(v[0], v[1]), t1 = _mm512_unpackhi_ps(v[0], v[1]);
            const __m512 t2 = _mm512_unpacklo_ps(v[2], v[3]), t3 = _mm512_unpackhi_ps(v[2], v[3]);
            const __m512 t4 = _mm512_unpacklo_ps(v[4], v[5]), t5 = _mm512_unpackhi_ps(v[4], v[5]);
            const __m512 t6 = _mm512_unpacklo_ps(v[6], v[7]), t7 = _mm512_unpackhi_ps(v[6], v[7]);
            const __m512 lo[4] = {_mm512_shuffle_ps(t0, t2, 0x44), _mm512_shuffle_ps(t0, t2, 0xEE),
                                  _mm512_shuffle_ps(t1, t3, 0x44), _mm512_shuffle_ps(t1, t3, 0xEE)};
            const __m512 hi[4] = {_mm512_shuffle_ps(t4, t6, 0x44), _mm512_shuffle_ps(t4, t6, 0xEE),
                                  _mm512_shuffle_ps(t5, t7, 0x44), _mm512_shuffle_ps(t5, t7, 0xEE)};
            /* lo[r] lane L: outputs 0-3 of row 4L + r; hi[r] lane L: outputs 4-7 */
            UNROLL for (int r = 0; r < 4; r++)
                UNROLL for (int L = 0; L < 4; L++) {
                    _mm_storeu_ps(o + (4 * L + r) * ldo, _mm512_extractf32x4_ps(lo[r], L));
                    _mm_storeu_ps(o + (4 * L + r) * ldo + 4, _mm512_extractf32x4_ps(hi[r], L));
                }
        } else {
            float t[8][16];
            for (int a = 0; a < NR; a++) _mm512_storeu_ps(t[a], v[a]);
            for (int64_t r = 0; r < 16 && m0 + r < M; r++)
                for (int a = 0; a < NR; a++) o[r * ldo + a] = t[a][r];
        }
    }
}

/* 8 weight rows from n against row blocks [mb, end), 3 at a time, written to out (row mb * 16, rows ldo
 * apart). */
static inline void rows8(int64_t n, int64_t mb, int64_t end, int64_t M, int64_t K, const int8_t *w, const float *sw,
                         const int32_t *sums, const int8_t *xp, const float *sx, const float *bias, int act, float *out,
                         int64_t ldo) {
    for (int64_t b = mb; b < end; b += 3, out += 48 * ldo) {
        if (end - b >= 3) rows8x48(8, 3, n, b, M, K, w, sw, sums, xp, sx, bias, act, out, ldo);
        else if (end - b == 2) rows8x48(8, 2, n, b, M, K, w, sw, sums, xp, sx, bias, act, out, ldo);
        else rows8x48(8, 1, n, b, M, K, w, sw, sums, xp, sx, bias, act, out, ldo);
    }
}

/* y[M, N] from rows packed by pack_rows (offset 128). Threads take contiguous runs of 8 weight rows, so
 * each reads its part of the weights once per pass, and the 8 rows stay in L1 over the pass's row blocks;
 * a pass covers as many row blocks as keep their packed rows in L2 (K = 4096: 192 rows). */
static void products8_vnni(int64_t M, int64_t K, int64_t N, const int8_t *w, const float *sw, const int32_t *sums,
                           const int8_t *xp, const float *sx, const float *bias, int act, float *y) {
    const int64_t MB = (M + 15) / 16, N8 = N / 8 * 8;
    const int64_t fit = VNNI_PACKED_BYTES / (16 * K) / 3 * 3, chunk = fit > 3 ? fit : 3;
#pragma omp parallel
    for (int64_t c0 = 0; c0 < MB; c0 += chunk) {
        const int64_t c1 = c0 + chunk < MB ? c0 + chunk : MB;
#pragma omp for schedule(static) nowait
        for (int64_t n = 0; n < N8; n += 8) rows8(n, c0, c1, M, K, w, sw, sums, xp, sx, bias, act, y + c0 * 16 * N + n, N);
#pragma omp single nowait
        for (int64_t n = N8; n < N; n++) /* the last N % 8 weight rows */
            for (int64_t b = c0; b < c1; b++)
                rows8x48(1, 1, n, b, M, K, w, sw, sums, xp, sx, bias, act, y + b * 16 * N + n, N);
    }
}
#endif

#ifdef ENCORE_AMX
#define AMX_MIN_ROWS 16 /* fewer rows: the VNNI path (a tile holds 16 rows; padding costs more than it gives) */

static int amx_rows(int64_t M, int64_t K, int64_t N) {
    return M >= AMX_MIN_ROWS && K % 64 == 0 && N % 16 == 0 && amx_permitted();
}

/* y[M, N] = sx[m] * sw[n] * (xp . w[n]): 32 weight rows x 32 input rows per pass, 4 accumulator tiles. */
static void products8_amx(int64_t M, int64_t K, int64_t N, const int8_t *w, const float *sw, const int8_t *xp,
                          const float *sx, float *y) {
    const int64_t KB = K / 64, MB = (M + 15) / 16, NB = N / 16;
#pragma omp parallel
    {
        amx_tiles_on();
        int32_t c[4][256] __attribute__((aligned(64))); /* [weight row][input row] per accumulator */
#pragma omp for schedule(static)
        for (int64_t nb = 0; nb < NB; nb += 2) {
            const int two_n = nb + 1 < NB;
            const int8_t *w0 = w + nb * 16 * K, *w1 = w0 + 16 * K;
            for (int64_t mb = 0; mb < MB; mb += 2) {
                const int two_m = mb + 1 < MB;
                const int8_t *x0 = xp + mb * KB * 1024, *x1 = x0 + KB * 1024;
                AMX_TILES_2X2(_tile_dpbssd, KB, w0, w1, 64, K, x0, x1, 1024, 64, two_n, two_m, (void)0);
                _tile_stored(0, c[0], 64);
                _tile_stored(1, c[1], 64);
                _tile_stored(2, c[2], 64);
                _tile_stored(3, c[3], 64);
                for (int t = 0; t < 4; t++) {
                    const int64_t n0 = (nb + t / 2) * 16, m0 = (mb + t % 2) * 16;
                    if ((t / 2 && !two_n) || (t % 2 && !two_m)) continue;
                    for (int64_t j = 0; j < 16 && m0 + j < M; j++)
                        for (int64_t i = 0; i < 16; i++)
                            y[(m0 + j) * N + n0 + i] = sx[m0 + j] * sw[n0 + i] * (float)c[t][i * 16 + j];
                }
            }
        }
        _tile_release();
    }
}
#endif

#if defined(__AVX2__) && !defined(__AVX512VNNI__)
#define TILE8_K 32
#define TILE8_MR 2 /* input rows a tile: 4 x 2 accumulators, 2 rows and their magnitudes (16 ymm registers) */

/* tile8 on AVX2 without VNNI (AMD Zen 2 / 3, Intel cores before AVX-512 or AVX-VNNI): NR weight rows x MR
 * input rows over all K (a multiple of 32). The u8 rows back to s8 (xor 0x80 undoes the +128); then
 * vpmaddubsw(|x|, sign(w, x)) gives x * w in 16 pairs summed in int16 (|x| made once for NR rows), at
 * most 2 * 127 * 127 = 32258 (no saturation: fbgemm's u8 x s8 pairs can saturate, so it quantizes
 * activations to 7 bits here), and vpmaddwd by ones 8 int32 sums. sum_k x w is VNNI's sum_k (x + 128) w - 128 sum_k w exactly: the same
 * outputs, bit for bit. */
static inline __attribute__((always_inline)) void tile8(const int NR, const int MR, int64_t n, int64_t m, int64_t K,
                                                        int64_t N, const int8_t *w, const float *sw,
                                                        const int32_t *sums, const uint8_t *qx, const float *sx,
                                                        float *y) {
    (void)sums;
    __m256i dot[4][TILE8_MR];
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) dot[a][r] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K; k += 32) {
        __m256i xv[TILE8_MR], ax[TILE8_MR];
        for (int r = 0; r < MR; r++) {
            xv[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(qx + (m + r) * K + k)), flip);
            ax[r] = _mm256_abs_epi8(xv[r]); /* |x| once for the NR weight rows */
        }
        for (int a = 0; a < NR; a++) {
            const int8_t *row = w + (n + a) * K + k;
            _mm_prefetch((const char *)(row + PREFETCH_ROWS_8 * K), _MM_HINT_T0); /* a hint: no fault past the end */
            const __m256i wv = _mm256_loadu_si256((const __m256i *)row);
            for (int r = 0; r < MR; r++) {
                const __m256i pairs = _mm256_maddubs_epi16(ax[r], _mm256_sign_epi8(wv, xv[r]));
                dot[a][r] = _mm256_add_epi32(dot[a][r], _mm256_madd_epi16(pairs, ones));
            }
        }
    }
    for (int a = 0; a < NR; a++)
        for (int r = 0; r < MR; r++) y[(m + r) * N + n + a] = sx[m + r] * sw[n + a] * (float)hsum8_epi32(dot[a][r]);
}
#endif

static void products8(int64_t M, int64_t K, int64_t N, const int8_t *w, const float *sw, const int32_t *sums,
                      const uint8_t *qx, const float *sx, float *y) {
#pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
#ifdef TILE8_K
        if (K % TILE8_K == 0) {
            int64_t m = 0;
            if (n0 + 4 <= N) {
                for (; m + TILE8_MR <= M; m += TILE8_MR) tile8(4, TILE8_MR, n0, m, K, N, w, sw, sums, qx, sx, y);
                for (; m < M; m++) tile8(4, 1, n0, m, K, N, w, sw, sums, qx, sx, y);
            } else {
                for (int64_t n = n0; n < N; n++)
                    for (m = 0; m < M; m++) tile8(1, 1, n, m, K, N, w, sw, sums, qx, sx, y);
            }
            continue;
        }
#endif
        for (int64_t n = n0; n < N && n < n0 + 4; n++) {
            const int8_t *wr = w + n * K;
            for (int64_t m = 0; m < M; m++) {
                const uint8_t *xr = qx + m * K;
                int32_t dot = 0;
                for (int64_t k = 0; k < K; k++) dot += (int32_t)xr[k] * wr[k];
                y[m * N + n] = sx[m] * sw[n] * (float)(dot - 128 * sums[n]);
            }
        }
    }
}

/* y = x @ (w * sw).T through the fastest path for M rows: qx holds ceil(M / 16) * 16 * K bytes, sx as
 * many floats. Returns 1 where the path also added `bias` and applied `act` (`ACT_*`, -1: none) as it
 * wrote the outputs (many rows on VNNI), 0 where the caller still has to. */
static int quantize_products8(const float *x, int64_t M, int64_t K, int64_t N, const int8_t *w, const float *sw,
                              const int32_t *sums, uint8_t *qx, float *sx, const float *bias, int act, float *y) {
#ifdef ENCORE_AMX
    if (amx_rows(M, K, N)) {
        pack_rows(x, M, K, (int8_t *)qx, sx, 0);
        products8_amx(M, K, N, w, sw, (const int8_t *)qx, sx, y);
        return 0;
    }
#endif
#ifdef __AVX512VNNI__
    if (M >= VNNI_MIN_ROWS && K % 16 == 0) {
        pack_rows(x, M, K, (int8_t *)qx, sx, 128);
        products8_vnni(M, K, N, w, sw, sums, (const int8_t *)qx, sx, bias, act, y);
        return 1;
    }
#endif
    (void)bias, (void)act;
    quantize_rows_u8(x, M, K, qx, sx);
    products8(M, K, N, w, sw, sums, qx, sx, y);
    return 0;
}

int encore_int8_has_amx(void) {
#ifdef ENCORE_AMX
    return amx_permitted();
#else
    return 0;
#endif
}

int encore_int8_has_vnni(void) {
#ifdef __AVX512VNNI__
    return 1;
#else
    return 0;
#endif
}

/* Whether a few rows' products (a decode step) run in SIMD: AVX-512 VNNI, or AVX2 (the same outputs). */
int encore_int8_has_simd(void) {
#ifdef TILE8_K
    return 1;
#else
    return 0;
#endif
}

/* y[M, N] = act(x[M, K] @ (w * scale).T (+ bias[N])), act as csrc/decode.c's `encore_act_rows` (-1: none);
 * returns 0, or -1 when out of memory. */
int encore_int8_linear_act(const float *x, int64_t M, int64_t K, int64_t N, const int8_t *w, const float *sw,
                           const int32_t *sums, const float *bias, int64_t act, float *y) {
    uint8_t *qx = aligned_alloc(64, (size_t)(((M + 15) / 16 * 16 * K + 63) / 64 * 64)); /* AMX: 16-row blocks */
    float *sx = malloc(sizeof(float) * (size_t)((M + 15) / 16 * 16));
    if (!qx || !sx) {
        free(qx), free(sx);
        return -1;
    }
    if (!quantize_products8(x, M, K, N, w, sw, sums, qx, sx, bias, (int)act, y)) {
        add_bias(y, M, N, bias);
        if (act >= 0) encore_act_rows(y, M, N, act);
    }
    free(qx), free(sx);
    return 0;
}

/* `encore_int8_linear_act` without an activation. */
int encore_int8_linear(const float *x, int64_t M, int64_t K, int64_t N, const int8_t *w, const float *sw,
                       const int32_t *sums, const float *bias, float *y) {
    return encore_int8_linear_act(x, M, K, N, w, sw, sums, bias, -1, y);
}
