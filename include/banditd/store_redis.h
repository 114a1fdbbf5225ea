/* store_redis — shared state of several banditd replicas in Redis (DESIGN.md
 * §4, issue 8). Design, key layout, guarantees and deployment: docs/scale-out.md.
 *
 * What lives in Redis (every key starts with a prefix, default "{banditd}:";
 * the hash tag keeps every key in one Cluster slot):
 *   d:<request_id>    hash: a pending decision, expires after ttl_s
 *   dx:<request_id>   string: its features (encoded), same TTL
 *   c:<completion_id> string: completion id -> request id, same TTL
 *   fb:<request_id>   string: the stream id of its feedback, TTL ttl_s
 *                     (exactly-once marker; set with SET NX)
 *   feedback          stream: one entry per accepted feedback
 *   snap:<arm>        hash: A, b, n, counters and "pos", the last stream id
 *                     included in A and b
 *   arms              set: arm names that have a snapshot
 *   replicas          hash: replica id -> "<applied stream id> <unix ms>"
 *   meta              hash: dim, text_weight, schema
 *
 * Learning. A feedback is accepted by one Lua script that, atomically, sets
 * fb:<id> with NX, appends the event (arm, x, reward, id) to the stream and
 * deletes the decision (d: and dx:). Nothing is applied to the model at that moment: every
 * replica (the one that accepted it included) applies the stream in stream
 * order through the apply callback, so all replicas compute the same sums in
 * the same order and hold bit-identical A and b.
 *
 * Threads. A store_redis is owned by one thread, the event loop ("loop
 * thread"); every function is called from it. No function called on the loop
 * thread talks to Redis, except store_redis_open and store_redis_load_model
 * (start-up, before the loop runs). Two internal threads do:
 *  - the worker runs queued operations (decisions, feedback, snapshots, …),
 *    pipelining everything queued in one round trip, then puts finished
 *    operations on a completion list and calls wake(wake_ud);
 *  - the reader runs XREAD BLOCK on the stream from the last id it read,
 *    decodes entries into events, appends them to a bounded event queue and
 *    calls wake(wake_ud); when the queue is full it stops reading (the stream
 *    is the buffer). It reconnects with exponential back-off (50 ms .. 2 s)
 *    and resumes from its last id, so it catches up after an outage.
 * store_redis_dispatch (loop thread) first applies queued events in stream
 * order (apply callback), then runs completion callbacks in completion order.
 * Neither internal thread ever calls a user callback; wake is called with no
 * lock held.
 *
 * Failures. Every operation fails with BD_ERR_IO when Redis cannot be reached
 * or the connection breaks (never a false success); while the worker's last
 * connection attempt failed less than the current back-off ago, operations
 * fail at once without a connection attempt (the loop never waits on a dead
 * Redis; the HTTP layer answers 503). A feedback whose reply was lost in a
 * broken connection may still have been recorded: the client's retry then
 * gets BD_ERR_EXISTS (409), which is the truth.
 *
 * Back-pressure. Enqueue never blocks: with queue_cap operations queued the
 * put/get functions return BD_ERR_BUSY and keep nothing. A function that
 * returns an error never fires its callback; one that returns 0 fires it
 * exactly once (at the latest from store_redis_close). */
#ifndef BANDITD_STORE_REDIS_H
#define BANDITD_STORE_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include "banditd/store.h"

#define STORE_REDIS_PREFIX_DEFAULT "{banditd}:"
#define STORE_REDIS_PREFIX_MAX 64
#define STORE_REDIS_POS_MAX 48  /* "<ms>-<seq>" + NUL */
#define STORE_REDIS_URL_MAX 512 /* redis://[:password@]host[:port][/db] */

typedef struct store_redis store_redis;

/* A stream id. {0,0} = before the first entry. */
struct store_redis_pos {
    uint64_t ms;
    uint64_t seq;
};

/* Parse "ms-seq" (or "ms", seq = 0) into *out. 0 or BD_ERR_INVALID. */
int store_redis_pos_parse(const char *s, struct store_redis_pos *out);
/* Format as "ms-seq" into out (STORE_REDIS_POS_MAX bytes). Returns out. */
char *store_redis_pos_format(struct store_redis_pos p, char *out);
/* <0, 0, >0 like strcmp. */
int store_redis_pos_cmp(struct store_redis_pos a, struct store_redis_pos b);

