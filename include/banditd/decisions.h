/* decisions — pending routing decisions awaiting feedback.
 *
 * Maps a request id (banditd's 32-hex X-Bandit-Request-Id) and, once known,
 * the upstream completion id to {arm, features, weights, time, cost, latency}.
 * Bounded: at most max_entries live decisions (the oldest is evicted to make
 * room), and entries older than ttl_s answer BD_ERR_EXPIRED and are purged
 * incrementally by decisions_expire (O(work) per call, never a full scan on
 * the request path). Ids whose decision expired or got feedback are
 * remembered (id only) so that late feedback gets 410/409, not 404, for at
 * least another ttl_s, within the same bound. Single owner, not thread-safe.
 *
 * Semantics (decisions.c):
 * - A decision is expired when now_s - created_s > ttl_s (strictly older).
 * - Live decisions are kept in insertion order; decisions_expire and capacity
 *   eviction pop the oldest in O(1). An evicted decision answers
 *   BD_ERR_EXPIRED like an expired one.
 * - Tombstones (taken → BD_ERR_EXISTS, expired/evicted → BD_ERR_EXPIRED) keep
 *   the ids and the client but no features; each lives until ttl_s after it
 *   was made (made = the latest time the store has seen through add/find/
 *   expire; then decisions_expire purges it) and at most max_entries of
 *   them are kept (the oldest tombstone is dropped first).
 * - Memory: a live decision keeps its features in the exact compact form of
 *   xblob.h (what the store writes: at most dim*8 bytes, ~850 for a chat
 *   request at dim=256) plus ~350 bytes (node, both hash indexes, malloc
 *   overhead); a tombstone ~300 bytes. Measured (banditd, store off,
 *   20,000 bench/chat.lua requests, RSS growth): ~1,250 bytes per pending
 *   decision at dim=256 (2,340 when x was kept as dim doubles). */
#ifndef BANDITD_DECISIONS_H
#define BANDITD_DECISIONS_H

#include <stddef.h>
#include <stdint.h>
#include "banditd/pref.h"

#define DECISIONS_ID_MAX 128 /* completion ids longer than this are not indexed */

struct decision {
    char id[33];                          /* request id (hex) */
    char completion_id[DECISIONS_ID_MAX]; /* upstream "id", "" until known */
    int arm;
    double *x; /* dim features (decisions_add: read; decisions_find: decoded copy) */
    struct pref_weights w;
    double created_s; /* wall clock */
    double cost_usd;
    double latency_ms;
    uint64_t client; /* hash of the client key (0 = none) */
};

typedef struct decisions decisions;

/* NULL on OOM or invalid parameters (dim < 1, max_entries < 1 or above
 * 2^30, ttl_s not finite and > 0). */
decisions *decisions_create(int dim, size_t max_entries, double ttl_s);
void decisions_destroy(decisions *ds);

/* A new request id: 32 lowercase hex digits, the first 12 the wall clock
 * now_s in milliseconds (time-ordered), the other 20 kernel randomness (80
 * bits: unguessable, unique across replicas). Time order makes the store's
 * index on decisions.id grow at its right edge: random ids put every insert
 * on a random index page, ~4x the WAL bytes per decision row at 100k rows
 * (docs/performance.md §8). Returns 0 or BD_ERR_IO. */
int decisions_new_id(char out[33], double now_s);

/* Insert (copies d, and d->x in xblob form). Returns 0, BD_ERR_EXISTS for a duplicate id
 * (live or tombstone), BD_ERR_NOMEM, or BD_ERR_INVALID (empty or
 * unterminated id, NULL x). A full store evicts its oldest live decision:
 * never fails for capacity. A non-empty d->completion_id is indexed too. */
int decisions_add(decisions *ds, const struct decision *d);

/* Record the completion id and the measured cost/latency of id's answer.
 * completion_id NULL: only cost/latency; ids of DECISIONS_ID_MAX chars or
 * more are not indexed. Returns 0, BD_ERR_NOTFOUND (no live decision id), or
 * BD_ERR_EXISTS (another decision holds that completion id: cost/latency are
 * recorded, the completion id is not). */
int decisions_complete(decisions *ds, const char *id, const char *completion_id, double cost_usd,
                       double latency_ms);

/* Find by request id or completion id at time now_s. Returns 0 and *out
 * (borrowed: a copy whose x is decoded bit for bit into a buffer of ds,
 * valid until the next decisions_find or call that modifies ds),
 * BD_ERR_NOTFOUND, BD_ERR_EXPIRED, or BD_ERR_EXISTS (feedback already taken). */
int decisions_find(decisions *ds, const char *key, double now_s, const struct decision **out);

/* The features of the live decision with request id id, as stored: an
 * xblob.h blob of *len bytes (borrowed, valid until the next call that
 * modifies ds). For the store, which writes this very form. Returns 0 or
 * BD_ERR_NOTFOUND. O(1), no decoding. */
int decisions_xblob(const decisions *ds, const char *id, const unsigned char **blob, size_t *len);

/* Mark id (request id or completion id) as having received feedback: frees
 * its features, keeps a tombstone. Returns 0 or BD_ERR_NOTFOUND (no live
 * decision under that key). */
int decisions_take(decisions *ds, const char *id);

/* Purge up to max_work expired entries/tombstones. Returns how many. */
size_t decisions_expire(decisions *ds, double now_s, size_t max_work);

/* Renumber arms after a config reload (additive, for reload.c): every live
 * decision with arm a in [0, n_old) gets map[a]; a decision whose map entry is
 * < 0 (arm removed), or whose arm is out of range, becomes an expired
 * tombstone (its feedback then answers 410). O(live decisions). Returns how
 * many decisions were dropped. */
size_t decisions_remap_arms(decisions *ds, const int *map, int n_old);

size_t decisions_pending(const decisions *ds);
int decisions_dim(const decisions *ds);
/* Live decisions evicted to make room since creation. */
size_t decisions_evicted(const decisions *ds);
/* Tombstones currently kept. */
size_t decisions_tombstones(const decisions *ds);

#endif
