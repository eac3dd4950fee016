// Scalar int8 reference of the quantized-activation matmul (definitions in kernels_internal.h).
// Plain C, one (row, token) dot at a time, written to read like the definition: the SIMD kernels
// are tested for identical bits against these functions, and the activation quantizer here is the
// one every SIMD quantizer must reproduce byte for byte.
#include "kernels_internal.h"

#include <math.h>

// ---- activation quantization ------------------------------------------------------------------

// clamp(rint(v)) to [-127, 127] as an int; rintf rounds half to even in the default rounding mode,
// as cvtps2dq and fcvtns do. nan becomes -127.
static inline int32_t round_clamp(float v) {
    float r = rintf(v);
    if (!(r >= -127.0f)) return -127;
    if (r > 127.0f) return 127;
    return (int32_t)r;
}

// The levels of one value (kernels_internal.h). x * id256 is 256 * (x * id) exactly, so q2 is
// the rounded residual without a float subtraction a compiler could fuse; one level leaves it 0.
static inline void quantize_one(float x, float id, int levels, int8_t *q1, int8_t *q2) {
    int32_t a = round_clamp(x * id);
    if (levels == 1) {
        *q1 = (int8_t)a;
        *q2 = 0;
        return;
    }
    float wide = rintf(x * (id * 256.0f));
    int32_t b = !(wide >= -65536.0f) ? -65536 : wide > 65536.0f ? 65536 : (int32_t)wide;
    int32_t r = b - 256 * a;
    *q1 = (int8_t)a;
    *q2 = (int8_t)(r < -127 ? -127 : r > 127 ? 127 : r);
}

static float block_amax(const float *x, int n) {
    float amax = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) amax = a;
    }
    return amax;
}

void puna_act_quantize_scalar(const float *x, int64_t cols, const act_layout *l, int aux, uint8_t *act,
                              int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
        const float *xt = x + t * cols;
        uint8_t *base = act + t * l->token_bytes;
        int8_t *qs = (int8_t *)(base + l->qs_off);
        float *d = (float *)(base + l->d_off);
        if (l->format == ACT_Q8_32) {
            int64_t padded = l->n_groups * 4;
            for (int64_t b = 0; b < padded; b++) {
                int64_t g = b / 4, k = b % 4;
                int8_t *lo = qs + g * 256 + 16 * k, *hi = lo + 64;
                int8_t q1[32] = {0}, q2[32] = {0};
                float db = 0;
                if (b < l->n_blocks) {
                    const float *xb = xt + b * 32;
                    float amax = block_amax(xb, 32);
                    float id = amax > 0 ? 127.0f / amax : 0.0f;
                    db = amax / 127.0f / 256.0f;
                    for (int i = 0; i < 32; i++) quantize_one(xb[i], id, l->levels, &q1[i], &q2[i]);
                }
                for (int j = 0; j < 4; j++) d[4 * b + j] = db;
                memcpy(lo, q1, 16);
                memcpy(hi, q1 + 16, 16);
                memcpy(lo + 128, q2, 16);
                memcpy(hi + 128, q2 + 16, 16);
                if (aux == AUX_NONE) continue;
                uint32_t *words = (uint32_t *)(base + l->aux_off) + g * 16 + 4 * k;
                for (int j = 0; j < 4; j++) {
                    int32_t s = 0;
                    for (int i = 0; i < 4; i++)
                        s += 256 * (q1[4 * j + i] + q1[16 + 4 * j + i]) + q2[4 * j + i] + q2[16 + 4 * j + i];
                    int32_t iv = aux == AUX_NEG_SUM8 ? -8 * s : aux == AUX_NEG_SUM128 ? -128 * s : -16 * s;
                    float fv = (float)s;
                    if (aux == AUX_SUM_F32) memcpy(&words[j], &fv, 4);
                    else memcpy(&words[j], &iv, 4);
                }
            }
        } else {
            int32_t *bsums = (int32_t *)(base + l->aux_off);
            for (int64_t b = 0; b < l->n_blocks; b++) {
                const float *xb = xt + b * 256;
                int8_t *q1 = qs + b * 512, *q2 = q1 + 256;
                float amax = block_amax(xb, 256);
                float id = amax > 0 ? 127.0f / amax : 0.0f;
                d[b] = amax / 127.0f / 256.0f;
                int16_t *x16 = (int16_t *)(q1 + ACT256_X16);
                for (int i = 0; i < 256; i++) {
                    quantize_one(xb[i], id, l->levels, &q1[i], &q2[i]);
                    x16[i] = (int16_t)(256 * q1[i] + q2[i]);
                }
                for (int s = 0; s < 16; s++) {
                    int32_t sum = 0;
                    for (int i = 16 * s; i < 16 * s + 16; i++) sum += 256 * q1[i] + q2[i];
                    bsums[b * 16 + s] = sum;
                }
            }
        }
    }
}

