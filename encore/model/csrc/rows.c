/* Rows onto [-1, 1] for int8's activations: unit[m] = x[m] / peak[m], peak[m] = max(max_k |x[m, k]|, 1e-12),
 * what `Int8Linear` does before fbgemm's linear over a prefill's rows (encore/model/kernels.py
 * `unit_rows`): one read of each row for its peak and one more from cache for the division, instead of
 * the eager abs, amax and division (five passes over memory). Built and called as csrc/int4.c is.
 */
#include <math.h>
#include <stdint.h>

#include "half.h"
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

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
/* A quantized weight [N, K] read as bf16 (by `encore_int8_to_bf16` and the AMX product's tiles): int8 rows
 * with an fp32 scale each (`w`, `scale`), or int4 in csrc/int4.c's layout (`w4`: K / 2 bytes a row, each
 * 64 inputs as 32 bytes, low nibbles the first 32; fp16 `sw` and, asymmetric, `mw` per `group` inputs;
 * symmetric levels sit at -8 x scale). */
typedef struct {
    const int8_t *w;
    const float *scale;
    const uint8_t *w4;
    const half *sw, *mw;
    int64_t group;
} weights;

/* Output n's 32 inputs from 32 kb as 16 bf16 pairs (lane p: inputs 2p, 2p + 1). */
static inline __m512i row_pairs(const weights *W, int64_t n, int64_t K, int64_t kb) {
    __m512 lo, hi;
    if (W->w4) {
        const int64_t k0 = kb * 32, G = K / W->group, g = k0 / W->group;
        const __m256i bytes = _mm256_loadu_si256((const __m256i *)(W->w4 + n * (K / 2) + 32 * (k0 / 64)));
        const __m256i nib = (k0 / 32) % 2 ? _mm256_and_si256(_mm256_srli_epi16(bytes, 4), _mm256_set1_epi8(0x0F))
                                          : _mm256_and_si256(bytes, _mm256_set1_epi8(0x0F));
        const float sc = h2f(W->sw[n * G + g]);
        const __m512 s = _mm512_set1_ps(sc), m = _mm512_set1_ps(W->mw ? h2f(W->mw[n * G + g]) : -8.f * sc);
        lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(nib))), s, m);
        hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(nib, 1))), s, m);
    } else {
        const int8_t *q = W->w + n * K + kb * 32;
        const __m512 s = _mm512_set1_ps(W->scale[n]);
        lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q))), s);
        hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)))), s);
    }
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}
#endif

/* out[n, k] = bf16(w[n, k] * scale[n]): an int8 weight [N, K] with per-row scales, unpacked for oneDNN's bf16
 * GEMM over a prefill's rows (`Int8Linear`; csrc/int4.c's encore_int4_to_bf16 does the same for int4).
 * Returns 0, or -2 where the compiler did not target AVX512-BF16 (the caller keeps fbgemm's path). */
int encore_int8_to_bf16(const int8_t *w, const float *scale, int64_t N, int64_t K, uint16_t *out) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    const weights W = {.w = w, .scale = scale};
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *row = w + n * K;
        uint16_t *o = out + n * K;
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) _mm512_storeu_si512((__m512i *)(o + k), row_pairs(&W, n, K, k / 32));
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
 * then oneDNN's bf16 GEMM compute for a prefill's rows, without writing the bf16 weight to memory nor
 * rounding the output to bf16. The activations are the tiles' first operand (16 rows x 32 inputs,
 * packed once per call), the weights the second: each thread unpacks a block of NC weight rows into
 * the tiles' pair layout in a buffer that stays in its L2 cache, then runs every 32-row block of the
 * activations against it (2 x 2 tiles of 16 x 16 accumulators), whose outputs it writes as the next
 * block multiplies (`beside`). */
#include "amx.h"
#if defined(ENCORE_AMX) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#define ENCORE_AMX_BF16 1

/* Rows of x as bf16 tiles: per block of 16 rows and 32 inputs, 1 KiB row-major; rows past M are zero. */
static void pack_rows_bf16(const float *x, int64_t M, int64_t K, uint16_t *xp) {
    const int64_t KB = K / 32, MP = (M + 15) / 16 * 16;
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < MP; m++) {
        for (int64_t kb = 0; kb < KB; kb++) {
            uint16_t *o = xp + ((m / 16) * KB + kb) * 512 + (m % 16) * 32;
            if (m >= M) {
                memset(o, 0, 64);
                continue;
            }
            const float *r = x + m * K + kb * 32;
            _mm256_storeu_si256((__m256i *)o, (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r)));
            _mm256_storeu_si256((__m256i *)(o + 16), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r + 16)));
        }
    }
}

