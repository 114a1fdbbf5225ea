/* Unit tests for the store module (SQLite persistence, writer thread). */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "banditd/err.h"
#include "banditd/store.h"
#include "banditd/xblob.h"

#define DIM 8
#define TW 0.5 /* router.text_weight */

/* ---------- fixtures and helpers ---------- */

static char g_dir[64];
static char g_db[200];
static int g_pipe[2] = {-1, -1};

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", dir);
}

static void setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/test_store.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    snprintf(g_db, sizeof g_db, "%s/state.db", g_dir);
    ck_assert_int_eq(pipe2(g_pipe, O_NONBLOCK | O_CLOEXEC), 0);
}

static void teardown(void)
{
    rm_rf(g_dir);
    close(g_pipe[0]);
    close(g_pipe[1]);
}

/* The wake function: runs on the writer thread; signals the "loop" via a pipe. */
static void wake_pipe(void *ud)
{
    int fd = *(int *)ud;
    char c = 1;
    ssize_t w = write(fd, &c, 1); /* a full pipe is fine: a wake is pending */
    (void)w;
}

/* Wait up to ms for a wake; drains the pipe. Returns 1 when woken. */
static int wait_wake(int ms)
{
    struct pollfd p = {.fd = g_pipe[0], .events = POLLIN};
    int r = poll(&p, 1, ms);
    if (r <= 0)
        return 0;
    char buf[256];
    while (read(g_pipe[0], buf, sizeof buf) > 0) {
    }
    return 1;
}

