// Unmerged LoRA deltas (puna_lora.h). Per token the work is two thin products: A·x (rank dot
// products of length cols) and Bᵀ·u (rank scaled row additions of length outputs). Both are pure
// streams over the factors, so the aim is to run at memory speed with little fixed cost: factors
// are converted to f32 in registers (no decode buffers), B is pre-transposed by the caller so each
// rank index adds one contiguous row, and per-(token, output) sums keep a fixed order so every
// split of the work gives the same bits.
#include "lora_internal.h"
#include "puna_platform.h"
#include "puna_quants.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LORA_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define LORA_NEON 1
#include <arm_neon.h>
#endif

// Bᵀ is stored in tiles of LORA_TILE (lora_internal.h) outputs: tile j holds rows k = 0..rank-1 of
// outputs [64j, 64j + 64) back to back (the last tile zero-padded), so adding one tile's update
// streams a contiguous rank × 64 block and its 64 sums stay in registers.

static inline size_t type_bytes(int type) { return type == PUNA_TYPE_F32 ? 4 : 2; }

// One implementation: the dot product of a factor row with f32 inputs, and the update of one tile,
// y[l] += Σ_k u[k] · T[k][l] for l < w (k in order, then one add into y).
typedef float (*lora_dot_fn)(int type, const void *row, const float *x, int64_t n);
typedef void (*lora_tile_fn)(int type, const void *tile, int64_t rank, const float *u, float *y, int w);
typedef struct {
    lora_dot_fn dot;
    lora_tile_fn tile_add;
    const char *name;
} lora_impl;

// ---- portable C ----------------------------------------------------------------------------

static inline float load_one(int type, const void *p, int64_t i) {
    switch (type) {
    case PUNA_TYPE_F16: return puna_f16_to_f32(((const puna_f16 *)p)[i]);
    case PUNA_TYPE_BF16: {
        uint32_t bits = (uint32_t)((const uint16_t *)p)[i] << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    default: return ((const float *)p)[i];
    }
}

static float portable_dot(int type, const void *row, const float *x, int64_t n) {
    float s = 0;
    for (int64_t c = 0; c < n; c++) s += load_one(type, row, c) * x[c];
    return s;
}

static void portable_tile_add(int type, const void *tile, int64_t rank, const float *u, float *y, int w) {
    float acc[LORA_TILE] = {0};
    for (int64_t k = 0; k < rank; k++) {
        for (int l = 0; l < LORA_TILE; l++) acc[l] += u[k] * load_one(type, tile, k * LORA_TILE + l);
    }
    for (int l = 0; l < w; l++) y[l] += acc[l];
}

static const lora_impl portable_impl = {portable_dot, portable_tile_add, "portable"};

// ---- x86: AVX-512 (masked tails) and AVX2 + F16C -------------------------------------------

#ifdef LORA_X86
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c,avx2")))
#define T256 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

INLINE T512 __m512 l512_load(int type, const void *p, int64_t i) {
    switch (type) {
    case PUNA_TYPE_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
    case PUNA_TYPE_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i))), 16));
    default: return _mm512_loadu_ps((const float *)p + i);
    }
}

INLINE T512 __m512 l512_load_masked(int type, const void *p, int64_t i, __mmask16 m) {
    switch (type) {
    case PUNA_TYPE_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i));
    case PUNA_TYPE_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i)), 16));
    default: return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    }
}

