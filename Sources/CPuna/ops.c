// The matmul driver, kernel dispatch, the reference kernels and the other ops of the forward pass
// (see puna_kernels.h).
//
// "Reference" means portable C whose accumulation order is fixed by the source, not by the thread
// count or the split: every dot product runs over 8 interleaved partial sums combined in a fixed
// tree, which keeps f32 rounding error low (8 short chains instead of one long one) and lets the
// compiler vectorise without reassociating. The SIMD families (kernels_*.c, kernels_internal.h)
// serve puna_matmul by default: the driver here quantizes the activations once per call, splits the
// rows between the threads, and picks the family at "dispatch".
#include "puna_kernels.h"
#include "puna_platform.h"
#include "puna_quants.h"
#include "puna_bnb.h"
#include "kernels_internal.h"
#include "lora_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#define LANES 8        // partial sums per dot product
#define TILE_ROWS 4    // rows dotted together so each activation value is loaded once per 4 rows
// Decoded rows of one group should stay in L2 while every token passes over them.
#define GROUP_BYTES (256 * 1024)
#define MAX_GROUP_ROWS 32

// ---- dot products ----------------------------------------------------------------------------

static inline float combine_lanes(const float acc[LANES]) {
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static float dot_f32(const float *restrict a, const float *restrict b, int64_t n) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += a[i + j] * b[i + j];
    float tail = 0;
    for (; i < n; i++) tail += a[i] * b[i];
    return combine_lanes(acc) + tail;
}

// Four rows (row_stride floats apart) against one vector; each row's arithmetic is exactly that
// of dot_f32, so a row's result is the same whichever of the two computes it.
static void dot_f32_x4(const float *restrict w, int64_t row_stride, const float *restrict x, int64_t n,
                       float out[TILE_ROWS]) {
    const float *w0 = w, *w1 = w + row_stride, *w2 = w + 2 * row_stride, *w3 = w + 3 * row_stride;
    float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        for (int j = 0; j < LANES; j++) {
            float xv = x[i + j];
            a0[j] += w0[i + j] * xv;
            a1[j] += w1[i + j] * xv;
            a2[j] += w2[i + j] * xv;
            a3[j] += w3[i + j] * xv;
        }
    }
    float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for (; i < n; i++) {
        t0 += w0[i] * x[i];
        t1 += w1[i] * x[i];
        t2 += w2[i] * x[i];
        t3 += w3[i] * x[i];
    }
    out[0] = combine_lanes(a0) + t0;
    out[1] = combine_lanes(a1) + t1;
    out[2] = combine_lanes(a2) + t2;
    out[3] = combine_lanes(a3) + t3;
}

// Same values as the table's f16 decoder (both are exact), without its per-value branches.
static void decode_f16_rows(const void *blocks, float *out, int64_t n) {
    const uint16_t *h = blocks;
    for (int64_t i = 0; i < n; i++) out[i] = kq_f16(h[i]);
}

static float dot_f32_f16(const float *restrict a, const uint16_t *restrict b, int64_t n) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += a[i + j] * kq_f16(b[i + j]);
    float tail = 0;
    for (; i < n; i++) tail += a[i] * kq_f16(b[i]);
    return combine_lanes(acc) + tail;
}

// ---- matmul ----------------------------------------------------------------------------------

typedef struct matmul_job matmul_job;
// Fills y for rows [row_begin, row_end) and every token. row_begin is a multiple of TILE_ROWS.
// scratch: scratch_floats floats private to the calling thread.
typedef void (*matmul_rows_fn)(const matmul_job *job, int64_t row_begin, int64_t row_end, float *scratch);

struct matmul_job {
    const uint8_t *weights;
    int64_t row_bytes, rows, cols;
    const float *x;
    int64_t n_tokens;
    float *y;
    puna_decode_fn decode;     // NULL for f32: rows are used in place
    // bitsandbytes pseudo-types: rows [r0, r1) of the descriptor `weights` decoded at once
    int (*decode_rows)(const void *desc, int64_t cols, int64_t r0, int64_t r1, float *out);
    int64_t group_rows;        // rows decoded at once, multiple of TILE_ROWS
    int64_t chunk_rows;        // rows claimed at once, multiple of TILE_ROWS
    int64_t n_chunks;
    matmul_rows_fn rows_fn;
    float *scratch;
    int64_t scratch_stride;
    _Atomic int64_t next_chunk;
};

// Reference: decode a group of rows to f32 (f32 weights are used in place), then let every token
// pass over the group. The tile/tail choice depends only on a row's absolute index (full tiles
// start at multiples of TILE_ROWS; only the last rows % TILE_ROWS rows go one by one), which is
// what makes y independent of how rows are split between threads.
static void matmul_rows_reference(const matmul_job *job, int64_t row_begin, int64_t row_end, float *scratch) {
    const int64_t cols = job->cols, rows = job->rows;
    const int64_t full_tiles_end = rows - rows % TILE_ROWS;
    for (int64_t g0 = row_begin; g0 < row_end; g0 += job->group_rows) {
        int64_t g1 = g0 + job->group_rows < row_end ? g0 + job->group_rows : row_end;
        const float *w;
        if (job->decode_rows) {
            job->decode_rows(job->weights, cols, g0, g1, scratch);  // checked by puna_matmul
            w = scratch;
        } else if (job->decode) {
            for (int64_t r = g0; r < g1; r++)
                job->decode(job->weights + r * job->row_bytes, scratch + (r - g0) * cols, cols);
            w = scratch;
        } else {
            w = (const float *)(job->weights + g0 * job->row_bytes);
        }
        for (int64_t t = 0; t < job->n_tokens; t++) {
            const float *xt = job->x + t * cols;
            float *yt = job->y + t * rows;
            int64_t r = g0;
            for (; r + TILE_ROWS <= g1 && r < full_tiles_end; r += TILE_ROWS)
                dot_f32_x4(w + (r - g0) * cols, cols, xt, cols, yt + r);
            for (; r < g1; r++) yt[r] = dot_f32(w + (r - g0) * cols, xt, cols);
        }
    }
}