static store *open_ok(int dim, size_t cap)
{
    store *s = NULL;
    char err[512] = "";
    int rc = store_open(g_db, dim, TW, 0, wake_pipe, &g_pipe[1], cap, &s, err, sizeof err);
    ck_assert_msg(rc == 0, "store_open: %d %s", rc, err);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Deterministic features: x_i = f(seed, i). */
static void make_x(double *x, int dim, int seed)
{
    for (int i = 0; i < dim; i++)
        x[i] = ((seed * 31 + i * 7) % 17 - 8) / 9.0 + seed * 1e-3;
}

struct ack {
    int calls;
    int rc;
    int64_t seq;
    pthread_t thread;
};

static void on_ack(int rc, int64_t seq, void *ud)
{
    struct ack *a = ud;
    a->calls++;
    a->rc = rc;
    a->seq = seq;
    a->thread = pthread_self();
}

static void drain(store *s)
{
    store_flush(s);
    store_dispatch(s);
}

static long count_rows(const char *sql)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open_v2(g_db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    long n = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0'; /* callers treat it as a string (strtok) */
    *len = (size_t)n;
    return buf;
}

/* store_export of g_db into g_dir/export.jsonl; its path goes to path. */
static void export_db(char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/export.jsonl", g_dir);
    FILE *out = fopen(path, "w");
    ck_assert_ptr_nonnull(out);
    char err[256] = "";
    ck_assert_msg(store_export(g_db, out, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(fclose(out), 0);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---------- open / create / reopen ---------- */

struct collected {
    int n;
    char ids[64][STORE_ID_MAX];
    char arms[64][STORE_NAME_MAX];
    double x[64][DIM];
    double created[64];
    double reward[64];
    int64_t seq[64];
    char completion[64][STORE_ID_MAX];
    double cost[64];
    uint64_t client[64];
};

static int collect_decision(const struct store_decision *d, void *ud)
{
    struct collected *c = ud;
    ck_assert_int_lt(c->n, 64);
    snprintf(c->ids[c->n], STORE_ID_MAX, "%s", d->id);
    snprintf(c->arms[c->n], STORE_NAME_MAX, "%s", d->arm_name);
    snprintf(c->completion[c->n], STORE_ID_MAX, "%s", d->completion_id);
    memcpy(c->x[c->n], d->x, sizeof c->x[0]);
    c->created[c->n] = d->created_s;
    c->cost[c->n] = d->cost_usd;
    c->client[c->n] = d->client;
    c->n++;
    return 0;
}

static int collect_feedback(const struct store_feedback *f, void *ud)
{
    struct collected *c = ud;
    ck_assert_int_lt(c->n, 64);
    snprintf(c->ids[c->n], STORE_ID_MAX, "%s", f->request_id);
    snprintf(c->arms[c->n], STORE_NAME_MAX, "%s", f->arm_name);
    memcpy(c->x[c->n], f->x, sizeof c->x[0]);
    c->reward[c->n] = f->reward;
    c->seq[c->n] = f->seq;
    c->n++;
    return 0;
}

static void put_decision(store *s, const char *id, const char *arm, int seed, double created)
{
    double x[DIM];
    make_x(x, DIM, seed);
    struct store_decision d = {.id = id,
                               .arm_name = arm,
                               .x = x,
                               .w = {0.7, 0.3, 0.0},
                               .created_s = created,
                               .client = 0xfedcba9876543210ull};
    ck_assert_int_eq(store_put_decision(s, &d, NULL, NULL), 0);
}

START_TEST(test_create_and_reopen)
{
    ck_assert(!exists(g_db));
    store *s = open_ok(DIM, 64);
    ck_assert(exists(g_db));
    ck_assert_int_eq(store_dim(s), DIM);
    put_decision(s, "d1", "cheap", 1, 1000.0);
    put_decision(s, "d2", "strong", 2, 1001.0);
    ck_assert_int_eq(store_complete_decision(s, "d2", "chatcmpl-2", 0.25, 120.0), 0);
    double x[DIM];
    make_x(x, DIM, 1);
    struct ack a = {0};
    ck_assert_int_eq(store_put_feedback(s, "d1", "cheap", x, DIM, 0.75, 1002.0, on_ack, &a), 0);
    drain(s);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.rc, 0);
    ck_assert_int_gt(a.seq, 0);
    store_close(s);

    s = open_ok(DIM, 64);
    struct collected *c = calloc(1, sizeof *c);
    /* d1 has feedback: only d2 is pending */
    ck_assert_int_eq(store_load_decisions(s, 1010.0, 100.0, collect_decision, c), 0);
    ck_assert_int_eq(c->n, 1);
    ck_assert_str_eq(c->ids[0], "d2");
    ck_assert_str_eq(c->arms[0], "strong");
    ck_assert_str_eq(c->completion[0], "chatcmpl-2");
    ck_assert(c->cost[0] == 0.25);
    ck_assert(c->created[0] == 1001.0);
    ck_assert(c->client[0] == 0xfedcba9876543210ull);
    make_x(x, DIM, 2);
    ck_assert_int_eq(memcmp(c->x[0], x, sizeof x), 0);

    memset(c, 0, sizeof *c);
    ck_assert_int_eq(store_load_feedback_after(s, NULL, 0, collect_feedback, c), 0);
    ck_assert_int_eq(c->n, 1);
    ck_assert_str_eq(c->ids[0], "d1");
    ck_assert(c->reward[0] == 0.75);
    ck_assert_int_eq(c->seq[0], a.seq);
    make_x(x, DIM, 1);
    ck_assert_int_eq(memcmp(c->x[0], x, sizeof x), 0);
    free(c);
    store_close(s);
}
END_TEST

START_TEST(test_invalid_args)
{
    store *s = NULL;
    char err[256];
    ck_assert_int_eq(store_open(g_db, 0, TW, 0, NULL, NULL, 8, &s, err, sizeof err),
                     BD_ERR_INVALID);
    ck_assert_int_eq(store_open(g_db, DIM, TW, 0, NULL, NULL, 0, &s, err, sizeof err),
                     BD_ERR_INVALID);
    ck_assert_ptr_null(s);
    s = open_ok(DIM, 8);
    double x[DIM];
    make_x(x, DIM, 3);
    struct ack a = {0};
    ck_assert_int_eq(store_put_feedback(s, "id", "arm", x, DIM + 1, 1, 0, on_ack, &a),
                     BD_ERR_INVALID);
    ck_assert_int_eq(store_put_feedback(s, "", "arm", x, DIM, 1, 0, on_ack, &a), BD_ERR_INVALID);
    ck_assert_int_eq(store_put_feedback(s, "id", "arm", x, DIM, 1, 0, NULL, NULL), BD_ERR_INVALID);
    char longid[STORE_ID_MAX + 1];
    memset(longid, 'a', STORE_ID_MAX);
    longid[STORE_ID_MAX] = '\0';
    ck_assert_int_eq(store_put_feedback(s, longid, "arm", x, DIM, 1, 0, on_ack, &a),
                     BD_ERR_INVALID);
    x[2] = 0.0 / 0.0;
    ck_assert_int_eq(store_put_feedback(s, "id", "arm", x, DIM, 1, 0, on_ack, &a), BD_ERR_INVALID);
    drain(s);
    ck_assert_int_eq(a.calls, 0); /* failed enqueues never fire */
    store_close(s);
}
END_TEST

/* ---------- refusing bad files ---------- */

static void write_bytes(const char *path, const unsigned char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* store_open with text weight tw fails with want_rc and want_msg, and leaves
 * the file byte for byte as it was. */
static void expect_refused_tw(double tw, int want_rc, const char *want_msg)
{
    size_t len0 = 0, len1 = 0;
    char *before = read_file(g_db, &len0);
    ck_assert_ptr_nonnull(before);
    store *s = (store *)1;
    char err[512] = "";
    int rc = store_open(g_db, DIM, tw, 0, NULL, NULL, 8, &s, err, sizeof err);
    ck_assert_int_eq(rc, want_rc);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err, want_msg) != NULL, "message '%s' lacks '%s'", err, want_msg);
    char *after = read_file(g_db, &len1);
    ck_assert_uint_eq(len0, len1);
    ck_assert_int_eq(memcmp(before, after, len0), 0);
    free(before);
    free(after);
}

static void expect_refused(int want_rc, const char *want_msg)
{
    expect_refused_tw(TW, want_rc, want_msg);
}

START_TEST(test_garbage_file_is_corrupt)
{
    unsigned char junk[10000];
    uint32_t v = 12345;
    for (size_t i = 0; i < sizeof junk; i++) {
        v = v * 1103515245u + 12345u;
        junk[i] = (unsigned char)(v >> 16);
    }
    write_bytes(g_db, junk, sizeof junk);
    expect_refused(BD_ERR_CORRUPT, "state.db");
}
END_TEST

START_TEST(test_empty_file_is_corrupt)
{
    write_bytes(g_db, (const unsigned char *)"", 0);
    expect_refused(BD_ERR_CORRUPT, "not a banditd database");
}
END_TEST

START_TEST(test_foreign_sqlite_is_corrupt)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    ck_assert_int_eq(
        sqlite3_exec(db, "CREATE TABLE t(a); INSERT INTO t VALUES(1);", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    expect_refused(BD_ERR_CORRUPT, "not a banditd database");
}
END_TEST

START_TEST(test_damaged_page_is_corrupt)
{
    store *s = open_ok(DIM, 256);
    char id[32];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "dec-%d", i);
        put_decision(s, id, "cheap", i, 1000.0 + i);
    }
    drain(s);
    store_close(s); /* checkpoints the WAL into the main file */
    char wal[320];
    snprintf(wal, sizeof wal, "%s-wal", g_db);
    ck_assert(!exists(wal));
    size_t len = 0;
    char *buf = read_file(g_db, &len);
    ck_assert_uint_gt(len, 6 * 4096);
    /* overwrite the whole of page 5 (inside the decisions b-tree) */
    memset(buf + 4 * 4096, 0x5a, 4096);
    write_bytes(g_db, (unsigned char *)buf, len);
    free(buf);
    expect_refused(BD_ERR_CORRUPT, "corrupt");
}
END_TEST

START_TEST(test_orphan_wal_refused)
{
    char wal[240];
    snprintf(wal, sizeof wal, "%s-wal", g_db);
    write_bytes(wal, (const unsigned char *)"stale", 5);
    store *s = NULL;
    char err[512] = "";
    ck_assert_int_eq(store_open(g_db, DIM, TW, 0, NULL, NULL, 8, &s, err, sizeof err),
                     BD_ERR_CORRUPT);
    ck_assert(!exists(g_db));
    ck_assert_ptr_nonnull(strstr(err, "-wal"));
}
END_TEST

START_TEST(test_dim_mismatch)
{
    store *s = open_ok(DIM, 8);
    store_close(s);
    char err[512] = "";
    s = NULL;
    ck_assert_int_eq(store_open(g_db, 2 * DIM, TW, 0, NULL, NULL, 8, &s, err, sizeof err),
                     BD_ERR_INVALID);
    ck_assert_ptr_null(s);
    ck_assert_str_eq(err, "store has dim=8, config says dim=16; use --reset-state or migrate");
}
END_TEST

/* sql with its one parameter bound to key, on a read-only connection *db of
 * the test database (the caller finalizes and closes). */
static sqlite3_stmt *query_key(sqlite3 **db, const char *sql, const char *key)
{
    *db = NULL;
    ck_assert_int_eq(sqlite3_open_v2(g_db, db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(*db, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    return st;
}

/* The meta value of key ("" when absent). */
static void meta_value(const char *key, char *out, size_t outlen)
{
    sqlite3 *db;
    sqlite3_stmt *st = query_key(&db, "SELECT value FROM meta WHERE key=?", key);
    out[0] = '\0';
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(out, outlen, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* text_weight is recorded at creation and must match exactly at open; a
 * database without it (older banditd) is accepted and gets it recorded. */
START_TEST(test_text_weight_mismatch)
{
    char v[64];
    store *s = open_ok(DIM, 8);
    store_close(s);
    meta_value("text_weight", v, sizeof v);
    ck_assert_str_eq(v, "0.5");
    s = open_ok(DIM, 8); /* same value: fine */
    store_close(s);
    expect_refused_tw(1.0, BD_ERR_INVALID,
                      "store has text_weight=0.5, config says text_weight=1; use --reset-state");
    /* exact comparison: one ulp off is another value, and the message shows it */
    expect_refused_tw(nextafter(TW, 1.0), BD_ERR_INVALID,
                      "config says text_weight=0.5000000000000001;");
    meta_value("text_weight", v, sizeof v);
    ck_assert_str_eq(v, "0.5");

    /* a database written by an older banditd: no key; opens and gets ours */
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, "DELETE FROM meta WHERE key='text_weight'", 0, 0, 0), 0);
    sqlite3_close(db);
    meta_value("text_weight", v, sizeof v);
    ck_assert_str_eq(v, "");
    char err[512] = "";
    s = NULL;
    ck_assert_int_eq(store_open(g_db, DIM, 0.3, 0, NULL, NULL, 8, &s, err, sizeof err), 0);
    store_close(s);
    meta_value("text_weight", v, sizeof v);
    ck_assert_str_eq(v, "0.29999999999999999"); /* %.17g */
    expect_refused_tw(TW, BD_ERR_INVALID, "store has text_weight=0.3, config says text_weight=0.5");
    s = NULL;
    ck_assert_int_eq(store_open(g_db, DIM, 0.3, 0, NULL, NULL, 8, &s, err, sizeof err), 0);
    store_close(s);

    /* a reset starts over with the new value */
    ck_assert_int_eq(store_open(g_db, DIM, 1.0, STORE_RESET, NULL, NULL, 8, &s, err, sizeof err),
                     0);
    store_close(s);
    meta_value("text_weight", v, sizeof v);
    ck_assert_str_eq(v, "1");

    /* an unreadable stored value is corruption, not a mismatch */
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    ck_assert_int_eq(
        sqlite3_exec(db, "UPDATE meta SET value='abc' WHERE key='text_weight'", 0, 0, 0), 0);
    sqlite3_close(db);
    expect_refused_tw(1.0, BD_ERR_CORRUPT, "invalid text_weight 'abc'");
    /* and a non-positive configured value is an invalid argument */
    ck_assert_int_eq(store_open(g_db, DIM, 0.0, 0, NULL, NULL, 8, &s, err, sizeof err),
                     BD_ERR_INVALID);
    ck_assert_ptr_null(s);
}
END_TEST

START_TEST(test_reset_wipes)
{
    write_bytes(g_db, (const unsigned char *)"not a database at all, really", 29);
    store *s = NULL;
    char err[512] = "";
    ck_assert_int_eq(store_open(g_db, DIM, TW, STORE_RESET, NULL, NULL, 8, &s, err, sizeof err), 0);
    struct collected *c = calloc(1, sizeof *c);
    ck_assert_int_eq(store_load_feedback_after(s, NULL, 0, collect_feedback, c), 0);
    ck_assert_int_eq(c->n, 0);
    free(c);
    store_close(s);
    /* and a reset of a good store drops its rows */
    s = open_ok(DIM, 8);
    put_decision(s, "x1", "cheap", 1, 5.0);
    drain(s);
    store_close(s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions"), 1);
    ck_assert_int_eq(store_open(g_db, DIM, TW, STORE_RESET, NULL, NULL, 8, &s, err, sizeof err), 0);
    store_close(s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions"), 0);
}
END_TEST

/* ---------- feedback acknowledgements ---------- */

START_TEST(test_duplicate_feedback_exists)
{
    store *s = open_ok(DIM, 64);
    double x[DIM];
    make_x(x, DIM, 4);
    struct ack a1 = {0}, a2 = {0}, a3 = {0};
    ck_assert_int_eq(store_put_feedback(s, "r1", "cheap", x, DIM, 1.0, 1.0, on_ack, &a1), 0);
    drain(s);
    /* a duplicate in a later transaction */
    ck_assert_int_eq(store_put_feedback(s, "r1", "strong", x, DIM, 0.0, 2.0, on_ack, &a2), 0);
    drain(s);
    ck_assert_int_eq(a1.calls, 1);
    ck_assert_int_eq(a1.rc, 0);
    ck_assert_int_eq(a2.calls, 1);
    ck_assert_int_eq(a2.rc, BD_ERR_EXISTS);
    ck_assert_int_eq(a2.seq, 0);
    /* two with the same id queued back to back: exactly one wins */
    struct ack b1 = {0}, b2 = {0};
    ck_assert_int_eq(store_put_feedback(s, "r2", "cheap", x, DIM, 1.0, 3.0, on_ack, &b1), 0);
    ck_assert_int_eq(store_put_feedback(s, "r2", "cheap", x, DIM, 1.0, 3.0, on_ack, &b2), 0);
    ck_assert_int_eq(store_put_feedback(s, "r3", "cheap", x, DIM, 1.0, 3.0, on_ack, &a3), 0);
    drain(s);
    ck_assert_int_eq(b1.rc, 0);
    ck_assert_int_eq(b2.rc, BD_ERR_EXISTS);
    ck_assert_int_eq(a3.rc, 0);
    ck_assert_int_gt(a3.seq, b1.seq);
    store_close(s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback"), 3);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback WHERE request_id='r1' AND "
                                "arm_name='cheap' AND reward=1.0"),
                     1);
}
END_TEST

START_TEST(test_ack_only_via_dispatch_after_commit)
{
    store *s = open_ok(DIM, 64);
    double x[DIM];
    make_x(x, DIM, 5);
    struct ack a = {0};
    ck_assert_int_eq(store_put_feedback(s, "fb-1", "cheap", x, DIM, 0.5, 9.0, on_ack, &a), 0);
    ck_assert_msg(wait_wake(5000), "no wake within 5 s");
    /* woken: the row is committed and visible to an independent connection */
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback WHERE request_id='fb-1'"), 1);
    usleep(20000);
    ck_assert_int_eq(a.calls, 0); /* the writer never runs callbacks */
    ck_assert_uint_eq(store_dispatch(s), 1);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.rc, 0);
    ck_assert(pthread_equal(a.thread, pthread_self()));
    ck_assert_uint_eq(store_dispatch(s), 0);
    ck_assert_int_eq(a.calls, 1);
    store_close(s);
}
END_TEST

/* The writer blocks on a lock held by another connection, so the queue fills. */
START_TEST(test_queue_full_busy)
{
    enum { CAP = 4 };
    store *s = open_ok(DIM, CAP);
    sqlite3 *locker = NULL;
    ck_assert_int_eq(sqlite3_open(g_db, &locker), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(locker, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    double x[DIM];
    make_x(x, DIM, 6);
    struct ack acks[CAP + 3];
    memset(acks, 0, sizeof acks);
    char id[32];
    ck_assert_int_eq(store_put_feedback(s, "q0", "cheap", x, DIM, 1, 0, on_ack, &acks[0]), 0);
    /* wait until the writer took q0 (and is now stuck in BEGIN IMMEDIATE) */
    struct store_stats st;
    for (int i = 0; i < 2000; i++) {
        store_get_stats(s, &st);
        if (st.queue_depth == 0)
            break;
        usleep(1000);
    }
    ck_assert_uint_eq(st.queue_depth, 0);
    for (int i = 1; i <= CAP; i++) {
        snprintf(id, sizeof id, "q%d", i);
        ck_assert_int_eq(store_put_feedback(s, id, "cheap", x, DIM, 1, 0, on_ack, &acks[i]), 0);
    }
    ck_assert_int_eq(store_put_feedback(s, "qX", "cheap", x, DIM, 1, 0, on_ack, &acks[CAP + 1]),
                     BD_ERR_BUSY);
    ck_assert_int_eq(
        store_put_decision(s, &(struct store_decision){.id = "dX", .arm_name = "a", .x = x}, NULL,
                           NULL),
        BD_ERR_BUSY);
    store_get_stats(s, &st);
    ck_assert_uint_eq(st.rejected, 2);
    ck_assert_uint_eq(st.queue_depth, CAP);
    ck_assert_int_eq(sqlite3_exec(locker, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(locker);
    drain(s);
    for (int i = 0; i <= CAP; i++) {
        ck_assert_int_eq(acks[i].calls, 1);
        ck_assert_int_eq(acks[i].rc, 0);
    }
    ck_assert_int_eq(acks[CAP + 1].calls, 0);
    store_get_stats(s, &st);
    ck_assert_uint_ge(st.max_batch, CAP); /* q1..q4 went in one group commit */
    store_close(s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback"), CAP + 1);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback WHERE request_id='qX'"), 0);
}
END_TEST

/* ---------- snapshot + feedback-after restore ---------- */

/* Independent reference model: A = I + Σ x xᵀ, b = Σ (r − 1) x, in order. */
struct ref_model {
    double A[DIM * DIM];
    double b[DIM];
    uint64_t n;
};

static void ref_init(struct ref_model *m)
{
    memset(m, 0, sizeof *m);
    for (int i = 0; i < DIM; i++)
        m->A[i * DIM + i] = 1.0;
}

static void ref_apply(struct ref_model *m, const double *x, double r)
{
    for (int i = 0; i < DIM; i++) {
        for (int j = 0; j < DIM; j++)
            m->A[i * DIM + j] += x[i] * x[j];
        m->b[i] += (r - 1.0) * x[i];
    }
    m->n++;
}

struct restore_ctx {
    int n_arms;
    char names[4][STORE_NAME_MAX];
    struct ref_model m[4];
    int64_t seq[4];
    uint64_t pulls[4];
    int replayed;
    char replayed_ids[64][STORE_ID_MAX];
};

static int restore_arm(const struct store_arm_state *a, void *ud)
{
    struct restore_ctx *c = ud;
    ck_assert_int_lt(c->n_arms, 4);
    int k = c->n_arms++;
    snprintf(c->names[k], STORE_NAME_MAX, "%s", a->arm_name);
    memcpy(c->m[k].A, a->A, sizeof c->m[k].A);
    memcpy(c->m[k].b, a->b, sizeof c->m[k].b);
    c->m[k].n = a->n;
    c->seq[k] = a->feedback_seq;
    c->pulls[k] = a->pulls;
    return 0;
}

static int replay_fb(const struct store_feedback *f, void *ud)
{
    struct restore_ctx *c = ud;
    for (int k = 0; k < c->n_arms; k++) {
        if (strcmp(c->names[k], f->arm_name) == 0) {
            ck_assert_int_gt(f->seq, c->seq[k]); /* in seq order, after the snapshot */
            c->seq[k] = f->seq;
            ref_apply(&c->m[k], f->x, f->reward);
            snprintf(c->replayed_ids[c->replayed++], STORE_ID_MAX, "%s", f->request_id);
            return 0;
        }
    }
    ck_abort_msg("feedback for unknown arm %s", f->arm_name);
    return -1;
}

START_TEST(test_snapshot_restore)
{
    static const char *arms[2] = {"cheap", "strong"};
    struct ref_model *truth = calloc(2, sizeof *truth); /* all feedback applied */
    struct ref_model *at_snap = calloc(2, sizeof *at_snap);
    ref_init(&truth[0]);
    ref_init(&truth[1]);
    int64_t last_seq[2] = {0, 0};
    store *s = open_ok(DIM, 64);
    double x[DIM];
    char id[32];
    struct ack acks[40];
    memset(acks, 0, sizeof acks);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 10; i++) {
            int k = round * 10 + i;
            int arm = (k * 7) % 3 == 0;
            double r = (k % 4) / 3.0;
            make_x(x, DIM, k + 100);
            snprintf(id, sizeof id, "req-%d", k);
            ck_assert_int_eq(store_put_feedback(s, id, arms[arm], x, DIM, r, k, on_ack, &acks[k]),
                             0);
            drain(s);
            ck_assert_int_eq(acks[k].rc, 0);
            /* the "daemon" applies feedback at ack time and tracks seqs */
            ref_apply(&truth[arm], x, r);
            last_seq[arm] = acks[k].seq;
        }
        if (round < 2) { /* snapshots after rounds 0 and 1; round 2 is replayed */
            struct store_arm_state st[2];
            for (int a = 0; a < 2; a++) {
                at_snap[a] = truth[a];
                st[a] = (struct store_arm_state){.arm_name = arms[a],
                                                 .A = truth[a].A,
                                                 .b = truth[a].b,
                                                 .n = truth[a].n,
                                                 .feedback_seq = last_seq[a],
                                                 .pulls = 100u + (unsigned)round,
                                                 .taken_at = round};
            }
            struct ack sa = {0};
            ck_assert_int_eq(store_put_snapshot(s, st, 2, on_ack, &sa), 0);
            /* mutate the caller's copy: the snapshot was copied at call time */
            double saved = truth[0].A[0];
            truth[0].A[0] = 1e300;
            drain(s);
            truth[0].A[0] = saved;
            ck_assert_int_eq(sa.rc, 0);
        }
    }
    store_close(s);
    /* keep only the latest two snapshots per arm */
    ck_assert_int_eq(count_rows("SELECT count(*) FROM arm_stats"), 4);

    s = open_ok(DIM, 64);
    struct restore_ctx *c = calloc(1, sizeof *c);
    ck_assert_int_eq(store_load_model(s, restore_arm, c), 0);
    ck_assert_int_eq(c->n_arms, 2);
    ck_assert_str_eq(c->names[0], "cheap");
    ck_assert_str_eq(c->names[1], "strong");
    for (int a = 0; a < 2; a++) {
        ck_assert_uint_eq(c->pulls[a], 101);
        ck_assert_int_eq(memcmp(c->m[a].A, at_snap[a].A, sizeof at_snap[a].A), 0);
        ck_assert_int_eq(memcmp(c->m[a].b, at_snap[a].b, sizeof at_snap[a].b), 0);
    }
    for (int a = 0; a < 2; a++)
        ck_assert_int_eq(store_load_feedback_after(s, c->names[a], c->seq[a], replay_fb, c), 0);
    ck_assert_int_eq(c->replayed, 10); /* exactly round 2's rows */
    for (int a = 0; a < 2; a++) {
        ck_assert_uint_eq(c->m[a].n, truth[a].n);
        /* same operations in the same order: bit-identical */
        ck_assert_int_eq(memcmp(c->m[a].A, truth[a].A, sizeof truth[a].A), 0);
        ck_assert_int_eq(memcmp(c->m[a].b, truth[a].b, sizeof truth[a].b), 0);
        ck_assert_int_eq(c->seq[a], last_seq[a]);
    }
    for (int i = 0; i < c->replayed; i++) {
        int k = atoi(c->replayed_ids[i] + 4);
        ck_assert_int_ge(k, 20);
        ck_assert_int_lt(k, 30);
    }
    free(c);
    free(truth);
    free(at_snap);
    store_close(s);
}
END_TEST

/* ---------- purge ---------- */

START_TEST(test_purge_and_pending)
{
    store *s = open_ok(DIM, 64);
    put_decision(s, "old", "cheap", 1, 100.0);
    put_decision(s, "edge", "cheap", 2, 200.0);
    put_decision(s, "new", "cheap", 3, 250.0);
    put_decision(s, "taken", "cheap", 4, 260.0);
    double x[DIM];
    make_x(x, DIM, 4);
    struct ack a = {0};
    ck_assert_int_eq(store_put_feedback(s, "taken", "cheap", x, DIM, 1, 261, on_ack, &a), 0);
    drain(s);
    struct collected *c = calloc(1, sizeof *c);
    /* now=300, ttl=100: "edge" (exactly ttl old) is still live, "old" is expired */
    ck_assert_int_eq(store_load_decisions(s, 300.0, 100.0, collect_decision, c), 0);
    ck_assert_int_eq(c->n, 2);
    ck_assert_str_eq(c->ids[0], "edge");
    ck_assert_str_eq(c->ids[1], "new");
    ck_assert_int_eq(store_purge_expired(s, 300.0, 100.0), 0);
    drain(s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions"), 3);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions WHERE id='old'"), 0);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback"), 1); /* the log stays */
    free(c);
    store_close(s);
}
END_TEST

/* ---------- schema 2: features stored once ---------- */

START_TEST(test_features_once)
{
    store *s = open_ok(DIM, 64);
    double x[DIM], y[DIM];
    /* a: decision committed in an earlier transaction; b: decision and feedback
     * in the same transaction; c: no decision row (dropped); d: a decision
     * row whose x differs from the feedback's (never trusted blindly). */
    put_decision(s, "a", "cheap", 1, 100.0);
    drain(s);
    put_decision(s, "b", "cheap", 2, 101.0);
    put_decision(s, "d", "cheap", 4, 103.0);
    struct ack acks[4] = {{0}};
    const char *ids[4] = {"a", "b", "c", "d"};
    int seeds[4] = {1, 2, 3, 5};
    for (int i = 0; i < 4; i++) {
        make_x(x, DIM, seeds[i]);
        ck_assert_int_eq(
            store_put_feedback(s, ids[i], "strong", x, DIM, 0.25 * i, 200 + i, on_ack, &acks[i]),
            0);
    }
    drain(s);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(acks[i].rc, 0);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback WHERE x IS NULL"), 2);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback WHERE x IS NULL AND "
                                "request_id IN ('a','b')"),
                     2);
    /* Restore sees every feedback's own features, in seq order. */
    struct collected *c = calloc(1, sizeof *c);
    ck_assert_int_eq(store_load_feedback_after(s, NULL, 0, collect_feedback, c), 0);
    ck_assert_int_eq(c->n, 4);
    for (int i = 0; i < 4; i++) {
        make_x(y, DIM, seeds[i]);
        ck_assert_str_eq(c->ids[i], ids[i]);
        ck_assert_str_eq(c->arms[i], "strong");
        ck_assert_int_eq(c->seq[i], acks[i].seq);
        ck_assert_int_eq(memcmp(c->x[i], y, sizeof y), 0);
    }
    /* The TTL purge keeps decisions that hold a feedback's features. */
    ck_assert_int_eq(store_purge_expired(s, 1000.0, 10.0), 0);
    drain(s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions"), 3);
    /* Later purges cover the newer range: an unanswered decision created
     * after the first cutoff goes, answered ones stay, newer ones stay. */
    put_decision(s, "mid", "cheap", 6, 1500.0);
    put_decision(s, "mid-answered", "cheap", 7, 1501.0);
    put_decision(s, "recent", "cheap", 8, 1995.0);
    make_x(x, DIM, 7);
    struct ack a5 = {0};
    ck_assert_int_eq(store_put_feedback(s, "mid-answered", "cheap", x, DIM, 1, 1502, on_ack, &a5),
                     0);
    ck_assert_int_eq(store_purge_expired(s, 1600.0, 10.0), 0); /* cutoff 1590 */
    ck_assert_int_eq(store_purge_expired(s, 2000.0, 10.0), 0); /* cutoff 1990 */
    drain(s);
    ck_assert_int_eq(a5.rc, 0);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions"), 5);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions WHERE id = 'mid'"), 0);
    memset(c, 0, sizeof *c);
    ck_assert_int_eq(store_load_feedback_after(s, "strong", acks[0].seq, collect_feedback, c), 0);
    ck_assert_int_eq(c->n, 3);
    make_x(y, DIM, 2);
    ck_assert_int_eq(memcmp(c->x[0], y, sizeof y), 0);
    free(c);
    store_close(s);
}
END_TEST

/* A completion that follows its decision in the queue is folded into it. */
START_TEST(test_complete_folds)
{
    store *s = open_ok(DIM, 64);
    put_decision(s, "f1", "cheap", 1, 100.0);
    ck_assert_int_eq(store_complete_decision(s, "f1", "chatcmpl-1", 0.5, 12.0), 0);
    put_decision(s, "f2", "cheap", 2, 101.0);
    put_decision(s, "f3", "cheap", 3, 102.0);
    ck_assert_int_eq(store_complete_decision(s, "f2", "chatcmpl-2", 0.25, 7.0), 0); /* not last */
    ck_assert_int_eq(store_complete_decision(s, "f3", NULL, 0.125, 3.0), 0);
    /* 3 decisions + f2's separate update; one more for f1 or f3 when the
     * writer happened to take its decision before the completion came. */
    struct store_stats st;
    store_get_stats(s, &st);
    ck_assert_uint_ge(st.enqueued, 4);
    ck_assert_uint_le(st.enqueued, 6);
    /* Folding happens (the writer lingers 20 ms on fire-and-forget ops). */
    for (int i = 0; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof id, "g%d", i);
        put_decision(s, id, "cheap", i, 200.0 + i);
        ck_assert_int_eq(store_complete_decision(s, id, "c", 1.0, 1.0), 0);
    }
    store_get_stats(s, &st);
    ck_assert_uint_lt(st.enqueued, 6 + 40);
    drain(s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions WHERE id LIKE 'g%' AND "
                                "completion_id='c' AND cost_usd=1 AND latency_ms=1"),
                     20);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions WHERE id='f1' AND "
                                "completion_id='chatcmpl-1' AND cost_usd=0.5 AND latency_ms=12"),
                     1);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions WHERE id='f2' AND "
                                "completion_id='chatcmpl-2' AND cost_usd=0.25 AND latency_ms=7"),
                     1);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions WHERE id='f3' AND "
                                "completion_id IS NULL AND cost_usd=0.125 AND latency_ms=3"),
                     1);
    store_close(s);
}
END_TEST

