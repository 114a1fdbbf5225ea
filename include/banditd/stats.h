/* stats — the GET /stats admin document (JSON). */
#ifndef BANDITD_STATS_H
#define BANDITD_STATS_H

#include <stddef.h>
#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/router.h"

/* {"arms":[{"name","model","pulls","feedback","mean_reward","exp_completion_tokens",
 *   "latency_ms","ttfb_ms","usage_obs","price_in_per_mtok","price_out_per_mtok","healthy"}…],
 *  "decisions_pending":N,"inflight":N,"connections":N}
 * mean_reward is null before any feedback. ds may be NULL. Returns a malloc'd
 * string (caller frees) or NULL on OOM. */
char *stats_json(const struct config *cfg, const router *rt, const decisions *ds, size_t inflight,
                 size_t connections);

#endif
