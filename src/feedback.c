/* feedback — the /feedback endpoint's logic (see feedback.h).
 *
 * Every item goes through the same steps: shape checks (known fields only,
 * no duplicates, request_id a non-empty string, reward a finite number in
 * [0,1] or a boolean, optional comment a string), then the decision lookup
 * (404/409/410), the client check (403), and finally router_feedback followed
 * by decisions_take. The decision is marked taken only after the router
 * accepted the reward, so a failed update can be retried (exactly once).
 *
 * The durable path (feedback_submit) shares the checks (resolve_item) and
 * the answer builder (feedback_answer), and so does the Redis back end
 * (state_redis.c, through the exported building blocks); a resolved item is queued in the store
 * and settled by its commit callback (on_commit). In-flight request ids are
 * kept in a small chained hash set so that a second feedback gets 409 while
 * the first one waits for its commit. */
#include "banditd/feedback.h"
#include "banditd/err.h"
#include "banditd/util.h"
#include "banditd/log.h"
#include "banditd/openai.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#define FEEDBACK_MAX_DEPTH 32

#define T_INVALID "invalid_request_error"
#define T_PERMISSION "permission_error"
#define T_SERVER "server_error"

void feedback_fail(struct feedback_result *r, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...)
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

/* Copy at most FEEDBACK_ECHO_MAX bytes of client text, printable ASCII only, so that
 * an echoed name can neither bloat nor corrupt (invalid UTF-8) a response. */
static void echo_copy(char *dst, size_t dstlen, const char *src)
{
    size_t n = 0;
    for (; src && *src && n + 1 < dstlen && n < FEEDBACK_ECHO_MAX; src++)
        dst[n++] = (*src >= 0x20 && *src < 0x7f) ? *src : '?';
    dst[n] = '\0';
}

int feedback_check_item(const cJSON *item, int batch, struct feedback_result *r,
                        const char **request_id, double *reward)
{
    memset(r, 0, sizeof *r);
    r->arm = -1;
    *request_id = NULL;
    *reward = 0;
    if (batch) {
        const cJSON *given =
            cJSON_IsObject(item) ? cJSON_GetObjectItemCaseSensitive(item, "request_id") : NULL;
        if (cJSON_IsString(given) && given->valuestring &&
            !(r->given_id = strdup(given->valuestring)))
            return BD_ERR_NOMEM;
    }
    if (!cJSON_IsObject(item)) {
        feedback_fail(r, 400, T_INVALID, "invalid_body", NULL, "feedback must be a JSON object");
        return BD_ERR_INVALID;
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
        char name[FEEDBACK_ECHO_MAX + 1];
        echo_copy(name, sizeof name, c->string);
        if (!slot) {
            feedback_fail(r, 400, T_INVALID, "unknown_field", name, "unknown field '%s'", name);
            return BD_ERR_INVALID;
        }
        if (*slot) {
            feedback_fail(r, 400, T_INVALID, "duplicate_field", name, "duplicate field '%s'", name);
            return BD_ERR_INVALID;
        }
        *slot = c;
    }
    if (!rid) {
        feedback_fail(r, 400, T_INVALID, "missing_request_id", "request_id",
                      "missing field 'request_id'");
        return BD_ERR_INVALID;
    }
    if (!cJSON_IsString(rid) || !rid->valuestring || !rid->valuestring[0]) {
        feedback_fail(r, 400, T_INVALID, "invalid_request_id", "request_id",
                      "'request_id' must be a non-empty string");
        return BD_ERR_INVALID;
    }
    if (!rw) {
        feedback_fail(r, 400, T_INVALID, "missing_reward", "reward", "missing field 'reward'");
        return BD_ERR_INVALID;
    }
    double rv;
    if (cJSON_IsTrue(rw)) {
        rv = 1.0;
    } else if (cJSON_IsFalse(rw)) {
        rv = 0.0;
    } else if (cJSON_IsNumber(rw) && isfinite(rw->valuedouble) && rw->valuedouble >= 0.0 &&
               rw->valuedouble <= 1.0) {
        rv = rw->valuedouble + 0.0; /* -0 -> +0 */
    } else {
        feedback_fail(r, 400, T_INVALID, "invalid_reward", "reward",
                      "'reward' must be a number in [0,1] or a boolean");
        return BD_ERR_INVALID;
    }
    if (comment && !cJSON_IsString(comment) && !cJSON_IsNull(comment)) {
        feedback_fail(r, 400, T_INVALID, "invalid_comment", "comment",
                      "'comment' must be a string");
        return BD_ERR_INVALID;
    }
    *request_id = rid->valuestring;
    *reward = rv;
    return BD_OK;
}

