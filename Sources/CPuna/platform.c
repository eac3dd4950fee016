// Files, clocks, memory figures and CPU features for PunaCore (see puna_platform.h).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "puna_platform.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

int puna_path_is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? 1 : 0;
}

int puna_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? 1 : 0;
}

puna_mapping puna_map_file(const char *path) {
    puna_mapping m = {0};
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) { m.error = errno; return m; }
    struct stat st;
    if (fstat(fd, &st) != 0) { m.error = errno; close(fd); return m; }
    if (S_ISDIR(st.st_mode)) { m.error = EISDIR; m.is_directory = 1; close(fd); return m; }
    if (!S_ISREG(st.st_mode)) { m.error = PUNA_ENOTREG; close(fd); return m; }
    m.size = (int64_t)st.st_size;
    if (m.size == 0) { close(fd); return m; }
    void *p = mmap(NULL, (size_t)m.size, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd);  // the mapping keeps the file alive
    if (p == MAP_FAILED) { m.error = saved; m.size = 0; return m; }
    m.data = (const uint8_t *)p;
    return m;
}

void puna_unmap(puna_mapping *m) {
    if (m->data) munmap((void *)m->data, (size_t)m->size);
    m->data = NULL;
    m->size = 0;
}

int puna_advise(const puna_mapping *m, int64_t offset, int64_t length, int advice) {
    if (!m->data || length <= 0) return 0;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)m->data + (uintptr_t)offset;
    uintptr_t end = start + (uintptr_t)length;
    // WILLNEED may round outward (it only reads ahead); DONTNEED must round inward.
    if (advice == PUNA_ADVICE_DONTNEED) {
        start = (start + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
        end &= ~((uintptr_t)page - 1);
    } else {
        start &= ~((uintptr_t)page - 1);
    }
    if (end <= start) return 0;
    int how = MADV_NORMAL;
    switch (advice) {
        case PUNA_ADVICE_SEQUENTIAL: how = MADV_SEQUENTIAL; break;
        case PUNA_ADVICE_RANDOM: how = MADV_RANDOM; break;
        case PUNA_ADVICE_WILLNEED: how = MADV_WILLNEED; break;
        case PUNA_ADVICE_DONTNEED: how = MADV_DONTNEED; break;
        default: break;
    }
    return madvise((void *)start, end - start, how) == 0 ? 0 : errno;
}

int puna_lock(const puna_mapping *m) {
    if (!m->data) return 0;
    return mlock(m->data, (size_t)m->size) == 0 ? 0 : errno;
}

const char *puna_strerror(int error) {
    if (error == PUNA_ENOTREG) return "not a regular file (a device, FIFO or socket)";
    return strerror(error);
}

int puna_file_kind(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return PUNA_FILE_MISSING;
    if (S_ISREG(st.st_mode)) return PUNA_FILE_REGULAR;
    if (S_ISDIR(st.st_mode)) return PUNA_FILE_DIRECTORY;
    if (S_ISFIFO(st.st_mode)) return PUNA_FILE_PIPE;
    if (S_ISCHR(st.st_mode)) {
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        int tty = fd >= 0 && isatty(fd);
        if (fd >= 0) close(fd);
        if (tty) return PUNA_FILE_TERMINAL;
    }
    return PUNA_FILE_OTHER;
}

uint8_t *puna_read_file(const char *path, int64_t max_bytes, int64_t *size, int *error) {
    *size = 0;
    *error = 0;
    if (max_bytes < 0) max_bytes = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) { *error = errno; return NULL; }
    struct stat st;
    if (fstat(fd, &st) != 0) { *error = errno; close(fd); return NULL; }
    if (S_ISDIR(st.st_mode)) { *error = EISDIR; close(fd); return NULL; }
    // Devices other than a terminal (/dev/zero, /dev/full, /dev/urandom) never reach an end.
    int regular = S_ISREG(st.st_mode);
    if (!regular && !S_ISFIFO(st.st_mode) && !(S_ISCHR(st.st_mode) && isatty(fd))) {
        *error = PUNA_ENOTREG; close(fd); return NULL;
    }
    if (regular && st.st_size > max_bytes) { *error = EFBIG; close(fd); return NULL; }
    // Back to blocking reads: a pipe's writer may be slow; a FIFO that had no writer reads as empty.
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    size_t limit = (size_t)max_bytes;
    size_t capacity = regular && st.st_size > 0 ? (size_t)st.st_size + 1 : 65536;
    if (capacity > limit + 1) capacity = limit + 1;
    uint8_t *buf = malloc(capacity);
    if (!buf) { *error = ENOMEM; close(fd); return NULL; }
    size_t used = 0;
    for (;;) {
        if (used == capacity) {
            if (used > limit) { free(buf); close(fd); *error = EFBIG; return NULL; }
            size_t grown = capacity * 2;
            if (grown > limit + 1) grown = limit + 1;
            uint8_t *next = realloc(buf, grown);
            if (!next) { free(buf); close(fd); *error = ENOMEM; return NULL; }
            buf = next;
            capacity = grown;
        }
        ssize_t r = read(fd, buf + used, capacity - used);
        if (r < 0) {
            if (errno == EINTR) continue;
            *error = errno; free(buf); close(fd); return NULL;
        }
        if (r == 0) break;
        used += (size_t)r;
        // One byte past the limit is enough to know the input is too long: stop reading there.
        if (used > limit) { free(buf); close(fd); *error = EFBIG; return NULL; }
    }
    close(fd);
    *size = (int64_t)used;
    return buf;
}

