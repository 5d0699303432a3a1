/* Fused fp32 CPU kernels for the decode step: an RMSNorm in one pass, attention for one query per head
 * (decoding), and the self-attention's q/k norms + RoPE + cache write, in place of the eager ops they
 * replace (a norm is ~8 aten calls, SDPA's flash kernel ~36 us for one query); for many positions (a
 * prefill), the q/k norms + RoPE and a gated MLP's activation. Built and called as csrc/int4.c is
 * (encore/model/native.py, encore/model/fused.py). Strides are in elements; the last dimension of every tensor is contiguous.
 */
#include <math.h>
#include <stdint.h>
#include <omp.h>
#include <stdlib.h>

#include "half.h"

/* K/V elements are fp32, or fp16 where `kv16` (a cache kept in half precision): element i of a row. */
static inline float kv_at(const void *p, int64_t i, int kv16) {
    return kv16 ? h2f(((const half *)p)[i]) : ((const float *)p)[i];
}

static inline const void *kv_offset(const void *p, int64_t elements, int kv16) {
    return (const char *)p + elements * (kv16 ? 2 : 4);
}

/* y = x / sqrt(mean(x^2) + eps) * w over one row of `dim` (y may be x). */
static inline void rms_row(const float *x, int64_t dim, const float *w, float eps, float *y) {
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < dim; d++) ss += x[d] * x[d];
    const float inv = 1.f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
    for (int64_t d = 0; d < dim; d++) y[d] = x[d] * inv * w[d];
}

/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, rows of `dim` (x rows `x_stride` apart, y contiguous). */
void encore_rms_norm(const float *x, int64_t rows, int64_t dim, int64_t x_stride, const float *w, float eps,
                     float *y) {
#pragma omp parallel for schedule(static) if (rows * dim >= (1 << 16))
    for (int64_t r = 0; r < rows; r++) rms_row(x + r * x_stride, dim, w, eps, y + r * dim);
}

#include "simd.h"
#ifdef __AVX512F__

static inline __m512 kv_load16(const void *p, int64_t i, int kv16) {
    return kv16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const half *)p + i))) : _mm512_loadu_ps((const float *)p + i);
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define KV_AVX2 1 /* attention's loops 8 wide (AMD Zen 2 / 3): fp16 K/V 8 at a time, not one by one */

static inline __m256 kv_load8(const void *p, int64_t i, int kv16) {
    return kv16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const half *)p + i))) : _mm256_loadu_ps((const float *)p + i);
}
#endif

/* y = x / sqrt(var(x) + eps) * w + b after subtracting the mean (LayerNorm), over one row of `dim` (y may be x). */
static inline void layer_norm_row(const float *x, int64_t dim, const float *w, const float *b, float eps, float *y) {
    float sum = 0.f, ss = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t d = 0; d < dim; d++) sum += x[d];
    const float mean = sum / (float)dim;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < dim; d++) ss += (x[d] - mean) * (x[d] - mean);
    const float inv = 1.f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
    for (int64_t d = 0; d < dim; d++) y[d] = (x[d] - mean) * inv * w[d] + (b ? b[d] : 0.f);
}

/* y = act(x) over n values (y may be x): SiLU x sigmoid(x); GELU-tanh x sigmoid(C (x + 0.044715 x^3));
 * GELU 0.5 x (1 + erf(x / sqrt 2)); ReLU max(x, 0). */
static void activate(const float *x, int64_t n, int act, float *y) {
    const float c = 1.5957691216057308f; /* sqrt(8 / pi) */
    int64_t i = 0;
#ifdef __AVX512F__
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, act16(_mm512_loadu_ps(x + i), act));
#elif ACT8
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, act8(_mm256_loadu_ps(x + i), act));
#endif
    for (; i < n; i++) {
        const float v = x[i];
        if (act == ACT_RELU)
            y[i] = v > 0.f ? v : 0.f;
        else if (act == ACT_GELU)
            y[i] = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
        else
            y[i] = v / (1.f + expf(-(act == ACT_GELU_TANH ? c * (v + 0.044715f * v * v * v) : v)));
    }
}