/* A schema-1 database (as written by the previous release) is migrated on
 * open: rows, seqs and features kept, later feedback continues the seq. */
START_TEST(test_migrate_v1)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    double x[DIM];
    make_x(x, DIM, 7);
    char hex[DIM * 16 + 1];
    const unsigned char *xb = (const unsigned char *)x;
    for (size_t i = 0; i < sizeof x; i++)
        snprintf(hex + 2 * i, 3, "%02x", xb[i]);
    char sql[4096];
    snprintf(
        sql, sizeof sql,
        "PRAGMA journal_mode=WAL; PRAGMA application_id=%d; PRAGMA user_version=1; BEGIN;"
        "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE decisions(id TEXT PRIMARY KEY, completion_id TEXT, arm_name TEXT NOT NULL,"
        " x BLOB NOT NULL, w_q REAL NOT NULL, w_c REAL NOT NULL, w_l REAL NOT NULL,"
        " created_s REAL NOT NULL, cost_usd REAL NOT NULL DEFAULT 0,"
        " latency_ms REAL NOT NULL DEFAULT 0, client INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX decisions_created ON decisions(created_s);"
        "CREATE TABLE feedback(seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " request_id TEXT NOT NULL UNIQUE, arm_name TEXT NOT NULL, x BLOB NOT NULL,"
        " reward REAL NOT NULL, at_s REAL NOT NULL);"
        "CREATE INDEX feedback_arm ON feedback(arm_name, seq);"
        "CREATE TABLE arm_stats(id INTEGER PRIMARY KEY AUTOINCREMENT, arm_name TEXT NOT NULL,"
        " dim INTEGER NOT NULL, A BLOB NOT NULL, b BLOB NOT NULL, n INTEGER NOT NULL,"
        " feedback_seq INTEGER NOT NULL, pulls INTEGER NOT NULL, feedback INTEGER NOT NULL,"
        " reward_sum REAL NOT NULL, exp_completion_tokens REAL NOT NULL,"
        " latency_ms REAL NOT NULL, ttfb_ms REAL NOT NULL, usage_obs INTEGER NOT NULL,"
        " taken_at REAL NOT NULL);"
        "CREATE INDEX arm_stats_arm ON arm_stats(arm_name, id);"
        "INSERT INTO meta VALUES('schema_version','1'),('dim','%d'),('created','x');"
        "INSERT INTO feedback(seq, request_id, arm_name, x, reward, at_s)"
        " VALUES(41, 'old-1', 'cheap', X'%s', 0.5, 1.0);"
        "COMMIT;",
        0x42444231, DIM, hex);
    char *msg = NULL;
    ck_assert_msg(sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK, "%s", msg);
    sqlite3_close(db);

    store *s = open_ok(DIM, 64);
    ck_assert_int_eq(count_rows("PRAGMA user_version"), STORE_SCHEMA_VERSION);
    ck_assert_int_eq(count_rows("SELECT value FROM meta WHERE key='schema_version'"),
                     STORE_SCHEMA_VERSION);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM sqlite_master WHERE name IN "
                                "('feedback_arm','feedback_v1')"),
                     0);
    struct ack a = {0};
    put_decision(s, "new-1", "cheap", 8, 100.0);
    make_x(x, DIM, 8);
    ck_assert_int_eq(store_put_feedback(s, "new-1", "cheap", x, DIM, 1.0, 2.0, on_ack, &a), 0);
    drain(s);
    ck_assert_int_eq(a.rc, 0);
    ck_assert_int_eq(a.seq, 42);
    struct collected *c = calloc(1, sizeof *c);
    ck_assert_int_eq(store_load_feedback_after(s, "cheap", 0, collect_feedback, c), 0);
    ck_assert_int_eq(c->n, 2);
    ck_assert_int_eq(c->seq[0], 41);
    double y[DIM];
    make_x(y, DIM, 7);
    ck_assert_int_eq(memcmp(c->x[0], y, sizeof y), 0);
    ck_assert_int_eq(memcmp(c->x[1], x, sizeof x), 0);
    free(c);
    store_close(s);
    /* An unknown future schema is refused, the file untouched. */
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    ck_assert_int_eq(
        sqlite3_exec(db, "UPDATE meta SET value='99' WHERE key='schema_version'", 0, 0, 0), 0);
    sqlite3_close(db);
    store *s2 = NULL;
    char err[512] = "";
    ck_assert_int_eq(store_open(g_db, DIM, TW, 0, NULL, NULL, 8, &s2, err, sizeof err),
                     BD_ERR_INVALID);
    ck_assert_ptr_null(s2);
    ck_assert_msg(strstr(err, "schema version 99") != NULL, "%s", err);
}
END_TEST

