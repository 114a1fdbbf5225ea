/* store — SQLite persistence with a group-committing writer thread.
 * Contract: include/banditd/store.h; schema and guarantees: docs/state.md. */
#include "banditd/store.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "banditd/err.h"
#include "banditd/util.h"
#include "banditd/xblob.h"

#define STORE_APP_ID 0x42444231 /* "BDB1": PRAGMA application_id of a banditd db */
#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_MAX_DIM 65536
#define STORE_KEEP_SNAPSHOTS 2
/* A batch of fire-and-forget ops only (decisions, completions, snapshots)
 * waits up to this long for an op somebody waits on (a feedback), so that
 * both share one fsync instead of two, and so that decisions commit in
 * fewer, larger transactions (20 ms instead of 5 ms: ~30% less writer and
 * checkpointer CPU per decision, docs/performance.md §8). Bounds the extra
 * crash window of decisions (docs/state.md). */
#define STORE_LINGER_NS 20000000L
/* A batch nobody waits on (no callback: decisions, completions, snapshots,
 * purges) commits with synchronous=NORMAL: written to the WAL, not fsynced.
 * A kill -9 loses nothing of it (the data is in the kernel), a power loss
 * may. The next batch with a callback (synchronous=FULL) fsyncs the WAL and
 * so everything before it; without one, the first batch STORE_SYNC_MAX_NS
 * after the first unsynced commit is FULL, or an idle writer fsyncs the WAL
 * itself at that time, which bounds what a power loss can take
 * (docs/state.md). */
#define STORE_SYNC_MAX_NS 1000000000LL
/* WAL checkpoints run on a checkpointer thread (own connection, PASSIVE), not
 * inside the writer's COMMIT, so they do not delay a batch's acks. The writer
 * asks for one once the WAL holds CKPT_PAGES frames; past CKPT_HARD_PAGES (the
 * checkpointer cannot keep up, e.g. a reader pins the WAL) the writer
 * checkpoints itself after its commit, which bounds the WAL's size. */
#define CKPT_PAGES 1000
#define CKPT_HARD_PAGES 4096
#define CKPT_MAX_PASSES 8
#define STORE_POOL_MAX 256 /* recycled ops kept (each ~2.5 KiB at dim=256) */

enum op_kind { OP_DECISION, OP_COMPLETE, OP_FEEDBACK, OP_SNAPSHOT, OP_PURGE };

struct snap_arm {
    char name[STORE_NAME_MAX];
    struct store_arm_state st; /* pointers unused; A/b encoded below */
    unsigned char *A;          /* dim*dim*8 bytes, little-endian */
    unsigned char *b;          /* dim*8 bytes */
};

struct op {
    enum op_kind kind;
    store_done_fn cb;
    void *ud;
    int rc;
    int64_t seq;
    struct op *next; /* completion list link */
    char id[STORE_ID_MAX];
    char id2[STORE_ID_MAX]; /* completion id */
    char arm[STORE_NAME_MAX];
    struct pref_weights w;
    double t1, t2, t3; /* decision: created, cost, latency; feedback: reward, at */
    uint64_t client;
    int n_snap;
    struct snap_arm *snap;
    size_t xlen; /* bytes in x */
    int x_enc;   /* x holds a features blob (xblob.h), not dim doubles */
    double x[];  /* dim native doubles, or (x_enc) a blob of xlen <= dim*8 bytes */
};

enum stmt_id {
    ST_DECISION,
    ST_HAS_DECISION,
    ST_COMPLETE,
    ST_FEEDBACK,
    ST_SNAPSHOT,
    ST_SNAP_PRUNE,
    ST_PURGE,
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SYNC_FULL,
    ST_SYNC_NORMAL,
    ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_DECISION] = "INSERT INTO decisions(id, completion_id, arm_name, x, w_q, w_c, w_l, "
                    "created_s, cost_usd, latency_ms, client) VALUES(?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(id) DO NOTHING",
    [ST_HAS_DECISION] = "SELECT x FROM decisions WHERE id = ?",
    [ST_COMPLETE] = "UPDATE decisions SET completion_id = coalesce(?, completion_id), "
                    "cost_usd = ?, latency_ms = ? WHERE id = ?",
    [ST_FEEDBACK] = "INSERT INTO feedback(request_id, arm_name, x, reward, at_s) "
                    "VALUES(?,?,?,?,?) ON CONFLICT(request_id) DO NOTHING",
    [ST_SNAPSHOT] = "INSERT INTO arm_stats(arm_name, dim, A, b, n, feedback_seq, pulls, "
                    "feedback, reward_sum, exp_completion_tokens, latency_ms, ttfb_ms, "
                    "usage_obs, taken_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    [ST_SNAP_PRUNE] = "DELETE FROM arm_stats WHERE arm_name = ?1 AND id NOT IN "
                      "(SELECT id FROM arm_stats WHERE arm_name = ?1 ORDER BY id DESC LIMIT ?2)",
    /* A decision with a feedback row is the log's features: never purged. */
    /* Answered decisions stay forever, so each purge scans only the created_s
     * range since the previous successful purge (?1 = its cutoff, -inf at
     * open): older rows still present are answered ones. */
    [ST_PURGE] = "DELETE FROM decisions WHERE created_s >= ?1 AND created_s < ?2 AND NOT EXISTS "
                 "(SELECT 1 FROM feedback f WHERE f.request_id = decisions.id)",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SYNC_FULL] = "PRAGMA synchronous=FULL",
    [ST_SYNC_NORMAL] = "PRAGMA synchronous=NORMAL",
};

struct store {
    int dim;
    sqlite3 *db;  /* writer thread only (after open) */
    sqlite3 *rdb; /* read-only, loop thread only */
    sqlite3_stmt *st[ST_COUNT];
    store_wake_fn wake;
    void *wake_ud;
    pthread_t thread;

    /* q_mu + q_cv: the queue, the counters, stop. */
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    struct op **ring;
    size_t cap, head, count;
    size_t with_cb;          /* queued ops that carry a callback */
    uint64_t enqueued, done; /* ops ever accepted; ops finished by the writer */
    int stop;
    struct store_stats stats;

    /* done_mu: the completion list. */
    pthread_mutex_t done_mu;
    struct op *done_head, *done_tail;

    /* ck_mu + ck_cv: ck_want, ck_stop, ckpt counters (checkpointer thread). */
    sqlite3 *cdb; /* checkpointer thread only (after open) */
    pthread_t ck_thread;
    int ck_started;
    pthread_mutex_t ck_mu;
    pthread_cond_t ck_cv;
    int ck_want, ck_stop;
    uint64_t ck_runs, ck_inline; /* background checkpoints; writer fallbacks */

    /* pool_mu: the recycled ops (op_new on the loop, free_op on either). */
    pthread_mutex_t pool_mu;
    struct op *pool;
    size_t pool_n;

    struct op **batch;    /* writer thread only */
    unsigned char *xenc;  /* writer thread only: dim*8, an encoded features blob */
    double *xraw;         /* writer thread only: dim, a decoded one */
    unsigned char *xidx;  /* writer thread only: dim, encoder scratch */
    int sync_normal;      /* writer thread only: the connection is at NORMAL */
    int64_t unsynced_ns;  /* writer thread only: first commit not fsynced yet (0 = none) */
    double purged_below;  /* writer thread only: cutoff of the last committed purge */
    double purge_pending; /* writer thread only: cutoff of a purge in the open batch */
};

/* ---------- helpers ---------- */

static int map_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_NOMEM:
        return BD_ERR_NOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return BD_ERR_BUSY;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return BD_ERR_CORRUPT;
    case SQLITE_CANTOPEN:
        return BD_ERR_NOTFOUND;
    default:
        return BD_ERR_IO;
    }
}

static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        util_errf(err, errlen, "%s: %s", sql, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return map_sqlite(rc);
    }
    return 0;
}

/* Run a one-value pragma/query; copies the first column of the first row. */
static int query_text(sqlite3 *db, const char *sql, char *out, size_t outlen)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(out, outlen, "%s", t ? (const char *)t : "");
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        out[0] = '\0';
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* ---------- schema, creation, validation ---------- */

/* Schema 2: a feedback row's x is NULL when its decision row holds the same
 * features (the usual case: written once); decisions with a feedback row are
 * never purged. seq is a plain rowid (never reused: feedback is never
 * deleted), so no sqlite_sequence write per row. */
