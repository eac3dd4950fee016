// AArch64 NEON family with dot product and the int8 matrix-multiply extension (Cortex-A510/A710,
// Neoverse V1/N2 and later). Decoding is the dotprod family's code; batches use smmla, which
// multiplies a 2 x 8 block of two weight rows by a 2 x 8 block of two tokens into the 2 x 2 int32
// sums, so each weight and activation byte feeds two products. The operands are arranged so each
// 8-byte segment is one lane of kernels_internal.h (bytes 4j..4j+3 of a block's low half, then
// of its high half): the four lane sums of four (row, token) pairs come out of four smmla.
#include "kernels_internal.h"

#if defined(__aarch64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod,i8mm"))), apply_to = function)
#else
#pragma GCC target("arch=armv8.2-a+dotprod+i8mm")
#endif

#include <arm_neon.h>

#define NK_DOT4(acc, a, b) vdotq_s32(acc, a, b)
#define NK_DOT8(acc, a0, b0, a1, b1) vdotq_s32(vdotq_s32(acc, a0, b0), a1, b1)
#define NK_NAME(x) i8mm_##x
#define NK_TILE22(TILE, a, TYPE, r, t) i8mm_tile22(a, TYPE, r, t)

static void i8mm_tile22(const qmm_args *a, int type, int64_t r, int64_t t);

#include "kernels_arm_neon_impl.h"

// [a seg | b seg] operands: segment j of one vector pair (lo, hi) is bytes 4j..4j+3 of lo then of hi.
static inline __attribute__((always_inline)) void segments(int8x16_t lo, int8x16_t hi, int32x4_t out[2]) {
    out[0] = vzip1q_s32(vreinterpretq_s32_s8(lo), vreinterpretq_s32_s8(hi));  // segments 0, 1
    out[1] = vzip2q_s32(vreinterpretq_s32_s8(lo), vreinterpretq_s32_s8(hi));  // segments 2, 3
}

// The 2 x 8 operand of segment j from two vectors' segment pairs.
static inline __attribute__((always_inline)) int8x16_t pair_seg(const int32x4_t a[2], const int32x4_t b[2], int j) {
    int64x2_t x = vreinterpretq_s64_s32(a[j / 2]), y = vreinterpretq_s64_s32(b[j / 2]);
    return vreinterpretq_s8_s64(j % 2 == 0 ? vzip1q_s64(x, y) : vzip2q_s64(x, y));
}

// Lanes (r0 t0, r0 t1, r1 t0, r1 t1).
static inline __attribute__((always_inline)) float32x4_t pair_scales(float w0, float w1, float x0, float x1) {
    float32x4_t wv = { w0, w0, w1, w1 }, xv = { x0, x1, x0, x1 };
    return vmulq_f32(wv, xv);
}

static inline __attribute__((always_inline)) void store22(const qmm_args *a, int64_t r, int64_t t, float32x4_t v) {
    a->y[t * a->rows + r] = vgetq_lane_f32(v, 0);
    a->y[(t + 1) * a->rows + r] = vgetq_lane_f32(v, 1);
    a->y[t * a->rows + r + 1] = vgetq_lane_f32(v, 2);
    a->y[(t + 1) * a->rows + r + 1] = vgetq_lane_f32(v, 3);
}