/* ---------- export ---------- */

START_TEST(test_export_jsonl)
{
    store *s = open_ok(DIM, 64);
    put_decision(s, "e1", "cheap", 11, 10.0);
    put_decision(s, "e2", "strong \"quoted\"", 12, 11.0);
    ck_assert_int_eq(store_complete_decision(s, "e1", "cmpl-e1", 0.5, 42.0), 0);
    double x[DIM];
    make_x(x, DIM, 11);
    struct ack a = {0};
    ck_assert_int_eq(store_put_feedback(s, "e1", "cheap", x, DIM, 0.25, 12.0, on_ack, &a), 0);
    drain(s);
    /* export while the store is still open (a running daemon) */
    char path[320];
    export_db(path, sizeof path);
    store_close(s);

    FILE *in = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    int n = 0, metas = 0, decs = 0, fbs = 0;
    while (getline(&line, &cap, in) > 0) {
        n++;
        cJSON *o = cJSON_Parse(line);
        ck_assert_msg(o != NULL, "line %d is not JSON: %s", n, line);
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(o, "type"));
        ck_assert_ptr_nonnull(type);
        if (strcmp(type, "meta") == 0) {
            metas++;
            ck_assert_int_eq(n, 1);
            ck_assert(cJSON_GetNumberValue(cJSON_GetObjectItem(o, "dim")) == DIM);
            ck_assert(cJSON_GetNumberValue(cJSON_GetObjectItem(o, "text_weight")) == TW);
        } else if (strcmp(type, "decision") == 0) {
            decs++;
            cJSON *xs = cJSON_GetObjectItem(o, "x");
            ck_assert_int_eq(cJSON_GetArraySize(xs), DIM);
            const char *did = cJSON_GetStringValue(cJSON_GetObjectItem(o, "id"));
            double want[DIM];
            make_x(want, DIM, strcmp(did, "e1") == 0 ? 11 : 12);
            for (int i = 0; i < DIM; i++)
                ck_assert(cJSON_GetArrayItem(xs, i)->valuedouble == want[i]);
            if (strcmp(did, "e1") == 0) {
                ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(o, "completion_id")),
                                 "cmpl-e1");
                ck_assert(cJSON_GetNumberValue(cJSON_GetObjectItem(o, "latency_ms")) == 42.0);
            } else {
                ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(o, "arm")),
                                 "strong \"quoted\"");
                ck_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "completion_id")));
            }
            ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(o, "client")),
                             "fedcba9876543210");
            ck_assert(cJSON_GetNumberValue(
                          cJSON_GetObjectItem(cJSON_GetObjectItem(o, "w"), "quality")) == 0.7);
        } else if (strcmp(type, "feedback") == 0) {
            fbs++;
            ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(o, "request_id")), "e1");
            ck_assert(cJSON_GetNumberValue(cJSON_GetObjectItem(o, "reward")) == 0.25);
            ck_assert(cJSON_GetNumberValue(cJSON_GetObjectItem(o, "seq")) == (double)a.seq);
        } else {
            ck_abort_msg("unknown type %s", type);
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(in);
    ck_assert_int_eq(metas, 1);
    ck_assert_int_eq(decs, 2);
    ck_assert_int_eq(fbs, 1);

    char err[256] = "";
    FILE *out = fopen("/dev/null", "w");
    ck_assert_int_eq(store_export(g_db, out, err, sizeof err), 0); /* daemon stopped */
    ck_assert_int_eq(store_export("/nonexistent/x.db", out, err, sizeof err), BD_ERR_NOTFOUND);
    fclose(out);
}
END_TEST

