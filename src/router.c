/* router — preference-conditioned arm choice (see router.h, docs/router.md).
 *
 * score_a = w_q·Q_a − w_c·ĉ_a/C̄ − w_l·l̂_a/L̄
 *   Q_a   LinUCB: mean + α·width + α_b·|x₀|·sqrt([A⁻¹]₀₀) (ucb_quality);
 *         Thompson: mean + v·width·z, z ~ N(0,1)
 *         (the exact posterior sample of θᵀx for θ ~ N(θ̂, v²A⁻¹) at one x).
 *   ĉ_a   (prompt_tokens·price_in + Ê_a·price_out)/1e6 USD, Ê_a the mean of
 *         observed completion tokens shrunk toward a prior of 256 tokens with
 *         the weight of one observation: Ê = (256 + Σ obs)/(1 + n).
 *   l̂_a   EWMA (weight 0.1; the first observation is taken as is) of the
 *         total time of answered calls and failures; 0 until observed.
 *   C̄, L̄  running means over decisions of max_a ĉ_a and max_a l̂_a (over
 *         the healthy arms), the current request included, with the mean's
 *         weight floored at 1/NORM_WINDOW so that they keep adapting.
 *         A zero mean switches its term off. */
#include "banditd/router.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/err.h"
#include "banditd/util.h"

#define PRIOR_COMPLETION_TOKENS 256.0
#define PRIOR_COMPLETION_WEIGHT 1.0
#define LATENCY_EWMA 0.1
#define NORM_WINDOW 10000.0

struct arm {
    linucb *m;
    double price_in, price_out; /* USD per million tokens */
    struct router_arm_stats st;
    double completion_sum;
    uint64_t lat_obs, ttfb_obs;
    char name[CONFIG_NAME_MAX]; /* the config arm's name (reconfiguration matches by it) */
};

struct router {
    int n_arms, dim;
    enum config_policy policy;
    double alpha, alpha_base, thompson_v;
    struct util_rng rng;
    double cbar, lbar; /* running means of per-request maxima */
    double cbar_n, lbar_n;
    struct router_refine_stats refine;
    struct arm arms[ROUTER_MAX_ARMS];
    /* Arms removed by router_reconfigure, kept by name (oldest first) so that
     * re-adding an arm of the same name gets its learned state back. */
    struct arm retired[ROUTER_MAX_ARMS];
    int n_retired;
};

router *router_create(const struct config *cfg)
{
    if (cfg == NULL || cfg->n_arms < 1 || cfg->n_arms > ROUTER_MAX_ARMS)
        return NULL;
    const struct config_router *rc = &cfg->router;
    if (rc->dim < 1 || !isfinite(rc->alpha) || rc->alpha < 0 || !isfinite(rc->alpha_base) ||
        rc->alpha_base < 0 || !isfinite(rc->thompson_v) || rc->thompson_v < 0 ||
        (rc->policy != CONFIG_POLICY_LINUCB && rc->policy != CONFIG_POLICY_THOMPSON))
        return NULL;
    router *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->n_arms = (int)cfg->n_arms;
    r->dim = rc->dim;
    r->policy = rc->policy;
    r->alpha = rc->alpha;
    r->alpha_base = rc->alpha_base;
    r->thompson_v = rc->thompson_v;
    util_rng_seed(&r->rng, (uint64_t)rc->seed);
    for (int i = 0; i < r->n_arms; i++) {
        const struct config_arm *ca = &cfg->arms[i];
        struct arm *a = &r->arms[i];
        if (!isfinite(ca->price_in_per_mtok) || ca->price_in_per_mtok < 0 ||
            !isfinite(ca->price_out_per_mtok) || ca->price_out_per_mtok < 0)
            goto fail;
        a->m = linucb_create(rc->dim, rc->lambda, rc->mu0, rc->forgetting, rc->refactor_every);
        if (a->m == NULL)
            goto fail;
        if (ca->has_prior)
            linucb_set_prior(a->m, ca->prior_quality);
        a->price_in = ca->price_in_per_mtok;
        a->price_out = ca->price_out_per_mtok;
        a->st.exp_completion_tokens = PRIOR_COMPLETION_TOKENS;
        snprintf(a->name, sizeof a->name, "%s", ca->name);
    }
    return r;
fail:
    router_destroy(r);
    return NULL;
}

