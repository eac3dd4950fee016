// Persistent thread pool (see puna_kernels.h).
//
// A run publishes (task, ctx) and bumps a generation counter; workers notice the new generation,
// run their share and count down `remaining`. A decoded token issues a few hundred runs, so
// waking must be cheap: workers first spin on the generation for a short while (a run that follows
// within that window costs no system call), then sleep on a condition variable.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "puna_kernels.h"
#include "puna_platform.h"
#include "kernels_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// How long an idle worker spins before it sleeps. Long enough to bridge the Swift glue between the
// ops of one layer, short enough that an idle pool stops burning CPU almost at once.
#define SPIN_NS 200000
// How long the caller spins on stragglers before it sleeps, handing its core to them (on a loaded
// machine the straggler may be waiting for exactly that core).
#define WAIT_SPIN_NS 50000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct puna_pool {
    int n_threads;
    pthread_t *threads;   // n_threads - 1 workers

    // Published by the caller before the generation bump (release), read by workers after (acquire).
    puna_task task;
    void *ctx;
    _Atomic unsigned generation;
    _Atomic int remaining;  // workers still inside the current run
    _Atomic int stop;
    _Atomic int caller_sleeping;  // the caller waits on `done`: the last worker must signal it

    pthread_mutex_t lock;   // guards the sleeps on `wake` and `done`
    pthread_cond_t wake;    // workers: a new generation
    pthread_cond_t done;    // caller: remaining reached zero

    float *scratch;         // per-thread kernel scratch (see puna_pool_scratch)
    int64_t scratch_stride; // floats per thread, multiple of 16
    void *buffer;           // shared kernel buffer (see puna_pool_buffer)
    size_t buffer_bytes;
};

struct worker_arg { puna_pool *pool; int index; };

// Waits until the generation differs from `seen`; returns the new value.
static unsigned wait_for_generation(puna_pool *pool, unsigned seen) {
    int64_t deadline = 0;
    for (unsigned spins = 0;; spins++) {
        unsigned g = atomic_load_explicit(&pool->generation, memory_order_acquire);
        if (g != seen) return g;
        cpu_relax();
        if ((spins & 255) == 255) {  // read the clock rarely: it costs more than a spin
            int64_t t = now_ns();
            if (deadline == 0) deadline = t + SPIN_NS;
            else if (t > deadline) break;
        }
    }
    // Checking the generation under the lock pairs with the caller bumping it under the lock, so
    // a bump cannot slip in between the check and the wait.
    pthread_mutex_lock(&pool->lock);
    unsigned g;
    while ((g = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen)
        pthread_cond_wait(&pool->wake, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    return g;
}

static void *worker_main(void *arg) {
    puna_pool *pool = ((struct worker_arg *)arg)->pool;
    int index = ((struct worker_arg *)arg)->index;
    free(arg);
    // Not a load: a run published before this thread got going must still count as new.
    unsigned seen = 0;
    for (;;) {
        seen = wait_for_generation(pool, seen);
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) break;
        pool->task(pool->ctx, index, pool->n_threads);
        // With the caller's fence after its store to caller_sleeping: either the caller sees zero
        // or this thread sees it sleeping, never neither. The fences are explicit because an
        // AArch64 store-release/load-acquire pair, which is enough on the hardware, is not kept in
        // order by qemu-user on an x86 host; the pool then deadlocked under emulation.
        if (atomic_fetch_sub(&pool->remaining, 1) == 1) {
            atomic_thread_fence(memory_order_seq_cst);
            if (atomic_load(&pool->caller_sleeping)) {
                pthread_mutex_lock(&pool->lock);
                pthread_cond_signal(&pool->done);
                pthread_mutex_unlock(&pool->lock);
            }
        }
    }
    return NULL;
}

static void publish(puna_pool *pool) {
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_acq_rel);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
}

