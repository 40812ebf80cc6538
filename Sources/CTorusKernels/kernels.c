#include "torus_kernels.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__clang__)
#define TORUS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TORUS_CLONES
#endif

/* Cephes-style exp: x = n ln2 + r, degree-6 polynomial for e^r, 2^n from exponent bits.
   Relative error about 2e-7; below -87.34 gives 0, above 88.72 gives +inf. Branch-free so
   that loops over it vectorise. */
static inline float exp_poly(float x) {
    const float lo = -87.336544f, hi = 88.722832f;
    float xc = x < lo ? lo : (x > hi ? hi : x);
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float shifted = xc * 1.44269504f + magic;
    float n = shifted - magic;
    int32_t bits;
    memcpy(&bits, &shifted, 4);
    int32_t ni = bits - 0x4B400000;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t scale_bits = (ni + 127) << 23;
    float scale;
    memcpy(&scale, &scale_bits, 4);
    float result = p * scale;
    result = x < lo ? 0.0f : result;
    result = x > hi ? INFINITY : result;
    return result;
}

float torus_exp(float x) { return exp_poly(x); }

TORUS_CLONES
float torus_exp_shifted(float *x, long n, float shift) {
    float acc[16] = {0};
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int j = 0; j < 16; j++) {
            float e = exp_poly(x[i + j] - shift);
            x[i + j] = e;
            acc[j] += e;
        }
    }
    float sum = 0;
    for (; i < n; i++) {
        float e = exp_poly(x[i] - shift);
        x[i] = e;
        sum += e;
    }
    for (int j = 0; j < 16; j++) sum += acc[j];
    return sum;
}

TORUS_CLONES
void torus_sigmoid(const float *x, float *out, long n) {
    for (long i = 0; i < n; i++) out[i] = 1.0f / (1.0f + exp_poly(-x[i]));
}

TORUS_CLONES
float torus_max(const float *x, long n) {
    float acc[16];
    for (int j = 0; j < 16; j++) acc[j] = -INFINITY;
    long i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    float m = -INFINITY;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int j = 0; j < 16; j++) m = acc[j] > m ? acc[j] : m;
    return m;
}

TORUS_CLONES
void torus_adamw(float *p, const float *g, float *m, float *v, long n, float b1, float b2, float eps,
                 float decay, float step_size, float c2root) {
    const float inv_c2root = 1.0f / c2root;
    for (long i = 0; i < n; i++) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) * inv_c2root + eps);
    }
}

TORUS_CLONES
double torus_sum_squares(const float *x, long n) {
    double acc[8] = {0};
    long i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
    double s = 0;
    for (; i < n; i++) s += (double)x[i] * (double)x[i];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

TORUS_CLONES
void torus_scale(float *x, long n, float s) {
    for (long i = 0; i < n; i++) x[i] *= s;
}

/* The per-core fp32 peak: independent FMA chains (more than latency x pipes, fewer than the
   vector registers: 16 of 32 with AVX-512, 12 of 16 with AVX2) keep both FMA pipes busy. */
#define TORUS_FMA_CHAINS 16
#define TORUS_FMA_CHAINS_AVX2 12
#if defined(__x86_64__) && defined(__clang__)
typedef float torus_v16 __attribute__((vector_size(64)));
typedef float torus_v8 __attribute__((vector_size(32)));

/* One FMA loop per ISA: `chains` accumulators of `lanes`-float vectors; the empty asm keeps the
   compiler from folding iterations (constraint "v" for zmm, "x" for ymm registers). */
#define TORUS_FMA_LOOP(name, isa, vec, lanes, chains, reg)                                        \
    __attribute__((target(isa))) static double name(long iterations, float *sink) {                \
        vec acc[chains];                                                                           \
        vec m = (vec){0} + 0.999999f, a = (vec){0} + 1e-7f;                                        \
        for (int j = 0; j < chains; j++) acc[j] = (vec){0} + (float)j;                             \
        for (long i = 0; i < iterations; i++) {                                                    \
            for (int j = 0; j < chains; j++) acc[j] = __builtin_elementwise_fma(acc[j], m, a);     \
            __asm__ volatile("" : reg(acc[0]), reg(acc[1]), reg(acc[2]), reg(acc[3]));             \
        }                                                                                          \
        float s = 0;                                                                               \
        for (int j = 0; j < chains; j++) for (int k = 0; k < lanes; k++) s += acc[j][k];           \
        *sink = s;                                                                                 \
        return 2.0 * lanes * chains * (double)iterations;                                          \
    }
TORUS_FMA_LOOP(fma_loop_avx512, "avx512f", torus_v16, 16, TORUS_FMA_CHAINS, "+v")
TORUS_FMA_LOOP(fma_loop_avx2, "avx2,fma", torus_v8, 8, TORUS_FMA_CHAINS_AVX2, "+x")
#endif

static double fma_loop_sse(long iterations, float *sink) {
    float acc[TORUS_FMA_CHAINS][4];
    for (int j = 0; j < TORUS_FMA_CHAINS; j++) for (int k = 0; k < 4; k++) acc[j][k] = (float)j;
    for (long i = 0; i < iterations; i++)
        for (int j = 0; j < TORUS_FMA_CHAINS; j++) for (int k = 0; k < 4; k++) acc[j][k] = acc[j][k] * 0.999999f + 1e-7f;
    float s = 0;
    for (int j = 0; j < TORUS_FMA_CHAINS; j++) for (int k = 0; k < 4; k++) s += acc[j][k];
    *sink = s;
    return 2.0 * 4 * TORUS_FMA_CHAINS * (double)iterations;
}

double torus_fma_loop(long iterations, int *width, float *sink) {
#if defined(__x86_64__) && defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) { *width = 16; return fma_loop_avx512(iterations, sink); }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) { *width = 8; return fma_loop_avx2(iterations, sink); }
#endif
    *width = 4;
    return fma_loop_sse(iterations, sink);
}