static void matmul_task(void *ctx, int thread_index, int n_threads) {
    (void)n_threads;
    matmul_job *job = ctx;
    float *scratch = job->scratch ? job->scratch + thread_index * job->scratch_stride : NULL;
    // Chunks are claimed dynamically: on a shared machine one core may run slower than another.
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&job->next_chunk, 1, memory_order_relaxed);
        if (c >= job->n_chunks) break;
        int64_t r0 = c * job->chunk_rows;
        int64_t r1 = r0 + job->chunk_rows < job->rows ? r0 + job->chunk_rows : job->rows;
        job->rows_fn(job, r0, r1, scratch);
    }
}

// ---- quantized-activation matmul (kernels_internal.h) -------------------------------------------

static int64_t round64(int64_t n) { return (n + 63) & ~(int64_t)63; }

// Activation levels for every quantized-weight matmul (kernels_internal.h): one, like llama.cpp,
// unless a caller asks for two (puna_kernels_set_activation_levels).
static int activation_levels = PUNA_DEFAULT_ACTIVATION_LEVELS;

int puna_kernels_set_activation_levels(int levels) {
    if (levels == 0) levels = PUNA_DEFAULT_ACTIVATION_LEVELS;
    if (levels != 1 && levels != 2) return -1;
    activation_levels = levels;
    return 0;
}

int puna_kernels_activation_levels(void) { return activation_levels; }

static act_layout make_act_layout(int format, int64_t cols) {
    act_layout l = {0};
    l.format = format;
    l.levels = activation_levels;
    if (format == ACT_Q8_32) {
        l.n_blocks = cols / 32;
        l.n_groups = (l.n_blocks + 3) / 4;
        l.qs_off = 0;
        l.d_off = l.n_groups * 256;
        l.aux_off = l.d_off + l.n_groups * 64;
        l.token_bytes = l.aux_off + l.n_groups * 64;
    } else {
        l.n_blocks = l.n_groups = cols / 256;
        l.qs_off = 0;
        l.d_off = l.n_blocks * ACT256_STRIDE;
        l.aux_off = l.d_off + round64(l.n_blocks * 4);
        l.token_bytes = l.aux_off + l.n_blocks * 64;
    }
#ifndef PUNA_TOKEN_LINES_MOD
#define PUNA_TOKEN_LINES_MOD 8
#endif
#if PUNA_TOKEN_LINES_MOD >= 0
    // ACT_Q8_32 token rows lie PUNA_TOKEN_LINES_MOD cache lines past a multiple of 4096 bytes
    // apart. At a multiple of 4096 (4096 columns give 12288) the same place of every token of a
    // batch tile falls in one L1 set (64 sets of 8 ways); one line apart, the d and aux lines of
    // neighbouring groups and tokens still pile up in a few sets. 8 lines apart puts at most 6 of
    // the lines a chunk tile keeps in L1 (8 tokens x 4-8 groups, 4 lines each) in any set, over
    // column counts 256 to 11008 (counted by a script). AVX2 8-token tiles, 4096 x 4096 x 128 Q4_0,
    // one thread: 32 GMAC/s unpadded, 43 one line apart, 48 eight lines apart. Shorter rows
    // (under 4096 bytes) spread over the sets by themselves and are left unpadded.
    if (format == ACT_Q8_32 && l.token_bytes >= 4096) {
        int64_t lines = l.token_bytes / 64;
        l.token_bytes += 64 * ((PUNA_TOKEN_LINES_MOD - lines % 64 + 64) % 64);
    }
#endif
    return l;
}

// About 8 chunks per thread keeps both cores busy even when one is slowed by something else, and
// small matrices still split (a chunk can be a single tile). Chunks are whole row tiles, so every
// row is computed by the same code whatever the split.
#define CHUNKS_PER_THREAD 8

static int64_t chunk_rows_for(int64_t rows, int64_t tile, int n_threads) {
    int64_t tiles = (rows + tile - 1) / tile;
    int64_t chunk_tiles = tiles / ((int64_t)n_threads * CHUNKS_PER_THREAD);
    return (chunk_tiles < 1 ? 1 : chunk_tiles) * tile;
}

// ---- dispatch --------------------------------------------------------------------------------
// The one place that decides which implementation serves a weight type: the forced kernel family
// if one is set (tests, benchmarks), else the best family this CPU runs. A family that lacks a type
// leaves it to the f32 reference.

static int forced_family = PUNA_KERNELS_AUTO;

void puna_kernels_set_reference_only(int on) { forced_family = on ? PUNA_KERNELS_REFERENCE : PUNA_KERNELS_AUTO; }

static const char *const family_names[] = {
    [PUNA_KERNELS_AUTO] = "auto", [PUNA_KERNELS_REFERENCE] = "reference", [PUNA_KERNELS_SCALAR] = "scalar-q8",
    [PUNA_KERNELS_AVX2] = "avx2", [PUNA_KERNELS_AVX2_VNNI] = "avx2-vnni", [PUNA_KERNELS_AVX512] = "avx512-vnni",
    [PUNA_KERNELS_NEON] = "neon", [PUNA_KERNELS_NEON_DOTPROD] = "neon-dotprod", [PUNA_KERNELS_NEON_I8MM] = "neon-i8mm",
    [PUNA_KERNELS_AVX512_VBMI] = "avx512-vbmi",
};

const char *puna_kernels_family_name(int family) {
    if (family < 0 || family >= PUNA_KERNELS_FAMILY_COUNT) return NULL;
    return family_names[family];
}

static int family_get(int family, int type, qmm_kernel *k) {
    memset(k, 0, sizeof *k);
    switch (family) {
    case PUNA_KERNELS_SCALAR: return puna_kernels_scalar_get(type, k);
    case PUNA_KERNELS_AVX2: return puna_kernels_avx2_get(type, 0, k);
    case PUNA_KERNELS_AVX2_VNNI: return puna_kernels_avx2_get(type, 1, k);
    case PUNA_KERNELS_AVX512: return puna_kernels_avx512_get(type, 0, k);
    case PUNA_KERNELS_AVX512_VBMI: return puna_kernels_avx512_get(type, 1, k);
    case PUNA_KERNELS_NEON: return puna_kernels_neon_get(type, k);
    case PUNA_KERNELS_NEON_DOTPROD: return puna_kernels_dotprod_get(type, k);
    case PUNA_KERNELS_NEON_I8MM: return puna_kernels_i8mm_get(type, k);
    default: return 0;
    }
}

