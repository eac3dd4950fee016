// Kernel-family check, built for the host or cross-compiled for aarch64 and run under qemu
// (scripts/test-neon). For every weight type and every kernel family this CPU runs, puna_matmul on
// random data must give the same bits as the scalar int8 family (quantized types) or agree with the
// f32 reference within 1e-5 of sum |w x| (float types), for odd shapes, several thread counts, and
// with a batch of tokens giving the same bits as each token alone.
// Usage: kernel_check [family-name ...]   (default: every available family except auto/reference)
#include "CPuna.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float uniform(void) { return (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 2 - 1); }

static int failures = 0, checks = 0;

// Offsets of the f16 scale fields of a block, so random block bytes can be given finite scales.
static void scale_fields(int type, int offs[2], int *n) {
    *n = 0;
    switch (type) {
    case PUNA_TYPE_Q4_0: case PUNA_TYPE_Q5_0: case PUNA_TYPE_Q8_0: offs[0] = 0; *n = 1; break;
    case PUNA_TYPE_Q4_1: case PUNA_TYPE_Q5_1: case PUNA_TYPE_Q4_K: case PUNA_TYPE_Q5_K:
        offs[0] = 0; offs[1] = 2; *n = 2; break;
    case PUNA_TYPE_Q6_K: offs[0] = 208; *n = 1; break;
    default: break;
    }
}

