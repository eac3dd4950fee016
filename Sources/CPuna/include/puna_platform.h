// What PunaCore needs from the operating system, as plain C: Embedded Swift has no Foundation or
// Glibc module, so files, clocks, memory figures and CPU features all come through here.
#ifndef PUNA_PLATFORM_H
#define PUNA_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- memory-mapped files -------------------------------------------------------------------
typedef struct {
    const uint8_t *data;  // read-only mapping of the whole file; NULL for an empty file
    int64_t size;         // bytes
    int error;            // errno of the failure, 0 on success
    int is_directory;     // set when the path names a directory (error is EISDIR)
} puna_mapping;

// Map a whole file read-only and private. On failure data is NULL and error is set.
puna_mapping puna_map_file(const char *path);
void puna_unmap(puna_mapping *m);
// 1 when path names a directory (following symlinks), else 0.
int puna_path_is_directory(const char *path);
// 1 when something exists at path (following symlinks), else 0.
int puna_path_exists(const char *path);

enum puna_advice { PUNA_ADVICE_NORMAL = 0, PUNA_ADVICE_SEQUENTIAL = 1, PUNA_ADVICE_RANDOM = 2,
                   PUNA_ADVICE_WILLNEED = 3, PUNA_ADVICE_DONTNEED = 4 };
// madvise over [offset, offset+length) of the mapping, page-aligned inward; returns 0 or errno.
int puna_advise(const puna_mapping *m, int64_t offset, int64_t length, int advice);
// mlock the whole mapping; returns 0 or errno.
int puna_lock(const puna_mapping *m);

// Human text of an errno value.
const char *puna_strerror(int error);

// ---- plain file I/O ------------------------------------------------------------------------
// What a path names (stat, without opening it: opening a FIFO can block).
enum puna_file_kind { PUNA_FILE_MISSING = 0, PUNA_FILE_REGULAR = 1, PUNA_FILE_DIRECTORY = 2, PUNA_FILE_PIPE = 3,
                      PUNA_FILE_TERMINAL = 4, PUNA_FILE_OTHER = 5 };
int puna_file_kind(const char *path);
// Returned as the error of the calls below for a path they do not accept (a device such as /dev/zero,
// whose reads never end, or a socket); puna_strerror names it.
#define PUNA_ENOTREG 10000
// Read a whole file, pipe or terminal into a malloc'ed buffer (caller frees with puna_free), at most
// max_bytes of it. Returns NULL and sets *error: EFBIG when there is more than max_bytes (nothing more
// is read), PUNA_ENOTREG for a device or socket. A FIFO with no writer reads as empty, never blocks.
uint8_t *puna_read_file(const char *path, int64_t max_bytes, int64_t *size, int *error);
// Open a regular file for writing: mode 0 = truncate/create, 1 = append/create. Returns fd or -errno;
// -PUNA_ENOTREG when the path exists and is not a regular file (opening never blocks on a FIFO).
int puna_open_write(const char *path, int mode);
// Size of an open file, or -errno.
int64_t puna_fd_size(int fd);
// Cut an open file back to `size` bytes; returns 0 or errno.
int puna_ftruncate(int fd, int64_t size);
// Write all bytes; returns 0 or errno.
int puna_write_all(int fd, const void *bytes, int64_t count);
int puna_fsync(int fd);
int puna_close(int fd);
// Truncate a file to `size` bytes; returns 0 or errno.
int puna_truncate(const char *path, int64_t size);
int puna_file_exists(const char *path);
void puna_free(void *p);

// stdout/stderr, unbuffered from Swift's point of view (each call flushes).
void puna_write_stdout(const char *bytes, int64_t count);
void puna_write_stderr(const char *bytes, int64_t count);
void puna_flush_stdout(void);
int puna_stdout_is_tty(void);
int puna_stderr_is_tty(void);
// Read one line from stdin into buf (without the newline). Returns length, or -1 at end of input.
int64_t puna_read_line(char *buf, int64_t capacity);

// getenv, NULL when unset
const char *puna_getenv(const char *name);

// Shortest "%.9g" text of a float, written to buf (at least 32 bytes); returns its length.
int puna_format_float(float value, char *buf);
// "%.*f" text of a double.
int puna_format_double(double value, int decimals, char *buf);
// Parse a decimal float; returns 1 on success (the whole string must be consumed).
int puna_parse_double(const char *text, double *out);

// ---- numbers ---------------------------------------------------------------------------------
// libm's exp and log (Embedded Swift has no Glibc module to reach them).
double puna_exp(double x);
double puna_log(double x);
// log(softmax(row)[target]) over n logits, accumulated in double.
double puna_log_probability(const float *row, int64_t n, int64_t target);

// ---- clocks and memory ---------------------------------------------------------------------
// Monotonic nanoseconds.
int64_t puna_now_ns(void);
// Local calendar time (for chat templates' strftime_now): year, month 1-12, day, hour, minute,
// second into out[0..5]. Returns 0, or -1 when the clock or time zone cannot be read.
int puna_local_time(int32_t out[6]);
// Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
int64_t puna_peak_rss_bytes(void);
// Current resident set size in bytes (VmRSS), 0 if unknown.
int64_t puna_current_rss_bytes(void);
// Physical memory of the machine in bytes.
int64_t puna_physical_memory_bytes(void);
// The cgroup memory limit that applies to this process (v2 memory.max or v1 limit_in_bytes), -1 if none.
int64_t puna_cgroup_memory_limit(void);
// Online CPU count.
int puna_cpu_count(void);

// ---- CPU features --------------------------------------------------------------------------
enum puna_cpu_feature {
    PUNA_CPU_AVX2 = 1 << 0, PUNA_CPU_FMA = 1 << 1, PUNA_CPU_F16C = 1 << 2,
    PUNA_CPU_AVX512F = 1 << 3, PUNA_CPU_AVX512BW = 1 << 4, PUNA_CPU_AVX512VNNI = 1 << 5,
    PUNA_CPU_AVXVNNI = 1 << 6, PUNA_CPU_AVX512BF16 = 1 << 7,
    PUNA_CPU_AVX512VBMI = 1 << 8,
    PUNA_CPU_NEON = 1 << 16, PUNA_CPU_DOTPROD = 1 << 17, PUNA_CPU_FP16 = 1 << 18,
    PUNA_CPU_I8MM = 1 << 19, PUNA_CPU_SVE = 1 << 20,
};
// Bit set of puna_cpu_feature detected at run time (cpuid/xgetbv on x86, HWCAP on aarch64).
uint32_t puna_cpu_features(void);
// Architecture name: "x86_64", "aarch64" or "unknown".
const char *puna_cpu_arch(void);

#ifdef __cplusplus
}
#endif
#endif
