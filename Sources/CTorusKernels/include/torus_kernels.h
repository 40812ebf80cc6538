#ifndef TORUS_KERNELS_H
#define TORUS_KERNELS_H
/* Vectorised fp32 elementwise kernels. Each is compiled for AVX-512, AVX2 and baseline x86-64
   and picked at load time for the running CPU. */

/* x[i] = exp(x[i] - shift) for i < n; returns the sum of the results. */
float torus_exp_shifted(float *x, long n, float shift, float scale);
/* out[i] = 1 / (1 + exp(-x[i])). */
void torus_sigmoid(const float *x, float *out, long n);
/* The largest of x[0..n) (-inf when n == 0). */
float torus_max(const float *x, long n);
/* exp(x) for a single value with the same polynomial (for tests and scalar tails). */
float torus_exp(float x);
#endif

#ifndef TORUS_KERNELS_OPT_H
#define TORUS_KERNELS_OPT_H
/* One AdamW update of n values: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
   p = p * decay - step_size * m / (sqrt(v) / c2root + eps). */
void torus_adamw(float *p, const float *g, float *m, float *v, long n, float b1, float b2, float eps,
                 float decay, float step_size, float c2root);
/* Sum of squares of x[0..n), accumulated in double. */
double torus_sum_squares(const float *x, long n);
/* x[i] *= s. */
void torus_scale(float *x, long n, float s);
#endif

#ifndef TORUS_KERNELS_PEAK_H
#define TORUS_KERNELS_PEAK_H
/* Runs `iterations` rounds of fused multiply-adds on independent vector accumulators, with the
   widest vectors the CPU has (AVX-512, AVX2+FMA, or SSE multiply and add); returns the fp32
   flops done and sets *width to the floats per vector. A sum of the accumulators goes to
   *sink so the work cannot be dropped. */
double torus_fma_loop(long iterations, int *width, float *sink);
#endif

#ifndef TORUS_KERNELS_ROWS_H
#define TORUS_KERNELS_ROWS_H
/* y[r, o] = sum_k x[r, k] w[o, k] (plus y[r, o] when accumulate) for r < rows and o in
   [o_begin, o_end); x [rows, in], w [out, in], y [rows, out], row-major. Reads the weights
   once for all rows: for the few rows of a decoding step. */
void torus_linear_rows(const float *x, const float *w, float *y, long rows, long in, long out, long o_begin, long o_end,
                       int accumulate);
#endif

#ifndef TORUS_KERNELS_DECODE_H
#define TORUS_KERNELS_DECODE_H
#include <stdint.h>
/* Attention of one query row q [query_heads * head_dim] against n keys and values that all
   precede it, stored in pool blocks: local row t lives at pool row
   blocks[t / block_size] * block_size + t % block_size of `keys` / `values`
   ([pool rows, kv_heads * head_dim]); the visible local rows are the runs
   run_rows[r] ..< run_rows[r] + run_counts[r]. Writes out [query_heads * head_dim] and
   lse [query_heads] (-inf and zeros with no key); `scores` is scratch of query_heads * n floats. */
void torus_decode_attention(const float *q, const float *keys, const float *values, const int *blocks, long block_size,
                            const long *run_rows, const long *run_counts, long runs, long query_heads, long kv_heads,
                            long head_dim, float scale, float *out, float *lse, float *scores);
/* The same over a pool of bfloat16 keys and values (products and sums in fp32). */
void torus_decode_attention_bf16(const float *q, const uint16_t *keys, const uint16_t *values, const int *blocks,
                                 long block_size, const long *run_rows, const long *run_counts, long runs,
                                 long query_heads, long kv_heads, long head_dim, float scale, float *out, float *lse,
                                 float *scores);

/* bfloat16 inference linear layers (bf16.c). Weights [out, in] are packed once in panels of 16
   outputs by pairs of inputs (zero padded); activations are rounded to bfloat16 rows of
   2 * ceil(in / 2) values; products are summed in fp32. */
#include <stdint.h>
/* Nonzero when the CPU and OS run AVX512-BF16 (otherwise a portable kernel is used). */
int torus_has_avx512bf16(void);
/* Nonzero when the kernels run AVX512-BF16 code: the CPU has it and TORUS_BF16_KERNEL is not
   "portable". */
int torus_bf16_kernel_accelerated(void);
/* f rounded to the nearest bfloat16 (ties to even). */
uint16_t torus_bf16_round(float f);
/* The fp32 value of bfloat16 h (exact: its top 16 bits). */
static inline float torus_bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}
/* bfloat16 values widened to fp32, n values. */
void torus_bf16_widen(const uint16_t *src, float *dst, long n);
/* Elements of a packed [out, in] weight matrix. */
long torus_bf16_packed_count(long out, long in);
void torus_bf16_pack(const float *w, long out, long in, uint16_t *packed);
/* The same for W[o][k] = w[o * row_stride + k * col_stride] (a matrix's columns of a strided
   block, or a matrix read transposed). */
void torus_bf16_pack_strided(const float *w, long row_stride, long col_stride, long out, long in, uint16_t *packed);
/* rows x in activations into xb (rows x 2 * ceil(in / 2)). */
void torus_bf16_rows(const float *x, uint16_t *xb, long rows, long in);
/* The same with rows of x `ldx` floats apart. */
void torus_bf16_rows_strided(const float *x, long ldx, uint16_t *xb, long rows, long in);
/* y[rows, out] = xb W^T (or +=) for the output panels [p_begin, p_end) (16 outputs each). */
void torus_linear_bf16(const uint16_t *xb, const uint16_t *packed, float *y, long rows, long in, long out, long p_begin,
                       long p_end, int accumulate);
/* The same over the first `in` inputs of rows `lda` pairs apart, weights packed with
   `panel_pairs` pairs a panel (a matrix of more inputs), y rows `ldy` floats apart. */
void torus_linear_bf16_strided(const uint16_t *xb, long lda, const uint16_t *packed, long panel_pairs, float *y, long ldy, long rows,
                               long in, long out, long p_begin, long p_end, int accumulate);
/* LLaMA's RMSNorm of rows [row_begin, row_end) of x [rows, dim] into y, reciprocal RMS per row
   into rstd. */
void torus_rms_norm(const float *x, const float *w, float *y, float *rstd, long row_begin, long row_end, long dim, float eps);
/* A hint to the CPU that the calling thread is spin-waiting (x86 `pause`). */
static inline void torus_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
#endif