/* r[i][j] -> r[j][i] for 16 rows of 16 32-bit lanes: pairs of lanes, then of 64 bits, then 128-bit quarters. */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]), t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]), u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]), u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) { /* u[4g + j] quarter l: rows 4g..4g+3 of column 4l + j */
        const __m512i v = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), v2 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
        const __m512i w = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44), w2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
        r[j] = _mm512_shuffle_i32x4(v, w, 0x88), r[4 + j] = _mm512_shuffle_i32x4(v, w, 0xDD);
        r[8 + j] = _mm512_shuffle_i32x4(v2, w2, 0x88), r[12 + j] = _mm512_shuffle_i32x4(v2, w2, 0xDD);
    }
}

/* Tile u of weight rows from n0 as bf16 (16 outputs from n0 + u / KB * 16, 32 inputs from u % KB * 32): 1 KiB
 * of [k/2][n][k%2], the second operand's pair layout, at out + u * 512; 16 outputs' pairs transposed in
 * registers. */
static inline void weight_tile(const weights *W, int64_t n0, int64_t K, int64_t u, uint16_t *out) {
    const int64_t KB = K / 32;
    __m512i v[16];
    for (int r = 0; r < 16; r++) v[r] = row_pairs(W, n0 + u / KB * 16 + r, K, u % KB);
    transpose16(v);
    for (int p = 0; p < 16; p++) _mm512_store_si512((__m512i *)(out + u * 512 + p * 32), v[p]);
}

/* Accumulator tile t (16 rows from m0, 16 outputs from n0) straight into y fp32 [M, N] (rows N apart); the
 * rows past M through a buffer. */
static void store_tile(int t, float *y, int64_t M, int64_t N, int64_t m0, int64_t n0) {
    float c[256] __attribute__((aligned(64)));
    float *to = m0 + 16 <= M ? y + m0 * N + n0 : c;
    const int64_t stride = m0 + 16 <= M ? N * 4 : 64;
    switch (t) {
    case 0: _tile_stored(0, to, stride); break;
    case 1: _tile_stored(1, to, stride); break;
    case 2: _tile_stored(2, to, stride); break;
    default: _tile_stored(3, to, stride); break;
    }
    for (int64_t j = 0; to == c && m0 + j < M; j++) memcpy(y + (m0 + j) * N + n0, c + j * 16, 64);
}

/* The vector work a thread does while the tile unit multiplies (AMX_TILES_2X2's BESIDE: the tile unit runs
 * a step's four products in ~64 cycles, in which the vector units are otherwise idle): the last 2 x 2
 * accumulator block's outputs, spread evenly over the next block's steps. They wait as 4 tiles of 16 x 16
 * in `c`, at rows cm, outputs cn, rows `next` .. 63 still to write: plus bias, through `act` (-1: none;
 * csrc/simd.h's ACT_*), into y fp32 [M, N] or into `yt` as bf16 in the first operand's tiles (what
 * `pack_rows_bf16` makes of [M, N] for a next projection: N / 32 tiles a 16-row block, the rows past M
 * zero). On the tile unit's time: `encdec-330m`'s GELU up projection (512 x 1024 -> 4096, packed out)
 * 3.36 -> 2.70 ms a call. Unpacking the next weight block beside the products measured slower in whole
 * prefills (docs/NOTES.md). */
typedef struct {
    float c[1024] __attribute__((aligned(64)));
    float *y;
    uint16_t *yt;
    const float *bias;
    int act, tiles;
    int64_t M, N, cm, cn, next, budget;
} beside;

static inline void output_row(beside *b, int64_t i) {
    const int t = (int)(i / 16), j = (int)(i % 16);
    if (!(b->tiles >> t & 1)) return;
    const int64_t m = b->cm + (t >> 1) * 16 + j, n = b->cn + (t & 1) * 16, M = b->M, N = b->N;
    __m512 v = _mm512_load_ps(b->c + t * 256 + j * 16);
    if (b->bias) v = _mm512_add_ps(v, _mm512_loadu_ps(b->bias + n));
    if (b->act >= 0) v = act16(v, b->act);
    if (b->yt) {
        uint16_t *o = b->yt + ((m / 16) * (N / 32) + n / 32) * 512 + (m % 16) * 32 + n % 32;
        _mm256_storeu_si256((__m256i *)o, m < M ? (__m256i)_mm512_cvtneps_pbh(v) : _mm256_setzero_si256());
    } else if (m < M) {
        _mm512_storeu_ps(b->y + m * N + n, v);
    }
}

