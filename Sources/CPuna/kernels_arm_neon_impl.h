// AArch64 NEON kernels, shared by the three ARM families. Each including file sets the target
// features first and defines:
//   NK_DOT8(acc, a0, b0, a1, b1): acc (int32x4) plus, in lane j, the products of bytes 4j..4j+3
//       of a0 x b0 and of a1 x b1 (int8x16): one simple-quant block's lane sums (kernels_internal.h)
//   NK_DOT4(acc, a, b): the same for one pair of vectors
//   NK_NAME(x): the family's prefix for x
// Arithmetic as defined in kernels_internal.h, so the results equal the scalar int8 family.
// Decoding streams 4 rows per tile with every block's activations loaded once for the 4 rows;
// batches use 2 x 2 tiles (or the i8mm tiles of kernels_arm_i8mm.c).
#include <arm_neon.h>
#include <math.h>

#define NK_INL static inline __attribute__((always_inline))
// Tile loops have constant trip counts once inlined; they must unroll fully so tiles live in registers.
#if defined(__clang__)
#define NK_UNROLL _Pragma("clang loop unroll(full)")
#else
#define NK_UNROLL _Pragma("GCC unroll 16")
#endif

// ---- activation quantization (same bytes as puna_act_quantize_scalar) -------------------------

NK_INL int32x4_t nk_clamp(int32x4_t v, int m) { return vminq_s32(vmaxq_s32(v, vdupq_n_s32(-m)), vdupq_n_s32(m)); }

// 4 floats -> the levels as quantize_one in kernels_scalar.c (fcvtns rounds half to even like
// rintf), and X = 256 q1 + q2.
NK_INL void nk_quantize4(float32x4_t x, float id, float id256, int levels, int32x4_t *q1, int32x4_t *q2, int32x4_t *X) {
    int32x4_t a = nk_clamp(vcvtnq_s32_f32(vmulq_n_f32(x, id)), 127);
    int32x4_t w = nk_clamp(vcvtnq_s32_f32(vmulq_n_f32(x, id256)), 65536);
    int32x4_t a256 = vshlq_n_s32(a, 8);
    int32x4_t r = levels == 1 ? vdupq_n_s32(0) : nk_clamp(vsubq_s32(w, a256), 127);
    *q1 = a;
    *q2 = r;
    *X = vaddq_s32(a256, r);
}

NK_INL int8x16_t nk_narrow16(const int32x4_t v[4]) {
    int16x8_t a = vcombine_s16(vmovn_s32(v[0]), vmovn_s32(v[1])), b = vcombine_s16(vmovn_s32(v[2]), vmovn_s32(v[3]));
    return vcombine_s8(vmovn_s16(a), vmovn_s16(b));
}

