/* store — durable state of banditd (DESIGN.md §4): pending decisions, the
 * feedback log and periodic per-arm snapshots, in one SQLite database (WAL).
 * See docs/state.md for the schema and the exact guarantees.
 *
 * Threads. A store is owned by one thread, the event loop ("loop thread"):
 * every function below is called from it, except where noted. Writes never
 * run on the loop thread: the put_* functions copy their arguments into an
 * operation, append it to a bounded FIFO queue and return at once. One writer
 * thread drains everything queued into one transaction (group commit),
 * commits it (synchronous=FULL when an op in it has a callback: committed ⇒
 * survives power loss, and so does every earlier commit; a batch without a
 * callback commits with NORMAL and is fsynced within 1 s) and moves the
 * operations that carry a callback onto a completion list, then calls
 * wake(wake_ud) once. The loop thread then calls store_dispatch(), which runs
 * the callbacks on the loop thread. The writer never calls a user callback.
 *
 * Back-pressure. Enqueue never blocks: when the queue holds queue_cap
 * operations the put_* function returns BD_ERR_BUSY and nothing is kept; the
 * HTTP layer answers 503 with Retry-After. A put_* that returns an error
 * never fires its callback; one that returns 0 fires it exactly once (at the
 * latest from store_close).
 *
 * Ordering. Operations commit in enqueue order (one FIFO, one writer): a
 * decision put before a feedback is committed in the same transaction as
 * that feedback or an earlier one. Callbacks run in commit order, so the seq
 * numbers handed to feedback callbacks increase across dispatches.
 *
 * Failures. A transaction that fails (disk full, I/O error, lock timeout)
 * rolls back as a whole: every callback of it gets the error (BD_ERR_IO,
 * BD_ERR_BUSY for a lock timeout, BD_ERR_CORRUPT) and none of its rows is
 * written; operations without a callback are dropped and counted in
 * store_stats().failed_ops. The next batch tries again normally.
 *
 * Locks (store.c): q_mu + q_cv guard the queue (the loop thread enqueues,
 * the writer drains, store_flush waits on q_cv); done_mu guards the
 * completion list (the writer appends, store_dispatch takes). They are never
 * held together, never across SQLite calls or user callbacks, and wake() is
 * called with no lock held. */
#ifndef BANDITD_STORE_H
#define BANDITD_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "banditd/decisions.h"
#include "banditd/pref.h"

#define STORE_SCHEMA_VERSION 3 /* 1 and 2 are migrated on open (docs/state.md) */
#define STORE_ID_MAX 128       /* request/completion ids: at most 127 chars */
#define STORE_NAME_MAX 64      /* arm names: at most 63 chars (CONFIG_NAME_MAX) */

/* store_open flags */
#define STORE_RESET 0x1u /* delete an existing database (and its -wal/-shm) first */

typedef struct store store;

/* Called by the writer thread (with no store lock held) after it has put
 * finished operations on the completion list. Must be thread-safe and cheap,
 * e.g. curl_multi_wakeup(). May be NULL: the loop then polls store_dispatch. */
typedef void (*store_wake_fn)(void *wake_ud);

/* Completion callback, run by store_dispatch on the loop thread.
 * rc: 0 = committed; BD_ERR_EXISTS = a feedback for this request id is
 * already stored (nothing written); BD_ERR_IO / BD_ERR_BUSY / BD_ERR_CORRUPT /
 * BD_ERR_NOMEM = the transaction failed, nothing written.
 * seq: for a committed feedback its feedback.seq (> 0), else 0. */
typedef void (*store_done_fn)(int rc, int64_t seq, void *ud);

/* A decision row. In store_put_decision all pointers are borrowed for the
 * call (copied); in store_load_decisions they are valid during the callback. */
struct store_decision {
    const char *id;            /* request id, 1..STORE_ID_MAX-1 chars */
    const char *completion_id; /* upstream id; NULL or "" = not known yet */
    const char *arm_name;      /* 1..STORE_NAME_MAX-1 chars */
    const double *x;           /* dim features */
    struct pref_weights w;
    double created_s; /* wall clock */
    double cost_usd;
    double latency_ms;
    uint64_t client; /* hash of the client key, 0 = none */
};

/* The row of an in-memory decision under arm_name (borrows d's strings and x:
 * valid while d is). Shared by both back ends (store.c, store_redis.c). */
static inline struct store_decision store_decision_of(const struct decision *d,
                                                      const char *arm_name)
{
    struct store_decision sd = {
        .id = d->id,
        .completion_id = d->completion_id,
        .arm_name = arm_name,
        .x = d->x,
        .w = d->w,
        .created_s = d->created_s,
        .cost_usd = d->cost_usd,
        .latency_ms = d->latency_ms,
        .client = d->client,
    };
    return sd;
}

