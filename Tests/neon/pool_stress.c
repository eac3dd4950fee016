// Thread-pool stress under emulation (scripts/test-neon): many runs in which the workers outlast
// the caller's spin, so the caller goes to sleep and the last worker must wake it. A lost wakeup
// shows up as a hang, which test-neon turns into a failure with a time limit.
#include "puna_kernels.h"

#include <stdio.h>
#include <time.h>

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

// Workers busy-wait a pseudo-random 0..119 µs; the caller returns at once and waits for them.
static void busy_task(void *ctx, int index, int n_threads) {
    (void)n_threads;
    unsigned *seeds = ctx;
    if (index == 0) return;
    seeds[index] = seeds[index] * 1103515245u + 12345u;
    long long end = now_us() + (seeds[index] >> 8) % 120;
    while (now_us() < end) {
    }
}

int main(void) {
    unsigned seeds[4] = {1, 2, 3, 4};
    const int runs = 20000;
    for (int threads = 2; threads <= 4; threads++) {
        puna_pool *pool = puna_pool_create(threads);
        if (!pool) {
            printf("pool_stress: cannot create a pool of %d threads\n", threads);
            return 1;
        }
        for (int r = 0; r < runs; r++) puna_pool_run(pool, busy_task, seeds);
        puna_pool_destroy(pool);
    }
    printf("pool_stress: %d runs each with 2, 3 and 4 threads, no hang\n", runs);
    return 0;
}
