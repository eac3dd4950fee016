// Unmerged LoRA: the low-rank update of one weight matrix for a batch of tokens,
// y[t] += s_t · B(A·x[t]), with A read where it lies (rank × cols) and B stored transposed
// (rank × outputs, one row per rank index) so that the second product streams whole rows.
#ifndef PUNA_LORA_H
#define PUNA_LORA_H

#include <stdint.h>
#include "puna_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

// The two factors of one pair. Types: PUNA_TYPE_F32, PUNA_TYPE_F16 or PUNA_TYPE_BF16 (each
// factor its own). Rows are packed: A's row k is cols elements, Bᵀ's row k is outputs elements.
typedef struct puna_lora_factors {
    int a_type;
    int bt_type;
    const void *a;      // rank × cols
    const void *bt;     // rank × outputs: bt[k][o] = B[o][k]
    int64_t rank;
    int64_t cols;
    int64_t outputs;
} puna_lora_factors;

// For i < n_tokens, with t = token_rows ? token_rows[i] : i and s = scales ? scales[i] : scale:
//   u[k]      = s · Σ_c A[k][c] · x[t·cols + c]            (k < rank)
//   y[t·y_stride + o] += Σ_k u[k] · Bᵀ[k][o]               (o < outputs, k summed in order)
// The arithmetic of one token does not depend on the thread count, on n_tokens, or on which other
// tokens share the call, so batched and single-token results are equal bit for bit.
// Work: one pool run over rank rows (A), one over output columns in 16-aligned chunks (Bᵀ).
// Scratch: the pool's (puna_pool_scratch), n_tokens · rank floats in all.
// Returns 0, or -1 for an unsupported type, inconsistent sizes or no scratch memory.
int puna_lora_apply(puna_pool *pool, const puna_lora_factors *factors, const float *x, float *y, int64_t y_stride,
                    int64_t n_tokens, const int32_t *token_rows, const float *scales, float scale);

// Whether a factor type is one puna_lora_apply takes.
int puna_lora_supports(int type);

// Which code does the arithmetic: the best SIMD path for this CPU (AVX-512, AVX2+F16C, NEON) or
// the portable C loops. Global; for tests and comparisons. Returns 0, or -1 for an unknown value.
enum puna_lora_path { PUNA_LORA_AUTO = 0, PUNA_LORA_PORTABLE = 1 };
int puna_lora_set_path(int path);
// Name of the path in force now: "avx512", "avx2", "neon" or "portable".
const char *puna_lora_path_name(void);

#ifdef __cplusplus
}
#endif
#endif