int puna_kernels_family_available(int family) {
    if (family == PUNA_KERNELS_AUTO || family == PUNA_KERNELS_REFERENCE || family == PUNA_KERNELS_SCALAR) return 1;
    if (family < 0 || family >= PUNA_KERNELS_FAMILY_COUNT) return 0;
    qmm_kernel k;
    if (!family_get(family, PUNA_TYPE_Q8_0, &k)) return 0;  // not compiled for this target
    uint32_t f = puna_cpu_features();
    switch (family) {
    case PUNA_KERNELS_AVX2: return (f & PUNA_CPU_AVX2) && (f & PUNA_CPU_FMA) && (f & PUNA_CPU_F16C);
    case PUNA_KERNELS_AVX2_VNNI:
        return (f & PUNA_CPU_AVX2) && (f & PUNA_CPU_FMA) && (f & PUNA_CPU_F16C) && (f & PUNA_CPU_AVXVNNI);
    case PUNA_KERNELS_AVX512:
        return (f & PUNA_CPU_AVX512F) && (f & PUNA_CPU_AVX512BW) && (f & PUNA_CPU_AVX512VNNI) && (f & PUNA_CPU_FMA) &&
               (f & PUNA_CPU_F16C);
    case PUNA_KERNELS_AVX512_VBMI:
        return puna_kernels_family_available(PUNA_KERNELS_AVX512) && (f & PUNA_CPU_AVX512VBMI);
    case PUNA_KERNELS_NEON: return (f & PUNA_CPU_NEON) != 0;
    case PUNA_KERNELS_NEON_DOTPROD: return (f & PUNA_CPU_DOTPROD) != 0;
    case PUNA_KERNELS_NEON_I8MM: return (f & PUNA_CPU_DOTPROD) && (f & PUNA_CPU_I8MM);
    default: return 0;
    }
}

static int auto_family(void) {
    static _Atomic int cached = -1;
    int f = atomic_load_explicit(&cached, memory_order_relaxed);
    if (f >= 0) return f;
    static const int order[] = { PUNA_KERNELS_AVX512_VBMI, PUNA_KERNELS_AVX512, PUNA_KERNELS_AVX2_VNNI, PUNA_KERNELS_AVX2,
                                 PUNA_KERNELS_NEON_I8MM, PUNA_KERNELS_NEON_DOTPROD, PUNA_KERNELS_NEON };
    f = PUNA_KERNELS_REFERENCE;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (puna_kernels_family_available(order[i])) { f = order[i]; break; }
    // PUNA_KERNELS=<family name> overrides the detection (benchmarks, debugging).
    const char *env = puna_getenv("PUNA_KERNELS");
    if (env)
        for (int i = PUNA_KERNELS_REFERENCE; i < PUNA_KERNELS_FAMILY_COUNT; i++)
            if (strcmp(env, family_names[i]) == 0 && puna_kernels_family_available(i)) f = i;
    atomic_store_explicit(&cached, f, memory_order_relaxed);
    return f;
}

int puna_kernels_set_family(int family) {
    if (!puna_kernels_family_available(family)) return -1;
    forced_family = family;
    return 0;
}

int puna_kernels_family(void) { return forced_family == PUNA_KERNELS_AUTO ? auto_family() : forced_family; }

static int is_bnb(int type) { return type == PUNA_TYPE_BNB4 || type == PUNA_TYPE_BNB_INT8; }

static int matmul_type_ok(int type) {
    if (is_bnb(type)) return 1;
    if (type < 0 || type >= PUNA_TYPE_COUNT) return 0;
    if (type == PUNA_TYPE_F32) return 1;
    const puna_type_info *info = &puna_type_table[type];
    return info->decode != NULL && info->block_size > 0 && info->type_size > 0;
}

// The family that serves `type` now (REFERENCE when the chosen family lacks it) and its kernel.
static int select_matmul(int type, qmm_kernel *k) {
    int family = puna_kernels_family();
    if (family != PUNA_KERNELS_REFERENCE && family_get(family, type, k) && k->rows) return family;
    return PUNA_KERNELS_REFERENCE;
}

// The weights and cols fit the type (a type matmul_type_ok accepted): whole GGML blocks, or a valid
// bitsandbytes descriptor.
static int weights_ok(int type, const void *weights, int64_t cols) {
    if (type == PUNA_TYPE_BNB4) return puna_bnb4_validate(weights, cols) == 0;
    if (type == PUNA_TYPE_BNB_INT8) return puna_bnb_int8_validate(weights, cols) == 0;
    return cols % puna_type_table[type].block_size == 0;
}

// select_matmul for one matrix: bitsandbytes shapes the quantized-activation kernels do not take
// (4-bit blocks or int8 rows that are not whole activation blocks of 32) go to the reference.
static int select_for(int type, const void *weights, int64_t cols, qmm_kernel *k) {
    if (type == PUNA_TYPE_BNB4 && ((const puna_bnb4_weight *)weights)->blocksize % 32 != 0) return PUNA_KERNELS_REFERENCE;
    if (type == PUNA_TYPE_BNB_INT8 && cols % 32 != 0) return PUNA_KERNELS_REFERENCE;
    return select_matmul(type, k);
}

static int bnb_decode_rows(int type, const void *w, int64_t cols, int64_t r0, int64_t r1, float *out) {
    return type == PUNA_TYPE_BNB4 ? puna_bnb4_dequantize_rows(w, cols, r0, r1, out)
                                  : puna_bnb_int8_dequantize_rows(w, cols, r0, r1, out);
}
static int decode_bnb4_rows(const void *w, int64_t cols, int64_t r0, int64_t r1, float *out) {
    return bnb_decode_rows(PUNA_TYPE_BNB4, w, cols, r0, r1, out);
}
static int decode_bnb_int8_rows(const void *w, int64_t cols, int64_t r0, int64_t r1, float *out) {
    return bnb_decode_rows(PUNA_TYPE_BNB_INT8, w, cols, r0, r1, out);
}

int puna_matmul_supports(int type) { return matmul_type_ok(type); }

const char *puna_matmul_kernel_name(int type) {
    qmm_kernel k;
    return matmul_type_ok(type) ? family_names[select_matmul(type, &k)] : NULL;
}