/* A feedback row, as loaded (pointers valid during the callback). */
struct store_feedback {
    int64_t seq;            /* commit order, increasing, > 0 */
    const char *request_id; /* the decision's request id */
    const char *arm_name;
    const double *x; /* dim features */
    double reward;
    double at_s; /* wall clock when the feedback was received */
};

/* One arm's state for a snapshot. Borrowed in store_put_snapshot (copied at
 * call time); valid during the callback in store_load_model. */
struct store_arm_state {
    const char *arm_name;
    const double *A;      /* dim*dim, row-major */
    const double *b;      /* dim */
    uint64_t n;           /* linucb updates */
    int64_t feedback_seq; /* the last feedback seq included in A, b (0 = none) */
    uint64_t pulls;
    uint64_t feedback; /* rewards applied */
    double reward_sum;
    double exp_completion_tokens;
    double latency_ms;
    double ttfb_ms;
    uint64_t usage_obs;
    double taken_at; /* wall clock; set by the caller on put */
};

struct store_stats {
    uint64_t enqueued;    /* operations accepted */
    uint64_t rejected;    /* put_* calls refused with BD_ERR_BUSY */
    uint64_t commits;     /* transactions committed */
    uint64_t failed_txns; /* transactions rolled back */
    uint64_t failed_ops;  /* operations in failed transactions */
    uint64_t max_batch;   /* largest group commit so far (operations) */
    size_t queue_depth;   /* operations waiting now */
    int last_error;       /* last transaction error code (0 = none yet) */
};

/* Open (or create) the database at path for feature dimension dim and text
 * weight text_weight (config router.text_weight, > 0), start the
 * writer thread. queue_cap: maximum queued operations (>= 1); it is also the
 * largest group commit. Synchronous: call before the loop runs.
 *
 * - path does not exist: a fresh database is created atomically (built in a
 *   temporary file and renamed into place).
 * - path exists but is not a banditd database, or fails PRAGMA quick_check:
 *   BD_ERR_CORRUPT, the file is left untouched (never a silent fresh start).
 * - stored dim differs from dim: BD_ERR_INVALID ("store has dim=256, config
 *   says dim=512; use --reset-state or migrate").
 * - stored text_weight differs (compared exactly; stored as "%.17g"):
 *   BD_ERR_INVALID ("store has text_weight=0.5, config says text_weight=1;
 *   use --reset-state"), the file untouched. A database without the key
 *   (from an older banditd: the value it ran with is unknown) is accepted
 *   and gets text_weight recorded.
 * - schema version 1 or 2: migrated to STORE_SCHEMA_VERSION in one transaction;
 *   any other unknown version: BD_ERR_INVALID, the file untouched.
 * - flags & STORE_RESET: the database and its -wal/-shm are deleted first.
 * Returns 0 and *out, or an error with a message in err (*out = NULL). */
int store_open(const char *path, int dim, double text_weight, unsigned flags, store_wake_fn wake,
               void *wake_ud, size_t queue_cap, store **out, char *err, size_t errlen);

/* Check a recorded router.text_weight (text written with "%.17g") against the
 * configured one, exactly; shared by every place that records it (SQLite
 * meta, Redis meta, export dumps). 0; BD_ERR_CORRUPT when stored is not a
 * finite number > 0 ("<where>: invalid text_weight 'abc'"); BD_ERR_INVALID
 * when they differ ("<what> has text_weight=0.5, config says text_weight=1;
 * <fix>"). */
int store_text_weight_check(const char *stored, double text_weight, const char *what,
                            const char *where, const char *fix, char *err, size_t errlen);

/* Drain the queue, stop the writer thread, run the remaining callbacks (on
 * the calling thread, which must be the loop thread), close the database.
 * Callbacks run from here that call put_* get BD_ERR_BUSY. NULL is a no-op. */
void store_close(store *s);

/* Queue a decision (copied). cb may be NULL (fire and forget); with a cb the
 * caller learns when the row is committed. Returns 0, BD_ERR_BUSY (queue full),
 * BD_ERR_INVALID (bad id/arm name/x), or BD_ERR_NOMEM. */
int store_put_decision(store *s, const struct store_decision *d, store_done_fn cb, void *ud);

/* The same with d->x already encoded by xblob_encode: xblob, xblob_len bytes
 * (e.g. the decision table's copy, decisions_xblob; it must be d->x's
 * encoding). The op carries these bytes (~850 at dim=256 instead of 2,048)
 * and the writer binds them as they are, without encoding. xblob NULL: as
 * store_put_decision. BD_ERR_INVALID also for xblob_len 0 or > dim*8. */
