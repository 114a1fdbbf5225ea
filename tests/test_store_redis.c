/* Tests of store_redis against a real redis-server started on a free loopback
 * port (in a temporary directory) for each test that needs one. Skips, with a
 * message, when redis-server is not installed. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "banditd/err.h"
#include "banditd/linucb.h"
#include "banditd/log.h"
#include "banditd/store_redis.h"
#include "banditd/util.h"

#define DIM 16
#define NARMS 3
static const char *const ARMS[NARMS] = {"cheap", "mid", "strong"};

/* ---------- a private redis-server ---------- */

struct rsrv {
    pid_t pid;
    int port;
    char dir[128];
    char url[64];
};

static int have_redis(void)
{
    return system("command -v redis-server >/dev/null 2>&1") == 0;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *rconn(const struct rsrv *r)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Start (or restart, keeping dir and port) redis-server. aof: appendonly +
 * appendfsync always, so acknowledged writes survive a SIGKILL of Redis. */
static void rs_start(struct rsrv *r, int aof)
{
    if (!r->dir[0]) {
        snprintf(r->dir, sizeof r->dir, "/tmp/test_store_redis.XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(r->dir));
        r->port = free_port();
        snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d/0", r->port);
    }
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test must not leak it */
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", aof ? "yes" : "no", "--appendfsync", "always", "--dir", r->dir,
               "--daemonize", "no", "--protected-mode", "no", (char *)NULL);
        _exit(127);
    }
    r->pid = pid;
    for (int i = 0; i < 500; i++) {
        redisContext *c = rconn(r);
        if (c) {
            redisReply *rep = redisCommand(c, "PING");
            int ok = rep && rep->type == REDIS_REPLY_STATUS;
            if (rep)
                freeReplyObject(rep);
            redisFree(c);
            if (ok)
                return;
        }
        usleep(10000);
    }
    ck_abort_msg("redis-server did not start on port %d", r->port);
}

static void rs_stop(struct rsrv *r, int sig)
{
    if (r->pid > 0) {
        kill(r->pid, sig);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
}

static void rs_destroy(struct rsrv *r)
{
    rs_stop(r, SIGTERM);
    if (r->dir[0]) {
        char cmd[200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", r->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", r->dir);
    }
}

static long long rint_cmd(const struct rsrv *r, const char *fmt, const char *arg)
{
    redisContext *c = rconn(r);
    ck_assert_ptr_nonnull(c);
    redisReply *rep = redisCommand(c, fmt, arg);
    ck_assert_ptr_nonnull(rep);
    ck_assert_int_eq(rep->type, REDIS_REPLY_INTEGER);
    long long v = rep->integer;
    freeReplyObject(rep);
    redisFree(c);
    return v;
}

/* ---------- a replica's model: one linucb per arm fed by apply ---------- */

struct model {
    linucb *m[NARMS];
    uint64_t applied;
    char order[4096][40]; /* request ids in application order */
    int bad_arm;
};

static void model_init(struct model *md)
{
    memset(md, 0, sizeof *md);
    for (int a = 0; a < NARMS; a++) {
        md->m[a] = linucb_create(DIM, 1.0, 1.0, 1.0, 0);
        ck_assert_ptr_nonnull(md->m[a]);
    }
}

static void model_free(struct model *md)
{
    for (int a = 0; a < NARMS; a++)
        linucb_destroy(md->m[a]);
}

static int arm_index(const char *name)
{
    for (int a = 0; a < NARMS; a++)
        if (strcmp(ARMS[a], name) == 0)
            return a;
    return -1;
}

static void apply_cb(const struct store_redis_event *ev, void *ud)
{
    struct model *md = ud;
    int a = arm_index(ev->arm_name);
    if (a < 0) {
        md->bad_arm++;
        return;
    }
    ck_assert_int_eq(linucb_update(md->m[a], ev->x, ev->reward), 0);
    if (md->applied < 4096)
        snprintf(md->order[md->applied], sizeof md->order[0], "%s", ev->request_id);
    md->applied++;
}

static int load_cb(const struct store_arm_state *st, void *ud)
{
    struct model *md = ud;
    int a = arm_index(st->arm_name);
    ck_assert_int_ge(a, 0);
    return linucb_set_state(md->m[a], st->A, st->b, st->n);
}

/* A replica whose get_decision looks again for lookup_wait_ms. */
static store_redis *open_replica_wait(const struct rsrv *r, struct model *md, double ttl_s,
                                      int load_and_start, int lookup_wait_ms)
{
    struct store_redis_opts o;
    store_redis_opts_default(&o);
    o.ttl_s = ttl_s;
    o.apply = apply_cb;
    o.apply_ud = md;
    o.timeout_ms = 500;
    o.block_ms = 50;
    o.lookup_wait_ms = lookup_wait_ms;
    store_redis *s = NULL;
    char err[256] = "";
    int rc = store_redis_open(r->url, DIM, &o, &s, err, sizeof err);
    ck_assert_msg(rc == 0, "open: %d %s", rc, err);
    if (load_and_start) {
        ck_assert_int_eq(store_redis_load_model(s, load_cb, md), 0);
        ck_assert_int_eq(store_redis_start(s), 0);
    }
    return s;
}

static store_redis *open_replica(const struct rsrv *r, struct model *md, double ttl_s,
                                 int load_and_start)
{
    return open_replica_wait(r, md, ttl_s, load_and_start, 150);
}

/* Dispatch (as the loop would) until *flag or the store has applied up to
 * target (when target is given); 15 s limit. */
static void pump_until(store_redis **ss, int n, const int *flag,
                       const struct store_redis_pos *target)
{
    for (int i = 0; i < 15000; i++) {
        int done = 1;
        for (int k = 0; k < n; k++) {
            store_redis_dispatch(ss[k]);
            if (target && store_redis_pos_cmp(store_redis_applied(ss[k]), *target) < 0)
                done = 0;
        }
        if (flag && !*flag)
            done = 0;
        if (done)
            return;
        usleep(1000);
    }
    ck_abort_msg("timed out waiting for the store");
}

/* deterministic features: dense for even i, sparse for odd i */
static void make_x(int i, double *x)
{
    struct util_rng g;
    util_rng_seed(&g, 1000 + (uint64_t)i);
    double n2 = 0;
    for (int k = 0; k < DIM; k++) {
        x[k] = (i % 2 == 0 || k % 5 == 0) ? util_rng_normal(&g) : 0.0;
        n2 += x[k] * x[k];
    }
    for (int k = 0; k < DIM; k++)
        x[k] /= sqrt(n2);
}

static double make_r(int i)
{
    return (double)((i * 37) % 11) / 10.0;
}

/* Independent reference: A = I + Σ x xᵀ, b = Σ (r − 1) x over given events. */
static void ref_sums(const int *idx, const int *arm, int n, int a, double *A, double *b)
{
    memset(A, 0, sizeof(double) * DIM * DIM);
    memset(b, 0, sizeof(double) * DIM);
    for (int k = 0; k < DIM; k++)
        A[k * DIM + k] = 1.0;
    double x[DIM];
    for (int j = 0; j < n; j++) {
        if (arm[j] != a)
            continue;
        make_x(idx[j], x);
        for (int p = 0; p < DIM; p++) {
            for (int q = 0; q < DIM; q++)
                A[p * DIM + q] += x[p] * x[q];
            b[p] += (make_r(idx[j]) - 1.0) * x[p];
        }
    }
}

static void assert_close(const double *u, const double *v, int n, double tol, const char *what)
{
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabs(u[i] - v[i]) <= tol * (1.0 + fabs(v[i])), "%s[%d]: %.17g vs %.17g", what,
                      i, u[i], v[i]);
}