INLINE T512 float l512_dot_typed(int type, const void *row, const float *x, int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t c = 0;
    for (; c + 64 <= n; c += 64) {
        s0 = _mm512_fmadd_ps(l512_load(type, row, c), _mm512_loadu_ps(x + c), s0);
        s1 = _mm512_fmadd_ps(l512_load(type, row, c + 16), _mm512_loadu_ps(x + c + 16), s1);
        s2 = _mm512_fmadd_ps(l512_load(type, row, c + 32), _mm512_loadu_ps(x + c + 32), s2);
        s3 = _mm512_fmadd_ps(l512_load(type, row, c + 48), _mm512_loadu_ps(x + c + 48), s3);
    }
    for (; c + 16 <= n; c += 16) s0 = _mm512_fmadd_ps(l512_load(type, row, c), _mm512_loadu_ps(x + c), s0);
    if (c < n) {
        __mmask16 m = (__mmask16)((1u << (n - c)) - 1);
        s1 = _mm512_fmadd_ps(l512_load_masked(type, row, c, m), _mm512_maskz_loadu_ps(m, x + c), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static T512 float l512_dot(int type, const void *row, const float *x, int64_t n) {
    switch (type) {
    case PUNA_TYPE_F16: return l512_dot_typed(PUNA_TYPE_F16, row, x, n);
    case PUNA_TYPE_BF16: return l512_dot_typed(PUNA_TYPE_BF16, row, x, n);
    default: return l512_dot_typed(PUNA_TYPE_F32, row, x, n);
    }
}

INLINE T512 void l512_tile_add_typed(int type, const void *tile, int64_t rank, const float *u, float *y, int w) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < rank; k++) {
        __m512 uk = _mm512_set1_ps(u[k]);
        int64_t at = k * LORA_TILE;
        a0 = _mm512_fmadd_ps(uk, l512_load(type, tile, at), a0);
        a1 = _mm512_fmadd_ps(uk, l512_load(type, tile, at + 16), a1);
        a2 = _mm512_fmadd_ps(uk, l512_load(type, tile, at + 32), a2);
        a3 = _mm512_fmadd_ps(uk, l512_load(type, tile, at + 48), a3);
    }
    __m512 acc[4] = {a0, a1, a2, a3};
    for (int q = 0; q < 4; q++) {
        int left = w - 16 * q;
        if (left <= 0) break;
        __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        float *yq = y + 16 * q;
        _mm512_mask_storeu_ps(yq, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, yq), acc[q]));
    }
}

static T512 void l512_tile_add(int type, const void *tile, int64_t rank, const float *u, float *y, int w) {
    switch (type) {
    case PUNA_TYPE_F16: l512_tile_add_typed(PUNA_TYPE_F16, tile, rank, u, y, w); break;
    case PUNA_TYPE_BF16: l512_tile_add_typed(PUNA_TYPE_BF16, tile, rank, u, y, w); break;
    default: l512_tile_add_typed(PUNA_TYPE_F32, tile, rank, u, y, w); break;
    }
}

static const lora_impl avx512_impl = {l512_dot, l512_tile_add, "avx512"};

INLINE T256 __m256 l256_load(int type, const void *p, int64_t i) {
    switch (type) {
    case PUNA_TYPE_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    case PUNA_TYPE_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i))), 16));
    default: return _mm256_loadu_ps((const float *)p + i);
    }
}

INLINE T256 float l256_dot_typed(int type, const void *row, const float *x, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t c = 0;
    for (; c + 32 <= n; c += 32) {
        s0 = _mm256_fmadd_ps(l256_load(type, row, c), _mm256_loadu_ps(x + c), s0);
        s1 = _mm256_fmadd_ps(l256_load(type, row, c + 8), _mm256_loadu_ps(x + c + 8), s1);
        s2 = _mm256_fmadd_ps(l256_load(type, row, c + 16), _mm256_loadu_ps(x + c + 16), s2);
        s3 = _mm256_fmadd_ps(l256_load(type, row, c + 24), _mm256_loadu_ps(x + c + 24), s3);
    }
    for (; c + 8 <= n; c += 8) s0 = _mm256_fmadd_ps(l256_load(type, row, c), _mm256_loadu_ps(x + c), s0);
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float tail = 0;
    for (; c < n; c++) tail = __builtin_fmaf(load_one(type, row, c), x[c], tail);
    return _mm_cvtss_f32(h) + tail;
}

static T256 float l256_dot(int type, const void *row, const float *x, int64_t n) {
    switch (type) {
    case PUNA_TYPE_F16: return l256_dot_typed(PUNA_TYPE_F16, row, x, n);
    case PUNA_TYPE_BF16: return l256_dot_typed(PUNA_TYPE_BF16, row, x, n);
    default: return l256_dot_typed(PUNA_TYPE_F32, row, x, n);
    }
}

