// Kernel microbenchmark: puna_matmul on random weights of one type, outside the model, to compare
// kernel variants (-D tuning macros) without the noise of a whole forward pass.
// Built and run by scripts/kernel-bench; see there for the arguments.
#include "puna_kernels.h"
#include "puna_quants.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: kernel-bench TYPE ROWS COLS TOKENS THREADS REPS [MATRICES]\n");
        return 2;
    }
    int type = -1;
    for (int i = 0; i < PUNA_TYPE_COUNT; i++)
        if (puna_type_table[i].name && strcmp(puna_type_table[i].name, argv[1]) == 0) type = i;
    long rows = atol(argv[2]), cols = atol(argv[3]), tokens = atol(argv[4]);
    int threads = atoi(argv[5]), reps = atoi(argv[6]), matrices = argc > 7 ? atoi(argv[7]) : 1;
    if (type < 0 || !puna_matmul_supports(type)) {
        fprintf(stderr, "kernel-bench: TYPE '%s' is not a type puna_matmul takes\n", argv[1]);
        return 2;
    }
    const puna_type_info *info = &puna_type_table[type];
    if (rows < 1 || cols < 1 || tokens < 1 || threads < 1 || reps < 1 || matrices < 1 || cols % info->block_size) {
        fprintf(stderr, "kernel-bench: ROWS, TOKENS, THREADS, REPS, MATRICES must be >= 1 and COLS a multiple of %d\n",
                info->block_size);
        return 2;
    }
    // Real encoded weights (random floats through the type's encoder), so scales are sane.
    size_t row_bytes = type == PUNA_TYPE_F32 ? (size_t)cols * 4 : (size_t)(cols / info->block_size) * info->type_size;
    float *row = malloc(sizeof(float) * cols);
    float *x = malloc(sizeof(float) * tokens * cols), *y = malloc(sizeof(float) * tokens * rows);
    unsigned char **w = malloc(sizeof *w * matrices);
    srand(1);
    for (int m = 0; m < matrices; m++) {
        w[m] = malloc(row_bytes * rows);
        for (long r = 0; r < rows; r++) {
            for (long c = 0; c < cols; c++) row[c] = (float)((double)rand() / RAND_MAX) - 0.5f;
            if (type == PUNA_TYPE_F32) memcpy(w[m] + r * row_bytes, row, row_bytes);
            else info->encode(row, w[m] + r * row_bytes, cols);
        }
    }
    for (long i = 0; i < tokens * cols; i++) x[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
    puna_pool *pool = puna_pool_create(threads);
    puna_matmul(pool, type, w[0], rows, cols, x, tokens, y);  // warm-up
    double *s = malloc(sizeof(double) * reps);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        for (int m = 0; m < matrices; m++) puna_matmul(pool, type, w[m], rows, cols, x, tokens, y);
        s[r] = (now() - t0) / matrices;
    }
    qsort(s, reps, sizeof(double), cmp_double);
    double macs = (double)rows * cols * tokens;
    printf("%s %s %ldx%ld tokens %ld threads %d: median %.3f ms = %.1f GMAC/s (%.1f GB/s of weights), best %.1f GMAC/s\n",
           puna_matmul_kernel_name(type), argv[1], rows, cols, tokens, threads, s[reps / 2] * 1e3, macs / s[reps / 2] * 1e-9,
           row_bytes * rows / s[reps / 2] * 1e-9, macs / s[0] * 1e-9);
    puna_pool_destroy(pool);
    return 0;
}