static void assert_models_identical(struct model *p, struct model *q)
{
    for (int a = 0; a < NARMS; a++) {
        ck_assert_uint_eq(linucb_count(p->m[a]), linucb_count(q->m[a]));
        ck_assert(memcmp(linucb_A(p->m[a]), linucb_A(q->m[a]), sizeof(double) * DIM * DIM) == 0);
        ck_assert(memcmp(linucb_b(p->m[a]), linucb_b(q->m[a]), sizeof(double) * DIM) == 0);
    }
}

/* ---------- callbacks ---------- */

struct res {
    int done;
    int rc;
    int64_t seq;
    struct store_redis_pos pos;
    char id[STORE_ID_MAX], cid[STORE_ID_MAX], arm[STORE_NAME_MAX];
    double x[DIM];
    struct pref_weights w;
    double created, cost, lat;
    uint64_t client;
};

static void done_cb(int rc, int64_t seq, void *ud)
{
    struct res *r = ud;
    r->rc = rc;
    r->seq = seq;
    r->done = 1;
}

static void fb_cb(int rc, struct store_redis_pos pos, void *ud)
{
    struct res *r = ud;
    r->rc = rc;
    r->pos = pos;
    r->done = 1;
}

static void dec_cb(int rc, const struct store_decision *d, void *ud)
{
    struct res *r = ud;
    r->rc = rc;
    r->done = 1;
    if (rc == 0) {
        snprintf(r->id, sizeof r->id, "%s", d->id);
        snprintf(r->cid, sizeof r->cid, "%s", d->completion_id ? d->completion_id : "");
        snprintf(r->arm, sizeof r->arm, "%s", d->arm_name);
        memcpy(r->x, d->x, sizeof r->x);
        r->w = d->w;
        r->created = d->created_s;
        r->cost = d->cost_usd;
        r->lat = d->latency_ms;
        r->client = d->client;
    }
}

static int sync_get(store_redis *s, const char *id, struct res *r)
{
    memset(r, 0, sizeof *r);
    ck_assert_int_eq(store_redis_get_decision(s, id, dec_cb, r), 0);
    pump_until(&s, 1, &r->done, NULL);
    return r->rc;
}

