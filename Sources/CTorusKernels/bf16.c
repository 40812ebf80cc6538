#include "torus_kernels.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__clang__)
#include <cpuid.h>
#include <immintrin.h>
#endif

/* bfloat16 linear layers for inference: weights rounded to bfloat16 once and packed in panels
   of 16 output features, activations rounded per call, products summed in fp32. With
   AVX512-BF16 (vdpbf16ps: 32 products per instruction) twice the multiply rate of fp32 FMA and
   half the weight bytes; elsewhere a portable kernel gives the same products (a product of two
   bfloat16 values is exact in fp32) summed in another order. */

uint16_t torus_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int torus_has_avx512bf16(void) {
#if defined(__x86_64__) && defined(__clang__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 16))) return 0; /* AVX512F */
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return 0;  /* AVX512_BF16 */
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;          /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6) == 0xe6; /* the OS saves the zmm and mask registers */
#else
    return 0;
#endif
}

static int use_avx512bf16(void) {
    static int cached = -1;
    if (cached < 0) {
        const char *kernel = getenv("TORUS_BF16_KERNEL"); /* "portable": the kernel of CPUs without AVX512-BF16 */
        cached = kernel && strcmp(kernel, "portable") == 0 ? 0 : torus_has_avx512bf16();
    }
    return cached;
}

long torus_bf16_packed_count(long out, long in) { return ((out + 15) / 16) * ((in + 1) / 2) * 32; }

void torus_bf16_pack(const float *w, long out, long in, uint16_t *packed) {
    long pairs = (in + 1) / 2, panels = (out + 15) / 16;
    memset(packed, 0, sizeof(uint16_t) * (size_t)(panels * pairs * 32));
    for (long o = 0; o < out; o++)
        for (long k = 0; k < in; k++)
            packed[((o / 16) * pairs + k / 2) * 32 + (o % 16) * 2 + (k % 2)] = torus_bf16_round(w[o * in + k]);
}

#if defined(__x86_64__) && defined(__clang__)
__attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw")))
static void rows_to_bf16_avx512(const float *x, uint16_t *xb, long rows, long in) {
    long stride = 2 * ((in + 1) / 2);
    for (long r = 0; r < rows; r++) {
        const float *src = x + r * in;
        uint16_t *dst = xb + r * stride;
        long k = 0;
        for (; k + 32 <= in; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + k + 16), _mm512_loadu_ps(src + k));
            _mm512_storeu_si512((void *)(dst + k), (__m512i)v);
        }
        for (; k < in; k++) dst[k] = torus_bf16_round(src[k]);
        if (stride > in) dst[in] = 0;
    }
}
#endif

void torus_bf16_rows(const float *x, uint16_t *xb, long rows, long in) {
#if defined(__x86_64__) && defined(__clang__)
    if (use_avx512bf16()) { rows_to_bf16_avx512(x, xb, rows, in); return; }
#endif
    long stride = 2 * ((in + 1) / 2);
    for (long r = 0; r < rows; r++) {
        for (long k = 0; k < in; k++) xb[r * stride + k] = torus_bf16_round(x[r * in + k]);
        if (stride > in) xb[r * stride + in] = 0;
    }
}

#if defined(__x86_64__) && defined(__clang__)
/* 6 rows x 2 panels (32 outputs) of fp32 accumulators: 12 zmm, each step one weight load per
   panel and one broadcast pair of activations per row. */
