/* A whole decoder layer's decode step in one C call: the fp32 / int4 / int8 projections of csrc/fp32.c,
 * csrc/int4.c and csrc/int8.c, the norms, RoPE, cache write and one-query attention of csrc/decode.c,
 * composed here so that a step of an L-layer model crosses from Python into C L times instead of ~20 L
 * (docs/engine.md).
 *
 *   x += post_attn_norm(out(attend(rope(qkv(attn_norm(x))), self K/V cache)))    merged: over self + cross K/V
 *   x += post_cross_norm(cross.out(attend(q_norm(cross.q(cross_norm(x))), cross K/V)))   (encoder-decoder)
 *   x += post_mlp_norm(down(act(up(mlp_norm(x)))))    act: SiLU, GELU-tanh, GELU or ReLU, gated or not
 *
 * or, in a post-norm block (BART, Marian), x = norm(x + sublayer(x)) with no norm before. The norms are
 * RMSNorms or LayerNorms with a bias; positions are RoPE's (rotated here) or added to the embeddings
 * before the first layer; T5's relative positions come as an additive bias on the self-attention's
 * logits. Which variant a layer is (norm kind, block order, post-norms, q/k norms, cross-attention,
 * biases, activation, gating) is fixed when encore/model/fused_layer.py describes it in a `Layer`; a
 * NULL pointer is a module the layer does not have.
 * One query per row (decoding), B rows; the caller checks everything else (encore/model/fused.py).
 */
#include <string.h>

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

typedef struct { /* a norm of the block: w NULL where the block has none; b (LayerNorm's bias) NULL if none */
    const float *w, *b;
} Norm;

typedef struct {
    int64_t D, H, KH, Dh, F, gated, act, cross, merged; /* F: the MLP's width; act: decode.c's ACT_*; merged: T5Gemma 2's */
    int64_t layernorm, post, rope;  /* LayerNorms (else RMSNorms); a post-norm block; RoPE on q and k */
    float eps, scale, softcap, cross_scale, cross_softcap;          /* softcap 0: none */
    Norm attn_norm, post_attn_norm, cross_norm, post_cross_norm, mlp_norm, post_mlp_norm;
    const float *q_norm, *k_norm, *cross_q_norm;                   /* per-head RMSNorms' scales, NULL if absent */
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
        quantize_products8(x, B, p->K, p->N, p->w, p->scales, p->sums, (uint8_t *)w->qx, w->sx, NULL, -1, y);
    } else {
        quantize_rows(x, B, p->K, p->group, w->qx, w->sx, w->u);
        products(B, p->K, p->N, p->group, p->w, p->scales, p->mins, w->qx, w->sx, w->u, y);
    }
    add_bias(y, B, p->N, p->bias);
}

/* y[b] = norm(x[b]) over B rows of D (y may be x): the layer's norm kind; no norm: a copy. */
static void normed(const Layer *L, const Norm *n, const float *x, int64_t B, float *y) {
    const int64_t D = L->D;
    for (int64_t b = 0; b < B; b++) {
        if (!n->w) {
            if (y != x) memcpy(y + b * D, x + b * D, sizeof(float) * (size_t)D);
        } else if (L->layernorm) {
            layer_norm_row(x + b * D, D, n->w, n->b, L->eps, y + b * D);
        } else {
            rms_row(x + b * D, D, n->w, L->eps, y + b * D);
        }
    }
}

/* A sub-block's residual over B rows of D: x += norm(y) (pre-norm, sandwich; norm absent: y), or
 * x = norm(x + y) (post-norm). */
static void residual(const Layer *L, float *x, float *y, int64_t B, const Norm *norm) {
    const int64_t D = L->D;
    if (!L->post) normed(L, norm, y, B, y);
    for (int64_t b = 0; b < B; b++) {
#pragma omp simd
        for (int64_t d = 0; d < D; d++) x[b * D + d] += y[b * D + d];
    }
    if (L->post) normed(L, norm, x, B, x);
}

/* x[B, D] += the MLP of mlp_norm(x) (post-norm: x = post_mlp_norm(x + MLP(x))). */
static void mlp(const Layer *L, float *x, int64_t B, const Work *w) {
    const int64_t F = L->F;
    normed(L, &L->mlp_norm, x, B, w->in);
    project(&L->up, w->in, B, w->proj, w);
    for (int64_t b = 0; b < B; b++) { /* the down projection's input, [B, F], into w->in */
        const float *h = w->proj + b * L->up.N;
        float *a = w->in + b * F;
        if (L->gated)
            glu_row(h, F, (int)L->act, a);
        else
            activate(h, F, (int)L->act, a);
    }
    project(&L->down, w->in, B, w->proj, w);
    residual(L, x, w->proj, B, &L->post_mlp_norm);
}