INLINE T256 void l256_tile_add_typed(int type, const void *tile, int64_t rank, const float *u, float *y, int w) {
    __m256 a[8];
    for (int q = 0; q < 8; q++) a[q] = _mm256_setzero_ps();
    for (int64_t k = 0; k < rank; k++) {
        __m256 uk = _mm256_set1_ps(u[k]);
        for (int q = 0; q < 8; q++) a[q] = _mm256_fmadd_ps(uk, l256_load(type, tile, k * LORA_TILE + 8 * q), a[q]);
    }
    if (w == LORA_TILE) {
        for (int q = 0; q < 8; q++) _mm256_storeu_ps(y + 8 * q, _mm256_add_ps(_mm256_loadu_ps(y + 8 * q), a[q]));
        return;
    }
    float acc[LORA_TILE];
    for (int q = 0; q < 8; q++) _mm256_storeu_ps(acc + 8 * q, a[q]);
    for (int l = 0; l < w; l++) y[l] += acc[l];
}

static T256 void l256_tile_add(int type, const void *tile, int64_t rank, const float *u, float *y, int w) {
    switch (type) {
    case PUNA_TYPE_F16: l256_tile_add_typed(PUNA_TYPE_F16, tile, rank, u, y, w); break;
    case PUNA_TYPE_BF16: l256_tile_add_typed(PUNA_TYPE_BF16, tile, rank, u, y, w); break;
    default: l256_tile_add_typed(PUNA_TYPE_F32, tile, rank, u, y, w); break;
    }
}

static const lora_impl avx2_impl = {l256_dot, l256_tile_add, "avx2"};
#endif  // LORA_X86

// ---- AArch64 NEON (f16 → f32 conversion is part of the base ISA) ---------------------------

#ifdef LORA_NEON
static inline float32x4_t neon_load(int type, const void *p, int64_t i) {
    switch (type) {
    case PUNA_TYPE_F16: return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p + i)));
    case PUNA_TYPE_BF16: return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)p + i), 16));
    default: return vld1q_f32((const float *)p + i);
    }
}

static inline __attribute__((always_inline)) float neon_dot_typed(int type, const void *row, const float *x, int64_t n) {
    float32x4_t s0 = vdupq_n_f32(0), s1 = s0, s2 = s0, s3 = s0;
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
        s0 = vfmaq_f32(s0, neon_load(type, row, c), vld1q_f32(x + c));
        s1 = vfmaq_f32(s1, neon_load(type, row, c + 4), vld1q_f32(x + c + 4));
        s2 = vfmaq_f32(s2, neon_load(type, row, c + 8), vld1q_f32(x + c + 8));
        s3 = vfmaq_f32(s3, neon_load(type, row, c + 12), vld1q_f32(x + c + 12));
    }
    for (; c + 4 <= n; c += 4) s0 = vfmaq_f32(s0, neon_load(type, row, c), vld1q_f32(x + c));
    float tail = 0;
    for (; c < n; c++) tail = __builtin_fmaf(load_one(type, row, c), x[c], tail);
    return vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3))) + tail;
}

static float neon_dot(int type, const void *row, const float *x, int64_t n) {
    switch (type) {
    case PUNA_TYPE_F16: return neon_dot_typed(PUNA_TYPE_F16, row, x, n);
    case PUNA_TYPE_BF16: return neon_dot_typed(PUNA_TYPE_BF16, row, x, n);
    default: return neon_dot_typed(PUNA_TYPE_F32, row, x, n);
    }
}

// 64 sums in 16 registers: two passes of 32 outputs keep the register file from spilling.
static inline __attribute__((always_inline)) void neon_tile_add_typed(int type, const void *tile, int64_t rank, const float *u,
                                                                      float *y, int w) {
    for (int half = 0; half < 2; half++) {
        float32x4_t a[8];
        for (int q = 0; q < 8; q++) a[q] = vdupq_n_f32(0);
        for (int64_t k = 0; k < rank; k++) {
            float uk = u[k];
            for (int q = 0; q < 8; q++) a[q] = vfmaq_n_f32(a[q], neon_load(type, tile, k * LORA_TILE + 32 * half + 4 * q), uk);
        }
        float acc[32];
        for (int q = 0; q < 8; q++) vst1q_f32(acc + 4 * q, a[q]);
        for (int l = 0; l < 32 && 32 * half + l < w; l++) y[32 * half + l] += acc[l];
    }
}

static void neon_tile_add(int type, const void *tile, int64_t rank, const float *u, float *y, int w) {
    switch (type) {
    case PUNA_TYPE_F16: neon_tile_add_typed(PUNA_TYPE_F16, tile, rank, u, y, w); break;
    case PUNA_TYPE_BF16: neon_tile_add_typed(PUNA_TYPE_BF16, tile, rank, u, y, w); break;
    default: neon_tile_add_typed(PUNA_TYPE_F32, tile, rank, u, y, w); break;
    }
}

