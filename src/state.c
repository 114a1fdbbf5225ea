/* state — durable state glue (see state.h, docs/state.md). */
#include "banditd/state.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/err.h"
#include "banditd/linucb.h"
#include "banditd/log.h"
#include "banditd/util.h"

#define STATE_PURGE_EVERY_S 60.0
#define STATE_MODEL_JSON_MAX ((size_t)512 * 1024 * 1024)

/* Per configured arm (indexed like the router). */
struct track {
    int64_t last_seq;    /* last feedback seq applied to the model (0 = none) */
    uint64_t since_snap; /* feedbacks applied since its last snapshot */
    uint64_t pulls_at_snap;
    double last_snap_s;
};

struct state {
    const struct config *cfg;
    router *rt;
    decisions *ds;
    store *st;
    feedback_async *fa;
    struct track tr[ROUTER_MAX_ARMS];
    int snap_cursor;
    double next_purge_s;
    uint64_t dropped;
};

/* ---- feedback_arms ---- */

static const char *arm_name_cb(void *ud, int arm)
{
    state *s = ud;
    if (arm < 0 || (size_t)arm >= s->cfg->n_arms)
        return NULL;
    return s->cfg->arms[arm].name;
}

static int arm_index_cb(void *ud, const char *name)
{
    state *s = ud;
    return config_arm_index(s->cfg, name);
}

static void on_applied(void *ud, int arm, int64_t seq)
{
    state *s = ud;
    if (arm < 0 || arm >= ROUTER_MAX_ARMS)
        return;
    assert(seq > s->tr[arm].last_seq && "callbacks run in commit order");
    s->tr[arm].last_seq = seq;
    s->tr[arm].since_snap++;
}

/* ---- restore ---- */

struct restore_ctx {
    state *s;
    struct state_restore_info *info;
    int arm;      /* load_feedback_after: the arm being replayed */
    int answered; /* loading decisions that already have feedback */
    int rc;
    char *err;
    size_t errlen;
};

void state_arm_snapshot(const router *rt, int arm, const char *name, double now_s,
                        struct store_arm_state *a)
{
    const linucb *m = router_model(rt, arm);
    struct router_arm_stats rs;
    router_arm_stats(rt, arm, &rs);
    *a = (struct store_arm_state){
        .arm_name = name,
        .A = linucb_A(m),
        .b = linucb_b(m),
        .n = linucb_count(m),
        .pulls = rs.pulls,
        .feedback = rs.feedback,
        .reward_sum = rs.reward_sum,
        .exp_completion_tokens = rs.exp_completion_tokens,
        .latency_ms = rs.latency_ms,
        .ttfb_ms = rs.ttfb_ms,
        .usage_obs = rs.usage_obs,
        .taken_at = now_s,
    };
}

int state_arm_restore(router *rt, int arm, const struct store_arm_state *a)
{
    int rc = linucb_set_state(router_model_mut(rt, arm), a->A, a->b, a->n);
    if (rc != BD_OK)
        return rc;
    struct router_arm_stats st = {
        .pulls = a->pulls,
        .feedback = a->feedback,
        .reward_sum = a->reward_sum,
        .exp_completion_tokens = a->exp_completion_tokens,
        .latency_ms = a->latency_ms,
        .ttfb_ms = a->ttfb_ms,
        .usage_obs = a->usage_obs,
    };
    router_restore_arm_stats(rt, arm, &st);
    return BD_OK;
}

static int restore_arm_cb(const struct store_arm_state *a, void *ud)
{
    struct restore_ctx *c = ud;
    state *s = c->s;
    int i = config_arm_index(s->cfg, a->arm_name);
    if (i < 0) {
        c->info->snapshots_unused++;
        return 0; /* a removed arm: its rows stay, unused */
    }
    int rc = state_arm_restore(s->rt, i, a);
    if (rc != BD_OK) {
        util_errf(c->err, c->errlen,
                  "snapshot of arm %s is unusable (%s); restore a backup or use --reset-state",
                  a->arm_name, bd_strerror(rc));
        return rc;
    }
    s->tr[i].last_seq = a->feedback_seq;
    s->tr[i].pulls_at_snap = a->pulls;
    c->info->snapshots++;
    return 0;
}