// X of element i of a block laid out as in ACT_Q8_32 (lo points at the block's q1 low half).
static inline int32_t act_x32(const int8_t *lo, int i) {
    int off = i < 16 ? i : 64 + i - 16;
    return 256 * lo[off] + lo[128 + off];
}

// ---- simple quants --------------------------------------------------------------------------

// The 32 weight codes of block `b` of a row, in weight order, and its scale and min.
typedef struct { int32_t code[32]; float d, m; } wblock;

static void unpack_block(int type, const uint8_t *row, int64_t b, wblock *out) {
    out->m = 0;
    switch (type) {
    case PUNA_TYPE_Q4_0: {
        const uint8_t *p = row + b * sizeof(puna_block_q4_0);
        out->d = kq_f16(kq_load16(p));
        for (int i = 0; i < 16; i++) {
            out->code[i] = (p[2 + i] & 15) - 8;
            out->code[16 + i] = (p[2 + i] >> 4) - 8;
        }
        break;
    }
    case PUNA_TYPE_Q4_1: {
        const uint8_t *p = row + b * sizeof(puna_block_q4_1);
        out->d = kq_f16(kq_load16(p));
        out->m = kq_f16(kq_load16(p + 2));
        for (int i = 0; i < 16; i++) {
            out->code[i] = p[4 + i] & 15;
            out->code[16 + i] = p[4 + i] >> 4;
        }
        break;
    }
    case PUNA_TYPE_Q5_0: {
        const uint8_t *p = row + b * sizeof(puna_block_q5_0);
        out->d = kq_f16(kq_load16(p));
        uint32_t qh = kq_load32(p + 2);
        for (int i = 0; i < 16; i++) {
            out->code[i] = ((p[6 + i] & 15) | (((qh >> i) & 1) << 4)) - 16;
            out->code[16 + i] = ((p[6 + i] >> 4) | (((qh >> (16 + i)) & 1) << 4)) - 16;
        }
        break;
    }
    case PUNA_TYPE_Q5_1: {
        const uint8_t *p = row + b * sizeof(puna_block_q5_1);
        out->d = kq_f16(kq_load16(p));
        out->m = kq_f16(kq_load16(p + 2));
        uint32_t qh = kq_load32(p + 4);
        for (int i = 0; i < 16; i++) {
            out->code[i] = (p[8 + i] & 15) | (((qh >> i) & 1) << 4);
            out->code[16 + i] = (p[8 + i] >> 4) | (((qh >> (16 + i)) & 1) << 4);
        }
        break;
    }
    default: {  // Q8_0
        const uint8_t *p = row + b * sizeof(puna_block_q8_0);
        out->d = kq_f16(kq_load16(p));
        for (int i = 0; i < 32; i++) out->code[i] = (int8_t)p[2 + i];
        break;
    }
    }
}

static float dot_simple(int type, const uint8_t *row, int64_t n_blocks, const uint8_t *act, const act_layout *l) {
    const int8_t *qs = (const int8_t *)(act + l->qs_off);
    const float *dx = (const float *)(act + l->d_off);
    const int has_min = type == PUNA_TYPE_Q4_1 || type == PUNA_TYPE_Q5_1;
    const int one = l->levels == 1;
    float acc[16] = {0};
    wblock w;
    for (int64_t b = 0; b < n_blocks; b++) {
        unpack_block(type, row, b, &w);
        const int8_t *lo = qs + (b / 4) * 256 + 16 * (b % 4);
        // One level: (float)(p / 256) times (256 dw) dx (kernels_internal.h).
        float s = one ? (w.d * 256.0f) * dx[4 * b] : w.d * dx[4 * b], sm = w.m * dx[4 * b];
        for (int j = 0; j < 4; j++) {
            int32_t p = 0, xs = 0;
            for (int i = 4 * j; i < 4 * j + 4; i++) {
                p += w.code[i] * act_x32(lo, i) + w.code[16 + i] * act_x32(lo, 16 + i);
                xs += act_x32(lo, i) + act_x32(lo, 16 + i);
            }
            float *a = &acc[4 * (b % 4) + j];
            *a = fmaf(s, (float)(one ? p / 256 : p), *a);
            if (has_min) *a = fmaf(sm, (float)xs, *a);
        }
    }
    return kq_reduce16(acc);
}

// ---- K-quants ---------------------------------------------------------------------------------