static inline __attribute__((always_inline)) void mm_simple_22(const qmm_args *a, int type, int64_t r, int64_t t) {
    const act_layout *L = &a->layout;
    const int has_min = type == PUNA_TYPE_Q4_1 || type == PUNA_TYPE_Q5_1;
    const int64_t nb = a->cols / 32, rb = a->row_bytes, tb = L->token_bytes;
    const uint8_t *w0 = a->w + r * rb, *w1 = w0 + rb;
    const uint8_t *x0 = a->act + t * tb, *x1 = x0 + tb;
    float32x4_t F[4][4];  // [slot][lane j], vector lanes = (row, token) pairs
    for (int s = 0; s < 4; s++) for (int j = 0; j < 4; j++) F[s][j] = vdupq_n_f32(0);
    for (int64_t b = 0; b < nb; b++) {
        const int slot = (int)(b % 4);
        nk_block u0, u1;
        nk_unpack(type, w0, b, &u0);
        nk_unpack(type, w1, b, &u1);
        const int64_t xo = L->qs_off + (b / 4) * 256 + 16 * (b % 4);
        // One level: q2 is zero, p / 256 = p1 with the scale (256 dw) dx (kernels_internal.h).
        const int one = L->levels == 1;
        int32x4_t sw0[2], sw1[2], sx0[2], sx1[2], sy0[2] = {vdupq_n_s32(0), vdupq_n_s32(0)}, sy1[2] = {sy0[0], sy0[1]};
        segments(u0.lo, u0.hi, sw0);
        segments(u1.lo, u1.hi, sw1);
        segments(vld1q_s8((const int8_t *)(x0 + xo)), vld1q_s8((const int8_t *)(x0 + xo + 64)), sx0);
        segments(vld1q_s8((const int8_t *)(x1 + xo)), vld1q_s8((const int8_t *)(x1 + xo + 64)), sx1);
        if (!one) {
            segments(vld1q_s8((const int8_t *)(x0 + xo + 128)), vld1q_s8((const int8_t *)(x0 + xo + 192)), sy0);
            segments(vld1q_s8((const int8_t *)(x1 + xo + 128)), vld1q_s8((const int8_t *)(x1 + xo + 192)), sy1);
        }
        const float dx0 = ((const float *)(x0 + L->d_off))[4 * b], dx1 = ((const float *)(x1 + L->d_off))[4 * b];
        const float32x4_t sc = one ? pair_scales(u0.d * 256.0f, u1.d * 256.0f, dx0, dx1) : pair_scales(u0.d, u1.d, dx0, dx1);
        float32x4_t sm = vdupq_n_f32(0), xs0 = sm, xs1 = sm;
        if (has_min) {
            sm = pair_scales(u0.m, u1.m, dx0, dx1);
            xs0 = vld1q_f32((const float *)(x0 + L->aux_off) + 4 * b);
            xs1 = vld1q_f32((const float *)(x1 + L->aux_off) + 4 * b);
        }
        for (int j = 0; j < 4; j++) {
            int8x16_t wj = pair_seg(sw0, sw1, j);
            int32x4_t p1 = vmmlaq_s32(vdupq_n_s32(0), wj, pair_seg(sx0, sx1, j));
            int32x4_t p = one ? p1 : vaddq_s32(vshlq_n_s32(p1, 8), vmmlaq_s32(vdupq_n_s32(0), wj, pair_seg(sy0, sy1, j)));
            F[slot][j] = vfmaq_f32(F[slot][j], sc, vcvtq_f32_s32(p));
            if (has_min) {
                // lane sums of the two tokens for lane j, laid out (t0, t1, t0, t1)
                float32x2_t v = { vgetq_lane_f32(xs0, 0), vgetq_lane_f32(xs1, 0) };
                if (j == 1) v = (float32x2_t){ vgetq_lane_f32(xs0, 1), vgetq_lane_f32(xs1, 1) };
                if (j == 2) v = (float32x2_t){ vgetq_lane_f32(xs0, 2), vgetq_lane_f32(xs1, 2) };
                if (j == 3) v = (float32x2_t){ vgetq_lane_f32(xs0, 3), vgetq_lane_f32(xs1, 3) };
                F[slot][j] = vfmaq_f32(F[slot][j], sm, vcombine_f32(v, v));
            }
        }
    }
    // reduce16 for the four pairs at once: index 4 * slot + j
    float32x4_t h[4];
    for (int j = 0; j < 4; j++) h[j] = vaddq_f32(vaddq_f32(F[0][j], F[2][j]), vaddq_f32(F[1][j], F[3][j]));
    store22(a, r, t, vaddq_f32(vaddq_f32(h[0], h[2]), vaddq_f32(h[1], h[3])));
}