/* A gated MLP's down-projection input for one position: out[f] = act(h[f]) * h[F + f] (act as `activate`). */
static void glu_row(const float *h, int64_t F, int act, float *out) {
    activate(h, F, act, out);
#pragma omp simd
    for (int64_t f = 0; f < F; f++) out[f] *= h[F + f];
}

/* `glu_row` for many positions in one call: rows of h [rows, 2F] (rows h_r apart) into out [rows, F]. */
void encore_glu_rows(const float *h, int64_t rows, int64_t F, int64_t h_r, int64_t act, float *out) {
#pragma omp parallel for schedule(static) if (rows * F >= (1 << 15))
    for (int64_t r = 0; r < rows; r++) glu_row(h + r * h_r, F, (int)act, out + r * F);
}

/* An ungated MLP's activation in place over h [rows, F] (contiguous): `activate`'s `act`. */
void encore_act_rows(float *h, int64_t rows, int64_t F, int64_t act) {
#pragma omp parallel for schedule(static) if (rows * F >= (1 << 15))
    for (int64_t r = 0; r < rows; r++) activate(h + r * F, F, (int)act, h + r * F);
}

static inline float dot(const float *a, const float *b, int64_t n) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Scores of positions [s0, s1) for one KV head's G query heads (q rows q_h apart), into sc[i * n + s - s0]. */
static void scores(const float *q, int64_t G, int64_t q_h, const void *k, int kv16, int64_t k_s, int64_t Dh,
                   int64_t s0, int64_t s1, float scale, float *sc) {
    const int64_t n = s1 - s0;
    int64_t s = s0;
#ifdef __AVX512F__
    if (Dh % 16 == 0 && Dh <= 256)
        for (; s + 16 <= s1; s += 16)
            for (int64_t i = 0; i < G; i++) {
                const float *qi = q + i * q_h;
                __m512 acc[16];
                for (int j = 0; j < 16; j++) {
                    const int64_t kj = (s + j) * k_s;
                    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qi), kv_load16(k, kj, kv16));
                    for (int64_t d = 16; d < Dh; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(qi + d), kv_load16(k, kj + d, kv16), a);
                    acc[j] = a;
                }
                _mm512_storeu_ps(sc + i * n + s - s0, _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale)));
            }
#elif KV_AVX2
    if (Dh % 16 == 0)
        for (; s < s1; s++)
            for (int64_t i = 0; i < G; i++) { /* two chains of 8 */
                const float *qi = q + i * q_h;
                __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
                for (int64_t d = 0; d < Dh; d += 16) {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d), kv_load8(k, s * k_s + d, kv16), a);
                    b = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d + 8), kv_load8(k, s * k_s + d + 8, kv16), b);
                }
                sc[i * n + s - s0] = hsum8_ps(_mm256_add_ps(a, b)) * scale;
            }
#endif
    for (; s < s1; s++)
        for (int64_t i = 0; i < G; i++) {
            const float *qi = q + i * q_h;
            float total = 0.f;
            if (kv16)
                for (int64_t d = 0; d < Dh; d++) total += qi[d] * kv_at(k, s * k_s + d, 1);
            else
                total = dot(qi, (const float *)k + s * k_s, Dh);
            sc[i * n + s - s0] = total * scale;
        }
}

