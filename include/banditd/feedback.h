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

#define FEEDBACK_MAX_BATCH 1000

/* Handle one /feedback body. client: hash of the caller's key (0 = none);
 * admin: caller holds the admin key (may give feedback on any request).
 * Sets *status (HTTP) and *body_out (malloc'd JSON, caller frees).
 * Returns 0 when a response was produced (even an error response), or
 * BD_ERR_NOMEM. */
int feedback_handle(decisions *ds, router *rt, const char *body, size_t len, uint64_t client,
                    int admin, double now_s, int *status, char **body_out);

#endif