/* One feedback event read from the stream; pointers valid during the apply
 * callback only. */
struct store_redis_event {
    struct store_redis_pos pos;
    const char *request_id;
    const char *arm_name;
    const double *x; /* dim features (decoded from dense or sparse form) */
    double reward;
    double at_s; /* wall clock at the accepting replica */
};

/* Apply one event to the model (loop thread, from store_redis_dispatch). */
typedef void (*store_redis_apply_fn)(const struct store_redis_event *ev, void *ud);

/* Result of store_redis_get_decision (loop thread). rc: 0 = found (d valid
 * during the call; d->id is the request id even when looked up by completion
 * id); BD_ERR_NOTFOUND = unknown or expired (Redis cannot tell them apart);
 * BD_ERR_EXISTS = a feedback for it is already recorded; BD_ERR_IO. */
typedef void (*store_redis_decision_fn)(int rc, const struct store_decision *d, void *ud);

/* Result of store_redis_put_feedback (loop thread). rc: 0 = recorded in the
 * stream at pos; BD_ERR_EXISTS = this request id already has a feedback
 * (pos = that feedback's id when known); BD_ERR_IO / BD_ERR_NOMEM. */
typedef void (*store_redis_feedback_fn)(int rc, struct store_redis_pos pos, void *ud);

struct store_redis_opts {
    const char *prefix;         /* key prefix; NULL = STORE_REDIS_PREFIX_DEFAULT */
    double ttl_s;               /* decision and fb:<id> TTL (feedback.ttl_s); > 0 */
    size_t queue_cap;           /* max queued operations, and max queued events */
    int timeout_ms;             /* connect and command timeout */
    int block_ms;               /* XREAD BLOCK; also bounds close() latency */
    double heartbeat_s;         /* how often dispatch publishes the applied position */
    double replica_stale_s;     /* a replica silent this long no longer holds trimming */
    const char *replica_id;     /* NULL = random */
    int lookup_wait_ms;         /* get_decision looks again (every 40 ms) this long before
                                   answering NOTFOUND: the answering replica writes its
                                   decision asynchronously, a moment after its response */
    double text_weight;         /* router.text_weight, recorded in meta; > 0 */
    store_redis_apply_fn apply; /* required */
    void *apply_ud;
    store_wake_fn wake; /* may be NULL: the loop then polls dispatch */
    void *wake_ud;
};

/* Defaults: prefix NULL, ttl 86400 s, queue_cap 4096, timeout 1000 ms,
 * block 100 ms, heartbeat 1 s, stale 60 s, lookup wait 500 ms, text_weight
 * FEATURES_TEXT_WEIGHT, random replica id, no callbacks. */
void store_redis_opts_default(struct store_redis_opts *o);

/* Connect (synchronously, up to timeout_ms), check or record dim in meta
 * (another dim: BD_ERR_INVALID "redis has dim=256, config says dim=512"),
 * and text_weight (stored "%.17g", compared exactly; another value:
 * BD_ERR_INVALID "store has text_weight=0.5, config says text_weight=1; use
 * another prefix or delete the shared state"; missing, as in a state from an
 * older banditd: recorded), load the scripts and start the worker. The reader starts in
 * store_redis_start. Returns 0 and *out, or BD_ERR_INVALID (bad url/opts),
 * BD_ERR_IO (unreachable), BD_ERR_CORRUPT (meta unreadable), BD_ERR_NOMEM,
 * with a message in err. A replica needs Redis at start to load the model. */
int store_redis_open(const char *url, int dim, const struct store_redis_opts *o, store_redis **out,
                     char *err, size_t errlen);

/* Stop the threads (pending operations are still run first, or fail with
 * BD_ERR_IO if Redis is down), run remaining callbacks on the calling thread
 * (callbacks then cannot enqueue: BUSY), disconnect. Events read but not yet
 * dispatched are dropped. NULL is a no-op. */
void store_redis_close(store_redis *s);

/* Synchronous, before store_redis_start: call cb for the snapshot of every
 * arm in `arms` (name order), with feedback_seq = 0 (the stream position is
 * kept inside: events of that arm up to it are skipped). cb returns 0 to go
 * on. Returns 0, cb's value, BD_ERR_IO or BD_ERR_CORRUPT (bad snapshot). */