int64_t puna_matmul_activation_bytes(int type, int64_t cols) {
    qmm_kernel k;
    if (!matmul_type_ok(type) || cols <= 0 || select_matmul(type, &k) == PUNA_KERNELS_REFERENCE || !k.quantize) return 0;
    return make_act_layout(k.act_format, cols).token_bytes;
}

// ---- quantized-activation matmuls on one input ------------------------------------------------------
// puna_matmul runs one matrix through here, puna_matmul_many several that read the same activations
// (Q, K and V; gate and up): the activations are quantized once per activation format and the row
// chunks of all matrices go through one pool run, so the threads never wait for each other between
// the matrices and the weight stream does not pause. Each row is computed by the same kernel call
// either way, so results are identical.

#define MANY_MAX 8

// Unmerged LoRA pairs of one token (puna_lora_matmul_many1): matrix m's pairs add their updates to
// each chunk of its rows right after the base product. Their A products u come first: every
// thread claims rank rows before any chunk, so none waits long for a late starter's share.
typedef struct {
    const puna_lora_factors *pairs[MANY_MAX];
    const float *scales[MANY_MAX];
    int n_pairs[MANY_MAX];
    int64_t u_first[MANY_MAX];    // where matrix m's pairs' u start in u
    float *u;                     // total_rank floats: every pair's u, matrix by matrix, pair by pair
    int64_t total_rank;
    int64_t next_u, u_done;       // atomic (__atomic builtins): rank rows claimed, finished
} many_adapters;

typedef struct {
    qmm_args args[MANY_MAX];
    qmm_kernel kernel[MANY_MAX];
    int64_t chunk_rows[MANY_MAX], first_chunk[MANY_MAX + 1];
    int count;
    _Atomic int64_t next_chunk;
    many_adapters *adapters;      // NULL: none
} many_job;

// Rank rows of u claimed at a time.
#define U_GROUP 4

static void many_u_rows(const many_job *job, many_adapters *ad) {
    for (;;) {
        int64_t g0 = __atomic_fetch_add(&ad->next_u, U_GROUP, __ATOMIC_RELAXED);
        if (g0 >= ad->total_rank) break;
        int64_t g1 = g0 + U_GROUP < ad->total_rank ? g0 + U_GROUP : ad->total_rank;
        int64_t offset = 0;
        for (int m = 0; m < job->count; m++) {
            for (int p = 0; p < ad->n_pairs[m]; p++) {
                const puna_lora_factors *f = &ad->pairs[m][p];
                int64_t lo = g0 > offset ? g0 : offset, hi = g1 < offset + f->rank ? g1 : offset + f->rank;
                if (lo < hi) lora_u_rows(f, ad->scales[m][p], job->args[m].x, lo - offset, hi - offset, ad->u + lo);
                offset += f->rank;
            }
        }
        __atomic_add_fetch(&ad->u_done, g1 - g0, __ATOMIC_RELEASE);
    }
}

static void many_rows_task(void *ctx, int thread_index, int n_threads) {
    (void)thread_index;
    (void)n_threads;
    many_job *job = ctx;
    many_adapters *ad = job->adapters;
    if (ad) many_u_rows(job, ad);
    int u_ready = 0;
    int m = 0;
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&job->next_chunk, 1, memory_order_relaxed);
        if (c >= job->first_chunk[job->count]) break;
        while (c >= job->first_chunk[m + 1]) m++;
        const qmm_args *a = &job->args[m];
        int64_t r0 = (c - job->first_chunk[m]) * job->chunk_rows[m];
        int64_t r1 = r0 + job->chunk_rows[m] < a->rows ? r0 + job->chunk_rows[m] : a->rows;
        job->kernel[m].rows(a, r0, r1);
        if (!ad || ad->n_pairs[m] == 0) continue;
        if (!u_ready) {
            lora_wait_for(&ad->u_done, ad->total_rank);
            u_ready = 1;
        }
        const float *u = ad->u + ad->u_first[m];
        for (int p = 0; p < ad->n_pairs[m]; p++) {
            lora_add_rows(&ad->pairs[m][p], u, a->y, r0, r1);
            u += ad->pairs[m][p].rank;
        }
    }
}

typedef struct {
    many_job *job;
    int format_of[MANY_MAX];      // matrix -> the first matrix with its activation format
} many_quantize_job;

static void many_quantize_task(void *ctx, int thread_index, int n_threads) {
    many_quantize_job *q = ctx;
    for (int m = 0; m < q->job->count; m++) {
        if (q->format_of[m] != m || !q->job->kernel[m].quantize) continue;
        const qmm_args *a = &q->job->args[m];
        int64_t per = (a->n_tokens + n_threads - 1) / n_threads;
        int64_t t0 = per * thread_index, t1 = t0 + per < a->n_tokens ? t0 + per : a->n_tokens;
        if (t0 < t1) q->job->kernel[m].quantize(a->x, a->cols, &a->layout, q->job->kernel[m].aux, (uint8_t *)a->act, t0, t1);
    }
}

