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

/* Decided once when the library loads (before any thread can call a kernel, so no thread sees
   it half set). TORUS_BF16_KERNEL=portable picks the kernel of CPUs without AVX512-BF16. */
static int avx512bf16_chosen;

__attribute__((constructor)) static void choose_bf16_kernel(void) {
    const char *kernel = getenv("TORUS_BF16_KERNEL");
    avx512bf16_chosen = kernel && strcmp(kernel, "portable") == 0 ? 0 : torus_has_avx512bf16();
}

static inline int use_avx512bf16(void) { return avx512bf16_chosen; }

int torus_bf16_kernel_accelerated(void) { return avx512bf16_chosen; }

long torus_bf16_packed_count(long out, long in) { return ((out + 15) / 16) * ((in + 1) / 2) * 32; }

#if defined(__x86_64__) && defined(__clang__)
/* torus_bf16_pack_strided's two shapes with vector rounding: rows read along (col_stride 1,
   an even input count), or a matrix read transposed (row_stride 1). 0 for other shapes. */
__attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw")))
static int pack_avx512(const float *w, long row_stride, long col_stride, long out, long in, uint32_t *words) {
    long pairs = (in + 1) / 2;
    if (col_stride == 1 && in % 32 == 0 && in <= 256) {
        uint32_t row_words[128];
        for (long o = 0; o < out; o++) {
            const float *row = w + o * row_stride;
            for (long k = 0; k < in; k += 32) {
                __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + k + 16), _mm512_loadu_ps(row + k));
                _mm512_storeu_si512((void *)(row_words + k / 2), (__m512i)v);
            }
            uint32_t *dst = words + (o / 16) * pairs * 16 + o % 16;
            for (long p = 0; p < pairs; p++) dst[p * 16] = row_words[p];
        }
        return 1;
    }
    if (row_stride == 1 && col_stride != 1 && out % 16 == 0) {
        for (long k = 0; k < in; k += 2) {
            const float *r0 = w + k * col_stride, *r1 = w + (k + 1) * col_stride;
            for (long o = 0; o < out; o += 16) {
                __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r0 + o)));
                __m512i hi = k + 1 < in ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r1 + o))) : _mm512_setzero_si512();
                _mm512_storeu_si512((void *)(words + ((o / 16) * pairs + k / 2) * 16), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
        return 1;
    }
    return 0;
}
#endif

void torus_bf16_pack(const float *w, long out, long in, uint16_t *packed) { torus_bf16_pack_strided(w, in, 1, out, in, packed); }

void torus_bf16_pack_strided(const float *w, long row_stride, long col_stride, long out, long in, uint16_t *packed) {
    long pairs = (in + 1) / 2, panels = (out + 15) / 16;
    /* Padding (a last panel of fewer than 16 outputs, an odd input count) stays zero. */
    if (out % 16 || in % 2) memset(packed, 0, sizeof(uint16_t) * (size_t)(panels * pairs * 32));
    uint32_t *words = (uint32_t *)(void *)packed;   /* one word: an output's pair of inputs */
#if defined(__x86_64__) && defined(__clang__)
    if (use_avx512bf16() && pack_avx512(w, row_stride, col_stride, out, in, words)) return;
#endif
    if (row_stride == 1 && col_stride != 1) {
        /* A matrix read transposed (attention's values): inputs are rows of w, read along. */
        for (long k = 0; k < in; k += 2) {
            const float *r0 = w + k * col_stride, *r1 = k + 1 < in ? w + (k + 1) * col_stride : NULL;
            for (long o = 0; o < out; o++) {
                uint32_t lo = torus_bf16_round(r0[o]), hi = r1 ? torus_bf16_round(r1[o]) : 0;
                words[((o / 16) * pairs + k / 2) * 16 + o % 16] = lo | hi << 16;
            }
        }
        return;
    }
    for (long o = 0; o < out; o++) {
        uint32_t *dst = words + (o / 16) * pairs * 16 + o % 16;
        const float *row = w + o * row_stride;
        for (long k = 0; k < in; k += 2) {
            uint32_t lo = torus_bf16_round(row[k * col_stride]), hi = k + 1 < in ? torus_bf16_round(row[(k + 1) * col_stride]) : 0;
            dst[(k / 2) * 16] = lo | hi << 16;
        }
    }
}

