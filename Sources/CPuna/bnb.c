// bitsandbytes weights read in place (puna_bnb.h): exact dequantization and descriptor checks. The
// matmul kernels live with their families (kernels_*.c); the arithmetic is pinned in kernels_internal.h.
#include "puna_bnb.h"
#include "kernels_internal.h"

#include <math.h>

// absmax_b is a product then a sum, each rounded to f32 as bitsandbytes does: never an fma
// (bnb4_absmax also routes the product through bnb_rounded, for compilers that ignore this).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static int bnb4_tables_ok(const puna_bnb4_weight *w, int64_t cols) {
    if (!w || !w->packed || !w->quant_map || w->blocksize <= 0 || cols < 0 || cols % w->blocksize != 0) return 0;
    if (w->absmax_codes) return w->nested_quant_map && w->nested_absmax && w->nested_blocksize > 0;
    return w->absmax != NULL;
}

int puna_bnb4_validate(const puna_bnb4_weight *w, int64_t cols) {
    if (!bnb4_tables_ok(w, cols)) return -1;
    for (int k = 0; k < 16; k++)
        if (!isfinite(w->quant_map[k])) return -1;
    return 0;
}

int puna_bnb_int8_validate(const puna_bnb_int8_weight *w, int64_t cols) {
    return w && w->weight && w->row_scale && cols >= 0 ? 0 : -1;
}

int puna_bnb4_dequantize_rows(const puna_bnb4_weight *w, int64_t cols, int64_t r0, int64_t r1, float *out) {
    if (!bnb4_tables_ok(w, cols) || !out || r0 < 0 || r1 < r0) return -1;
    bnb4_ctx c;
    c.w = w;
    c.blk_shift = bnb_log2(w->blocksize);
    c.nest_shift = w->absmax_codes ? bnb_log2(w->nested_blocksize) : -1;
    const float *qm = w->quant_map;
    for (int64_t e = r0 * cols, end = r1 * cols; e < end;) {
        // one bnb block (or the part of it in range) at a time
        int64_t b = bnb4_block_of(&c, e), stop = (b + 1) * w->blocksize < end ? (b + 1) * w->blocksize : end;
        const float absmax = bnb4_absmax(&c, b);
        float *o = out + (e - r0 * cols);
        for (; e < stop; e++, o++) {
            uint8_t byte = w->packed[e >> 1];
            *o = qm[(e & 1) ? byte & 15 : byte >> 4] * absmax;
        }
    }
    return 0;
}

int puna_bnb4_block_absmax(const puna_bnb4_weight *w, int64_t b0, int64_t count, float *out) {
    if (!w || !bnb4_tables_ok(w, w->blocksize) || !out || b0 < 0 || count < 0) return -1;
    bnb4_ctx c;
    c.w = w;
    c.blk_shift = bnb_log2(w->blocksize);
    c.nest_shift = w->absmax_codes ? bnb_log2(w->nested_blocksize) : -1;
    for (int64_t i = 0; i < count; i++) out[i] = bnb4_absmax(&c, b0 + i);
    return 0;
}

int puna_bnb_int8_dequantize_rows(const puna_bnb_int8_weight *w, int64_t cols, int64_t r0, int64_t r1, float *out) {
    if (puna_bnb_int8_validate(w, cols) != 0 || !out || r0 < 0 || r1 < r0) return -1;
    for (int64_t r = r0; r < r1; r++) {
        const float s = w->row_scale[r];
        const int8_t *q = w->weight + r * cols;
        float *o = out + (r - r0) * cols;
        // (A * SCB) / 127 as two rounded products, the order bitsandbytes uses
        for (int64_t c = 0; c < cols; c++) o[c] = ((float)q[c] * s) * (1.0f / 127.0f);
    }
    return 0;
}
