/* OpenMP or its serial stand-in, so that src/_cy.pyx compiles with and without -fopenmp.
 *
 * setup.py builds without OpenMP when the compiler cannot link an OpenMP program (or when
 * FASTPOOL_DISABLE_OPENMP=1); then _OPENMP is undefined, Cython's prange pragmas are skipped,
 * and these stubs answer "one thread".
 */
#ifndef FASTPOOL_OMP_COMPAT_H
#define FASTPOOL_OMP_COMPAT_H

#ifdef _OPENMP
#include <omp.h>
#define FASTPOOL_OPENMP 1
#else
#define FASTPOOL_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
#endif

#endif
