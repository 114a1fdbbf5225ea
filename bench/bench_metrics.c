/* bench_metrics — cost of the metrics hot path and of one exposition.
 *
 *   counter_add      one counter, repeated (a dependency chain on one value)
 *   counter_add (8)  eight counters in turn (closer to real use)
 *   hist_observe     16 bucket bounds, values spread over all buckets
 *   requests lookup  metrics_banditd_requests() + counter_inc (the HTTP path)
 *   expose           the full banditd catalogue with 8 arms, into a reused buffer
 *
 * Prints ns per operation (best of 5 runs, thread CPU time). Exit 0 unless something fails. */
#include "banditd/metrics.h"
#include "banditd/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define RUNS 5

/* Thread CPU time in ms: preemption on a busy machine does not count. */
static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double best_ns(double (*fn)(void *), void *arg)
{
    double best = 1e300;
    for (int r = 0; r < RUNS; r++) {
        double ns = fn(arg);
        if (ns < best)
            best = ns;
    }
    return best;
}

struct ctx {
    struct metrics_counter *c;
    struct metrics_counter *c8[8];
    struct metrics_hist *h;
    struct metrics_banditd *cat;
    struct metrics *reg;
    struct util_buf buf;
    double vals[4096];
    size_t expose_bytes;
};

enum { N_HOT = 20 * 1000 * 1000, N_EXPOSE = 2000 };

static double run_counter(void *arg)
{
    struct ctx *x = arg;
    double t0 = cpu_ms();
    for (int i = 0; i < N_HOT; i++)
        metrics_counter_add(x->c, 1.0);
    return (cpu_ms() - t0) * 1e6 / N_HOT;
}

static double run_counter8(void *arg)
{
    struct ctx *x = arg;
    double t0 = cpu_ms();
    for (int i = 0; i < N_HOT; i++)
        metrics_counter_add(x->c8[i & 7], 1.0);
    return (cpu_ms() - t0) * 1e6 / N_HOT;
}

static double run_hist(void *arg)
{
    struct ctx *x = arg;
    double t0 = cpu_ms();
    for (int i = 0; i < N_HOT; i++)
        metrics_hist_observe(x->h, x->vals[i & 4095]);
    return (cpu_ms() - t0) * 1e6 / N_HOT;
}

static double run_requests(void *arg)
{
    struct ctx *x = arg;
    static const int statuses[8] = {200, 200, 200, 429, 200, 502, 200, 400};
    double t0 = cpu_ms();
    for (int i = 0; i < N_HOT; i++)
        metrics_counter_inc(
            metrics_banditd_requests(x->cat, METRICS_ROUTE_CHAT, i & 7, statuses[(i >> 3) & 7]));
    return (cpu_ms() - t0) * 1e6 / N_HOT;
}

static double run_expose(void *arg)
{
    struct ctx *x = arg;
    double t0 = cpu_ms();
    for (int i = 0; i < N_EXPOSE; i++) {
        util_buf_reset(&x->buf);
        if (metrics_expose(x->reg, &x->buf) != 0) {
            fprintf(stderr, "expose failed\n");
            exit(1);
        }
    }
    x->expose_bytes = x->buf.len;
    return (cpu_ms() - t0) * 1e6 / N_EXPOSE;
}

int main(void)
{
    static struct ctx x;
    struct metrics *m = metrics_create();
    if (!m)
        return 1;
    x.reg = m;
    const char *arms[] = {"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"};
    if (metrics_banditd_create(m, "bench", arms, 8, &x.cat) != 0)
        return 1;
    x.c = metrics_banditd_arm(x.cat, 0)->tokens_prompt;
    for (int i = 0; i < 8; i++)
        x.c8[i] = metrics_banditd_arm(x.cat, (size_t)i)->cost_usd;
    x.h = metrics_banditd_arm(x.cat, 0)->upstream_duration; /* 16 bounds */
    struct util_rng rng;
    util_rng_seed(&rng, 1);
    for (int i = 0; i < 4096; i++) /* log-uniform over 0.5 ms .. 200 s: every bucket */
        x.vals[i] = 0.0005 * exp(util_rng_uniform(&rng) * 12.9);
    util_buf_init(&x.buf, 16u << 20);

    double c = best_ns(run_counter, &x);
    double c8 = best_ns(run_counter8, &x);
    double h = best_ns(run_hist, &x);
    double r = best_ns(run_requests, &x);
    double e = best_ns(run_expose, &x);
    printf("metrics_counter_add:                 %6.2f ns/op\n", c);
    printf("metrics_counter_add (8 series):      %6.2f ns/op\n", c8);
    printf("metrics_hist_observe (16 bounds):    %6.2f ns/op\n", h);
    printf("requests lookup + counter_inc:       %6.2f ns/op\n", r);
    printf("metrics_expose (catalogue, 8 arms):  %8.1f us/scrape, %zu bytes\n", e / 1000,
           x.expose_bytes);
    util_buf_free(&x.buf);
    metrics_banditd_destroy(x.cat);
    metrics_destroy(m);
    return 0;
}