NK_INL float nk_amax(const float *x, int n) {
    float32x4_t m = vdupq_n_f32(0);
    for (int i = 0; i < n; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    return vmaxvq_f32(m);
}

// 16 values: q1 and q2 bytes, X in 4 vectors.
NK_INL void nk_quantize16(const float *x, float id, float id256, int levels, int8x16_t *q1, int8x16_t *q2, int32x4_t X[4]) {
    int32x4_t a[4], r[4];
    for (int i = 0; i < 4; i++) nk_quantize4(vld1q_f32(x + 4 * i), id, id256, levels, &a[i], &r[i], &X[i]);
    *q1 = nk_narrow16(a);
    *q2 = nk_narrow16(r);
}

static void NK_NAME(quantize)(const float *x, int64_t cols, const act_layout *l, int aux, uint8_t *act, int64_t t0,
                              int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
        const float *xt = x + t * cols;
        uint8_t *base = act + t * l->token_bytes;
        int8_t *qs = (int8_t *)(base + l->qs_off);
        float *d = (float *)(base + l->d_off);
        if (l->format == ACT_Q8_32) {
            for (int64_t b = 0; b < l->n_groups * 4; b++) {
                int64_t g = b / 4, k = b % 4;
                int8_t *lo = qs + g * 256 + 16 * k;
                int8x16_t a0 = vdupq_n_s8(0), a1 = a0, r0 = a0, r1 = a0;
                int32x4_t X0[4], X1[4];
                for (int i = 0; i < 4; i++) X0[i] = X1[i] = vdupq_n_s32(0);
                float db = 0;
                if (b < l->n_blocks) {
                    const float *xb = xt + 32 * b;
                    float amax = nk_amax(xb, 32);
                    float id = amax > 0 ? 127.0f / amax : 0.0f;
                    db = amax / 127.0f / 256.0f;
                    nk_quantize16(xb, id, id * 256.0f, l->levels, &a0, &r0, X0);
                    nk_quantize16(xb + 16, id, id * 256.0f, l->levels, &a1, &r1, X1);
                }
                vst1q_s8(lo, a0);
                vst1q_s8(lo + 64, a1);
                vst1q_s8(lo + 128, r0);
                vst1q_s8(lo + 192, r1);
                vst1q_f32(d + 4 * b, vdupq_n_f32(db));
                if (aux == AUX_NONE) continue;
                // lane j: X of weights 4j..4j+3 plus 16+4j..16+4j+3
                int32x4_t s[4];
                for (int i = 0; i < 4; i++) s[i] = vaddq_s32(X0[i], X1[i]);
                int32x4_t v = vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]));
                uint8_t *words = base + l->aux_off + g * 64 + 16 * k;
                if (aux == AUX_SUM_F32) vst1q_f32((float *)words, vcvtq_f32_s32(v));
                else vst1q_s32((int32_t *)words, vmulq_n_s32(v, aux == AUX_NEG_SUM8 ? -8 : -16));
            }
        } else {
            int32_t *bsums = (int32_t *)(base + l->aux_off);
            for (int64_t b = 0; b < l->n_blocks; b++) {
                const float *xb = xt + 256 * b;
                float amax = nk_amax(xb, 256);
                float id = amax > 0 ? 127.0f / amax : 0.0f;
                d[b] = amax / 127.0f / 256.0f;
                for (int i = 0; i < 16; i++) {
                    int8x16_t q1, q2;
                    int32x4_t X[4];
                    nk_quantize16(xb + 16 * i, id, id * 256.0f, l->levels, &q1, &q2, X);
                    vst1q_s8(qs + ACT256_STRIDE * b + 16 * i, q1);
                    vst1q_s8(qs + ACT256_STRIDE * b + 256 + 16 * i, q2);
                    int16_t *x16 = (int16_t *)(qs + ACT256_STRIDE * b + ACT256_X16) + 16 * i;
                    vst1q_s16(x16, vcombine_s16(vmovn_s32(X[0]), vmovn_s32(X[1])));
                    vst1q_s16(x16 + 8, vcombine_s16(vmovn_s32(X[2]), vmovn_s32(X[3])));
                    bsums[16 * b + i] = vaddvq_s32(vaddq_s32(vaddq_s32(X[0], X[1]), vaddq_s32(X[2], X[3])));
                }
            }
        }
    }
}

// ---- simple quants ------------------------------------------------------------------------------

// One block's signed weight codes (lo: weights 0..15, hi: 16..31), scale and min.
typedef struct { int8x16_t lo, hi; float d, m; } nk_block;

// Bit i of qh16 (16 bits) as 0x10 in byte i.
NK_INL uint8x16_t nk_bits_to_0x10(uint32_t qh16) {
    const uint8x16_t sel = { 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128 };
    uint8x8_t b = vcreate_u8((uint64_t)qh16);
    uint8x16_t rep = vcombine_u8(vdup_lane_u8(b, 0), vdup_lane_u8(b, 1));
    return vandq_u8(vtstq_u8(rep, sel), vdupq_n_u8(0x10));
}

