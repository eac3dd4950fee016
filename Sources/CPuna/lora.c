// Unmerged LoRA deltas (puna_lora.h). Per token the work is two thin products: A·x (rank dot
// products of length cols) and Bᵀ·u (rank scaled row additions of length outputs). Both are pure
// streams over the factors, so the aim is to run at memory speed with little fixed cost: factors
// are converted to f32 in registers (no decode buffers), B is pre-transposed by the caller so each
// rank index adds one contiguous row, and per-(token, output) sums keep a fixed order so every
// split of the work gives the same bits.
#include "puna_lora.h"
#include "puna_platform.h"
#include "puna_quants.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LORA_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define LORA_NEON 1
#include <arm_neon.h>
#endif

// Outputs one thread adds at a time: accumulators for a tile stay in L1 (4 tokens × 1024 floats).
#define LORA_TILE 1024
#define LORA_TOKENS 4
// Output chunks handed to threads are multiples of this, so only the last columns of the matrix
// ever take a SIMD path's scalar tail, whatever the thread count.
#define LORA_ALIGN 16

// One implementation: the dot product of a factor row with f32 inputs, and the accumulation
// acc[j][0..w) = Σ_k u[j][k] · Bᵀ[k][o0 .. o0+w) for nt ≤ LORA_TOKENS tokens (k in order).
typedef float (*lora_dot_fn)(int type, const void *row, const float *x, int64_t n);
typedef void (*lora_accumulate_fn)(int type, const void *bt, int64_t outputs, int64_t rank, const float *u, int nt,
                                   int64_t o0, int64_t w, float *acc);