/* softmax numerators in place over one head's n scores (masked ones -> 0): returns their sum; *top is the max. */
static float exponentiate(float *sc, int64_t n, const uint8_t *mask, float softcap, float *top) {
    float m = -INFINITY;
    for (int64_t s = 0; s < n; s++) {
        if (mask && !mask[s]) continue;
        if (softcap > 0.f) sc[s] = softcap * tanhf(sc[s] / softcap);
        if (sc[s] > m) m = sc[s];
    }
    *top = m;
    if (m == -INFINITY) {  /* nothing to attend: weights of zero */
        for (int64_t s = 0; s < n; s++) sc[s] = 0.f;
        return 0.f;
    }
    int64_t s = 0;
    float total = 0.f;
#ifdef __AVX512F__
    const __m512 vm = _mm512_set1_ps(m);
    __m512 vt = _mm512_setzero_ps();
    for (; s + 16 <= n; s += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(sc + s), vm));
        if (mask) {
            const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(mask + s)));
            e = _mm512_maskz_mov_ps(_mm512_test_epi32_mask(bytes, bytes), e);
        }
        vt = _mm512_add_ps(vt, e);
        _mm512_storeu_ps(sc + s, e);
    }
    total = _mm512_reduce_add_ps(vt);
#elif ACT8
    const __m256 vm = _mm256_set1_ps(m);
    __m256 vt = _mm256_setzero_ps();
    for (; s + 8 <= n; s += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + s), vm));
        if (mask) {
            const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mask + s)));
            e = _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(bytes, _mm256_setzero_si256())), e);
        }
        vt = _mm256_add_ps(vt, e);
        _mm256_storeu_ps(sc + s, e);
    }
    total = hsum8_ps(vt);
#endif
    for (; s < n; s++) {
        const float e = (mask && !mask[s]) ? 0.f : expf(sc[s] - m);
        sc[s] = e;
        total += e;
    }
    return total;
}

/* o[0:Dh] = sum_s w[s] * v[s] over n positions (rows v_s apart). */
static void weigh(const float *w, int64_t n, const void *v, int kv16, int64_t v_s, int64_t Dh, float *o) {
#ifdef __AVX512F__
    if (Dh % 64 == 0) {
        for (int64_t d0 = 0; d0 < Dh; d0 += 64) {  /* two positions at a time: 8 independent chains */
            __m512 a[4], b[4];
            for (int j = 0; j < 4; j++) a[j] = b[j] = _mm512_setzero_ps();
            int64_t s = 0;
            for (; s + 2 <= n; s += 2) {
                const __m512 w0 = _mm512_set1_ps(w[s]), w1 = _mm512_set1_ps(w[s + 1]);
                const int64_t v0 = s * v_s + d0, v1 = v0 + v_s;
                for (int j = 0; j < 4; j++) {
                    a[j] = _mm512_fmadd_ps(w0, kv_load16(v, v0 + 16 * j, kv16), a[j]);
                    b[j] = _mm512_fmadd_ps(w1, kv_load16(v, v1 + 16 * j, kv16), b[j]);
                }
            }
            if (s < n)
                for (int j = 0; j < 4; j++) a[j] = _mm512_fmadd_ps(_mm512_set1_ps(w[s]), kv_load16(v, s * v_s + d0 + 16 * j, kv16), a[j]);
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(o + d0 + 16 * j, _mm512_add_ps(a[j], b[j]));
        }
        return;
    }
#elif KV_AVX2
    if (Dh % 32 == 0) {
        for (int64_t d0 = 0; d0 < Dh; d0 += 32) { /* 4 chains of 8 columns */
            __m256 a[4];
            for (int j = 0; j < 4; j++) a[j] = _mm256_setzero_ps();
            for (int64_t s = 0; s < n; s++) {
                const __m256 ws = _mm256_set1_ps(w[s]);
                for (int j = 0; j < 4; j++) a[j] = _mm256_fmadd_ps(ws, kv_load8(v, s * v_s + d0 + 8 * j, kv16), a[j]);
            }
            for (int j = 0; j < 4; j++) _mm256_storeu_ps(o + d0 + 8 * j, a[j]);
        }
        return;
    }
#endif
    for (int64_t d = 0; d < Dh; d++) o[d] = 0.f;
    for (int64_t s = 0; s < n; s++) {
        const float ws = w[s];
        if (kv16) {
            for (int64_t d = 0; d < Dh; d++) o[d] += ws * kv_at(v, s * v_s + d, 1);
            continue;
        }
        const float *vs = (const float *)v + s * v_s;
#pragma omp simd
        for (int64_t d = 0; d < Dh; d++) o[d] += ws * vs[d];
    }
}