/* ---------- full disk ---------- */

START_TEST(test_full_disk)
{
    char mnt[100];
    snprintf(mnt, sizeof mnt, "%s/mnt", g_dir);
    ck_assert_int_eq(mkdir(mnt, 0700), 0);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=256k") != 0) {
        fprintf(stderr, "test_full_disk: SKIPPED (cannot mount tmpfs: %s)\n", strerror(errno));
        return;
    }
    snprintf(g_db, sizeof g_db, "%s/state.db", mnt);
    /* a filler we can delete later to free space */
    char filler[128];
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    static unsigned char zeros[48 * 1024];
    write_bytes(filler, zeros, sizeof zeros);

    enum { DDIM = 64, MAXN = 2000 };
    store *s = open_ok(DDIM, 64);
    static struct ack acks[MAXN];
    memset(acks, 0, sizeof acks);
    double x[DDIM];
    char id[32];
    int n = 0, failed = 0;
    while (n < MAXN && !failed) {
        for (int i = 0; i < 16 && n < MAXN; i++, n++) {
            for (int j = 0; j < DDIM; j++)
                x[j] = n + j * 0.5;
            snprintf(id, sizeof id, "full-%d", n);
            ck_assert_int_eq(store_put_feedback(s, id, "cheap", x, DDIM, 1, n, on_ack, &acks[n]),
                             0);
        }
        drain(s);
        for (int i = 0; i < n; i++) {
            ck_assert_int_eq(acks[i].calls, 1);
            if (acks[i].rc != 0) {
                ck_assert_int_eq(acks[i].rc, BD_ERR_IO);
                failed++;
            }
        }
    }
    ck_assert_msg(failed > 0, "disk never filled after %d rows", n);
    struct store_stats st;
    store_get_stats(s, &st);
    ck_assert_uint_ge(st.failed_txns, 1);
    ck_assert_int_eq(st.last_error, BD_ERR_IO);

    /* free space: the next write succeeds (the store is not wedged) */
    ck_assert_int_eq(unlink(filler), 0);
    struct ack again = {0};
    for (int j = 0; j < DDIM; j++)
        x[j] = -j;
    ck_assert_int_eq(store_put_feedback(s, "after-full", "cheap", x, DDIM, 0.5, 1, on_ack, &again),
                     0);
    drain(s);
    ck_assert_int_eq(again.rc, 0);
    store_close(s);

    /* nothing half-written: exactly the acknowledged rows are there */
    long ok = 1; /* after-full */
    for (int i = 0; i < n; i++)
        ok += acks[i].rc == 0;
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback"), ok);
    for (int i = 0; i < n; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM feedback WHERE request_id='full-%d'", i);
        ck_assert_int_eq(count_rows(sql), acks[i].rc == 0);
    }
    /* and it reopens cleanly (passes quick_check) */
    s = open_ok(DDIM, 8);
    store_close(s);
    ck_assert_int_eq(umount(mnt), 0);
}
END_TEST

