/* The decoding attention kernel alone (Sources/CTorusKernels: torus_decode_attention and its
   bfloat16 twin): one query row of 8 heads (4 key/value heads, head dimension 64) against N keys
   in 16-row pool blocks scattered over the pool, in two runs with a gap, one thread. With R > 1
   (second argument) the calls cycle over R sequences' blocks spread over a pool R times larger,
   so that keys and values come from memory rather than cache, as in a serving step.
     clang -O3 -fno-math-errno -ISources/CTorusKernels/include \
       bench/decode-attention.c Sources/CTorusKernels/kernels.c -o /tmp/decode-attention -lm
     /tmp/decode-attention 400        # cache-resident
     /tmp/decode-attention 400 256    # from memory (256 sequences, 200 MB of fp32 keys and values)
   Prints microseconds per call and the rate over the keys and values read. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "torus_kernels.h"
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 400, seqs = argc > 2 ? atol(argv[2]) : 1, hq = 8, hk = 4, d = 64, bs = 16, kw = hk * d;
    long nblocks = (n + bs - 1) / bs + 1, pool = nblocks * 4 * seqs;
    float *keys = malloc(sizeof(float) * pool * bs * kw), *values = malloc(sizeof(float) * pool * bs * kw);
    uint16_t *kb = malloc(2 * pool * bs * kw), *vb = malloc(2 * pool * bs * kw);
    for (long i = 0; i < pool * bs * kw; i++) { keys[i] = (rand() / (float)RAND_MAX - 0.5f); values[i] = (rand() / (float)RAND_MAX - 0.5f);
        uint32_t u; memcpy(&u, &keys[i], 4); kb[i] = u >> 16; memcpy(&u, &values[i], 4); vb[i] = u >> 16; }
    int *blocks = malloc(sizeof(int) * nblocks * seqs);  /* sequence s: blocks[s * nblocks ...] */
    for (long b = 0; b < nblocks * seqs; b++) blocks[b] = (int)((b * 7 + 3) % pool);
    long run_rows[2] = {0, n / 2 + 3}, run_counts[2] = {n / 2, n - n / 2 - 3};  /* two runs, a gap */
    float q[8 * 64], out[8 * 64], lse[8], *scores = malloc(sizeof(float) * hq * (n + 16));
    for (int i = 0; i < 8 * 64; i++) q[i] = rand() / (float)RAND_MAX - 0.5f;
    double sum = 0;
    for (int bf = 0; bf < 2; bf++) {
        int iters = 20000;
        double t0 = now();
        for (int it = 0; it < iters; it++) {
            const int *sb = blocks + (it % seqs) * nblocks;
            if (bf) torus_decode_attention_bf16(q, kb, vb, sb, bs, run_rows, run_counts, 2, hq, hk, d, 0.125f, out, lse, scores);
            else torus_decode_attention(q, keys, values, sb, bs, run_rows, run_counts, 2, hq, hk, d, 0.125f, out, lse, scores);
            sum += out[it % 512];
        }
        double dt = (now() - t0) / iters;
        long nk = run_counts[0] + run_counts[1];
        printf("%s: %ld keys: %.2f us per call, %.2f GB/s of K+V, %.2f GFLOP/s (checksum %.4f, out[5] %.6f lse0 %.6f)\n", bf ? "bf16" : "fp32", nk, dt * 1e6,
               (double)nk * kw * 2 * (bf ? 2 : 4) / dt / 1e9, 4.0 * nk * hq * d / dt / 1e9, sum, out[5], lse[0]);
    }
    return 0;
}
