// Kernel microbenchmark: puna_matmul on random weights of one type, outside the model, to compare
// kernel variants (-D tuning macros) without the noise of a whole forward pass.
// Built and run by scripts/kernel-bench; see there for the arguments.
#include "puna_kernels.h"
#include "puna_quants.h"
#include "puna_bnb.h"
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
        fprintf(stderr, "usage: kernel-bench TYPE ROWS COLS TOKENS THREADS REPS [MATRICES]\n"
                        "TYPE: a GGML type name, or nf4 (bitsandbytes NF4, blocks of 64, double quant), nf4-plain\n"
                        "(f32 absmax) or bnb-int8 (LLM.int8 rows)\n");
        return 2;
    }
    int type = -1;
    for (int i = 0; i < PUNA_TYPE_COUNT; i++)
        if (puna_type_table[i].name && strcmp(puna_type_table[i].name, argv[1]) == 0) type = i;
    // bitsandbytes pseudo-types: the weights are descriptors over separately allocated tables
    const int nf4 = strcmp(argv[1], "nf4") == 0 || strcmp(argv[1], "nf4-plain") == 0, dq = strcmp(argv[1], "nf4") == 0;
    if (nf4) type = PUNA_TYPE_BNB4;
    if (strcmp(argv[1], "bnb-int8") == 0) type = PUNA_TYPE_BNB_INT8;
    const int bnb = type == PUNA_TYPE_BNB4 || type == PUNA_TYPE_BNB_INT8;
    long rows = atol(argv[2]), cols = atol(argv[3]), tokens = atol(argv[4]);
    int threads = atoi(argv[5]), reps = atoi(argv[6]), matrices = argc > 7 ? atoi(argv[7]) : 1;
    if (type < 0 || !puna_matmul_supports(type)) {
        fprintf(stderr, "kernel-bench: TYPE '%s' is not a type puna_matmul takes\n", argv[1]);
        return 2;
    }
    static const puna_type_info bnb_info = { .name = "bnb", .block_size = 64, .type_size = 32 };
    const puna_type_info *info = bnb ? &bnb_info : &puna_type_table[type];
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
    if (bnb) {
        // Random codes and scales (the kernels' speed does not depend on the values); bytes per row
        // count everything a row streams: packed codes plus absmax (codes or f32), or int8 + scale.
        static const float nf4_map[16] = { -1.0f, -0.6961928f, -0.52507305f, -0.3949175f, -0.28444138f, -0.18477343f,
                                           -0.09105004f, 0.0f, 0.0795803f, 0.1609302f, 0.2461123f, 0.33791524f,
                                           0.44070983f, 0.562617f, 0.72295684f, 1.0f };
        static float nested_map[256];
        for (int i = 0; i < 256; i++) nested_map[i] = (float)i / 255.0f - 0.5f;
        long n = rows * cols, blocks = n / 64;
        row_bytes = type == PUNA_TYPE_BNB_INT8 ? (size_t)cols + 4 : (size_t)cols / 2 + (size_t)(cols / 64) * (dq ? 1 : 4);
        for (int m = 0; m < matrices; m++) {
            if (type == PUNA_TYPE_BNB_INT8) {
                puna_bnb_int8_weight *d = malloc(sizeof *d);
                int8_t *q = malloc((size_t)n);
                float *scb = malloc(sizeof(float) * rows);
                for (long i = 0; i < n; i++) q[i] = (int8_t)(rand() % 255 - 127);
                for (long r = 0; r < rows; r++) scb[r] = 0.01f + (float)((double)rand() / RAND_MAX);
                d->weight = q;
                d->row_scale = scb;
                w[m] = (unsigned char *)d;
                continue;
            }
            puna_bnb4_weight *d = calloc(1, sizeof *d);
            uint8_t *packed = malloc((size_t)n / 2);
            for (long i = 0; i < n / 2; i++) packed[i] = (uint8_t)rand();
            d->packed = packed;
            d->quant_map = nf4_map;
            d->blocksize = 64;
            if (dq) {
                uint8_t *codes = malloc((size_t)blocks);
                float *nested = malloc(sizeof(float) * (size_t)(blocks / 256 + 1));
                for (long b = 0; b < blocks; b++) codes[b] = (uint8_t)rand();
                for (long b = 0; b <= blocks / 256; b++) nested[b] = 0.01f + (float)((double)rand() / RAND_MAX);
                d->absmax_codes = codes;
                d->nested_quant_map = nested_map;
                d->nested_absmax = nested;
                d->nested_blocksize = 256;
                d->nested_offset = 0.03f;
            } else {
                float *absmax = malloc(sizeof(float) * (size_t)blocks);
                for (long b = 0; b < blocks; b++) absmax[b] = 0.01f + (float)((double)rand() / RAND_MAX);
                d->absmax = absmax;
            }
            w[m] = (unsigned char *)d;
        }
    }
    for (int m = 0; m < matrices && !bnb; m++) {
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