/* ---------- concurrency ---------- */

enum { CONC_N = 5000, CONC_CAP = 128 };

struct conc_item {
    int calls;
    int rc;
    int64_t seq;
};

struct conc_ctx {
    store *s;
    struct conc_item items[CONC_N];
    pthread_t producer;
    int wrong_thread;
    int busy;
    int64_t last_seq;
    int out_of_order;
};

static struct conc_ctx *g_conc;

static void conc_ack(int rc, int64_t seq, void *ud)
{
    struct conc_item *it = ud;
    if (!pthread_equal(pthread_self(), g_conc->producer))
        g_conc->wrong_thread++;
    it->calls++;
    it->rc = rc;
    it->seq = seq;
    if (rc == 0) {
        if (seq <= g_conc->last_seq)
            g_conc->out_of_order++;
        g_conc->last_seq = seq;
    }
}

/* Stands in for the event loop: enqueue as fast as possible, answer BUSY by
 * waiting for a wake and dispatching, exactly as the daemon would. */
static void *producer_main(void *arg)
{
    struct conc_ctx *c = arg;
    double x[DIM];
    char id[32];
    for (int i = 0; i < CONC_N; i++) {
        make_x(x, DIM, i);
        snprintf(id, sizeof id, "c-%d", i);
        for (;;) {
            int rc = store_put_feedback(c->s, id, i % 2 ? "cheap" : "strong", x, DIM, 0.5, i,
                                        conc_ack, &c->items[i]);
            if (rc == 0)
                break;
            ck_assert_int_eq(rc, BD_ERR_BUSY);
            c->busy++;
            wait_wake(100);
            store_dispatch(c->s);
        }
        if (i % 64 == 0)
            store_dispatch(c->s);
    }
    int acked = 0;
    while (acked < CONC_N) {
        wait_wake(100);
        store_dispatch(c->s);
        acked = 0;
        for (int i = 0; i < CONC_N; i++)
            acked += c->items[i].calls > 0;
    }
    return NULL;
}

START_TEST(test_concurrent_producer)
{
    struct conc_ctx *c = calloc(1, sizeof *c);
    g_conc = c;
    c->s = open_ok(DIM, CONC_CAP);
    ck_assert_int_eq(pthread_create(&c->producer, NULL, producer_main, c), 0);
    pthread_join(c->producer, NULL);
    int ok = 0;
    for (int i = 0; i < CONC_N; i++) {
        ck_assert_int_eq(c->items[i].calls, 1);
        ck_assert_int_eq(c->items[i].rc, 0);
        ok++;
    }
    ck_assert_int_eq(c->wrong_thread, 0);
    ck_assert_int_eq(c->out_of_order, 0);
    struct store_stats st;
    store_get_stats(c->s, &st);
    fprintf(stderr,
            "concurrency: %d acks, %d busy retries, %" PRIu64 " commits, max batch %" PRIu64 "\n",
            ok, c->busy, st.commits, st.max_batch);
    store_close(c->s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback"), ok);
    ck_assert_int_eq(count_rows("SELECT count(DISTINCT request_id) FROM feedback"), ok);
    free(c);
}
END_TEST

/* WAL checkpoints happen while the store is open, off the writer's commit:
 * after ~6 MiB of decisions the rows reach the main database file (not only
 * the WAL) without closing the store. */
START_TEST(test_background_checkpoint)
{
    enum { CK_DIM = 256, CK_N = 3000 };
    store *s = open_ok(CK_DIM, 256);
    static double x[CK_DIM];
    struct stat st0;
    ck_assert_int_eq(stat(g_db, &st0), 0);
    for (int i = 0; i < CK_N; i++) {
        char id[32];
        snprintf(id, sizeof id, "ck-%d", i);
        x[i % CK_DIM] = i;
        struct store_decision d = {
            .id = id, .arm_name = "a", .x = x, .w = {1, 0, 0}, .created_s = 1e9 + i};
        int rc;
        while ((rc = store_put_decision(s, &d, NULL, NULL)) == BD_ERR_BUSY)
            store_flush(s);
        ck_assert_int_eq(rc, 0);
    }
    drain(s);
    /* Each row holds CK_DIM*8 bytes of features: at least this much must be
     * in the main file once the checkpoint covering them has run. */
    const off_t want = (off_t)CK_N * CK_DIM * 8 * 3 / 4;
    struct stat stt = {0};
    for (int t = 0; t < 600; t++) { /* up to 30 s on a loaded machine */
        ck_assert_int_eq(stat(g_db, &stt), 0);
        if (stt.st_size >= want)
            break;
        usleep(50 * 1000);
    }
    ck_assert_msg(stt.st_size >= want, "main db %lld bytes (was %lld), want >= %lld",
                  (long long)stt.st_size, (long long)st0.st_size, (long long)want);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions"), CK_N);
    store_close(s);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions"), CK_N);
}
END_TEST

/* kill -9 right after the acks: every acknowledged feedback survives. */
START_TEST(test_kill9_keeps_acked)
{
    enum { N = 50 };
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        store *s = NULL;
        char err[256];
        if (store_open(g_db, DIM, TW, 0, NULL, NULL, 64, &s, err, sizeof err) != 0)
            _exit(3);
        double x[DIM];
        struct ack a[N];
        memset(a, 0, sizeof a);
        char id[16];
        for (int i = 0; i < N; i++) {
            make_x(x, DIM, i);
            snprintf(id, sizeof id, "k9-%d", i);
            if (store_put_feedback(s, id, "cheap", x, DIM, 1, 0, on_ack, &a[i]) != 0)
                _exit(4);
        }
        int acked = 0;
        while (acked < N) { /* the "loop": poll dispatch (no wake fn) */
            acked += (int)store_dispatch(s);
            usleep(1000);
        }
        for (int i = 0; i < N; i++)
            if (a[i].rc != 0)
                _exit(5);
        kill(getpid(), SIGKILL);
        _exit(6);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
    char wal[240];
    snprintf(wal, sizeof wal, "%s-wal", g_db);
    ck_assert(exists(wal)); /* a crash left the WAL behind: recovery runs at open */
    store *s = open_ok(DIM, 8);
    struct collected *c = calloc(1, sizeof *c);
    ck_assert_int_eq(store_load_feedback_after(s, "cheap", 0, collect_feedback, c), 0);
    ck_assert_int_eq(c->n, N);
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "k9-%d", i);
        ck_assert_str_eq(c->ids[i], id);
    }
    free(c);
    store_close(s);
}
END_TEST