puna_pool *puna_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = puna_cpu_count();
    if (n_threads < 1) n_threads = 1;
    puna_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->remaining, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->caller_sleeping, 0);
    if (pthread_mutex_init(&pool->lock, NULL) != 0) { free(pool); return NULL; }
    if (pthread_cond_init(&pool->wake, NULL) != 0) {
        pthread_mutex_destroy(&pool->lock);
        free(pool);
        return NULL;
    }
    if (pthread_cond_init(&pool->done, NULL) != 0) {
        pthread_cond_destroy(&pool->wake);
        pthread_mutex_destroy(&pool->lock);
        free(pool);
        return NULL;
    }
    if (n_threads > 1) {
        pool->threads = calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!pool->threads) { puna_pool_destroy(pool); return NULL; }
    }
    // Kernels keep their buffers in the pool scratch, so workers need little stack.
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *arg = malloc(sizeof *arg);
        if (arg) { arg->pool = pool; arg->index = i; }
        if (!arg || pthread_create(&pool->threads[i - 1], &attr, worker_main, arg) != 0) {
            free(arg);
            pool->n_threads = i;  // destroy joins only the workers that exist
            pthread_attr_destroy(&attr);
            puna_pool_destroy(pool);
            return NULL;
        }
    }
    pthread_attr_destroy(&attr);
    return pool;
}

void puna_pool_destroy(puna_pool *pool) {
    if (!pool) return;
    atomic_store_explicit(&pool->stop, 1, memory_order_release);
    publish(pool);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->threads[i - 1], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    pthread_mutex_destroy(&pool->lock);
    free(pool->threads);
    free(pool->scratch);
    free(pool->buffer);
    free(pool);
}

int puna_pool_size(const puna_pool *pool) { return pool ? pool->n_threads : 1; }

void puna_pool_run(puna_pool *pool, puna_task task, void *ctx) {
    if (pool->n_threads == 1) { task(ctx, 0, 1); return; }
    pool->task = task;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->remaining, pool->n_threads - 1, memory_order_relaxed);
    publish(pool);
    task(ctx, 0, pool->n_threads);
    int64_t deadline = 0;
    for (unsigned spins = 0;; spins++) {
        if (atomic_load_explicit(&pool->remaining, memory_order_acquire) == 0) return;
        cpu_relax();
        if ((spins & 255) == 255) {
            int64_t t = now_ns();
            if (deadline == 0) deadline = t + WAIT_SPIN_NS;
            else if (t > deadline) break;
        }
    }
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->caller_sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst);  // see worker_main
    while (atomic_load(&pool->remaining) != 0) pthread_cond_wait(&pool->done, &pool->lock);
    atomic_store(&pool->caller_sleeping, 0);
    pthread_mutex_unlock(&pool->lock);
}

float *puna_pool_scratch(puna_pool *pool, int64_t floats_per_thread, int64_t *stride_out) {
    int64_t stride = (floats_per_thread + 15) & ~(int64_t)15;  // 64-byte rows: no false sharing
    if (stride < 16) stride = 16;
    if (stride > pool->scratch_stride || !pool->scratch) {
        void *p = NULL;
        size_t bytes = (size_t)stride * (size_t)pool->n_threads * sizeof(float);
        if (posix_memalign(&p, 64, bytes) != 0) return NULL;
        free(pool->scratch);
        pool->scratch = p;
        pool->scratch_stride = stride;
    }
    if (stride_out) *stride_out = pool->scratch_stride;
    return pool->scratch;
}

void *puna_pool_buffer(puna_pool *pool, size_t bytes) {
    if (bytes < 64) bytes = 64;
    if (bytes > pool->buffer_bytes || !pool->buffer) {
        bytes = (bytes + 4095) & ~(size_t)4095;
        void *p = NULL;
        if (posix_memalign(&p, 64, bytes) != 0) return NULL;
        free(pool->buffer);
        pool->buffer = p;
        pool->buffer_bytes = bytes;
    }
    return pool->buffer;
}
