/* IEEE fp16 <-> fp32 for the kernels: F16C instructions where the compiler targets them, plain C
 * otherwise (round to nearest even). Included by decode.c and int4.c (and through them layer.c). */
#ifndef ENCORE_HALF_H
#define ENCORE_HALF_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

typedef uint16_t half; /* IEEE fp16 bits */

static inline float h2f(half h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF;
    float f;
    if (e == 0) {
        f = ldexpf((float)m, -24); /* zero, subnormal */
    } else if (e == 31) {
        f = m ? NAN : INFINITY;
    } else {
        uint32_t bits = ((e + 112) << 23) | (m << 13);
        memcpy(&f, &bits, 4);
    }
    uint32_t bits;
    memcpy(&bits, &f, 4);
    bits |= sign;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline half f2h(float f) {
#ifdef __F16C__
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    const float a = fabsf(f);
    if (a != a) return (half)(sign | 0x7E00);         /* NaN */
    if (a >= 65520.f) return (half)(sign | 0x7C00);   /* overflow: inf */
    if (a < 6.103515625e-05f)                          /* subnormal or zero: multiples of 2^-24 */
        return (half)(sign | (uint32_t)nearbyintf(a * 16777216.f));
    uint32_t bits;
    memcpy(&bits, &a, 4);
    const uint32_t e = (bits >> 23) - 112, m = bits & 0x7FFFFF, rest = m & 0x1FFF;
    uint32_t out = (e << 10) | (m >> 13);
    if (rest > 0x1000 || (rest == 0x1000 && (out & 1))) out++; /* to nearest even (may carry into e) */
    return (half)(sign | out);
#endif
}

/* f2h saturated at fp16's largest finite value: an outlier is stored as +-65504, not inf (the cache's
 * prefill writes clamp the same way: encore/model/cache.py). */
static inline half f2h_saturated(float f) { return f2h(fminf(fmaxf(f, -65504.f), 65504.f)); }
#endif
