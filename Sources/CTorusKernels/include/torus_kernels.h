#ifndef TORUS_KERNELS_H
#define TORUS_KERNELS_H
/* Vectorised fp32 elementwise kernels. Each is compiled for AVX-512, AVX2 and baseline x86-64
   and picked at load time for the running CPU. */

/* x[i] = exp(x[i] - shift) for i < n; returns the sum of the results. */
float torus_exp_shifted(float *x, long n, float shift);
/* out[i] = 1 / (1 + exp(-x[i])). */
void torus_sigmoid(const float *x, float *out, long n);
/* The largest of x[0..n) (-inf when n == 0). */
float torus_max(const float *x, long n);
/* exp(x) for a single value with the same polynomial (for tests and scalar tails). */
float torus_exp(float x);
#endif
