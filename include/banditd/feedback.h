/* feedback — the /feedback endpoint's logic: validate, resolve the decision,
 * apply exactly once to the router. No I/O.
 *
 * Body: {"request_id": "…", "reward": 0..1 | true | false}
 *   or  {"feedback": [ {…}, … ]}  (at most FEEDBACK_MAX_BATCH items; each gets
 *   its own result; the batch answers 200 with per-item statuses).
 * A single item answers 200 {"request_id","status":"applied","arm"}, or the
 * error status (400/403/404/409/410) in OpenAI's error shape.
 *
 * Details (feedback.c):
 * - request_id: banditd's id or the upstream completion id; the answer always
 *   names banditd's id. "arm" is the arm index. An optional "comment" (string
 *   or null) is accepted and ignored; any other field is 400 unknown_field.
 * - 400 codes: invalid_json (unparsable, trailing bytes, nested deeper than 32),
 *   invalid_body (not an object), unknown_field, duplicate_field,
 *   missing_request_id, invalid_request_id, missing_reward, invalid_reward
 *   (not a finite number in [0,1] nor a boolean), invalid_comment,
 *   invalid_batch, batch_too_large (the whole batch is refused).
 *   404 unknown_request_id, 409 duplicate_feedback, 410 expired_request_id
 *   (also for decisions evicted for capacity), 403 forbidden (type
 *   permission_error) when !admin and the caller's client hash differs from
 *   the decision's (0 included on either side), 500 feedback_not_applied
 *   (type server_error) when the router refused the update: the decision is
 *   then NOT taken and the feedback may be retried.
 * - Batch: 200 {"object":"list","data":[{"request_id","status":"applied",
 *   "arm"} | {"request_id" (as given, or null),"status":"error","error":{…}}],
 *   "applied":N,"failed":M}; items are applied in order, independently. */
#ifndef BANDITD_FEEDBACK_H
#define BANDITD_FEEDBACK_H

#include <stddef.h>
#include <stdint.h>
#include "banditd/decisions.h"
#include "banditd/router.h"
#include "banditd/store.h"

#define FEEDBACK_MAX_BATCH 1000
#define FEEDBACK_ECHO_MAX 64 /* bytes of a client-supplied name quoted in a message */

struct cJSON;

/* Handle one /feedback body. client: hash of the caller's key (0 = none);
 * admin: caller holds the admin key (may give feedback on any request).
 * Sets *status (HTTP) and *body_out (malloc'd JSON, caller frees).
 * Returns 0 when a response was produced (even an error response), or
 * BD_ERR_NOMEM. */
int feedback_handle(decisions *ds, router *rt, const char *body, size_t len, uint64_t client,
                    int admin, double now_s, int *status, char **body_out);

/* ---- durable (asynchronous) feedback: the daemon's path when a store is
 * configured (docs/state.md) ----
 *
 * feedback_submit validates and resolves every item at once (the same
 * statuses as feedback_handle), then queues each resolved item in the store
 * (store_put_feedback under the decision's request id) instead of applying
 * it. The item counts as "in flight": a second feedback for the same request
 * id gets 409 duplicate_feedback until the first one is settled. When the
 * store's callback reports the commit (on the loop thread, from
 * store_dispatch), the reward is applied to the router (router_feedback with
 * the features copied at submit time), the decision is taken, on_applied is
 * called, and the item answers 200. A store error answers 503
 * store_unavailable (nothing was written; retry), a full queue 503
 * store_busy, a row already in the store 409. The answer (single or batch
 * document, as feedback_handle's) is produced once every item is settled.
 * Single-threaded: the loop thread only. */

typedef struct feedback_async feedback_async;
typedef struct feedback_job feedback_job;

/* Called for every feedback committed and applied: arm index, its seq. */
typedef void (*feedback_applied_fn)(void *ud, int arm, int64_t seq);
/* The final answer of a job: status and a malloc'd JSON body (ownership
 * passes to the callee; NULL on OOM: answer 500). Called at most once. */
typedef void (*feedback_reply_fn)(void *ud, int status, char *body);