void router_destroy(router *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < r->n_arms; i++)
        linucb_destroy(r->arms[i].m);
    for (int i = 0; i < r->n_retired; i++)
        linucb_destroy(r->retired[i].m);
    free(r);
}

int router_n_arms(const router *r)
{
    return r->n_arms;
}

int router_dim(const router *r)
{
    return r->dim;
}

static double predicted_cost(const struct arm *a, long prompt_tokens)
{
    double pt = prompt_tokens > 0 ? (double)prompt_tokens : 0.0;
    return (pt * a->price_in + a->st.exp_completion_tokens * a->price_out) / 1e6;
}

static void running_mean(double *mean, double *n, double v)
{
    *n += 1.0;
    double w = *n < NORM_WINDOW ? 1.0 / *n : 1.0 / NORM_WINDOW;
    *mean += w * (v - *mean);
}

/* The LinUCB quality term Q_a = mean + α·width + α_b·|x₀|·sqrt([A⁻¹]₀₀)
 * (router.alpha_base = α_b, default 0: off). The last term is the posterior
 * width of the arm's base rate alone (the bias coefficient's share of the
 * prediction). The hashed text keeps the full width near the text block's
 * norm for every arm however often it is pulled (most prompts bring words the
 * arm has not seen), so α must stay small; the base rate's width shrinks like
 * 1/sqrt(pulls): count-based optimism that brings back an arm whose base rate
 * rests on a few bad answers (docs/router.md, "Lock-in and router.alpha_base"). */
static double ucb_quality(const router *r, int arm, const double *x, double mean, double width)
{
    if (r->alpha_base == 0.0)
        return mean + r->alpha * width;
    double a00 = linucb_Ainv(r->arms[arm].m)[0];
    double base = a00 > 0.0 ? fabs(x[0]) * sqrt(a00) : 0.0;
    return mean + r->alpha * width + r->alpha_base * base;
}

/* Is a better than b (higher score, ties to the lower index)? */
static int better(const struct router_decision *out, int a, int b)
{
    double sa = out->s[a].score, sb = out->s[b].score;
    if (sa != sb)
        return sa > sb;
    return a < b;
}

/* Marks (cand[j] = 1) the arms order[j] whose score interval reaches the
 * best lower bound: the ones that could be the argmax. Returns how many. The
 * approximate widths carry a bound (|width² − exact²| <= qerr), so each
 * score lies in an interval. */
static int candidates(const struct router_decision *out, int n, const double *qerr, double k,
                      unsigned char *cand)
{
    double lo[ROUTER_MAX_ARMS], hi[ROUTER_MAX_ARMS], best_lo = -INFINITY;
    for (int j = 0; j < n; j++) {
        int i = out->order[j];
        const struct router_arm_score *s = &out->s[i];
        lo[j] = hi[j] = s->score;
        if (qerr[i] > 0.0 && k != 0.0) {
            double w2 = s->width * s->width;
            double a = k * (sqrt(fmax(0.0, w2 - qerr[i])) - s->width);
            double b = k * (sqrt(w2 + qerr[i]) - s->width);
            lo[j] += fmin(a, b);
            hi[j] += fmax(a, b);
        }
        if (lo[j] > best_lo)
            best_lo = lo[j];
    }
    int nc = 0;
    for (int j = 0; j < n; j++) {
        cand[j] = hi[j] >= best_lo;
        nc += cand[j];
    }
    return nc;
}

/* Any arm whose interval reaches the best lower bound could be the argmax:
 * when there are two or more such arms, their widths are recomputed from the
 * fine (16-bit) copy, and if that still leaves two or more, exactly
 * (linucb_score), so order[0] is always the arm linucb_score's widths would
 * choose. The other arms keep their approximate scores (within the bound),
 * so the fallback order of the tail is approximate (docs/performance.md). */