NK_INL void nk_unpack(int type, const uint8_t *row, int64_t b, nk_block *w) {
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    w->m = 0;
    if (type == PUNA_TYPE_Q4_0) {
        const uint8_t *p = row + 18 * b;
        uint8x16_t q = vld1q_u8(p + 2);
        w->d = kq_f16(kq_load16(p));
        w->lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), vdupq_n_s8(8));
        w->hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
    } else if (type == PUNA_TYPE_Q4_1) {
        const uint8_t *p = row + 20 * b;
        uint8x16_t q = vld1q_u8(p + 4);
        w->d = kq_f16(kq_load16(p));
        w->m = kq_f16(kq_load16(p + 2));
        w->lo = vreinterpretq_s8_u8(vandq_u8(q, m4));
        w->hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
    } else if (type == PUNA_TYPE_Q5_0 || type == PUNA_TYPE_Q5_1) {
        const int one = type == PUNA_TYPE_Q5_1;
        const uint8_t *p = row + (one ? 24 : 22) * b;
        uint32_t qh = kq_load32(p + (one ? 4 : 2));
        uint8x16_t q = vld1q_u8(p + (one ? 8 : 6));
        w->d = kq_f16(kq_load16(p));
        if (one) w->m = kq_f16(kq_load16(p + 2));
        uint8x16_t lo = vorrq_u8(vandq_u8(q, m4), nk_bits_to_0x10(qh & 0xffff));
        uint8x16_t hi = vorrq_u8(vshrq_n_u8(q, 4), nk_bits_to_0x10(qh >> 16));
        w->lo = vreinterpretq_s8_u8(lo);
        w->hi = vreinterpretq_s8_u8(hi);
        if (!one) {
            w->lo = vsubq_s8(w->lo, vdupq_n_s8(16));
            w->hi = vsubq_s8(w->hi, vdupq_n_s8(16));
        }
    } else {  // Q8_0
        const uint8_t *p = row + 34 * b;
        w->d = kq_f16(kq_load16(p));
        w->lo = vld1q_s8((const int8_t *)p + 2);
        w->hi = vld1q_s8((const int8_t *)p + 18);
    }
}

// One (row, token) pair, one block: the canonical lane arithmetic.
NK_INL float32x4_t nk_simple_step(float32x4_t acc, const nk_block *w, const uint8_t *x, const act_layout *L, int64_t b,
                                  int has_min) {
    const int8_t *xq = (const int8_t *)(x + L->qs_off) + (b / 4) * 256 + 16 * (b % 4);
    int32x4_t p1 = NK_DOT8(vdupq_n_s32(0), w->lo, vld1q_s8(xq), w->hi, vld1q_s8(xq + 64));
    float dx = ((const float *)(x + L->d_off))[4 * b];
    if (L->levels == 1) {
        // q2 is zero: p / 256 = p1, scale (256 dw) dx (kernels_internal.h)
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p1), (w->d * 256.0f) * dx);
    } else {
        int32x4_t p2 = NK_DOT8(vdupq_n_s32(0), w->lo, vld1q_s8(xq + 128), w->hi, vld1q_s8(xq + 192));
        int32x4_t p = vaddq_s32(vshlq_n_s32(p1, 8), p2);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), w->d * dx);
    }
    if (has_min) acc = vfmaq_n_f32(acc, vld1q_f32((const float *)(x + L->aux_off) + 4 * b), w->m * dx);
    return acc;
}

NK_INL float nk_reduce16(float32x4_t a0, float32x4_t a1, float32x4_t a2, float32x4_t a3) {
    float32x4_t c = vaddq_f32(vaddq_f32(a0, a2), vaddq_f32(a1, a3));
    float32x2_t h = vadd_f32(vget_low_f32(c), vget_high_f32(c));
    return vget_lane_f32(h, 0) + vget_lane_f32(h, 1);
}

// R rows x T tokens, whole rows; accumulator slot b % 4 per pair.
NK_INL void nk_simple_tile(const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T) {
    const act_layout *L = &a->layout;
    const int has_min = type == PUNA_TYPE_Q4_1 || type == PUNA_TYPE_Q5_1;
    const int64_t nb = a->cols / 32, rb = a->row_bytes, tb = L->token_bytes;
    float32x4_t acc[4][2][4];
    NK_UNROLL for (int i = 0; i < R; i++) NK_UNROLL for (int j = 0; j < T; j++) NK_UNROLL for (int s = 0; s < 4; s++)
        acc[i][j][s] = vdupq_n_f32(0);
    const uint8_t *w = a->w + r * rb, *x0 = a->act + t * tb;
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        NK_UNROLL for (int s = 0; s < 4; s++) NK_UNROLL for (int i = 0; i < R; i++) {
            nk_block wb;
            nk_unpack(type, w + i * rb, b + s, &wb);
            NK_UNROLL for (int j = 0; j < T; j++) acc[i][j][s] = nk_simple_step(acc[i][j][s], &wb, x0 + j * tb, L, b + s, has_min);
        }
    }
    for (int s = 0; b < nb; b++, s++) NK_UNROLL for (int i = 0; i < R; i++) {
        nk_block wb;
        nk_unpack(type, w + i * rb, b, &wb);
        NK_UNROLL for (int j = 0; j < T; j++) acc[i][j][s] = nk_simple_step(acc[i][j][s], &wb, x0 + j * tb, L, b, has_min);
    }
    NK_UNROLL for (int i = 0; i < R; i++) NK_UNROLL for (int j = 0; j < T; j++)
        a->y[(t + j) * a->rows + r + i] = nk_reduce16(acc[i][j][0], acc[i][j][1], acc[i][j][2], acc[i][j][3]);
}