#define FEEDBACK_TABLE_SQL                                                                         \
    "CREATE TABLE feedback(seq INTEGER PRIMARY KEY,"                                               \
    " request_id TEXT NOT NULL UNIQUE, arm_name TEXT NOT NULL, x BLOB,"                            \
    " reward REAL NOT NULL, at_s REAL NOT NULL);"

/* The features of a feedback row (alias f, decisions joined as d). */
#define FEEDBACK_X "coalesce(f.x, d.x)"
#define FEEDBACK_FROM " FROM feedback f LEFT JOIN decisions d ON d.id = f.request_id"

static const char schema_sql[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE decisions(id TEXT PRIMARY KEY, completion_id TEXT, arm_name TEXT NOT NULL,"
    " x BLOB NOT NULL, w_q REAL NOT NULL, w_c REAL NOT NULL, w_l REAL NOT NULL,"
    " created_s REAL NOT NULL, cost_usd REAL NOT NULL DEFAULT 0,"
    " latency_ms REAL NOT NULL DEFAULT 0, client INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX decisions_created ON decisions(created_s);" FEEDBACK_TABLE_SQL
    "CREATE TABLE arm_stats(id INTEGER PRIMARY KEY AUTOINCREMENT, arm_name TEXT NOT NULL,"
    " dim INTEGER NOT NULL, A BLOB NOT NULL, b BLOB NOT NULL, n INTEGER NOT NULL,"
    " feedback_seq INTEGER NOT NULL, pulls INTEGER NOT NULL, feedback INTEGER NOT NULL,"
    " reward_sum REAL NOT NULL, exp_completion_tokens REAL NOT NULL,"
    " latency_ms REAL NOT NULL, ttfb_ms REAL NOT NULL, usage_obs INTEGER NOT NULL,"
    " taken_at REAL NOT NULL);"
    "CREATE INDEX arm_stats_arm ON arm_stats(arm_name, id);";

static int fsync_path(const char *path, int dir)
{
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

static void dir_of(const char *path, char *out, size_t outlen)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, outlen, ".");
    else if (slash == path)
        snprintf(out, outlen, "/");
    else
        snprintf(out, outlen, "%.*s", (int)(slash - path), path);
}

/* Build a fresh database in a temporary file next to path, then rename it
 * into place: a database at path is therefore always fully initialised. */
static int create_fresh(const char *path, int dim, double text_weight, char *err, size_t errlen)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp)
        return BD_ERR_NOMEM;
    snprintf(tmp, plen + 32, "%s.tmp-%ld", path, (long)getpid());
    unlink(tmp);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(tmp, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    int r = 0;
    if (rc != SQLITE_OK) {
        util_errf(err, errlen, "%s: cannot create database: %s", path,
                  db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        r = map_sqlite(rc) == BD_ERR_NOMEM ? BD_ERR_NOMEM : BD_ERR_IO;
        goto out;
    }
    char sql[512];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA application_id=%d;"
             "PRAGMA user_version=%d; BEGIN;",
             STORE_APP_ID, STORE_SCHEMA_VERSION);
    if ((r = exec_sql(db, sql, err, errlen)) || (r = exec_sql(db, schema_sql, err, errlen)))
        goto out;
    snprintf(sql, sizeof sql,
             "INSERT INTO meta VALUES('schema_version','%d'); INSERT INTO meta "
             "VALUES('dim','%d'); INSERT INTO meta VALUES('text_weight','%.17g'); INSERT INTO "
             "meta VALUES('created', strftime('%%Y-%%m-%%dT%%H:%%M:%%SZ','now')); COMMIT;",
             STORE_SCHEMA_VERSION, dim, text_weight);
    if ((r = exec_sql(db, sql, err, errlen)))
        goto out;
    rc = sqlite3_close(db); /* checkpoints and removes tmp's -wal */
    db = NULL;
    if (rc != SQLITE_OK || fsync_path(tmp, 0) != 0) {
        util_errf(err, errlen, "%s: cannot finish new database: %s", path, strerror(errno));
        r = BD_ERR_IO;
        goto out;
    }
    if (rename(tmp, path) != 0) {
        util_errf(err, errlen, "%s: rename from %s: %s", path, tmp, strerror(errno));
        r = BD_ERR_IO;
        goto out;
    }
    char dir[4096];
    dir_of(path, dir, sizeof dir);
    fsync_path(dir, 1); /* best effort: some filesystems refuse a directory fsync */
out:
    if (db)
        sqlite3_close(db);
    if (r) {
        unlink(tmp);
        char side[4200];
        snprintf(side, sizeof side, "%s-wal", tmp);
        unlink(side);
        snprintf(side, sizeof side, "%s-shm", tmp);
        unlink(side);
    }
    free(tmp);
    return r;
}

/* The shortest decimal form of v that reads back as exactly v (for messages). */
static void fmt_exact(char *out, size_t outlen, double v)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(out, outlen, "%.*g", p, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

int store_text_weight_check(const char *stored, double text_weight, const char *what,
                            const char *where, const char *fix, char *err, size_t errlen)
{
    char *end = NULL;
    double v = strtod(stored, &end);
    if (end == stored || *end != '\0' || !isfinite(v) || !(v > 0)) {
        util_errf(err, errlen, "%s: invalid text_weight '%s'", where, stored);
        return BD_ERR_CORRUPT;
    }
    if (v != text_weight) { /* exact: both sides are the same %.17g round trip */
        char a[32], b[32];
        fmt_exact(a, sizeof a, v);
        fmt_exact(b, sizeof b, text_weight);
        util_errf(err, errlen, "%s has text_weight=%s, config says text_weight=%s; %s", what, a, b,
                  fix);
        return BD_ERR_INVALID;
    }
    return 0;
}

/* Checks an opened existing database without writing to it. *tw_missing: the
 * meta table has no text_weight (a database from an older banditd). */
static int validate(sqlite3 *db, const char *path, int dim, double text_weight, int *version,
                    int *tw_missing, char *err, size_t errlen)
{
    char v[256];
    int rc = query_text(db, "PRAGMA application_id", v, sizeof v);
    if (rc != SQLITE_OK) {
        util_errf(err, errlen,
                  "%s: exists but is not a readable SQLite database (%s); refusing to start "
                  "fresh: move it away, restore a backup, or use --reset-state",
                  path, sqlite3_errmsg(db));
        int m = map_sqlite(rc);
        return m == BD_ERR_IO ? BD_ERR_CORRUPT : m;
    }
    if (atol(v) != STORE_APP_ID) {
        util_errf(err, errlen,
                  "%s: exists but is not a banditd database (application_id %s); refusing to "
                  "touch it: move it away or use --reset-state",
                  path, v);
        return BD_ERR_CORRUPT;
    }
    rc = query_text(db, "PRAGMA quick_check", v, sizeof v);
    if (rc != SQLITE_OK || strcmp(v, "ok") != 0) {
        util_errf(err, errlen,
                  "%s: database is corrupt (quick_check: %s); restore a backup, salvage it "
                  "with `sqlite3 %s .recover`, or use --reset-state",
                  path, rc != SQLITE_OK ? sqlite3_errmsg(db) : v, path);
        return BD_ERR_CORRUPT;
    }
    rc = query_text(db, "SELECT value FROM meta WHERE key='schema_version'", v, sizeof v);
    if (rc != SQLITE_OK || v[0] == '\0') {
        util_errf(err, errlen, "%s: banditd database without a schema version (%s)", path,
                  rc != SQLITE_OK ? sqlite3_errmsg(db) : "missing");
        return BD_ERR_CORRUPT;
    }
    *version = atoi(v);
    if (*version < 1 || *version > STORE_SCHEMA_VERSION) {
        util_errf(err, errlen,
                  "%s: schema version %s, this banditd supports 1 and 2 (migrated) and %d; use a "
                  "matching banditd",
                  path, v, STORE_SCHEMA_VERSION);
        return BD_ERR_INVALID;
    }
    rc = query_text(db, "SELECT value FROM meta WHERE key='dim'", v, sizeof v);
    if (rc != SQLITE_OK || atoi(v) <= 0) {
        util_errf(err, errlen, "%s: banditd database without a valid dim", path);
        return BD_ERR_CORRUPT;
    }
    if (atoi(v) != dim) {
        util_errf(err, errlen, "store has dim=%d, config says dim=%d; use --reset-state or migrate",
                  atoi(v), dim);
        return BD_ERR_INVALID;
    }
    rc = query_text(db, "SELECT value FROM meta WHERE key='text_weight'", v, sizeof v);
    if (rc != SQLITE_OK) {
        util_errf(err, errlen, "%s: meta unreadable: %s", path, sqlite3_errmsg(db));
        return BD_ERR_CORRUPT;
    }
    *tw_missing = v[0] == '\0';
    if (*tw_missing)
        return 0;
    return store_text_weight_check(v, text_weight, "store", path, "use --reset-state", err, errlen);
}

/* Migration to STORE_SCHEMA_VERSION, in one transaction (all or nothing).
 * Schema 1 → 2: the feedback table loses AUTOINCREMENT and its (arm_name,
 * seq) index, and x becomes nullable; existing rows keep their own x
 * (coalesce(f.x, d.x) prefers it) and seq. Schema 2 → 3: rows unchanged
 * (raw features blobs stay valid; new rows may use the dictionary form,
 * which a schema-2 banditd could not read, hence the version). */
static int migrate(sqlite3 *db, const char *path, int from, char *err, size_t errlen)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "BEGIN IMMEDIATE;%s"
             "UPDATE meta SET value = '%d' WHERE key = 'schema_version';"
             "PRAGMA user_version = %d;"
             "COMMIT;",
             from == 1 ? "ALTER TABLE feedback RENAME TO feedback_v1;"
                         "DROP INDEX IF EXISTS feedback_arm;" FEEDBACK_TABLE_SQL
                         "INSERT INTO feedback(seq, request_id, arm_name, x, reward, at_s)"
                         " SELECT seq, request_id, arm_name, x, reward, at_s FROM feedback_v1"
                         " ORDER BY seq;"
                         "DROP TABLE feedback_v1;"
                       : "",
             STORE_SCHEMA_VERSION, STORE_SCHEMA_VERSION);
    char msg[512] = "";
    int r = exec_sql(db, sql, msg, sizeof msg);
    if (r) {
        if (!sqlite3_get_autocommit(db))
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        util_errf(err, errlen, "%s: migration from schema %d to %d failed (nothing changed): %s",
                  path, from, STORE_SCHEMA_VERSION, msg);
    }
    return r;
}

