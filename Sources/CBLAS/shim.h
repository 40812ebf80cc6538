#ifndef TORUS_CBLAS_SHIM_H
#define TORUS_CBLAS_SHIM_H
/* OpenBLAS's cblas.h also declares openblas_set_num_threads and openblas_get_corename. */
#include <cblas.h>
#endif
