/* What feeds AMX's tiles on this CPU: the rate of csrc/rows.c's 2 x 2 tile loop (AMX_TILES_2X2, bf16)
 * with its operands in L1, in L2, and of the tile products alone (docs/NOTES.md, #38). One thread; run
 * two at once to see what two cores get together.
 *
 *     gcc -O3 -march=native -o /tmp/amx_feed examples/amx_feed.c && /tmp/amx_feed
 *     /tmp/amx_feed & /tmp/amx_feed; wait
 */
#include <stdio.h>
#include <time.h>

#include "../encore/model/csrc/amx.h"

#ifdef ENCORE_AMX
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* rows x inputs of packed activations against outputs x inputs of packed weights, as csrc/rows.c runs a block */
static void loop(const uint16_t *xp, const uint16_t *wb, int64_t rows, int64_t inputs, int64_t outputs, float *out) {
    const int64_t KB = inputs / 32;
    for (int64_t mb = 0; mb < rows / 16; mb += 2)
        for (int64_t nt = 0; nt < outputs / 16; nt += 2) {
            const uint16_t *x0 = xp + mb * KB * 512, *w0 = wb + nt * KB * 512;
            AMX_TILES_2X2(_tile_dpbf16ps, KB, x0, x0 + KB * 512, 512, 64, w0, w0 + KB * 512, 512, 64, 1, 1, (void)0);
            _tile_stored(0, out, 128);
            _tile_stored(1, out + 16, 128);
            _tile_stored(2, out + 512, 128);
            _tile_stored(3, out + 528, 128);
        }
}

int main(void) {
    if (!amx_permitted()) return puts("no AMX tiles here"), 1;
    amx_tiles_on();
    static float out[1024] __attribute__((aligned(64)));
    static uint16_t tile[512] __attribute__((aligned(64)));
    _tile_loadd(4, tile, 64); /* (a tile's number is part of the instruction) */
    _tile_loadd(5, tile, 64);
    _tile_loadd(6, tile, 64);
    _tile_loadd(7, tile, 64);
    double start = now();
    const long n = 2000000;
    for (long i = 0; i < n; i++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    printf("tile products alone: %.0f GFLOP/s\n", 4.0 * n * 16 * 16 * 32 * 2 / (now() - start) / 1e9);
    const int64_t shapes[][3] = {{32, 256, 32}, {32, 512, 32}, {64, 1024, 128}, {512, 1024, 128}, {512, 4096, 64}};
    for (int s = 0; s < 5; s++) {
        const int64_t rows = shapes[s][0], inputs = shapes[s][1], outputs = shapes[s][2];
        uint16_t *xp = aligned_alloc(64, rows * inputs * 2), *wb = aligned_alloc(64, outputs * inputs * 2);
        for (int64_t i = 0; i < rows * inputs; i++) xp[i] = 0x3f80;
        for (int64_t i = 0; i < outputs * inputs; i++) wb[i] = 0x3f80;
        const double flops = 2.0 * rows * inputs * outputs;
        const long reps = (long)(4e9 / flops) + 1;
        double best = 1e9;
        for (int r = 0; r < 5; r++) {
            start = now();
            for (long i = 0; i < reps; i++) loop(xp, wb, rows, inputs, outputs, out);
            const double t = (now() - start) / reps;
            best = t < best ? t : best;
        }
        printf("%4ld rows x %4ld inputs against %3ld outputs (%4ld KiB): %.0f GFLOP/s\n", (long)rows, (long)inputs,
               (long)outputs, (long)((rows + outputs) * inputs * 2 / 1024), flops / best / 1e9);
        free(xp), free(wb);
    }
    _tile_release();
    return 0;
}
#else
int main(void) { return puts("built without AMX (needs -march=native on an AMX CPU, Linux)"), 1; }
#endif