static int remove_files(const char *path, char *err, size_t errlen)
{
    static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
    char p[4200];
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        snprintf(p, sizeof p, "%s%s", path, sfx[i]);
        if (unlink(p) != 0 && errno != ENOENT) {
            util_errf(err, errlen, "%s: cannot delete for reset: %s", p, strerror(errno));
            return BD_ERR_IO;
        }
    }
    return 0;
}

/* ---------- writer thread ---------- */

/* Ops are recycled through a small pool instead of malloc/free: they are
 * allocated on the loop thread and freed on the writer, and freeing ~2.5 KiB
 * chunks into the loop's arena from another thread made glibc run
 * malloc_consolidate on most frees (the writer's top symbol in perf). Every
 * op has room for dim*8 bytes of features. */
static void free_op(store *s, struct op *o)
{
    if (!o)
        return;
    for (int i = 0; i < o->n_snap; i++) {
        free(o->snap[i].A);
        free(o->snap[i].b);
    }
    free(o->snap);
    pthread_mutex_lock(&s->pool_mu);
    if (s->pool_n < STORE_POOL_MAX) {
        o->next = s->pool;
        s->pool = o;
        s->pool_n++;
        o = NULL;
    }
    pthread_mutex_unlock(&s->pool_mu);
    free(o);
}

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Execute one op inside the open transaction. Returns an SQLite code; a
 * non-OK code aborts the whole batch. Sets o->rc for per-op outcomes. */
static int apply_op(store *s, struct op *o)
{
    sqlite3_stmt *st;
    int rc;
    o->rc = 0;
    switch (o->kind) {
    case OP_DECISION:
        st = s->st[ST_DECISION];
        sqlite3_bind_text(st, 1, o->id, -1, SQLITE_STATIC);
        if (o->id2[0])
            sqlite3_bind_text(st, 2, o->id2, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 2);
        sqlite3_bind_text(st, 3, o->arm, -1, SQLITE_STATIC);
        if (o->x_enc) /* encoded on the loop thread (the decision table's form) */
            sqlite3_bind_blob(st, 4, o->x, (int)o->xlen, SQLITE_STATIC);
        else
            sqlite3_bind_blob(st, 4, s->xenc,
                              (int)xblob_encode(s->xenc, o->x, (size_t)s->dim, s->xidx),
                              SQLITE_STATIC);
        sqlite3_bind_double(st, 5, o->w.quality);
        sqlite3_bind_double(st, 6, o->w.cost);
        sqlite3_bind_double(st, 7, o->w.latency);
        sqlite3_bind_double(st, 8, o->t1);
        sqlite3_bind_double(st, 9, o->t2);
        sqlite3_bind_double(st, 10, o->t3);
        sqlite3_bind_int64(st, 11, (sqlite3_int64)o->client);
        rc = step_done(st);
        if (rc == SQLITE_OK && sqlite3_changes(s->db) == 0)
            o->rc = BD_ERR_EXISTS;
        return rc;
    case OP_COMPLETE:
        st = s->st[ST_COMPLETE];
        if (o->id2[0])
            sqlite3_bind_text(st, 1, o->id2, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 1);
        sqlite3_bind_double(st, 2, o->t2);
        sqlite3_bind_double(st, 3, o->t3);
        sqlite3_bind_text(st, 4, o->id, -1, SQLITE_STATIC);
        return step_done(st);
    case OP_FEEDBACK: {
        /* Features are written once: when the decision row (committed
         * earlier or earlier in this transaction: one FIFO) holds the very
         * same doubles (bit for bit, in either blob form), the feedback row
         * stores NULL and refers to it. */
        int same = 0;
        st = s->st[ST_HAS_DECISION];
        sqlite3_bind_text(st, 1, o->id, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            same = xblob_decode(s->xraw, sqlite3_column_blob(st, 0),
                                (size_t)sqlite3_column_bytes(st, 0), (size_t)s->dim) == 0 &&
                   memcmp(s->xraw, o->x, o->xlen) == 0;
            rc = SQLITE_DONE;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return rc;
        st = s->st[ST_FEEDBACK];
        sqlite3_bind_text(st, 1, o->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, o->arm, -1, SQLITE_STATIC);
        if (same)
            sqlite3_bind_null(st, 3);
        else
            sqlite3_bind_blob(st, 3, s->xenc,
                              (int)xblob_encode(s->xenc, o->x, (size_t)s->dim, s->xidx),
                              SQLITE_STATIC);
        sqlite3_bind_double(st, 4, o->t1);
        sqlite3_bind_double(st, 5, o->t2);
        rc = step_done(st);
        if (rc == SQLITE_OK) {
            if (sqlite3_changes(s->db) == 0)
                o->rc = BD_ERR_EXISTS;
            else
                o->seq = sqlite3_last_insert_rowid(s->db);
        }
        return rc;
    }
    case OP_SNAPSHOT:
        for (int i = 0; i < o->n_snap; i++) {
            const struct snap_arm *a = &o->snap[i];
            size_t d = (size_t)s->dim;
            st = s->st[ST_SNAPSHOT];
            sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 2, s->dim);
            sqlite3_bind_blob64(st, 3, a->A, d * d * 8, SQLITE_STATIC);
            sqlite3_bind_blob64(st, 4, a->b, d * 8, SQLITE_STATIC);
            sqlite3_bind_int64(st, 5, (sqlite3_int64)a->st.n);
            sqlite3_bind_int64(st, 6, a->st.feedback_seq);
            sqlite3_bind_int64(st, 7, (sqlite3_int64)a->st.pulls);
            sqlite3_bind_int64(st, 8, (sqlite3_int64)a->st.feedback);
            sqlite3_bind_double(st, 9, a->st.reward_sum);
            sqlite3_bind_double(st, 10, a->st.exp_completion_tokens);
            sqlite3_bind_double(st, 11, a->st.latency_ms);
            sqlite3_bind_double(st, 12, a->st.ttfb_ms);
            sqlite3_bind_int64(st, 13, (sqlite3_int64)a->st.usage_obs);
            sqlite3_bind_double(st, 14, a->st.taken_at);
            if ((rc = step_done(st)) != SQLITE_OK)
                return rc;
            st = s->st[ST_SNAP_PRUNE];
            sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 2, STORE_KEEP_SNAPSHOTS);
            if ((rc = step_done(st)) != SQLITE_OK)
                return rc;
        }
        return SQLITE_OK;
    case OP_PURGE:
        if (!(o->t1 > s->purged_below))
            return SQLITE_OK; /* nothing new expired (or the clock went back) */
        st = s->st[ST_PURGE];
        sqlite3_bind_double(st, 1, s->purged_below);
        sqlite3_bind_double(st, 2, o->t1);
        rc = step_done(st);
        if (rc == SQLITE_OK && o->t1 > s->purge_pending)
            s->purge_pending = o->t1;
        return rc;
    }
    assert(!"unknown op kind");
    return SQLITE_INTERNAL;
}