static void refine_widths(router *r, const double *x, const struct pref_weights *w,
                          struct router_decision *out, int n, double *qerr)
{
    double k = w->quality * r->alpha;
    unsigned char cand[ROUTER_MAX_ARMS];
    if (candidates(out, n, qerr, k, cand) < 2)
        return; /* the only possible argmax: exact order[0] without refining */
    const linucb *ms[ROUTER_MAX_ARMS];
    int idx[ROUTER_MAX_ARMS], nf = 0;
    for (int j = 0; j < n; j++) {
        int i = out->order[j];
        if (cand[j] && qerr[i] > 0.0) {
            idx[nf] = i;
            ms[nf++] = r->arms[i].m;
        }
    }
    if (nf == 0)
        return; /* exact widths already (ties) */
    double mean[ROUTER_MAX_ARMS], width[ROUTER_MAX_ARMS], qe[ROUTER_MAX_ARMS];
    linucb_score_fine_many(ms, nf, x, mean, width, qe);
    r->refine.fine_decisions++;
    r->refine.fine_arms += (uint64_t)nf;
    for (int f = 0; f < nf; f++) {
        struct router_arm_score *s = &out->s[idx[f]];
        double old = s->width;
        s->mean = mean[f];
        s->width = width[f];
        s->quality = ucb_quality(r, idx[f], x, s->mean, s->width);
        s->score += k * (s->width - old);
        qerr[idx[f]] = qe[f];
    }
    if (candidates(out, n, qerr, k, cand) < 2)
        return;
    r->refine.exact_decisions++;
    for (int j = 0; j < n; j++) {
        int i = out->order[j];
        if (!cand[j] || qerr[i] <= 0.0)
            continue;
        r->refine.exact_arms++;
        struct router_arm_score *s = &out->s[i];
        double old = s->width;
        linucb_score(r->arms[i].m, x, &s->mean, &s->width);
        s->quality = ucb_quality(r, i, x, s->mean, s->width);
        s->score += k * (s->width - old);
        qerr[i] = 0.0;
    }
}

/* The tolerance form (pref.h, docs/preferences.md): candidates are the arms
 * whose quality term Q_a (mean + α·width, exact widths) is at least
 * (1 − tolerance)·max Q; they rank by predicted cost, cheapest first
 * (score = −ĉ_a/C̄ ≤ 0). The others rank after them by quality
 * (score = Q_a − TOL_OUTSIDE), so the fallback order stays sensible. */
#define TOL_OUTSIDE 1e6
static void tolerance_scores(router *r, const double *x, const struct pref_weights *w,
                             struct router_decision *out, int n, const double *qerr)
{
    double qmax = -INFINITY;
    for (int k = 0; k < n; k++) {
        int i = out->order[k];
        struct router_arm_score *s = &out->s[i];
        if (qerr[i] > 0.0 && r->policy != CONFIG_POLICY_THOMPSON) {
            linucb_score(r->arms[i].m, x, &s->mean, &s->width);
            s->quality = ucb_quality(r, i, x, s->mean, s->width);
        }
        if (s->quality > qmax)
            qmax = s->quality;
    }
    double floor_q = qmax - w->tolerance * fabs(qmax);
    for (int k = 0; k < n; k++) {
        struct router_arm_score *s = &out->s[out->order[k]];
        if (s->quality >= floor_q)
            s->score = r->cbar > 0.0 ? -s->cost / r->cbar : -s->cost;
        else
            s->score = s->quality - TOL_OUTSIDE;
    }
}

