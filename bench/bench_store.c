/* bench_store — durability cost of the store (synchronous=FULL, WAL).
 *
 *   1. lone commits: one feedback (or decision) at a time, wait for its ack:
 *      the latency of a group commit of one row (what waiting for a decision's
 *      commit before the first response byte would cost);
 *   2. saturation: a producer enqueues as fast as it can (BUSY → wait for a
 *      wake), measuring committed feedback rows/s and enqueue→ack latency;
 *   3. paced load at fixed arrival rates: ack latency p50/p99.
 * The database lives in $BENCH_STORE_DIR (default /tmp): put it on the disk
 * you care about (a tmpfs measures nothing). dim = 256 (the default). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "banditd/err.h"
#include "banditd/store.h"

#define DIM 256

static int wake_fd[2];

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void wake(void *ud)
{
    (void)ud;
    char c = 1;
    ssize_t w = write(wake_fd[1], &c, 1);
    (void)w;
}

static void wait_wake(int ms)
{
    struct pollfd p = {.fd = wake_fd[0], .events = POLLIN};
    if (poll(&p, 1, ms) > 0) {
        char buf[256];
        while (read(wake_fd[0], buf, sizeof buf) > 0) {
        }
    }
}

struct item {
    double t0, t1;
    int rc;
    int done;
};

static void on_ack(int rc, int64_t seq, void *ud)
{
    (void)seq;
    struct item *it = ud;
    it->t1 = now_ms();
    it->rc = rc;
    it->done = 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report_latency(const char *what, struct item *items, int n)
{
    double *lat = malloc((size_t)n * sizeof *lat);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (items[i].done && items[i].rc == 0)
            lat[m++] = items[i].t1 - items[i].t0;
    qsort(lat, (size_t)m, sizeof *lat, cmp_double);
    if (m > 0)
        printf("%-34s n=%d  p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", what, m, lat[m / 2],
               lat[(size_t)(0.99 * (m - 1))], lat[m - 1]);
    free(lat);
}

static int counter;

static int put_fb(store *s, struct item *it, const double *x)
{
    char id[48];
    snprintf(id, sizeof id, "bench-%d", counter);
    it->t0 = now_ms();
    int rc =
        store_put_feedback(s, id, counter % 2 ? "cheap" : "strong", x, DIM, 0.5, 0, on_ack, it);
    if (rc == 0)
        counter++;
    return rc;
}

static void wait_all(store *s, struct item *items, int n)
{
    for (int i = 0; i < n;) {
        if (items[i].done) {
            i++;
            continue;
        }
        wait_wake(100);
        store_dispatch(s);
    }
}

int main(void)
{
    const char *dir = getenv("BENCH_STORE_DIR");
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/bench_store.XXXXXX", dir ? dir : "/tmp");
    if (!mkdtemp(tmpl) || pipe2(wake_fd, O_NONBLOCK | O_CLOEXEC) != 0) {
        perror("bench_store setup");
        return 1;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/state.db", tmpl);
    store *s = NULL;
    char err[512];
    if (store_open(path, DIM, 0.5, 0, wake, NULL, 1024, &s, err, sizeof err) != 0) {
        fprintf(stderr, "store_open: %s\n", err);
        return 1;
    }
    double x[DIM];
    for (int i = 0; i < DIM; i++)
        x[i] = (i % 7) / 7.0;
    printf("bench_store: dim=%d, synchronous=FULL, WAL, db in %s\n", DIM, tmpl);

    /* 1. lone commits */
    enum { LONE = 200 };
    struct item *items = calloc(LONE, sizeof *items);
    for (int i = 0; i < LONE; i++) {
        put_fb(s, &items[i], x);
        wait_all(s, &items[i], 1);
    }
    report_latency("lone feedback commit (ack)", items, LONE);
    memset(items, 0, LONE * sizeof *items);
    for (int i = 0; i < LONE; i++) {
        char id[48];
        snprintf(id, sizeof id, "dec-%d", i);
        struct store_decision d = {.id = id, .arm_name = "cheap", .x = x, .created_s = 1};
        items[i].t0 = now_ms();
        store_put_decision(s, &d, on_ack, &items[i]);
        wait_all(s, &items[i], 1);
    }
    report_latency("lone decision commit (ack)", items, LONE);
    free(items);

    /* 2. saturation */
    enum { SAT = 20000 };
    items = calloc(SAT, sizeof *items);
    struct store_stats st0, st1;
    store_get_stats(s, &st0);
    double t0 = now_ms();
    int busy = 0;
    for (int i = 0; i < SAT; i++) {
        while (put_fb(s, &items[i], x) == BD_ERR_BUSY) {
            busy++;
            wait_wake(100);
            store_dispatch(s);
        }
        if (i % 32 == 0)
            store_dispatch(s);
    }
    wait_all(s, items, SAT);
    double el = now_ms() - t0;
    store_get_stats(s, &st1);
    uint64_t commits = st1.commits - st0.commits;
    printf("saturation: %d feedback rows in %.0f ms = %.0f rows/s committed; %" PRIu64
           " commits (mean batch %.1f, max %" PRIu64 "), %d busy retries\n",
           SAT, el, SAT / (el / 1e3), commits, (double)SAT / (double)commits, st1.max_batch, busy);
    report_latency("saturation ack latency", items, SAT);
    free(items);

    /* 3. paced arrivals */
    static const int rates[] = {200, 1000, 5000};
    for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++) {
        int n = rates[r] * 2; /* two seconds each */
        items = calloc((size_t)n, sizeof *items);
        double start = now_ms(), gap = 1e3 / rates[r];
        for (int i = 0; i < n; i++) {
            double due = start + i * gap;
            while (now_ms() < due) {
                int ms = (int)(due - now_ms());
                wait_wake(ms > 0 ? ms : 0);
                store_dispatch(s);
            }
            if (put_fb(s, &items[i], x) != 0)
                items[i].done = 1, items[i].rc = BD_ERR_BUSY;
        }
        wait_all(s, items, n);
        char what[64];
        snprintf(what, sizeof what, "paced %d/s ack latency", rates[r]);
        report_latency(what, items, n);
        free(items);
    }
    /* 4. snapshot copy cost on the caller's thread (8 arms) */
    enum { ARMS = 8, REPS = 20 };
    double *A = calloc((size_t)DIM * DIM, sizeof *A), *b = calloc(DIM, sizeof *b);
    for (int i = 0; i < DIM; i++)
        A[i * DIM + i] = 1.0;
    struct store_arm_state arms[ARMS];
    static const char *names[ARMS] = {"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"};
    for (int k = 0; k < ARMS; k++)
        arms[k] = (struct store_arm_state){.arm_name = names[k], .A = A, .b = b};
    double best = 1e9, total = 0;
    for (int r = 0; r < REPS; r++) {
        double t = now_ms();
        if (store_put_snapshot(s, arms, ARMS, NULL, NULL) != 0)
            fprintf(stderr, "snapshot refused\n");
        t = now_ms() - t;
        total += t;
        best = t < best ? t : best;
        store_flush(s);
    }
    printf("snapshot of %d arms: enqueue (copy) %.2f ms mean, %.2f ms best on the loop thread\n",
           ARMS, total / REPS, best);
    free(A);
    free(b);

    store_close(s);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    return system(cmd) != 0;
}