// count (1..MANY_MAX) matrices of checked shapes with the kernels the family gives their types.
// ad: adapter pairs (one token only) or NULL.
static int run_qmm(puna_pool *pool, int count, const qmm_kernel *kernels, const int *types, const void *const *weights,
                   const int64_t *rows, int64_t cols, const float *x, int64_t n_tokens, float *const *ys,
                   many_adapters *ad) {
    many_job job;
    memset(&job, 0, sizeof job);
    job.count = count;
    job.adapters = ad;
    for (int m = 0; m < count; m++) job.kernel[m] = kernels[m];
    // One quantized copy of x per activation format (and aux kind): matrices of the same type share it.
    many_quantize_job quantize = {.job = &job};
    size_t offsets[MANY_MAX], total = 0;
    for (int m = 0; m < count; m++) {
        qmm_args *a = &job.args[m];
        a->w = weights[m];
        // bitsandbytes kernels read their descriptor, not rows
        a->row_bytes = is_bnb(types[m]) ? 0 : types[m] == PUNA_TYPE_F32 ? cols * 4
                       : cols / puna_type_table[types[m]].block_size * puna_type_table[types[m]].type_size;
        a->rows = rows[m];
        a->cols = cols;
        a->x = x;
        a->n_tokens = n_tokens;
        a->y = ys[m];
        quantize.format_of[m] = m;
        if (!job.kernel[m].quantize) continue;
        a->layout = make_act_layout(job.kernel[m].act_format, cols);
        for (int e = 0; e < m; e++) {
            if (job.kernel[e].quantize == job.kernel[m].quantize && job.kernel[e].act_format == job.kernel[m].act_format &&
                (job.kernel[m].act_format != ACT_Q8_32 || job.kernel[e].aux == job.kernel[m].aux)) {
                quantize.format_of[m] = e;
                break;
            }
        }
        if (quantize.format_of[m] == m) {
            offsets[m] = total;
            total += (size_t)(a->layout.token_bytes * n_tokens);
        }
    }
    // u after the activations, in the same pool buffer.
    size_t u_offset = (total + 63) / 64 * 64;
    size_t buffer = ad ? u_offset + (size_t)ad->total_rank * sizeof(float) : total;
    uint8_t *act = buffer ? puna_pool_buffer(pool, buffer) : NULL;
    if (buffer && !act) return -1;
    if (ad) ad->u = (float *)(act + u_offset);
    for (int m = 0; m < count; m++)
        if (job.kernel[m].quantize) job.args[m].act = act + offsets[quantize.format_of[m]];
    int n_threads = puna_pool_size(pool);
    if (total) {
        // A single token's quantization is ~1 µs of work: not worth waking the workers for.
        if (n_threads == 1 || n_tokens < 4) many_quantize_task(&quantize, 0, 1);
        else puna_pool_run(pool, many_quantize_task, &quantize);
    }
    for (int m = 0; m < count; m++) {
        int64_t tile = job.kernel[m].row_tile > 0 ? job.kernel[m].row_tile : 1;
        // Chunks of a matrix with pairs hold whole tiles of their Bᵀ (puna_lora_matmul_many1 checked
        // that LORA_TILE is a whole number of row tiles).
        if (ad && ad->n_pairs[m] > 0) tile = LORA_TILE;
        job.chunk_rows[m] = chunk_rows_for(rows[m], tile, n_threads);
        job.first_chunk[m + 1] = job.first_chunk[m] + (rows[m] + job.chunk_rows[m] - 1) / job.chunk_rows[m];
    }
    atomic_init(&job.next_chunk, 0);
    if (n_threads == 1 || (job.first_chunk[count] == 1 && !ad)) many_rows_task(&job, 0, 1);
    else puna_pool_run(pool, many_rows_task, &job);
    return 0;
}

int puna_matmul_many(puna_pool *pool, int count, const int *types, const void *const *weights, const int64_t *rows,
                     int64_t cols, const float *x, int64_t n_tokens, float *const *ys) {
    if (count < 0 || count > MANY_MAX || cols < 0 || n_tokens < 0) return -1;
    qmm_kernel kernels[MANY_MAX];
    int fused = n_tokens > 0 && cols > 0;
    for (int m = 0; m < count && fused; m++) {
        if (!matmul_type_ok(types[m]) || rows[m] <= 0 || !weights[m] || !weights_ok(types[m], weights[m], cols)) fused = 0;
        else if (select_for(types[m], weights[m], cols, &kernels[m]) == PUNA_KERNELS_REFERENCE) fused = 0;
    }
    if (!fused) {  // the reference kernels, empty shapes and bad arguments: one by one
        for (int m = 0; m < count; m++) {
            int rc = puna_matmul(pool, types[m], weights[m], rows[m], cols, x, n_tokens, ys[m]);
            if (rc != 0) return rc;
        }
        return 0;
    }
    return run_qmm(pool, count, kernels, types, weights, rows, cols, x, n_tokens, ys, NULL);
}

int puna_lora_matmul_many1(puna_pool *pool, int count, const int *types, const void *const *weights, const int64_t *rows,
                           int64_t cols, const float *x, float *const *ys, const puna_lora_factors *const *pairs,
                           const float *const *scales, const int *n_pairs) {
    if (count < 1 || count > MANY_MAX || cols <= 0) return -1;
    qmm_kernel kernels[MANY_MAX];
    many_adapters ad;
    memset(&ad, 0, sizeof ad);
    int fused = 1;
    for (int m = 0; m < count; m++) {
        if (!matmul_type_ok(types[m]) || rows[m] <= 0 || !weights[m] || !weights_ok(types[m], weights[m], cols) || n_pairs[m] < 0)
            return -1;
        if (select_for(types[m], weights[m], cols, &kernels[m]) == PUNA_KERNELS_REFERENCE) fused = 0;
        // Chunks of a matrix with pairs are whole Bᵀ tiles, which must also be whole row tiles.
        else if (LORA_TILE % (kernels[m].row_tile > 0 ? kernels[m].row_tile : 1) != 0) fused = 0;
        for (int p = 0; p < n_pairs[m]; p++) {
            const puna_lora_factors *f = &pairs[m][p];
            if (!lora_factors_ok(f) || f->outputs != rows[m] || f->cols != cols) return -1;
        }
        ad.pairs[m] = pairs[m];
        ad.scales[m] = scales[m];
        ad.n_pairs[m] = n_pairs[m];
        ad.u_first[m] = ad.total_rank;
        for (int p = 0; p < n_pairs[m]; p++) ad.total_rank += pairs[m][p].rank;
    }
    if (!fused) {  // the reference kernels: the plain sequence
        for (int m = 0; m < count; m++) {
            if (puna_matmul(pool, types[m], weights[m], rows[m], cols, x, 1, ys[m]) != 0) return -1;
            for (int p = 0; p < n_pairs[m]; p++)
                if (puna_lora_apply(pool, &pairs[m][p], x, ys[m], rows[m], 1, NULL, NULL, scales[m][p]) != 0) return -1;
        }
        return 0;
    }
    return run_qmm(pool, count, kernels, types, weights, rows, cols, x, 1, ys, ad.total_rank > 0 ? &ad : NULL);
}

