// The pieces of lora.c that ops.c's one-token matmul (puna_lora_matmul_many1) runs inside its own
// pool run, between and after the base rows. Not part of the public API.
#ifndef PUNA_LORA_INTERNAL_H
#define PUNA_LORA_INTERNAL_H

#include "puna_lora.h"

// Outputs per tile of Bᵀ (puna_lora_pack_bt); updates are added a whole tile at a time.
#define LORA_TILE 64

// Whether the factors are ones the LoRA kernels take, with non-empty sizes.
int lora_factors_ok(const puna_lora_factors *f);

// u[k - k0] = scale · A[k]·x for k in [k0, k1): the arithmetic of puna_lora_apply's first product.
void lora_u_rows(const puna_lora_factors *f, float scale, const float *x, int64_t k0, int64_t k1, float *u);

// y[o] += Σ_k u[k] · Bᵀ[k][o] for o in [r0, r1), r0 a multiple of LORA_TILE and r1 one too or the
// last output: the arithmetic of puna_lora_apply's second product for those outputs.
void lora_add_rows(const puna_lora_factors *f, const float *u, float *y, int64_t r0, int64_t r1);

// Spins (yielding now and then) until *counter >= target; acquire ordering.
void lora_wait_for(const int64_t *counter, int64_t target);

#endif