typedef struct {
    lora_dot_fn dot;
    lora_accumulate_fn accumulate;
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

static void portable_accumulate(int type, const void *bt, int64_t outputs, int64_t rank, const float *u, int nt,
                                int64_t o0, int64_t w, float *acc) {
    memset(acc, 0, sizeof(float) * (size_t)(nt * LORA_TILE));
    for (int64_t k = 0; k < rank; k++) {
        for (int j = 0; j < nt; j++) {
            float uk = u[j * rank + k];
            float *a = acc + j * LORA_TILE;
            for (int64_t o = 0; o < w; o++) a[o] += uk * load_one(type, bt, k * outputs + o0 + o);
        }
    }
}

static const lora_impl portable_impl = {portable_dot, portable_accumulate, "portable"};

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

INLINE T512 void l512_accumulate_typed(int type, const void *bt, int64_t outputs, int64_t rank, const float *u, int nt,
                                       int64_t o0, int64_t w, float *acc) {
    int64_t whole = w & ~(int64_t)15;
    __mmask16 tail = (__mmask16)((1u << (w - whole)) - 1);
    for (int j = 0; j < nt; j++) {
        for (int64_t o = 0; o < w; o += 16) _mm512_storeu_ps(acc + j * LORA_TILE + o, _mm512_setzero_ps());
    }
    size_t esize = type == PUNA_TYPE_F32 ? 4 : 2;
    for (int64_t k = 0; k < rank; k++) {
        const void *row = (const char *)bt + (size_t)(k * outputs + o0) * esize;
        if (nt == 1) {
            __m512 uk = _mm512_set1_ps(u[k]);
            int64_t o = 0;
            for (; o + 64 <= whole; o += 64) {
                for (int q = 0; q < 64; q += 16) {
                    float *a = acc + o + q;
                    _mm512_storeu_ps(a, _mm512_fmadd_ps(uk, l512_load(type, row, o + q), _mm512_loadu_ps(a)));
                }
            }
            for (; o < whole; o += 16) {
                _mm512_storeu_ps(acc + o, _mm512_fmadd_ps(uk, l512_load(type, row, o), _mm512_loadu_ps(acc + o)));
            }
            if (tail) {
                _mm512_storeu_ps(acc + whole, _mm512_fmadd_ps(uk, l512_load_masked(type, row, whole, tail), _mm512_loadu_ps(acc + whole)));
            }
            continue;
        }
        __m512 uk[LORA_TOKENS];
        for (int j = 0; j < nt; j++) uk[j] = _mm512_set1_ps(u[j * rank + k]);
        for (int64_t o = 0; o < w; o += 16) {
            __m512 b = o < whole ? l512_load(type, row, o) : l512_load_masked(type, row, o, tail);
            for (int j = 0; j < nt; j++) {
                float *a = acc + j * LORA_TILE + o;
                _mm512_storeu_ps(a, _mm512_fmadd_ps(uk[j], b, _mm512_loadu_ps(a)));
            }
        }
    }
}

static T512 void l512_accumulate(int type, const void *bt, int64_t outputs, int64_t rank, const float *u, int nt,
                                 int64_t o0, int64_t w, float *acc) {
    switch (type) {
    case PUNA_TYPE_F16: l512_accumulate_typed(PUNA_TYPE_F16, bt, outputs, rank, u, nt, o0, w, acc); break;
    case PUNA_TYPE_BF16: l512_accumulate_typed(PUNA_TYPE_BF16, bt, outputs, rank, u, nt, o0, w, acc); break;
    default: l512_accumulate_typed(PUNA_TYPE_F32, bt, outputs, rank, u, nt, o0, w, acc); break;
    }
}

static const lora_impl avx512_impl = {l512_dot, l512_accumulate, "avx512"};

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

INLINE T256 void l256_accumulate_typed(int type, const void *bt, int64_t outputs, int64_t rank, const float *u, int nt,
                                       int64_t o0, int64_t w, float *acc) {
    int64_t whole = w & ~(int64_t)7;
    for (int j = 0; j < nt; j++) memset(acc + j * LORA_TILE, 0, sizeof(float) * (size_t)w);
    size_t esize = type == PUNA_TYPE_F32 ? 4 : 2;
    for (int64_t k = 0; k < rank; k++) {
        const void *row = (const char *)bt + (size_t)(k * outputs + o0) * esize;
        for (int j = 0; j < nt; j++) {
            float ukf = u[j * rank + k];
            __m256 uk = _mm256_set1_ps(ukf);
            float *a = acc + j * LORA_TILE;
            for (int64_t o = 0; o < whole; o += 8) {
                _mm256_storeu_ps(a + o, _mm256_fmadd_ps(uk, l256_load(type, row, o), _mm256_loadu_ps(a + o)));
            }
            for (int64_t o = whole; o < w; o++) a[o] = __builtin_fmaf(ukf, load_one(type, row, o), a[o]);
        }
    }
}

static T256 void l256_accumulate(int type, const void *bt, int64_t outputs, int64_t rank, const float *u, int nt,
                                 int64_t o0, int64_t w, float *acc) {
    switch (type) {
    case PUNA_TYPE_F16: l256_accumulate_typed(PUNA_TYPE_F16, bt, outputs, rank, u, nt, o0, w, acc); break;
    case PUNA_TYPE_BF16: l256_accumulate_typed(PUNA_TYPE_BF16, bt, outputs, rank, u, nt, o0, w, acc); break;
    default: l256_accumulate_typed(PUNA_TYPE_F32, bt, outputs, rank, u, nt, o0, w, acc); break;
    }
}

static const lora_impl avx2_impl = {l256_dot, l256_accumulate, "avx2"};
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

static inline __attribute__((always_inline)) void neon_accumulate_typed(int type, const void *bt, int64_t outputs, int64_t rank,
                                                                        const float *u, int nt, int64_t o0, int64_t w, float *acc) {
    int64_t whole = w & ~(int64_t)3;
    for (int j = 0; j < nt; j++) memset(acc + j * LORA_TILE, 0, sizeof(float) * (size_t)w);
    size_t esize = type == PUNA_TYPE_F32 ? 4 : 2;
    for (int64_t k = 0; k < rank; k++) {
        const void *row = (const char *)bt + (size_t)(k * outputs + o0) * esize;
        for (int j = 0; j < nt; j++) {
            float ukf = u[j * rank + k];
            float *a = acc + j * LORA_TILE;
            for (int64_t o = 0; o < whole; o += 4) vst1q_f32(a + o, vfmaq_n_f32(vld1q_f32(a + o), neon_load(type, row, o), ukf));
            for (int64_t o = whole; o < w; o++) a[o] = __builtin_fmaf(ukf, load_one(type, row, o), a[o]);
        }
    }
}

static void neon_accumulate(int type, const void *bt, int64_t outputs, int64_t rank, const float *u, int nt,
                            int64_t o0, int64_t w, float *acc) {
    switch (type) {
    case PUNA_TYPE_F16: neon_accumulate_typed(PUNA_TYPE_F16, bt, outputs, rank, u, nt, o0, w, acc); break;
    case PUNA_TYPE_BF16: neon_accumulate_typed(PUNA_TYPE_BF16, bt, outputs, rank, u, nt, o0, w, acc); break;
    default: neon_accumulate_typed(PUNA_TYPE_F32, bt, outputs, rank, u, nt, o0, w, acc); break;
    }
}

static const lora_impl neon_impl = {neon_dot, neon_accumulate, "neon"};
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

// ---- the two phases ------------------------------------------------------------------------

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
    int64_t out_chunk;   // outputs per thread, a multiple of LORA_ALIGN
} lora_job;

