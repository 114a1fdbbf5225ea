/* state_redis — shared state glue for replicas (see state_redis.h,
 * docs/scale-out.md). */
#include "banditd/state_redis.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "banditd/err.h"
#include "banditd/linucb.h"
#include "banditd/log.h"
#include "banditd/openai.h"
#include "banditd/state.h"
#include "banditd/util.h"

#define SNAP_CHUNK 16 /* arms per snapshot operation */
#define T_SERVER "server_error"

struct state_redis {
    const struct config *cfg;
    router *rt;
    decisions *ds;
    store_redis *st;
    double next_snap_s;
    int snap_pending; /* snapshot operations in flight */
    int snap_failed;
    uint64_t dropped; /* decisions not written */
    uint64_t refused; /* stream events the router refused / unknown arm */
};

struct ritem {
    struct feedback_result r; /* first: feedback_answer reads items with a stride */
    struct state_redis_job *job;
    char key[STORE_ID_MAX]; /* as given */
    double reward;
};

struct state_redis_job {
    state_redis *s;
    feedback_reply_fn reply;
    void *reply_ud;
    int detached;
    int batch;
    uint64_t client;
    int admin;
    size_t n, pending;
    struct ritem *items;
};

/* ---------- the stream: apply every event in order ---------- */

static void apply_event(const struct store_redis_event *ev, void *ud)
{
    state_redis *s = ud;
    int i = config_arm_index(s->cfg, ev->arm_name);
    int rc = i >= 0 ? router_feedback(s->rt, i, ev->x, ev->reward) : BD_ERR_NOTFOUND;
    if (rc != BD_OK) {
        s->refused++;
        char p[STORE_REDIS_POS_MAX];
        log_msgf(LOG_WARN, "stream event %s (arm %s) not applied: %s",
                 store_redis_pos_format(ev->pos, p), ev->arm_name, bd_strerror(rc));
    }
}

/* ---------- open / close ---------- */

struct restore_ctx {
    state_redis *s;
    int snapshots;
    char *err;
    size_t errlen;
};

static int restore_cb(const struct store_arm_state *a, void *ud)
{
    struct restore_ctx *c = ud;
    int i = config_arm_index(c->s->cfg, a->arm_name);
    if (i < 0)
        return 0; /* not configured here: its events are skipped the same way */
    int rc = state_arm_restore(c->s->rt, i, a);
    if (rc != BD_OK) {
        util_errf(c->err, c->errlen, "redis snapshot of arm %s is unusable (%s)", a->arm_name,
                  bd_strerror(rc));
        return rc;
    }
    c->snapshots++;
    return 0;
}