#if defined(__x86_64__) && defined(__clang__)
__attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw")))
static void rows_to_bf16_avx512(const float *x, long ldx, uint16_t *xb, long rows, long in) {
    long stride = 2 * ((in + 1) / 2);
    for (long r = 0; r < rows; r++) {
        const float *src = x + r * ldx;
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

void torus_bf16_widen(const uint16_t *src, float *dst, long n) {
    for (long i = 0; i < n; i++) dst[i] = torus_bf16_value(src[i]);
}

void torus_bf16_rows(const float *x, uint16_t *xb, long rows, long in) { torus_bf16_rows_strided(x, in, xb, rows, in); }

void torus_bf16_rows_strided(const float *x, long ldx, uint16_t *xb, long rows, long in) {
#if defined(__x86_64__) && defined(__clang__)
    if (use_avx512bf16()) { rows_to_bf16_avx512(x, ldx, xb, rows, in); return; }
#endif
    long stride = 2 * ((in + 1) / 2);
    for (long r = 0; r < rows; r++) {
        for (long k = 0; k < in; k++) xb[r * stride + k] = torus_bf16_round(x[r * ldx + k]);
        if (stride > in) xb[r * stride + in] = 0;
    }
}

#if defined(__x86_64__) && defined(__clang__)
/* One tile: NR rows (a compile-time constant after inlining, so the accumulators stay in
   registers) x 2 panels (32 outputs), summed over the input pairs in SPLIT interleaved partial
   sums, so that consecutive vdpbf16ps on few rows do not wait on each other. */
__attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw"), always_inline))
static inline void bf16_tile(const uint32_t *a, long lda, long pairs, const uint16_t *b0, const uint16_t *b1, float *y, long ldy,
                             long o0, __mmask16 m0, __mmask16 m1, int two, int accumulate, const int NR, const int SPLIT,
                             const uint16_t *next, long panel_pairs, const int PREFETCH) {
    __m512 acc0[6][4], acc1[6][4];
    for (int r = 0; r < NR; r++)
        for (int j = 0; j < SPLIT; j++) { acc0[r][j] = _mm512_setzero_ps(); acc1[r][j] = _mm512_setzero_ps(); }
    long kk = 0;
    for (; kk + SPLIT <= pairs; kk += SPLIT)
        for (int j = 0; j < SPLIT; j++) {
            if (PREFETCH) {  /* the next panel pair, fetched into L2 while this one is computed */
                _mm_prefetch((const char *)(next + (kk + j) * 32), _MM_HINT_T1);
                _mm_prefetch((const char *)(next + (panel_pairs + kk + j) * 32), _MM_HINT_T1);
            }
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + (kk + j) * 32), w1 = (__m512bh)_mm512_loadu_si512(b1 + (kk + j) * 32);
            for (int r = 0; r < NR; r++) {
                __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * lda + kk + j]);
                acc0[r][j] = _mm512_dpbf16_ps(acc0[r][j], av, w0);
                acc1[r][j] = _mm512_dpbf16_ps(acc1[r][j], av, w1);
            }
        }
    for (; kk < pairs; kk++) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + kk * 32), w1 = (__m512bh)_mm512_loadu_si512(b1 + kk * 32);
        for (int r = 0; r < NR; r++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * lda + kk]);
            acc0[r][0] = _mm512_dpbf16_ps(acc0[r][0], av, w0);
            acc1[r][0] = _mm512_dpbf16_ps(acc1[r][0], av, w1);
        }
    }
    for (int r = 0; r < NR; r++) {
        for (int j = 1; j < SPLIT; j++) { acc0[r][0] = _mm512_add_ps(acc0[r][0], acc0[r][j]); acc1[r][0] = _mm512_add_ps(acc1[r][0], acc1[r][j]); }
        float *row = y + r * ldy;
        if (accumulate) {
            acc0[r][0] = _mm512_add_ps(acc0[r][0], _mm512_maskz_loadu_ps(m0, row + o0));
            if (two) acc1[r][0] = _mm512_add_ps(acc1[r][0], _mm512_maskz_loadu_ps(m1, row + o0 + 16));
        }
        _mm512_mask_storeu_ps(row + o0, m0, acc0[r][0]);
        if (two) _mm512_mask_storeu_ps(row + o0 + 16, m1, acc1[r][0]);
    }
}

/* Tiles of 6 rows (12 accumulators: one weight load per panel and one broadcast per row each
   step); the last 1-5 rows by a tile of their own size. */
__attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw")))
static void linear_bf16_avx512(const uint16_t *xb, long lda, const uint16_t *packed, long panel_pairs, float *y, long ldy, long rows,
                               long in, long out, long p_begin, long p_end, int accumulate) {
    long pairs = (in + 1) / 2;
    for (long p = p_begin; p < p_end; p += 2) {
        int two = p + 1 < p_end;
        const uint16_t *b0 = packed + p * panel_pairs * 32, *b1 = packed + (p + two) * panel_pairs * 32;
        long o0 = p * 16, o1 = o0 + 16;
        __mmask16 m0 = out - o0 >= 16 ? 0xffff : (__mmask16)((1u << (out - o0)) - 1);
        __mmask16 m1 = !two ? 0 : out - o1 >= 16 ? 0xffff : (__mmask16)((1u << (out - o1)) - 1);
        /* With 8 rows and more, when a panel pair fits in L1 (up to 768 inputs), the first row
           tile fetches the next pair's weights into L2 while it computes (bench linear from
           memory, three alternating runs: 512 -> 2752 at 8 / 16 / 32 rows 290-317 / 468-507 /
           609-621 GFLOP/s against 245-261 / 377-402 / 530-563; 512 -> 1024 likewise). With fewer
           rows the hardware prefetcher alone does better, and for 1376 inputs it is a wash. */
        const uint16_t *next = p + 2 < p_end && pairs <= 384 ? packed + (p + 2) * panel_pairs * 32 : NULL;
        for (long r0 = 0; r0 < rows; r0 += 6) {
            const uint32_t *a = (const uint32_t *)(const void *)(xb + r0 * 2 * lda);
            float *yr = y + r0 * ldy;
            switch (rows - r0 < 6 ? rows - r0 : 6) {
            case 1: bf16_tile(a, lda, pairs, b0, b1, yr, ldy, o0, m0, m1, two, accumulate, 1, 4, NULL, panel_pairs, 0); break;
            case 2: bf16_tile(a, lda, pairs, b0, b1, yr, ldy, o0, m0, m1, two, accumulate, 2, 4, NULL, panel_pairs, 0); break;
            case 3: bf16_tile(a, lda, pairs, b0, b1, yr, ldy, o0, m0, m1, two, accumulate, 3, 2, NULL, panel_pairs, 0); break;
            case 4: bf16_tile(a, lda, pairs, b0, b1, yr, ldy, o0, m0, m1, two, accumulate, 4, 2, NULL, panel_pairs, 0); break;
            case 5: bf16_tile(a, lda, pairs, b0, b1, yr, ldy, o0, m0, m1, two, accumulate, 5, 1, NULL, panel_pairs, 0); break;
            default:
                if (r0 == 0 && rows >= 8 && next) bf16_tile(a, lda, pairs, b0, b1, yr, ldy, o0, m0, m1, two, accumulate, 6, 1, next, panel_pairs, 1);
                else bf16_tile(a, lda, pairs, b0, b1, yr, ldy, o0, m0, m1, two, accumulate, 6, 1, NULL, panel_pairs, 0);
                break;
            }
        }
    }
}
#endif

void torus_linear_bf16(const uint16_t *xb, const uint16_t *packed, float *y, long rows, long in, long out, long p_begin,
                       long p_end, int accumulate) {
    long pairs = (in + 1) / 2;
    torus_linear_bf16_strided(xb, pairs, packed, pairs, y, out, rows, in, out, p_begin, p_end, accumulate);
}

void torus_linear_bf16_strided(const uint16_t *xb, long lda, const uint16_t *packed, long panel_pairs, float *y, long ldy, long rows,
                               long in, long out, long p_begin, long p_end, int accumulate) {
#if defined(__x86_64__) && defined(__clang__)
    if (use_avx512bf16()) { linear_bf16_avx512(xb, lda, packed, panel_pairs, y, ldy, rows, in, out, p_begin, p_end, accumulate); return; }
#endif
    long pairs = (in + 1) / 2;
    for (long p = p_begin; p < p_end; p++)
        for (long r = 0; r < rows; r++)
            for (long c = 0; c < 16 && p * 16 + c < out; c++) {
                float s = 0;
                for (long kk = 0; kk < pairs; kk++)
                    for (int j = 0; j < 2; j++)
                        s += torus_bf16_value(xb[r * 2 * lda + 2 * kk + j]) * torus_bf16_value(packed[(p * panel_pairs + kk) * 32 + c * 2 + j]);
                float *dst = y + r * ldy + p * 16 + c;
                *dst = accumulate ? *dst + s : s;
            }
}
