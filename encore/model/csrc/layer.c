/* A whole decoder layer's decode step in one C call: the fp32 / int4 / int8 projections of csrc/fp32.c,
 * csrc/int4.c and csrc/int8.c, the norms, RoPE, cache write and one-query attention of csrc/decode.c,
 * composed here so that a step of an L-layer model crosses from Python into C L times instead of ~20 L
 * (docs/engine.md).
 *
 *   x += post_attn_norm(out(attend(rope(qkv(attn_norm(x))), self K/V cache)))    merged: over self + cross K/V
 *   x += post_cross_norm(cross.out(attend(q_norm(cross.q(cross_norm(x))), cross K/V)))   (encoder-decoder)
 *   x += post_mlp_norm(down(act(up(mlp_norm(x)))))            act: silu(gate) * up, gelu(gate) * up, or gelu
 *
 * Which variant a layer is (post-norms, q/k norms, cross-attention, biases, gating) is fixed when
 * encore/model/fused.py describes it in a `Layer`; a NULL pointer is a module the layer does not have.
 * One query per row (decoding), B rows; the caller checks everything else (encore/model/fused.py).
 */
#include "decode.c"
#include "fp32.c"
#include "int4.c"
#include "int8.c"

typedef struct { /* a projection: int4 as Int4Linear holds it, int8 rows as Int8Linear.rows() gives them, or fp32 */
    int64_t bits;              /* 4, 8 or 32 */
    const void *w;             /* uint8 [N, K/2] packed nibbles, int8 [N, K], or fp32 [N, K] */
    const void *scales;        /* int4: fp16 [N, K/group]; int8: fp32 [N] */
    const half *mins;          /* int4: fp16 [N, K/group], NULL when symmetric */
    const int32_t *sums;       /* int8: each row's sum */
    const float *bias;         /* NULL: none */
    int64_t N, K, group;
} Proj;

typedef struct {
    int64_t D, H, KH, Dh, F, gated, gelu, cross, merged;  /* F: the MLP's width; merged: T5Gemma 2's attention */
    float eps, scale, softcap, cross_scale, cross_softcap;          /* softcap 0: none */
    const float *attn_norm, *post_attn_norm, *q_norm, *k_norm;     /* norms' scales; post / q / k: NULL if absent */
    const float *cross_norm, *post_cross_norm, *cross_q_norm;
    const float *mlp_norm, *post_mlp_norm;
    Proj qkv, out, cross_q, cross_out, up, down;
} Layer;

typedef struct { /* scratch for one call */
    float *in, *proj, *q, *att, *att2, *lse, *lse2;
    int8_t *qx;
    float *sx, *u;
} Work;

static inline int64_t max2(int64_t a, int64_t b) { return a > b ? a : b; }

/* y[B, N] = x[B, K] @ W.T (+ bias): the fp32 / int4 / int8 kernel without its allocations. */
static void project(const Proj *p, const float *x, int64_t B, float *y, const Work *w) {
    if (p->bits == 32) {
        products32(B, p->K, p->N, p->w, x, y);
    } else if (p->bits == 8) {
        quantize_products8(x, B, p->K, p->N, p->w, p->scales, p->sums, (uint8_t *)w->qx, w->sx, y);
    } else {
        quantize_rows(x, B, p->K, p->group, w->qx, w->sx, w->u);
        products(B, p->K, p->N, p->group, p->w, p->scales, p->mins, w->qx, w->sx, w->u, y);
    }
    add_bias(y, B, p->N, p->bias);
}

/* x[b] += norm(y[b]) (norm NULL: y itself), B rows of D. */
static void residual(float *x, float *y, int64_t B, int64_t D, const float *norm, float eps) {
    for (int64_t b = 0; b < B; b++) {
        if (norm) rms_row(y + b * D, D, norm, eps, y + b * D);
#pragma omp simd
        for (int64_t d = 0; d < D; d++) x[b * D + d] += y[b * D + d];
    }
}

/* x[B, D] += the MLP of mlp_norm(x). */
static void mlp(const Layer *L, float *x, int64_t B, const Work *w) {
    const int64_t D = L->D, F = L->F;
    for (int64_t b = 0; b < B; b++) rms_row(x + b * D, D, L->mlp_norm, L->eps, w->in + b * D);
    project(&L->up, w->in, B, w->proj, w);
    for (int64_t b = 0; b < B; b++) { /* the down projection's input, [B, F], into w->in */
        const float *h = w->proj + b * L->up.N;
        float *a = w->in + b * F;
        if (L->gated)
            glu_row(h, F, (int)L->gelu, a);
        else
            activate(h, F, (int)L->gelu, a);
    }
    project(&L->down, w->in, B, w->proj, w);
    residual(x, w->proj, B, D, L->post_mlp_norm, L->eps);
}

