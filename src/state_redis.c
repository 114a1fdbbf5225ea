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
#include "banditd/util.h"

#define ECHO_MAX 64
#define SNAP_CHUNK 16 /* arms per snapshot operation */
#define T_INVALID "invalid_request_error"
#define T_PERMISSION "permission_error"
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
    struct state_redis_job *job;
    int status; /* 0 = in flight */
    const char *type, *code;
    char param[ECHO_MAX + 1];
    char message[192];
    char key[STORE_ID_MAX]; /* as given */
    char id[STORE_ID_MAX];  /* the decision's request id */
    int arm;
    double reward;
    char *given_id; /* batch: as given */
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

static void fail(struct ritem *r, int status, const char *type, const char *code, const char *param,
                 const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void fail(struct ritem *r, int status, const char *type, const char *code, const char *param,
                 const char *fmt, ...)
{
    r->status = status;
    r->type = type;
    r->code = code;
    snprintf(r->param, sizeof r->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

static void echo_copy(char *dst, size_t dstlen, const char *src)
{
    size_t n = 0;
    for (; src && *src && n + 1 < dstlen && n < ECHO_MAX; src++)
        dst[n++] = (*src >= 0x20 && *src < 0x7f) ? *src : '?';
    dst[n] = '\0';
}

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
    int rc = linucb_set_state(router_model_mut(c->s->rt, i), a->A, a->b, a->n);
    if (rc != BD_OK) {
        util_errf(c->err, c->errlen, "redis snapshot of arm %s is unusable (%s)", a->arm_name,
                  bd_strerror(rc));
        return rc;
    }
    struct router_arm_stats st = {
        .pulls = a->pulls,
        .feedback = a->feedback,
        .reward_sum = a->reward_sum,
        .exp_completion_tokens = a->exp_completion_tokens,
        .latency_ms = a->latency_ms,
        .ttfb_ms = a->ttfb_ms,
        .usage_obs = a->usage_obs,
    };
    router_restore_arm_stats(c->s->rt, i, &st);
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
            const linucb *m = router_model(s->rt, i);
            struct router_arm_stats rs;
            router_arm_stats(s->rt, i, &rs);
            a[k] = (struct store_arm_state){
                .arm_name = s->cfg->arms[i].name,
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
                .taken_at = now,
            };
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

static int respond_error(int status, const char *type, const char *code, const char *param,
                         const char *message, int *status_out, char **body_out)
{
    char *s = openai_error_json(message, type, param, code);
    if (!s)
        return BD_ERR_NOMEM;
    *status_out = status;
    *body_out = s;
    return BD_OK;
}

static cJSON *error_object(const struct ritem *r)
{
    char *s = openai_error_json(r->message, r->type, r->param[0] ? r->param : NULL, r->code);
    if (!s)
        return NULL;
    cJSON *root = cJSON_Parse(s);
    free(s);
    cJSON *e = root ? cJSON_DetachItemFromObjectCaseSensitive(root, "error") : NULL;
    cJSON_Delete(root);
    return e;
}

static int build_answer(const struct state_redis_job *j, int *status, char **body_out)
{
    if (!j->batch) {
        const struct ritem *r = &j->items[0];
        if (r->status != 200)
            return respond_error(r->status, r->type, r->code, r->param[0] ? r->param : NULL,
                                 r->message, status, body_out);
        cJSON *root = cJSON_CreateObject();
        int ok = root && cJSON_AddStringToObject(root, "request_id", r->id) &&
                 cJSON_AddStringToObject(root, "status", "applied") &&
                 cJSON_AddNumberToObject(root, "arm", r->arm);
        char *txt = ok ? cJSON_PrintUnformatted(root) : NULL;
        cJSON_Delete(root);
        if (!txt)
            return BD_ERR_NOMEM;
        *status = 200;
        *body_out = txt;
        return BD_OK;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON *data = out ? cJSON_AddArrayToObject(out, "data") : NULL;
    int ok = data && cJSON_AddStringToObject(out, "object", "list");
    long applied = 0, failed = 0;
    for (size_t i = 0; ok && i < j->n; i++) {
        const struct ritem *r = &j->items[i];
        cJSON *it = cJSON_CreateObject();
        ok = it != NULL;
        if (ok)
            cJSON_AddItemToArray(data, it);
        if (ok && r->status == 200) {
            applied++;
            ok = cJSON_AddStringToObject(it, "request_id", r->id) &&
                 cJSON_AddStringToObject(it, "status", "applied") &&
                 cJSON_AddNumberToObject(it, "arm", r->arm);
        } else if (ok) {
            failed++;
            ok = (r->given_id ? cJSON_AddStringToObject(it, "request_id", r->given_id) != NULL
                              : cJSON_AddNullToObject(it, "request_id") != NULL) &&
                 cJSON_AddStringToObject(it, "status", "error");
            cJSON *e = ok ? error_object(r) : NULL;
            if (e)
                cJSON_AddItemToObject(it, "error", e);
            ok = e != NULL;
        }
    }
    ok = ok && cJSON_AddNumberToObject(out, "applied", (double)applied) &&
         cJSON_AddNumberToObject(out, "failed", (double)failed);
    char *txt = ok ? cJSON_PrintUnformatted(out) : NULL;
    cJSON_Delete(out);
    if (!txt)
        return BD_ERR_NOMEM;
    *status = 200;
    *body_out = txt;
    return BD_OK;
}

static void job_free(struct state_redis_job *j)
{
    for (size_t i = 0; i < j->n; i++)
        free(j->items[i].given_id);
    free(j->items);
    free(j);
}

/* One item settled (from a callback): answer when it was the last one. */
static void item_settled(struct ritem *r)
{
    struct state_redis_job *j = r->job;
    assert(j->pending > 0 && r->status != 0);
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
    struct ritem *r = ud;
    state_redis *s = r->job->s;
    if (rc == BD_OK) {
        r->status = 200;
        decisions_take(s->ds, r->id); /* a local tombstone (absent if resolved remotely) */
    } else if (rc == BD_ERR_EXISTS) {
        fail(r, 409, T_INVALID, "duplicate_feedback", "request_id",
             "feedback for this request_id was already applied");
    } else {
        fail(r, 503, T_SERVER, "store_unavailable", NULL,
             "feedback could not be recorded (%s); retry later", bd_strerror(rc));
    }
    item_settled(r);
}

/* Queue the feedback itself; on an immediate failure r holds the error. */
static int put_item(state_redis *s, struct ritem *r, const char *arm_name, const double *x)
{
    int rc = store_redis_put_feedback(s->st, r->id, arm_name, x, router_dim(s->rt), r->reward,
                                      util_wall_s(), fb_done, r);
    if (rc == BD_OK)
        return 1;
    if (rc == BD_ERR_BUSY)
        fail(r, 503, T_SERVER, "store_busy", NULL, "too much feedback in flight; retry later");
    else
        fail(r, 500, T_SERVER, "internal_error", NULL, "feedback not queued: %s", bd_strerror(rc));
    return 0;
}

static void got_decision(int rc, const struct store_decision *d, void *ud)
{
    struct ritem *r = ud;
    struct state_redis_job *j = r->job;
    state_redis *s = j->s;
    if (rc == BD_ERR_NOTFOUND) {
        fail(r, 404, T_INVALID, "unknown_request_id", "request_id", "unknown request_id");
    } else if (rc == BD_ERR_EXISTS) {
        fail(r, 409, T_INVALID, "duplicate_feedback", "request_id",
             "feedback for this request_id was already applied");
    } else if (rc != BD_OK) {
        fail(r, 503, T_SERVER, "store_unavailable", NULL,
             "the shared store is unreachable (%s); retry later", bd_strerror(rc));
    } else if (!j->admin && d->client != j->client) {
        fail(r, 403, T_PERMISSION, "forbidden", "request_id",
             "this request_id belongs to another client");
    } else if ((r->arm = config_arm_index(s->cfg, d->arm_name)) < 0) {
        fail(r, 410, T_INVALID, "expired_request_id", "request_id",
             "request_id expired; feedback is no longer accepted");
    } else {
        snprintf(r->id, sizeof r->id, "%s", d->id);
        if (put_item(s, r, d->arm_name, d->x))
            return; /* settles in fb_done */
    }
    item_settled(r);
}

/* Validate one item and start it. Returns 1 if it is in flight. */
static int start_item(state_redis *s, struct state_redis_job *j, struct ritem *r, const cJSON *item,
                      double now_s)
{
    r->job = j;
    r->arm = -1;
    if (!cJSON_IsObject(item)) {
        fail(r, 400, T_INVALID, "invalid_body", NULL, "feedback must be a JSON object");
        return 0;
    }
    const cJSON *rid = NULL, *rw = NULL, *comment = NULL;
    for (const cJSON *c = item->child; c; c = c->next) {
        const cJSON **slot = NULL;
        if (c->string && strcmp(c->string, "request_id") == 0)
            slot = &rid;
        else if (c->string && strcmp(c->string, "reward") == 0)
            slot = &rw;
        else if (c->string && strcmp(c->string, "comment") == 0)
            slot = &comment;
        char name[ECHO_MAX + 1];
        echo_copy(name, sizeof name, c->string);
        if (!slot) {
            fail(r, 400, T_INVALID, "unknown_field", name, "unknown field '%s'", name);
            return 0;
        }
        if (*slot) {
            fail(r, 400, T_INVALID, "duplicate_field", name, "duplicate field '%s'", name);
            return 0;
        }
        *slot = c;
    }
    if (j->batch && rid && cJSON_IsString(rid) && rid->valuestring)
        r->given_id = strdup(rid->valuestring);
    if (!rid) {
        fail(r, 400, T_INVALID, "missing_request_id", "request_id", "missing field 'request_id'");
        return 0;
    }
    if (!cJSON_IsString(rid) || !rid->valuestring || !rid->valuestring[0]) {
        fail(r, 400, T_INVALID, "invalid_request_id", "request_id",
             "'request_id' must be a non-empty string");
        return 0;
    }
    if (!rw) {
        fail(r, 400, T_INVALID, "missing_reward", "reward", "missing field 'reward'");
        return 0;
    }
    if (cJSON_IsTrue(rw)) {
        r->reward = 1.0;
    } else if (cJSON_IsFalse(rw)) {
        r->reward = 0.0;
    } else if (cJSON_IsNumber(rw) && isfinite(rw->valuedouble) && rw->valuedouble >= 0.0 &&
               rw->valuedouble <= 1.0) {
        r->reward = rw->valuedouble + 0.0;
    } else {
        fail(r, 400, T_INVALID, "invalid_reward", "reward",
             "'reward' must be a number in [0,1] or a boolean");
        return 0;
    }
    if (comment && !cJSON_IsString(comment) && !cJSON_IsNull(comment)) {
        fail(r, 400, T_INVALID, "invalid_comment", "comment", "'comment' must be a string");
        return 0;
    }
    if (strlen(rid->valuestring) >= sizeof r->key) {
        fail(r, 404, T_INVALID, "unknown_request_id", "request_id", "unknown request_id");
        return 0;
    }
    snprintf(r->key, sizeof r->key, "%s", rid->valuestring);
    const struct decision *d = NULL;
    int rc = decisions_find(s->ds, r->key, now_s, &d);
    switch (rc) {
    case BD_OK:
        if (!j->admin && d->client != j->client) {
            fail(r, 403, T_PERMISSION, "forbidden", "request_id",
                 "this request_id belongs to another client");
            return 0;
        }
        snprintf(r->id, sizeof r->id, "%s", d->id);
        r->arm = d->arm;
        if (d->arm < 0 || (size_t)d->arm >= s->cfg->n_arms) {
            fail(r, 410, T_INVALID, "expired_request_id", "request_id",
                 "request_id expired; feedback is no longer accepted");
            return 0;
        }
        return put_item(s, r, s->cfg->arms[d->arm].name, d->x);
    case BD_ERR_EXISTS:
        fail(r, 409, T_INVALID, "duplicate_feedback", "request_id",
             "feedback for this request_id was already applied");
        return 0;
    case BD_ERR_EXPIRED:
        fail(r, 410, T_INVALID, "expired_request_id", "request_id",
             "request_id expired; feedback is no longer accepted");
        return 0;
    case BD_ERR_NOTFOUND:
        /* answered by another replica, or before a restart: ask Redis */
        rc = store_redis_get_decision(s->st, r->key, got_decision, r);
        if (rc == BD_OK)
            return 1;
        if (rc == BD_ERR_BUSY)
            fail(r, 503, T_SERVER, "store_busy", NULL, "too much feedback in flight; retry later");
        else
            fail(r, 404, T_INVALID, "unknown_request_id", "request_id", "unknown request_id");
        return 0;
    default:
        fail(r, 500, T_SERVER, "internal_error", NULL, "decision lookup failed: %s",
             bd_strerror(rc));
        return 0;
    }
}

int state_redis_feedback_submit(state_redis *s, const char *body, size_t len, uint64_t client,
                                int admin, double now_s, feedback_reply_fn reply, void *reply_ud,
                                state_redis_job **job, int *status, char **body_out)
{
    *job = NULL;
    *body_out = NULL;
    if (util_json_prescan(body, len, 32) == -2)
        return respond_error(400, T_INVALID, "invalid_json", NULL, "body nested too deeply", status,
                             body_out);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    int trailing = 0;
    if (root && end)
        for (const char *p = end; p < body + len; p++)
            if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t')
                trailing = 1;
    if (!root || trailing) {
        cJSON_Delete(root);
        return respond_error(400, T_INVALID, "invalid_json", NULL, "body is not valid JSON", status,
                             body_out);
    }
    const cJSON *list = NULL;
    if (cJSON_IsObject(root) && root->child && !root->child->next && root->child->string &&
        strcmp(root->child->string, "feedback") == 0) {
        list = root->child;
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) == 0) {
            cJSON_Delete(root);
            return respond_error(400, T_INVALID, "invalid_batch", "feedback",
                                 "'feedback' must be a non-empty array", status, body_out);
        }
        if (cJSON_GetArraySize(list) > FEEDBACK_MAX_BATCH) {
            cJSON_Delete(root);
            return respond_error(400, T_INVALID, "batch_too_large", "feedback",
                                 "too many feedback items in one request", status, body_out);
        }
    }
    struct state_redis_job *j = calloc(1, sizeof *j);
    size_t n = list ? (size_t)cJSON_GetArraySize(list) : 1;
    if (j)
        j->items = calloc(n, sizeof *j->items);
    if (!j || !j->items) {
        free(j);
        cJSON_Delete(root);
        return BD_ERR_NOMEM;
    }
    j->s = s;
    j->reply = reply;
    j->reply_ud = reply_ud;
    j->batch = list != NULL;
    j->client = client;
    j->admin = admin;
    j->n = n;
    size_t k = 0;
    if (list) {
        for (const cJSON *it = list->child; it; it = it->next, k++)
            j->pending += (size_t)start_item(s, j, &j->items[k], it, now_s);
    } else {
        j->pending += (size_t)start_item(s, j, &j->items[0], root, now_s);
    }
    cJSON_Delete(root);
    if (j->pending > 0) {
        *job = j;
        return BD_OK;
    }
    int rc = build_answer(j, status, body_out);
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