static const lora_impl neon_impl = {neon_dot, neon_tile_add, "neon"};
#endif  // LORA_NEON

// ---- dispatch ------------------------------------------------------------------------------

static int forced_portable = 0;

static const lora_impl *best_impl(void) {
    if (__atomic_load_n(&forced_portable, __ATOMIC_RELAXED)) return &portable_impl;
#ifdef LORA_X86
    static int detected = -1;  // 2 avx512, 1 avx2, 0 neither
    int d = __atomic_load_n(&detected, __ATOMIC_RELAXED);
    if (d < 0) {
        uint32_t f = puna_cpu_features();
        uint32_t need256 = PUNA_CPU_AVX2 | PUNA_CPU_FMA | PUNA_CPU_F16C;
        d = (f & need256) != need256 ? 0 : (f & (PUNA_CPU_AVX512F | PUNA_CPU_AVX512BW)) == (PUNA_CPU_AVX512F | PUNA_CPU_AVX512BW) ? 2 : 1;
        __atomic_store_n(&detected, d, __ATOMIC_RELAXED);
    }
    if (d == 2) return &avx512_impl;
    if (d == 1) return &avx2_impl;
    return &portable_impl;
#elif defined(LORA_NEON)
    return &neon_impl;
#else
    return &portable_impl;
#endif
}

int puna_lora_set_path(int path) {
    if (path != PUNA_LORA_AUTO && path != PUNA_LORA_PORTABLE) return -1;
    __atomic_store_n(&forced_portable, path == PUNA_LORA_PORTABLE, __ATOMIC_RELAXED);
    return 0;
}

const char *puna_lora_path_name(void) { return best_impl()->name; }

int puna_lora_supports(int type) {
    return type == PUNA_TYPE_F32 || type == PUNA_TYPE_F16 || type == PUNA_TYPE_BF16;
}

// ---- Bᵀ layout -------------------------------------------------------------------------------

int64_t puna_lora_bt_bytes(int type, int64_t outputs, int64_t rank) {
    if (!puna_lora_supports(type) || outputs <= 0 || rank <= 0) return 0;
    return (outputs + LORA_TILE - 1) / LORA_TILE * rank * LORA_TILE * (int64_t)type_bytes(type);
}

int puna_lora_pack_bt(int type, const void *b, int64_t outputs, int64_t rank, const int64_t *output_rows, void *bt) {
    if (!puna_lora_supports(type) || outputs <= 0 || rank <= 0) return -1;
    size_t size = type_bytes(type);
    memset(bt, 0, (size_t)puna_lora_bt_bytes(type, outputs, rank));
    for (int64_t i = 0; i < outputs; i++) {
        int64_t o = output_rows ? output_rows[i] : i;
        if (o < 0 || o >= outputs) return -1;
        char *dest = (char *)bt + ((size_t)(o / LORA_TILE) * (size_t)rank * LORA_TILE + (size_t)(o % LORA_TILE)) * size;
        const char *src = (const char *)b + (size_t)i * (size_t)rank * size;
        for (int64_t k = 0; k < rank; k++) memcpy(dest + (size_t)k * LORA_TILE * size, src + (size_t)k * size, size);
    }
    return 0;
}

static inline const void *bt_tile(const puna_lora_factors *f, int64_t tile) {
    return (const char *)f->bt + (size_t)tile * (size_t)f->rank * LORA_TILE * type_bytes(f->bt_type);
}

// ---- the general entry: any number of tokens, two pool runs --------------------------------

typedef struct {
    const lora_impl *impl;
    const puna_lora_factors *f;
    const float *x;
    float *y;
    int64_t y_stride;
    int64_t n_tokens;
    const int32_t *token_rows;
    const float *scales;
    float scale;
    float *u;            // [n_tokens][rank]
} lora_job;

static inline int64_t token_row(const lora_job *job, int64_t i) { return job->token_rows ? job->token_rows[i] : i; }