static float dot_k(int type, const uint8_t *row, int64_t n_blocks, const uint8_t *act, const act_layout *l) {
    const int8_t *qs = (const int8_t *)(act + l->qs_off);
    const float *dx = (const float *)(act + l->d_off);
    float acc = 0;
    for (int64_t b = 0; b < n_blocks; b++) {
        int32_t x[256];
        for (int i = 0; i < 256; i++) x[i] = 256 * qs[b * 512 + i] + qs[b * 512 + 256 + i];
        if (type == PUNA_TYPE_Q6_K) {
            const puna_block_q6_K *blk = (const puna_block_q6_K *)(row + b * sizeof(puna_block_q6_K));
            int64_t A = 0;
            for (int s = 0; s < 16; s++) {
                int64_t p = 0;
                for (int i = 16 * s; i < 16 * s + 16; i++) {
                    int half = i / 128, quarter = (i % 128) / 32, li = i % 32;
                    const uint8_t *ql = blk->ql + 64 * half + 32 * (quarter & 1), *qh = blk->qh + 32 * half;
                    int code = ((ql[li] >> (4 * (quarter >> 1))) & 15) | (((qh[li] >> (2 * quarter)) & 3) << 4);
                    p += (int64_t)(code - 32) * x[i];
                }
                A += blk->scales[s] * p;
            }
            acc = fmaf(kq_f16(blk->d) * dx[b], (float)A, acc);
        } else {
            const int q5 = type == PUNA_TYPE_Q5_K;
            const size_t bytes = q5 ? sizeof(puna_block_q5_K) : sizeof(puna_block_q4_K);
            const uint8_t *p8 = row + b * bytes;
            const uint8_t *scales = p8 + 4, *qh = p8 + 16, *q4 = p8 + (q5 ? 48 : 16);
            int64_t A = 0;
            int32_t B = 0;
            for (int s = 0; s < 8; s++) {
                int sc, m;
                kq_scale_min(scales, s, &sc, &m);
                int64_t p = 0;
                int32_t xs = 0;
                for (int li = 0; li < 32; li++) {
                    int code = (q4[32 * (s / 2) + li] >> (4 * (s % 2))) & 15;
                    if (q5) code |= ((qh[li] >> s) & 1) << 4;
                    p += code * x[32 * s + li];
                    xs += x[32 * s + li];
                }
                A += sc * p;
                B += m * xs;
            }
            float d = kq_f16(kq_load16(p8)), dmin = kq_f16(kq_load16(p8 + 2));
            acc = fmaf(d * dx[b], (float)A, acc);
            acc = fmaf(-(dmin * dx[b]), (float)B, acc);
        }
    }
    return acc;
}

// ---- bitsandbytes ---------------------------------------------------------------------------------

static float dot_bnb4(const bnb4_ctx *c, int64_t r, int64_t cols, const uint8_t *act, const act_layout *l) {
    const int8_t *qs = (const int8_t *)(act + l->qs_off);
    const float *dx = (const float *)(act + l->d_off);
    const int one = l->levels == 1;
    float acc[16] = {0};
    for (int64_t k = 0; k < cols / 32; k++) {
        const int64_t e0 = r * cols + 32 * k;
        const float absmax = bnb4_absmax(c, bnb4_block_of(c, e0));
        const uint8_t *p = c->w->packed + e0 / 2;
        const int8_t *lo = qs + (k / 4) * 256 + 16 * (k % 4);
        const float s = one ? absmax * (dx[4 * k] * 256.0f) : absmax * dx[4 * k];
        for (int j = 0; j < 4; j++) {
            int32_t sum = 0;
            for (int i = 4 * j; i < 4 * j + 4; i++)
                for (int h = 0; h < 32; h += 16) {
                    int e = i + h;  // element within the block: even in the high nibble
                    int code = e & 1 ? p[e / 2] & 15 : p[e / 2] >> 4;
                    sum += c->T[code] * act_x32(lo, e);
                }
            float *a = &acc[4 * (k % 4) + j];
            *a = fmaf(s, (float)(one ? sum / 256 : sum), *a);
        }
    }
    return kq_reduce16(acc) * c->mscale;
}