/* Arm names <-> router indices, as configured now (a config reload may
 * renumber arms: an item in flight keeps its arm's name and is applied to
 * that arm's index at commit time, or dropped from the model, still stored,
 * if the arm is gone). name(ud, i): NULL if out of range; index(ud, name):
 * -1 if unknown. */
struct feedback_arms {
    const char *(*name)(void *ud, int arm);
    int (*index)(void *ud, const char *name);
    void *ud;
};

/* Borrows ds, rt and st (they must outlive the object). NULL on OOM. */
feedback_async *feedback_async_create(decisions *ds, router *rt, store *st,
                                      const struct feedback_arms *arms,
                                      feedback_applied_fn on_applied, void *applied_ud);
/* Call after store_close (every callback has run: no job is left). */
void feedback_async_destroy(feedback_async *fa);
/* Items queued and not settled yet. */
size_t feedback_async_inflight(const feedback_async *fa);

/* Handle one /feedback body. Returns BD_ERR_NOMEM, or 0 and either
 * *job == NULL with the answer in *status / *body_out (nothing was queued:
 * a parse error, or every item failed at once), or *job != NULL: the answer
 * comes later through reply(reply_ud, …), exactly once, unless the job is
 * detached first. */
int feedback_submit(feedback_async *fa, const char *body, size_t len, uint64_t client, int admin,
                    double now_s, feedback_reply_fn reply, void *reply_ud, feedback_job **job,
                    int *status, char **body_out);

/* The requester went away: never call its reply. The items still settle
 * (a committed feedback is still applied) and the job frees itself. */
void feedback_job_detach(feedback_job *job);

/* ---- building blocks shared by every feedback back end (this module's
 * two paths and state_redis.c), so that all answer the same statuses,
 * codes and messages ---- */

/* A parsed body: the item objects in order (borrowed from root). */
struct feedback_body {
    struct cJSON *root;
    const struct cJSON **items;
    size_t n;
    int batch; /* the {"feedback": [...]} form */
};

/* Parse a body and check its envelope (JSON, depth, object, batch shape and
 * size). Returns BD_ERR_NOMEM, or 0 with either fb->root != NULL (release
 * with feedback_body_free) or fb->root == NULL and the 400 answer in
 * *status / *body_out (malloc'd). */
int feedback_parse(const char *body, size_t len, struct feedback_body *fb, int *status,
                   char **body_out);
void feedback_body_free(struct feedback_body *fb);

/* One item's outcome. status: 0 = not settled yet, 200, or an error status
 * with type/code/param/message. given_id: for batch items, the request_id
 * as given when it was a string (malloc'd; the owner frees it). */
struct feedback_result {
    int status;
    const char *type, *code;           /* static strings */
    char param[FEEDBACK_ECHO_MAX + 1]; /* "" = null */
    char message[192];
    char id[33]; /* banditd's request id (on success) */
    int arm;
    char *given_id;
};

/* Record an error in r. */
void feedback_fail(struct feedback_result *r, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The error for a failed decision lookup or client check: BD_ERR_NOTFOUND
 * 404, BD_ERR_EXISTS 409, BD_ERR_EXPIRED 410, BD_ERR_FORBIDDEN 403, any other
 * 500. */
void feedback_fail_lookup(struct feedback_result *r, int rc);
/* Reset r and check one item's shape. Returns 0 with *request_id (borrowed
 * from item) and *reward in [0,1]; BD_ERR_INVALID with r holding the 400;
 * BD_ERR_NOMEM. For batch items r->given_id is set in every case it can be. */
int feedback_check_item(const struct cJSON *item, int batch, struct feedback_result *r,
                        const char **request_id, double *reward);
/* The answer for n settled results: a single item's answer or error, or the
 * batch document. The results are read at first, first + stride, … (each
 * element of the caller's array starts with its struct feedback_result).
 * Returns 0 with *status / *body_out (malloc'd) set, or BD_ERR_NOMEM. */
int feedback_answer(int batch, const struct feedback_result *first, size_t n, size_t stride,
                    int *status, char **body_out);

#endif