static int sync_feedback(store_redis *s, const char *id, int i, int arm, struct res *r)
{
    double x[DIM];
    make_x(i, x);
    memset(r, 0, sizeof *r);
    int rc = store_redis_put_feedback(s, id, ARMS[arm], x, DIM, make_r(i), 1.7e9 + i, fb_cb, r);
    if (rc)
        return rc;
    pump_until(&s, 1, &r->done, NULL);
    return r->rc;
}

/* ---------- tests ---------- */

#define NEED_REDIS()                                                                               \
    do {                                                                                           \
        if (!have_redis()) {                                                                       \
            fprintf(stderr, "SKIP %s: redis-server not installed\n", __func__);                    \
            return;                                                                                \
        }                                                                                          \
    } while (0)

START_TEST(test_pos)
{
    struct store_redis_pos p;
    char buf[STORE_REDIS_POS_MAX];
    ck_assert_int_eq(store_redis_pos_parse("1700000000123-42", &p), 0);
    ck_assert_uint_eq(p.ms, 1700000000123ull);
    ck_assert_uint_eq(p.seq, 42);
    ck_assert_str_eq(store_redis_pos_format(p, buf), "1700000000123-42");
    ck_assert_int_eq(store_redis_pos_parse("5", &p), 0);
    ck_assert_uint_eq(p.ms, 5);
    ck_assert_uint_eq(p.seq, 0);
    ck_assert_int_eq(store_redis_pos_parse("", &p), BD_ERR_INVALID);
    ck_assert_int_eq(store_redis_pos_parse("1-x", &p), BD_ERR_INVALID);
    ck_assert_int_eq(store_redis_pos_parse("-1", &p), BD_ERR_INVALID);
    struct store_redis_pos a = {5, 9}, b = {6, 0}, c = {6, 1};
    ck_assert_int_lt(store_redis_pos_cmp(a, b), 0);
    ck_assert_int_lt(store_redis_pos_cmp(b, c), 0);
    ck_assert_int_gt(store_redis_pos_cmp(c, a), 0);
    ck_assert_int_eq(store_redis_pos_cmp(c, c), 0);
}
END_TEST

START_TEST(test_open_errors)
{
    struct store_redis_opts o;
    store_redis_opts_default(&o);
    struct model md;
    model_init(&md);
    o.apply = apply_cb;
    o.apply_ud = &md;
    o.timeout_ms = 300;
    store_redis *s = NULL;
    char err[256];
    ck_assert_int_eq(store_redis_open("http://x", DIM, &o, &s, err, sizeof err), BD_ERR_INVALID);
    ck_assert_int_eq(store_redis_open("redis://h:99999", DIM, &o, &s, err, sizeof err),
                     BD_ERR_INVALID);
    ck_assert_int_eq(store_redis_open("redis://h:1/x", DIM, &o, &s, err, sizeof err),
                     BD_ERR_INVALID);
    /* nothing listens on a fresh free port */
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", free_port());
    ck_assert_int_eq(store_redis_open(url, DIM, &o, &s, err, sizeof err), BD_ERR_IO);
    ck_assert_ptr_null(s);
    o.apply = NULL;
    ck_assert_int_eq(store_redis_open(url, DIM, &o, &s, err, sizeof err), BD_ERR_INVALID);
    model_free(&md);
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 0);
    o.apply = apply_cb;
    ck_assert_int_eq(store_redis_open(r.url, DIM, &o, &s, err, sizeof err), 0);
    store_redis_close(s);
    /* the same Redis with another dim is refused, naming both */
    s = NULL;
    ck_assert_int_eq(store_redis_open(r.url, DIM * 2, &o, &s, err, sizeof err), BD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "dim=16"));
    ck_assert_ptr_null(s);
    rs_destroy(&r);
}
END_TEST

