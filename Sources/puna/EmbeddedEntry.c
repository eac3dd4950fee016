// Embedded Swift has no CommandLine: on the board build this C main hands argc/argv to the CLI's
// @_cdecl entry point. The SwiftPM build uses main.swift instead, which calls the same function.
//
// A board build (boards/build) compiles the kernels for one CPU and passes -DPUNA_REQUIRE_<FEATURE>
// for each optional instruction set they may use. Those instructions can appear anywhere the
// compiler chose to vectorize, so the check runs here, before any Swift or kernel code, and this
// file and the CPU detection in platform.c are compiled for the baseline ISA: a Pi 4 running the
// Pi 5 binary gets a sentence telling it which build to use instead of SIGILL.
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <unistd.h>
#include "puna_platform.h"

#ifndef PUNA_BOARD_NAME
#define PUNA_BOARD_NAME "generic"
#endif
// The profile to build instead (the board profile's "fallback"), when it names one.

int puna_cli_main(int argc, char **argv);

// Name used in the message, and how the feature shows in /proc/cpuinfo so the user can check.
static const struct { uint32_t bit; const char *name; const char *cpuinfo; } required_features[] = {
#ifdef PUNA_REQUIRE_DOTPROD
    {PUNA_CPU_DOTPROD, "dotprod", "asimddp"},
#endif
#ifdef PUNA_REQUIRE_FP16
    {PUNA_CPU_FP16, "fp16", "asimdhp"},
#endif
#ifdef PUNA_REQUIRE_I8MM
    {PUNA_CPU_I8MM, "i8mm", "i8mm"},
#endif
#ifdef PUNA_REQUIRE_SVE
    {PUNA_CPU_SVE, "sve", "sve"},
#endif
#ifdef PUNA_REQUIRE_AVX2
    {PUNA_CPU_AVX2, "avx2", "avx2"},
#endif
#ifdef PUNA_REQUIRE_FMA
    {PUNA_CPU_FMA, "fma", "fma"},
#endif
#ifdef PUNA_REQUIRE_F16C
    {PUNA_CPU_F16C, "f16c", "f16c"},
#endif
#ifdef PUNA_REQUIRE_AVX512F
    {PUNA_CPU_AVX512F, "avx512f", "avx512f"},
#endif
#ifdef PUNA_REQUIRE_AVX512BW
    {PUNA_CPU_AVX512BW, "avx512bw", "avx512bw"},
#endif
#ifdef PUNA_REQUIRE_AVX512VNNI
    {PUNA_CPU_AVX512VNNI, "avx512vnni", "avx512_vnni"},
#endif
    {0, NULL, NULL},
};

// 0 when every required feature is present; otherwise prints why not and returns 1.
static int check_cpu_features(void) {
    uint32_t have = puna_cpu_features();
    int missing = 0;
    for (int i = 0; required_features[i].name; i++) {
        if (have & required_features[i].bit) continue;
        if (!missing) fprintf(stderr, "puna: this CPU lacks");
        fprintf(stderr, "%s %s", missing ? "," : "", required_features[i].name);
        missing++;
    }
    if (!missing) return 0;
    fprintf(stderr, "; this binary was built for %s and would crash on it.\n", PUNA_BOARD_NAME);
#ifdef PUNA_FALLBACK_BOARD
    fprintf(stderr, "Use the %s build (boards/build %s).", PUNA_FALLBACK_BOARD, PUNA_FALLBACK_BOARD);
#else
    fprintf(stderr, "Build Puna on this machine instead (swift build -c release).");
#endif
    fprintf(stderr, " What a CPU has: grep -o -w");
    for (int i = 0; required_features[i].name; i++) fprintf(stderr, " -e %s", required_features[i].cpuinfo);
    fprintf(stderr, " /proc/cpuinfo | sort -u\n");
    return 1;
}

// Embedded Swift seeds its hashing with arc4random_buf, which glibc has only since 2.36. Defining
// it here keeps the binary's glibc requirement at 2.34, so it also runs on Ubuntu 22.04 and JetPack 6.
void arc4random_buf(void *buffer, size_t count) {
    unsigned char *p = buffer;
    while (count > 0) {
        ssize_t got = getrandom(p, count, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {  // a kernel without getrandom (before 3.17)
            int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
            got = fd < 0 ? -1 : read(fd, p, count);
            if (fd >= 0) close(fd);
            if (got <= 0) abort();
        }
        p += got;
        count -= (size_t)got;
    }
}

int main(int argc, char **argv) {
    if (check_cpu_features() != 0) return 1;
    return puna_cli_main(argc, argv);
}