int puna_matmul(puna_pool *pool, int type, const void *weights, int64_t rows, int64_t cols,
                const float *x, int64_t n_tokens, float *y) {
    if (!matmul_type_ok(type) || rows < 0 || cols < 0 || n_tokens < 0) return -1;
    const int bnb = is_bnb(type);
    if (bnb && !weights) return -1;
    if (!weights_ok(type, weights, cols)) return -1;
    if (rows == 0 || n_tokens == 0) return 0;
    if (cols == 0) {
        memset(y, 0, (size_t)(rows * n_tokens) * sizeof(float));
        return 0;
    }
    qmm_kernel kernel;
    if (select_for(type, weights, cols, &kernel) != PUNA_KERNELS_REFERENCE)
        return run_qmm(pool, 1, &kernel, &type, &weights, &rows, cols, x, n_tokens, &y, NULL);

    const puna_type_info *info = bnb ? NULL : &puna_type_table[type];
    matmul_job job = {0};
    job.weights = weights;
    job.row_bytes = bnb ? 0 : cols / info->block_size * info->type_size;
    job.rows = rows;
    job.cols = cols;
    job.x = x;
    job.n_tokens = n_tokens;
    job.y = y;
    job.decode = bnb || type == PUNA_TYPE_F32 ? NULL : type == PUNA_TYPE_F16 ? decode_f16_rows : info->decode;
    job.decode_rows = type == PUNA_TYPE_BNB4 ? decode_bnb4_rows : type == PUNA_TYPE_BNB_INT8 ? decode_bnb_int8_rows : NULL;
    job.rows_fn = matmul_rows_reference;

    int64_t group = GROUP_BYTES / (cols * (int64_t)sizeof(float));
    if (group > MAX_GROUP_ROWS) group = MAX_GROUP_ROWS;
    group -= group % TILE_ROWS;
    if (group < TILE_ROWS) group = TILE_ROWS;
    job.group_rows = group;

    int n_threads = puna_pool_size(pool);
    job.chunk_rows = chunk_rows_for(rows, TILE_ROWS, n_threads);
    job.n_chunks = (rows + job.chunk_rows - 1) / job.chunk_rows;
    atomic_init(&job.next_chunk, 0);

    if (job.decode || job.decode_rows) {
        int64_t per_thread = group * cols;
        job.scratch = puna_pool_scratch(pool, per_thread, &job.scratch_stride);
        if (!job.scratch) return -1;
    }
    if (n_threads == 1 || job.n_chunks == 1) matmul_task(&job, 0, 1);
    else puna_pool_run(pool, matmul_task, &job);
    return 0;
}

// ---- element-wise ops ------------------------------------------------------------------------