START_TEST(test_decision_roundtrip_ttl)
{
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 0);
    struct model md;
    model_init(&md);
    store_redis *s = open_replica(&r, &md, 1.0, 1);
    double x[DIM];
    make_x(3, x); /* sparse form */
    struct store_decision d = {"req-1",
                               NULL,
                               "mid",
                               x,
                               {.quality = 0.6, .cost = 0.3, .latency = 0.1},
                               1700000000.25,
                               0.0012,
                               840.5,
                               0xdeadbeefcafef00dull};
    struct res res = {0};
    ck_assert_int_eq(store_redis_put_decision(s, &d, done_cb, &res), 0);
    pump_until(&s, 1, &res.done, NULL);
    ck_assert_int_eq(res.rc, 0);
    /* TTL set in Redis (independent check) */
    long long pttl = rint_cmd(&r, "PTTL {banditd}:d:%s", "req-1");
    ck_assert_int_gt(pttl, 0);
    ck_assert_int_le(pttl, 1000);

    ck_assert_int_eq(sync_get(s, "req-1", &res), 0);
    ck_assert_str_eq(res.id, "req-1");
    ck_assert_str_eq(res.arm, "mid");
    ck_assert_str_eq(res.cid, "");
    ck_assert(memcmp(res.x, x, sizeof x) == 0);
    ck_assert(res.w.quality == 0.6 && res.w.cost == 0.3 && res.w.latency == 0.1);
    ck_assert_int_eq(res.w.has_tolerance, 0);
    ck_assert(res.created == 1700000000.25 && res.cost == 0.0012 && res.lat == 840.5);
    ck_assert_uint_eq(res.client, 0xdeadbeefcafef00dull);

    /* completion id maps to the request id; cost/latency updated */
    ck_assert_int_eq(store_redis_complete_decision(s, "req-1", "chatcmpl-9", 0.5, 99.0), 0);
    ck_assert_int_eq(sync_get(s, "chatcmpl-9", &res), 0);
    ck_assert_str_eq(res.id, "req-1");
    ck_assert_str_eq(res.cid, "chatcmpl-9");
    ck_assert(res.cost == 0.5 && res.lat == 99.0);
    ck_assert_int_eq(sync_get(s, "nope", &res), BD_ERR_NOTFOUND);

    /* dense form, tolerance preference, then expiry */
    make_x(4, x);
    d.id = "req-2";
    d.w.has_tolerance = 1;
    d.w.tolerance = 0.05;
    res.done = 0;
    ck_assert_int_eq(store_redis_put_decision(s, &d, done_cb, &res), 0);
    pump_until(&s, 1, &res.done, NULL);
    ck_assert_int_eq(sync_get(s, "req-2", &res), 0);
    ck_assert(memcmp(res.x, x, sizeof x) == 0);
    ck_assert(res.w.has_tolerance == 1 && res.w.tolerance == 0.05);
    usleep(1200 * 1000);
    ck_assert_int_eq(sync_get(s, "req-1", &res), BD_ERR_NOTFOUND);
    ck_assert_int_eq(sync_get(s, "chatcmpl-9", &res), BD_ERR_NOTFOUND);
    ck_assert_int_eq(sync_get(s, "req-2", &res), BD_ERR_NOTFOUND);

    /* invalid input is refused at enqueue */
    d.id = "";
    ck_assert_int_eq(store_redis_put_decision(s, &d, NULL, NULL), BD_ERR_INVALID);
    x[0] = NAN;
    d.id = "req-3";
    ck_assert_int_eq(store_redis_put_decision(s, &d, NULL, NULL), BD_ERR_INVALID);
    store_redis_close(s);
    model_free(&md);
    rs_destroy(&r);
}
END_TEST

/* A lookup on replica B that arrives before replica A's (asynchronous)
 * decision write still finds it: B looks again for lookup_wait_ms. */
START_TEST(test_lookup_waits_for_late_decision)
{
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 0);
    static struct model ma, mb;
    model_init(&ma);
    model_init(&mb);
    /* B waits up to 5 s, so a loaded machine cannot delay A's write past it;
     * the write is issued only after B's first lookup has missed. */
    store_redis *sa = open_replica(&r, &ma, 60, 0), *sb = open_replica_wait(&r, &mb, 60, 0, 5000);
    struct res got = {0};
    ck_assert_int_eq(store_redis_get_decision(sb, "late-1", dec_cb, &got), 0);
    usleep(60 * 1000); /* B's first lookup has found nothing by now */
    store_redis_dispatch(sb);
    ck_assert_int_eq(got.done, 0);
    double x[DIM];
    make_x(2, x);
    struct store_decision d = {"late-1", NULL, "strong", x, {.quality = 1}, 5.0, 0, 0, 7};
    ck_assert_int_eq(store_redis_put_decision(sa, &d, NULL, NULL), 0);
    store_redis *both[2] = {sa, sb};
    pump_until(both, 2, &got.done, NULL);
    ck_assert_int_eq(got.rc, 0);
    ck_assert_str_eq(got.arm, "strong");
    ck_assert(memcmp(got.x, x, sizeof x) == 0);
    store_redis_close(sa);
    store_redis_close(sb);
    model_free(&ma);
    model_free(&mb);
    rs_destroy(&r);
}
END_TEST

/* Two replicas, each owned by its own "loop" thread, race to give feedback
 * on the same request ids: exactly one wins each id. */
struct racer {
    store_redis *s;
    int n, wins, dups, other;
    int offset;
};

static void *race_main(void *arg)
{
    struct racer *rc = arg;
    enum { N = 200 };
    static __thread struct res res[N];
    double x[DIM];
    int submitted = 0;
    for (int k = 0; k < N; k++) {
        int i = (k + rc->offset) % N; /* different orders */
        char id[32];
        snprintf(id, sizeof id, "race-%d", i);
        make_x(i, x);
        memset(&res[i], 0, sizeof res[i]);
        ck_assert_int_eq(store_redis_put_feedback(rc->s, id, ARMS[i % NARMS], x, DIM, make_r(i),
                                                  1.0, fb_cb, &res[i]),
                         0);
        submitted++;
        if (k % 16 == 0)
            store_redis_dispatch(rc->s);
    }
    for (int t = 0; t < 15000; t++) {
        store_redis_dispatch(rc->s);
        int all = 1;
        for (int i = 0; i < N; i++)
            all &= res[i].done;
        if (all)
            break;
        usleep(1000);
    }
    for (int i = 0; i < N; i++) {
        if (!res[i].done)
            rc->other++;
        else if (res[i].rc == 0)
            rc->wins++;
        else if (res[i].rc == BD_ERR_EXISTS)
            rc->dups++;
        else
            rc->other++;
    }
    rc->n = submitted;
    return NULL;
}