int store_redis_load_model(store_redis *s, int (*cb)(const struct store_arm_state *a, void *ud),
                           void *ud);

/* Start the reader at the lowest snapshot position loaded (0-0 without
 * snapshots). Call once. 0, BD_ERR_INVALID (twice) or BD_ERR_NOMEM. */
int store_redis_start(store_redis *s);

/* Queue a decision (copied; TTL ttl_s from opts; completion_id may be set).
 * cb may be NULL; rc 0 = stored. Returns 0, BD_ERR_BUSY, BD_ERR_INVALID,
 * BD_ERR_NOMEM. */
int store_redis_put_decision(store_redis *s, const struct store_decision *d, store_done_fn cb,
                             void *ud);

/* Record the completion id (c:<cid> -> id) and cost/latency of a stored
 * decision; nothing happens if it is gone. Fire and forget. */
int store_redis_complete_decision(store_redis *s, const char *id, const char *completion_id,
                                  double cost_usd, double latency_ms);

/* Look a decision up by request id or completion id. cb required. Returns 0,
 * BD_ERR_BUSY, BD_ERR_INVALID or BD_ERR_NOMEM. */
int store_redis_get_decision(store_redis *s, const char *id, store_redis_decision_fn cb, void *ud);

/* Record a feedback exactly once (see the top). request_id must be the
 * decision's request id. cb required. Returns 0, BD_ERR_BUSY, BD_ERR_INVALID
 * (ids, dim, non-finite x or reward, cb NULL) or BD_ERR_NOMEM. */
int store_redis_put_feedback(store_redis *s, const char *request_id, const char *arm_name,
                             const double *x, int dim, double reward, double at_s,
                             store_redis_feedback_fn cb, void *ud);

/* Snapshot n arms (A, b copied now). Each arm's hash is written by one HSET
 * (atomic per arm) with pos = the position of the last dispatched event (or
 * the arm's loaded snapshot position, if later); arms[i].feedback_seq is
 * ignored. cb may be NULL. Returns 0, BD_ERR_BUSY, BD_ERR_INVALID,
 * BD_ERR_NOMEM. */
int store_redis_put_snapshot(store_redis *s, const struct store_arm_state *arms, int n,
                             store_done_fn cb, void *ud);

/* Trim the stream (XTRIM MINID) behind the lowest of: every snapshotted arm's
 * position, and the applied position of every replica whose heartbeat is
 * fresher than replica_stale_s (stale entries are removed; the caller's own
 * applied position is published first). Nothing is
 * trimmed while no arm has a snapshot. cb may be NULL; its seq = entries
 * removed. Returns 0, BD_ERR_BUSY, BD_ERR_NOMEM. */
int store_redis_trim(store_redis *s, store_done_fn cb, void *ud);

/* Apply queued events, then run finished callbacks (see the top); also
 * queues the heartbeat when due. Returns events applied + callbacks run. */
size_t store_redis_dispatch(store_redis *s);

/* Block until every operation enqueued before the call has finished (no
 * callbacks run). Shutdown and tests only. */
void store_redis_flush(store_redis *s);

/* The position of the last event dispatched (applied or skipped). */
struct store_redis_pos store_redis_applied(const store_redis *s);
int store_redis_dim(const store_redis *s);
const char *store_redis_replica_id(const store_redis *s);

struct store_redis_stats {
    uint64_t enqueued, rejected; /* operations accepted / refused BUSY */
    uint64_t ops_ok, ops_failed; /* finished operations by outcome */
    uint64_t roundtrips;         /* worker pipelines sent */
    uint64_t events_read;        /* stream entries read by the reader */
    uint64_t events_applied;     /* passed to apply */
    uint64_t events_skipped;     /* already in a loaded snapshot */
    uint64_t events_bad;         /* undecodable entries (skipped, logged) */
    uint64_t reconnects;         /* successful reconnections (both threads) */
    int worker_connected, reader_connected;
    int gap; /* the stream was trimmed past our position:
                the model is incomplete, restart the replica */
    size_t queue_depth, event_depth;
    int last_error;
};
void store_redis_get_stats(store_redis *s, struct store_redis_stats *out);

#endif