void puna_rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps) {
    if (n <= 0) return;
    double acc[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
    for (; i < n; i++) acc[0] += (double)x[i] * (double)x[i];
    double mean = ((acc[0] + acc[1]) + (acc[2] + acc[3])) / (double)n;
    float scale = (float)(1.0 / sqrt(mean + (double)eps));
    // Same order as transformers' LlamaRMSNorm: normalise, then apply the weight.
    if (weight) for (i = 0; i < n; i++) out[i] = (x[i] * scale) * weight[i];
    else for (i = 0; i < n; i++) out[i] = x[i] * scale;
}

void puna_rope_ex(float *vec, int n_heads, int head_dim, int rope_dims, int pos, float freq_base,
                  const float *freq_factors, int style, float attn_factor) {
    if (rope_dims > head_dim) rope_dims = head_dim;
    const int half = rope_dims / 2;
    // Pair i: (2i, 2i+1) in GGML's normal style, (i, i + rope_dims/2) in the NEOX style that
    // Hugging Face's rotate_half computes (the checkpoint's own order, which convert_hf_to_gguf.py
    // keeps for Qwen, Phi-3, Gemma...).
    const int first_stride = style == PUNA_ROPE_NEOX ? 1 : 2;
    const int partner = style == PUNA_ROPE_NEOX ? half : 1;
    // Angles in f32 step by step as transformers computes them (inv_freq = 1 / base^(2i/d), then
    // pos * inv_freq), so conformance against it is not limited by a different angle rounding.
    for (int i = 0; i < half; i++) {
        float inv_freq = 1.0f / powf(freq_base, (float)(2 * i) / (float)rope_dims);
        float theta = (float)pos * inv_freq;
        if (freq_factors) theta /= freq_factors[i];
        float c = cosf(theta) * attn_factor, s = sinf(theta) * attn_factor;
        for (int h = 0; h < n_heads; h++) {
            float *p = vec + (int64_t)h * head_dim + first_stride * i;
            float x0 = p[0], x1 = p[partner];
            p[0] = x0 * c - x1 * s;
            p[partner] = x0 * s + x1 * c;
        }
    }
}

void puna_rope_factors(float *vec, int n_heads, int head_dim, int rope_dims, int pos, float freq_base,
                       const float *freq_factors) {
    puna_rope_ex(vec, n_heads, head_dim, rope_dims, pos, freq_base, freq_factors, PUNA_ROPE_NORMAL, 1.0f);
}

void puna_rope(float *vec, int n_heads, int head_dim, int rope_dims, int pos, float freq_base) {
    puna_rope_ex(vec, n_heads, head_dim, rope_dims, pos, freq_base, NULL, PUNA_ROPE_NORMAL, 1.0f);
}

double puna_ln(double x) { return log(x); }
double puna_pow(double x, double y) { return pow(x, y); }

void puna_layernorm(float *out, const float *x, const float *weight, const float *bias, int64_t n, float eps) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    const float mean = (float)(sum / (double)n);
    double squares = 0;
    for (int64_t i = 0; i < n; i++) squares += (double)(x[i] - mean) * (double)(x[i] - mean);
    const float scale = (float)(1.0 / sqrt(squares / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) {
        float y = (x[i] - mean) * scale;
        if (weight) y *= weight[i];
        if (bias) y += bias[i];
        out[i] = y;
    }
}

static inline float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

void puna_gelu(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh(x[i]);
}

void puna_geglu(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh(gate[i]) * up[i];
}

void puna_softcap(float *x, int64_t n, float cap) {
    for (int64_t i = 0; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}

void puna_scale(float *x, int64_t n, float factor) {
    for (int64_t i = 0; i < n; i++) x[i] *= factor;
}

void puna_add_bias(float *x, const float *bias, int64_t n_rows, int64_t n) {
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t i = 0; i < n; i++) x[r * n + i] += bias[i];
}

void puna_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void puna_add(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void puna_softmax(float *x, int64_t n) {
    if (n <= 0) return;
    float max = x[0];
    for (int64_t i = 1; i < n; i++) if (x[i] > max) max = x[i];
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

// ---- attention -------------------------------------------------------------------------------
// Scores, softmax and the weighted sum of values run over one KV row at a time through attn_ops:
// the scalar versions below, or the family's SIMD ones (kernels_internal.h).

static float attn_dot_f32(const float *q, const uint8_t *row, int64_t first, int n) {
    return dot_f32(q, (const float *)row + first, n);
}
static void attn_axpy_f32(float *out, float p, const uint8_t *row, int64_t first, int n) {
    const float *v = (const float *)row + first;
    for (int d = 0; d < n; d++) out[d] += p * v[d];
}
static float attn_dot_f16(const float *q, const uint8_t *row, int64_t first, int n) {
    return dot_f32_f16(q, (const uint16_t *)row + first, n);
}
static void attn_axpy_f16(float *out, float p, const uint8_t *row, int64_t first, int n) {
    const uint16_t *v = (const uint16_t *)row + first;
    for (int d = 0; d < n; d++) out[d] += p * kq_f16(v[d]);
}
// q8_0 rows: element i is d[i / 32] * q[i % 32]; a head may begin and end inside a block.
static float attn_dot_q8_0(const float *q, const uint8_t *row, int64_t first, int n) {
    float acc = 0;
    for (int64_t i = first; i < first + n;) {
        const puna_block_q8_0 *b = (const puna_block_q8_0 *)row + i / 32;
        int64_t end = (i / 32 + 1) * 32 < first + n ? (i / 32 + 1) * 32 : first + n;
        float part = 0;
        for (int64_t e = i; e < end; e++) part += q[e - first] * (float)b->qs[e % 32];
        acc += part * kq_f16(b->d);
        i = end;
    }
    return acc;
}
static void attn_axpy_q8_0(float *out, float p, const uint8_t *row, int64_t first, int n) {
    for (int64_t i = first; i < first + n;) {
        const puna_block_q8_0 *b = (const puna_block_q8_0 *)row + i / 32;
        int64_t end = (i / 32 + 1) * 32 < first + n ? (i / 32 + 1) * 32 : first + n;
        float s = p * kq_f16(b->d);
        for (int64_t e = i; e < end; e++) out[e - first] += s * (float)b->qs[e % 32];
        i = end;
    }
}

static attn_ops select_attention(int kv_type) {
    attn_ops ops = {0};
    int family = puna_kernels_family();
    int ok = 0;
    if (family == PUNA_KERNELS_AVX512 || family == PUNA_KERNELS_AVX512_VBMI) ok = puna_attn_ops_avx512(kv_type, &ops);
    else if (family == PUNA_KERNELS_AVX2 || family == PUNA_KERNELS_AVX2_VNNI) ok = puna_attn_ops_avx2(kv_type, &ops);
    else if (family >= PUNA_KERNELS_NEON && family <= PUNA_KERNELS_NEON_I8MM) ok = puna_attn_ops_neon(kv_type, &ops);
    if (ok && ops.dot && ops.axpy) return ops;
    if (kv_type == PUNA_TYPE_F32) { ops.dot = attn_dot_f32; ops.axpy = attn_axpy_f32; }
    else if (kv_type == PUNA_TYPE_F16) { ops.dot = attn_dot_f16; ops.axpy = attn_axpy_f16; }
    else { ops.dot = attn_dot_q8_0; ops.axpy = attn_axpy_q8_0; }
    return ops;
}

typedef struct {
    float *out;
    const float *q;
    attn_ops ops;
    const uint8_t *k, *v;
    int64_t kv_row_bytes;
    int n_tokens, pos0, n_heads, head_dim, group;  // group: query heads per kv head
    float scale;
    int window;        // > 0: a token sees only the last `window` positions (itself included)
    float softcap;     // > 0: scores become softcap * tanh(score / softcap)
    int ring_rows;     // > 0: position j is in cache row j % ring_rows
    const float *alibi_slopes;  // [n_heads] or NULL
    float *scratch;
    int64_t scratch_stride;
    _Atomic int next;  // next (token, head) pair, token-major
} attention_job;

static void attention_one(const attention_job *job, int t, int h, float *scores) {
    const int hd = job->head_dim, kvh = h / job->group;
    const int n_pos = job->pos0 + t + 1;  // causal: this token sees positions 0 .. pos0 + t
    const int lo = job->window > 0 && n_pos > job->window ? n_pos - job->window : 0;
    const int n_seen = n_pos - lo;
    const int64_t q_stride = (int64_t)job->n_heads * hd, first = (int64_t)kvh * hd;
    const float *qh = job->q + t * q_stride + (int64_t)h * hd;
    float *oh = job->out + t * q_stride + (int64_t)h * hd;
    // Rows of positions lo .. n_pos - 1: one run from lo's row, or, in a ring that wraps, a run to
    // the ring's end and one from its start.
    const int64_t rb = job->kv_row_bytes;
    const int start = job->ring_rows > 0 ? lo % job->ring_rows : lo;
    const int first_run = job->ring_rows > 0 && start + n_seen > job->ring_rows ? job->ring_rows - start : n_seen;
    const uint8_t *k = job->k + (int64_t)start * rb, *v = job->v + (int64_t)start * rb;
    for (int j = 0; j < n_seen; j++) {
        const uint8_t *row = j < first_run ? k + j * rb : job->k + (int64_t)(j - first_run) * rb;
        scores[j] = job->ops.dot(qh, row, first, hd) * job->scale;
    }
    if (job->softcap > 0)
        for (int j = 0; j < n_seen; j++) scores[j] = job->softcap * tanhf(scores[j] / job->softcap);
    if (job->alibi_slopes) {
        // ALiBi: slope * (key position - query position); the query's own offset cancels in the softmax.
        const float slope = job->alibi_slopes[h];
        for (int j = 0; j < n_seen; j++) scores[j] += slope * (float)(lo + j - (n_pos - 1));
    }
    puna_softmax(scores, n_seen);
    if (job->ops.wsum && first_run == n_seen) {
        job->ops.wsum(oh, scores, v, rb, first, hd, n_seen);
        return;
    }
    for (int d = 0; d < hd; d++) oh[d] = 0;
    for (int j = 0; j < n_seen; j++) {
        const uint8_t *row = j < first_run ? v + j * rb : job->v + (int64_t)(j - first_run) * rb;
        job->ops.axpy(oh, scores[j], row, first, hd);
    }
}

static void attention_task(void *ctx, int thread_index, int n_threads) {
    (void)n_threads;
    attention_job *job = ctx;
    float *scores = job->scratch + thread_index * job->scratch_stride;
    const int total = job->n_tokens * job->n_heads;
    // Later tokens see more positions, so pairs are claimed one at a time rather than pre-split.
    for (;;) {
        int i = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (i >= total) break;
        attention_one(job, i / job->n_heads, i % job->n_heads, scores);
    }
}

int puna_attention(puna_pool *pool, float *out, const float *q, int kv_type, const void *k_cache,
                   const void *v_cache, int64_t kv_row_bytes, int n_tokens, int pos0, int n_heads,
                   int n_kv_heads, int head_dim, float *scratch, int n_ctx) {
    return puna_attention_ex(pool, out, q, kv_type, k_cache, v_cache, kv_row_bytes, n_tokens, pos0, n_heads,
                             n_kv_heads, head_dim, scratch, n_ctx, NULL);
}

int puna_attention_ex(puna_pool *pool, float *out, const float *q, int kv_type, const void *k_cache,
                      const void *v_cache, int64_t kv_row_bytes, int n_tokens, int pos0, int n_heads,
                      int n_kv_heads, int head_dim, float *scratch, int n_ctx, const puna_attention_options *options) {
    if (options && (options->window < 0 || !(options->scale > 0) || !(options->softcap >= 0) || options->ring_rows < 0)) return -1;
    // A ring must hold every position a token sees plus the step's later tokens, which were
    // stored before attention ran: window + n_tokens - 1 rows.
    if (options && options->ring_rows > 0 && (options->window <= 0 || options->ring_rows < options->window + n_tokens - 1)) return -1;
    if (kv_type != PUNA_TYPE_F32 && kv_type != PUNA_TYPE_F16 && kv_type != PUNA_TYPE_Q8_0) return -1;
    if (n_tokens < 0 || pos0 < 0 || n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0) return -1;
    if (n_heads % n_kv_heads != 0) return -1;
    if (n_tokens == 0) return 0;
    int64_t width = (int64_t)n_kv_heads * head_dim;
    if (kv_type == PUNA_TYPE_Q8_0 && width % 32 != 0) return -1;
    int64_t packed = kv_type == PUNA_TYPE_F32 ? width * 4 : kv_type == PUNA_TYPE_F16 ? width * 2 : width / 32 * 34;
    if (kv_row_bytes == 0) kv_row_bytes = packed;
    if (kv_row_bytes < packed) return -1;
    int64_t needed = (int64_t)pos0 + n_tokens;

    attention_job job = {0};
    job.out = out;
    job.q = q;
    job.ops = select_attention(kv_type);
    job.k = k_cache;
    job.v = v_cache;
    job.kv_row_bytes = kv_row_bytes;
    job.n_tokens = n_tokens;
    job.pos0 = pos0;
    job.n_heads = n_heads;
    job.head_dim = head_dim;
    job.group = n_heads / n_kv_heads;
    job.scale = options ? options->scale : 1.0f / sqrtf((float)head_dim);
    job.window = options ? options->window : 0;
    job.softcap = options ? options->softcap : 0;
    job.ring_rows = options ? options->ring_rows : 0;
    job.alibi_slopes = options ? options->alibi_slopes : NULL;
    atomic_init(&job.next, 0);
    if (scratch) {
        if (n_ctx < needed) return -1;
        job.scratch = scratch;
        job.scratch_stride = n_ctx;
    } else {
        job.scratch = puna_pool_scratch(pool, needed, &job.scratch_stride);
        if (!job.scratch) return -1;
    }
    if (puna_pool_size(pool) == 1 || (int64_t)n_tokens * n_heads == 1) attention_task(&job, 0, 1);
    else puna_pool_run(pool, attention_task, &job);
    return 0;
}

// ---- memory read probe -------------------------------------------------------------------------
typedef struct {
    int count;
    const void *const *starts;
    const int64_t *bytes;
    _Atomic uint64_t folded;
} read_probe_job;

// 32-byte vectors with unaligned loads: every line is fully read (each 64-byte line is two loads),
// the loop stays a few instructions per line on every ISA the compiler targets.
typedef uint64_t read_probe_vec __attribute__((vector_size(32)));

static void read_probe_task(void *ctx, int thread_index, int n_threads) {
    read_probe_job *job = ctx;
    read_probe_vec acc0 = {0}, acc1 = {0};
    uint64_t tail = 0;
    for (int r = 0; r < job->count; r++) {
        const uint8_t *base = job->starts[r];
        int64_t n = job->bytes[r];
        if (!base || n <= 0) continue;
        int64_t lines = n / 64;
        int64_t first = lines * thread_index / n_threads, last = lines * (thread_index + 1) / n_threads;
        for (int64_t l = first; l < last; l++) {
            read_probe_vec a, b;
            memcpy(&a, base + l * 64, 32);
            memcpy(&b, base + l * 64 + 32, 32);
            acc0 ^= a;
            acc1 += b;
        }
        if (thread_index == n_threads - 1) {
            for (int64_t i = lines * 64; i < n; i++) tail += base[i];
        }
    }
    read_probe_vec all = acc0 ^ acc1;
    atomic_fetch_xor(&job->folded, all[0] ^ all[1] ^ all[2] ^ all[3] ^ tail);
}

uint64_t puna_read_ranges(puna_pool *pool, int count, const void *const *starts, const int64_t *bytes) {
    if (!pool || count <= 0 || !starts || !bytes) return 0;
    read_probe_job job = {0};
    atomic_init(&job.folded, 0);
    job.count = count;
    job.starts = starts;
    job.bytes = bytes;
    if (puna_pool_size(pool) == 1) read_probe_task(&job, 0, 1);
    else puna_pool_run(pool, read_probe_task, &job);
    return atomic_load(&job.folded);
}