START_TEST(test_feedback_exactly_once_concurrent)
{
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 0);
    static struct model ma, mb;
    model_init(&ma);
    model_init(&mb);
    store_redis *sa = open_replica(&r, &ma, 60, 0), *sb = open_replica(&r, &mb, 60, 0);
    struct racer ra = {.s = sa, .offset = 0}, rb = {.s = sb, .offset = 100};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, race_main, &ra);
    pthread_create(&tb, NULL, race_main, &rb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ck_assert_int_eq(ra.other + rb.other, 0);
    ck_assert_int_eq(ra.wins + rb.wins, 200);
    ck_assert_int_eq(ra.dups + rb.dups, 200);
    ck_assert_int_eq(rint_cmd(&r, "XLEN %s", "{banditd}:feedback"), 200);
    /* a later lookup of a decided id says "feedback already given" */
    struct res res;
    ck_assert_int_eq(sync_get(sa, "race-7", &res), BD_ERR_EXISTS);
    ck_assert_int_eq(sync_feedback(sb, "race-7", 7, 7 % NARMS, &res), BD_ERR_EXISTS);
    store_redis_close(sa);
    store_redis_close(sb);
    model_free(&ma);
    model_free(&mb);
    rs_destroy(&r);
}
END_TEST

/* Feedback given through two replicas is applied by both, in the same order,
 * to bit-identical statistics equal to the independent sums. The accepting
 * replica does not apply at ack time, only from the stream. */
START_TEST(test_apply_order_identical)
{
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 0);
    static struct model ma, mb;
    model_init(&ma);
    model_init(&mb);
    store_redis *sa = open_replica(&r, &ma, 60, 1), *sb = open_replica(&r, &mb, 60, 1);
    store_redis *both[2] = {sa, sb};
    enum { N = 300 };
    static struct res res[N];
    int idx[N], arm[N];
    double x[DIM];
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "ord-%d", i);
        idx[i] = i;
        arm[i] = (i * 7) % NARMS;
        make_x(i, x);
        ck_assert_int_eq(store_redis_put_feedback(both[i % 2], id, ARMS[arm[i]], x, DIM, make_r(i),
                                                  1.0, fb_cb, &res[i]),
                         0);
    }
    /* not applied at ack: before any dispatch, nothing is in the models */
    ck_assert_uint_eq(ma.applied + mb.applied, 0);
    struct store_redis_pos last = {0, 0};
    for (int i = 0; i < N; i++) {
        pump_until(both, 2, &res[i].done, NULL);
        ck_assert_int_eq(res[i].rc, 0);
        if (store_redis_pos_cmp(res[i].pos, last) > 0)
            last = res[i].pos;
    }
    pump_until(both, 2, NULL, &last);
    ck_assert_uint_eq(ma.applied, N);
    ck_assert_uint_eq(mb.applied, N);
    for (int i = 0; i < N; i++)
        ck_assert_str_eq(ma.order[i], mb.order[i]);
    assert_models_identical(&ma, &mb);
    double A[DIM * DIM], b[DIM];
    for (int a = 0; a < NARMS; a++) {
        ref_sums(idx, arm, N, a, A, b);
        assert_close(linucb_A(ma.m[a]), A, DIM * DIM, 1e-12, "A");
        assert_close(linucb_b(ma.m[a]), b, DIM, 1e-12, "b");
    }
    struct store_redis_stats st;
    store_redis_get_stats(sa, &st);
    ck_assert_uint_eq(st.events_applied, N);
    ck_assert_uint_eq(st.events_bad, 0);
    store_redis_close(sa);
    store_redis_close(sb);
    model_free(&ma);
    model_free(&mb);
    rs_destroy(&r);
}
END_TEST

struct seen {
    int n;
    char name[NARMS][STORE_NAME_MAX];
    uint64_t pulls[NARMS], n_upd[NARMS];
    double reward_sum[NARMS], lat[NARMS];
};

static int seen_cb(const struct store_arm_state *a, void *ud)
{
    struct seen *s = ud;
    ck_assert_int_lt(s->n, NARMS);
    snprintf(s->name[s->n], STORE_NAME_MAX, "%s", a->arm_name);
    s->pulls[s->n] = a->pulls;
    s->n_upd[s->n] = a->n;
    s->reward_sum[s->n] = a->reward_sum;
    s->lat[s->n] = a->latency_ms;
    s->n++;
    return 0;
}

/* Snapshot after N1 events, N2 more, trim: a fresh replica = snapshot + the
 * tail gives exactly the statistics of the replica that saw everything. */