int puna_open_write(const char *path, int mode) {
    // O_NONBLOCK so that a FIFO with no reader fails at once instead of blocking; then only regular
    // files are kept (a device such as /dev/full would be read back on resume, endlessly).
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) return S_ISDIR(st.st_mode) ? -EISDIR : -PUNA_ENOTREG;
    int fd = open(path, flags | (mode == 1 ? O_APPEND : 0), 0644);
    if (fd < 0) return errno == ENXIO ? -PUNA_ENOTREG : -errno;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); return -PUNA_ENOTREG; }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    // Truncate only once the path is known to be a regular file.
    if (mode != 1 && ftruncate(fd, 0) != 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int64_t puna_fd_size(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (int64_t)st.st_size : -(int64_t)errno;
}

int puna_ftruncate(int fd, int64_t size) { return ftruncate(fd, (off_t)size) == 0 ? 0 : errno; }

int puna_write_all(int fd, const void *bytes, int64_t count) {
    const uint8_t *p = bytes;
    while (count > 0) {
        ssize_t w = write(fd, p, (size_t)count);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        p += w;
        count -= w;
    }
    return 0;
}

int puna_fsync(int fd) { return fsync(fd) == 0 ? 0 : errno; }
int puna_close(int fd) { return close(fd) == 0 ? 0 : errno; }
int puna_truncate(const char *path, int64_t size) { return truncate(path, (off_t)size) == 0 ? 0 : errno; }
int puna_file_exists(const char *path) { struct stat st; return stat(path, &st) == 0; }
void puna_free(void *p) { free(p); }

void puna_write_stdout(const char *bytes, int64_t count) {
    fwrite(bytes, 1, (size_t)count, stdout);
    fflush(stdout);
}
void puna_write_stderr(const char *bytes, int64_t count) {
    fwrite(bytes, 1, (size_t)count, stderr);
    fflush(stderr);
}
void puna_flush_stdout(void) { fflush(stdout); }
int puna_stdout_is_tty(void) { return isatty(1); }
int puna_stderr_is_tty(void) { return isatty(2); }

int64_t puna_read_line(char *buf, int64_t capacity) {
    if (!fgets(buf, (int)capacity, stdin)) return -1;
    size_t n = strlen(buf);
    if (n > 0 && buf[n - 1] == '\n') buf[--n] = 0;
    return (int64_t)n;
}

const char *puna_getenv(const char *name) { return getenv(name); }

int puna_format_float(float value, char *buf) {
    // The shortest of %.6g … %.9g that reads back to the same float.
    for (int digits = 6; digits <= 9; digits++) {
        int n = snprintf(buf, 32, "%.*g", digits, (double)value);
        if (strtof(buf, NULL) == value || digits == 9) return n;
    }
    return 0;
}

int puna_format_double(double value, int decimals, char *buf) {
    return snprintf(buf, 64, "%.*f", decimals, value);
}

int puna_parse_double(const char *text, double *out) {
    if (!text || !*text) return 0;
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != 0) return 0;
    *out = v;
    return 1;
}

double puna_exp(double x) { return exp(x); }
double puna_log(double x) { return log(x); }

double puna_log_probability(const float *row, int64_t n, int64_t target) {
    double max = -INFINITY, sum = 0;
    for (int64_t i = 0; i < n; i++) if (row[i] > max) max = row[i];
    for (int64_t i = 0; i < n; i++) sum += exp((double)row[i] - max);
    return (double)row[target] - max - log(sum);
}

int64_t puna_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t status_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    int64_t kib = 0;
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0) { kib = strtoll(line + klen, NULL, 10); break; }
    }
    fclose(f);
    return kib;
}

int64_t puna_peak_rss_bytes(void) { return status_kib("VmHWM:") * 1024; }
int64_t puna_current_rss_bytes(void) { return status_kib("VmRSS:") * 1024; }