int store_put_decision_enc(store *s, const struct store_decision *d, const unsigned char *xblob,
                           size_t xblob_len, store_done_fn cb, void *ud);

/* Record the completion id (NULL or "" = leave it) and the measured cost and
 * latency of decision id. Fire and forget; a missing id is not an error.
 * Returns 0, BD_ERR_BUSY, BD_ERR_INVALID or BD_ERR_NOMEM. */
int store_complete_decision(store *s, const char *id, const char *completion_id, double cost_usd,
                            double latency_ms);

/* Queue a feedback (copied). request_id must be the decision's request id
 * (not a completion id) so that uniqueness means exactly-once. cb is
 * required: it gets 0 and the row's seq once committed, or BD_ERR_EXISTS if
 * request_id already has a feedback, or a transaction error.
 * Returns 0, BD_ERR_BUSY, BD_ERR_INVALID (bad ids, dim != store's dim,
 * non-finite x or reward, cb NULL) or BD_ERR_NOMEM. */
int store_put_feedback(store *s, const char *request_id, const char *arm_name, const double *x,
                       int dim, double reward, double at_s, store_done_fn cb, void *ud);

/* Queue a snapshot of n arms (A, b copied now: O(n·dim²) on the caller's
 * thread). All arms go into one transaction. Older snapshots of the same arm
 * beyond the latest two are deleted. cb may be NULL.
 * Returns 0, BD_ERR_BUSY, BD_ERR_INVALID or BD_ERR_NOMEM. */
int store_put_snapshot(store *s, const struct store_arm_state *arms, int n, store_done_fn cb,
                       void *ud);

/* Queue the deletion of decisions older than ttl_s at now_s (created_s <
 * now_s - ttl_s) that have no feedback row. The feedback log is kept, and
 * so are the decisions it refers to (schema 2+ stores a feedback's features
 * once, in its decision row: docs/state.md). Returns 0, BD_ERR_BUSY or
 * BD_ERR_NOMEM. */
int store_purge_expired(store *s, double now_s, double ttl_s);

/* Run the callbacks of finished operations, in commit order, on the calling
 * (loop) thread. Returns how many ran. Call it whenever wake fired. */
size_t store_dispatch(store *s);

/* Block until every operation enqueued before the call is committed or
 * failed (callbacks are NOT run: call store_dispatch). Shutdown/tests only. */
void store_flush(store *s);

void store_get_stats(store *s, struct store_stats *out);
int store_dim(const store *s);

/* ---- synchronous start-up reads: call them before the loop runs (they use
 * a separate read-only connection of the loop thread and see committed rows
 * only; later calls are safe but block the caller) ---- */

/* Pending decisions: created_s >= now_s - ttl_s and no feedback stored, in
 * created order. cb returns 0 to continue, anything else stops the scan and is
 * returned. Returns 0, the cb's value, BD_ERR_CORRUPT (bad row) or BD_ERR_IO. */
int store_load_decisions(store *s, double now_s, double ttl_s,
                         int (*cb)(const struct store_decision *d, void *ud), void *ud);

/* The same with answered != 0: the decisions within the TTL that DO have a
 * feedback row (so that a restarted daemon answers 409, not 404, to a
 * repeated feedback). answered == 0 is store_load_decisions. */
int store_load_decisions_ex(store *s, double now_s, double ttl_s, int answered,
                            int (*cb)(const struct store_decision *d, void *ud), void *ud);

/* The latest snapshot of every arm name ever snapshotted (in name order).
 * Same return convention. */
int store_load_model(store *s, int (*cb)(const struct store_arm_state *a, void *ud), void *ud);

/* Feedback rows of arm_name (NULL = every arm) with seq > after_seq, in seq
 * order: restore = latest snapshot + these re-applied. Same convention. */
int store_load_feedback_after(store *s, const char *arm_name, int64_t after_seq,
                              int (*cb)(const struct store_feedback *f, void *ud), void *ud);

/* Dump a database as JSON lines to out: one {"type":"meta",…} line, then
 * {"type":"decision",…} lines (created order), then {"type":"feedback",…}
 * lines (seq order). Opens path read-only (works while a daemon writes it:
 * WAL). Returns 0, BD_ERR_NOTFOUND, BD_ERR_CORRUPT, BD_ERR_IO or BD_ERR_NOMEM,
 * with a message in err. */
int store_export(const char *path, FILE *out, char *err, size_t errlen);

#endif