START_TEST(test_snapshot_replay_trim)
{
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 0);
    static struct model ma, mc, md2;
    model_init(&ma);
    store_redis *sa = open_replica(&r, &ma, 60, 1);
    enum { N1 = 120, N2 = 80 };
    struct res res;
    for (int i = 0; i < N1; i++) {
        char id[32];
        snprintf(id, sizeof id, "s-%d", i);
        ck_assert_int_eq(sync_feedback(sa, id, i, i % NARMS, &res), 0);
    }
    struct store_redis_pos p1 = res.pos;
    pump_until(&sa, 1, NULL, &p1);
    /* snapshot every arm with counters */
    struct store_arm_state st[NARMS];
    for (int a = 0; a < NARMS; a++) {
        memset(&st[a], 0, sizeof st[a]);
        st[a].arm_name = ARMS[a];
        st[a].A = linucb_A(ma.m[a]);
        st[a].b = linucb_b(ma.m[a]);
        st[a].n = linucb_count(ma.m[a]);
        st[a].pulls = 10 + (uint64_t)a;
        st[a].reward_sum = 0.25 * a;
        st[a].latency_ms = 100.5;
    }
    struct res sres = {0};
    ck_assert_int_eq(store_redis_put_snapshot(sa, st, NARMS, done_cb, &sres), 0);
    pump_until(&sa, 1, &sres.done, NULL);
    ck_assert_int_eq(sres.rc, 0);
    for (int i = N1; i < N1 + N2; i++) {
        char id[32];
        snprintf(id, sizeof id, "s-%d", i);
        ck_assert_int_eq(sync_feedback(sa, id, i, i % NARMS, &res), 0);
    }
    struct store_redis_pos p2 = res.pos;
    pump_until(&sa, 1, NULL, &p2);
    /* heartbeats are fresh and at p2; trim cuts behind the snapshot */
    struct res tres = {0};
    ck_assert_int_eq(store_redis_trim(sa, done_cb, &tres), 0);
    pump_until(&sa, 1, &tres.done, NULL);
    ck_assert_int_eq(tres.rc, 0);
    ck_assert_int_eq(tres.seq, N1 - 1); /* every entry before the snapshot's last */
    ck_assert_int_eq(rint_cmd(&r, "XLEN %s", "{banditd}:feedback"), N2 + 1);

    /* a fresh replica: loads the snapshot, replays only the tail */
    model_init(&mc);
    store_redis *sc = open_replica(&r, &mc, 60, 1);
    pump_until(&sc, 1, NULL, &p2);
    ck_assert_uint_eq(mc.applied, N2);
    assert_models_identical(&ma, &mc);
    for (int a = 0; a < NARMS; a++)
        assert_close(linucb_theta(mc.m[a]), linucb_theta(ma.m[a]), DIM, 1e-9, "theta");
    struct store_redis_stats sst;
    store_redis_get_stats(sc, &sst);
    ck_assert_uint_eq(sst.events_skipped, 0); /* it starts after the snapshots' position */
    ck_assert_int_eq(sst.gap, 0);

    /* per-arm positions: re-snapshot only "cheap" (now at p2); a fresh replica
     * starts at the oldest position and skips cheap's events it already has */
    st[0].A = linucb_A(ma.m[0]);
    st[0].b = linucb_b(ma.m[0]);
    st[0].n = linucb_count(ma.m[0]);
    memset(&sres, 0, sizeof sres);
    ck_assert_int_eq(store_redis_put_snapshot(sa, st, 1, done_cb, &sres), 0);
    pump_until(&sa, 1, &sres.done, NULL);
    ck_assert_int_eq(sres.rc, 0);
    static struct model me;
    model_init(&me);
    store_redis *se = open_replica(&r, &me, 60, 1);
    pump_until(&se, 1, NULL, &p2);
    assert_models_identical(&ma, &me);
    int cheap_tail = 0;
    for (int i = N1; i < N1 + N2; i++)
        cheap_tail += i % NARMS == 0;
    store_redis_get_stats(se, &sst);
    ck_assert_uint_eq(sst.events_skipped, (uint64_t)cheap_tail);
    ck_assert_uint_eq(me.applied, (uint64_t)(N2 - cheap_tail));
    store_redis_close(se);
    model_free(&me);
    /* and the counters came back, in name order */
    model_init(&md2);
    store_redis *sd = open_replica(&r, &md2, 60, 0);
    struct seen seen = {0};
    ck_assert_int_eq(store_redis_load_model(sd, seen_cb, &seen), 0);
    ck_assert_int_eq(seen.n, NARMS);
    for (int a = 0; a < NARMS; a++) {
        ck_assert_str_eq(seen.name[a], ARMS[a]); /* cheap < mid < strong */
        ck_assert_uint_eq(seen.pulls[a], 10 + (uint64_t)a);
        ck_assert(seen.reward_sum[a] == 0.25 * a && seen.lat[a] == 100.5);
        uint64_t tail = 0;
        for (int i = N1; i < N1 + N2; i++)
            tail += i % NARMS == a;
        ck_assert_uint_eq(seen.n_upd[a], linucb_count(ma.m[a]) - (a == 0 ? 0 : tail));
    }
    store_redis_close(sd);
    model_free(&md2);
    store_redis_close(sa);
    store_redis_close(sc);
    model_free(&ma);
    model_free(&mc);
    rs_destroy(&r);
}
END_TEST

