/* state_redis — the daemon's shared state when config store.redis is set:
 * glue between store_redis (store_redis.h), the router and the pending
 * decisions, playing the part state.h plays for the SQLite store
 * (docs/scale-out.md).
 *
 * - state_redis_open: connect, restore every configured arm from its Redis
 *   snapshot, start the stream reader. Every feedback event read from the
 *   stream — this replica's or another's — is applied to the router in
 *   stream order (router_feedback), so all replicas hold the same statistics.
 * - Decisions are kept locally (decisions.h, by http.c) and written to Redis
 *   with the feedback TTL (state_redis_decision, fire and forget), so another
 *   replica can resolve them.
 * - /feedback (state_redis_feedback_submit): same body, statuses and answer
 *   documents as feedback_submit (feedback.h); a request id unknown locally
 *   is looked up in Redis; the item is recorded exactly once by Redis and
 *   answered 200 when Redis has replied; the model is updated when the event
 *   comes back through the stream. Redis unreachable: 503 store_unavailable.
 * - state_redis_poll (each loop iteration): applies events, runs callbacks,
 *   snapshots every arm every store.snapshot_interval_s and then trims.
 * Single-threaded: every function runs on the loop thread. */
#ifndef BANDITD_STATE_REDIS_H
#define BANDITD_STATE_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/feedback.h"
#include "banditd/router.h"
#include "banditd/store.h"
#include "banditd/store_redis.h"

typedef struct state_redis state_redis;
typedef struct state_redis_job state_redis_job;

/* Open cfg->store.redis for router_dim(rt), restore rt from the snapshots,
 * start reading the stream. Borrows cfg, rt, ds. *snapshots (may be NULL):
 * arms restored. Returns 0 and *out, or an error with a message in err
 * (BD_ERR_IO: Redis unreachable; BD_ERR_INVALID: dim mismatch or bad url;
 * BD_ERR_CORRUPT; BD_ERR_NUMERIC; BD_ERR_NOMEM). */
int state_redis_open(const struct config *cfg, router *rt, decisions *ds, store_wake_fn wake,
                     void *wake_ud, state_redis **out, int *snapshots, char *err, size_t errlen);

/* The config changed (reload): arm names are looked up in cfg from now on. */
void state_redis_set_config(state_redis *s, const struct config *cfg);

void state_redis_poll(state_redis *s, double now_s);
void state_redis_decision(state_redis *s, const struct decision *d);
void state_redis_complete(state_redis *s, const char *id, const char *completion_id,
                          double cost_usd, double latency_ms);

/* As feedback_submit (feedback.h): BD_ERR_NOMEM, or 0 with either *job ==
 * NULL and the answer in *status / *body_out, or *job != NULL and the answer
 * later through reply(reply_ud, …), exactly once, unless detached first. */
int state_redis_feedback_submit(state_redis *s, const char *body, size_t len, uint64_t client,
                                int admin, double now_s, feedback_reply_fn reply, void *reply_ud,
                                state_redis_job **job, int *status, char **body_out);
void state_redis_job_detach(state_redis_job *job);

store_redis *state_redis_store(state_redis *s);

/* Final snapshot, close (remaining jobs are answered). NULL is a no-op. */
void state_redis_close(state_redis *s);

#endif
