/* stats — the GET /stats admin document (JSON). */
#ifndef BANDITD_STATS_H
#define BANDITD_STATS_H

#include <stddef.h>
#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/health.h"
#include "banditd/router.h"

/* {"arms":[{"name","model","pulls","feedback","mean_reward","exp_completion_tokens",
 *   "latency_ms","ttfb_ms","usage_obs","price_in_per_mtok","price_out_per_mtok",
 *   "healthy","circuit","consecutive_failures","circuit_opens","arm_inflight"}…],
 *  "decisions_pending":N,"inflight":N,"connections":N,"ready":bool}
 * mean_reward is null before any feedback. "healthy" is true while the arm's
 * circuit is closed; "circuit" is "closed", "open" or "half_open" (health_
 * state_name); "ready" is health_ready(h, now_ms). h may be NULL (no
 * breakers: every arm closed, ready); ds may be NULL. The arms listed are
 * the router's, at most cfg->n_arms. Returns a malloc'd string (caller
 * frees) or NULL on OOM. */
char *stats_json(const struct config *cfg, const router *rt, const decisions *ds, const health *h,
                 double now_ms, size_t inflight, size_t connections);

#endif