static inline __attribute__((always_inline)) void mm_k_22(const qmm_args *a, int type, int64_t r, int64_t t) {
    const act_layout *L = &a->layout;
    const int64_t nb = a->cols / 256, rb = a->row_bytes, tb = L->token_bytes;
    const int64_t bytes = type == PUNA_TYPE_Q4_K ? 144 : type == PUNA_TYPE_Q5_K ? 176 : 210;
    const uint8_t *w0 = a->w + r * rb, *w1 = w0 + rb;
    const uint8_t *x0 = a->act + t * tb, *x1 = x0 + tb;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t b = 0; b < nb; b++) {
        nk_kblock k0, k1;
        nk_unpack_k(type, w0 + bytes * b, &k0);
        nk_unpack_k(type, w1 + bytes * b, &k1);
        const int8_t *q0 = (const int8_t *)(x0 + L->qs_off) + ACT256_STRIDE * b, *q1 = (const int8_t *)(x1 + L->qs_off) + ACT256_STRIDE * b;
        int32x4_t A1 = vdupq_n_s32(0), A2 = A1;
        const int per_scale = type == PUNA_TYPE_Q6_K ? 1 : 2;  // 16-byte vectors per scale
        for (int v = 0; v < 16; v += per_scale) {
            int32x4_t p1 = vdupq_n_s32(0), p2 = p1;
            for (int u = v; u < v + per_scale; u++) {
                int64x2_t wa = vreinterpretq_s64_s8(k0.q[u]), wb = vreinterpretq_s64_s8(k1.q[u]);
                int8x16_t w_lo = vreinterpretq_s8_s64(vzip1q_s64(wa, wb)), w_hi = vreinterpretq_s8_s64(vzip2q_s64(wa, wb));
                for (int level = 0; level < 2; level++) {
                    const int64_t off = 256 * level + 16 * u;
                    int64x2_t xa = vreinterpretq_s64_s8(vld1q_s8(q0 + off)), xb = vreinterpretq_s64_s8(vld1q_s8(q1 + off));
                    int32x4_t p = level ? p2 : p1;
                    p = vmmlaq_s32(p, w_lo, vreinterpretq_s8_s64(vzip1q_s64(xa, xb)));
                    p = vmmlaq_s32(p, w_hi, vreinterpretq_s8_s64(vzip2q_s64(xa, xb)));
                    if (level) p2 = p;
                    else p1 = p;
                }
            }
            int32x4_t scv = { k0.sc[v], k0.sc[v], k1.sc[v], k1.sc[v] };
            A1 = vmlaq_s32(A1, p1, scv);
            A2 = vmlaq_s32(A2, p2, scv);
        }
        // A = 256 * A1 + A2 per pair in int64, rounded once to f32 (via f64, which holds it exactly)
        int64x2_t lo = vaddw_s32(vshlq_n_s64(vmovl_s32(vget_low_s32(A1)), 8), vget_low_s32(A2));
        int64x2_t hi = vaddw_s32(vshlq_n_s64(vmovl_high_s32(A1), 8), vget_high_s32(A2));
        float32x4_t Af = vcombine_f32(vcvt_f32_f64(vcvtq_f64_s64(lo)), vcvt_f32_f64(vcvtq_f64_s64(hi)));
        const float dx0 = ((const float *)(x0 + L->d_off))[b], dx1 = ((const float *)(x1 + L->d_off))[b];
        acc = vfmaq_f32(acc, pair_scales(k0.d, k1.d, dx0, dx1), Af);
        if (type != PUNA_TYPE_Q6_K) {
            const int32_t *bs0 = (const int32_t *)(x0 + L->aux_off) + 16 * b, *bs1 = (const int32_t *)(x1 + L->aux_off) + 16 * b;
            int32_t B[4] = { 0, 0, 0, 0 };
            for (int s = 0; s < 8; s++) {
                int32_t xs0 = bs0[2 * s] + bs0[2 * s + 1], xs1 = bs1[2 * s] + bs1[2 * s + 1];
                B[0] += k0.m[s] * xs0;
                B[1] += k0.m[s] * xs1;
                B[2] += k1.m[s] * xs0;
                B[3] += k1.m[s] * xs1;
            }
            acc = vfmsq_f32(acc, pair_scales(k0.dmin, k1.dmin, dx0, dx1), vcvtq_f32_s32(vld1q_s32(B)));
        }
    }
    store22(a, r, t, acc);
}

static void i8mm_tile22(const qmm_args *a, int type, int64_t r, int64_t t) {
    switch (type) {
    case PUNA_TYPE_Q4_0: mm_simple_22(a, PUNA_TYPE_Q4_0, r, t); break;
    case PUNA_TYPE_Q4_1: mm_simple_22(a, PUNA_TYPE_Q4_1, r, t); break;
    case PUNA_TYPE_Q5_0: mm_simple_22(a, PUNA_TYPE_Q5_0, r, t); break;
    case PUNA_TYPE_Q5_1: mm_simple_22(a, PUNA_TYPE_Q5_1, r, t); break;
    case PUNA_TYPE_Q8_0: mm_simple_22(a, PUNA_TYPE_Q8_0, r, t); break;
    case PUNA_TYPE_Q4_K: mm_k_22(a, PUNA_TYPE_Q4_K, r, t); break;
    case PUNA_TYPE_Q5_K: mm_k_22(a, PUNA_TYPE_Q5_K, r, t); break;
    case PUNA_TYPE_Q6_K: mm_k_22(a, PUNA_TYPE_Q6_K, r, t); break;
    default: nk_float_tile(a, type, r, t, 2, 2); break;
    }
}

int puna_kernels_i8mm_get(int type, qmm_kernel *out) {
    i8mm_fill(type, out);
    return 1;
}

#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
int puna_kernels_i8mm_get(int type, qmm_kernel *out) {
    (void)type;
    (void)out;
    return 0;
}
#endif