static inline int64_t token_row(const lora_job *job, int64_t i) { return job->token_rows ? job->token_rows[i] : i; }

// u[i][k] = s_i · A[k]·x[t_i] for this thread's rank rows; every token dotted with a row while it is in L1.
static void lora_down_task(void *ctx, int thread, int n_threads) {
    const lora_job *job = ctx;
    const puna_lora_factors *f = job->f;
    int64_t per = (f->rank + n_threads - 1) / n_threads;
    int64_t k0 = (int64_t)thread * per, k1 = k0 + per < f->rank ? k0 + per : f->rank;
    size_t row_bytes = (size_t)f->cols * (f->a_type == PUNA_TYPE_F32 ? 4 : 2);
    for (int64_t k = k0; k < k1; k++) {
        const void *row = (const char *)f->a + (size_t)k * row_bytes;
        for (int64_t i = 0; i < job->n_tokens; i++) {
            float s = job->scales ? job->scales[i] : job->scale;
            job->u[i * f->rank + k] = s * job->impl->dot(f->a_type, row, job->x + token_row(job, i) * f->cols, f->cols);
        }
    }
}

// y[t_i][o] += Σ_k u[i][k] · Bᵀ[k][o] for this thread's output columns, tile by tile, up to
// LORA_TOKENS tokens sharing each pass over a tile of Bᵀ.
static void lora_up_task(void *ctx, int thread, int n_threads) {
    (void)n_threads;
    const lora_job *job = ctx;
    const puna_lora_factors *f = job->f;
    int64_t o_begin = (int64_t)thread * job->out_chunk;
    int64_t o_end = o_begin + job->out_chunk < f->outputs ? o_begin + job->out_chunk : f->outputs;
    float acc[LORA_TOKENS * LORA_TILE] __attribute__((aligned(64)));
    for (int64_t o0 = o_begin; o0 < o_end; o0 += LORA_TILE) {
        int64_t w = o_end - o0 < LORA_TILE ? o_end - o0 : LORA_TILE;
        for (int64_t i0 = 0; i0 < job->n_tokens; i0 += LORA_TOKENS) {
            int nt = job->n_tokens - i0 < LORA_TOKENS ? (int)(job->n_tokens - i0) : LORA_TOKENS;
            job->impl->accumulate(f->bt_type, f->bt, f->outputs, f->rank, job->u + i0 * f->rank, nt, o0, w, acc);
            for (int j = 0; j < nt; j++) {
                float *yrow = job->y + token_row(job, i0 + j) * job->y_stride + o0;
                const float *a = acc + j * LORA_TILE;
                for (int64_t o = 0; o < w; o++) yrow[o] += a[o];
            }
        }
    }
}

int puna_lora_apply(puna_pool *pool, const puna_lora_factors *f, const float *x, float *y, int64_t y_stride,
                    int64_t n_tokens, const int32_t *token_rows, const float *scales, float scale) {
    if (!f || !puna_lora_supports(f->a_type) || !puna_lora_supports(f->bt_type)) return -1;
    if (f->rank <= 0 || f->cols <= 0 || f->outputs <= 0 || n_tokens < 0 || y_stride < f->outputs) return -1;
    if (n_tokens == 0) return 0;
    int n_threads = puna_pool_size(pool);
    if (n_threads < 1) n_threads = 1;
    // u for all tokens, in the pool's scratch (its per-thread rows taken as one block).
    int64_t total = n_tokens * f->rank;
    int64_t stride = 0;
    float *u = puna_pool_scratch(pool, (total + n_threads - 1) / n_threads, &stride);
    if (!u) return -1;
    int64_t chunk = (f->outputs + n_threads - 1) / n_threads;
    chunk = (chunk + LORA_ALIGN - 1) / LORA_ALIGN * LORA_ALIGN;
    lora_job job = {best_impl(), f, x, y, y_stride, n_tokens, token_rows, scales, scale, u, chunk};
    puna_pool_run(pool, lora_down_task, &job);
    puna_pool_run(pool, lora_up_task, &job);
    return 0;
}