/* One decode step of one layer for B rows: x [B, D] updated in place. Self K/V: k, v [B, KH, T, Dh]
 * (strides in elements), each row's new position min(length[b], T - 1), mask [B | 1, T] (rows mask_b
 * apart); cos / sin [B, Dh]. Cross K/V [B, KH, S, Dh] and cmask [B | 1, S] (NULL: all real) when
 * L->cross or L->merged; row b reads cross row crows[b] (NULL: b). Every K/V is fp16 where `kv16` (a
 * half-precision cache), else fp32. Returns 0,
 * or -1 when out of memory. */
int encore_decode_layer(const Layer *L, float *x, int64_t B, const float *cos, const float *sin, void *k,
                        int64_t k_b, int64_t k_h, int64_t k_s, void *v, int64_t v_b, int64_t v_h, int64_t v_s,
                        const int64_t *length, int64_t T, const uint8_t *mask, int64_t mask_b, const void *ck,
                        int64_t ck_b, int64_t ck_h, int64_t ck_s, const void *cv, int64_t cv_b, int64_t cv_h,
                        int64_t cv_s, int64_t S, const uint8_t *cmask, int64_t cmask_b, const int64_t *crows,
                        int64_t kv16) {
    const int64_t D = L->D, H = L->H, KH = L->KH, Dh = L->Dh, HD = H * Dh;
    const int64_t K = max2(max2(D, HD), L->F);
    const int64_t N = max2(max2(L->qkv.N, L->up.N), max2(D, HD));
    Work w;
    w.in = malloc(sizeof(float) * (size_t)(B * K));
    w.proj = malloc(sizeof(float) * (size_t)(B * N));
    w.q = malloc(sizeof(float) * (size_t)(B * HD));
    w.att = malloc(sizeof(float) * (size_t)(B * HD));
    w.att2 = malloc(sizeof(float) * (size_t)(B * HD));
    w.lse = malloc(sizeof(float) * (size_t)(B * H));
    w.lse2 = malloc(sizeof(float) * (size_t)(B * H));
    w.qx = aligned_alloc(64, (size_t)(((B + 15) / 16 * 16 * K + 63) / 64 * 64)); /* AMX: 16-row blocks */
    w.sx = malloc(sizeof(float) * (size_t)(B * K / 32 + 1));
    w.u = malloc(sizeof(float) * (size_t)(B * K / 32 + 1));
    int failed = !w.in || !w.proj || !w.q || !w.att || !w.att2 || !w.lse || !w.lse2 || !w.qx || !w.sx || !w.u;
    if (!failed) { /* self-attention */
        for (int64_t b = 0; b < B; b++) rms_row(x + b * D, D, L->attn_norm, L->eps, w.in + b * D);
        project(&L->qkv, w.in, B, w.proj, &w);
        encore_rope_store(w.proj, B, H, KH, Dh, L->qkv.N, cos, sin, L->q_norm, L->k_norm, L->eps, k, k_b, k_h, k_s,
                          v, v_b, v_h, v_s, length, T, w.q, kv16);
        failed = encore_attend_one(w.q, B, H, KH, T, Dh, HD, Dh, k, k_b, k_h, k_s, v, v_b, v_h, v_s, mask, mask_b,
                                   NULL, L->scale, L->softcap, w.att, L->merged ? w.lse : NULL, kv16);
    }
    if (!failed && L->merged) { /* one softmax over the layer's own keys and the encoder's */
        failed = encore_attend_one(w.q, B, H, KH, S, Dh, HD, Dh, ck, ck_b, ck_h, ck_s, cv, cv_b, cv_h, cv_s, cmask,
                                   cmask_b, crows, L->scale, L->softcap, w.att2, w.lse2, kv16);
        if (!failed) merge(w.att, w.lse, w.att2, w.lse2, B * H, Dh);
    }
    if (!failed) {
        project(&L->out, w.att, B, w.proj, &w);
        residual(x, w.proj, B, D, L->post_attn_norm, L->eps);
    }
    if (!failed && L->cross) {
        for (int64_t b = 0; b < B; b++) rms_row(x + b * D, D, L->cross_norm, L->eps, w.in + b * D);
        project(&L->cross_q, w.in, B, w.q, &w);
        if (L->cross_q_norm)
            for (int64_t h = 0; h < B * H; h++) rms_row(w.q + h * Dh, Dh, L->cross_q_norm, L->eps, w.q + h * Dh);
        failed = encore_attend_one(w.q, B, H, KH, S, Dh, HD, Dh, ck, ck_b, ck_h, ck_s, cv, cv_b, cv_h, cv_s, cmask,
                                   cmask_b, crows, L->cross_scale, L->cross_softcap, w.att, NULL, kv16);
        if (!failed) {
            project(&L->cross_out, w.att, B, w.proj, &w);
            residual(x, w.proj, B, D, L->post_cross_norm, L->eps);
        }
    }
    if (!failed) mlp(L, x, B, &w);
    free(w.in), free(w.proj), free(w.q), free(w.att), free(w.att2), free(w.lse), free(w.lse2);
    free(w.qx), free(w.sx), free(w.u);
    return failed ? -1 : 0;
}