static int replay_cb(const struct store_feedback *f, void *ud)
{
    struct restore_ctx *c = ud;
    state *s = c->s;
    /* The same update, in the same order, as when it was acknowledged. A
     * refused update was refused live too (same state): skip it the same way. */
    int rc = router_feedback(s->rt, c->arm, f->x, f->reward);
    if (rc != BD_OK)
        log_msgf(LOG_WARN, "restore: feedback seq %lld for arm %s refused: %s", (long long)f->seq,
                 f->arm_name, bd_strerror(rc));
    s->tr[c->arm].last_seq = f->seq;
    s->tr[c->arm].since_snap++;
    c->info->replayed++;
    return 0;
}

static int decision_cb(const struct store_decision *sd, void *ud)
{
    struct restore_ctx *c = ud;
    state *s = c->s;
    int i = config_arm_index(s->cfg, sd->arm_name);
    if (i < 0 || strlen(sd->id) >= sizeof(((struct decision *)0)->id)) {
        c->info->decisions_stale++;
        return 0;
    }
    struct decision d;
    memset(&d, 0, sizeof d);
    snprintf(d.id, sizeof d.id, "%s", sd->id);
    if (sd->completion_id && strlen(sd->completion_id) < sizeof d.completion_id)
        snprintf(d.completion_id, sizeof d.completion_id, "%s", sd->completion_id);
    d.arm = i;
    d.x = (double *)sd->x; /* copied by decisions_add */
    d.w = sd->w;
    d.created_s = sd->created_s;
    d.cost_usd = sd->cost_usd;
    d.latency_ms = sd->latency_ms;
    d.client = sd->client;
    int rc = decisions_add(s->ds, &d);
    if (rc == BD_OK && c->answered) {
        decisions_take(s->ds, d.id); /* a tombstone: repeated feedback gets 409 */
        return 0;
    }
    if (rc == BD_OK)
        c->info->decisions++;
    else if (rc != BD_ERR_EXISTS) /* a duplicate completion id is harmless */
        return rc;
    return 0;
}