// u[i][k] = s_i · A[k]·x[t_i] for this thread's rank rows; every token dotted with a row while it is in L1.
static void lora_down_task(void *ctx, int thread, int n_threads) {
    const lora_job *job = ctx;
    const puna_lora_factors *f = job->f;
    int64_t per = (f->rank + n_threads - 1) / n_threads;
    int64_t k0 = (int64_t)thread * per, k1 = k0 + per < f->rank ? k0 + per : f->rank;
    size_t row_bytes = (size_t)f->cols * type_bytes(f->a_type);
    for (int64_t k = k0; k < k1; k++) {
        const void *row = (const char *)f->a + (size_t)k * row_bytes;
        for (int64_t i = 0; i < job->n_tokens; i++) {
            float s = job->scales ? job->scales[i] : job->scale;
            job->u[i * f->rank + k] = s * job->impl->dot(f->a_type, row, job->x + token_row(job, i) * f->cols, f->cols);
        }
    }
}

// y[t_i][o] += Σ_k u[i][k] · Bᵀ[k][o] over this thread's tiles; a tile serves every token while in L1.
static void lora_up_task(void *ctx, int thread, int n_threads) {
    const lora_job *job = ctx;
    const puna_lora_factors *f = job->f;
    int64_t tiles = (f->outputs + LORA_TILE - 1) / LORA_TILE;
    int64_t per = (tiles + n_threads - 1) / n_threads;
    int64_t j0 = (int64_t)thread * per, j1 = j0 + per < tiles ? j0 + per : tiles;
    for (int64_t j = j0; j < j1; j++) {
        int64_t o0 = j * LORA_TILE;
        int w = f->outputs - o0 < LORA_TILE ? (int)(f->outputs - o0) : LORA_TILE;
        const void *tile = bt_tile(f, j);
        for (int64_t i = 0; i < job->n_tokens; i++) {
            job->impl->tile_add(f->bt_type, tile, f->rank, job->u + i * f->rank, job->y + token_row(job, i) * job->y_stride + o0, w);
        }
    }
}

int lora_factors_ok(const puna_lora_factors *f) {
    return f && puna_lora_supports(f->a_type) && puna_lora_supports(f->bt_type) && f->rank > 0 && f->cols > 0 && f->outputs > 0;
}

int puna_lora_apply(puna_pool *pool, const puna_lora_factors *f, const float *x, float *y, int64_t y_stride,
                    int64_t n_tokens, const int32_t *token_rows, const float *scales, float scale) {
    if (!lora_factors_ok(f) || n_tokens < 0 || y_stride < f->outputs) return -1;
    if (n_tokens == 0) return 0;
    int n_threads = puna_pool_size(pool);
    int64_t total = n_tokens * f->rank;
    // u for all tokens, in the pool's scratch (its per-thread rows taken as one block).
    float *u = puna_pool_scratch(pool, (total + n_threads - 1) / n_threads, NULL);
    if (!u) return -1;
    lora_job job = {best_impl(), f, x, y, y_stride, n_tokens, token_rows, scales, scale, u};
    puna_pool_run(pool, lora_down_task, &job);
    puna_pool_run(pool, lora_up_task, &job);
    return 0;
}

// ---- pieces for ops.c's one-token matmul with adapters (lora_internal.h) ------------------------

void lora_u_rows(const puna_lora_factors *f, float scale, const float *x, int64_t k0, int64_t k1, float *u) {
    const lora_impl *impl = best_impl();
    size_t row_bytes = (size_t)f->cols * type_bytes(f->a_type);
    for (int64_t k = k0; k < k1; k++) u[k - k0] = scale * impl->dot(f->a_type, (const char *)f->a + (size_t)k * row_bytes, x, f->cols);
}

void lora_add_rows(const puna_lora_factors *f, const float *u, float *y, int64_t r0, int64_t r1) {
    const lora_impl *impl = best_impl();
    for (int64_t j = r0 / LORA_TILE; j * LORA_TILE < r1; j++) {
        int64_t o0 = j * LORA_TILE;
        int w = r1 - o0 < LORA_TILE ? (int)(r1 - o0) : LORA_TILE;
        impl->tile_add(f->bt_type, bt_tile(f, j), f->rank, u, y + o0, w);
    }
}

void lora_wait_for(const int64_t *counter, int64_t target) {
    for (unsigned spins = 1; __atomic_load_n(counter, __ATOMIC_ACQUIRE) < target; spins++) {
#ifdef LORA_X86
        _mm_pause();
#endif
        if ((spins & 1023) == 0) sched_yield();  // the thread we wait for may need this core
    }
}