int64_t puna_physical_memory_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (int64_t)pages * size : 0;
}

static int64_t read_limit_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char text[64] = {0};
    int64_t value = -1;
    if (fgets(text, sizeof text, f) && strncmp(text, "max", 3) != 0) {
        char *end = NULL;
        long long v = strtoll(text, &end, 10);
        // cgroup v1 reports "no limit" as a huge page-rounded number.
        if (end != text && v > 0 && v < (1LL << 60)) value = v;
    }
    fclose(f);
    return value;
}

// The smallest limit in `file` of cgroup `group` under `mount` and of each of its ancestors up to
// the root: a parent's limit bounds every child, and the process's own group often has none.
static int64_t smallest_limit_upward(const char *mount, const char *group, const char *file) {
    char dir[512], path[640];
    snprintf(dir, sizeof dir, "%s", group);
    int64_t best = -1;
    for (;;) {
        size_t len = strlen(dir);
        while (len > 1 && dir[len - 1] == '/') dir[--len] = 0;
        snprintf(path, sizeof path, "%s%s/%s", mount, strcmp(dir, "/") == 0 ? "" : dir, file);
        int64_t v = read_limit_file(path);
        if (v > 0 && (best < 0 || v < best)) best = v;
        char *slash = strrchr(dir, '/');
        if (!slash || (slash == dir && dir[1] == 0)) break;  // the root was the last one read
        if (slash == dir) dir[1] = 0;
        else *slash = 0;
    }
    return best;
}

int64_t puna_cgroup_memory_limit(void) {
    // Find this process's cgroup path, then the limit files of it and its ancestors under the
    // mounted hierarchy.
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[512];
    int64_t best = -1;
    if (f) {
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            char *controllers = strchr(line, ':');
            if (!controllers) continue;
            char *group = strchr(controllers + 1, ':');
            if (!group) continue;
            *group++ = 0;
            controllers++;
            if (*group != '/') continue;
            int64_t v = -1;
            if (*controllers == 0) {  // v2 unified hierarchy
                v = smallest_limit_upward("/sys/fs/cgroup", group, "memory.max");
            } else if (strstr(controllers, "memory")) {
                v = smallest_limit_upward("/sys/fs/cgroup/memory", group, "memory.limit_in_bytes");
            }
            if (v > 0 && (best < 0 || v < best)) best = v;
        }
        fclose(f);
    }
    return best;
}

int puna_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

uint32_t puna_cpu_features(void) {
    uint32_t f = 0;
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1;
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    int ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6;
    if (ymm && ((c >> 12) & 1)) f |= PUNA_CPU_FMA;
    if (ymm && ((c >> 29) & 1)) f |= PUNA_CPU_F16C;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        if (ymm && ((b >> 5) & 1)) f |= PUNA_CPU_AVX2;
        if (zmm && ((b >> 16) & 1)) f |= PUNA_CPU_AVX512F;
        if (zmm && ((b >> 30) & 1)) f |= PUNA_CPU_AVX512BW;
        if (zmm && ((c >> 11) & 1)) f |= PUNA_CPU_AVX512VNNI;
        if (zmm && ((c >> 1) & 1)) f |= PUNA_CPU_AVX512VBMI;
    }
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
        if (ymm && ((a >> 4) & 1)) f |= PUNA_CPU_AVXVNNI;
        if (zmm && ((a >> 5) & 1)) f |= PUNA_CPU_AVX512BF16;
    }
#elif defined(__aarch64__)
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    f |= PUNA_CPU_NEON;                       // mandatory on AArch64
    if (hw & (1UL << 20)) f |= PUNA_CPU_DOTPROD;  // HWCAP_ASIMDDP
    if (hw & (1UL << 10)) f |= PUNA_CPU_FP16;     // HWCAP_ASIMDHP
    if (hw & (1UL << 22)) f |= PUNA_CPU_SVE;      // HWCAP_SVE
    if (hw2 & (1UL << 13)) f |= PUNA_CPU_I8MM;    // HWCAP2_I8MM
#endif
    return f;
}

const char *puna_cpu_arch(void) {
#if defined(__x86_64__)
    return "x86_64";
#elif defined(__aarch64__)
    return "aarch64";
#else
    return "unknown";
#endif
}

int puna_local_time(int32_t out[6]) {
    time_t now = time(NULL);
    struct tm tm;
    if (now == (time_t)-1 || localtime_r(&now, &tm) == NULL) return -1;
    out[0] = tm.tm_year + 1900; out[1] = tm.tm_mon + 1; out[2] = tm.tm_mday;
    out[3] = tm.tm_hour; out[4] = tm.tm_min; out[5] = tm.tm_sec;
    return 0;
}