/* One decode step of one layer for B rows: x [B, D] updated in place. Self K/V: k, v [B, KH, T, Dh]
 * (strides in elements), each row's new position min(length[b], T - 1), mask [B | 1, T] (rows mask_b
 * apart; NULL: the bias hides what is not written) and an additive bias [B | 1, H | 1, T] on the self-
 * attention's logits (rows bias_b, heads bias_h apart; NULL: none); cos / sin [B, Dh] (NULL: no RoPE). Cross K/V [B, KH, S, Dh] and cmask [B | 1, S] (NULL: all real) when
 * L->cross or L->merged; row b reads cross row crows[b] (NULL: b). Every K/V is fp16 where `kv16` (a
 * half-precision cache), else fp32. Returns 0,
 * or -1 when out of memory. */
int encore_decode_layer(const Layer *L, float *x, int64_t B, const float *cos, const float *sin, void *k,
                        int64_t k_b, int64_t k_h, int64_t k_s, void *v, int64_t v_b, int64_t v_h, int64_t v_s,
                        const int64_t *length, int64_t T, const uint8_t *mask, int64_t mask_b, const float *bias,
                        int64_t bias_b, int64_t bias_h, const void *ck,
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
    w.sx = malloc(sizeof(float) * (size_t)max2(B * K / 32 + 1, (B + 15) / 16 * 16)); /* int4 groups; int8 blocks */
    w.u = malloc(sizeof(float) * (size_t)(B * K / 32 + 1));
    int failed = !w.in || !w.proj || !w.q || !w.att || !w.att2 || !w.lse || !w.lse2 || !w.qx || !w.sx || !w.u;
    if (!failed) { /* self-attention */
        normed(L, &L->attn_norm, x, B, w.in);
        project(&L->qkv, w.in, B, w.proj, &w);
        encore_rope_store(w.proj, B, H, KH, Dh, L->qkv.N, L->rope ? cos : NULL, L->rope ? sin : NULL, L->q_norm,
                          L->k_norm, L->eps, k, k_b, k_h, k_s, v, v_b, v_h, v_s, length, T, w.q, kv16);
        failed = encore_attend_one(w.q, B, H, KH, T, Dh, HD, Dh, k, k_b, k_h, k_s, v, v_b, v_h, v_s, mask, mask_b,
                                   bias, bias_b, bias_h, NULL, L->scale, L->softcap, w.att,
                                   L->merged ? w.lse : NULL, kv16);
    }
    if (!failed && L->merged) { /* one softmax over the layer's own keys and the encoder's */
        failed = encore_attend_one(w.q, B, H, KH, S, Dh, HD, Dh, ck, ck_b, ck_h, ck_s, cv, cv_b, cv_h, cv_s, cmask,
                                   cmask_b, NULL, 0, 0, crows, L->scale, L->softcap, w.att2, w.lse2, kv16);
        if (!failed) merge(w.att, w.lse, w.att2, w.lse2, B * H, Dh);
    }
    if (!failed) {
        project(&L->out, w.att, B, w.proj, &w);
        residual(L, x, w.proj, B, &L->post_attn_norm);
    }
    if (!failed && L->cross) {
        normed(L, &L->cross_norm, x, B, w.in);
        project(&L->cross_q, w.in, B, w.q, &w);
        if (L->cross_q_norm)
            for (int64_t h = 0; h < B * H; h++) rms_row(w.q + h * Dh, Dh, L->cross_q_norm, L->eps, w.q + h * Dh);
        failed = encore_attend_one(w.q, B, H, KH, S, Dh, HD, Dh, ck, ck_b, ck_h, ck_s, cv, cv_b, cv_h, cv_s, cmask,
                                   cmask_b, NULL, 0, 0, crows, L->cross_scale, L->cross_softcap, w.att, NULL, kv16);
        if (!failed) {
            project(&L->cross_out, w.att, B, w.proj, &w);
            residual(L, x, w.proj, B, &L->post_cross_norm);
        }
    }
    if (!failed) mlp(L, x, B, &w);
    free(w.in), free(w.proj), free(w.q), free(w.att), free(w.att2), free(w.lse), free(w.lse2);
    free(w.qx), free(w.sx), free(w.u);
    return failed ? -1 : 0;
}