static int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* fsync the WAL of the writer connection (what a FULL commit would have
 * done): everything committed so far becomes durable. Writer thread only. */
static void sync_wal(store *s)
{
    sqlite3_file *f = NULL;
    if (sqlite3_file_control(s->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &f) == SQLITE_OK && f &&
        f->pMethods && f->pMethods->xSync(f, SQLITE_SYNC_NORMAL) == SQLITE_OK)
        s->unsynced_ns = 0;
}

/* One group commit of n ops. Returns 0 or the batch's error code. A batch
 * with a callback in it (somebody waits for durability) commits with
 * synchronous=FULL, which also fsyncs every earlier NORMAL commit (one WAL
 * file, written in order); a batch without one commits with NORMAL unless
 * the oldest unsynced commit is STORE_SYNC_MAX_NS old. */
static int run_batch(store *s, struct op **ops, size_t n)
{
    int full = 0;
    for (size_t i = 0; i < n && !full; i++)
        full = ops[i]->cb != NULL;
    int64_t now = mono_ns();
    if (s->unsynced_ns && now - s->unsynced_ns >= STORE_SYNC_MAX_NS)
        full = 1;
    int rc = SQLITE_OK;
    if (full == s->sync_normal) {
        rc = step_done(s->st[full ? ST_SYNC_FULL : ST_SYNC_NORMAL]);
        if (rc == SQLITE_OK) {
            s->sync_normal = !full;
        } else if (!full) { /* still FULL: commit durably anyway */
            rc = SQLITE_OK;
            full = 1;
        } /* else: no durable commit possible, the batch fails (nothing acked) */
    }
    s->purge_pending = s->purged_below;
    int changes = sqlite3_total_changes(s->db);
    if (rc == SQLITE_OK)
        rc = step_done(s->st[ST_BEGIN]);
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++)
        rc = apply_op(s, ops[i]);
    if (rc == SQLITE_OK)
        rc = step_done(s->st[ST_COMMIT]);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_clear_bindings(s->st[i]);
    if (rc == SQLITE_OK) {
        s->purged_below = s->purge_pending;
        if (full)
            s->unsynced_ns = 0;
        else if (!s->unsynced_ns && sqlite3_total_changes(s->db) != changes)
            s->unsynced_ns = now; /* (a batch that changed nothing wrote no frame) */
        return 0;
    }
    int err = map_sqlite(rc);
    if (err == BD_ERR_NOTFOUND)
        err = BD_ERR_IO;
    if (!sqlite3_get_autocommit(s->db))
        step_done(s->st[ST_ROLLBACK]);
    return err;
}

/* sqlite3_wal_hook of the writer connection: runs on the writer thread after
 * each commit, with the WAL's size in frames. Installing it disables SQLite's
 * autocheckpoint on that connection. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    store *s = arg;
    if (pages >= CKPT_HARD_PAGES) {
        /* Fallback: the background checkpointer is behind. Checkpoint here
         * (this delays this batch's acks, as autocheckpoint always did). */
        int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&s->ck_mu);
        if (rc == SQLITE_OK)
            s->ck_inline++;
        pthread_mutex_unlock(&s->ck_mu);
    } else if (pages >= CKPT_PAGES) {
        pthread_mutex_lock(&s->ck_mu);
        if (!s->ck_want) {
            s->ck_want = 1;
            pthread_cond_signal(&s->ck_cv);
        }
        pthread_mutex_unlock(&s->ck_mu);
    }
    return SQLITE_OK; /* a failed checkpoint does not fail the commit */
}

static void *checkpointer_main(void *arg)
{
    store *s = arg;
    pthread_mutex_lock(&s->ck_mu);
    for (;;) {
        while (!s->ck_want && !s->ck_stop)
            pthread_cond_wait(&s->ck_cv, &s->ck_mu);
        if (s->ck_stop)
            break;
        s->ck_want = 0;
        pthread_mutex_unlock(&s->ck_mu);
        /* PASSIVE never blocks the writer. Frames committed during a pass are
         * copied by the next one (fewer each time), so that the WAL is fully
         * backfilled and the writer can restart it from its beginning. */
        int ok = 0;
        for (int pass = 0; pass < CKPT_MAX_PASSES; pass++) {
            int log = 0, ckpt = 0;
            int rc =
                sqlite3_wal_checkpoint_v2(s->cdb, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &ckpt);
            if (rc != SQLITE_OK)
                break; /* I/O error, full disk: retried at the next request */
            ok = 1;
            if (log <= 0 || ckpt >= log)
                break;
        }
        pthread_mutex_lock(&s->ck_mu);
        if (ok)
            s->ck_runs++;
    }
    pthread_mutex_unlock(&s->ck_mu);
    return NULL;
}

static void *writer_main(void *arg)
{
    store *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->q_mu);
        while (s->count == 0 && !s->stop) {
            if (!s->unsynced_ns) {
                pthread_cond_wait(&s->q_cv, &s->q_mu);
                continue;
            }
            /* Idle with NORMAL commits not fsynced: fsync them by the
             * deadline, or at once when stopping (below). */
            int64_t due = s->unsynced_ns + STORE_SYNC_MAX_NS, now = mono_ns();
            if (now >= due) {
                pthread_mutex_unlock(&s->q_mu);
                sync_wal(s);
                pthread_mutex_lock(&s->q_mu);
                s->unsynced_ns = 0; /* a failed fsync is not retried: data stays in the kernel */
                continue;
            }
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            int64_t ns = until.tv_nsec + (due - now);
            until.tv_sec += (time_t)(ns / 1000000000LL);
            until.tv_nsec = (long)(ns % 1000000000LL);
            pthread_cond_timedwait(&s->q_cv, &s->q_mu, &until);
        }
        if (s->count == 0 && s->stop) {
            pthread_mutex_unlock(&s->q_mu);
            if (s->unsynced_ns)
                sync_wal(s);
            break;
        }
        if (s->with_cb == 0 && !s->stop && s->count < s->cap) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += STORE_LINGER_NS;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            while (s->with_cb == 0 && !s->stop && s->count < s->cap &&
                   pthread_cond_timedwait(&s->q_cv, &s->q_mu, &until) == 0)
                ;
        }
        size_t n = s->count;
        for (size_t i = 0; i < n; i++)
            s->batch[i] = s->ring[(s->head + i) % s->cap];
        s->head = (s->head + n) % s->cap;
        s->count = 0;
        s->with_cb = 0;
        pthread_mutex_unlock(&s->q_mu);

        int err = run_batch(s, s->batch, n);

        struct op *head = NULL, *tail = NULL;
        size_t with_cb = 0;
        for (size_t i = 0; i < n; i++) {
            struct op *o = s->batch[i];
            s->batch[i] = NULL;
            if (err) {
                o->rc = err;
                o->seq = 0;
            }
            if (!o->cb) {
                free_op(s, o);
                continue;
            }
            o->next = NULL;
            if (tail)
                tail->next = o;
            else
                head = o;
            tail = o;
            with_cb++;
        }
        if (head) {
            pthread_mutex_lock(&s->done_mu);
            if (s->done_tail)
                s->done_tail->next = head;
            else
                s->done_head = head;
            s->done_tail = tail;
            pthread_mutex_unlock(&s->done_mu);
        }

        pthread_mutex_lock(&s->q_mu);
        s->done += n;
        if (err) {
            s->stats.failed_txns++;
            s->stats.failed_ops += n;
            s->stats.last_error = err;
        } else {
            s->stats.commits++;
        }
        if (n > s->stats.max_batch)
            s->stats.max_batch = n;
        pthread_cond_broadcast(&s->q_cv);
        pthread_mutex_unlock(&s->q_mu);

        if (with_cb && s->wake)
            s->wake(s->wake_ud);
    }
    return NULL;
}

