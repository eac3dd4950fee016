// Sockets and signals for `puna serve`, as plain C: Embedded Swift has no Glibc module. Every
// socket is non-blocking; one poll() loop drives them all (see ServeCommand.swift).
#ifndef PUNA_NET_H
#define PUNA_NET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { PUNA_POLL_IN = 1, PUNA_POLL_OUT = 2, PUNA_POLL_HUP = 4 };

// Listen on a numeric IPv4/IPv6 address (or "localhost"). Returns the socket, or -1 with *error
// set to the errno (EINVAL for an address that does not parse). port 0 picks a free port.
int puna_net_listen(const char *host, int port, int backlog, int *error);
// The port a listening socket is bound to, or -1.
int puna_net_local_port(int fd);
// 1 when host is a loopback address (127.0.0.0/8, ::1, localhost), else 0.
int puna_net_is_loopback(const char *host);
// Accept one connection, non-blocking and without SIGPIPE; -1 when none is waiting, -2 on error,
// -3 when the process is out of descriptors: one waiting connection was accepted and closed.
int puna_net_accept(int fd);
// Bytes read (> 0), 0 at end of stream, -1 when nothing is ready, -2 on error.
int64_t puna_net_read(int fd, uint8_t *buffer, int64_t capacity);
// Bytes written (>= 0), -1 when the socket cannot take more now, -2 on error (peer gone).
int64_t puna_net_write(int fd, const uint8_t *bytes, int64_t count);
void puna_net_close(int fd);
// poll() over count sockets: events[i] is a PUNA_POLL_ mask, ready[i] gets what happened.
// Returns the number ready, 0 on timeout or signal, -1 on error.
int puna_net_poll(const int *fds, const int *events, int *ready, int count, int timeout_ms);
// Raise the soft limit on open descriptors towards `wanted` (not past the hard limit); returns the
// soft limit now in force, or -1.
int puna_net_raise_descriptor_limit(int wanted);
// Ignore SIGPIPE; SIGTERM and SIGINT set a flag that puna_net_stop_requested reads.
void puna_net_install_signals(void);
int puna_net_stop_requested(void);
// Seconds since 1970 (the "created" field of responses).
int64_t puna_net_unix_time(void);
// 1 when the two byte strings are equal. The time taken depends only on the lengths, not on
// where they differ (API key checks).
int puna_constant_time_equal(const uint8_t *a, size_t a_count, const uint8_t *b, size_t b_count);

#ifdef __cplusplus
}
#endif
#endif