#define BF16_ROWS 6
__attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw")))
static void linear_bf16_avx512(const uint16_t *xb, const uint16_t *packed, float *y, long rows, long in, long out,
                               long p_begin, long p_end, int accumulate) {
    long pairs = (in + 1) / 2;
    for (long p = p_begin; p < p_end; p += 2) {
        int two = p + 1 < p_end;
        const uint16_t *b0 = packed + p * pairs * 32, *b1 = packed + (p + two) * pairs * 32;
        long o0 = p * 16, o1 = o0 + 16;
        __mmask16 m0 = out - o0 >= 16 ? 0xffff : (__mmask16)((1u << (out - o0)) - 1);
        __mmask16 m1 = !two ? 0 : out - o1 >= 16 ? 0xffff : (__mmask16)((1u << (out - o1)) - 1);
        for (long r0 = 0; r0 < rows; r0 += BF16_ROWS) {
            int nr = rows - r0 < BF16_ROWS ? (int)(rows - r0) : BF16_ROWS;
            __m512 acc0[BF16_ROWS], acc1[BF16_ROWS];
            for (int r = 0; r < BF16_ROWS; r++) { acc0[r] = _mm512_setzero_ps(); acc1[r] = _mm512_setzero_ps(); }
            const uint32_t *a = (const uint32_t *)(const void *)(xb + r0 * 2 * pairs);
            if (nr == BF16_ROWS) {
                for (long kk = 0; kk < pairs; kk++) {
                    __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + kk * 32), w1 = (__m512bh)_mm512_loadu_si512(b1 + kk * 32);
                    for (int r = 0; r < BF16_ROWS; r++) {
                        __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * pairs + kk]);
                        acc0[r] = _mm512_dpbf16_ps(acc0[r], av, w0);
                        acc1[r] = _mm512_dpbf16_ps(acc1[r], av, w1);
                    }
                }
            } else if (nr <= 2) {
                /* Few rows (decoding): four partial sums per accumulator over interleaved input
                   pairs, so that consecutive vdpbf16ps do not wait on each other. */
                __m512 part0[2][4], part1[2][4];
                for (int r = 0; r < 2; r++)
                    for (int j = 0; j < 4; j++) { part0[r][j] = _mm512_setzero_ps(); part1[r][j] = _mm512_setzero_ps(); }
                long kk = 0;
                for (; kk + 4 <= pairs; kk += 4)
                    for (int j = 0; j < 4; j++) {
                        __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + (kk + j) * 32), w1 = (__m512bh)_mm512_loadu_si512(b1 + (kk + j) * 32);
                        for (int r = 0; r < nr; r++) {
                            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * pairs + kk + j]);
                            part0[r][j] = _mm512_dpbf16_ps(part0[r][j], av, w0);
                            part1[r][j] = _mm512_dpbf16_ps(part1[r][j], av, w1);
                        }
                    }
                for (; kk < pairs; kk++) {
                    __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + kk * 32), w1 = (__m512bh)_mm512_loadu_si512(b1 + kk * 32);
                    for (int r = 0; r < nr; r++) {
                        __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * pairs + kk]);
                        part0[r][0] = _mm512_dpbf16_ps(part0[r][0], av, w0);
                        part1[r][0] = _mm512_dpbf16_ps(part1[r][0], av, w1);
                    }
                }
                for (int r = 0; r < nr; r++) {
                    acc0[r] = _mm512_add_ps(_mm512_add_ps(part0[r][0], part0[r][1]), _mm512_add_ps(part0[r][2], part0[r][3]));
                    acc1[r] = _mm512_add_ps(_mm512_add_ps(part1[r][0], part1[r][1]), _mm512_add_ps(part1[r][2], part1[r][3]));
                }
            } else {
                for (long kk = 0; kk < pairs; kk++) {
                    __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + kk * 32), w1 = (__m512bh)_mm512_loadu_si512(b1 + kk * 32);
                    for (int r = 0; r < nr; r++) {
                        __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * pairs + kk]);
                        acc0[r] = _mm512_dpbf16_ps(acc0[r], av, w0);
                        acc1[r] = _mm512_dpbf16_ps(acc1[r], av, w1);
                    }
                }
            }
            for (int r = 0; r < nr; r++) {
                float *row = y + (r0 + r) * out;
                if (accumulate) {
                    acc0[r] = _mm512_add_ps(acc0[r], _mm512_maskz_loadu_ps(m0, row + o0));
                    if (two) acc1[r] = _mm512_add_ps(acc1[r], _mm512_maskz_loadu_ps(m1, row + o1));
                }
                _mm512_mask_storeu_ps(row + o0, m0, acc0[r]);
                if (two) _mm512_mask_storeu_ps(row + o1, m1, acc1[r]);
            }
        }
    }
}
#endif

void torus_linear_bf16(const uint16_t *xb, const uint16_t *packed, float *y, long rows, long in, long out, long p_begin,
                       long p_end, int accumulate) {
#if defined(__x86_64__) && defined(__clang__)
    if (use_avx512bf16()) { linear_bf16_avx512(xb, packed, y, rows, in, out, p_begin, p_end, accumulate); return; }
#endif
    long pairs = (in + 1) / 2;
    for (long p = p_begin; p < p_end; p++)
        for (long r = 0; r < rows; r++)
            for (long c = 0; c < 16 && p * 16 + c < out; c++) {
                float s = 0;
                for (long kk = 0; kk < pairs; kk++)
                    for (int j = 0; j < 2; j++)
                        s += bf16_value(xb[r * 2 * pairs + 2 * kk + j]) * bf16_value(packed[(p * pairs + kk) * 32 + c * 2 + j]);
                float *dst = y + r * out + p * 16 + c;
                *dst = accumulate ? *dst + s : s;
            }
}