/* One query per head: out[b, h*Dh:(h+1)*Dh] = softmax_s(cap(q[b,h] . k[r,g,s] * scale)) @ v[r,g,s], r =
 * rows[b] (rows NULL: r = b; a beam search's rows read the one copy of their input's cross K/V),
 * over the positions s < S where mask[b, s] is nonzero (all when mask is NULL), g = h / (H / KH).
 * Each (row, KV head) splits its positions into chunks over the threads (flash-decoding: a chunk's
 * max, sum and weighted values, combined after), and a KV head's query heads are computed together,
 * so each K/V row is read once per step. Returns 0, or -1 when out of memory. A row with no position
 * to attend gets zeros. `lse` [B, H] (NULL: not wanted) receives each head's log-sum-exp of its
 * logits (-inf where nothing is attended): what merges two attentions into one softmax (`merge`).
 * `kv16`: K and V are fp16 (a half-precision cache), else fp32. `bias` (NULL: none) is added to the
 * scaled logits, bias[b * bias_b + h * bias_h + s] (T5's relative positions; -inf hides a key); it is
 * not combined with a soft cap (the caller's check). */
int encore_attend_one(const float *q, int64_t B, int64_t H, int64_t KH, int64_t S, int64_t Dh, int64_t q_b,
                      int64_t q_h, const void *k, int64_t k_b, int64_t k_h, int64_t k_s, const void *v,
                      int64_t v_b, int64_t v_h, int64_t v_s, const uint8_t *mask, int64_t mask_b,
                      const float *bias, int64_t bias_b, int64_t bias_h,
                      const int64_t *rows, float scale, float softcap, float *out, float *lse, int64_t kv16) {
    const int64_t G = H / KH, tasks = B * KH;
    const int threads = omp_get_max_threads();
    int64_t chunks = (2 * threads + tasks - 1) / tasks; /* about two chunks per thread */
    if (chunks > S / 64) chunks = S / 64;
    if (chunks < 1) chunks = 1;
    const int64_t size = (S + chunks - 1) / chunks;
    float *part = malloc(sizeof(float) * (size_t)(tasks * chunks * G * (Dh + 2)));  /* per chunk, head: m, l, o[Dh] */
    float *sc = malloc(sizeof(float) * (size_t)(tasks * chunks * G * size));
    if (!part || !sc) {
        free(part), free(sc);
        return -1;
    }
#pragma omp parallel for schedule(static) if (tasks * S * Dh >= (1 << 14))
    for (int64_t u = 0; u < tasks * chunks; u++) {
        /* rows fastest: consecutive tasks of a thread read the same block of K/V when their rows share it */
        const int64_t b = u % B, c = u / B % chunks, g = u / (B * chunks), t = (b * KH + g) * chunks + c;
        const int64_t s0 = c * size, s1 = s0 + size < S ? s0 + size : S, r = rows ? rows[b] : b;
        const uint8_t *mc = mask ? mask + b * mask_b + s0 : NULL;
        const void *kb = kv_offset(k, r * k_b + g * k_h, (int)kv16), *vb = kv_offset(v, r * v_b + g * v_h, (int)kv16);
        float *p = sc + t * G * size, *pt = part + t * G * (Dh + 2);
        if (s1 > s0) scores(q + b * q_b + g * G * q_h, G, q_h, kb, (int)kv16, k_s, Dh, s0, s1, scale, p);
        if (bias && s1 > s0)
            for (int64_t i = 0; i < G; i++) {
                const float *bi = bias + b * bias_b + (g * G + i) * bias_h + s0;
                float *pi = p + i * (s1 - s0);
#pragma omp simd
                for (int64_t s = 0; s < s1 - s0; s++) pi[s] += bi[s];
            }
        for (int64_t i = 0; i < G; i++) {
            float *pi = p + i * (s1 - s0), *o = pt + i * (Dh + 2) + 2;
            pt[i * (Dh + 2) + 1] = s1 > s0 ? exponentiate(pi, s1 - s0, mc, softcap, pt + i * (Dh + 2)) : 0.f;
            if (s1 <= s0) pt[i * (Dh + 2)] = -INFINITY;
            weigh(pi, s1 - s0, kv_offset(vb, s0 * v_s, (int)kv16), (int)kv16, v_s, Dh, o);
        }
    }
    for (int64_t bg = 0; bg < tasks; bg++)
        for (int64_t i = 0; i < G; i++) {
            float *o = out + (bg / KH) * H * Dh + (bg % KH * G + i) * Dh;
            float top = -INFINITY, total = 0.f;
            for (int64_t c = 0; c < chunks; c++) {
                const float m = part[((bg * chunks + c) * G + i) * (Dh + 2)];
                if (m > top) top = m;
            }
            for (int64_t d = 0; d < Dh; d++) o[d] = 0.f;
            if (lse) lse[(bg / KH) * H + bg % KH * G + i] = -INFINITY;
            if (top == -INFINITY) continue;
            for (int64_t c = 0; c < chunks; c++) {
                const float *pc = part + ((bg * chunks + c) * G + i) * (Dh + 2);
                if (pc[0] == -INFINITY) continue;
                const float f = expf(pc[0] - top);
                total += pc[1] * f;
                for (int64_t d = 0; d < Dh; d++) o[d] += pc[2 + d] * f;
            }
            for (int64_t d = 0; d < Dh; d++) o[d] /= total;
            if (lse) lse[(bg / KH) * H + bg % KH * G + i] = top + logf(total);
        }
    free(part), free(sc);
    return 0;
}

