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
// factor its own). A: rank rows of cols elements, packed. Bᵀ: as puna_lora_pack_bt lays it out.
typedef struct puna_lora_factors {
    int a_type;
    int bt_type;
    const void *a;      // rank × cols
    const void *bt;     // B transposed, in tiles (puna_lora_pack_bt)
    int64_t rank;
    int64_t cols;
    int64_t outputs;
} puna_lora_factors;

// Bᵀ is kept in tiles of 64 outputs: tile j holds Bᵀ[k][64j .. 64j+63] for k = 0..rank-1, back to
// back, the last tile zero-padded, so one tile's update reads one contiguous block.
// Bytes of that layout (0 for an unsupported type or empty sizes).
int64_t puna_lora_bt_bytes(int type, int64_t outputs, int64_t rank);
// Lay out B (outputs × rank, row-major, of `type`) as tiled Bᵀ into bt (puna_lora_bt_bytes bytes),
// B's row i going to output output_rows[i] (NULL: i), elements copied bit for bit.
// Returns 0, or -1 for an unsupported type or an output row out of range.
int puna_lora_pack_bt(int type, const void *b, int64_t outputs, int64_t rank, const int64_t *output_rows, void *bt);

// For i < n_tokens, with t = token_rows ? token_rows[i] : i and s = scales ? scales[i] : scale:
//   u[k]      = s · Σ_c A[k][c] · x[t·cols + c]            (k < rank)
//   y[t·y_stride + o] += Σ_k u[k] · Bᵀ[k][o]               (o < outputs, k summed in order)
// The arithmetic of one token does not depend on the thread count, on n_tokens, or on which other
// tokens share the call, so batched and single-token results are equal bit for bit.
// Work: one pool run over rank rows (A), one over Bᵀ's tiles.
// Scratch: the pool's (puna_pool_scratch), n_tokens · rank floats in all.
// Returns 0, or -1 for an unsupported type, inconsistent sizes or no scratch memory.
int puna_lora_apply(puna_pool *pool, const puna_lora_factors *factors, const float *x, float *y, int64_t y_stride,
                    int64_t n_tokens, const int32_t *token_rows, const float *scales, float scale);

// One token through up to 8 matrices that read the same x (Q, K, V; gate, up), each with its own
// adapter pairs: ys[m] = W_m·x (as puna_matmul computes it), then for each pair p of matrix m in
// order ys[m] += scales[m][p] · Bᵀ_p(A_p·x). All of it is one pool run: the activations are
// quantized once, the threads compute the pairs' A products (a few rank rows at a time), then take
// chunks of rows of the matrices, multiplying them by W and adding the pairs' updates of the same
// rows while they are in cache. The bits equal puna_matmul followed by puna_lora_apply per pair.
// pairs[m] / scales[m] may be NULL when n_pairs[m] is 0. Every pair of matrix m must have
// outputs == rows[m] and cols == cols.
// Returns 0, or -1 for unsupported types, inconsistent sizes or no scratch memory.
int puna_lora_matmul_many1(puna_pool *pool, int count, const int *types, const void *const *weights, const int64_t *rows,
                           int64_t cols, const float *x, float *const *ys, const puna_lora_factors *const *pairs,
                           const float *const *scales, const int *n_pairs);

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