static float dot_bnb_int8(const int8_t *row, const float row_scale, int64_t cols, const uint8_t *act, const act_layout *l) {
    const int8_t *qs = (const int8_t *)(act + l->qs_off);
    const float *dx = (const float *)(act + l->d_off);
    const int one = l->levels == 1;
    float acc[16] = {0};
    for (int64_t k = 0; k < cols / 32; k++) {
        const int8_t *lo = qs + (k / 4) * 256 + 16 * (k % 4);
        const float s = one ? dx[4 * k] * 256.0f : dx[4 * k];
        for (int j = 0; j < 4; j++) {
            int32_t sum = 0;
            for (int i = 4 * j; i < 4 * j + 4; i++)
                sum += row[32 * k + i] * act_x32(lo, i) + row[32 * k + 16 + i] * act_x32(lo, 16 + i);
            float *a = &acc[4 * (k % 4) + j];
            *a = fmaf(s, (float)(one ? sum / 256 : sum), *a);
        }
    }
    return kq_reduce16(acc) * (row_scale * (1.0f / 127.0f));
}

static void rows_bnb4(const qmm_args *a, int64_t r0, int64_t r1) {
    bnb4_ctx c;
    bnb4_ctx_init(&c, (const puna_bnb4_weight *)(const void *)a->w);
    for (int64_t t = 0; t < a->n_tokens; t++)
        for (int64_t r = r0; r < r1; r++)
            a->y[t * a->rows + r] = dot_bnb4(&c, r, a->cols, a->act + t * a->layout.token_bytes, &a->layout);
}

static void rows_bnb_int8(const qmm_args *a, int64_t r0, int64_t r1) {
    const puna_bnb_int8_weight *w = (const puna_bnb_int8_weight *)(const void *)a->w;
    for (int64_t t = 0; t < a->n_tokens; t++)
        for (int64_t r = r0; r < r1; r++)
            a->y[t * a->rows + r] = dot_bnb_int8(w->weight + r * a->cols, w->row_scale[r], a->cols,
                                                 a->act + t * a->layout.token_bytes, &a->layout);
}

// ---- row drivers --------------------------------------------------------------------------------

#define SCALAR_ROWS(NAME, TYPE, DOT, BLOCK)                                                        \
    static void NAME(const qmm_args *a, int64_t r0, int64_t r1) {                                  \
        const int64_t nb = a->cols / (BLOCK);                                                      \
        for (int64_t t = 0; t < a->n_tokens; t++) {                                                \
            const uint8_t *act = a->act + t * a->layout.token_bytes;                               \
            for (int64_t r = r0; r < r1; r++)                                                      \
                a->y[t * a->rows + r] = DOT(TYPE, a->w + r * a->row_bytes, nb, act, &a->layout);   \
        }                                                                                          \
    }

SCALAR_ROWS(rows_q4_0, PUNA_TYPE_Q4_0, dot_simple, 32)
SCALAR_ROWS(rows_q4_1, PUNA_TYPE_Q4_1, dot_simple, 32)
SCALAR_ROWS(rows_q5_0, PUNA_TYPE_Q5_0, dot_simple, 32)
SCALAR_ROWS(rows_q5_1, PUNA_TYPE_Q5_1, dot_simple, 32)
SCALAR_ROWS(rows_q8_0, PUNA_TYPE_Q8_0, dot_simple, 32)
SCALAR_ROWS(rows_q4_K, PUNA_TYPE_Q4_K, dot_k, 256)
SCALAR_ROWS(rows_q5_K, PUNA_TYPE_Q5_K, dot_k, 256)
SCALAR_ROWS(rows_q6_K, PUNA_TYPE_Q6_K, dot_k, 256)

int puna_kernels_scalar_get(int type, qmm_kernel *out) {
    qmm_kernel k = {0};
    k.quantize = puna_act_quantize_scalar;
    k.act_format = ACT_Q8_32;
    k.row_tile = 1;
    switch (type) {
    case PUNA_TYPE_Q4_0: k.rows = rows_q4_0; k.aux = AUX_NEG_SUM8; break;
    case PUNA_TYPE_Q4_1: k.rows = rows_q4_1; k.aux = AUX_SUM_F32; break;
    case PUNA_TYPE_Q5_0: k.rows = rows_q5_0; k.aux = AUX_NEG_SUM16; break;
    case PUNA_TYPE_Q5_1: k.rows = rows_q5_1; k.aux = AUX_SUM_F32; break;
    case PUNA_TYPE_Q8_0: k.rows = rows_q8_0; break;
    case PUNA_TYPE_Q4_K: k.rows = rows_q4_K; k.act_format = ACT_Q8_256; break;
    case PUNA_TYPE_Q5_K: k.rows = rows_q5_K; k.act_format = ACT_Q8_256; break;
    case PUNA_TYPE_Q6_K: k.rows = rows_q6_K; k.act_format = ACT_Q8_256; break;
    case PUNA_TYPE_BNB4: k.rows = rows_bnb4; break;
    case PUNA_TYPE_BNB_INT8: k.rows = rows_bnb_int8; break;
    default: break;
    }
    *out = k;
    return 1;
}