/* Two attentions of the same queries (each normalized, with its log-sum-exp) as one softmax over both
 * key sets: a[n] = a[n] * w_a + b[n] * w_b per head, w = e^(lse - max) / sum. n_heads heads of Dh. */
static inline void merge(float *a, const float *lse_a, const float *b, const float *lse_b, int64_t n_heads, int64_t Dh) {
    for (int64_t h = 0; h < n_heads; h++) {
        const float top = lse_a[h] > lse_b[h] ? lse_a[h] : lse_b[h];
        if (top == -INFINITY) continue; /* nothing attended on either side: zeros */
        const float ea = expf(lse_a[h] - top), eb = expf(lse_b[h] - top), wa = ea / (ea + eb), wb = eb / (ea + eb);
        for (int64_t d = 0; d < Dh; d++) a[h * Dh + d] = a[h * Dh + d] * wa + b[h * Dh + d] * wb;
    }
}

/* One head's vector in place: RMS-normalised by `norm` (NULL: not), then rotated by RoPE (rotate-half
 * layout: the first half pairs with the second) with this position's cos / sin (NULL: not rotated). */
static void norm_rope(float *x, int64_t Dh, const float *norm, float eps, const float *cos, const float *sin) {
    if (norm) rms_row(x, Dh, norm, eps, x);
    if (!cos) return;
    const int64_t half = Dh / 2;
    for (int64_t d = 0; d < half; d++) {
        const float a = x[d], b = x[d + half];
        x[d] = a * cos[d] - b * sin[d];
        x[d + half] = b * cos[d + half] + a * sin[d + half];
    }
}