/* One step's share of the work beside: `steps` the steps of the current 2 x 2 block. */
static inline void beside_step(beside *b, int64_t steps) {
    for (b->budget += 64; b->budget >= steps && b->next < 64; b->budget -= steps) output_row(b, b->next++);
}

/* Weight rows a thread unpacks at once: their bf16 tiles (NC x K x 2 bytes) within 512 KiB of its L2
 * cache, and of 128, 64 or 32 the one whose blocks share out most evenly over the threads (the most
 * rows any thread runs; a tie goes to the larger: N = 640 on 2 threads takes 64, 5 blocks of 128 would
 * leave one thread 3). */
static int64_t weight_block(int64_t N, int64_t K) {
    const int64_t threads = omp_get_max_threads();
    int64_t best = 32, best_rows = -1;
    for (int64_t nc = 128; nc >= 32; nc /= 2) {
        if (nc > 32 && nc * K * 2 > (512 << 10)) continue;
        const int64_t blocks = (N + nc - 1) / nc, rows = (blocks + threads - 1) / threads * nc;
        if (best_rows < 0 || rows < best_rows) best = nc, best_rows = rows;
    }
    return best;
}
#endif

int encore_int8_linear_amx_bf16_available(void) {
#ifdef ENCORE_AMX_BF16
    return amx_permitted();
#else
    return 0;
#endif
}

#ifdef ENCORE_AMX_BF16
/* y[M, N] = act(x[M, K] @ bf16(W).T (+ bias)): the activations packed once (or given packed, `xt`), then
 * each thread's blocks of NC outputs unpacked into its cache and run against every 32 rows. Each 2 x 2
 * block of outputs is written during the next one's products (`beside`: bias, activation, bf16 tiles
 * `yt`); a plain fp32 y takes the tiles as they are. 0, or -1 out of memory. */
static int amx_bf16_linear(const float *x, const uint16_t *xt, int64_t M, int64_t K, int64_t N, const weights *W,
                           const float *bias, int act, float *y, uint16_t *yt) {
    const int64_t KB = K / 32, MB = (M + 15) / 16;
    const int plain = !bias && act < 0 && !yt;
    const int64_t NC = weight_block(N, K), blocks = (N + NC - 1) / NC;
    /* The weights' bytes, for prefetching them ahead of the unpacking: it reads 16 rows K apart, a pattern
     * the hardware prefetcher follows too late (the prefetching: a 128-token prefill ~0.9x as long). */
    const char *rows8 = W->w4 ? (const char *)W->w4 : (const char *)W->w;
    const int64_t row_bytes = W->w4 ? K / 2 : K, tile_bytes = W->w4 ? 16 : 32;
    uint16_t *xp = (uint16_t *)xt;
    if (!xt) {
        xp = aligned_alloc(64, (size_t)(MB * 16 * K * 2));
        if (!xp) return -1;
        pack_rows_bf16(x, M, K, xp);
    }
    int failed = 0;
#pragma omp parallel
    {
        const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t first = blocks * t / T, mine = blocks * (t + 1) / T - first; /* this thread's blocks */
        uint16_t *wb = aligned_alloc(64, (size_t)(NC * K * 2)); /* this block's weights as tiles */
        beside *b = aligned_alloc(64, sizeof(beside));
        if (!wb || !b) {
#pragma omp atomic write
            failed = 1;
        } else if (mine > 0) {
            amx_tiles_on();
            *b = (beside){.y = y, .yt = yt, .bias = bias, .act = act, .M = M, .N = N, .next = 64};
            for (int64_t blk = first; blk < first + mine; blk++) {
                const int64_t n0 = blk * NC, NT = (N - n0 < NC ? N - n0 : NC) / 16;
                for (int64_t u = 0; u < NT * KB; u++) {
                    const int64_t v = u + 4; /* tile v's 16 rows into L1, 4 tiles ahead (a line holds 2) */
                    for (int r = 0; v < NT * KB && v % KB % 2 == 0 && r < 16; r++)
                        _mm_prefetch(rows8 + (n0 + v / KB * 16 + r) * row_bytes + v % KB * tile_bytes, _MM_HINT_T0);
                    weight_tile(W, n0, K, u, wb);
                }
                for (int64_t mb = 0; mb < MB; mb += 2) {
                    const int two_m = mb + 1 < MB;
                    const uint16_t *x0 = xp + mb * KB * 512, *x1 = x0 + KB * 512;
                    for (int64_t nt = 0; nt < NT; nt += 2) {
                        const int two_n = nt + 1 < NT;
                        const uint16_t *w0 = wb + nt * KB * 512, *w1 = w0 + KB * 512;
                        b->budget = 0;
                        AMX_TILES_2X2(_tile_dpbf16ps, KB, x0, x1, 512, 64, w0, w1, 512, 64, two_m, two_n,
                                      beside_step(b, KB));
                        while (b->next < 64) output_row(b, b->next++);
                        const int64_t m = mb * 16, n = n0 + nt * 16;
                        if (plain) {
                            store_tile(0, y, M, N, m, n);
                            if (two_n) store_tile(1, y, M, N, m, n + 16);
                            if (two_m) store_tile(2, y, M, N, m + 16, n);
                            if (two_m && two_n) store_tile(3, y, M, N, m + 16, n + 16);
                            continue;
                        }
                        _tile_stored(0, b->c, 64);
                        if (two_n) _tile_stored(1, b->c + 256, 64);
                        if (two_m) _tile_stored(2, b->c + 512, 64);
                        if (two_m && two_n) _tile_stored(3, b->c + 768, 64);
                        b->tiles = 1 | two_n << 1 | two_m << 2 | (two_m && two_n) << 3, b->cm = m, b->cn = n;
                        b->next = 0;
                    }
                }
            }
            while (b->next < 64) output_row(b, b->next++);
            _tile_release();
        }
        free(wb), free(b);
    }
    if (!xt) free(xp);
    return failed ? -1 : 0;
}
#endif