/* ---------- open / close ---------- */

static void stop_checkpointer(store *s)
{
    if (!s->ck_started)
        return;
    pthread_mutex_lock(&s->ck_mu);
    s->ck_stop = 1;
    pthread_cond_signal(&s->ck_cv);
    pthread_mutex_unlock(&s->ck_mu);
    pthread_join(s->ck_thread, NULL);
    pthread_mutex_destroy(&s->ck_mu);
    pthread_cond_destroy(&s->ck_cv);
    s->ck_started = 0;
}

/* The writer connection closes last: as the last connection it checkpoints
 * the WAL and removes it. */
static void close_dbs(store *s)
{
    stop_checkpointer(s);
    if (s->cdb)
        sqlite3_close(s->cdb);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    if (s->rdb)
        sqlite3_close(s->rdb);
    if (s->db)
        sqlite3_close(s->db);
}

static void free_bufs(store *s)
{
    while (s->pool) {
        struct op *o = s->pool;
        s->pool = o->next;
        free(o);
    }
    pthread_mutex_destroy(&s->pool_mu);
    free(s->ring);
    free(s->batch);
    free(s->xenc);
    free(s->xraw);
    free(s->xidx);
    free(s);
}

int store_open(const char *path, int dim, double text_weight, unsigned flags, store_wake_fn wake,
               void *wake_ud, size_t queue_cap, store **out, char *err, size_t errlen)
{
    assert(out);
    *out = NULL;
    if (!path || !path[0] || strlen(path) > 4000 || dim < 1 || dim > STORE_MAX_DIM ||
        !isfinite(text_weight) || !(text_weight > 0) || queue_cap < 1 || queue_cap > (1u << 24)) {
        util_errf(err, errlen,
                  "store_open: invalid arguments (path, dim 1..%d, text_weight > 0, "
                  "queue_cap >= 1)",
                  STORE_MAX_DIM);
        return BD_ERR_INVALID;
    }
    int r;
    if ((flags & STORE_RESET) && (r = remove_files(path, err, errlen)))
        return r;
    struct stat stt;
    if (stat(path, &stt) != 0) {
        if (errno != ENOENT) {
            util_errf(err, errlen, "%s: %s", path, strerror(errno));
            return BD_ERR_IO;
        }
        /* A WAL without its database would be replayed into the new file. */
        char wal[4100];
        snprintf(wal, sizeof wal, "%s-wal", path);
        if (stat(wal, &stt) == 0) {
            util_errf(err, errlen,
                      "%s does not exist but %s does (the database was removed without its "
                      "WAL); refusing to start fresh: move the WAL away or use --reset-state",
                      path, wal);
            return BD_ERR_CORRUPT;
        }
        if ((r = create_fresh(path, dim, text_weight, err, errlen)))
            return r;
    } else if (!S_ISREG(stt.st_mode)) {
        util_errf(err, errlen, "%s: exists but is not a regular file", path);
        return BD_ERR_CORRUPT;
    }

    store *s = calloc(1, sizeof *s);
    if (!s)
        return BD_ERR_NOMEM;
    s->dim = dim;
    s->wake = wake;
    s->wake_ud = wake_ud;
    s->cap = queue_cap;
    s->purged_below = -HUGE_VAL;
    pthread_mutex_init(&s->pool_mu, NULL);
    s->ring = calloc(queue_cap, sizeof *s->ring);
    s->batch = calloc(queue_cap, sizeof *s->batch);
    s->xenc = malloc((size_t)dim * 8);
    s->xraw = malloc((size_t)dim * sizeof *s->xraw);
    s->xidx = malloc((size_t)dim);
    if (!s->ring || !s->batch || !s->xenc || !s->xraw || !s->xidx) {
        r = BD_ERR_NOMEM;
        goto fail;
    }
    int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE, NULL);
    if (rc != SQLITE_OK) {
        util_errf(err, errlen, "%s: cannot open: %s", path,
                  s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        r = map_sqlite(rc) == BD_ERR_NOMEM ? BD_ERR_NOMEM : BD_ERR_IO;
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    int version = 0, tw_missing = 0;
    if ((r = validate(s->db, path, dim, text_weight, &version, &tw_missing, err, errlen)))
        goto fail;
    char mode[32];
    rc = query_text(s->db, "PRAGMA journal_mode=WAL", mode, sizeof mode);
    if (rc != SQLITE_OK || strcmp(mode, "wal") != 0) {
        util_errf(err, errlen, "%s: cannot enable WAL (%s)", path,
                  rc != SQLITE_OK ? sqlite3_errmsg(s->db) : mode);
        r = BD_ERR_IO;
        goto fail;
    }
    /* synchronous=FULL: in WAL mode NORMAL may lose the last commits on power
     * loss (the WAL is fsynced only at checkpoints); FULL fsyncs the WAL at
     * every commit, so an acknowledged feedback survives power loss. */
    if ((r = exec_sql(s->db,
                      "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;"
                      "PRAGMA journal_size_limit=67108864; PRAGMA wal_autocheckpoint=0;",
                      err, errlen)))
        goto fail;
    if (version < STORE_SCHEMA_VERSION && (r = migrate(s->db, path, version, err, errlen)))
        goto fail;
    if (tw_missing) { /* older banditd: the value it ran with is unknown, record ours */
        char sql[128];
        snprintf(sql, sizeof sql, "INSERT OR IGNORE INTO meta VALUES('text_weight','%.17g')",
                 text_weight);
        if ((r = exec_sql(s->db, sql, err, errlen)))
            goto fail;
    }
    for (int i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK) {
            util_errf(err, errlen, "%s: prepare: %s", path, sqlite3_errmsg(s->db));
            r = BD_ERR_CORRUPT;
            goto fail;
        }
    }
    rc = sqlite3_open_v2(path, &s->rdb, SQLITE_OPEN_READONLY, NULL);
    if (rc != SQLITE_OK) {
        util_errf(err, errlen, "%s: cannot open for reading: %s", path, sqlite3_errstr(rc));
        r = BD_ERR_IO;
        goto fail;
    }
    sqlite3_busy_timeout(s->rdb, STORE_BUSY_TIMEOUT_MS);
    rc = sqlite3_open_v2(path, &s->cdb, SQLITE_OPEN_READWRITE, NULL);
    if (rc != SQLITE_OK) {
        util_errf(err, errlen, "%s: cannot open for checkpoints: %s", path, sqlite3_errstr(rc));
        r = BD_ERR_IO;
        goto fail;
    }
    /* The checkpoint fsyncs the WAL and the database file like FULL does. */
    if ((r = exec_sql(s->cdb, "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;", err,
                      errlen)))
        goto fail;
    pthread_mutex_init(&s->ck_mu, NULL);
    pthread_cond_init(&s->ck_cv, NULL);
    if (pthread_create(&s->ck_thread, NULL, checkpointer_main, s) != 0) {
        util_errf(err, errlen, "store: cannot start the checkpointer thread");
        r = BD_ERR_NOMEM;
        goto fail;
    }
    s->ck_started = 1;
    sqlite3_wal_hook(s->db, wal_hook, s);
    pthread_mutex_init(&s->q_mu, NULL);
    pthread_cond_init(&s->q_cv, NULL);
    pthread_mutex_init(&s->done_mu, NULL);
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
        util_errf(err, errlen, "store: cannot start the writer thread");
        pthread_mutex_destroy(&s->q_mu);
        pthread_cond_destroy(&s->q_cv);
        pthread_mutex_destroy(&s->done_mu);
        r = BD_ERR_NOMEM;
        goto fail;
    }
    *out = s;
    return 0;
fail:
    close_dbs(s);
    free_bufs(s);
    return r;
}

