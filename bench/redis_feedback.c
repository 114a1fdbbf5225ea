/* redis_feedback — the shared-learning path of store_redis (docs/scale-out.md).
 *
 *   1. ack → effect lag: replica A accepts feedback at a paced rate; replica B
 *      applies it from the stream. Lag = time B applied an event − time A's
 *      acknowledgement callback ran (both measured in this process, on one
 *      monotonic clock; a negative lag means B applied it before A's ack was
 *      dispatched). p50/p99 at a few arrival rates.
 *   2. accept throughput: A submits as fast as the queue allows (acks/s).
 *   3. apply throughput of one replica: a fresh replica replays the whole
 *      stream into LinUCB models (d=256, Sherman–Morrison), and without a
 *      model (transport + decoding only).
 * Starts its own redis-server on a free loopback port (appendonly no, or
 * appendonly yes + appendfsync always with BENCH_REDIS_AOF=1), or uses
 * $BENCH_REDIS_URL. Prints a note and exits 0 if redis-server is missing. */
#include <fcntl.h>
#include <math.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "banditd/err.h"
#include "banditd/linucb.h"
#include "banditd/log.h"
#include "banditd/store_redis.h"
#include "banditd/util.h"

#define DIM 256
#define NARMS 3
#define MAXEV 40000
static const char *const ARMS[NARMS] = {"cheap", "mid", "strong"};

static int wake_fd[2];
static void wake(void *ud)
{
    (void)ud;
    char c = 1;
    ssize_t w = write(wake_fd[1], &c, 1);
    (void)w;
}

static void wait_wake(int ms)
{
    struct pollfd p = {wake_fd[0], POLLIN, 0};
    if (poll(&p, 1, ms) > 0) {
        char buf[256];
        while (read(wake_fd[0], buf, sizeof buf) > 0) {
        }
    }
}

struct replica {
    store_redis *s;
    linucb *m[NARMS];
    int with_model;
    uint64_t applied;
    double *t_apply; /* by event index, or NULL */
};

static void apply_cb(const struct store_redis_event *ev, void *ud)
{
    struct replica *r = ud;
    if (r->with_model)
        for (int a = 0; a < NARMS; a++)
            if (strcmp(ev->arm_name, ARMS[a]) == 0)
                linucb_update(r->m[a], ev->x, ev->reward);
    if (r->t_apply) {
        int i = atoi(ev->request_id + 2); /* "b-<i>" */
        if (i >= 0 && i < MAXEV)
            r->t_apply[i] = util_now_ms();
    }
    r->applied++;
}

static int open_replica(const char *url, struct replica *r, int with_model, double *t_apply)
{
    memset(r, 0, sizeof *r);
    r->with_model = with_model;
    r->t_apply = t_apply;
    for (int a = 0; a < NARMS; a++)
        r->m[a] = linucb_create(DIM, 1.0, 1.0, 1.0, 0);
    struct store_redis_opts o;
    store_redis_opts_default(&o);
    o.apply = apply_cb;
    o.apply_ud = r;
    o.wake = wake;
    o.queue_cap = 8192;
    char err[256];
    if (store_redis_open(url, DIM, &o, &r->s, err, sizeof err) != 0) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    return store_redis_start(r->s);
}

static void close_replica(struct replica *r)
{
    store_redis_close(r->s);
    for (int a = 0; a < NARMS; a++)
        linucb_destroy(r->m[a]);
}

static double t_ack[MAXEV], t_app[MAXEV];
static int n_acked, n_failed;

static void fb_cb(int rc, struct store_redis_pos pos, void *ud)
{
    (void)pos;
    intptr_t i = (intptr_t)ud;
    if (rc == 0) {
        t_ack[i] = util_now_ms();
        n_acked++;
    } else {
        n_failed++;
    }
}

