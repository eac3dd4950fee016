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

#else
int puna_kernels_neon_get(int type, qmm_kernel *out) {
    (void)type;
    (void)out;
    return 0;
}
#endif