int router_decide(router *r, const double *x, const struct pref_weights *w, long prompt_tokens,
                  const unsigned char *healthy, int pinned, struct router_decision *out)
{
    assert(r != NULL && x != NULL && w != NULL && out != NULL);
    if (pinned >= r->n_arms || pinned < -1)
        return BD_ERR_INVALID;
    int n = 0;
    double cmax = 0.0, lmax = 0.0;
    double qerr[ROUTER_MAX_ARMS];
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < r->n_arms; i++)
        if (healthy == NULL || healthy[i] || i == pinned)
            out->order[n++] = i;
    if (n == 0)
        return BD_ERR_NOTFOUND;
    if (r->policy != CONFIG_POLICY_THOMPSON) {
        /* 8-bit widths first (a quarter of the exact kernel's bytes: 8
         * arms at d=256 read 278 KiB instead of 1 MiB), all arms in one
         * call (x is converted once); refined below */
        const linucb *ms[ROUTER_MAX_ARMS] = {0};
        double mean[ROUTER_MAX_ARMS], width[ROUTER_MAX_ARMS], qe[ROUTER_MAX_ARMS];
        for (int k = 0; k < n; k++)
            ms[k] = r->arms[out->order[k]].m;
        linucb_score_approx_many(ms, n, x, mean, width, qe);
        for (int k = 0; k < n; k++) {
            int i = out->order[k];
            out->s[i].mean = mean[k];
            out->s[i].width = width[k];
            qerr[i] = qe[k];
        }
    }
    for (int k = 0; k < n; k++) {
        int i = out->order[k];
        struct arm *a = &r->arms[i];
        struct router_arm_score *s = &out->s[i];
        if (r->policy == CONFIG_POLICY_THOMPSON) {
            linucb_score(a->m, x, &s->mean, &s->width);
            qerr[i] = 0.0;
            s->quality = s->mean + r->thompson_v * s->width * util_rng_normal(&r->rng);
        } else {
            s->quality = ucb_quality(r, i, x, s->mean, s->width);
        }
        s->cost = predicted_cost(a, prompt_tokens);
        s->latency = a->st.latency_ms;
        if (healthy == NULL || healthy[i]) {
            if (s->cost > cmax)
                cmax = s->cost;
            if (s->latency > lmax)
                lmax = s->latency;
        }
    }
    running_mean(&r->cbar, &r->cbar_n, cmax);
    running_mean(&r->lbar, &r->lbar_n, lmax);
    for (int k = 0; k < n; k++) {
        struct router_arm_score *s = &out->s[out->order[k]];
        double c = r->cbar > 0.0 ? s->cost / r->cbar : 0.0;
        double l = r->lbar > 0.0 ? s->latency / r->lbar : 0.0;
        s->score = w->quality * s->quality - w->cost * c - w->latency * l;
    }
    refine_widths(r, x, w, out, n, qerr);
    if (w->has_tolerance)
        tolerance_scores(r, x, w, out, n, qerr);
    /* Insertion sort, best first (n <= 64; stable on index order). */
    for (int k = 1; k < n; k++) {
        int v = out->order[k], j = k - 1;
        while (j >= 0 && better(out, v, out->order[j])) {
            out->order[j + 1] = out->order[j];
            j--;
        }
        out->order[j + 1] = v;
    }
    if (pinned >= 0) {
        int j = 0;
        while (out->order[j] != pinned)
            j++;
        for (; j > 0; j--)
            out->order[j] = out->order[j - 1];
        out->order[0] = pinned;
    }
    out->n = n;
    r->arms[out->order[0]].st.pulls++;
    return BD_OK;
}

int router_feedback(router *r, int arm, const double *x, double reward)
{
    assert(r != NULL);
    if (arm < 0 || arm >= r->n_arms || x == NULL || !isfinite(reward) || reward < 0.0 ||
        reward > 1.0)
        return BD_ERR_INVALID;
    struct arm *a = &r->arms[arm];
    int rc = linucb_update(a->m, x, reward);
    if (rc != BD_OK)
        return rc;
    a->st.feedback++;
    a->st.reward_sum += reward;
    return BD_OK;
}

static void ewma(double *v, uint64_t *nobs, double obs)
{
    if (*nobs == 0)
        *v = obs;
    else
        *v += LATENCY_EWMA * (obs - *v);
    (*nobs)++;
}