// ---- K-quants ---------------------------------------------------------------------------------

// One super-block of a row: signed/unsigned codes in natural order (16 vectors of 16) and the
// integer weight of each 16-code vector (its sub-block's scale).
typedef struct { int8x16_t q[16]; int32_t sc[16]; uint8_t m[8]; float d, dmin; } nk_kblock;

NK_INL void nk_unpack_k(int type, const uint8_t *p, nk_kblock *k) {
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    if (type == PUNA_TYPE_Q6_K) {
        k->d = kq_f16(kq_load16(p + 208));
        const int8_t *scales = (const int8_t *)p + 192;
        NK_UNROLL for (int s = 0; s < 16; s++) k->sc[s] = scales[s];
        const uint8x16_t m2 = vdupq_n_u8(0x03);
        const int8x16_t off = vdupq_n_s8(32);
        NK_UNROLL for (int h = 0; h < 2; h++) {
            const uint8_t *ql = p + 64 * h, *qh = p + 128 + 32 * h;
            NK_UNROLL for (int part = 0; part < 2; part++) {  // weights l = 16 * part .. 16 * part + 15 of each quarter
                uint8x16_t l0 = vld1q_u8(ql + 16 * part), l1 = vld1q_u8(ql + 32 + 16 * part), hb = vld1q_u8(qh + 16 * part);
                uint8x16_t c0 = vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(hb, m2), 4));
                uint8x16_t c1 = vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m2), 4));
                uint8x16_t c2 = vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m2), 4));
                uint8x16_t c3 = vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4));
                k->q[8 * h + 0 + part] = vsubq_s8(vreinterpretq_s8_u8(c0), off);
                k->q[8 * h + 2 + part] = vsubq_s8(vreinterpretq_s8_u8(c1), off);
                k->q[8 * h + 4 + part] = vsubq_s8(vreinterpretq_s8_u8(c2), off);
                k->q[8 * h + 6 + part] = vsubq_s8(vreinterpretq_s8_u8(c3), off);
            }
        }
        return;
    }
    const int q5 = type == PUNA_TYPE_Q5_K;
    k->d = kq_f16(kq_load16(p));
    k->dmin = kq_f16(kq_load16(p + 2));
    NK_UNROLL for (int s = 0; s < 8; s++) {
        int sc, m;
        kq_scale_min(p + 4, s, &sc, &m);
        k->sc[2 * s] = k->sc[2 * s + 1] = sc;
        k->m[s] = (uint8_t)m;
    }
    const uint8_t *qs = p + (q5 ? 48 : 16);
    uint8x16_t h0 = vdupq_n_u8(0), h1 = h0;
    if (q5) {
        h0 = vld1q_u8(p + 16);
        h1 = vld1q_u8(p + 32);
    }
    NK_UNROLL for (int c = 0; c < 4; c++) {
        uint8x16_t v0 = vld1q_u8(qs + 32 * c), v1 = vld1q_u8(qs + 32 * c + 16);
        uint8x16_t a0 = vandq_u8(v0, m4), a1 = vandq_u8(v1, m4), b0 = vshrq_n_u8(v0, 4), b1 = vshrq_n_u8(v1, 4);
        if (q5) {
            // bit 4 of weight l of sub-block s is bit s of qh[l]
            const uint8x16_t bit_a = vdupq_n_u8((uint8_t)(1u << (2 * c))), bit_b = vdupq_n_u8((uint8_t)(2u << (2 * c)));
            const uint8x16_t b4 = vdupq_n_u8(0x10);
            a0 = vorrq_u8(a0, vandq_u8(vtstq_u8(h0, bit_a), b4));
            a1 = vorrq_u8(a1, vandq_u8(vtstq_u8(h1, bit_a), b4));
            b0 = vorrq_u8(b0, vandq_u8(vtstq_u8(h0, bit_b), b4));
            b1 = vorrq_u8(b1, vandq_u8(vtstq_u8(h1, bit_b), b4));
        }
        k->q[4 * c] = vreinterpretq_s8_u8(a0);
        k->q[4 * c + 1] = vreinterpretq_s8_u8(a1);
        k->q[4 * c + 2] = vreinterpretq_s8_u8(b0);
        k->q[4 * c + 3] = vreinterpretq_s8_u8(b1);
    }
}