int state_redis_open(const struct config *cfg, router *rt, decisions *ds, store_wake_fn wake,
                     void *wake_ud, state_redis **out, int *snapshots, char *err, size_t errlen)
{
    assert(cfg && rt && ds && out && cfg->store.redis[0]);
    *out = NULL;
    state_redis *s = calloc(1, sizeof *s);
    if (!s) {
        util_errf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    s->cfg = cfg;
    s->rt = rt;
    s->ds = ds;
    struct store_redis_opts o;
    store_redis_opts_default(&o);
    o.ttl_s = (double)cfg->feedback.ttl_s;
    o.text_weight = cfg->router.text_weight;
    if (cfg->store.queue_cap > 0)
        o.queue_cap = (size_t)cfg->store.queue_cap;
    o.apply = apply_event;
    o.apply_ud = s;
    o.wake = wake;
    o.wake_ud = wake_ud;
    int rc = store_redis_open(cfg->store.redis, router_dim(rt), &o, &s->st, err, errlen);
    if (rc != BD_OK) {
        free(s);
        return rc;
    }
    struct restore_ctx c = {.s = s, .err = err, .errlen = errlen};
    rc = store_redis_load_model(s->st, restore_cb, &c);
    if (rc == BD_OK)
        rc = store_redis_start(s->st);
    if (rc != BD_OK) {
        if (err && errlen && !err[0])
            util_errf(err, errlen, "redis: cannot restore the model: %s", bd_strerror(rc));
        store_redis_close(s->st);
        free(s);
        return rc;
    }
    if (snapshots)
        *snapshots = c.snapshots;
    s->next_snap_s = util_wall_s() + (double)cfg->store.snapshot_interval_s;
    *out = s;
    return BD_OK;
}

void state_redis_set_config(state_redis *s, const struct config *cfg)
{
    s->cfg = cfg;
}

store_redis *state_redis_store(state_redis *s)
{
    return s->st;
}

/* ---------- snapshots ---------- */

static void trim_done(int rc, int64_t removed, void *ud)
{
    (void)ud;
    if (rc == BD_OK && removed > 0)
        log_msgf(LOG_DEBUG, "redis stream trimmed: %lld entries", (long long)removed);
}

static void snap_done(int rc, int64_t seq, void *ud)
{
    (void)seq;
    state_redis *s = ud;
    s->snap_pending--;
    if (rc != BD_OK)
        s->snap_failed = 1;
    if (s->snap_pending == 0) {
        if (!s->snap_failed)
            store_redis_trim(s->st, trim_done, NULL);
        else
            log_msgf(LOG_WARN, "redis snapshot failed; the stream is kept until the next one");
        s->snap_failed = 0;
    }
}

/* Snapshot every configured arm (no refactor: A⁻¹ stays as every replica has
 * it, so the replicas' θ stay identical). */
static int snapshot_all(state_redis *s, double now, int with_cb)
{
    int n = (int)s->cfg->n_arms, rc = BD_OK;
    struct store_arm_state a[SNAP_CHUNK];
    for (int base = 0; base < n && rc == BD_OK; base += SNAP_CHUNK) {
        int k = 0;
        for (int i = base; i < n && k < SNAP_CHUNK; i++, k++) {
            state_arm_snapshot(s->rt, i, s->cfg->arms[i].name, now, &a[k]);
        }
        rc = store_redis_put_snapshot(s->st, a, k, with_cb ? snap_done : NULL, s);
        if (rc == BD_OK && with_cb)
            s->snap_pending++;
    }
    return rc;
}

void state_redis_poll(state_redis *s, double now_s)
{
    store_redis_dispatch(s->st);
    if (now_s >= s->next_snap_s && s->snap_pending == 0) {
        s->next_snap_s = now_s + (double)s->cfg->store.snapshot_interval_s;
        int rc = snapshot_all(s, now_s, 1);
        if (rc != BD_OK)
            log_msgf(LOG_WARN, "redis snapshot postponed: %s", bd_strerror(rc));
    }
}

/* ---------- decisions ---------- */

void state_redis_decision(state_redis *s, const struct decision *d)
{
    const char *name =
        d->arm >= 0 && (size_t)d->arm < s->cfg->n_arms ? s->cfg->arms[d->arm].name : NULL;
    struct store_decision sd = store_decision_of(d, name);
    int rc = name ? store_redis_put_decision(s->st, &sd, NULL, NULL) : BD_ERR_INVALID;
    if (rc != BD_OK) {
        s->dropped++;
        if (s->dropped == 1 || s->dropped % 1000 == 0)
            log_msgf(LOG_WARN,
                     "decision %s not written to redis (%s); %llu so far: only this replica "
                     "can take its feedback",
                     d->id, bd_strerror(rc), (unsigned long long)s->dropped);
    }
}

void state_redis_complete(state_redis *s, const char *id, const char *completion_id,
                          double cost_usd, double latency_ms)
{
    int rc = store_redis_complete_decision(s->st, id, completion_id, cost_usd, latency_ms);
    if (rc != BD_OK)
        log_msgf(LOG_DEBUG, "decision %s: completion not written: %s", id, bd_strerror(rc));
}

/* ---------- feedback ---------- */

static int build_answer(const struct state_redis_job *j, int *status, char **body_out)
{
    return feedback_answer(j->batch, &j->items[0].r, j->n, sizeof *j->items, status, body_out);
}

static void job_free(struct state_redis_job *j)
{
    for (size_t i = 0; i < j->n; i++)
        free(j->items[i].r.given_id);
    free(j->items);
    free(j);
}

/* One item settled (from a callback): answer when it was the last one. */
static void item_settled(struct ritem *r)
{
    struct state_redis_job *j = r->job;
    assert(j->pending > 0 && r->r.status != 0);
    if (--j->pending > 0)
        return;
    if (!j->detached) {
        int status = 500;
        char *body = NULL;
        if (build_answer(j, &status, &body) != BD_OK)
            body = NULL;
        j->reply(j->reply_ud, body ? status : 500, body);
    }
    job_free(j);
}

static void fb_done(int rc, struct store_redis_pos pos, void *ud)
{
    (void)pos;
    struct ritem *it = ud;
    state_redis *s = it->job->s;
    if (rc == BD_OK) {
        it->r.status = 200;
        decisions_take(s->ds, it->r.id); /* a local tombstone (absent if resolved remotely) */
    } else if (rc == BD_ERR_EXISTS) {
        feedback_fail_lookup(&it->r, rc);
    } else {
        feedback_fail(&it->r, 503, T_SERVER, "store_unavailable", NULL,
                      "feedback could not be recorded (%s); retry later", bd_strerror(rc));
    }
    item_settled(it);
}

/* Queue the feedback itself. Returns 1 if it is in flight; 0 with the
 * error in it->r. */
static int put_item(state_redis *s, struct ritem *it, const char *arm_name, const double *x)
{
    int rc = store_redis_put_feedback(s->st, it->r.id, arm_name, x, router_dim(s->rt), it->reward,
                                      util_wall_s(), fb_done, it);
    if (rc == BD_OK)
        return 1;
    if (rc == BD_ERR_BUSY)
        feedback_fail(&it->r, 503, T_SERVER, "store_busy", NULL,
                      "too much feedback in flight; retry later");
    else
        feedback_fail(&it->r, 500, T_SERVER, "internal_error", NULL, "feedback not queued: %s",
                      bd_strerror(rc));
    return 0;
}

static void got_decision(int rc, const struct store_decision *d, void *ud)
{
    struct ritem *it = ud;
    struct state_redis_job *j = it->job;
    state_redis *s = j->s;
    if (rc == BD_OK && !j->admin && d->client != j->client)
        rc = BD_ERR_FORBIDDEN;
    if (rc == BD_OK && (it->r.arm = config_arm_index(s->cfg, d->arm_name)) < 0)
        rc = BD_ERR_EXPIRED; /* its arm is gone */
    if (rc == BD_OK) {
        snprintf(it->r.id, sizeof it->r.id, "%s", d->id);
        if (put_item(s, it, d->arm_name, d->x))
            return; /* settles in fb_done */
    } else if (rc == BD_ERR_NOTFOUND || rc == BD_ERR_EXISTS || rc == BD_ERR_FORBIDDEN ||
               rc == BD_ERR_EXPIRED) {
        feedback_fail_lookup(&it->r, rc);
    } else {
        feedback_fail(&it->r, 503, T_SERVER, "store_unavailable", NULL,
                      "the shared store is unreachable (%s); retry later", bd_strerror(rc));
    }
    item_settled(it);
}

/* Check one item and start it: the local decision store first, then Redis
 * (a decision made by another replica, or before a restart). Returns 1 if
 * it is in flight; 0 with the answer in it->r. */
static int start_item(state_redis *s, struct state_redis_job *j, struct ritem *it,
                      const cJSON *item, double now_s)
{
    it->job = j;
    const char *rid;
    int rc = feedback_check_item(item, j->batch, &it->r, &rid, &it->reward);
    if (rc == BD_ERR_NOMEM)
        feedback_fail(&it->r, 500, T_SERVER, "internal_error", NULL, "out of memory");
    if (rc != BD_OK)
        return 0;
    if (strlen(rid) >= sizeof it->key) {
        feedback_fail_lookup(&it->r, BD_ERR_NOTFOUND);
        return 0;
    }
    snprintf(it->key, sizeof it->key, "%s", rid);
    const struct decision *d = NULL;
    rc = decisions_find(s->ds, it->key, now_s, &d);
    if (rc == BD_OK && !j->admin && d->client != j->client)
        rc = BD_ERR_FORBIDDEN;
    if (rc == BD_OK && (d->arm < 0 || (size_t)d->arm >= s->cfg->n_arms))
        rc = BD_ERR_EXPIRED; /* its arm is gone */
    if (rc == BD_OK) {
        snprintf(it->r.id, sizeof it->r.id, "%s", d->id);
        it->r.arm = d->arm;
        return put_item(s, it, s->cfg->arms[d->arm].name, d->x);
    }
    if (rc == BD_ERR_NOTFOUND) {
        /* answered by another replica, or before a restart: ask Redis */
        rc = store_redis_get_decision(s->st, it->key, got_decision, it);
        if (rc == BD_OK)
            return 1;
        if (rc == BD_ERR_BUSY) {
            feedback_fail(&it->r, 503, T_SERVER, "store_busy", NULL,
                          "too much feedback in flight; retry later");
            return 0;
        }
        rc = BD_ERR_NOTFOUND;
    }
    feedback_fail_lookup(&it->r, rc);
    return 0;
}

int state_redis_feedback_submit(state_redis *s, const char *body, size_t len, uint64_t client,
                                int admin, double now_s, feedback_reply_fn reply, void *reply_ud,
                                state_redis_job **job, int *status, char **body_out)
{
    *job = NULL;
    *body_out = NULL;
    struct feedback_body fb;
    int rc = feedback_parse(body, len, &fb, status, body_out);
    if (rc != BD_OK || !fb.root)
        return rc;
    struct state_redis_job *j = calloc(1, sizeof *j);
    if (j)
        j->items = calloc(fb.n ? fb.n : 1, sizeof *j->items);
    if (!j || !j->items) {
        free(j);
        feedback_body_free(&fb);
        return BD_ERR_NOMEM;
    }
    j->s = s;
    j->reply = reply;
    j->reply_ud = reply_ud;
    j->batch = fb.batch;
    j->client = client;
    j->admin = admin;
    j->n = fb.n;
    for (size_t k = 0; k < fb.n; k++)
        j->pending += (size_t)start_item(s, j, &j->items[k], fb.items[k], now_s);
    feedback_body_free(&fb);
    if (j->pending > 0) {
        *job = j;
        return BD_OK;
    }
    rc = build_answer(j, status, body_out);
    job_free(j);
    return rc;
}

void state_redis_job_detach(state_redis_job *job)
{
    if (job)
        job->detached = 1;
}

void state_redis_close(state_redis *s)
{
    if (!s)
        return;
    store_redis_flush(s->st);
    store_redis_dispatch(s->st);
    if (snapshot_all(s, util_wall_s(), 0) != BD_OK)
        log_msgf(LOG_WARN, "final redis snapshot not queued");
    store_redis_close(s->st); /* runs the snapshot, answers what is left */
    free(s);
}