void feedback_fail_lookup(struct feedback_result *r, int rc)
{
    switch (rc) {
    case BD_ERR_NOTFOUND:
        feedback_fail(r, 404, T_INVALID, "unknown_request_id", "request_id", "unknown request_id");
        return;
    case BD_ERR_EXISTS:
        feedback_fail(r, 409, T_INVALID, "duplicate_feedback", "request_id",
                      "feedback for this request_id was already applied");
        return;
    case BD_ERR_EXPIRED:
        feedback_fail(r, 410, T_INVALID, "expired_request_id", "request_id",
                      "request_id expired; feedback is no longer accepted");
        return;
    case BD_ERR_FORBIDDEN:
        feedback_fail(r, 403, T_PERMISSION, "forbidden", "request_id",
                      "this request_id belongs to another client");
        return;
    default:
        feedback_fail(r, 500, T_SERVER, "internal_error", NULL, "decision lookup failed: %s",
                      bd_strerror(rc));
        return;
    }
}

/* Shape checks, decision lookup and the client check. On success
 * r->status == 200 (nothing applied yet), r->id / r->arm are set and *dout,
 * *reward hold the decision (borrowed from ds) and the reward; otherwise r
 * holds the error. */
static void resolve_item(decisions *ds, const cJSON *item, int batch, uint64_t client, int admin,
                         double now_s, struct feedback_result *r, double *reward,
                         const struct decision **dout)
{
    const char *rid;
    *dout = NULL;
    int rc = feedback_check_item(item, batch, r, &rid, reward);
    if (rc == BD_ERR_NOMEM)
        feedback_fail(r, 500, T_SERVER, "internal_error", NULL, "out of memory");
    if (rc != BD_OK)
        return;
    const struct decision *d = NULL;
    rc = decisions_find(ds, rid, now_s, &d);
    /* Only the client that made the request (or an admin) may rate it. */
    if (rc == BD_OK && !admin && d->client != client)
        rc = BD_ERR_FORBIDDEN;
    if (rc != BD_OK) {
        feedback_fail_lookup(r, rc);
        return;
    }
    snprintf(r->id, sizeof r->id, "%s", d->id);
    r->arm = d->arm;
    *dout = d;
    r->status = 200;
}

/* The synchronous path: apply a resolved item to the router now. */
static void apply_now(decisions *ds, router *rt, const struct decision *d, double rv,
                      struct feedback_result *r)
{
    int rc = router_feedback(rt, d->arm, d->x, rv);
    if (rc != BD_OK) {
        /* Not taken: the decision stays pending and the update can be retried. */
        feedback_fail(r, 500, T_SERVER, "feedback_not_applied", NULL,
                      "could not apply feedback: %s", bd_strerror(rc));
        return;
    }
    rc = decisions_take(ds, r->id);
    assert(rc == BD_OK && "a decision just found must be takeable");
    (void)rc;
    r->status = 200;
}

/* The inner {"message","type","param","code"} object, as openai_error_json
 * shapes it. NULL on OOM. */
static cJSON *error_object(const struct feedback_result *r)
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

static int respond_item_error(const struct feedback_result *r, int *status, char **body_out)
{
    return respond_error(r->status, r->type, r->code, r->param[0] ? r->param : NULL, r->message,
                         status, body_out);
}

static int respond_json(cJSON *root, int status, int *status_out, char **body_out)
{
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s)
        return BD_ERR_NOMEM;
    *status_out = status;
    *body_out = s;
    return BD_OK;
}