NK_INL float nk_k_step(float acc, const nk_kblock *w, const uint8_t *x, const act_layout *L, int64_t b, int type) {
    const int8_t *xq = (const int8_t *)(x + L->qs_off) + ACT256_STRIDE * b;
    int32x4_t A1 = vdupq_n_s32(0), A2 = A1;
    if (type == PUNA_TYPE_Q6_K) {
        NK_UNROLL for (int s = 0; s < 16; s++) {
            A1 = vmlaq_n_s32(A1, NK_DOT4(vdupq_n_s32(0), w->q[s], vld1q_s8(xq + 16 * s)), w->sc[s]);
            A2 = vmlaq_n_s32(A2, NK_DOT4(vdupq_n_s32(0), w->q[s], vld1q_s8(xq + 256 + 16 * s)), w->sc[s]);
        }
    } else {
        NK_UNROLL for (int s = 0; s < 8; s++) {
            int32x4_t p1 = NK_DOT8(vdupq_n_s32(0), w->q[2 * s], vld1q_s8(xq + 32 * s), w->q[2 * s + 1], vld1q_s8(xq + 32 * s + 16));
            int32x4_t p2 = NK_DOT8(vdupq_n_s32(0), w->q[2 * s], vld1q_s8(xq + 256 + 32 * s), w->q[2 * s + 1],
                                   vld1q_s8(xq + 256 + 32 * s + 16));
            A1 = vmlaq_n_s32(A1, p1, w->sc[2 * s]);
            A2 = vmlaq_n_s32(A2, p2, w->sc[2 * s]);
        }
    }
    const float dx = ((const float *)(x + L->d_off))[b];
    int64_t A = 256 * (int64_t)vaddvq_s32(A1) + vaddvq_s32(A2);
    acc = fmaf(w->d * dx, (float)A, acc);
    if (type == PUNA_TYPE_Q6_K) return acc;  // the codes were made signed in unpack: no offset term
    const int32_t *bs = (const int32_t *)(x + L->aux_off) + 16 * b;
    int32_t B = 0;
    NK_UNROLL for (int s = 0; s < 8; s++) B += w->m[s] * (bs[2 * s] + bs[2 * s + 1]);
    return fmaf(-(w->dmin * dx), (float)B, acc);
}

NK_INL void nk_k_tile(const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T) {
    const act_layout *L = &a->layout;
    const int64_t nb = a->cols / 256, rb = a->row_bytes, tb = L->token_bytes;
    const int64_t bytes = type == PUNA_TYPE_Q4_K ? 144 : type == PUNA_TYPE_Q5_K ? 176 : 210;
    float acc[4][2];
    NK_UNROLL for (int i = 0; i < R; i++) NK_UNROLL for (int j = 0; j < T; j++) acc[i][j] = 0;
    const uint8_t *w = a->w + r * rb, *x0 = a->act + t * tb;
    for (int64_t b = 0; b < nb; b++) {
        NK_UNROLL for (int i = 0; i < R; i++) {
            nk_kblock kb;
            nk_unpack_k(type, w + i * rb + bytes * b, &kb);
            NK_UNROLL for (int j = 0; j < T; j++) acc[i][j] = nk_k_step(acc[i][j], &kb, x0 + j * tb, L, b, type);
        }
    }
    NK_UNROLL for (int i = 0; i < R; i++) NK_UNROLL for (int j = 0; j < T; j++) a->y[(t + j) * a->rows + r + i] = acc[i][j];
}

// ---- float weights ------------------------------------------------------------------------------

