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
float torus_exp_shifted(float *x, long n, float shift, float scale) {
    float acc[16] = {0};
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int j = 0; j < 16; j++) {
            float e = exp_poly((x[i + j] - shift) * scale);
            x[i + j] = e;
            acc[j] += e;
        }
    }
    float sum = 0;
    for (; i < n; i++) {
        float e = exp_poly((x[i] - shift) * scale);
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

/* y[r, o] (+)= sum_k x[r, k] w[o, k] for rows r < rows and outputs o in [o_begin, o_end): the
   weights are read once for all rows (tiles of 4 rows x 3 weight rows: 12 vector accumulators,
   7 loads per 12 FMAs, weight rows kept in cache while the row tiles pass), where sgemm would
   first copy (pack) the whole weight matrix and a matrix-vector product per row would read the
   weights once per row. For the few rows of a decoding step. */
#if defined(__x86_64__) && defined(__clang__)
/* Tiles of R rows x J weight rows: R*J accumulators plus J weight vectors and one row vector
   must fit the vector registers (16 with AVX2, 32 with AVX-512). */
#define TORUS_ROWS_KERNEL(name, isa, vec, lanes, R, J)                                            \
    __attribute__((target(isa))) static void name(const float *x, const float *w, float *y, long rows, long in, \
                                                  long out, long o_begin, long o_end, int accumulate) {          \
        const long kv = in / lanes * lanes;                                                        \
        for (long o = o_begin; o < o_end; o += J) {                                               \
            const long nj = o_end - o < J ? o_end - o : J;                                         \
            const float *ws[J];                                                                    \
            for (int j = 0; j < J; j++) ws[j] = w + (o + (j < nj ? j : 0)) * in;                   \
            for (long r = 0; r < rows; r += R) {                                                   \
                const long ni = rows - r < R ? rows - r : R;                                       \
                const float *xs[R];                                                                \
                for (int i = 0; i < R; i++) xs[i] = x + (r + (i < ni ? i : 0)) * in;               \
                vec acc[R][J];                                                                     \
                for (int i = 0; i < R; i++) for (int j = 0; j < J; j++) acc[i][j] = (vec){0};      \
                for (long k = 0; k < kv; k += lanes) {                                             \
                    vec wv[J];                                                                     \
                    for (int j = 0; j < J; j++) __builtin_memcpy(&wv[j], ws[j] + k, sizeof(vec)); \
                    for (int i = 0; i < R; i++) {                                                  \
                        vec u;                                                                     \
                        __builtin_memcpy(&u, xs[i] + k, sizeof(vec));                              \
                        for (int j = 0; j < J; j++) acc[i][j] = __builtin_elementwise_fma(u, wv[j], acc[i][j]); \
                    }                                                                              \
                }                                                                                  \
                for (long i = 0; i < ni; i++) {                                                    \
                    for (long j = 0; j < nj; j++) {                                                \
                        float s = 0;                                                               \
                        for (int l = 0; l < lanes; l++) s += acc[i][j][l];                         \
                        for (long k = kv; k < in; k++) s += xs[i][k] * ws[j][k];                   \
                        float *dst = y + (r + i) * out + o + j;                                    \
                        *dst = accumulate ? *dst + s : s;                                          \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }
/* Up to 12 rows: one weight row against 8 rows at a time (`torus bench linear` on AVX2: 74-79
   GFLOP/s at 8-12 rows, against 52-57 for 4 x 3 tiles); more rows: 4 x 3 tiles. */
TORUS_ROWS_KERNEL(linear_rows_avx512_few, "avx512f", torus_v16, 16, 8, 2)
TORUS_ROWS_KERNEL(linear_rows_avx512, "avx512f", torus_v16, 16, 4, 4)
TORUS_ROWS_KERNEL(linear_rows_avx2_few, "avx2,fma", torus_v8, 8, 8, 1)
TORUS_ROWS_KERNEL(linear_rows_avx2, "avx2,fma", torus_v8, 8, 4, 3)
#endif

static void linear_rows_generic(const float *x, const float *w, float *y, long rows, long in, long out, long o_begin,
                                long o_end, int accumulate) {
    for (long o = o_begin; o < o_end; o++)
        for (long r = 0; r < rows; r++) {
            float s = 0;
            for (long k = 0; k < in; k++) s += x[r * in + k] * w[o * in + k];
            y[r * out + o] = accumulate ? y[r * out + o] + s : s;
        }
}

void torus_linear_rows(const float *x, const float *w, float *y, long rows, long in, long out, long o_begin, long o_end,
                       int accumulate) {
#if defined(__x86_64__) && defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        (rows <= 12 ? linear_rows_avx512_few : linear_rows_avx512)(x, w, y, rows, in, out, o_begin, o_end, accumulate);
        return;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        (rows <= 12 ? linear_rows_avx2_few : linear_rows_avx2)(x, w, y, rows, in, out, o_begin, o_end, accumulate);
        return;
    }
#endif
    linear_rows_generic(x, w, y, rows, in, out, o_begin, o_end, accumulate);
}

/* LLaMA's RMSNorm of rows [row_begin, row_end) of x [rows, dim]: y = x / sqrt(mean(x^2) + eps) * w,
   with each row's reciprocal RMS in rstd. */
TORUS_CLONES
void torus_rms_norm(const float *x, const float *w, float *y, float *rstd, long row_begin, long row_end, long dim, float eps) {
#pragma clang fp reassociate(on)
    for (long r = row_begin; r < row_end; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        float ss = 0;
        for (long i = 0; i < dim; i++) ss += xr[i] * xr[i];
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        rstd[r] = inv;
        for (long i = 0; i < dim; i++) yr[i] = w[i] * (xr[i] * inv);
    }
}

/* A key or value element of the pool: fp32, or bfloat16 (the top half of an fp32). */
static inline float kv_element(const void *base, long index, int bf16) {
    return bf16 ? torus_bf16_value(((const uint16_t *)base)[index]) : ((const float *)base)[index];
}

/* q . the head_dim elements of a pool row from `index`. fp32 rows go in 16 lanes when head_dim
   is a multiple of 16: the toolchain's clang 21 otherwise unrolls a constant head_dim of 64 into
   64 scalar products (2.7x slower, bench/decode-attention.c); bfloat16 rows vectorise as a plain
   sum and run slower in lanes. */
__attribute__((always_inline))
static inline float kv_dot(const float *q, const void *kv, long index, int bf16, long head_dim) {
#pragma clang fp reassociate(on)
    if (bf16 || head_dim % 16 != 0) {
        float s = 0;
        for (long c = 0; c < head_dim; c++) s += q[c] * kv_element(kv, index + c, bf16);
        return s;
    }
    float lanes[16] = {0};
    for (long c = 0; c < head_dim; c += 16)
        for (long l = 0; l < 16; l++) lanes[l] += q[c + l] * kv_element(kv, index + c + l, bf16);
    float s = 0;
    for (long l = 0; l < 16; l++) s += lanes[l];
    return s;
}

/* The pool row offset of each visible key in turn: runs of consecutive positions, each split over
   blocks of `block_size` rows (one division per run, not per key). */
#define FOR_EACH_KEY_ROW(row, j, body) FOR_EACH_KEY_ROW_AHEAD(row, j, (const char *)0, 0, body)

/* The same, and when `ahead` is not null, each row also asks for the row one block further
   in the same run (`ahead` + its offset x `row_bytes`, into L2): the pool's blocks lie anywhere,
   so the hardware prefetcher, which follows addresses within a block, stalls at each new block
   (bench/decode-attention.c from memory, 256 sequences of 317 keys, with the values asked for
   during the keys' pass: bf16 36.8-36.9 -> 15.7-17.2 us a call, fp32 48.0 -> 34.4; in cache,
   397 keys, 13.0 -> 14.1 us). */
#define FOR_EACH_KEY_ROW_AHEAD(row, j, ahead, row_bytes, body)                                     \
    do {                                                                                           \
        long j = 0;                                                                                \
        for (long r_ = 0; r_ < runs; r_++) {                                                       \
            long blk_ = run_rows[r_] / block_size, off_ = run_rows[r_] % block_size;               \
            const long last_ = (run_rows[r_] + run_counts[r_] - 1) / block_size;                   \
            for (long i_ = 0; i_ < run_counts[r_]; i_++, j++) {                                    \
                const long row = ((long)blocks[blk_] * block_size + off_) * kw;                   \
                if ((ahead) && blk_ < last_) {                                                     \
                    const char *next_ = (ahead) + ((long)blocks[blk_ + 1] * block_size + off_) * (row_bytes); \
                    for (long b_ = 0; b_ < (row_bytes); b_ += 64) __builtin_prefetch(next_ + b_, 0, 2); \
                }                                                                                  \
                if (++off_ == block_size) { off_ = 0; blk_++; }                                    \
                body                                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* One query row per head against keys and values spread over pool blocks (a decoding step's
   row of one sequence): every key is visible. Keys and values are read once for all heads
   (grouped-query attention: the query heads of a group share a key/value head). `bf16`,
   `head_dim` and `group` are constants where the callers below specialise them, so that the
   products unroll and each group's outputs stay in registers across the keys. */
__attribute__((always_inline))
static inline void decode_attention(const float *q, const void *keys, const void *values, int bf16, const int *blocks,
                                    long block_size, const long *run_rows, const long *run_counts, long runs,
                                    long query_heads, long kv_heads, long head_dim, long group, float scale, float *out,
                                    float *lse, float *scores) {
#pragma clang fp reassociate(on)
    const long kw = kv_heads * head_dim;
    long n = 0;
    for (long r = 0; r < runs; r++) n += run_counts[r];
    /* scores[h * n + j] = scale * q_h . k_j */
    const long element = bf16 ? 2 : 4, row_bytes = kw * element;
    FOR_EACH_KEY_ROW_AHEAD(row, j, (const char *)keys, row_bytes, {
        /* This key's values, wanted after the scores: asked for now, into L2 (past L2's size,
           32K keys, still 3.2 against 4.2 ms a call: the value pass then reads from L3). */
        for (long b = 0; b < row_bytes; b += 64) __builtin_prefetch((const char *)values + row * element + b, 0, 2);
        for (long g = 0; g < kv_heads; g++) {
            const long kh = row + g * head_dim;
            for (long u = 0; u < group; u++) {
                const long h = g * group + u;
                const float *qh = q + h * head_dim;
                scores[h * n + j] = kv_dot(qh, keys, kh, bf16, head_dim) * scale;
            }
        }
    });
    for (long h = 0; h < query_heads; h++) {
        float *s = scores + h * n, m = -INFINITY;
        for (long t = 0; t < n; t++) m = s[t] > m ? s[t] : m;
        float sum = 0;
        for (long t = 0; t < n; t++) { s[t] = exp_poly(s[t] - m); sum += s[t]; }
        const float inv = n > 0 ? 1.0f / sum : 0.0f;
        for (long t = 0; t < n; t++) s[t] *= inv;
        lse[h] = n > 0 ? m + logf(sum) : -INFINITY;
    }
    /* out_h = sum_j p_hj v_j, a key/value head at a time: its query heads' sums stay local. */
    for (long g = 0; g < kv_heads; g++) {
        float acc[4][64];
        const int local = head_dim <= 64 && group <= 4;
        float *o = out + g * group * head_dim;
        if (local) {
            for (long u = 0; u < group; u++)
                for (long c = 0; c < head_dim; c++) acc[u][c] = 0;
        } else {
            for (long c = 0; c < group * head_dim; c++) o[c] = 0;
        }
        FOR_EACH_KEY_ROW(row, j, {
            const long vh = row + g * head_dim;
            for (long u = 0; u < group; u++) {
                const float p = scores[(g * group + u) * n + j];
                if (local) {
                    for (long c = 0; c < head_dim; c++) acc[u][c] += p * kv_element(values, vh + c, bf16);
                } else {
                    for (long c = 0; c < head_dim; c++) o[u * head_dim + c] += p * kv_element(values, vh + c, bf16);
                }
            }
        });
        if (local)
            for (long u = 0; u < group; u++)
                for (long c = 0; c < head_dim; c++) o[u * head_dim + c] = acc[u][c];
    }
}

/* The common shapes get their own loops (head_dim 64; 1, 2 or 4 query heads per key/value head). */
#define DECODE_ATTENTION_SPECIALISED(bf16)                                                                          \
    do {                                                                                                           \
        const long group = query_heads / kv_heads;                                                                 \
        if (head_dim == 64 && group == 1)                                                                          \
            decode_attention(q, keys, values, bf16, blocks, block_size, run_rows, run_counts, runs, query_heads,   \
                             kv_heads, 64, 1, scale, out, lse, scores);                                           \
        else if (head_dim == 64 && group == 2)                                                                     \
            decode_attention(q, keys, values, bf16, blocks, block_size, run_rows, run_counts, runs, query_heads,   \
                             kv_heads, 64, 2, scale, out, lse, scores);                                           \
        else if (head_dim == 64 && group == 4)                                                                     \
            decode_attention(q, keys, values, bf16, blocks, block_size, run_rows, run_counts, runs, query_heads,   \
                             kv_heads, 64, 4, scale, out, lse, scores);                                           \
        else                                                                                                       \
            decode_attention(q, keys, values, bf16, blocks, block_size, run_rows, run_counts, runs, query_heads,   \
                             kv_heads, head_dim, group, scale, out, lse, scores);                                 \
    } while (0)

TORUS_CLONES
void torus_decode_attention(const float *q, const float *keys, const float *values, const int *blocks, long block_size,
                            const long *run_rows, const long *run_counts, long runs, long query_heads, long kv_heads,
                            long head_dim, float scale, float *out, float *lse, float *scores) {
    DECODE_ATTENTION_SPECIALISED(0);
}

TORUS_CLONES
void torus_decode_attention_bf16(const float *q, const uint16_t *keys, const uint16_t *values, const int *blocks,
                                 long block_size, const long *run_rows, const long *run_counts, long runs,
                                 long query_heads, long kv_heads, long head_dim, float scale, float *out, float *lse,
                                 float *scores) {
    DECODE_ATTENTION_SPECIALISED(1);
}
