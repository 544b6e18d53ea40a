/* The FMA ceiling of this CPU: float32 fused multiply-adds on registers only (no memory traffic),
   12 independent accumulators per thread to cover the FMA latency, one thread per core (OpenMP).
   Built and run by benchmarks/run.py: cc -O2 -march=native -fopenmp fma_ceiling.c; prints GFLOP/s. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 100000000L;
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        float sink = 0.0f;
        int threads = 1;
        double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
        {
#pragma omp single
            threads = omp_get_num_threads();
            vec b = SET1(0.999999f), c = SET1(1e-7f);
            vec a0 = SET1(1.0f), a1 = SET1(1.1f), a2 = SET1(1.2f), a3 = SET1(1.3f), a4 = SET1(1.4f), a5 = SET1(1.5f);
            vec a6 = SET1(1.6f), a7 = SET1(1.7f), a8 = SET1(1.8f), a9 = SET1(1.9f), a10 = SET1(2.0f), a11 = SET1(2.1f);
            for (long i = 0; i < iters; i++) {
                a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);
                a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);
                a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
            }
            vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
            s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)));
            float out[LANES];
            STORE(out, s);
            for (int k = 0; k < LANES; k++) sink += out[k];
        }
        double dt = omp_get_wtime() - t0;
        double gflops = 2.0 * 12 * LANES * (double)iters * threads / dt / 1e9;
        if (gflops > best) best = gflops;
        if (sink == 12345.0f) printf("!");  /* keep the result alive */
    }
    printf("%.1f\n", best);
    return 0;
}