NK_INL float32x4_t nk_load_w(int type, const uint8_t *row, int64_t c) {
    if (type == PUNA_TYPE_F32) return vld1q_f32((const float *)row + c);
    uint16x4_t h = vld1_u16((const uint16_t *)row + c);
    if (type == PUNA_TYPE_BF16) return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
    return vcvt_f32_f16(vreinterpret_f16_u16(h));
}

NK_INL float nk_w_scalar(int type, const uint8_t *row, int64_t c) {
    if (type == PUNA_TYPE_F32) return ((const float *)row)[c];
    uint16_t h = ((const uint16_t *)row)[c];
    if (type == PUNA_TYPE_BF16) {
        uint32_t bits = (uint32_t)h << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    return kq_f16(h);
}

// 4 accumulators of 4 lanes per pair, a fixed combining order, the column tail one by one.
NK_INL void nk_float_tile(const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T) {
    const int64_t cols = a->cols, rb = a->row_bytes;
    float32x4_t acc[4][2][4];
    NK_UNROLL for (int i = 0; i < R; i++) NK_UNROLL for (int j = 0; j < T; j++) NK_UNROLL for (int s = 0; s < 4; s++)
        acc[i][j][s] = vdupq_n_f32(0);
    const uint8_t *w = a->w + r * rb;
    const float *x0 = a->x + t * cols;
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        NK_UNROLL for (int s = 0; s < 4; s++) {
            float32x4_t xv[2];
            NK_UNROLL for (int j = 0; j < T; j++) xv[j] = vld1q_f32(x0 + j * cols + c + 4 * s);
            NK_UNROLL for (int i = 0; i < R; i++) {
                float32x4_t wv = nk_load_w(type, w + i * rb, c + 4 * s);
                NK_UNROLL for (int j = 0; j < T; j++) acc[i][j][s] = vfmaq_f32(acc[i][j][s], wv, xv[j]);
            }
        }
    }
    NK_UNROLL for (int i = 0; i < R; i++) NK_UNROLL for (int j = 0; j < T; j++) {
        float sum = nk_reduce16(acc[i][j][0], acc[i][j][1], acc[i][j][2], acc[i][j][3]);
        for (int64_t cc = c; cc < cols; cc++) sum = fmaf(nk_w_scalar(type, w + i * rb, cc), x0[j * cols + cc], sum);
        a->y[(t + j) * a->rows + r + i] = sum;
    }
}

// ---- bitsandbytes (kernels_internal.h) -----------------------------------------------------------
// Block by block as the simple quants, with signed weights: 4-bit codes looked up in T (tbl), the
// high nibbles giving the even elements and the low ones the odd, zipped back into element order.

