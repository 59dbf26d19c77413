/* Rows in parallel: POSIX threads started for one call and joined before it returns.
 *
 * No pool, no OpenMP runtime, no global state: nothing outlives a call, so a fork()ed child
 * (e.g. a DataLoader worker) can call fastloss at once, and concurrent calls share nothing.
 * Starting a thread costs some microseconds; problems under 32768 elements run on the caller.
 * Every row is computed by exactly one thread, so results do not depend on the thread count.
 *
 * Built serial when FASTLOSS_NO_THREADS is defined or there are no pthreads (_WIN32).
 */
#if !defined(FASTLOSS_NO_THREADS) && !defined(_WIN32) && \
    (defined(__unix__) || defined(__APPLE__) || defined(__linux__))
#define FL_HAVE_THREADS 1
#endif

#if defined(FL_HAVE_THREADS) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdlib.h>

#include "fastloss.h"
#include "rows.h"

#ifdef FL_HAVE_THREADS
#include <pthread.h>
#include <unistd.h>
#endif

#define FL_MIN_PARALLEL_ELEMENTS 32768
#define FL_MAX_THREADS 1024
#define FL_STACK_RANGES 64

int fastloss_has_threads(void) {
#ifdef FL_HAVE_THREADS
    return 1;
#else
    return 0;
#endif
}

int fastloss_max_threads(void) {
#ifdef FL_HAVE_THREADS
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1) return 1;
    return online > FL_MAX_THREADS ? FL_MAX_THREADS : (int)online;
#else
    return 1;
#endif
}

#ifdef FL_HAVE_THREADS

typedef struct {
    fl_chunk_fn chunk;
    const void *args;
    int64_t lo, hi;
    int status;
    int started; /* pthread_create succeeded: join it */
    pthread_t thread;
} fl_range;

static void *run_range(void *p) {
    fl_range *r = (fl_range *)p;
    r->status = r->chunk(r->args, r->lo, r->hi);
    return NULL;
}

static int team_size(int64_t n, int64_t c, int n_threads) {
    int64_t t = n_threads > 0 ? n_threads : fastloss_max_threads();
    if (t > FL_MAX_THREADS) t = FL_MAX_THREADS;
    if (n * c < FL_MIN_PARALLEL_ELEMENTS) t = 1;
    if (t > n) t = n;
    return t < 1 ? 1 : (int)t;
}

int fl_parallel_rows(int64_t n, int64_t c, int n_threads, fl_chunk_fn chunk, const void *args) {
    const int t = team_size(n, c, n_threads);
    if (t == 1) return chunk(args, 0, n);
    fl_range on_stack[FL_STACK_RANGES];
    fl_range *ranges = t <= FL_STACK_RANGES ? on_stack : (fl_range *)malloc(t * sizeof *ranges);
    if (!ranges) return chunk(args, 0, n); /* no memory for the bookkeeping: run serially */
    for (int r = 0; r < t; ++r) {
        ranges[r].chunk = chunk;
        ranges[r].args = args;
        ranges[r].lo = n * r / t;
        ranges[r].hi = n * (r + 1) / t;
        ranges[r].status = FASTLOSS_OK;
        ranges[r].started = 0;
    }
    for (int r = 1; r < t; ++r)
        ranges[r].started =
            pthread_create(&ranges[r].thread, NULL, run_range, &ranges[r]) == 0;
    run_range(&ranges[0]);
    int status = ranges[0].status;
    for (int r = 1; r < t; ++r) {
        if (ranges[r].started)
            pthread_join(ranges[r].thread, NULL);
        else
            run_range(&ranges[r]); /* the thread could not be started: the caller runs it */
        if (status == FASTLOSS_OK) status = ranges[r].status;
    }
    if (ranges != on_stack) free(ranges);
    return status;
}

#else /* serial */

int fl_parallel_rows(int64_t n, int64_t c, int n_threads, fl_chunk_fn chunk, const void *args) {
    (void)c, (void)n_threads;
    return chunk(args, 0, n);
}

#endif