size_t store_dispatch(store *s)
{
    pthread_mutex_lock(&s->done_mu);
    struct op *o = s->done_head;
    s->done_head = s->done_tail = NULL;
    pthread_mutex_unlock(&s->done_mu);
    size_t n = 0;
    while (o) {
        struct op *next = o->next;
        o->cb(o->rc, o->seq, o->ud);
        free_op(s, o);
        o = next;
        n++;
    }
    return n;
}

void store_close(store *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->q_mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
    pthread_join(s->thread, NULL);
    assert(s->count == 0);
    /* Callbacks may not enqueue any more (the writer is gone): put_* answers
     * BD_ERR_BUSY once stop is set. */
    store_dispatch(s);
    close_dbs(s);
    pthread_mutex_destroy(&s->q_mu);
    pthread_cond_destroy(&s->q_cv);
    pthread_mutex_destroy(&s->done_mu);
    free_bufs(s);
}

void store_flush(store *s)
{
    pthread_mutex_lock(&s->q_mu);
    uint64_t target = s->enqueued;
    while (s->done < target)
        pthread_cond_wait(&s->q_cv, &s->q_mu);
    pthread_mutex_unlock(&s->q_mu);
}

void store_get_stats(store *s, struct store_stats *out)
{
    pthread_mutex_lock(&s->q_mu);
    *out = s->stats;
    out->queue_depth = s->count;
    pthread_mutex_unlock(&s->q_mu);
}

int store_dim(const store *s)
{
    return s->dim;
}

/* ---------- enqueue ---------- */

static struct op *op_new(store *s, enum op_kind kind, size_t xlen, store_done_fn cb, void *ud)
{
    assert(xlen <= (size_t)s->dim * 8);
    pthread_mutex_lock(&s->pool_mu);
    struct op *o = s->pool;
    if (o) {
        s->pool = o->next;
        s->pool_n--;
    }
    pthread_mutex_unlock(&s->pool_mu);
    if (o)
        memset(o, 0, sizeof *o); /* x is written by the caller (xlen bytes) */
    else if (!(o = calloc(1, sizeof *o + (size_t)s->dim * 8)))
        return NULL;
    o->kind = kind;
    o->cb = cb;
    o->ud = ud;
    o->xlen = xlen;
    return o;
}

/* Takes o on success; on failure the caller frees it. */
static int enqueue(store *s, struct op *o)
{
    pthread_mutex_lock(&s->q_mu);
    if (s->count == s->cap || s->stop) {
        s->stats.rejected++;
        pthread_mutex_unlock(&s->q_mu);
        return BD_ERR_BUSY;
    }
    s->ring[(s->head + s->count) % s->cap] = o;
    s->count++;
    if (o->cb)
        s->with_cb++;
    s->enqueued++;
    s->stats.enqueued++;
    /* Wake the writer only when it would act: it waits for a first op, or
     * lingers on fire-and-forget ops until one with a callback arrives or the
     * queue fills (waking it for every decision cost a context switch each).
     * Broadcast: store_flush waits on the same condition variable. */
    if (s->count == 1 || o->cb || s->count == s->cap)
        pthread_cond_broadcast(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
    return 0;
}

static int enqueue_or_free(store *s, struct op *o)
{
    int r = enqueue(s, o);
    if (r)
        free_op(s, o);
    return r;
}

int store_put_decision(store *s, const struct store_decision *d, store_done_fn cb, void *ud)
{
    return store_put_decision_enc(s, d, NULL, 0, cb, ud);
}

int store_put_decision_enc(store *s, const struct store_decision *d, const unsigned char *xblob,
                           size_t xblob_len, store_done_fn cb, void *ud)
{
    size_t dim = (size_t)s->dim;
    if (!d || !d->x || (xblob && (xblob_len < 1 || xblob_len > dim * 8)))
        return BD_ERR_INVALID;
    /* The blob's dictionary is x's distinct values: checking it is enough. */
    if (xblob ? !xblob_all_finite(xblob, xblob_len, dim) : !util_all_finite(d->x, dim))
        return BD_ERR_INVALID;
    size_t xlen = xblob ? xblob_len : dim * 8;
    struct op *o = op_new(s, OP_DECISION, xlen, cb, ud);
    if (!o)
        return BD_ERR_NOMEM;
    if (util_copy_name(o->id, sizeof o->id, d->id, 0) ||
        util_copy_name(o->id2, sizeof o->id2, d->completion_id, 1) ||
        util_copy_name(o->arm, sizeof o->arm, d->arm_name, 0)) {
        free_op(s, o);
        return BD_ERR_INVALID;
    }
    o->x_enc = xblob != NULL;
    memcpy(o->x, xblob ? (const void *)xblob : (const void *)d->x, xlen);
    o->w = d->w;
    o->t1 = d->created_s;
    o->t2 = d->cost_usd;
    o->t3 = d->latency_ms;
    o->client = d->client;
    return enqueue_or_free(s, o);
}

/* A non-streaming answer completes its decision right after queueing it:
 * when that decision is still the queue's last op, fold the completion into
 * it (one INSERT instead of an INSERT and an UPDATE). Returns 1 if folded. */
static int fold_completion(store *s, const char *id, const char *completion_id, double cost_usd,
                           double latency_ms)
{
    int folded = 0;
    pthread_mutex_lock(&s->q_mu);
    if (s->count > 0 && !s->stop) {
        struct op *t = s->ring[(s->head + s->count - 1) % s->cap];
        if (t->kind == OP_DECISION && strcmp(t->id, id) == 0) {
            if (completion_id && completion_id[0])
                memcpy(t->id2, completion_id, strlen(completion_id) + 1);
            t->t2 = cost_usd;
            t->t3 = latency_ms;
            folded = 1;
        }
    }
    pthread_mutex_unlock(&s->q_mu);
    return folded;
}

int store_complete_decision(store *s, const char *id, const char *completion_id, double cost_usd,
                            double latency_ms)
{
    if (!id || strnlen(id, STORE_ID_MAX) >= STORE_ID_MAX ||
        (completion_id && strnlen(completion_id, STORE_ID_MAX) >= STORE_ID_MAX))
        return BD_ERR_INVALID;
    if (fold_completion(s, id, completion_id, cost_usd, latency_ms))
        return 0;
    struct op *o = op_new(s, OP_COMPLETE, 0, NULL, NULL);
    if (!o)
        return BD_ERR_NOMEM;
    if (util_copy_name(o->id, sizeof o->id, id, 0) ||
        util_copy_name(o->id2, sizeof o->id2, completion_id, 1)) {
        free_op(s, o);
        return BD_ERR_INVALID;
    }
    o->t2 = cost_usd;
    o->t3 = latency_ms;
    return enqueue_or_free(s, o);
}

int store_put_feedback(store *s, const char *request_id, const char *arm_name, const double *x,
                       int dim, double reward, double at_s, store_done_fn cb, void *ud)
{
    if (!cb || !x || dim != s->dim || !isfinite(reward) || !isfinite(at_s) ||
        !util_all_finite(x, (size_t)dim))
        return BD_ERR_INVALID;
    struct op *o = op_new(s, OP_FEEDBACK, (size_t)dim * 8, cb, ud);
    if (!o)
        return BD_ERR_NOMEM;
    if (util_copy_name(o->id, sizeof o->id, request_id, 0) ||
        util_copy_name(o->arm, sizeof o->arm, arm_name, 0)) {
        free_op(s, o);
        return BD_ERR_INVALID;
    }
    memcpy(o->x, x, (size_t)dim * sizeof *x);
    o->t1 = reward;
    o->t2 = at_s;
    return enqueue_or_free(s, o);
}

int store_put_snapshot(store *s, const struct store_arm_state *arms, int n, store_done_fn cb,
                       void *ud)
{
    if (!arms || n < 1)
        return BD_ERR_INVALID;
    size_t d = (size_t)s->dim;
    for (int i = 0; i < n; i++)
        if (!arms[i].A || !arms[i].b)
            return BD_ERR_INVALID;
    /* Refuse early when the queue is visibly full: the copy below is big. */
    pthread_mutex_lock(&s->q_mu);
    int full = s->count == s->cap || s->stop;
    if (full)
        s->stats.rejected++;
    pthread_mutex_unlock(&s->q_mu);
    if (full)
        return BD_ERR_BUSY;
    struct op *o = op_new(s, OP_SNAPSHOT, 0, cb, ud);
    if (!o)
        return BD_ERR_NOMEM;
    o->snap = calloc((size_t)n, sizeof *o->snap);
    if (!o->snap) {
        free_op(s, o);
        return BD_ERR_NOMEM;
    }
    o->n_snap = n;
    for (int i = 0; i < n; i++) {
        struct snap_arm *a = &o->snap[i];
        if (util_copy_name(a->name, sizeof a->name, arms[i].arm_name, 0)) {
            free_op(s, o);
            return BD_ERR_INVALID;
        }
        a->st = arms[i];
        a->st.arm_name = NULL;
        a->st.A = a->st.b = NULL;
        a->A = malloc(d * d * 8);
        a->b = malloc(d * 8);
        if (!a->A || !a->b) {
            free_op(s, o);
            return BD_ERR_NOMEM;
        }
        xblob_put_le(a->A, arms[i].A, d * d);
        xblob_put_le(a->b, arms[i].b, d);
    }
    return enqueue_or_free(s, o);
}

int store_purge_expired(store *s, double now_s, double ttl_s)
{
    if (!isfinite(now_s) || !isfinite(ttl_s))
        return BD_ERR_INVALID;
    struct op *o = op_new(s, OP_PURGE, 0, NULL, NULL);
    if (!o)
        return BD_ERR_NOMEM;
    o->t1 = now_s - ttl_s;
    return enqueue_or_free(s, o);
}

/* ---------- synchronous reads ---------- */

/* Decode a blob of exactly n doubles into out. */
static int get_doubles(sqlite3_stmt *st, int col, double *out, size_t n)
{
    const void *p = sqlite3_column_blob(st, col);
    size_t len = (size_t)sqlite3_column_bytes(st, col);
    if (len != n * 8 || (!p && n))
        return BD_ERR_CORRUPT;
    xblob_get_le(out, p, n);
    return 0;
}

/* Decode a features blob (raw or dictionary form) into dim doubles. */
static int get_x(sqlite3_stmt *st, int col, double *out, size_t dim)
{
    return xblob_decode(out, sqlite3_column_blob(st, col), (size_t)sqlite3_column_bytes(st, col),
                        dim);
}

static const char *col_text(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return t ? (const char *)t : "";
}

int store_load_decisions(store *s, double now_s, double ttl_s,
                         int (*cb)(const struct store_decision *d, void *ud), void *ud)
{
    return store_load_decisions_ex(s, now_s, ttl_s, 0, cb, ud);
}

int store_load_decisions_ex(store *s, double now_s, double ttl_s, int answered,
                            int (*cb)(const struct store_decision *d, void *ud), void *ud)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        s->rdb,
        answered
            ? "SELECT id, completion_id, arm_name, x, w_q, w_c, w_l, created_s, cost_usd,"
              " latency_ms, client FROM decisions d WHERE created_s >= ? AND EXISTS"
              " (SELECT 1 FROM feedback f WHERE f.request_id = d.id) ORDER BY created_s, rowid"
            : "SELECT id, completion_id, arm_name, x, w_q, w_c, w_l, created_s, cost_usd,"
              " latency_ms, client FROM decisions d WHERE created_s >= ? AND NOT EXISTS"
              " (SELECT 1 FROM feedback f WHERE f.request_id = d.id) ORDER BY created_s, rowid",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return map_sqlite(rc);
    double *x = malloc((size_t)s->dim * sizeof *x);
    int r = x ? 0 : BD_ERR_NOMEM;
    sqlite3_bind_double(st, 1, now_s - ttl_s);
    while (!r && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((r = get_x(st, 3, x, (size_t)s->dim)))
            break;
        struct store_decision d = {
            .id = col_text(st, 0),
            .completion_id = col_text(st, 1),
            .arm_name = col_text(st, 2),
            .x = x,
            .w = {sqlite3_column_double(st, 4), sqlite3_column_double(st, 5),
                  sqlite3_column_double(st, 6)},
            .created_s = sqlite3_column_double(st, 7),
            .cost_usd = sqlite3_column_double(st, 8),
            .latency_ms = sqlite3_column_double(st, 9),
            .client = (uint64_t)sqlite3_column_int64(st, 10),
        };
        r = cb(&d, ud);
    }
    if (!r && rc != SQLITE_DONE)
        r = map_sqlite(rc);
    sqlite3_finalize(st);
    free(x);
    return r;
}

