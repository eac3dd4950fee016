// AArch64 baseline NEON family (Cortex-A72, e.g. Raspberry Pi 4: no dot-product instructions).
// The 4-byte lane sums come from widening multiplies: vmull_s8 / vmlal_s8 form int16 products of
// the low and high halves together (|w x| <= 128 * 127, so two fit in int16), then two pairwise
// widening adds fold them into the lanes of kernels_internal.h.
#include "kernels_internal.h"

#if defined(__aarch64__)

#define NK_DOT4(acc, a, b) base_dot4(acc, a, b)
#define NK_DOT8(acc, a0, b0, a1, b1) base_dot8(acc, a0, b0, a1, b1)
#define NK_NAME(x) neon_##x

#include <arm_neon.h>

static inline __attribute__((always_inline)) int32x4_t base_dot4(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    int16x8_t p1 = vmull_high_s8(a, b);
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)));
}

static inline __attribute__((always_inline)) int32x4_t base_dot8(int32x4_t acc, int8x16_t a0, int8x16_t b0, int8x16_t a1,
                                                                  int8x16_t b1) {
    int16x8_t p0 = vmlal_s8(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)), vget_low_s8(a1), vget_low_s8(b1));
    int16x8_t p1 = vmlal_high_s8(vmull_high_s8(a0, b0), a1, b1);
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)));
}

#include "kernels_arm_neon_impl.h"

int puna_kernels_neon_get(int type, qmm_kernel *out) {
    neon_fill(type, out);
    return 1;
}

// ---- attention rows (kernels_internal.h): 4 lanes, scalar tails -----------------------------------

static inline float32x4_t na_load(int f16, const uint8_t *row, int64_t i) {
    if (!f16) return vld1q_f32((const float *)row + i);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)row + i)));
}

static inline float na_scalar(int f16, const uint8_t *row, int64_t i) {
    return f16 ? kq_f16(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

static inline float na_dot(int f16, const float *q, const uint8_t *row, int64_t first, int n) {
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 = vfmaq_f32(a0, vld1q_f32(q + i), na_load(f16, row, first + i));
        a1 = vfmaq_f32(a1, vld1q_f32(q + i + 4), na_load(f16, row, first + i + 4));
    }
    float acc = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; i++) acc += q[i] * na_scalar(f16, row, first + i);
    return acc;
}

static inline void na_axpy(int f16, float *out, float p, const uint8_t *row, int64_t first, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vfmaq_n_f32(vld1q_f32(out + i), na_load(f16, row, first + i), p));
    for (; i < n; i++) out[i] += p * na_scalar(f16, row, first + i);
}

static float na_dot_f32(const float *q, const uint8_t *row, int64_t first, int n) { return na_dot(0, q, row, first, n); }
static float na_dot_f16(const float *q, const uint8_t *row, int64_t first, int n) { return na_dot(1, q, row, first, n); }
static void na_axpy_f32(float *out, float p, const uint8_t *row, int64_t first, int n) { na_axpy(0, out, p, row, first, n); }
static void na_axpy_f16(float *out, float p, const uint8_t *row, int64_t first, int n) { na_axpy(1, out, p, row, first, n); }

static inline float32x4_t na_q8(const int8_t *qs, int k) {  // 4 codes 4k .. 4k + 3 as floats
    int16x8_t w = vmovl_s8(vld1_s8(qs + 8 * (k / 2)));
    return vcvtq_f32_s32(vmovl_s16(k % 2 ? vget_high_s16(w) : vget_low_s16(w)));
}

static float na_dot_q8_0(const float *q, const uint8_t *row, int64_t first, int n) {
    float acc = 0;
    for (int64_t b = first / 32; b * 32 < first + n; b++) {
        const puna_block_q8_0 *blk = (const puna_block_q8_0 *)row + b;
        const float d = kq_f16(blk->d);
        int64_t lo = b * 32 < first ? first : b * 32, hi = (b + 1) * 32 < first + n ? (b + 1) * 32 : first + n;
        float part = 0;
        if (lo == b * 32 && hi == lo + 32) {
            float32x4_t t = vdupq_n_f32(0);
            for (int k = 0; k < 8; k++) t = vfmaq_f32(t, vld1q_f32(q + lo - first + 4 * k), na_q8(blk->qs, k));
            part = vaddvq_f32(t);
        } else {
            for (int64_t e = lo; e < hi; e++) part += q[e - first] * (float)blk->qs[e % 32];
        }
        acc += d * part;
    }
    return acc;
}

static void na_axpy_q8_0(float *out, float p, const uint8_t *row, int64_t first, int n) {
    for (int64_t b = first / 32; b * 32 < first + n; b++) {
        const puna_block_q8_0 *blk = (const puna_block_q8_0 *)row + b;
        const float s = p * kq_f16(blk->d);
        int64_t lo = b * 32 < first ? first : b * 32, hi = (b + 1) * 32 < first + n ? (b + 1) * 32 : first + n;
        if (lo == b * 32 && hi == lo + 32) {
            for (int k = 0; k < 8; k++) {
                float *o = out + lo - first + 4 * k;
                vst1q_f32(o, vfmaq_n_f32(vld1q_f32(o), na_q8(blk->qs, k), s));
            }
        } else {
            for (int64_t e = lo; e < hi; e++) out[e - first] += s * (float)blk->qs[e % 32];
        }
    }
}

int puna_attn_ops_neon(int kv_type, attn_ops *out) {
    if (kv_type == PUNA_TYPE_F32) { out->dot = na_dot_f32; out->axpy = na_axpy_f32; }
    else if (kv_type == PUNA_TYPE_F16) { out->dot = na_dot_f16; out->axpy = na_axpy_f16; }
    else if (kv_type == PUNA_TYPE_Q8_0) { out->dot = na_dot_q8_0; out->axpy = na_axpy_q8_0; }
    else return 0;
    return 1;
}

#else
int puna_kernels_neon_get(int type, qmm_kernel *out) {
    (void)type;
    (void)out;
    return 0;
}
int puna_attn_ops_neon(int kv_type, attn_ops *out) {
    (void)kv_type;
    (void)out;
    return 0;
}
#endif