/* One item of a request, from resolution to its answer. */
struct item {
    struct feedback_result r; /* first: feedback_answer reads the items with a stride */
    /* durable path */
    struct feedback_job *job;
    double reward;
    double *x; /* features copied at submit time, until settled */
    char arm_name[STORE_NAME_MAX];
};

#define RESULT_AT(first, stride, i)                                                                \
    ((const struct feedback_result *)(const void *)((const char *)(first) + (i) * (stride)))

int feedback_answer(int batch, const struct feedback_result *first, size_t n, size_t stride,
                    int *status, char **body_out)
{
    if (!batch) {
        assert(n == 1);
        const struct feedback_result *r = first;
        if (r->status != 200)
            return respond_item_error(r, status, body_out);
        cJSON *root = cJSON_CreateObject();
        int ok = root && cJSON_AddStringToObject(root, "request_id", r->id) &&
                 cJSON_AddStringToObject(root, "status", "applied") &&
                 cJSON_AddNumberToObject(root, "arm", r->arm);
        if (!ok) {
            cJSON_Delete(root);
            return BD_ERR_NOMEM;
        }
        return respond_json(root, 200, status, body_out);
    }
    cJSON *out = cJSON_CreateObject();
    cJSON *data = out ? cJSON_CreateArray() : NULL;
    int ok = data && cJSON_AddStringToObject(out, "object", "list");
    if (ok)
        cJSON_AddItemToObject(out, "data", data);
    else
        cJSON_Delete(data);
    long applied = 0, failed = 0;
    for (size_t i = 0; ok && i < n; i++) {
        const struct feedback_result *r = RESULT_AT(first, stride, i);
        assert(r->status != 0 && "every item is settled");
        cJSON *it = cJSON_CreateObject();
        ok = it != NULL;
        if (ok)
            cJSON_AddItemToArray(data, it);
        if (r->status == 200) {
            applied++;
            ok = ok && cJSON_AddStringToObject(it, "request_id", r->id) &&
                 cJSON_AddStringToObject(it, "status", "applied") &&
                 cJSON_AddNumberToObject(it, "arm", r->arm);
        } else {
            failed++;
            ok = ok &&
                 (r->given_id ? cJSON_AddStringToObject(it, "request_id", r->given_id) != NULL
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
    if (!ok) {
        /* Items already applied stay applied (and taken): a retry gets 409s. */
        cJSON_Delete(out);
        return BD_ERR_NOMEM;
    }
    return respond_json(out, 200, status, body_out);
}

/* Parse the body and check the envelope. Returns BD_ERR_NOMEM, or 0 with
 * either *root (caller deletes), *list (the batch array, NULL for a single
 * item) and *n (items), or *root == NULL and an error answer produced. */
static int parse_envelope(const char *body, size_t len, cJSON **root_out, const cJSON **list_out,
                          size_t *n_out, int *status, char **body_out)
{
    *root_out = NULL;
    *list_out = NULL;
    *n_out = 0;
    if (!body || len == 0)
        return respond_error(400, T_INVALID, "invalid_json", NULL, "empty request body", status,
                             body_out);
    if (util_json_prescan(body, len, FEEDBACK_MAX_DEPTH) == -2)
        return respond_error(400, T_INVALID, "invalid_json", NULL,
                             "JSON nested too deeply (at most 32 levels)", status, body_out);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (root) {
        /* Only whitespace may follow the value. */
        for (const char *p = end; p < body + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
                cJSON_Delete(root);
                root = NULL;
                break;
            }
    }
    if (!root)
        return respond_error(400, T_INVALID, "invalid_json", NULL, "request body is not valid JSON",
                             status, body_out);
    int rc = BD_OK;
    if (!cJSON_IsObject(root)) {
        rc = respond_error(400, T_INVALID, "invalid_body", NULL,
                           "request body must be a JSON object", status, body_out);
        cJSON_Delete(root);
        return rc;
    }
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "feedback");
    if (!list) {
        *root_out = root;
        *n_out = 1;
        return BD_OK;
    }
    for (const cJSON *c = root->child; c; c = c->next) {
        if (c != list) {
            char name[FEEDBACK_ECHO_MAX + 1], msg[160];
            echo_copy(name, sizeof name, c->string);
            snprintf(msg, sizeof msg, "unknown field '%s' (a batch holds only 'feedback')", name);
            rc = respond_error(400, T_INVALID, "unknown_field", name, msg, status, body_out);
            cJSON_Delete(root);
            return rc;
        }
    }
    if (!cJSON_IsArray(list)) {
        rc = respond_error(400, T_INVALID, "invalid_batch", "feedback",
                           "'feedback' must be an array of feedback objects", status, body_out);
        cJSON_Delete(root);
        return rc;
    }
    size_t n = 0;
    for (const cJSON *c = list->child; c; c = c->next)
        if (++n > FEEDBACK_MAX_BATCH) {
            char msg[96];
            snprintf(msg, sizeof msg, "a batch holds at most %d items", FEEDBACK_MAX_BATCH);
            rc =
                respond_error(400, T_INVALID, "batch_too_large", "feedback", msg, status, body_out);
            cJSON_Delete(root);
            return rc;
        }
    *root_out = root;
    *list_out = list;
    *n_out = n;
    return BD_OK;
}

int feedback_parse(const char *body, size_t len, struct feedback_body *fb, int *status,
                   char **body_out)
{
    memset(fb, 0, sizeof *fb);
    const cJSON *list;
    cJSON *root;
    size_t n;
    int rc = parse_envelope(body, len, &root, &list, &n, status, body_out);
    if (rc != BD_OK || !root)
        return rc;
    fb->items = calloc(n ? n : 1, sizeof *fb->items);
    if (!fb->items) {
        cJSON_Delete(root);
        return BD_ERR_NOMEM;
    }
    fb->root = root;
    fb->batch = list != NULL;
    fb->n = n;
    if (!list) {
        fb->items[0] = root;
        return BD_OK;
    }
    size_t i = 0;
    for (const cJSON *c = list->child; c && i < n; c = c->next)
        fb->items[i++] = c;
    return BD_OK;
}

void feedback_body_free(struct feedback_body *fb)
{
    cJSON_Delete(fb->root);
    free(fb->items);
    memset(fb, 0, sizeof *fb);
}

static void free_items(struct item *items, size_t n)
{
    if (!items)
        return;
    for (size_t i = 0; i < n; i++) {
        free(items[i].r.given_id);
        free(items[i].x);
    }
    free(items);
}

int feedback_handle(decisions *ds, router *rt, const char *body, size_t len, uint64_t client,
                    int admin, double now_s, int *status, char **body_out)
{
    assert(ds && rt && status && body_out);
    assert(decisions_dim(ds) == router_dim(rt));
    *body_out = NULL;
    struct feedback_body fb;
    int rc = feedback_parse(body, len, &fb, status, body_out);
    if (rc != BD_OK || !fb.root)
        return rc;
    struct item *items = calloc(fb.n ? fb.n : 1, sizeof *items);
    rc = items ? BD_OK : BD_ERR_NOMEM;
    for (size_t i = 0; rc == BD_OK && i < fb.n; i++) {
        const struct decision *d;
        double rv = 0;
        resolve_item(ds, fb.items[i], fb.batch, client, admin, now_s, &items[i].r, &rv, &d);
        if (items[i].r.status == 200)
            apply_now(ds, rt, d, rv, &items[i].r);
    }
    if (rc == BD_OK)
        rc = feedback_answer(fb.batch, &items[0].r, fb.n, sizeof *items, status, body_out);
    free_items(items, fb.n);
    feedback_body_free(&fb);
    return rc;
}

/* ---- the durable path ---------------------------------------------------- */

#define FA_BUCKETS 4096 /* in-flight set; at most a few queue capacities of ids */

struct fa_node {
    struct fa_node *next;
    char id[33];
};

struct feedback_async {
    decisions *ds;
    router *rt;
    store *st;
    struct feedback_arms arms;
    feedback_applied_fn on_applied;
    void *applied_ud;
    size_t inflight;
    struct fa_node *buckets[FA_BUCKETS];
};

struct feedback_job {
    feedback_async *fa;
    int batch;
    size_t n, outstanding;
    struct item *items;
    feedback_reply_fn reply;
    void *reply_ud;
    int detached;
};

static size_t id_hash(const char *id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211ull;
    return (size_t)(h % FA_BUCKETS);
}

static int inflight_has(const feedback_async *fa, const char *id)
{
    for (const struct fa_node *n = fa->buckets[id_hash(id)]; n; n = n->next)
        if (strcmp(n->id, id) == 0)
            return 1;
    return 0;
}

static int inflight_add(feedback_async *fa, const char *id)
{
    struct fa_node *n = calloc(1, sizeof *n);
    if (!n)
        return BD_ERR_NOMEM;
    snprintf(n->id, sizeof n->id, "%s", id);
    size_t h = id_hash(id);
    n->next = fa->buckets[h];
    fa->buckets[h] = n;
    fa->inflight++;
    return BD_OK;
}

static void inflight_del(feedback_async *fa, const char *id)
{
    for (struct fa_node **p = &fa->buckets[id_hash(id)]; *p; p = &(*p)->next) {
        if (strcmp((*p)->id, id) == 0) {
            struct fa_node *n = *p;
            *p = n->next;
            free(n);
            fa->inflight--;
            return;
        }
    }
}

feedback_async *feedback_async_create(decisions *ds, router *rt, store *st,
                                      const struct feedback_arms *arms,
                                      feedback_applied_fn on_applied, void *applied_ud)
{
    assert(ds && rt && st && arms && arms->name && arms->index);
    assert(decisions_dim(ds) == router_dim(rt) && store_dim(st) == router_dim(rt));
    feedback_async *fa = calloc(1, sizeof *fa);
    if (!fa)
        return NULL;
    fa->ds = ds;
    fa->rt = rt;
    fa->st = st;
    fa->arms = *arms;
    fa->on_applied = on_applied;
    fa->applied_ud = applied_ud;
    return fa;
}

void feedback_async_destroy(feedback_async *fa)
{
    if (!fa)
        return;
    assert(fa->inflight == 0 && "destroy after store_close: every item settled");
    for (size_t i = 0; i < FA_BUCKETS; i++) {
        while (fa->buckets[i]) {
            struct fa_node *n = fa->buckets[i];
            fa->buckets[i] = n->next;
            free(n);
        }
    }
    free(fa);
}

size_t feedback_async_inflight(const feedback_async *fa)
{
    return fa->inflight;
}

static void job_free(struct feedback_job *job)
{
    free_items(job->items, job->n);
    free(job);
}

static void job_finish(struct feedback_job *job)
{
    if (!job->detached && job->reply) {
        int status = 500;
        char *body = NULL;
        if (feedback_answer(job->batch, &job->items[0].r, job->n, sizeof *job->items, &status,
                            &body) != BD_OK) {
            status = 500;
            body = NULL;
        }
        job->reply(job->reply_ud, status, body);
    }
    job_free(job);
}

/* Store callback (loop thread, from store_dispatch or store_close). */
static void on_commit(int rc, int64_t seq, void *ud)
{
    struct item *it = ud;
    struct feedback_job *job = it->job;
    feedback_async *fa = job->fa;
    inflight_del(fa, it->r.id);
    if (rc == BD_OK) {
        /* The arm's index now (a reload may have renumbered it). */
        int arm = fa->arms.index(fa->arms.ud, it->arm_name);
        int ar = arm >= 0 ? router_feedback(fa->rt, arm, it->x, it->reward) : BD_ERR_NOTFOUND;
        if (ar != BD_OK)
            log_msgf(LOG_ERROR,
                     "feedback %s is stored (seq %lld) but the model refused it: %s; a restore "
                     "from an older snapshot retries it",
                     it->r.id, (long long)seq, bd_strerror(ar));
        decisions_take(fa->ds, it->r.id); /* NOTFOUND when evicted meanwhile: fine */
        if (fa->on_applied && arm >= 0)
            fa->on_applied(fa->applied_ud, arm, seq);
        it->r.status = 200;
    } else if (rc == BD_ERR_EXISTS) {
        decisions_take(fa->ds, it->r.id);
        feedback_fail(&it->r, 409, T_INVALID, "duplicate_feedback", "request_id",
                      "feedback for this request_id was already applied");
    } else {
        feedback_fail(&it->r, 503, T_SERVER, "store_unavailable", NULL,
                      "feedback could not be stored (%s); nothing was applied, retry later",
                      bd_strerror(rc));
    }
    free(it->x);
    it->x = NULL;
    assert(job->outstanding > 0);
    if (--job->outstanding == 0)
        job_finish(job);
}

int feedback_submit(feedback_async *fa, const char *body, size_t len, uint64_t client, int admin,
                    double now_s, feedback_reply_fn reply, void *reply_ud, feedback_job **job_out,
                    int *status, char **body_out)
{
    assert(fa && job_out && status && body_out);
    *job_out = NULL;
    *body_out = NULL;
    struct feedback_body fb;
    int rc = feedback_parse(body, len, &fb, status, body_out);
    if (rc != BD_OK || !fb.root)
        return rc;
    size_t n = fb.n;
    struct feedback_job *job = calloc(1, sizeof *job);
    if (job) {
        job->fa = fa;
        job->batch = fb.batch;
        job->n = n;
        job->items = calloc(n ? n : 1, sizeof *job->items);
    }
    rc = job && job->items ? BD_OK : BD_ERR_NOMEM;
    size_t dim = (size_t)decisions_dim(fa->ds);
    for (size_t i = 0; rc == BD_OK && i < n; i++) {
        struct item *it = &job->items[i];
        const struct decision *d;
        double rv = 0;
        resolve_item(fa->ds, fb.items[i], fb.batch, client, admin, now_s, &it->r, &rv, &d);
        if (it->r.status != 200)
            continue;
        if (inflight_has(fa, it->r.id)) {
            feedback_fail(&it->r, 409, T_INVALID, "duplicate_feedback", "request_id",
                          "feedback for this request_id is already being applied");
            continue;
        }
        it->x = malloc(dim * sizeof *it->x);
        if (!it->x) {
            feedback_fail(&it->r, 500, T_SERVER, "internal_error", NULL, "out of memory");
            continue;
        }
        memcpy(it->x, d->x, dim * sizeof *it->x);
        it->reward = rv;
        it->job = job;
        const char *name = fa->arms.name(fa->arms.ud, it->r.arm);
        snprintf(it->arm_name, sizeof it->arm_name, "%s", name ? name : "");
        int pr = name ? store_put_feedback(fa->st, it->r.id, it->arm_name, it->x, (int)dim, rv,
                                           now_s, on_commit, it)
                      : BD_ERR_NOTFOUND;
        if (pr != BD_OK) {
            free(it->x);
            it->x = NULL;
            if (pr == BD_ERR_BUSY)
                feedback_fail(&it->r, 503, T_SERVER, "store_busy", NULL,
                              "the durable store is saturated; retry shortly");
            else
                feedback_fail(&it->r, 500, T_SERVER, "internal_error", NULL,
                              "cannot queue feedback: %s", bd_strerror(pr));
            continue;
        }
        /* Queued: settled by on_commit. Without the in-flight mark (OOM) a
         * concurrent duplicate is still caught by the store's UNIQUE id. */
        inflight_add(fa, it->r.id);
        it->r.status = 0;
        job->outstanding++;
    }
    feedback_body_free(&fb);
    if (rc != BD_OK) {
        /* OOM before anything was queued (the job is allocated first). */
        assert(!job || job->outstanding == 0);
        if (job)
            job_free(job);
        return rc;
    }
    if (job->outstanding == 0) {
        rc = feedback_answer(job->batch, &job->items[0].r, n, sizeof *job->items, status, body_out);
        job_free(job);
        return rc;
    }
    job->reply = reply;
    job->reply_ud = reply_ud;
    *job_out = job;
    return BD_OK;
}

void feedback_job_detach(feedback_job *job)
{
    if (job)
        job->detached = 1;
}