int store_load_model(store *s, int (*cb)(const struct store_arm_state *a, void *ud), void *ud)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        s->rdb,
        "SELECT arm_name, dim, A, b, n, feedback_seq, pulls, feedback, reward_sum,"
        " exp_completion_tokens, latency_ms, ttfb_ms, usage_obs, taken_at FROM arm_stats s"
        " WHERE id = (SELECT max(id) FROM arm_stats t WHERE t.arm_name = s.arm_name)"
        " ORDER BY arm_name",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return map_sqlite(rc);
    size_t d = (size_t)s->dim;
    double *A = malloc(d * d * sizeof *A), *b = malloc(d * sizeof *b);
    int r = A && b ? 0 : BD_ERR_NOMEM;
    while (!r && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_int(st, 1) != s->dim) {
            r = BD_ERR_CORRUPT;
            break;
        }
        if ((r = get_doubles(st, 2, A, d * d)) || (r = get_doubles(st, 3, b, d)))
            break;
        struct store_arm_state a = {
            .arm_name = col_text(st, 0),
            .A = A,
            .b = b,
            .n = (uint64_t)sqlite3_column_int64(st, 4),
            .feedback_seq = sqlite3_column_int64(st, 5),
            .pulls = (uint64_t)sqlite3_column_int64(st, 6),
            .feedback = (uint64_t)sqlite3_column_int64(st, 7),
            .reward_sum = sqlite3_column_double(st, 8),
            .exp_completion_tokens = sqlite3_column_double(st, 9),
            .latency_ms = sqlite3_column_double(st, 10),
            .ttfb_ms = sqlite3_column_double(st, 11),
            .usage_obs = (uint64_t)sqlite3_column_int64(st, 12),
            .taken_at = sqlite3_column_double(st, 13),
        };
        r = cb(&a, ud);
    }
    if (!r && rc != SQLITE_DONE)
        r = map_sqlite(rc);
    sqlite3_finalize(st);
    free(A);
    free(b);
    return r;
}

int store_load_feedback_after(store *s, const char *arm_name, int64_t after_seq,
                              int (*cb)(const struct store_feedback *f, void *ud), void *ud)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->rdb,
                                arm_name ? "SELECT f.seq, f.request_id, f.arm_name, " FEEDBACK_X
                                           ", f.reward, f.at_s" FEEDBACK_FROM
                                           " WHERE f.seq > ?1 AND f.arm_name = ?2 ORDER BY f.seq"
                                         : "SELECT f.seq, f.request_id, f.arm_name, " FEEDBACK_X
                                           ", f.reward, f.at_s" FEEDBACK_FROM
                                           " WHERE f.seq > ?1 ORDER BY f.seq",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return map_sqlite(rc);
    sqlite3_bind_int64(st, 1, after_seq);
    if (arm_name)
        sqlite3_bind_text(st, 2, arm_name, -1, SQLITE_STATIC);
    double *x = malloc((size_t)s->dim * sizeof *x);
    int r = x ? 0 : BD_ERR_NOMEM;
    while (!r && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((r = get_x(st, 3, x, (size_t)s->dim)))
            break;
        struct store_feedback f = {
            .seq = sqlite3_column_int64(st, 0),
            .request_id = col_text(st, 1),
            .arm_name = col_text(st, 2),
            .x = x,
            .reward = sqlite3_column_double(st, 4),
            .at_s = sqlite3_column_double(st, 5),
        };
        r = cb(&f, ud);
    }
    if (!r && rc != SQLITE_DONE)
        r = map_sqlite(rc);
    sqlite3_finalize(st);
    free(x);
    return r;
}

/* ---------- export ---------- */

/* cJSON prints doubles with 15 significant digits unless that is "close
 * enough" (within an epsilon), so it may lose the last bits: print numbers
 * ourselves with %.17g, which round-trips exactly. Non-finite → null. */