/* ---------- schema 3: compact features blobs ---------- */

#define BIG 256

/* Like the daemon's features: bias, a few dense cues, signed multiples of
 * one scale (hashed n-grams), zeros; plus the awkward patterns. */
static void make_big_x(double *x, int seed)
{
    const double sc = 1.0 / sqrt(1234.5 + seed);
    for (int i = 0; i < BIG; i++)
        x[i] = (i * 7 + seed) % 5 == 0 ? 0.0 : ((i * 13 + seed) % 23 - 11) * sc;
    x[0] = 1.0;
    x[1] = log1p(1246.0 + seed) / 10.0;
    x[2] = -0.0;
    x[3] = 4.9406564584124654e-324; /* the smallest subnormal */
    x[4] = -1.7976931348623157e308;
    x[5] = 0.1;
}

struct big_rows {
    int n;
    char ids[8][STORE_ID_MAX];
    double x[8][BIG];
};

static int big_add(struct big_rows *c, const char *id, const double *x)
{
    ck_assert_int_lt(c->n, 8);
    snprintf(c->ids[c->n], STORE_ID_MAX, "%s", id);
    memcpy(c->x[c->n++], x, sizeof c->x[0]);
    return 0;
}

static int collect_big_decision(const struct store_decision *d, void *ud)
{
    return big_add(ud, d->id, d->x);
}

static int collect_big_feedback(const struct store_feedback *f, void *ud)
{
    return big_add(ud, f->request_id, f->x);
}

static void put_big(store *s, const char *id, const double *x, double created)
{
    struct store_decision d = {.id = id, .arm_name = "cheap", .x = x, .created_s = created};
    ck_assert_int_eq(store_put_decision(s, &d, NULL, NULL), 0);
}

/* Features come back bit for bit from either blob form (-0.0, subnormals,
 * extremes included); a compressible vector takes well under dim*8 bytes, an
 * incompressible one (256 distinct values) stays raw; a feedback whose x
 * equals its decision's stores NULL, also against a raw (schema-2) row. */
START_TEST(test_compact_features)
{
    store *s = open_ok(BIG, 64);
    static double x[4][BIG], y[BIG];
    make_big_x(x[0], 1);
    make_big_x(x[1], 2);
    for (int i = 0; i < BIG; i++)
        x[2][i] = 1.0 + i * 0x1p-40; /* 256 distinct values: raw */
    memset(x[3], 0, sizeof x[3]);    /* all +0.0 */
    const char *ids[4] = {"dict-1", "dict-2", "raw-1", "zero"};
    for (int i = 0; i < 4; i++)
        put_big(s, ids[i], x[i], 100.0 + i);
    drain(s);
    ck_assert_int_lt(count_rows("SELECT length(x) FROM decisions WHERE id='dict-1'"), BIG * 4);
    ck_assert_int_eq(count_rows("SELECT length(x) FROM decisions WHERE id='raw-1'"), BIG * 8);
    ck_assert_int_eq(count_rows("SELECT length(x) FROM decisions WHERE id='zero'"), 2 + BIG);
    /* A raw row as schema 2 wrote it, holding a compressible vector. */
    make_big_x(y, 3);
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "INSERT INTO decisions(id, arm_name, x, w_q, w_c, w_l, "
                                        "created_s) VALUES('legacy', 'cheap', ?, 0, 0, 0, 104)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_blob(st, 1, y, sizeof y, SQLITE_STATIC); /* little-endian host */
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);

    struct big_rows *c = calloc(1, sizeof *c);
    ck_assert_int_eq(store_load_decisions(s, 110.0, 100.0, collect_big_decision, c), 0);
    ck_assert_int_eq(c->n, 5);
    for (int i = 0; i < 4; i++) {
        ck_assert_str_eq(c->ids[i], ids[i]);
        ck_assert_int_eq(memcmp(c->x[i], x[i], sizeof x[i]), 0);
    }
    ck_assert_int_eq(memcmp(c->x[4], y, sizeof y), 0);

    /* Feedback: same x as the decision (dict row, raw legacy row) → NULL;
     * different x → its own blob, compact too. */
    struct ack a[3] = {{0}};
    ck_assert_int_eq(store_put_feedback(s, "dict-1", "cheap", x[0], BIG, 1, 200, on_ack, &a[0]), 0);
    ck_assert_int_eq(store_put_feedback(s, "legacy", "cheap", y, BIG, 0, 201, on_ack, &a[1]), 0);
    ck_assert_int_eq(store_put_feedback(s, "dict-2", "cheap", x[0], BIG, 1, 202, on_ack, &a[2]), 0);
    drain(s);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(a[i].rc, 0);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback WHERE x IS NULL AND request_id IN "
                                "('dict-1','legacy')"),
                     2);
    ck_assert_int_lt(count_rows("SELECT length(x) FROM feedback WHERE request_id='dict-2'"),
                     BIG * 4);
    memset(c, 0, sizeof *c);
    ck_assert_int_eq(store_load_feedback_after(s, NULL, 0, collect_big_feedback, c), 0);
    ck_assert_int_eq(c->n, 3);
    ck_assert_int_eq(memcmp(c->x[0], x[0], sizeof x[0]), 0);
    ck_assert_int_eq(memcmp(c->x[1], y, sizeof y), 0);
    ck_assert_int_eq(memcmp(c->x[2], x[0], sizeof x[0]), 0);
    free(c);
    store_close(s);

    /* Export prints the same doubles (%.17g round-trips). */
    char out[320];
    export_db(out, sizeof out);
    size_t len = 0;
    char *text = read_file(out, &len);
    int seen = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(line);
        ck_assert_ptr_nonnull(o);
        const cJSON *id = cJSON_GetObjectItem(o, "id");
        const cJSON *xs = cJSON_GetObjectItem(o, "x");
        if (cJSON_IsString(id) && strcmp(id->valuestring, "dict-1") == 0) {
            ck_assert_int_eq(cJSON_GetArraySize(xs), BIG);
            for (int i = 0; i < BIG; i++) {
                double v = cJSON_GetArrayItem(xs, i)->valuedouble;
                ck_assert_msg(v == x[0][i] && signbit(v) == signbit(x[0][i]), "x[%d] %.17g %.17g",
                              i, v, x[0][i]);
            }
            seen++;
        }
        cJSON_Delete(o);
    }
    free(text);
    ck_assert_int_eq(seen, 1);
}
END_TEST