int state_open(const struct config *cfg, router *rt, decisions *ds, unsigned flags,
               store_wake_fn wake, void *wake_ud, state **out, struct state_restore_info *info,
               char *err, size_t errlen)
{
    assert(cfg && rt && ds && out && cfg->store.path[0]);
    *out = NULL;
    struct state_restore_info dummy;
    if (!info)
        info = &dummy;
    memset(info, 0, sizeof *info);
    state *s = calloc(1, sizeof *s);
    if (!s) {
        util_errf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    s->cfg = cfg;
    s->rt = rt;
    s->ds = ds;
    size_t qcap = cfg->store.queue_cap > 0 ? (size_t)cfg->store.queue_cap : 4096;
    int rc = store_open(cfg->store.path, router_dim(rt), cfg->router.text_weight, flags, wake,
                        wake_ud, qcap, &s->st, err, errlen);
    if (rc != BD_OK) {
        free(s);
        return rc;
    }
    struct restore_ctx c = {.s = s, .info = info, .err = err, .errlen = errlen};
    rc = store_load_model(s->st, restore_arm_cb, &c);
    for (size_t i = 0; rc == BD_OK && i < cfg->n_arms; i++) {
        c.arm = (int)i;
        rc = store_load_feedback_after(s->st, cfg->arms[i].name, s->tr[i].last_seq, replay_cb, &c);
    }
    double now = util_wall_s();
    if (rc == BD_OK) {
        c.answered = 1; /* first: tombstones are dropped first when over capacity */
        rc = store_load_decisions_ex(s->st, now, (double)cfg->feedback.ttl_s, 1, decision_cb, &c);
    }
    if (rc == BD_OK) {
        c.answered = 0;
        rc = store_load_decisions(s->st, now, (double)cfg->feedback.ttl_s, decision_cb, &c);
    }
    if (rc != BD_OK) {
        if (err && errlen && !err[0])
            util_errf(err, errlen, "%s: cannot restore state: %s", cfg->store.path,
                      bd_strerror(rc));
        store_close(s->st);
        free(s);
        return rc;
    }
    struct feedback_arms arms = {arm_name_cb, arm_index_cb, s};
    s->fa = feedback_async_create(ds, rt, s->st, &arms, on_applied, s);
    if (!s->fa) {
        util_errf(err, errlen, "out of memory");
        store_close(s->st);
        free(s);
        return BD_ERR_NOMEM;
    }
    for (size_t i = 0; i < cfg->n_arms; i++)
        s->tr[i].last_snap_s = now;
    s->next_purge_s = now; /* purge once soon after start */
    *out = s;
    return BD_OK;
}

void state_set_config(state *s, const struct config *cfg)
{
    /* Re-key the per-arm tracks by name. */
    struct track old[ROUTER_MAX_ARMS];
    memcpy(old, s->tr, sizeof old);
    const struct config *prev = s->cfg;
    memset(s->tr, 0, sizeof s->tr);
    double now = util_wall_s();
    for (size_t i = 0; i < cfg->n_arms; i++) {
        int j = config_arm_index(prev, cfg->arms[i].name);
        if (j >= 0) {
            s->tr[i] = old[j];
        } else {
            s->tr[i].last_snap_s = now;
            s->tr[i].since_snap = 1; /* snapshot a newcomer once */
        }
    }
    s->cfg = cfg;
    s->snap_cursor = 0;
}

feedback_async *state_feedback(state *s)
{
    return s->fa;
}

store *state_store(state *s)
{
    return s->st;
}

uint64_t state_dropped(const state *s)
{
    return s->dropped;
}

/* Fill a snapshot of arm i (after re-deriving A⁻¹ so that a restore through
 * linucb_set_state reproduces this very state). */
static int fill_snapshot(state *s, int i, double now, struct store_arm_state *a)
{
    linucb *m = router_model_mut(s->rt, i);
    int rc = linucb_refactor(m);
    if (rc != BD_OK)
        return rc;
    state_arm_snapshot(s->rt, i, s->cfg->arms[i].name, now, a);
    a->feedback_seq = s->tr[i].last_seq;
    return BD_OK;
}

static void snapshot_done(state *s, int i, double now, uint64_t pulls)
{
    s->tr[i].since_snap = 0;
    s->tr[i].pulls_at_snap = pulls;
    s->tr[i].last_snap_s = now;
}

static int arm_changed(const state *s, int i)
{
    struct router_arm_stats rs;
    router_arm_stats(s->rt, i, &rs);
    return s->tr[i].since_snap > 0 || rs.pulls != s->tr[i].pulls_at_snap;
}

/* At most one arm per call: a snapshot costs a Cholesky and a d² copy. */
static void maybe_snapshot(state *s, double now)
{
    int n = (int)s->cfg->n_arms;
    for (int k = 0; k < n; k++) {
        int i = (s->snap_cursor + k) % n;
        const struct track *t = &s->tr[i];
        int due = t->since_snap >= (uint64_t)s->cfg->store.snapshot_every ||
                  (now - t->last_snap_s >= (double)s->cfg->store.snapshot_interval_s &&
                   arm_changed(s, i));
        if (!due)
            continue;
        s->snap_cursor = (i + 1) % n;
        struct store_arm_state a;
        int rc = fill_snapshot(s, i, now, &a);
        if (rc == BD_OK)
            rc = store_put_snapshot(s->st, &a, 1, NULL, NULL);
        if (rc == BD_OK)
            snapshot_done(s, i, now, a.pulls);
        else {
            log_msgf(LOG_WARN, "snapshot of arm %s postponed: %s", s->cfg->arms[i].name,
                     bd_strerror(rc));
            s->tr[i].last_snap_s = now; /* retry after an interval, or more feedback */
        }
        return;
    }
}

void state_poll(state *s, double now_s)
{
    store_dispatch(s->st);
    maybe_snapshot(s, now_s);
    if (now_s >= s->next_purge_s) {
        if (store_purge_expired(s->st, now_s, (double)s->cfg->feedback.ttl_s) == BD_OK)
            s->next_purge_s = now_s + STATE_PURGE_EVERY_S;
    }
}

void state_decision(state *s, const struct decision *d)
{
    const char *name = arm_name_cb(s, d->arm);
    struct store_decision sd = store_decision_of(d, name);
    /* The decision table already holds x in the store's blob form (the
     * caller added d just before): hand that over, the writer binds it as is. */
    const unsigned char *xb = NULL;
    size_t xlen = 0;
    if (decisions_xblob(s->ds, d->id, &xb, &xlen) != BD_OK)
        xb = NULL;
    int rc = name ? store_put_decision_enc(s->st, &sd, xb, xlen, NULL, NULL) : BD_ERR_INVALID;
    if (rc != BD_OK) {
        s->dropped++;
        if (s->dropped == 1 || s->dropped % 1000 == 0)
            log_msgf(LOG_WARN,
                     "decision %s not persisted (%s); %llu so far: its feedback is accepted "
                     "until a restart",
                     d->id, bd_strerror(rc), (unsigned long long)s->dropped);
    }
}

void state_complete(state *s, const char *id, const char *completion_id, double cost_usd,
                    double latency_ms)
{
    int rc = store_complete_decision(s->st, id, completion_id, cost_usd, latency_ms);
    if (rc != BD_OK)
        log_msgf(LOG_DEBUG, "decision %s: completion not persisted: %s", id, bd_strerror(rc));
}

void state_close(state *s)
{
    if (!s)
        return;
    /* Everything queued commits; its callbacks apply the last feedbacks. */
    store_flush(s->st);
    store_dispatch(s->st);
    double now = util_wall_s();
    int n = (int)s->cfg->n_arms, k = 0;
    struct store_arm_state a[ROUTER_MAX_ARMS];
    int idx[ROUTER_MAX_ARMS];
    for (int i = 0; i < n; i++) {
        if (!arm_changed(s, i))
            continue;
        if (fill_snapshot(s, i, now, &a[k]) == BD_OK)
            idx[k++] = i;
        else
            log_msgf(LOG_WARN, "final snapshot of arm %s skipped (not positive definite)",
                     s->cfg->arms[i].name);
    }
    if (k > 0) {
        int rc = store_put_snapshot(s->st, a, k, NULL, NULL);
        if (rc != BD_OK)
            log_msgf(LOG_WARN,
                     "final snapshot not queued: %s (the feedback log still restores "
                     "the model)",
                     bd_strerror(rc));
        for (int j = 0; rc == BD_OK && j < k; j++)
            snapshot_done(s, idx[j], now, a[j].pulls);
    }
    store_close(s->st); /* drains the snapshot, runs what is left */
    feedback_async_destroy(s->fa);
    free(s);
}

/* ---- GET /debug/model ---- */

static int put_vec(struct util_buf *b, const char *key, const double *v, size_t n)
{
    if (util_buf_printf(b, ",\"%s\":[", key) != BD_OK)
        return BD_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        double x = isfinite(v[i]) ? v[i] : 0.0;
        if (util_buf_printf(b, "%s%.17g", i ? "," : "", x) != BD_OK)
            return BD_ERR_NOMEM;
    }
    return util_buf_append(b, "]", 1);
}

