// AArch64 NEON family with the dot-product extension (Cortex-A76/A55 and later: Raspberry Pi 5,
// RK3588): sdot gives the 4-byte lane sums of kernels_internal.h directly. Compiled for
// armv8.2-a+dotprod whatever the global flags; used only when HWCAP says the CPU has it.
#include "kernels_internal.h"

#if defined(__aarch64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#else
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif

#include <arm_neon.h>

#define NK_DOT4(acc, a, b) vdotq_s32(acc, a, b)
#define NK_DOT8(acc, a0, b0, a1, b1) vdotq_s32(vdotq_s32(acc, a0, b0), a1, b1)
#define NK_NAME(x) dotprod_##x

#include "kernels_arm_neon_impl.h"

int puna_kernels_dotprod_get(int type, qmm_kernel *out) {
    dotprod_fill(type, out);
    return 1;
}

#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
int puna_kernels_dotprod_get(int type, qmm_kernel *out) {
    (void)type;
    (void)out;
    return 0;
}
#endif
