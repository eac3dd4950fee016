// AVX2 families for x86 CPUs without AVX-512 (Haswell to Zen 3, and Alder Lake-class CPUs whose
// AVX-VNNI gives the 4-byte dot product in one instruction). The kernels are written once in
// kernels_x86_avx2_impl.h and compiled twice with different target attributes, so no global -m
// flags are needed; ops.c picks one by CPUID.
#include "kernels_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <math.h>

#define AV_VNNI 0
#define AV_NAME(x) avx2_##x
#define AV_TARGET __attribute__((target("avx2,fma,f16c")))
#include "kernels_x86_avx2_impl.h"
#undef AV_VNNI
#undef AV_NAME
#undef AV_TARGET

#define AV_VNNI 1
#define AV_NAME(x) avxvnni_##x
#if defined(__clang__)
#define AV_TARGET __attribute__((target("avx2,fma,f16c,avxvnni,tune=alderlake")))  // keeps vpdpwssd whole (see avx512)
#else
#define AV_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#endif
#include "kernels_x86_avx2_impl.h"

int puna_kernels_avx2_get(int type, int vnni, qmm_kernel *out) {
    if (vnni) avxvnni_fill(type, out);
    else avx2_fill(type, out);
    return 1;
}

// ---- attention rows (kernels_internal.h): 8 lanes, scalar tails -----------------------------------

#define A2 __attribute__((target("avx2,fma,f16c")))

static inline A2 float a2_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

static inline A2 __m256 a2_load(int f16, const void *p) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)) : _mm256_loadu_ps((const float *)p);
}

static inline A2 float a2_scalar(int f16, const uint8_t *row, int64_t i) {
    return f16 ? _cvtsh_ss(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

static inline A2 float a2_dot(int f16, const float *q, const uint8_t *row, int64_t first, int n) {
    const int size = f16 ? 2 : 4;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), a2_load(f16, row + (first + i) * size), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), a2_load(f16, row + (first + i + 8) * size), a1);
    }
    float acc = a2_hsum(_mm256_add_ps(a0, a1));
    for (; i < n; i++) acc += q[i] * a2_scalar(f16, row, first + i);
    return acc;
}

// Columns [i0, n) of an axpy, one by one (shared by axpy and wsum so both round the same way).
static inline A2 void a2_axpy_tail(int f16, float *out, float p, const uint8_t *row, int64_t first, int i0, int n) {
    for (int i = i0; i < n; i++) out[i] = fmaf(p, a2_scalar(f16, row, first + i), out[i]);
}

static inline A2 void a2_axpy(int f16, float *out, float p, const uint8_t *row, int64_t first, int n) {
    const int size = f16 ? 2 : 4;
    const __m256 pv = _mm256_set1_ps(p);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pv, a2_load(f16, row + (first + i) * size), _mm256_loadu_ps(out + i)));
    a2_axpy_tail(f16, out, p, row, first, i, n);
}

// Weighted sum of n_pos value rows: the axpy's fmas element by element, with 64 columns at a time
// held in 8 register accumulators instead of read and written back per row.
static inline A2 void a2_wsum(int f16, float *out, const float *p, const uint8_t *v, int64_t row_bytes, int64_t first,
                              int n, int n_pos) {
    const int size = f16 ? 2 : 4, full = n / 8 * 8;
    int c0 = 0;
    for (; c0 + 64 <= full; c0 += 64) {
        __m256 acc[8];
        for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
        for (int j = 0; j < n_pos; j++) {
            const uint8_t *row = v + j * row_bytes + (first + c0) * size;
            const __m256 pv = _mm256_set1_ps(p[j]);
            for (int c = 0; c < 8; c++) acc[c] = _mm256_fmadd_ps(pv, a2_load(f16, row + 8 * c * size), acc[c]);
        }
        for (int c = 0; c < 8; c++) _mm256_storeu_ps(out + c0 + 8 * c, acc[c]);
    }
    for (int i = c0; i < n; i++) out[i] = 0;
    for (int j = 0; j < n_pos; j++) {
        const uint8_t *row = v + j * row_bytes;
        const __m256 pv = _mm256_set1_ps(p[j]);
        for (int i = c0; i < full; i += 8)
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pv, a2_load(f16, row + (first + i) * size), _mm256_loadu_ps(out + i)));
        a2_axpy_tail(f16, out, p[j], row, first, full, n);
    }
}