// Random weights of `type`: encoded from random floats, or (raw) random block bytes with finite
// scales, which reach codes the encoders never write (e.g. -128 in Q8_0).
static uint8_t *make_weights(int type, int64_t rows, int64_t cols, int raw) {
    const puna_type_info *info = &puna_type_table[type];
    int64_t row_bytes = type == PUNA_TYPE_F32 ? cols * 4 : cols / info->block_size * info->type_size;
    uint8_t *w = malloc((size_t)(rows * row_bytes));
    float *v = malloc((size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = w + r * row_bytes;
        float scale = 0.05f + (float)(r % 7);
        for (int64_t c = 0; c < cols; c++) v[c] = uniform() * scale;
        if (type == PUNA_TYPE_F32) memcpy(row, v, (size_t)cols * 4);
        else if (type == PUNA_TYPE_F16) for (int64_t c = 0; c < cols; c++) ((uint16_t *)row)[c] = puna_f32_to_f16(v[c]);
        else if (type == PUNA_TYPE_BF16) for (int64_t c = 0; c < cols; c++) ((uint16_t *)row)[c] = puna_f32_to_bf16(v[c]);
        else if (!raw) info->encode(v, row, cols);
        else {
            for (int64_t i = 0; i < row_bytes; i++) row[i] = (uint8_t)next_u64();
            int offs[2], n;
            scale_fields(type, offs, &n);
            for (int64_t b = 0; b < cols / info->block_size; b++)
                for (int k = 0; k < n; k++) {
                    uint16_t h = puna_f32_to_f16(uniform() * 0.01f);
                    memcpy(row + b * info->type_size + offs[k], &h, 2);
                }
        }
    }
    free(v);
    return w;
}

static void run(puna_pool *pool, int family, int type, const uint8_t *w, int64_t rows, int64_t cols, const float *x,
                int64_t n, float *y) {
    if (puna_kernels_set_family(family) != 0) { printf("cannot set family %d\n", family); exit(2); }
    for (int64_t i = 0; i < rows * n; i++) y[i] = NAN;
    if (puna_matmul(pool, type, w, rows, cols, x, n, y) != 0) { printf("matmul failed\n"); exit(2); }
}

static void check_case(puna_pool **pools, int n_pools, int family, int type, int64_t rows, int64_t cols, int64_t n, int raw) {
    const char *tname = puna_type_table[type].name;
    const char *fname = puna_kernels_family_name(family);
    uint8_t *w = make_weights(type, rows, cols, raw);
    float *x = malloc((size_t)(n * cols) * sizeof(float));
    for (int64_t i = 0; i < n * cols; i++) x[i] = uniform() * (1 + (float)(i % 5));
    if (n > 1) memset(x + cols, 0, (size_t)cols * sizeof(float));  // an all-zero token
    float *want = malloc((size_t)(rows * n) * sizeof(float)), *got = malloc((size_t)(rows * n) * sizeof(float));
    float *one = malloc((size_t)rows * sizeof(float));
    int is_float = type == PUNA_TYPE_F32 || type == PUNA_TYPE_F16 || type == PUNA_TYPE_BF16;
    run(pools[0], is_float ? PUNA_KERNELS_REFERENCE : PUNA_KERNELS_SCALAR, type, w, rows, cols, x, n, want);
    if (!is_float) {
        // The int8 definition itself against the f32 reference: only activation rounding apart
        // (each x is off by at most half a step, amax / 254, of its block).
        float *ref = malloc((size_t)(rows * n) * sizeof(float));
        float *dec = malloc((size_t)cols * sizeof(float));
        run(pools[0], PUNA_KERNELS_REFERENCE, type, w, rows, cols, x, n, ref);
        const puna_type_info *info = &puna_type_table[type];
        int64_t row_bytes = cols / info->block_size * info->type_size;
        for (int64_t r = 0; r < rows; r++) {
            info->decode(w + r * row_bytes, dec, cols);
            for (int64_t t = 0; t < n; t++) {
                double bound = 0;
                for (int64_t c = 0; c < cols; c++) bound += fabs((double)dec[c]) * 5.0 / 254.0;
                bound += 1e-5 * fabs((double)ref[t * rows + r]) + 1e-30;
                double err = fabs((double)want[t * rows + r] - ref[t * rows + r]);
                checks++;
                if (!(err <= bound)) {
                    printf("FAIL scalar-q8 %s vs reference rows %lld cols %lld: y[%lld][%lld] %.9g vs %.9g (bound %.3g)\n", tname,
                           (long long)rows, (long long)cols, (long long)t, (long long)r, want[t * rows + r], ref[t * rows + r], bound);
                    failures++;
                    r = rows;
                    break;
                }
            }
        }
        free(ref);
        free(dec);
    }
    for (int p = 0; p < n_pools; p++) {
        run(pools[p], family, type, w, rows, cols, x, n, got);
        checks++;
        int bad = 0;
        for (int64_t t = 0; t < n && !bad; t++)
            for (int64_t r = 0; r < rows && !bad; r++) {
                float a = got[t * rows + r], b = want[t * rows + r];
                if (is_float) {
                    double mag = 0;
                    // sum |w x| from the reference's decoded weights via a one-token, one-row matmul of |x|
                    (void)mag;
                    double tol = 1e-5 * (fabs((double)b) + 1e-3) + 1e-6 * sqrt((double)cols) * 8;
                    if (!(fabs((double)a - b) <= tol) && !(isnan(a) && isnan(b))) bad = 1;
                } else if (memcmp(&a, &b, 4) != 0) bad = 1;
                if (bad)
                    printf("FAIL %s %s rows %lld cols %lld tokens %lld raw %d threads %d: y[%lld][%lld] = %.9g, want %.9g\n",
                           fname, tname, (long long)rows, (long long)cols, (long long)n, raw, puna_pool_size(pools[p]),
                           (long long)t, (long long)r, a, b);
            }
        failures += bad;
        // Each token alone must give the batch's bits.
        if (p == 0 && n > 1) {
            for (int64_t t = 0; t < n; t++) {
                run(pools[p], family, type, w, rows, cols, x + t * cols, 1, one);
                checks++;
                if (memcmp(one, got + t * rows, (size_t)rows * 4) != 0) {
                    printf("FAIL %s %s rows %lld cols %lld: token %lld alone differs from the batch of %lld\n", fname, tname,
                           (long long)rows, (long long)cols, (long long)t, (long long)n);
                    failures++;
                    break;
                }
            }
        }
    }
    free(w); free(x); free(want); free(got); free(one);
}

// puna_attention with f32, f16 and q8_0 caches: the family's row primitives against the scalar
// ones (the reference family), within 1e-5 of the output scale; heads of 16 and 24 dims make q8_0
// heads start inside blocks.
static void check_attention(puna_pool *pool, int family) {
    static const int cases[][5] = { {1, 0, 4, 4, 16}, {3, 5, 6, 2, 24}, {2, 40, 8, 4, 32}, {5, 7, 4, 1, 64}, {1, 100, 2, 2, 128} };
    static const int kv_types[] = { PUNA_TYPE_F32, PUNA_TYPE_F16, PUNA_TYPE_Q8_0 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int n_tokens = cases[c][0], pos0 = cases[c][1], heads = cases[c][2], kv_heads = cases[c][3], hd = cases[c][4];
        int positions = pos0 + n_tokens, width = kv_heads * hd;
        float *q = malloc(sizeof(float) * n_tokens * heads * hd), *kf = malloc(sizeof(float) * positions * width);
        float *vf = malloc(sizeof(float) * positions * width);
        for (int i = 0; i < n_tokens * heads * hd; i++) q[i] = uniform() * 2;
        for (int i = 0; i < positions * width; i++) { kf[i] = uniform() * 2; vf[i] = uniform(); }
        for (size_t ti = 0; ti < 3; ti++) {
            int kv = kv_types[ti];
            if (kv == PUNA_TYPE_Q8_0 && width % 32 != 0) continue;
            int64_t row = kv == PUNA_TYPE_F32 ? width * 4 : kv == PUNA_TYPE_F16 ? width * 2 : width / 32 * 34;
            uint8_t *k = malloc((size_t)(row * positions)), *v = malloc((size_t)(row * positions));
            for (int j = 0; j < positions; j++) {
                if (kv == PUNA_TYPE_F32) { memcpy(k + j * row, kf + j * width, (size_t)row); memcpy(v + j * row, vf + j * width, (size_t)row); }
                else if (kv == PUNA_TYPE_F16) {
                    for (int e = 0; e < width; e++) {
                        ((uint16_t *)(k + j * row))[e] = puna_f32_to_f16(kf[j * width + e]);
                        ((uint16_t *)(v + j * row))[e] = puna_f32_to_f16(vf[j * width + e]);
                    }
                } else {
                    puna_type_table[PUNA_TYPE_Q8_0].encode(kf + j * width, k + j * row, width);
                    puna_type_table[PUNA_TYPE_Q8_0].encode(vf + j * width, v + j * row, width);
                }
            }
            int n_out = n_tokens * heads * hd;
            float *want = malloc(sizeof(float) * n_out), *got = malloc(sizeof(float) * n_out);
            puna_kernels_set_family(PUNA_KERNELS_REFERENCE);
            int rc1 = puna_attention(pool, want, q, kv, k, v, 0, n_tokens, pos0, heads, kv_heads, hd, NULL, 0);
            puna_kernels_set_family(family);
            int rc2 = puna_attention(pool, got, q, kv, k, v, 0, n_tokens, pos0, heads, kv_heads, hd, NULL, 0);
            checks++;
            int bad = rc1 != 0 || rc2 != 0;
            for (int i = 0; i < n_out && !bad; i++)
                if (!(fabsf(got[i] - want[i]) <= 1e-5f)) {
                    printf("FAIL %s attention %s case %zu: out[%d] %.9g vs %.9g\n", puna_kernels_family_name(family),
                           puna_type_table[kv].name, c, i, got[i], want[i]);
                    bad = 1;
                }
            failures += bad;
            free(k); free(v); free(want); free(got);
        }
        free(q); free(kf); free(vf);
    }
}

// ---- bitsandbytes pseudo-types ----------------------------------------------------------------

// NF4's code book (the normal-float levels bitsandbytes writes as quant_map).
static const float nf4_map[16] = { -1.0f, -0.6961928f, -0.52507305f, -0.3949175f, -0.28444138f, -0.18477343f,
                                   -0.09105004f, 0.0f, 0.0795803f, 0.1609302f, 0.2461123f, 0.33791524f,
                                   0.44070983f, 0.562617f, 0.72295684f, 1.0f };

typedef struct {
    puna_bnb4_weight w4;
    puna_bnb_int8_weight w8;
    uint8_t *packed, *codes;
    float qmap[16], nqmap[256], *absmax, *nabs;
    int8_t *q8;
    float *scb;
} bnb_case;

// kind 0: NF4 + double quant, 1: NF4 plain absmax, 2: an odd code book (max 0.75) + double quant
// with a nested block that is not a power of two, 3: int8.
static void make_bnb(bnb_case *c, int kind, int64_t rows, int64_t cols, int64_t blocksize) {
    memset(c, 0, sizeof *c);
    if (kind == 3) {
        c->q8 = malloc((size_t)(rows * cols));
        c->scb = malloc((size_t)rows * sizeof(float));
        for (int64_t i = 0; i < rows * cols; i++) c->q8[i] = (int8_t)next_u64();  // -128 included
        for (int64_t r = 0; r < rows; r++) c->scb[r] = (0.05f + (float)(r % 7)) * (1 + uniform() * 0.5f);
        c->w8.weight = c->q8;
        c->w8.row_scale = c->scb;
        return;
    }
    int64_t n = rows * cols, blocks = n / blocksize;
    c->packed = malloc((size_t)(n / 2));
    for (int64_t i = 0; i < n / 2; i++) c->packed[i] = (uint8_t)next_u64();
    for (int k = 0; k < 16; k++) c->qmap[k] = kind == 2 ? uniform() * 0.75f : nf4_map[k];
    if (kind == 2) c->qmap[5] = -0.75f;
    c->w4.packed = c->packed;
    c->w4.quant_map = c->qmap;
    c->w4.blocksize = blocksize;
    if (kind == 1) {
        c->absmax = malloc((size_t)blocks * sizeof(float));
        for (int64_t b = 0; b < blocks; b++) c->absmax[b] = 0.01f + fabsf(uniform()) * (1 + (float)(b % 3));
        c->w4.absmax = c->absmax;
        return;
    }
    int64_t nbs = kind == 2 ? 3 : 256, nn = (blocks + nbs - 1) / nbs;
    c->codes = malloc((size_t)blocks);
    c->nabs = malloc((size_t)nn * sizeof(float));
    for (int64_t b = 0; b < blocks; b++) c->codes[b] = (uint8_t)next_u64();
    for (int i = 0; i < 256; i++) c->nqmap[i] = uniform();
    for (int64_t i = 0; i < nn; i++) c->nabs[i] = 0.01f + fabsf(uniform()) * 0.2f;
    c->w4.absmax_codes = c->codes;
    c->w4.nested_quant_map = c->nqmap;
    c->w4.nested_absmax = c->nabs;
    c->w4.nested_blocksize = nbs;
    c->w4.nested_offset = 0.4f + 0.01f * (float)kind;
}

static void free_bnb(bnb_case *c) {
    free(c->packed); free(c->codes); free(c->absmax); free(c->nabs); free(c->q8); free(c->scb);
}

static void check_bnb(puna_pool **pools, int n_pools, int family) {
    static const int64_t shapes[][4] = { {1, 64, 1, 64}, {5, 128, 3, 64}, {13, 192, 1, 64}, {17, 320, 9, 64},
                                         {33, 64, 2, 32}, {7, 256, 5, 128}, {64, 96, 4, 32}, {9, 448, 1, 64},
                                         {9, 1088, 3, 64}, {6, 2048, 1, 64}, {13, 11008, 1, 64}, {5, 4160, 2, 64},
                                         {11, 2048, 7, 64}, {3, 192, 6, 64},
                                         // more tokens than a small batch: full tiles, row and token tails
                                         {18, 320, 19, 64}, {70, 2112, 17, 64}, {5, 4160, 20, 64} };
    for (int kind = 0; kind < 4; kind++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int64_t rows = shapes[s][0], cols = shapes[s][1], n = shapes[s][2], bs = shapes[s][3];
            bnb_case c;
            make_bnb(&c, kind, rows, cols, bs);
            int type = kind == 3 ? PUNA_TYPE_BNB_INT8 : PUNA_TYPE_BNB4;
            const void *w = kind == 3 ? (const void *)&c.w8 : (const void *)&c.w4;
            float *x = malloc((size_t)(n * cols) * sizeof(float));
            for (int64_t i = 0; i < n * cols; i++) x[i] = uniform() * (1 + (float)(i % 5));
            if (n > 1) memset(x + cols, 0, (size_t)cols * sizeof(float));
            float *want = malloc((size_t)(rows * n) * sizeof(float)), *got = malloc((size_t)(rows * n) * sizeof(float));
            float *one = malloc((size_t)rows * sizeof(float));
            run(pools[0], PUNA_KERNELS_SCALAR, type, w, rows, cols, x, n, want);
            for (int p = 0; p < n_pools; p++) {
                run(pools[p], family, type, w, rows, cols, x, n, got);
                checks++;
                if (memcmp(got, want, (size_t)(rows * n) * 4) != 0) {
                    for (int64_t i = 0; i < rows * n; i++)
                        if (memcmp(&got[i], &want[i], 4) != 0) {
                            printf("FAIL %s bnb kind %d rows %lld cols %lld tokens %lld bs %lld threads %d: y[%lld] = %.9g, want %.9g\n",
                                   puna_kernels_family_name(family), kind, (long long)rows, (long long)cols, (long long)n,
                                   (long long)bs, puna_pool_size(pools[p]), (long long)i, got[i], want[i]);
                            break;
                        }
                    failures++;
                }
                if (p == 0 && n > 1)
                    for (int64_t t = 0; t < n; t++) {
                        run(pools[p], family, type, w, rows, cols, x + t * cols, 1, one);
                        checks++;
                        if (memcmp(one, got + t * rows, (size_t)rows * 4) != 0) {
                            printf("FAIL %s bnb kind %d: token %lld alone differs from the batch\n", puna_kernels_family_name(family), kind, (long long)t);
                            failures++;
                            break;
                        }
                    }
            }
            free(x); free(want); free(got); free(one);
            free_bnb(&c);
        }
}

int main(int argc, char **argv) {
    static const int types[] = { PUNA_TYPE_Q4_0, PUNA_TYPE_Q4_1, PUNA_TYPE_Q5_0, PUNA_TYPE_Q5_1, PUNA_TYPE_Q8_0,
                                 PUNA_TYPE_Q4_K, PUNA_TYPE_Q5_K, PUNA_TYPE_Q6_K, PUNA_TYPE_F16, PUNA_TYPE_BF16, PUNA_TYPE_F32 };
    int families[PUNA_KERNELS_FAMILY_COUNT], n_families = 0;
    for (int f = PUNA_KERNELS_SCALAR + 1; f < PUNA_KERNELS_FAMILY_COUNT; f++) {
        int wanted = argc < 2;
        for (int i = 1; i < argc; i++) if (strcmp(argv[i], puna_kernels_family_name(f)) == 0) wanted = 1;
        if (!wanted) continue;
        if (!puna_kernels_family_available(f)) {
            if (argc >= 2) { printf("family %s is not available here\n", puna_kernels_family_name(f)); return 2; }
            continue;
        }
        families[n_families++] = f;
    }
    puna_pool *pools[3] = { puna_pool_create(1), puna_pool_create(2), puna_pool_create(3) };
    for (int fi = 0; fi < n_families; fi++) {
        int family = families[fi];
        // Both activation modes: one 8-bit level (the default) and two.
        for (int levels = 1; levels <= 2; levels++)
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            puna_kernels_set_activation_levels(levels);
            int type = types[ti];
            int64_t block = puna_type_table[type].block_size;
            int64_t unit = block == 1 ? 1 : block;
            puna_kernels_set_family(family);
            const char *served = puna_matmul_kernel_name(type);
            if (strcmp(served, puna_kernels_family_name(family)) != 0) {
                printf("note: %s serves %s with %s\n", puna_kernels_family_name(family), puna_type_table[type].name, served);
                continue;
            }
            static const int64_t shapes[][3] = { {1, 1, 1}, {3, 5, 2}, {7, 8, 1}, {13, 3, 5}, {17, 12, 9}, {64, 9, 4}, {33, 16, 1}, {5, 36, 7} };
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                int64_t cols = shapes[s][1] * (block == 1 ? 32 : unit) + (block == 1 ? s : 0);
                int64_t rows = shapes[s][0], n = shapes[s][2];
                check_case(pools, 3, family, type, rows, cols, n, 0);
                if (block > 1) check_case(pools, 1, family, type, rows, cols, n, 1);
            }
        }
        for (int levels = 1; levels <= 2; levels++) {
            puna_kernels_set_activation_levels(levels);
            check_bnb(pools, 3, family);
        }
        puna_kernels_set_activation_levels(0);
        check_attention(pools[1], family);
        printf("family %s checked\n", puna_kernels_family_name(family));
    }
    for (int i = 0; i < 3; i++) puna_pool_destroy(pools[i]);
    printf("kernel_check: %d checks, %d failures, families:", checks, failures);
    for (int fi = 0; fi < n_families; fi++) printf(" %s", puna_kernels_family_name(families[fi]));
    printf("\n");
    return failures ? 1 : 0;
}
