/* Rows in parallel: a small pool of POSIX threads, started on first use.
 *
 * A call publishes a job (the chunk function, its arguments, the number of rows) and runs
 * chunks of it on the calling thread; pool workers join while it is open and take chunks
 * from the same counter (guided: each a share of the rows left, so a thread on a busy core
 * takes fewer instead of holding the others up).  When the rows run out the caller closes
 * the job, waits for the workers that joined and returns: no worker touches a job after
 * its call returned, and a worker that wakes too late finds it closed.  Every row is
 * computed by exactly one thread with the same arithmetic whatever the split, so results do
 * not depend on the thread count or on which thread took which chunk.
 *
 * Why a pool: starting and joining a thread took 80-100 us on a 2-vCPU VM, as long as a
 * whole cross-entropy call at 65536 x 10 on one core takes for a tenth of its rows.  A
 * worker that finished a job waits a little (FL_SPIN_NS) for the next one before it sleeps
 * on a condition variable (waking it took ~28 us on the same VM, still less than starting a
 * thread, and the caller computes meanwhile).
 *
 * What real programs need:
 * - fork(): the pool's threads do not exist in a child; pthread_atfork resets the pool
 *   there (and a pid check backs it up), and the child starts its own on its first call.
 * - concurrent calls: one call owns the pool at a time; a call that finds it owned starts
 *   threads of its own for the call, as before the pool (same rows, same results).
 * - unloading the library (dlclose): a destructor stops and joins the workers.
 * Problems under 32768 elements run on the caller, with no thread at all.
 *
 * Built serial when FASTLOSS_NO_THREADS is defined or there are no pthreads (_WIN32).
 */
#if !defined(FASTLOSS_NO_THREADS) && !defined(_WIN32) && \
    (defined(__unix__) || defined(__APPLE__) || defined(__linux__))
#define FL_HAVE_THREADS 1
#endif

#if defined(FL_HAVE_THREADS) && defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* sched_getaffinity, CPU_COUNT */
#endif
#if defined(FL_HAVE_THREADS) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#if defined(FL_HAVE_THREADS) && defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE 1 /* _SC_NPROCESSORS_ONLN beside _POSIX_C_SOURCE */
#endif

#include <stdlib.h>

#include "fastloss.h"
#include "rows.h"

#ifdef FL_HAVE_THREADS
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#endif

#define FL_MIN_PARALLEL_ELEMENTS 32768
#define FL_MAX_THREADS 1024

int fastloss_has_threads(void) {
#ifdef FL_HAVE_THREADS
    return 1;
#else
    return 0;
#endif
}

int fastloss_max_threads(void) {
#ifdef FL_HAVE_THREADS
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t allowed; /* the CPUs this process may run on (taskset, containers' cpusets) */
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) {
        const int n = CPU_COUNT(&allowed);
        if (n >= 1) return n > FL_MAX_THREADS ? FL_MAX_THREADS : n;
    }
#endif
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1) return 1;
    return online > FL_MAX_THREADS ? FL_MAX_THREADS : (int)online;
#else
    return 1;
#endif
}

#ifdef FL_HAVE_THREADS

/* Workers kept by the pool; a call wanting more threads starts its own (see above). */
#define FL_POOL_MAX 255
/* How long an idle worker polls for the next job before it sleeps. */
#define FL_SPIN_NS 50000
/* A chunk has at least this many elements (a chunk costs a call of the kernel and its
   scratch) and a multiple of FL_CHUNK_ALIGN rows (the short-row tiles take 16 at a time). */
#define FL_MIN_CHUNK_ELEMENTS 16384
#define FL_CHUNK_ALIGN 16

#if defined(__x86_64__) || defined(__i386__)
#define FL_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define FL_PAUSE() __asm__ __volatile__("yield")
#else
#define FL_PAUSE() ((void)0)
#endif

typedef struct {
    fl_chunk_fn chunk;
    const void *args;
    int64_t n, min_chunk, align;
    _Atomic int team; /* the most threads, the caller included */
    _Atomic int64_t next; /* the first row not yet taken */
    _Atomic int status;   /* the first error, or FASTLOSS_OK */
} fl_job;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Takes chunks of the job until none is left. */
static void run_chunks(fl_job *job) {
    const int64_t n = job->n;
    int64_t lo = atomic_load_explicit(&job->next, memory_order_relaxed);
    while (lo < n) {
        const int team = atomic_load_explicit(&job->team, memory_order_relaxed);
        int64_t size = (n - lo) / (2 * (int64_t)team);
        if (size < job->min_chunk) size = job->min_chunk;
        size = (size + job->align - 1) / job->align * job->align;
        const int64_t hi = n - lo < size ? n : lo + size;
        if (!atomic_compare_exchange_weak_explicit(&job->next, &lo, hi, memory_order_relaxed,
                                                   memory_order_relaxed))
            continue; /* lo now holds the current value */
        const int status = job->chunk(job->args, lo, hi);
        if (status != FASTLOSS_OK) {
            int ok = FASTLOSS_OK;
            atomic_compare_exchange_strong(&job->status, &ok, status);
        }
        lo = atomic_load_explicit(&job->next, memory_order_relaxed);
    }
}