/* The bytes of the x column of decision id (the test's own connection). */
static size_t row_blob(const char *id, unsigned char *out, size_t cap)
{
    sqlite3 *db;
    sqlite3_stmt *st = query_key(&db, "SELECT x FROM decisions WHERE id = ?", id);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    ck_assert_uint_le(n, cap);
    memcpy(out, sqlite3_column_blob(st, 0), n);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* A decision handed over already encoded (store_put_decision_enc, what
 * state_decision passes from the decision table) is written byte for byte as
 * the writer would have encoded x itself, in either form, and reads back
 * exactly; a feedback with the same x then refers to it (NULL x). Bad blob
 * lengths are refused. */
START_TEST(test_preencoded_decision)
{
    store *s = open_ok(BIG, 64);
    static double x[2][BIG];
    static unsigned char enc[BIG * 8], idx[BIG], a[BIG * 8], b[BIG * 8];
    make_big_x(x[0], 7);
    for (int i = 0; i < BIG; i++)
        x[1][i] = -1.0 - i * 0x1p-30; /* 256 distinct values: raw */
    for (int k = 0; k < 2; k++) {
        char own[16], pre[16];
        snprintf(own, sizeof own, "own-%d", k);
        snprintf(pre, sizeof pre, "pre-%d", k);
        put_big(s, own, x[k], 100.0 + k);
        size_t len = xblob_encode(enc, x[k], BIG, idx);
        struct store_decision d = {
            .id = pre, .arm_name = "cheap", .x = x[k], .created_s = 100.5 + k};
        ck_assert_int_eq(store_put_decision_enc(s, &d, enc, len, NULL, NULL), 0);
        memset(enc, 0xEE, sizeof enc); /* copied at call time */
        drain(s);
        size_t la = row_blob(own, a, sizeof a), lb = row_blob(pre, b, sizeof b);
        ck_assert_uint_eq(la, len);
        ck_assert_uint_eq(lb, len);
        ck_assert_int_eq(memcmp(a, b, la), 0);
        if (k == 0)
            ck_assert_uint_lt(len, (size_t)BIG * 4); /* dictionary form */
        else
            ck_assert_uint_eq(len, (size_t)BIG * 8); /* raw form */
    }
    struct big_rows *c = calloc(1, sizeof *c);
    ck_assert_int_eq(store_load_decisions(s, 110.0, 100.0, collect_big_decision, c), 0);
    ck_assert_int_eq(c->n, 4);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(memcmp(c->x[i], x[i / 2], sizeof x[0]), 0);
    struct ack ack = {0};
    ck_assert_int_eq(store_put_feedback(s, "pre-0", "cheap", x[0], BIG, 1, 200, on_ack, &ack), 0);
    drain(s);
    ck_assert_int_eq(ack.rc, 0);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback WHERE x IS NULL"), 1);
    struct store_decision bad = {.id = "bad", .arm_name = "cheap", .x = x[0]};
    ck_assert_int_eq(store_put_decision_enc(s, &bad, enc, 0, NULL, NULL), BD_ERR_INVALID);
    ck_assert_int_eq(store_put_decision_enc(s, &bad, enc, BIG * 8 + 1, NULL, NULL), BD_ERR_INVALID);
    size_t len0 = xblob_encode(enc, x[0], BIG, idx);
    ck_assert_int_eq(store_put_decision_enc(s, &bad, enc, len0 - 1, NULL, NULL), BD_ERR_INVALID);
    static double inf_x[BIG];
    memcpy(inf_x, x[0], sizeof inf_x);
    inf_x[9] = INFINITY; /* a non-finite value, in either form */
    ck_assert_int_eq(
        store_put_decision_enc(s, &bad, enc, xblob_encode(enc, inf_x, BIG, idx), NULL, NULL),
        BD_ERR_INVALID);
    inf_x[9] = NAN;
    for (int i = 10; i < BIG; i++)
        inf_x[i] = i * 0x1p-30; /* raw */
    ck_assert_int_eq(xblob_encode(enc, inf_x, BIG, idx), BIG * 8);
    ck_assert_int_eq(store_put_decision_enc(s, &bad, enc, BIG * 8, NULL, NULL), BD_ERR_INVALID);
    ck_assert_int_eq(count_rows("SELECT count(*) FROM decisions WHERE id = 'bad'"), 0);
    free(c);
    store_close(s);
}
END_TEST

/* A schema-2 database (raw features blobs, a feedback row sharing its
 * decision's x) is migrated to 3 on open: rows read back unchanged. */
START_TEST(test_migrate_v2)
{
    store *s = open_ok(BIG, 64);
    static double x[BIG], z[BIG];
    make_big_x(x, 5);
    make_big_x(z, 6);
    store_close(s);
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(
        sqlite3_prepare_v2(db,
                           "INSERT INTO decisions(id, arm_name, x, w_q, w_c, w_l, created_s) "
                           "VALUES('old', 'cheap', ?, 0, 0, 0, 100)",
                           -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_blob(st, 1, x, sizeof x, SQLITE_STATIC);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    ck_assert_int_eq(sqlite3_exec(db,
                                  "INSERT INTO feedback(seq, request_id, arm_name, x, reward, at_s)"
                                  " VALUES(7, 'old', 'cheap', NULL, 0.5, 101);"
                                  "UPDATE meta SET value='2' WHERE key='schema_version';"
                                  "PRAGMA user_version=2;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    ck_assert_int_eq(count_rows("PRAGMA user_version"), 2);

    s = open_ok(BIG, 64);
    ck_assert_int_eq(count_rows("PRAGMA user_version"), STORE_SCHEMA_VERSION);
    ck_assert_int_eq(count_rows("SELECT value FROM meta WHERE key='schema_version'"),
                     STORE_SCHEMA_VERSION);
    ck_assert_int_eq(count_rows("SELECT length(x) FROM decisions WHERE id='old'"), BIG * 8);
    put_big(s, "new", z, 102);
    struct ack a = {0};
    ck_assert_int_eq(store_put_feedback(s, "new", "cheap", z, BIG, 1, 103, on_ack, &a), 0);
    drain(s);
    ck_assert_int_eq(a.rc, 0);
    ck_assert_int_eq(a.seq, 8);
    ck_assert_int_lt(count_rows("SELECT length(x) FROM decisions WHERE id='new'"), BIG * 4);
    struct big_rows *c = calloc(1, sizeof *c);
    ck_assert_int_eq(store_load_feedback_after(s, "cheap", 0, collect_big_feedback, c), 0);
    ck_assert_int_eq(c->n, 2);
    ck_assert_str_eq(c->ids[0], "old");
    ck_assert_int_eq(memcmp(c->x[0], x, sizeof x), 0);
    ck_assert_int_eq(memcmp(c->x[1], z, sizeof z), 0);
    free(c);
    store_close(s);
}
END_TEST

/* store_close delivers callbacks still pending. */
START_TEST(test_close_delivers)
{
    store *s = open_ok(DIM, 64);
    double x[DIM];
    make_x(x, DIM, 9);
    struct ack a[10];
    memset(a, 0, sizeof a);
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "k%d", i);
        ck_assert_int_eq(store_put_feedback(s, id, "cheap", x, DIM, 1, 0, on_ack, &a[i]), 0);
    }
    store_close(s);
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(a[i].calls, 1);
        ck_assert_int_eq(a[i].rc, 0);
    }
    ck_assert_int_eq(count_rows("SELECT count(*) FROM feedback"), 10);
}
END_TEST

static Suite *store_suite(void)
{
    Suite *su = suite_create("store");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_create_and_reopen);
    tcase_add_test(tc, test_invalid_args);
    tcase_add_test(tc, test_garbage_file_is_corrupt);
    tcase_add_test(tc, test_empty_file_is_corrupt);
    tcase_add_test(tc, test_foreign_sqlite_is_corrupt);
    tcase_add_test(tc, test_damaged_page_is_corrupt);
    tcase_add_test(tc, test_orphan_wal_refused);
    tcase_add_test(tc, test_dim_mismatch);
    tcase_add_test(tc, test_text_weight_mismatch);
    tcase_add_test(tc, test_reset_wipes);
    tcase_add_test(tc, test_duplicate_feedback_exists);
    tcase_add_test(tc, test_ack_only_via_dispatch_after_commit);
    tcase_add_test(tc, test_queue_full_busy);
    tcase_add_test(tc, test_snapshot_restore);
    tcase_add_test(tc, test_purge_and_pending);
    tcase_add_test(tc, test_features_once);
    tcase_add_test(tc, test_complete_folds);
    tcase_add_test(tc, test_migrate_v1);
    tcase_add_test(tc, test_compact_features);
    tcase_add_test(tc, test_preencoded_decision);
    tcase_add_test(tc, test_migrate_v2);
    tcase_add_test(tc, test_export_jsonl);
    tcase_add_test(tc, test_full_disk);
    tcase_add_test(tc, test_concurrent_producer);
    tcase_add_test(tc, test_close_delivers);
    tcase_add_test(tc, test_background_checkpoint);
    tcase_add_test(tc, test_kill9_keeps_acked);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(store_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
