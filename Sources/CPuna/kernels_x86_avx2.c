// AVX2 families for x86 CPUs without AVX-512 (Haswell to Zen 3, and Alder Lake-class CPUs whose
// AVX-VNNI gives the 4-byte dot product in one instruction). The kernels are written once in
// kernels_x86_avx2_impl.h and compiled twice with different target attributes, so no global -m
// flags are needed; ops.c picks one by CPUID.
#include "kernels_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <math.h>

#define AV_VNNI 0
#define AV_NAME(x) avx2_##x
#define AV_TARGET __attribute__((target("avx2,fma,f16c")))
#include "kernels_x86_avx2_impl.h"
#undef AV_VNNI
#undef AV_NAME
#undef AV_TARGET

#define AV_VNNI 1
#define AV_NAME(x) avxvnni_##x
#if defined(__clang__)
#define AV_TARGET __attribute__((target("avx2,fma,f16c,avxvnni,tune=alderlake")))  // keeps vpdpwssd whole (see avx512)
#else
#define AV_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#endif
#include "kernels_x86_avx2_impl.h"

int puna_kernels_avx2_get(int type, int vnni, qmm_kernel *out) {
    if (vnni) avxvnni_fill(type, out);
    else avx2_fill(type, out);
    return 1;
}

#else
int puna_kernels_avx2_get(int type, int vnni, qmm_kernel *out) {
    (void)type;
    (void)vnni;
    (void)out;
    return 0;
}
#endif