void router_observe(router *r, int arm, long completion_tokens, double ttfb_ms, double total_ms)
{
    assert(r != NULL);
    if (arm < 0 || arm >= r->n_arms)
        return;
    struct arm *a = &r->arms[arm];
    if (completion_tokens >= 0) {
        a->completion_sum += (double)completion_tokens;
        a->st.usage_obs++;
        a->st.exp_completion_tokens =
            (PRIOR_COMPLETION_TOKENS * PRIOR_COMPLETION_WEIGHT + a->completion_sum) /
            (PRIOR_COMPLETION_WEIGHT + (double)a->st.usage_obs);
    }
    if (isfinite(ttfb_ms) && ttfb_ms >= 0)
        ewma(&a->st.ttfb_ms, &a->ttfb_obs, ttfb_ms);
    if (isfinite(total_ms) && total_ms >= 0)
        ewma(&a->st.latency_ms, &a->lat_obs, total_ms);
}

void router_observe_failure(router *r, int arm, double elapsed_ms)
{
    assert(r != NULL);
    if (arm < 0 || arm >= r->n_arms || !isfinite(elapsed_ms) || elapsed_ms < 0)
        return;
    struct arm *a = &r->arms[arm];
    ewma(&a->st.latency_ms, &a->lat_obs, elapsed_ms);
}

void router_arm_stats(const router *r, int arm, struct router_arm_stats *out)
{
    assert(r != NULL && out != NULL);
    if (arm < 0 || arm >= r->n_arms) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = r->arms[arm].st;
}

void router_refine_stats(const router *r, struct router_refine_stats *out)
{
    assert(r != NULL && out != NULL);
    *out = r->refine;
}

const linucb *router_model(const router *r, int arm)
{
    if (r == NULL || arm < 0 || arm >= r->n_arms)
        return NULL;
    return r->arms[arm].m;
}

linucb *router_model_mut(router *r, int arm)
{
    if (r == NULL || arm < 0 || arm >= r->n_arms)
        return NULL;
    return r->arms[arm].m;
}

/* ---- reconfiguration (config reload; see router.h) ---------------------- */

int router_arm_index(const router *r, const char *name)
{
    assert(r != NULL && name != NULL);
    for (int i = 0; i < r->n_arms; i++)
        if (strcmp(r->arms[i].name, name) == 0)
            return i;
    return -1;
}

const char *router_arm_name(const router *r, int arm)
{
    if (r == NULL || arm < 0 || arm >= r->n_arms)
        return NULL;
    return r->arms[arm].name;
}

static int retired_index(const router *r, const char *name)
{
    for (int i = 0; i < r->n_retired; i++)
        if (strcmp(r->retired[i].name, name) == 0)
            return i;
    return -1;
}