static A2 float a2_dot_f32(const float *q, const uint8_t *row, int64_t first, int n) { return a2_dot(0, q, row, first, n); }
static A2 float a2_dot_f16(const float *q, const uint8_t *row, int64_t first, int n) { return a2_dot(1, q, row, first, n); }
static A2 void a2_axpy_f32(float *out, float p, const uint8_t *row, int64_t first, int n) { a2_axpy(0, out, p, row, first, n); }
static A2 void a2_axpy_f16(float *out, float p, const uint8_t *row, int64_t first, int n) { a2_axpy(1, out, p, row, first, n); }
static A2 void a2_wsum_f32(float *out, const float *p, const uint8_t *v, int64_t row_bytes, int64_t first, int n, int n_pos) {
    a2_wsum(0, out, p, v, row_bytes, first, n, n_pos);
}
static A2 void a2_wsum_f16(float *out, const float *p, const uint8_t *v, int64_t row_bytes, int64_t first, int n, int n_pos) {
    a2_wsum(1, out, p, v, row_bytes, first, n, n_pos);
}

// q8_0: whole blocks in vectors, a head's partial blocks element by element.
static A2 float a2_dot_q8_0(const float *q, const uint8_t *row, int64_t first, int n) {
    float acc = 0;
    for (int64_t b = first / 32; b * 32 < first + n; b++) {
        const puna_block_q8_0 *blk = (const puna_block_q8_0 *)row + b;
        const float d = _cvtsh_ss(blk->d);
        int64_t lo = b * 32 < first ? first : b * 32, hi = (b + 1) * 32 < first + n ? (b + 1) * 32 : first + n;
        if (lo == b * 32 && hi == lo + 32) {
            __m256 t = _mm256_setzero_ps();
            for (int k = 0; k < 4; k++) {
                __m256 kv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk->qs + 8 * k))));
                t = _mm256_fmadd_ps(_mm256_loadu_ps(q + lo - first + 8 * k), kv, t);
            }
            acc += d * a2_hsum(t);
        } else {
            float part = 0;
            for (int64_t e = lo; e < hi; e++) part += q[e - first] * (float)blk->qs[e % 32];
            acc += d * part;
        }
    }
    return acc;
}

static A2 void a2_axpy_q8_0(float *out, float p, const uint8_t *row, int64_t first, int n) {
    for (int64_t b = first / 32; b * 32 < first + n; b++) {
        const puna_block_q8_0 *blk = (const puna_block_q8_0 *)row + b;
        const float s = p * _cvtsh_ss(blk->d);
        int64_t lo = b * 32 < first ? first : b * 32, hi = (b + 1) * 32 < first + n ? (b + 1) * 32 : first + n;
        if (lo == b * 32 && hi == lo + 32) {
            const __m256 sv = _mm256_set1_ps(s);
            for (int k = 0; k < 4; k++) {
                __m256 kv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk->qs + 8 * k))));
                float *o = out + lo - first + 8 * k;
                _mm256_storeu_ps(o, _mm256_fmadd_ps(sv, kv, _mm256_loadu_ps(o)));
            }
        } else {
            for (int64_t e = lo; e < hi; e++) out[e - first] += s * (float)blk->qs[e % 32];
        }
    }
}

int puna_attn_ops_avx2(int kv_type, attn_ops *out) {
    out->wsum = NULL;
    if (kv_type == PUNA_TYPE_F32) { out->dot = a2_dot_f32; out->axpy = a2_axpy_f32; out->wsum = a2_wsum_f32; }
    else if (kv_type == PUNA_TYPE_F16) { out->dot = a2_dot_f16; out->axpy = a2_axpy_f16; out->wsum = a2_wsum_f16; }
    else if (kv_type == PUNA_TYPE_Q8_0) { out->dot = a2_dot_q8_0; out->axpy = a2_axpy_q8_0; }
    else return 0;
    return 1;
}

#else
int puna_kernels_avx2_get(int type, int vnni, qmm_kernel *out) {
    (void)type;
    (void)vnni;
    (void)out;
    return 0;
}
int puna_attn_ops_avx2(int kv_type, attn_ops *out) {
    (void)kv_type;
    (void)out;
    return 0;
}
#endif