static void *run_job_thread(void *job) {
    run_chunks((fl_job *)job);
    return NULL;
}

/* ------------------------------------------------------------------ the pool */

/* state: generation << 32 | FL_CLOSED | helpers that joined the job of that generation */
#define FL_CLOSED ((uint64_t)1 << 31)
#define FL_JOINED_MASK ((uint64_t)FL_CLOSED - 1)

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_flag busy;              /* a call owns the pool */
    _Atomic uint32_t generation;   /* of the latest job; a change wakes the workers */
    _Atomic uint64_t state;        /* see FL_CLOSED */
    _Atomic int finished;          /* helpers done with the current job */
    _Atomic int quit;              /* the library is being unloaded */
    fl_job job;
    int n_workers;
    pid_t pid; /* the process the workers belong to */
    pthread_t workers[FL_POOL_MAX];
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
           .busy = ATOMIC_FLAG_INIT};

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* In a fork()ed child: the workers stayed behind in the parent (and may have held the
   mutex); start afresh.  Leaves `busy` as it is. */
static void pool_forget_workers(void) {
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.wake, NULL);
    atomic_store(&pool.quit, 0);
    pool.n_workers = 0;
    pool.pid = getpid();
}

/* The pthread_atfork child handler: the thread that forked is the only one here, and no call
   is running (a call in another thread of the parent does not exist in the child). */
static void pool_reset_in_child(void) {
    pool_forget_workers();
    atomic_flag_clear(&pool.busy);
}

static void pool_init(void) {
    pool.pid = getpid();
    pthread_atfork(NULL, NULL, pool_reset_in_child);
}

/* Waits until the generation differs from seen: polls for FL_SPIN_NS when `poll` (the worker
   took part in the last job), then sleeps. */
static uint32_t wait_for_job(uint32_t seen, int poll) {
    int64_t deadline = 0;
    for (int spins = 0; poll; ++spins) {
        const uint32_t g = atomic_load_explicit(&pool.generation, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&pool.quit, memory_order_relaxed)) return g;
        if ((spins & 63) == 0) {
            const int64_t t = now_ns();
            if (!deadline) deadline = t + FL_SPIN_NS;
            else if (t > deadline) break;
        }
        FL_PAUSE();
    }
    pthread_mutex_lock(&pool.mu);
    uint32_t g;
    while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&pool.quit, memory_order_relaxed))
        pthread_cond_wait(&pool.wake, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    return g;
}

static void *worker(void *arg) {
    uint32_t seen = (uint32_t)(uintptr_t)arg;
    for (int joined = 0;;) {
        seen = wait_for_job(seen, joined);
        if (atomic_load_explicit(&pool.quit, memory_order_relaxed)) return NULL;
        /* join the job of generation seen if it is still open and not full */
        uint64_t s = atomic_load_explicit(&pool.state, memory_order_acquire);
        joined = 0;
        while ((uint32_t)(s >> 32) == seen && !(s & FL_CLOSED) &&
               (int64_t)(s & FL_JOINED_MASK) <
                   atomic_load_explicit(&pool.job.team, memory_order_relaxed) - 1) {
            if (atomic_compare_exchange_weak_explicit(&pool.state, &s, s + 1,
                                                      memory_order_acquire,
                                                      memory_order_acquire)) {
                joined = 1;
                break;
            }
        }
        if (!joined) continue;
        run_chunks(&pool.job);
        atomic_thread_fence(memory_order_seq_cst); /* orders streaming stores too (mfence) */
        atomic_fetch_add_explicit(&pool.finished, 1, memory_order_release);
    }
}

/* Makes sure `want` workers exist (fewer if threads cannot be started).  They block the
   asynchronous signals, so that those go to the program's own threads; a fault in a worker
   still reaches the program's handler (faulthandler, sanitizers). */