/* Redis killed mid-run (SIGKILL, appendfsync always): operations fail with an
 * error while it is down (never a false success); after a restart the
 * acknowledged feedback is all there, and a replica's reader catches up. */
START_TEST(test_redis_down_and_back)
{
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 1);
    static struct model ma, mb;
    model_init(&ma);
    model_init(&mb);
    store_redis *sa = open_replica(&r, &ma, 60, 1), *sb = open_replica(&r, &mb, 60, 1);
    enum { N = 60 };
    static int idx[3 * N], arm[3 * N];
    int nacked = 0;
    struct res res;
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "d-%d", i);
        ck_assert_int_eq(sync_feedback(sa, id, i, i % NARMS, &res), 0);
        idx[nacked] = i;
        arm[nacked++] = i % NARMS;
    }
    rs_stop(&r, SIGKILL);
    /* while down: every feedback answer is an error, never 0 */
    int failures = 0;
    for (int i = N; i < 2 * N; i++) {
        char id[32];
        snprintf(id, sizeof id, "d-%d", i);
        int rc = sync_feedback(sa, id, i, i % NARMS, &res);
        ck_assert_msg(rc == BD_ERR_IO, "feedback while Redis is down returned %d", rc);
        failures++;
    }
    ck_assert_int_eq(failures, N);
    struct res dres = {0};
    double x[DIM];
    make_x(1, x);
    struct store_decision d = {"down-dec", NULL, "mid", x, {.quality = 1}, 1.0, 0, 0, 0};
    ck_assert_int_eq(store_redis_put_decision(sa, &d, done_cb, &dres), 0);
    pump_until(&sa, 1, &dres.done, NULL);
    ck_assert_int_eq(dres.rc, BD_ERR_IO);
    ck_assert_int_eq(sync_get(sb, "whatever", &res), BD_ERR_IO);
    struct store_redis_stats st;
    store_redis_get_stats(sb, &st);
    ck_assert_int_eq(st.reader_connected, 0);

    rs_start(&r, 1);
    /* the replica recovers on its own (back-off ≤ 2 s) */
    int rc = BD_ERR_IO;
    for (int t = 0; t < 100 && rc != 0; t++) {
        rc = sync_feedback(sa, "d-back", 2 * N, (2 * N) % NARMS, &res);
        if (rc)
            usleep(50000);
    }
    ck_assert_int_eq(rc, 0);
    idx[nacked] = 2 * N;
    arm[nacked++] = (2 * N) % NARMS;
    for (int i = 2 * N + 1; i < 3 * N; i++) {
        char id[32];
        snprintf(id, sizeof id, "d-%d", i);
        /* Replica B reconnects on its own back-off, independently of A: its
         * first call after the restart may still find it disconnected (an
         * error, never a false success), so retry that one like A's. */
        rc = sync_feedback(sb, id, i, i % NARMS, &res);
        for (int t = 0; t < 100 && rc == BD_ERR_IO && i == 2 * N + 1; t++) {
            usleep(50000);
            rc = sync_feedback(sb, id, i, i % NARMS, &res);
        }
        ck_assert_int_eq(rc, 0);
        idx[nacked] = i;
        arm[nacked++] = i % NARMS;
    }
    struct store_redis_pos last = res.pos;
    store_redis *both[2] = {sa, sb};
    pump_until(both, 2, NULL, &last);
    ck_assert_int_eq(rint_cmd(&r, "XLEN %s", "{banditd}:feedback"), nacked);
    ck_assert_uint_eq(ma.applied, (uint64_t)nacked);
    ck_assert_uint_eq(mb.applied, (uint64_t)nacked);
    assert_models_identical(&ma, &mb);
    double A[DIM * DIM], b[DIM];
    for (int a = 0; a < NARMS; a++) {
        ref_sums(idx, arm, nacked, a, A, b);
        assert_close(linucb_A(mb.m[a]), A, DIM * DIM, 1e-12, "A");
        assert_close(linucb_b(mb.m[a]), b, DIM, 1e-12, "b");
    }
    /* a feedback refused while down can be given now (it was not recorded) */
    ck_assert_int_eq(sync_feedback(sb, "d-70", 70, 70 % NARMS, &res), 0);
    store_redis_close(sa);
    store_redis_close(sb);
    model_free(&ma);
    model_free(&mb);
    rs_destroy(&r);
}
END_TEST

static void meta_field(const struct rsrv *r, const char *field, char *out, size_t outlen)
{
    redisContext *c = rconn(r);
    ck_assert_ptr_nonnull(c);
    redisReply *rep = redisCommand(c, "HGET {banditd}:meta %s", field);
    ck_assert_ptr_nonnull(rep);
    snprintf(out, outlen, "%s", rep->type == REDIS_REPLY_STRING ? rep->str : "");
    freeReplyObject(rep);
    redisFree(c);
}

