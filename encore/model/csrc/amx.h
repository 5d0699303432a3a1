/* What the kernels that use AMX's tiles share (csrc/int8.c, rows.c, attend.c): Linux's permission for the
 * tiles' state and the tile configuration they all use. Defines ENCORE_AMX where the compiler targets AMX
 * (int8 and bf16 tiles) on Linux; elsewhere nothing. */
#ifndef ENCORE_AMX_H
#define ENCORE_AMX_H
#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__linux__)
#define ENCORE_AMX 1
#include <immintrin.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Whether this process may use the tiles: Linux hands AMX's state to a process that asks (once; without
 * it the first tile instruction is SIGILL). */
static int amx_permitted(void) {
    static int state = 0; /* 0: not asked; 1: granted; -1: refused */
    if (state == 0) state = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0 ? 1 : -1;
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
#endif
#endif