char *state_model_json(const router *rt, const struct config *cfg, const char *arm_name,
                       int *status)
{
    int i = arm_name ? config_arm_index(cfg, arm_name) : -1;
    if (i < 0 || i >= router_n_arms(rt)) {
        *status = 404;
        return NULL;
    }
    const linucb *m = router_model(rt, i);
    struct router_arm_stats rs;
    router_arm_stats(rt, i, &rs);
    size_t d = (size_t)linucb_dim(m);
    struct util_buf b;
    util_buf_init(&b, STATE_MODEL_JSON_MAX);
    /* arm names are [A-Za-z0-9._:-] (config.c), safe to print unescaped */
    int rc = util_buf_printf(&b,
                             "{\"arm\":\"%s\",\"dim\":%zu,\"n\":%llu,\"feedback\":%llu,"
                             "\"pulls\":%llu,\"reward_sum\":%.17g,\"mu0\":%.17g",
                             cfg->arms[i].name, d, (unsigned long long)linucb_count(m),
                             (unsigned long long)rs.feedback, (unsigned long long)rs.pulls,
                             rs.reward_sum, linucb_mu0(m));
    if (rc == BD_OK)
        rc = put_vec(&b, "b", linucb_b(m), d);
    if (rc == BD_OK)
        rc = put_vec(&b, "theta", linucb_theta(m), d);
    if (rc == BD_OK)
        rc = put_vec(&b, "A", linucb_A(m), d * d);
    if (rc == BD_OK)
        rc = put_vec(&b, "Ainv", linucb_Ainv(m), d * d);
    if (rc == BD_OK)
        rc = util_buf_append(&b, "}", 1);
    if (rc != BD_OK) {
        util_buf_free(&b);
        *status = 500;
        return NULL;
    }
    *status = 200;
    return b.data;
}
