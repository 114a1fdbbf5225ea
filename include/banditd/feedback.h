/* feedback — the /feedback endpoint's logic: validate, resolve the decision,
 * apply exactly once to the router. No I/O.
 *
 * Body: {"request_id": "…", "reward": 0..1 | true | false}
 *   or  {"feedback": [ {…}, … ]}  (at most FEEDBACK_MAX_BATCH items; each gets
 *   its own result; the batch answers 200 with per-item statuses).
 * A single item answers 200 {"request_id","status":"applied","arm"}, or the
 * error status (400/403/404/409/410) in OpenAI's error shape. */
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