static void fmt_num(char *out, size_t outlen, double v)
{
    if (isfinite(v))
        snprintf(out, outlen, "%.17g", v);
    else
        snprintf(out, outlen, "null");
}

static int add_num(cJSON *o, const char *name, double v)
{
    char num[40];
    fmt_num(num, sizeof num, v);
    return cJSON_AddRawToObject(o, name, num) != NULL;
}

static cJSON *x_array(sqlite3_stmt *st, int col, int dim, double *buf)
{
    if (get_x(st, col, buf, (size_t)dim))
        return NULL;
    size_t cap = (size_t)dim * 26 + 3, len = 0;
    char *text = malloc(cap);
    if (!text)
        return NULL;
    text[len++] = '[';
    for (int i = 0; i < dim; i++) {
        char num[40];
        fmt_num(num, sizeof num, buf[i]);
        len += (size_t)snprintf(text + len, cap - len, "%s%s", i ? "," : "", num);
    }
    text[len++] = ']';
    text[len] = '\0';
    assert(len < cap);
    cJSON *raw = cJSON_CreateRaw(text);
    free(text);
    return raw;
}

static int emit_line(cJSON *obj, FILE *out)
{
    char *line = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    if (!line)
        return BD_ERR_NOMEM;
    int bad = fputs(line, out) == EOF || fputc('\n', out) == EOF;
    cJSON_free(line);
    return bad ? BD_ERR_IO : 0;
}

static int export_rows(sqlite3 *db, FILE *out, int dim, int feedback, char *err, size_t errlen)
{
    const char *sql =
        feedback ? "SELECT f.seq, f.request_id, f.arm_name, " FEEDBACK_X
                   ", f.reward, f.at_s" FEEDBACK_FROM " ORDER BY f.seq"
                 : "SELECT id, completion_id, arm_name, x, w_q, w_c, w_l, created_s, cost_usd,"
                   " latency_ms, client FROM decisions ORDER BY created_s, rowid";
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        util_errf(err, errlen, "export: %s", sqlite3_errmsg(db));
        return map_sqlite(rc) == BD_ERR_IO ? BD_ERR_CORRUPT : map_sqlite(rc);
    }
    double *buf = malloc((size_t)dim * sizeof *buf);
    int r = buf ? 0 : BD_ERR_NOMEM;
    while (!r && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *o = cJSON_CreateObject();
        cJSON *x = x_array(st, 3, dim, buf);
        if (!o || !x) {
            r = !x && o ? BD_ERR_CORRUPT : BD_ERR_NOMEM;
            util_errf(err, errlen, "export: bad row (features blob of the wrong size?)");
            cJSON_Delete(o);
            cJSON_Delete(x);
            break;
        }
        int ok = 1;
        if (feedback) {
            ok &= cJSON_AddStringToObject(o, "type", "feedback") != NULL;
            ok &= add_num(o, "seq", (double)sqlite3_column_int64(st, 0));
            ok &= cJSON_AddStringToObject(o, "request_id", col_text(st, 1)) != NULL;
            ok &= cJSON_AddStringToObject(o, "arm", col_text(st, 2)) != NULL;
            ok &= add_num(o, "reward", sqlite3_column_double(st, 4));
            ok &= add_num(o, "at_s", sqlite3_column_double(st, 5));
        } else {
            char client[24];
            snprintf(client, sizeof client, "%016" PRIx64, (uint64_t)sqlite3_column_int64(st, 10));
            ok &= cJSON_AddStringToObject(o, "type", "decision") != NULL;
            ok &= cJSON_AddStringToObject(o, "id", col_text(st, 0)) != NULL;
            if (sqlite3_column_type(st, 1) == SQLITE_NULL)
                ok &= cJSON_AddNullToObject(o, "completion_id") != NULL;
            else
                ok &= cJSON_AddStringToObject(o, "completion_id", col_text(st, 1)) != NULL;
            ok &= cJSON_AddStringToObject(o, "arm", col_text(st, 2)) != NULL;
            cJSON *w = cJSON_AddObjectToObject(o, "w");
            ok &= w != NULL;
            if (w) {
                ok &= add_num(w, "quality", sqlite3_column_double(st, 4));
                ok &= add_num(w, "cost", sqlite3_column_double(st, 5));
                ok &= add_num(w, "latency", sqlite3_column_double(st, 6));
            }
            ok &= add_num(o, "created_s", sqlite3_column_double(st, 7));
            ok &= add_num(o, "cost_usd", sqlite3_column_double(st, 8));
            ok &= add_num(o, "latency_ms", sqlite3_column_double(st, 9));
            ok &= cJSON_AddStringToObject(o, "client", client) != NULL;
        }
        ok &= cJSON_AddItemToObject(o, "x", x) != 0;
        if (!ok) {
            cJSON_Delete(o);
            r = BD_ERR_NOMEM;
            break;
        }
        r = emit_line(o, out);
        if (r)
            util_errf(err, errlen, "export: %s", r == BD_ERR_IO ? "write failed" : "out of memory");
    }
    if (!r && rc != SQLITE_DONE) {
        util_errf(err, errlen, "export: %s", sqlite3_errmsg(db));
        r = map_sqlite(rc);
    }
    sqlite3_finalize(st);
    free(buf);
    return r;
}

int store_export(const char *path, FILE *out, char *err, size_t errlen)
{
    if (!path || !out) {
        util_errf(err, errlen, "export: no path or output");
        return BD_ERR_INVALID;
    }
    struct stat stt;
    if (stat(path, &stt) != 0) {
        util_errf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? BD_ERR_NOTFOUND : BD_ERR_IO;
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    int r = 0;
    if (rc != SQLITE_OK) {
        util_errf(err, errlen, "%s: cannot open read-only: %s", path,
                  db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return BD_ERR_IO;
    }
    sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
    char v[64];
    rc = query_text(db, "PRAGMA application_id", v, sizeof v);
    if (rc != SQLITE_OK || atol(v) != STORE_APP_ID) {
        util_errf(err, errlen, "%s: not a banditd database", path);
        r = BD_ERR_CORRUPT;
        goto out;
    }
    /* One read transaction: a consistent view while a daemon keeps writing. */
    if ((r = exec_sql(db, "BEGIN", err, errlen)))
        goto out;
    int dim = 0, ver = 0;
    if (query_text(db, "SELECT value FROM meta WHERE key='dim'", v, sizeof v) == SQLITE_OK)
        dim = atoi(v);
    if (query_text(db, "SELECT value FROM meta WHERE key='schema_version'", v, sizeof v) ==
        SQLITE_OK)
        ver = atoi(v);
    if (dim < 1 || dim > STORE_MAX_DIM || ver < 1) {
        util_errf(err, errlen, "%s: banditd database without valid meta", path);
        r = BD_ERR_CORRUPT;
        goto out;
    }
    char created[64] = "", tw[64] = "";
    query_text(db, "SELECT value FROM meta WHERE key='created'", created, sizeof created);
    /* absent in a database of an older banditd that was never reopened */
    query_text(db, "SELECT value FROM meta WHERE key='text_weight'", tw, sizeof tw);
    char *end = NULL;
    double twv = tw[0] ? strtod(tw, &end) : 0;
    if (tw[0] && (*end != '\0' || !isfinite(twv) || !(twv > 0))) {
        util_errf(err, errlen, "%s: invalid text_weight '%s'", path, tw);
        r = BD_ERR_CORRUPT;
        goto out;
    }
    cJSON *m = cJSON_CreateObject();
    if (!m || !cJSON_AddStringToObject(m, "type", "meta") ||
        !cJSON_AddNumberToObject(m, "schema_version", ver) ||
        !cJSON_AddNumberToObject(m, "dim", dim) || (tw[0] && !add_num(m, "text_weight", twv)) ||
        !cJSON_AddStringToObject(m, "created", created)) {
        cJSON_Delete(m);
        r = BD_ERR_NOMEM;
        goto out;
    }
    if ((r = emit_line(m, out)) || (r = export_rows(db, out, dim, 0, err, errlen)) ||
        (r = export_rows(db, out, dim, 1, err, errlen)))
        goto out;
    if (fflush(out) != 0) {
        util_errf(err, errlen, "export: write failed: %s", strerror(errno));
        r = BD_ERR_IO;
    }
out:
    sqlite3_close(db); /* ends the read transaction */
    return r;
}