// R rows x T tokens over whole rows (bits 4 or 8); accumulator slot k % 4 per pair.
NK_INL void nk_bnb_tile(const qmm_args *a, int bits, int64_t r, int64_t t, const int R, const int T) {
    const act_layout *L = &a->layout;
    const int64_t cols = a->cols, nb = cols / 32, tb = L->token_bytes;
    const int one = L->levels == 1;
    bnb4_ctx c;
    int8x16_t tab = vdupq_n_s8(0);
    const puna_bnb_int8_weight *w8 = (const puna_bnb_int8_weight *)(const void *)a->w;
    if (bits == 4) {
        bnb4_ctx_init(&c, (const puna_bnb4_weight *)(const void *)a->w);
        tab = vld1q_s8(c.T);
    }
    float32x4_t acc[4][2][4];
    NK_UNROLL for (int i = 0; i < R; i++) NK_UNROLL for (int j = 0; j < T; j++) NK_UNROLL for (int s = 0; s < 4; s++)
        acc[i][j][s] = vdupq_n_f32(0);
    int64_t prev[4];
    float absmax[4];
    NK_UNROLL for (int i = 0; i < R; i++) { prev[i] = -1; absmax[i] = 0; }
    const uint8_t *x0 = a->act + t * tb;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    for (int64_t k = 0; k < nb; k++) {
        const int s = (int)(k % 4);
        NK_UNROLL for (int i = 0; i < R; i++) {
            const int64_t e0 = (r + i) * cols + 32 * k;
            int8x16_t lo, hi;
            if (bits == 4) {
                uint8x16_t v = vld1q_u8(c.w->packed + e0 / 2);
                int8x16_t even = vqtbl1q_s8(tab, vshrq_n_u8(v, 4)), odd = vqtbl1q_s8(tab, vandq_u8(v, m4));
                lo = vzip1q_s8(even, odd);
                hi = vzip2q_s8(even, odd);
                int64_t b = bnb4_block_of(&c, e0);
                if (b != prev[i]) {
                    absmax[i] = bnb4_absmax(&c, b);
                    prev[i] = b;
                }
            } else {
                lo = vld1q_s8(w8->weight + e0);
                hi = vld1q_s8(w8->weight + e0 + 16);
            }
            NK_UNROLL for (int j = 0; j < T; j++) {
                const uint8_t *x = x0 + j * tb;
                const int8_t *xq = (const int8_t *)(x + L->qs_off) + (k / 4) * 256 + 16 * s;
                const float dx = ((const float *)(x + L->d_off))[4 * k];
                int32x4_t p = NK_DOT8(vdupq_n_s32(0), lo, vld1q_s8(xq), hi, vld1q_s8(xq + 64));
                float sc;
                if (one) {
                    sc = bits == 4 ? absmax[i] * (dx * 256.0f) : dx * 256.0f;
                } else {
                    int32x4_t p2 = NK_DOT8(vdupq_n_s32(0), lo, vld1q_s8(xq + 128), hi, vld1q_s8(xq + 192));
                    p = vaddq_s32(vshlq_n_s32(p, 8), p2);
                    sc = bits == 4 ? absmax[i] * dx : dx;
                }
                acc[i][j][s] = vfmaq_n_f32(acc[i][j][s], vcvtq_f32_s32(p), sc);
            }
        }
    }
    NK_UNROLL for (int i = 0; i < R; i++) {
        const float scale = bits == 4 ? c.mscale : w8->row_scale[r + i] * (1.0f / 127.0f);
        NK_UNROLL for (int j = 0; j < T; j++)
            a->y[(t + j) * a->rows + r + i] = nk_reduce16(acc[i][j][0], acc[i][j][1], acc[i][j][2], acc[i][j][3]) * scale;
    }
}

// ---- row drivers --------------------------------------------------------------------------------
// Decode: 4-row tiles (activations loaded once per 4 rows); batches: 2 x 2 tiles over row blocks.

#define NK_BLOCK_ROWS 32
#ifndef NK_TILE22
#define NK_TILE22(TILE, a, TYPE, r, t) TILE(a, TYPE, r, t, 2, 2)
#endif

