// Non-blocking sockets, poll and signals for `puna serve` (puna_net.h).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // accept4
#endif
#include "puna_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int puna_net_listen(const char *host, int port, int backlog, int *error) {
    *error = 0;
    if (port < 0 || port > 65535) { *error = EINVAL; return -1; }
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    int family;
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        family = AF_INET;
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        family = AF_INET6;
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)port);
    } else {
        *error = EINVAL;
        return -1;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { *error = errno; return -1; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc = family == AF_INET ? bind(fd, (struct sockaddr *)&v4, sizeof v4) : bind(fd, (struct sockaddr *)&v6, sizeof v6);
    if (rc != 0 || listen(fd, backlog) != 0 || set_nonblocking(fd) != 0) {
        *error = errno;
        close(fd);
        return -1;
    }
    return fd;
}

int puna_net_local_port(int fd) {
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    if (getsockname(fd, (struct sockaddr *)&address, &length) != 0) return -1;
    if (address.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&address)->sin_port);
    if (address.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&address)->sin6_port);
    return -1;
}

int puna_net_is_loopback(const char *host) {
    if (strcmp(host, "localhost") == 0) return 1;
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton(AF_INET, host, &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6) ? 1 : 0;
    return 0;
}

// A descriptor held in reserve: when accept fails for lack of descriptors, closing it makes room
// to accept the waiting connection and close it at once. Otherwise the connection would stay in
// the backlog, the listener would stay readable, and poll() would spin.
static int reserve_fd = -1;

int puna_net_accept(int fd) {
    if (reserve_fd < 0) reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int client = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (client < 0 && (errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
        close(reserve_fd);
        reserve_fd = -1;
        client = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (client >= 0) close(client);
        reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        return client >= 0 ? -3 : -2;
    }
    if (client < 0) return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) ? -1 : -2;
    int one = 1;
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // SSE chunks go out at once
    return client;
}

int64_t puna_net_read(int fd, uint8_t *buffer, int64_t capacity) {
    if (capacity <= 0) return -1;
    ssize_t n = recv(fd, buffer, (size_t)capacity, 0);
    if (n > 0) return n;
    if (n == 0) return 0;
    return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -1 : -2;
}

int64_t puna_net_write(int fd, const uint8_t *bytes, int64_t count) {
    if (count <= 0) return 0;
    ssize_t n = send(fd, bytes, (size_t)count, MSG_NOSIGNAL);
    if (n >= 0) return n;
    return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -1 : -2;
}

void puna_net_close(int fd) {
    if (fd >= 0) close(fd);
}

int puna_net_poll(const int *fds, const int *events, int *ready, int count, int timeout_ms) {
    // One poll() over the whole set, so a wait wakes for any socket; small sets stay on the stack.
    enum { on_stack = 256 };
    struct pollfd stack_set[on_stack];
    struct pollfd *set = stack_set;
    if (count > on_stack) {
        set = malloc((size_t)count * sizeof *set);
        if (set == NULL) return -1;
    }
    for (int i = 0; i < count; i++) {
        set[i].fd = fds[i];
        set[i].events = (short)(((events[i] & PUNA_POLL_IN) ? POLLIN : 0) | ((events[i] & PUNA_POLL_OUT) ? POLLOUT : 0));
        set[i].revents = 0;
    }
    int rc = poll(set, (nfds_t)count, timeout_ms);
    if (rc < 0) rc = errno == EINTR ? 0 : -1;
    for (int i = 0; i < count; i++) {
        short r = rc > 0 ? set[i].revents : 0;
        ready[i] = ((r & POLLIN) ? PUNA_POLL_IN : 0) | ((r & POLLOUT) ? PUNA_POLL_OUT : 0)
                   | ((r & (POLLHUP | POLLERR | POLLNVAL)) ? PUNA_POLL_HUP : 0);
    }
    if (set != stack_set) free(set);
    return rc;
}

int puna_net_raise_descriptor_limit(int wanted) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
    if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < (rlim_t)wanted) {
        rlim_t target = (rlim_t)wanted;
        if (limit.rlim_max != RLIM_INFINITY && target > limit.rlim_max) target = limit.rlim_max;
        limit.rlim_cur = target;
        setrlimit(RLIMIT_NOFILE, &limit);
        if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
    }
    return limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur > (rlim_t)0x7fffffff ? 0x7fffffff : (int)limit.rlim_cur;
}

static volatile sig_atomic_t stop_requested = 0;

static void on_stop_signal(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

void puna_net_install_signals(void) {
    signal(SIGPIPE, SIG_IGN);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
}

int puna_net_stop_requested(void) { return stop_requested ? 1 : 0; }

int64_t puna_net_unix_time(void) { return (int64_t)time(NULL); }

int puna_constant_time_equal(const uint8_t *a, size_t a_count, const uint8_t *b, size_t b_count) {
    // Compare every byte of a against b (cycled) so the time does not reveal a matching prefix.
    unsigned difference = a_count == b_count ? 0u : 1u;
    if (b_count == 0) return a_count == 0;
    for (size_t i = 0; i < a_count; i++) difference |= (unsigned)(a[i] ^ b[i % b_count]);
    return difference == 0;
}