int router_reconfigure(router *r, const struct config *cfg, int *map)
{
    assert(r != NULL && cfg != NULL);
    const struct config_router *rc = &cfg->router;
    if (cfg->n_arms < 1 || cfg->n_arms > ROUTER_MAX_ARMS || rc->dim != r->dim ||
        !isfinite(rc->alpha) || rc->alpha < 0 || !isfinite(rc->alpha_base) || rc->alpha_base < 0 ||
        !isfinite(rc->thompson_v) || rc->thompson_v < 0 ||
        (rc->policy != CONFIG_POLICY_LINUCB && rc->policy != CONFIG_POLICY_THOMPSON))
        return BD_ERR_INVALID;
    int n = (int)cfg->n_arms;
    int from[ROUTER_MAX_ARMS];   /* new arm i comes from old arm from[i], or -1 */
    int from_r[ROUTER_MAX_ARMS]; /* … or from retired slot from_r[i], or -1 */
    linucb *fresh[ROUTER_MAX_ARMS] = {0};
    for (int i = 0; i < n; i++) {
        const struct config_arm *ca = &cfg->arms[i];
        if (!isfinite(ca->price_in_per_mtok) || ca->price_in_per_mtok < 0 ||
            !isfinite(ca->price_out_per_mtok) || ca->price_out_per_mtok < 0)
            goto invalid;
        for (int j = 0; j < i; j++)
            if (strcmp(cfg->arms[j].name, ca->name) == 0)
                goto invalid;
        from[i] = router_arm_index(r, ca->name);
        from_r[i] = from[i] < 0 ? retired_index(r, ca->name) : -1;
        if (from[i] < 0 && from_r[i] < 0) {
            fresh[i] =
                linucb_create(r->dim, rc->lambda, rc->mu0, rc->forgetting, rc->refactor_every);
            if (fresh[i] == NULL) {
                for (int j = 0; j < i; j++)
                    linucb_destroy(fresh[j]);
                return BD_ERR_NOMEM;
            }
            if (ca->has_prior)
                linucb_set_prior(fresh[i], ca->prior_quality);
        }
    }
    /* Nothing can fail from here on. */
    struct arm next[ROUTER_MAX_ARMS];
    memset(next, 0, sizeof next);
    unsigned char kept[ROUTER_MAX_ARMS] = {0};
    for (int i = 0; i < n; i++) {
        const struct config_arm *ca = &cfg->arms[i];
        if (from[i] >= 0) {
            next[i] = r->arms[from[i]];
            kept[from[i]] = 1;
        } else if (from_r[i] >= 0) {
            next[i] = r->retired[from_r[i]];
            r->retired[from_r[i]].m = NULL; /* moved out; compacted below */
        } else {
            next[i].m = fresh[i];
            next[i].st.exp_completion_tokens = PRIOR_COMPLETION_TOKENS;
            snprintf(next[i].name, sizeof next[i].name, "%s", ca->name);
        }
        next[i].price_in = ca->price_in_per_mtok;
        next[i].price_out = ca->price_out_per_mtok;
    }
    /* Compact the retired list (drop the slots moved back in). */
    int k = 0;
    for (int i = 0; i < r->n_retired; i++)
        if (r->retired[i].m != NULL)
            r->retired[k++] = r->retired[i];
    r->n_retired = k;
    /* Retire removed arms; the oldest retired arm makes room when full. */
    for (int i = 0; i < r->n_arms; i++) {
        if (map != NULL)
            map[i] = -1;
        if (kept[i])
            continue;
        if (r->n_retired == ROUTER_MAX_ARMS) {
            linucb_destroy(r->retired[0].m);
            memmove(&r->retired[0], &r->retired[1],
                    (size_t)(ROUTER_MAX_ARMS - 1) * sizeof r->retired[0]);
            r->n_retired--;
        }
        r->retired[r->n_retired++] = r->arms[i];
    }
    if (map != NULL)
        for (int i = 0; i < n; i++)
            if (from[i] >= 0)
                map[from[i]] = i;
    memcpy(r->arms, next, (size_t)n * sizeof next[0]);
    if (n < ROUTER_MAX_ARMS)
        memset(&r->arms[n], 0, (size_t)(ROUTER_MAX_ARMS - n) * sizeof r->arms[0]);
    r->n_arms = n;
    r->policy = rc->policy;
    r->alpha = rc->alpha;
    r->alpha_base = rc->alpha_base;
    r->thompson_v = rc->thompson_v;
    return BD_OK;
invalid:
    for (int j = 0; j < n; j++)
        linucb_destroy(fresh[j]);
    return BD_ERR_INVALID;
}

void router_restore_arm_stats(router *r, int arm, const struct router_arm_stats *st)
{
    assert(r != NULL && st != NULL);
    if (arm < 0 || arm >= r->n_arms)
        return;
    struct arm *a = &r->arms[arm];
    a->st = *st;
    /* Re-derive the running sums the estimates came from. */
    a->completion_sum =
        st->exp_completion_tokens * (PRIOR_COMPLETION_WEIGHT + (double)st->usage_obs) -
        PRIOR_COMPLETION_TOKENS * PRIOR_COMPLETION_WEIGHT;
    if (a->completion_sum < 0)
        a->completion_sum = 0;
    a->lat_obs = st->latency_ms > 0 ? 1 : 0;
    a->ttfb_obs = st->ttfb_ms > 0 ? 1 : 0;
}