#define NK_ROWS(fname, TILE, TYPE)                                                                      \
    static void NK_NAME(fname##_dec4)(const qmm_args *a, int64_t r) { TILE(a, TYPE, r, 0, 4, 1); }     \
    static void NK_NAME(fname##_22)(const qmm_args *a, int64_t r, int64_t t) { NK_TILE22(TILE, a, TYPE, r, t); } \
    static void NK_NAME(fname##_12)(const qmm_args *a, int64_t r, int64_t t) { TILE(a, TYPE, r, t, 1, 2); } \
    static void NK_NAME(fname##_21)(const qmm_args *a, int64_t r, int64_t t) { TILE(a, TYPE, r, t, 2, 1); } \
    static void NK_NAME(fname##_11)(const qmm_args *a, int64_t r, int64_t t) { TILE(a, TYPE, r, t, 1, 1); } \
    static void NK_NAME(fname)(const qmm_args *a, int64_t r0, int64_t r1) {                            \
        if (a->n_tokens == 1) {                                                                         \
            int64_t r = r0;                                                                             \
            for (; r + 4 <= r1; r += 4) NK_NAME(fname##_dec4)(a, r);                                    \
            for (; r < r1; r++) NK_NAME(fname##_11)(a, r, 0);                                           \
            return;                                                                                     \
        }                                                                                               \
        for (int64_t rb = r0; rb < r1; rb += NK_BLOCK_ROWS) {                                           \
            int64_t re = rb + NK_BLOCK_ROWS < r1 ? rb + NK_BLOCK_ROWS : r1;                             \
            int64_t t = 0;                                                                              \
            for (; t + 2 <= a->n_tokens; t += 2) {                                                      \
                int64_t r = rb;                                                                         \
                for (; r + 2 <= re; r += 2) NK_NAME(fname##_22)(a, r, t);                               \
                for (; r < re; r++) NK_NAME(fname##_12)(a, r, t);                                       \
            }                                                                                           \
            for (; t < a->n_tokens; t++) {                                                              \
                int64_t r = rb;                                                                         \
                for (; r + 2 <= re; r += 2) NK_NAME(fname##_21)(a, r, t);                               \
                for (; r < re; r++) NK_NAME(fname##_11)(a, r, t);                                       \
            }                                                                                           \
        }                                                                                               \
    }

NK_ROWS(rows_q4_0, nk_simple_tile, PUNA_TYPE_Q4_0)
NK_ROWS(rows_q4_1, nk_simple_tile, PUNA_TYPE_Q4_1)
NK_ROWS(rows_q5_0, nk_simple_tile, PUNA_TYPE_Q5_0)
NK_ROWS(rows_q5_1, nk_simple_tile, PUNA_TYPE_Q5_1)
NK_ROWS(rows_q8_0, nk_simple_tile, PUNA_TYPE_Q8_0)
NK_ROWS(rows_q4_K, nk_k_tile, PUNA_TYPE_Q4_K)
NK_ROWS(rows_q5_K, nk_k_tile, PUNA_TYPE_Q5_K)
NK_ROWS(rows_q6_K, nk_k_tile, PUNA_TYPE_Q6_K)
NK_ROWS(rows_f32, nk_float_tile, PUNA_TYPE_F32)
NK_ROWS(rows_f16, nk_float_tile, PUNA_TYPE_F16)
NK_ROWS(rows_bf16, nk_float_tile, PUNA_TYPE_BF16)
#define NK_BNB4_TILE(a, TYPE, r, t, R, T) nk_bnb_tile(a, 4, r, t, R, T)
#define NK_BNB8_TILE(a, TYPE, r, t, R, T) nk_bnb_tile(a, 8, r, t, R, T)
#pragma push_macro("NK_TILE22")
#undef NK_TILE22
#define NK_TILE22(TILE, a, TYPE, r, t) TILE(a, TYPE, r, t, 2, 2)
NK_ROWS(rows_bnb4, NK_BNB4_TILE, PUNA_TYPE_BNB4)
NK_ROWS(rows_bnb8, NK_BNB8_TILE, PUNA_TYPE_BNB_INT8)
#pragma pop_macro("NK_TILE22")

static void NK_NAME(fill)(int type, qmm_kernel *k) {
    memset(k, 0, sizeof *k);
    k->quantize = NK_NAME(quantize);
    k->act_format = ACT_Q8_32;
    k->row_tile = 4;
    switch (type) {
    case PUNA_TYPE_Q4_0: k->rows = NK_NAME(rows_q4_0); k->aux = AUX_NEG_SUM8; break;
    case PUNA_TYPE_Q4_1: k->rows = NK_NAME(rows_q4_1); k->aux = AUX_SUM_F32; break;
    case PUNA_TYPE_Q5_0: k->rows = NK_NAME(rows_q5_0); k->aux = AUX_NEG_SUM16; break;
    case PUNA_TYPE_Q5_1: k->rows = NK_NAME(rows_q5_1); k->aux = AUX_SUM_F32; break;
    case PUNA_TYPE_Q8_0: k->rows = NK_NAME(rows_q8_0); break;
    case PUNA_TYPE_Q4_K: k->rows = NK_NAME(rows_q4_K); k->act_format = ACT_Q8_256; break;
    case PUNA_TYPE_Q5_K: k->rows = NK_NAME(rows_q5_K); k->act_format = ACT_Q8_256; break;
    case PUNA_TYPE_Q6_K: k->rows = NK_NAME(rows_q6_K); k->act_format = ACT_Q8_256; break;
    case PUNA_TYPE_F32: k->rows = NK_NAME(rows_f32); k->quantize = NULL; break;
    case PUNA_TYPE_F16: k->rows = NK_NAME(rows_f16); k->quantize = NULL; break;
    case PUNA_TYPE_BF16: k->rows = NK_NAME(rows_bf16); k->quantize = NULL; break;
    case PUNA_TYPE_BNB4: k->rows = NK_NAME(rows_bnb4); break;
    case PUNA_TYPE_BNB_INT8: k->rows = NK_NAME(rows_bnb8); break;
    default: break;
    }
}