/* A decode step's self-attention inputs, from the fused q/k/v projection qkv [B, (H + 2 KH) * Dh] (rows
 * qkv_b apart): q (normed, rotated) into q_out [B, H, Dh]; k (normed, rotated) and v into the cache at
 * each row's position min(length[b], max_len - 1), fp16 where `kv16`. cos / sin: [B, Dh] (NULL: a family
 * whose positions are not rotary); q_norm /
 * k_norm: [Dh] or NULL. */
void encore_rope_store(const float *qkv, int64_t B, int64_t H, int64_t KH, int64_t Dh, int64_t qkv_b,
                       const float *cos, const float *sin, const float *q_norm, const float *k_norm, float eps,
                       void *k, int64_t k_b, int64_t k_h, int64_t k_s, void *v, int64_t v_b, int64_t v_h,
                       int64_t v_s, const int64_t *length, int64_t max_len, float *q_out, int64_t kv16) {
    for (int64_t b = 0; b < B; b++) {
        const float *row = qkv + b * qkv_b, *c = cos ? cos + b * Dh : NULL, *s = sin ? sin + b * Dh : NULL;
        const int64_t pos = length[b] < max_len - 1 ? length[b] : max_len - 1;
        for (int64_t h = 0; h < H; h++) {
            float *q = q_out + (b * H + h) * Dh;
            for (int64_t d = 0; d < Dh; d++) q[d] = row[h * Dh + d];
            norm_rope(q, Dh, q_norm, eps, c, s);
        }
        for (int64_t g = 0; g < KH; g++) {
            const int64_t at_k = b * k_b + g * k_h + pos * k_s, at_v = b * v_b + g * v_h + pos * v_s;
            const float *vs = row + (H + KH + g) * Dh;
            float kd[Dh]; /* normed and rotated here, then stored at the cache's precision */
            for (int64_t d = 0; d < Dh; d++) kd[d] = row[(H + g) * Dh + d];
            norm_rope(kd, Dh, k_norm, eps, c, s);
            if (kv16) {
                for (int64_t d = 0; d < Dh; d++)
                    ((half *)k)[at_k + d] = f2h_saturated(kd[d]), ((half *)v)[at_v + d] = f2h_saturated(vs[d]);
            } else {
                for (int64_t d = 0; d < Dh; d++) ((float *)k)[at_k + d] = kd[d], ((float *)v)[at_v + d] = vs[d];
            }
        }
    }
}

/* A prefill's (or encoder's) q and k from the fused projection qkv [B, T, (H + 2 KH) * Dh] (rows
 * qkv_t apart, batches qkv_b): each head normed by q_norm / k_norm (NULL: not) and rotated with its
 * position's cos / sin [B | 1, T, Dh] (batches cs_b apart, 0: shared), into q_out [B, H, T, Dh] and
 * k_out [B, KH, T, Dh] (contiguous). One pass instead of the eager split, norms, cats and products. */
void encore_norm_rope_rows(const float *qkv, int64_t B, int64_t T, int64_t H, int64_t KH, int64_t Dh, int64_t qkv_b,
                           int64_t qkv_t, const float *cos, const float *sin, int64_t cs_b, const float *q_norm,
                           const float *k_norm, float eps, float *q_out, float *k_out) {
#pragma omp parallel for schedule(static) if (B * T * (H + KH) * Dh >= (1 << 15))
    for (int64_t bt = 0; bt < B * T; bt++) {
        const int64_t b = bt / T, t = bt % T;
        const float *row = qkv + b * qkv_b + t * qkv_t, *c = cos + b * cs_b + t * Dh, *s = sin + b * cs_b + t * Dh;
        for (int64_t h = 0; h < H + KH; h++) {
            float *o = h < H ? q_out + ((b * H + h) * T + t) * Dh : k_out + ((b * KH + h - H) * T + t) * Dh;
            for (int64_t d = 0; d < Dh; d++) o[d] = row[h * Dh + d];
            norm_rope(o, Dh, h < H ? q_norm : k_norm, eps, c, s);
        }
    }
}
