// Compares Puna's Vulkan declarations (Sources/CPunaVulkan/vk_api.h) with the system
// <vulkan/vulkan.h>: the size and alignment of every struct and type, the offset, size and scalar
// kind of every struct field, and the value of every constant that vk_api.h declares. Prints each
// difference and exits 1 when there is one.
//
// Built by scripts/check-vk-api, which reads vk_api.h and generates the headers included below:
//   vk_api_rename.h / vk_api_unrename.h  #define / #undef every Vk*, VK_* and PFN_* name vk_api.h
//                                        declares as puna_<name>, so both sets fit in one program
//   vk_api_unmacro.h                     #undef of vk_api.h's own VK_* macros
//   vk_api_list.h                        VK_STRUCT(T) VK_FIELD(T, field, [0] for arrays) VK_TYPE(T)
//                                        VK_ENUM(name) VK_MACRO_NUM/_STR/_FN(name)
// The function pointer types are checked separately (the script compiles vk_api_functions.h after
// <vulkan/vulkan.h>, where redefining a typedef as a different type is an error).
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

// ---- Puna's declarations, renamed ----------------------------------------------------------------
#include "vk_api_rename.h"
#include "vk_api.h"
#include "vk_api_unrename.h"

// Puna's macro values, captured before they are undefined to make room for Vulkan's.
#define VK_STRUCT(T)
#define VK_FIELD(T, f, a)
#define VK_TYPE(T)
#define VK_ENUM(n)
#define VK_MACRO_NUM(n) static unsigned long long puna_macro_##n(void) { return (unsigned long long)(n); }
#define VK_MACRO_STR(n) static const char *puna_macro_##n(void) { return n; }
#define VK_MACRO_FN(n) static unsigned long long puna_macro_##n(uint32_t v) { return (unsigned long long)n(v); }
#include "vk_api_list.h"
#undef VK_STRUCT
#undef VK_FIELD
#undef VK_TYPE
#undef VK_ENUM
#undef VK_MACRO_NUM
#undef VK_MACRO_STR
#undef VK_MACRO_FN
#include "vk_api_unmacro.h"

// ---- Vulkan's -----------------------------------------------------------------------------------
#include <vulkan/vulkan.h>

#ifndef VK_API_TARGET
#define VK_API_TARGET "host"
#endif

static int failures, structs, fields, types, constants;

static void same_u(const char *what, unsigned long long ours, unsigned long long theirs) {
    if (ours == theirs) return;
    printf("vk_api: MISMATCH %s: vk_api.h has %llu, <vulkan/vulkan.h> %llu (%s)\n", what, ours, theirs, VK_API_TARGET);
    failures++;
}

static void same_s(const char *what, long long ours, long long theirs) {
    if (ours == theirs) return;
    printf("vk_api: MISMATCH %s: vk_api.h has %lld, <vulkan/vulkan.h> %lld (%s)\n", what, ours, theirs, VK_API_TARGET);
    failures++;
}

static void same_str(const char *what, const char *ours, const char *theirs) {
    if (strcmp(ours, theirs) == 0) return;
    printf("vk_api: MISMATCH %s: vk_api.h has \"%s\", <vulkan/vulkan.h> \"%s\" (%s)\n", what, ours, theirs, VK_API_TARGET);
    failures++;
}

// Which arithmetic type an expression has (0: pointer, struct or other), so that a float declared
// as uint32_t, or a signed enum as an unsigned one, shows although the sizes agree.
#define KIND(x) _Generic((x), float: 1, double: 2, char: 3, signed char: 4, unsigned char: 5, short: 6, \
    unsigned short: 7, int: 8, unsigned int: 9, long: 10, unsigned long: 11, long long: 12, \
    unsigned long long: 13, default: 0)

#define VK_STRUCT(T) structs++; \
    same_u(#T ": sizeof", sizeof(puna_##T), sizeof(T)); \
    same_u(#T ": _Alignof", _Alignof(puna_##T), _Alignof(T));
#define VK_FIELD(T, f, a) fields++; \
    same_u(#T "." #f ": offsetof", offsetof(puna_##T, f), offsetof(T, f)); \
    same_u(#T "." #f ": sizeof", sizeof(((puna_##T *)0)->f), sizeof(((T *)0)->f)); \
    same_u(#T "." #f ": type kind", KIND(((puna_##T *)0)->f a), KIND(((T *)0)->f a));
#define VK_TYPE(T) types++; \
    same_u(#T ": sizeof", sizeof(puna_##T), sizeof(T)); \
    same_u(#T ": _Alignof", _Alignof(puna_##T), _Alignof(T)); \
    same_u(#T ": type kind", KIND((puna_##T)0), KIND((T)0));
#define VK_ENUM(n) constants++; same_s(#n, (long long)puna_##n, (long long)n);
#define VK_MACRO_NUM(n) constants++; same_u(#n, puna_macro_##n(), (unsigned long long)(n));
#define VK_MACRO_STR(n) constants++; same_str(#n, puna_macro_##n(), n);
// Function-like macros: compared on versions around every field boundary.
#define VK_MACRO_FN(n) constants++; \
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) { \
        char what_[96]; \
        snprintf(what_, sizeof what_, "%s(0x%08x)", #n, (unsigned)samples[i]); \
        same_u(what_, puna_macro_##n(samples[i]), (unsigned long long)n(samples[i])); \
    }

int main(void) {
    static const uint32_t samples[] = {0, 0x00400000u, 0x00401000u, 0x00402000u, 0x00403123u, 0x1FC00000u,
                                       0x003FF000u, 0x20000000u, 0xFFFFFFFFu};
    (void)samples;
#include "vk_api_list.h"
    if (failures) {
        printf("vk_api: %d differences from <vulkan/vulkan.h> (%s)\n", failures, VK_API_TARGET);
        return 1;
    }
#ifdef VK_API_FUNCTIONS
    printf("vk_api: %d structs, %d fields, %d types, %d constants, %d function types match <vulkan/vulkan.h> (%s)\n",
           structs, fields, types, constants, VK_API_FUNCTIONS, VK_API_TARGET);
#else
    printf("vk_api: %d structs, %d fields, %d types, %d constants match <vulkan/vulkan.h> (%s)\n",
           structs, fields, types, constants, VK_API_TARGET);
#endif
    return 0;
}