static void pool_grow(int want) {
    if (pool.n_workers >= want) return;
    sigset_t all, old;
    sigfillset(&all);
    static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; ++i) sigdelset(&all, faults[i]);
    const int masked = pthread_sigmask(SIG_SETMASK, &all, &old) == 0;
    while (pool.n_workers < want) {
        const uint32_t g = atomic_load_explicit(&pool.generation, memory_order_relaxed);
        if (pthread_create(&pool.workers[pool.n_workers], NULL, worker,
                           (void *)(uintptr_t)g) != 0)
            break;
        ++pool.n_workers;
    }
    if (masked) pthread_sigmask(SIG_SETMASK, &old, NULL);
}

__attribute__((destructor)) static void pool_stop(void) {
    if (atomic_flag_test_and_set(&pool.busy)) return; /* a call is running: leave it be */
    if (pool.n_workers == 0 || pool.pid != getpid()) {
        atomic_flag_clear(&pool.busy);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    atomic_store(&pool.quit, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.n_workers; ++i) pthread_join(pool.workers[i], NULL);
    pool.n_workers = 0;
}

/* The job on the pool: returns its status. */
static int pool_run(int team, fl_chunk_fn chunk, const void *args, int64_t n,
                    int64_t min_chunk, int64_t align) {
    pool_grow(team - 1);
    fl_job *job = &pool.job;
    job->chunk = chunk;
    job->args = args;
    job->n = n;
    job->min_chunk = min_chunk;
    job->align = align;
    atomic_store_explicit(&job->team, team, memory_order_relaxed);
    atomic_store_explicit(&job->next, 0, memory_order_relaxed);
    atomic_store_explicit(&job->status, FASTLOSS_OK, memory_order_relaxed);
    atomic_store_explicit(&pool.finished, 0, memory_order_relaxed);
    const uint32_t g = atomic_load_explicit(&pool.generation, memory_order_relaxed) + 1;
    atomic_store_explicit(&pool.state, (uint64_t)g << 32, memory_order_release);
    pthread_mutex_lock(&pool.mu);
    atomic_store_explicit(&pool.generation, g, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);

    run_chunks(job);

    const uint64_t s = atomic_fetch_or_explicit(&pool.state, FL_CLOSED, memory_order_acq_rel);
    const int joined = (int)(s & FL_JOINED_MASK);
    for (int spins = 0; atomic_load_explicit(&pool.finished, memory_order_acquire) < joined;) {
        if (spins < 4096) {
            FL_PAUSE();
            ++spins;
        } else {
            sched_yield(); /* a helper lost its core */
        }
    }
    return atomic_load_explicit(&job->status, memory_order_relaxed);
}

/* Without the pool (it is busy with another call, or too small): threads for this call. */
static int own_threads_run(int team, fl_chunk_fn chunk, const void *args, int64_t n,
                           int64_t min_chunk, int64_t align) {
    fl_job job = {.chunk = chunk, .args = args, .n = n, .min_chunk = min_chunk, .align = align};
    atomic_init(&job.team, team);
    atomic_init(&job.next, 0);
    atomic_init(&job.status, FASTLOSS_OK);
    pthread_t on_stack[16];
    pthread_t *threads =
        team - 1 <= 16 ? on_stack : (pthread_t *)malloc((size_t)(team - 1) * sizeof *threads);
    int started = 0;
    if (threads)
        while (started < team - 1 &&
               pthread_create(&threads[started], NULL, run_job_thread, &job) == 0)
            ++started;
    run_chunks(&job); /* threads that could not be started leave their rows to the caller */
    for (int r = 0; r < started; ++r) pthread_join(threads[r], NULL);
    if (threads != on_stack) free(threads);
    return atomic_load_explicit(&job.status, memory_order_relaxed);
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
    int64_t min_chunk = (FL_MIN_CHUNK_ELEMENTS + c - 1) / (c > 0 ? c : 1);
    if (min_chunk < 1) min_chunk = 1;
    /* whole short-row tiles where rows are short; long rows one at a time */
    const int64_t align = min_chunk >= FL_CHUNK_ALIGN ? FL_CHUNK_ALIGN : 1;
    pthread_once(&pool_once, pool_init);
    if (t - 1 > FL_POOL_MAX || atomic_flag_test_and_set(&pool.busy))
        return own_threads_run(t, chunk, args, n, min_chunk, align);
    if (pool.pid != getpid()) pool_forget_workers(); /* a fork without the atfork handler */
    const int status = pool_run(t, chunk, args, n, min_chunk, align);
    atomic_flag_clear(&pool.busy);
    return status;
}

#else /* serial */

int fl_parallel_rows(int64_t n, int64_t c, int n_threads, fl_chunk_fn chunk, const void *args) {
    (void)c, (void)n_threads;
    return chunk(args, 0, n);
}

#endif
