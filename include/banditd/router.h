/* router — preference-conditioned arm choice (DESIGN.md §1).
 *
 * For each candidate arm a:
 *   score_a = w_q·Q_a − w_c·ĉ_a/C̄ − w_l·l̂_a/L̄
 * where Q_a = μ₀ + θ_aᵀx + α·width (LinUCB) or a Thompson sample, ĉ_a the
 * predicted USD cost (prompt tokens · price_in + Ê[completion tokens_a] ·
 * price_out)/1e6, l̂_a the predicted latency, and C̄, L̄ running means of the
 * per-request maximum prediction over arms. Owns one linucb per arm.
 * Single-threaded: one owner (the event loop, or replay). */
#ifndef BANDITD_ROUTER_H
#define BANDITD_ROUTER_H

#include <stdint.h>
#include "banditd/config.h"
#include "banditd/pref.h"
#include "banditd/linucb.h"

#define ROUTER_MAX_ARMS CONFIG_MAX_ARMS

typedef struct router router;

struct router_arm_score {
    double mean;    /* μ₀ + θᵀx */
    double width;   /* sqrt(xᵀA⁻¹x) */
    double quality; /* the quality term used: mean + α·width, or a sample */
    double cost;    /* predicted USD */
    double latency; /* predicted ms */
    double score;   /* the combined score */
};

struct router_decision {
    int n;                      /* candidates considered */
    int order[ROUTER_MAX_ARMS]; /* arm indices, best first; order[0] is the choice */
    struct router_arm_score s[ROUTER_MAX_ARMS]; /* indexed by arm index */
};

struct router_arm_stats {
    uint64_t pulls;    /* decisions that chose this arm */
    uint64_t feedback; /* rewards applied */
    double reward_sum;
    double exp_completion_tokens; /* Ê[completion tokens] */
    double latency_ms;            /* estimated time to last byte */
    double ttfb_ms;               /* estimated time to first byte (streams) */
    uint64_t usage_obs;           /* usage observations */
};

/* Create a router for cfg's arms and router settings (cfg is read at create
 * time only; the router keeps no pointer to it). NULL on OOM/invalid. */
router *router_create(const struct config *cfg);
void router_destroy(router *r);
int router_n_arms(const router *r);
int router_dim(const router *r);

/* Decide. x: dim features; w: preference; prompt_tokens: estimate for this
 * request; healthy: n_arms flags (NULL = all healthy); pinned: an arm index to
 * force (it is still scored), or -1. Fills out (order has every healthy arm,
 * best first, for fallback) and counts a pull for out->order[0].
 * Returns 0, or BD_ERR_NOTFOUND when no arm is healthy. Deterministic for a
 * given state (ties broken by lower arm index), except Thompson sampling,
 * which draws from the router's seeded RNG. */
int router_decide(router *r, const double *x, const struct pref_weights *w, long prompt_tokens,
                  const unsigned char *healthy, int pinned, struct router_decision *out);

/* Apply a quality reward in [0,1] for arm on features x. 0 / BD_ERR_INVALID. */
int router_feedback(router *r, int arm, const double *x, double reward);

/* Observe an answered call: its completion tokens (-1 unknown), time to first
 * byte (ms, <0 unknown) and total time (ms). Updates cost/latency models. */
void router_observe(router *r, int arm, long completion_tokens, double ttfb_ms, double total_ms);
/* An infrastructure failure of arm (counts toward latency, never quality). */
void router_observe_failure(router *r, int arm, double elapsed_ms);

void router_arm_stats(const router *r, int arm, struct router_arm_stats *out);
/* Restore an arm's counters and cost/latency estimates (from a snapshot);
 * the quality model is restored separately (linucb_set_state). */
void router_restore_arm_stats(router *r, int arm, const struct router_arm_stats *st);
/* router_decide's refinements so far (for benchmarks and tests): the
 * decisions that rescored some arms from the fine copy of A⁻¹, and those
 * arms; the decisions that then rescored some exactly, and those arms. */
struct router_refine_stats {
    uint64_t fine_decisions, fine_arms, exact_decisions, exact_arms;
};
void router_refine_stats(const router *r, struct router_refine_stats *out);
/* The arm's quality model (read-only; for snapshots and tests). */
const linucb *router_model(const router *r, int arm);
linucb *router_model_mut(router *r, int arm);

/* ---- reconfiguration (config reload) ----------------------------------
 * Additive API for live reconfiguration (reload.c). Arms are matched by name.
 *
 * router_reconfigure: afterwards the router's arm i is cfg->arms[i].
 * - A surviving arm (same name) keeps its model, counters, cost and latency
 *   estimates; its prices are updated.
 * - A new arm starts fresh (cfg's lambda, mu0, forgetting, refactor_every and
 *   its prior_quality), unless an arm of that name was removed earlier: it
 *   then gets that arm's learned state back.
 * - A removed arm is retired: kept by name (at most ROUTER_MAX_ARMS retired
 *   arms, the oldest is dropped first), no longer scored.
 * - policy, alpha, alpha_base and thompson_v are updated. lambda, mu0, forgetting and
 *   refactor_every only apply to arms created from now on.
 * map (may be NULL) receives, for each OLD arm index i < the old
 * router_n_arms, its new index or -1 (removed): size it ROUTER_MAX_ARMS.
 * Returns 0, BD_ERR_INVALID (cfg->router.dim differs from router_dim, no
 * arms, bad prices or policy parameters, duplicate names) or BD_ERR_NOMEM;
 * on error the router is unchanged. */
int router_reconfigure(router *r, const struct config *cfg, int *map);
/* Index of the arm named name, or -1. */
int router_arm_index(const router *r, const char *name);
/* Name of arm (borrowed, valid until the next reconfigure), NULL if out of range. */
const char *router_arm_name(const router *r, int arm);

#endif