/* router.text_weight is recorded in meta by the first replica ("%.17g"); a
 * replica with another value (even by one ulp) is refused and changes
 * nothing; a meta without it (older banditd) gets it recorded. */
START_TEST(test_text_weight_mismatch)
{
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 0);
    struct store_redis_opts o;
    store_redis_opts_default(&o);
    ck_assert(o.text_weight == 0.5);
    struct model md;
    model_init(&md);
    o.apply = apply_cb;
    o.apply_ud = &md;
    store_redis *s = NULL;
    char err[256], v[64];
    ck_assert_int_eq(store_redis_open(r.url, DIM, &o, &s, err, sizeof err), 0);
    store_redis_close(s);
    meta_field(&r, "text_weight", v, sizeof v);
    ck_assert_str_eq(v, "0.5");
    const double other[] = {1.0, nextafter(0.5, 1.0)};
    const char *const msg[] = {
        "store has text_weight=0.5, config says text_weight=1; use another prefix or delete "
        "the shared state",
        "config says text_weight=0.5000000000000001;"};
    for (int i = 0; i < 2; i++) {
        o.text_weight = other[i];
        s = NULL;
        ck_assert_int_eq(store_redis_open(r.url, DIM, &o, &s, err, sizeof err), BD_ERR_INVALID);
        ck_assert_ptr_null(s);
        ck_assert_msg(strstr(err, msg[i]) != NULL, "err: %s", err);
        meta_field(&r, "text_weight", v, sizeof v);
        ck_assert_str_eq(v, "0.5");
    }
    o.text_weight = 0;
    ck_assert_int_eq(store_redis_open(r.url, DIM, &o, &s, err, sizeof err), BD_ERR_INVALID);
    /* an older deployment: meta has dim only; the value is recorded */
    redisContext *c = rconn(&r);
    freeReplyObject(redisCommand(c, "HDEL {banditd}:meta text_weight"));
    o.text_weight = 1.0 / 3;
    ck_assert_int_eq(store_redis_open(r.url, DIM, &o, &s, err, sizeof err), 0);
    store_redis_close(s);
    meta_field(&r, "text_weight", v, sizeof v);
    ck_assert_str_eq(v, "0.33333333333333331");
    ck_assert(strtod(v, NULL) == 1.0 / 3);
    ck_assert_int_eq(store_redis_open(r.url, DIM, &o, &s, err, sizeof err), 0);
    store_redis_close(s);
    /* an unreadable value is corrupt state, not a mismatch */
    freeReplyObject(redisCommand(c, "HSET {banditd}:meta text_weight abc"));
    s = NULL;
    ck_assert_int_eq(store_redis_open(r.url, DIM, &o, &s, err, sizeof err), BD_ERR_CORRUPT);
    ck_assert_msg(strstr(err, "invalid text_weight 'abc'") != NULL, "err: %s", err);
    ck_assert_ptr_null(s);
    redisFree(c);
    model_free(&md);
    rs_destroy(&r);
}
END_TEST

/* A malformed stream entry is skipped and counted; later ones still apply. */
START_TEST(test_bad_entry_skipped)
{
    NEED_REDIS();
    struct rsrv r = {0};
    rs_start(&r, 0);
    static struct model ma;
    model_init(&ma);
    store_redis *sa = open_replica(&r, &ma, 60, 1);
    redisContext *c = rconn(&r);
    redisReply *rep =
        redisCommand(c, "XADD {banditd}:feedback * r bad a mid x %b v 0.5 t 1", "Dxx", (size_t)3);
    freeReplyObject(rep);
    redisFree(c);
    struct res res;
    ck_assert_int_eq(sync_feedback(sa, "good", 5, 1, &res), 0);
    pump_until(&sa, 1, NULL, &res.pos);
    ck_assert_uint_eq(ma.applied, 1);
    ck_assert_str_eq(ma.order[0], "good");
    struct store_redis_stats st;
    store_redis_get_stats(sa, &st);
    ck_assert_uint_eq(st.events_bad, 1);
    store_redis_close(sa);
    model_free(&ma);
    rs_destroy(&r);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("store_redis");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_pos);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_decision_roundtrip_ttl);
    tcase_add_test(tc, test_lookup_waits_for_late_decision);
    tcase_add_test(tc, test_feedback_exactly_once_concurrent);
    tcase_add_test(tc, test_apply_order_identical);
    tcase_add_test(tc, test_snapshot_replay_trim);
    tcase_add_test(tc, test_redis_down_and_back);
    tcase_add_test(tc, test_bad_entry_skipped);
    tcase_add_test(tc, test_text_weight_mismatch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    log_set_level(getenv("TEST_STORE_REDIS_LOG") ? LOG_DEBUG : LOG_ERROR);
    if (!have_redis())
        fprintf(stderr, "test_store_redis: redis-server not installed: Redis tests SKIPPED\n");
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