static void make_x(int i, double *x)
{
    struct util_rng g;
    util_rng_seed(&g, (uint64_t)i);
    double n2 = 0;
    for (int k = 0; k < DIM; k++) {
        x[k] = util_rng_normal(&g);
        n2 += x[k] * x[k];
    }
    for (int k = 0; k < DIM; k++)
        x[k] /= sqrt(n2);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int submit(struct replica *a, int i)
{
    double x[DIM];
    char id[32];
    make_x(i, x);
    snprintf(id, sizeof id, "b-%d", i);
    return store_redis_put_feedback(a->s, id, ARMS[i % NARMS], x, DIM, (i % 10) / 10.0,
                                    util_wall_s(), fb_cb, (void *)(intptr_t)i);
}

/* Phase 1: paced at rate/s for n events starting at index base. */
static void lag_run(struct replica *a, struct replica *b, int base, int n, double rate)
{
    double t0 = util_now_ms();
    int next = 0;
    uint64_t want = b->applied + (uint64_t)n;
    while (next < n || b->applied < want || n_acked + n_failed < base + n) {
        double now = util_now_ms();
        while (next < n && now >= t0 + next * 1000.0 / rate) {
            if (submit(a, base + next) != 0)
                n_failed++;
            next++;
        }
        store_redis_dispatch(a->s);
        store_redis_dispatch(b->s);
        if (util_now_ms() - t0 > 60000)
            break;
        wait_wake(1);
    }
    static double lag[MAXEV];
    int m = 0;
    for (int i = base; i < base + n; i++)
        if (t_ack[i] > 0 && t_app[i] > 0)
            lag[m++] = t_app[i] - t_ack[i];
    qsort(lag, (size_t)m, sizeof lag[0], cmp_d);
    if (m)
        printf("  %6.0f fb/s: ack->applied on other replica  p50 %7.3f ms  p99 %7.3f ms  "
               "max %7.3f ms  (n=%d)\n",
               rate, lag[m / 2], lag[(int)(m * 0.99)], lag[m - 1], m);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in s = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&s, sizeof s) != 0)
        return -1;
    socklen_t l = sizeof s;
    getsockname(fd, (struct sockaddr *)&s, &l);
    close(fd);
    return ntohs(s.sin_port);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    char url[128], dir[64] = "";
    pid_t pid = 0;
    const char *env = getenv("BENCH_REDIS_URL");
    int aof = getenv("BENCH_REDIS_AOF") != NULL;
    if (env) {
        snprintf(url, sizeof url, "%s", env);
    } else {
        if (system("command -v redis-server >/dev/null 2>&1") != 0) {
            printf("redis_feedback: redis-server not installed, skipped\n");
            return 0;
        }
        snprintf(dir, sizeof dir, "/tmp/bench_redis.XXXXXX");
        if (!mkdtemp(dir))
            return 1;
        int port = free_port();
        char ps[16];
        snprintf(ps, sizeof ps, "%d", port);
        pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            int fd = open("/dev/null", O_WRONLY);
            dup2(fd, 1);
            dup2(fd, 2);
            execlp("redis-server", "redis-server", "--port", ps, "--bind", "127.0.0.1", "--save",
                   "", "--appendonly", aof ? "yes" : "no", "--appendfsync", "always", "--dir", dir,
                   (char *)NULL);
            _exit(127);
        }
        snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
        for (int i = 0; i < 500; i++) {
            struct timeval tv = {1, 0};
            redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
            int ok = c && !c->err;
            if (c)
                redisFree(c);
            if (ok)
                break;
            usleep(10000);
        }
    }
    if (pipe2(wake_fd, O_NONBLOCK) != 0)
        return 1;
    printf("redis_feedback: dim=%d, %d arms, redis %s (%s)\n", DIM, NARMS, url,
           env   ? "external"
           : aof ? "appendonly yes, appendfsync always"
                 : "no persistence");

    struct replica a, b;
    if (open_replica(url, &a, 0, NULL) || open_replica(url, &b, 1, t_app))
        return 1;
    printf("1. lag between A's ack and B's application (B updates d=256 LinUCB)\n");
    int base = 0;
    const double rates[] = {200, 1000, 3000};
    const int counts[] = {1000, 3000, 6000};
    for (int k = 0; k < 3; k++) {
        lag_run(&a, &b, base, counts[k], rates[k]);
        base += counts[k];
    }

    close_replica(&b); /* phase 2 measures A alone (B would share this thread) */
    printf("2. accept throughput (A submits as fast as its queue allows)\n");
    int n2 = 20000;
    double t0 = util_now_ms();
    int next = 0, acked0 = n_acked;
    while (n_acked + n_failed < base + n2) {
        while (next < n2 && submit(&a, base + next) == 0)
            next++;
        store_redis_dispatch(a.s);
        wait_wake(5);
    }
    double dt = util_now_ms() - t0;
    printf("  %d feedbacks acknowledged in %.0f ms: %.0f acks/s (failed %d)\n", n_acked - acked0,
           dt, (n_acked - acked0) * 1000.0 / dt, n_failed);
    base += n2;
    struct store_redis_stats st;
    store_redis_get_stats(a.s, &st);
    printf("  worker round trips %" PRIu64 " (%.1f ops per pipeline)\n", st.roundtrips,
           (double)st.enqueued / (double)(st.roundtrips ? st.roundtrips : 1));

    printf("3. apply throughput of one fresh replica replaying %d events\n", base);
    for (int with_model = 1; with_model >= 0; with_model--) {
        struct replica c;
        t0 = util_now_ms();
        if (open_replica(url, &c, with_model, NULL))
            return 1;
        while (c.applied < (uint64_t)base && util_now_ms() - t0 < 120000) {
            store_redis_dispatch(c.s);
            wait_wake(5);
        }
        dt = util_now_ms() - t0;
        printf("  %s: %" PRIu64 " events in %.0f ms: %.0f events/s\n",
               with_model ? "with d=256 LinUCB updates" : "transport + decode only   ", c.applied,
               dt, c.applied * 1000.0 / dt);
        close_replica(&c);
    }
    close_replica(&a);
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            return 1;
    }
    return 0;
}
