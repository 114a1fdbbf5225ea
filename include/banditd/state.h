/* state — the daemon's durable state: glue between the store (store.h), the
 * router and the pending decisions (docs/state.md).
 *
 * - state_open: open the store (store.path), restore every configured arm
 *   from its latest snapshot plus the feedback logged after it (in seq
 *   order), reload the pending decisions within the TTL, and set up the
 *   durable feedback path (feedback_submit).
 * - While running (loop thread): decisions are queued as they are made
 *   (state_decision, fire and forget) and completed (state_complete);
 *   state_poll runs the store's callbacks (feedback answers and model
 *   updates), snapshots one changed arm at a time (every
 *   store.snapshot_interval_s, or after store.snapshot_every feedbacks) and
 *   purges expired decisions every minute.
 * - state_close (clean shutdown): waits for every queued write, applies the
 *   last acknowledged feedback, snapshots every arm and closes the store.
 *
 * Snapshots are bit-exact restore points: before an arm is snapshotted its
 * A⁻¹ and θ are re-derived from A by Cholesky (linucb_refactor), exactly
 * what linucb_set_state does at restore, and the snapshot records the last
 * feedback seq it includes; later updates are re-applied in the same order
 * from the same state, so the restored model equals the one that ran.
 * Single-threaded: every function runs on the loop thread. */
#ifndef BANDITD_STATE_H
#define BANDITD_STATE_H

#include <stddef.h>
#include <stdint.h>
#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/feedback.h"
#include "banditd/router.h"
#include "banditd/store.h"

typedef struct state state;

/* What state_open restored (for the start-up log line and tests). */
struct state_restore_info {
    int snapshots;            /* arms restored from a snapshot */
    int snapshots_unused;     /* snapshots of arms no longer configured */
    uint64_t replayed;        /* feedback rows re-applied after snapshots */
    uint64_t decisions;       /* pending decisions reloaded */
    uint64_t decisions_stale; /* pending rows of arms no longer configured */
};

/* Open cfg->store.path (non-empty) for router_dim(rt) and restore rt and ds
 * from it (both freshly created from cfg). flags: STORE_RESET to delete an
 * existing database first (--reset-state). wake: called from the store's
 * writer thread when callbacks are ready (e.g. upstream_wakeup). Borrows
 * cfg, rt and ds. Returns 0 and *out, or an error with a message in err:
 * BD_ERR_CORRUPT (not a banditd database / corrupt: the file is untouched),
 * BD_ERR_INVALID (dim mismatch), BD_ERR_IO, BD_ERR_NUMERIC (a snapshot
 * that is not positive definite), BD_ERR_NOMEM. info may be NULL. */
int state_open(const struct config *cfg, router *rt, decisions *ds, unsigned flags,
               store_wake_fn wake, void *wake_ud, state **out, struct state_restore_info *info,
               char *err, size_t errlen);

/* The config changed (reload): arm names are looked up in cfg from now on. */
void state_set_config(state *s, const struct config *cfg);

/* The durable feedback handler (feedback.h). */
feedback_async *state_feedback(state *s);
store *state_store(state *s);

/* Each loop iteration: run store callbacks, take due snapshots, purge. */
void state_poll(state *s, double now_s);

/* Queue a decision (its arm index in the current config); fire and forget.
 * A full queue drops it (logged, counted): see docs/state.md. When d is live
 * in the decision table (decisions_add(d) just before, as http.c does), the
 * table's compact copy of x is written (decisions_xblob: no second encoding). */
void state_decision(state *s, const struct decision *d);
/* Record the completion id / cost / latency of a queued decision. */
void state_complete(state *s, const char *id, const char *completion_id, double cost_usd,
                    double latency_ms);
/* Decisions that could not be queued (full queue or error). */
uint64_t state_dropped(const state *s);

/* Flush, final snapshot, close. NULL is a no-op. */
void state_close(state *s);

/* GET /debug/model document for arm_name: {"arm","dim","n","feedback",
 * "pulls","reward_sum","A","Ainv","b","theta"}, numbers with 17
 * significant digits (exact round trip). Works without a store. Returns a
 * malloc'd string, or NULL (unknown arm: *status 404; OOM: 500). */
char *state_model_json(const router *rt, const struct config *cfg, const char *arm_name,
                       int *status);

/* One arm's snapshot as both back ends store it (this module and
 * state_redis.c): A, b and n borrowed from the router's model (valid until
 * the next update), the per-arm stats, taken_at = now_s; feedback_seq 0
 * (the caller sets it). */
void state_arm_snapshot(const router *rt, int arm, const char *name, double now_s,
                        struct store_arm_state *a);
/* The inverse: arm's model (linucb_set_state) and stats from a stored
 * snapshot. Returns 0 or linucb_set_state's error (the arm is unchanged). */
int state_arm_restore(router *rt, int arm, const struct store_arm_state *a);

#endif