/* y = act(x @ bf16(w * scale).T + bias), act -1 for none (an MLP's up projection: its activation as the
 * accumulators are written, not in a pass of its own). x fp32 [M, K], or `xt` the rows already packed
 * (a previous call's `yt`); out y fp32 [M, N], or `yt` packed for a next projection (N % 32 == 0): an
 * MLP's hidden activations never written as fp32. Returns 0; -1 when out of memory; -2 where this CPU
 * or build has no AMX bf16, or K % 32 or N % 16 (N % 32 for `yt`). */
int encore_int8_linear_amx_bf16(const float *x, const uint16_t *xt, int64_t M, int64_t K, int64_t N, const int8_t *w,
                                const float *scale, const float *bias, int64_t act, float *y, uint16_t *yt) {
#ifdef ENCORE_AMX_BF16
    if (!amx_permitted() || K % 32 || N % (yt ? 32 : 16)) return -2;
    const weights W = {.w = w, .scale = scale};
    return amx_bf16_linear(x, xt, M, K, N, &W, bias, (int)act, y, yt);
#else
    (void)x, (void)xt, (void)M, (void)K, (void)N, (void)w, (void)scale, (void)bias, (void)act, (void)y, (void)yt;
    return -2;
#endif
}

/* The same product for an int4 weight (csrc/int4.c's layout, `weights`): what encore_int4_to_bf16 then
 * oneDNN's bf16 GEMM compute for a prefill's rows. -2 also where K % 64, group % 32 or N % 16. */
int encore_int4_linear_amx_bf16(const float *x, const uint16_t *xt, int64_t M, int64_t K, int64_t N, const uint8_t *w4,
                                const half *sw, const half *mw, int64_t group, const float *bias, int64_t act, float *y,
                                uint16_t *yt) {
#ifdef ENCORE_AMX_BF16
    if (!amx_permitted() || K % 64 || group % 32 || K % group || N % (yt ? 32 : 16)) return -2;
    const weights W = {.w4 = w4, .sw = sw, .mw = mw, .group = group};
    return amx_bf16_linear(x, xt, M, K, N, &W, bias, (int)act, y, yt);
#else
    (void)x, (void)xt, (void)M, (void)K, (void)N, (void)w4, (void)sw, (void)mw, (void)group, (void)bias, (void)act;
    (void)y, (void)yt;
    return -2;
#endif
}
