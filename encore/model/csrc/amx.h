/* What the kernels that use AMX's tiles share (csrc/int8.c, rows.c, attend.c): Linux's permission for the
 * tiles' state and the tile configuration they all use. Defines ENCORE_AMX where the compiler targets AMX
 * (int8 and bf16 tiles) on Linux; elsewhere nothing. */
#ifndef ENCORE_AMX_H
#define ENCORE_AMX_H
#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__linux__)
#define ENCORE_AMX 1
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Whether this process may use the tiles: Linux hands AMX's state to a process that asks (once; without
 * it the first tile instruction is SIGILL). ENCORE_DISABLE_AMX=1 in the environment says no: the kernels
 * then take the paths a CPU without AMX takes (AVX512-BF16, VNNI), to measure those on an AMX machine. */
static int amx_permitted(void) {
    static int state = 0; /* 0: not asked; 1: granted; -1: refused */
    if (state == 0) {
        const char *off = getenv("ENCORE_DISABLE_AMX");
        if (off && *off && strcmp(off, "0") != 0)
            state = -1;
        else
            state = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0 ? 1 : -1;
    }
    return state == 1;
}

/* Palette 1 with all 8 tiles of 16 rows x 64 bytes, loaded for the calling thread (the configuration is
 * per thread: each OpenMP thread loads it, and releases the tiles with _tile_release when done). */
static inline void amx_tiles_on(void) {
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } cfg = {0};
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
}

/* Accumulator tiles 0-3 = the 2 x 2 products of first operands a0, a1 (tiles 4, 5) and second operands
 * b0, b1 (tiles 6, 7), summed over `steps` steps: 0 = a0 b0, 1 = a0 b1, 2 = a1 b0, 3 = a1 b1; a1 and b1
 * only where `two_a` / `two_b`. A step moves a by `a_step` and b by `b_step` elements; a tile's rows are
 * `a_stride` / `b_stride` bytes apart. DP: the product (_tile_dpbf16ps, _tile_dpbssd). BESIDE: a statement
 * run after each step's products, while the tile unit works through them (csrc/rows.c's vector work; the
 * others pass `(void)0`). The microkernel of every AMX product here (csrc/int8.c, rows.c, attend.c). */
#define AMX_TILES_2X2(DP, steps, a0, a1, a_step, a_stride, b0, b1, b_step, b_stride, two_a, two_b, BESIDE) \
    do {                                                                                                  \
        _tile_zero(0);                                                                                    \
        _tile_zero(1);                                                                                    \
        _tile_zero(2);                                                                                    \
        _tile_zero(3);                                                                                    \
        for (int64_t s_ = 0; s_ < (steps); s_++) {                                                        \
            _tile_loadd(4, (a0) + s_ * (a_step), (a_stride));                                             \
            _tile_loadd(6, (b0) + s_ * (b_step), (b_stride));                                             \
            DP(0, 4, 6);                                                                                  \
            if (two_b) {                                                                                  \
                _tile_loadd(7, (b1) + s_ * (b_step), (b_stride));                                         \
                DP(1, 4, 7);                                                                              \
            }                                                                                             \
            if (two_a) {                                                                                  \
                _tile_loadd(5, (a1) + s_ * (a_step), (a_stride));                                         \
                DP(2, 5, 6);                                                                              \
                if (two_b) DP(3, 5, 7);                                                                   \
            }                                                                                             \
            BESIDE;                                                                                       \
        }                                                                                                 \
    } while (0)
#endif
#endif
