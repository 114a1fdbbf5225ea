/* http — the front end (see http.h and docs/architecture.md).
 *
 * Every response is queued from inside the access handler: when the upstream
 * call (driven by the loop through upstream.c) has something for the client,
 * its callback records it in the request state and resumes the connection;
 * MHD then calls the access handler again, which queues the response. */
#include "banditd/http.h"
#include "banditd/auth.h"
#include "banditd/err.h"
#include "banditd/features.h"
#include "banditd/feedback.h"
#include "banditd/health.h"
#include "banditd/log.h"
#include "banditd/metrics.h"
#include "banditd/openai.h"
#include "banditd/pref.h"
#include "banditd/state.h"
#include "banditd/state_redis.h"
#include "banditd/stats.h"
#include "banditd/util.h"

#include <assert.h>
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

/* MHD zeroes a connection's whole pool after every request and grows the read
 * buffer into all of it, so this is both per-request CPU (a 64 KiB memset was
 * ~20% of banditd's instructions per request) and resident memory per open
 * connection (5000 slow connections × 64 KiB = 320 MB). 12 KiB still takes a
 * header block of 11 KB (12 KB gets 431; nginx's default is 8 KiB per header
 * line); bodies stream through the read buffer in pieces. 16 → 12 KiB cut the
 * peak RSS at 5,000 slow requests in flight from ~200 to ~192 MiB. */
#define HTTP_CONN_MEMORY_LIMIT (12 * 1024)
#define HTTP_UPSTREAM_BODY_MAX ((size_t)64 * 1024 * 1024) /* buffered upstream answer */
#define HTTP_RELAY_MAX ((size_t)1024 * 1024)              /* SSE relay buffer */
#define HTTP_STREAM_BLOCK (32 * 1024)
#define HTTP_FEEDBACK_BODY_MAX ((size_t)8 * 1024 * 1024)
#define HTTP_PATH_LOG_MAX 128
#define HTTP_METRICS_MAX ((size_t)16 * 1024 * 1024) /* one /metrics exposition */
#define HTTP_BODY_LOG_MAX 4096                      /* log.debug_bodies: bytes logged */
#define HTTP_REQ_POOL_MAX 64       /* finished request states kept for reuse (4.5 KiB + x each) */
#define HTTP_BODY_KEEP (16 * 1024) /* a pooled state keeps a body buffer up to this size */

enum route {
    R_NOTFOUND = 0,
    R_CHAT,
    R_MODELS,
    R_HEALTH,
    R_READY,
    R_FEEDBACK,
    R_STATS,
    R_METRICS,
    R_ADMIN_RELOAD,
    R_DEBUG_MODEL,
};

/* One generation of the arm table (see http.h: reload ownership). */
struct gen {
    const struct config *cfg;
    int owns_cfg; /* generation 0 borrows main's config */
    char **keys;  /* per arm: API key from the environment, or NULL */
    char **urls;  /* per arm: {base_url}/chat/completions */
    int *marm;    /* per arm: index in the metrics catalogue, or -1 */
    health *h;    /* per arm circuit + in-flight counts (this generation's numbering) */
    unsigned refs;
};

enum phase {
    PH_BODY = 0,  /* reading the request */
    PH_UPSTREAM,  /* waiting for the upstream (connection suspended) */
    PH_RESPOND,   /* a complete response is ready to queue */
    PH_STREAM,    /* upstream headers are in: queue the streaming response */
    PH_STREAMING, /* the content reader relays the stream */
    PH_QUEUED,    /* a response has been queued */
};

struct req {
    http_server *srv;
    feedback_job *fb_job;     /* durable feedback waiting for its commit, or NULL */
    state_redis_job *rfb_job; /* the same with the Redis store, or NULL */
    struct gen *g;            /* the generation whose arm table r->arm and r->dec index */
    /* resilience and auth (issue 6) */
    uint64_t client; /* auth_client_id of the caller's key, 0 = none */
    int is_admin;    /* caller presented the admin key */
    int www_auth;    /* add WWW-Authenticate: Bearer (401) */
    int admitted;    /* the current attempt holds a health admission */
    int probe;       /* ... as the arm's half-open probe */
    int admitted_arm;
    int pinned;          /* the model named an arm: never fall back */
    int retries;         /* same-arm retries done */
    long retry_after_ms; /* Retry-After of the last upstream answer, -1 none */
    double deadline_ms;  /* overall deadline (monotonic) */
    long cap_ms;         /* X-Bandit-Timeout-Ms, 0 = none */
    upstream_timer *retry_timer;
    int counted; /* counted in banditd_inflight_requests */
    struct MHD_Connection *conn;
    struct req *prev, *next;
    enum route route;
    int method_ok;
    int wants_body;
    enum phase phase;
    char method[16];
    char path[HTTP_PATH_LOG_MAX];
    double t_start_ms;

    struct util_buf body;
    int too_big;

    /* chat */
    struct openai_chat chat;
    int chat_ok;
    void *chat_spare; /* the parser's buffer, kept with a pooled state */
    double *x;
    int x_dim; /* doubles allocated at x (kept with a pooled state) */
    struct pref_weights w;
    struct router_decision dec;
    int n_attempts; /* arms we may try: 1 when pinned, dec.n otherwise */
    int attempt;    /* index into dec.order */
    int arm;        /* arm of the current/last attempt, -1 none */
    int fallbacks;
    char id[33];
    int recorded; /* decision stored */
    char *scores; /* X-Bandit-Scores value (debug) or NULL */
    char *up_body;
    size_t up_body_len;
    upstream_call *call;
    double t_attempt_ms;
    double ttfb_ms;
    long up_status;
    char up_ctype[128];
    struct util_buf resp; /* buffered upstream answer (non-streaming or error) */
    int resp_too_big;
    struct util_buf relay; /* SSE relay */
    int paused;            /* curl paused on a full relay buffer */
    int streaming;         /* a 2xx stream is (to be) relayed */
    int up_done;
    int up_result;
    struct openai_sse_scan sse;
    int sse_init;
    double cost_usd;
    int suspended;

    /* the response to queue in PH_RESPOND */
    unsigned final_status;
    char *final_body;
    size_t final_len;
    char final_ctype[128];
    int final_routed;
    int final_retry_after;
    int close_conn; /* answer with Connection: close (draining) */
    const char *allow;

    unsigned status; /* what was queued, for the access log */
};

struct http_server {
    struct http_deps d;
    const struct config *cfg;
    struct MHD_Daemon *mhd;
    int port;
    int epfd;
    struct gen *cur; /* current generation (holds one reference) */
    auth *auth;      /* client/admin keys (immutable) */
    struct req *reqs;
    size_t n_reqs;
    struct req *free_reqs; /* finished request states for reuse, linked by next */
    size_t n_free_reqs;
    int stopping;
    int draining;
    http_reload_fn reload_fn;
    void *reload_ud;
};

static void gen_unref(struct gen *g)
{
    if (!g)
        return;
    assert(g->refs > 0);
    if (--g->refs)
        return;
    for (size_t i = 0; i < g->cfg->n_arms; i++) {
        if (g->keys && g->keys[i]) {
            memset(g->keys[i], 0, strlen(g->keys[i]));
            free(g->keys[i]);
        }
        if (g->urls)
            free(g->urls[i]);
    }
    free(g->keys);
    free(g->urls);
    free(g->marm);
    health_destroy(g->h);
    if (g->owns_cfg)
        config_destroy((struct config *)g->cfg);
    free(g);
}

/* A new generation for cfg (1 reference). Reads each arm's key from the
 * environment. NULL on OOM (then cfg is not taken). */
static struct gen *gen_new(const struct config *cfg, struct metrics_banditd *mcat)
{
    struct gen *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->cfg = cfg;
    g->refs = 1;
    size_t n = cfg->n_arms;
    g->keys = calloc(n ? n : 1, sizeof *g->keys);
    g->urls = calloc(n ? n : 1, sizeof *g->urls);
    g->marm = calloc(n ? n : 1, sizeof *g->marm);
    if (!g->keys || !g->urls || !g->marm)
        goto nomem;
    {
        unsigned caps[CONFIG_MAX_ARMS];
        for (size_t i = 0; i < n && i < CONFIG_MAX_ARMS; i++)
            caps[i] = cfg->arms[i].max_inflight;
        struct health_params hp = {
            .failure_threshold =
                cfg->health.failure_threshold > 0 ? cfg->health.failure_threshold : 5,
            .cooldown_ms = cfg->health.cooldown_ms > 0 ? (double)cfg->health.cooldown_ms : 10000.0,
            .max_inflight = 0, /* the global cap is checked against upstream_inflight */
            .arm_caps = caps,
        };
        g->h = health_create(n ? (int)n : 1, &hp);
        if (!g->h)
            goto nomem;
    }
    for (size_t i = 0; i < n; i++) {
        const struct config_arm *a = &cfg->arms[i];
        if (a->api_key_env[0]) {
            const char *k = getenv(a->api_key_env);
            if (k && k[0]) {
                g->keys[i] = strdup(k);
                if (!g->keys[i])
                    goto nomem;
            } else {
                log_msgf(LOG_WARN, "arm %s: environment variable %s is not set; no API key sent",
                         a->name, a->api_key_env);
            }
        }
        size_t bl = strlen(a->base_url);
        while (bl > 0 && a->base_url[bl - 1] == '/')
            bl--;
        size_t ul = bl + sizeof "/chat/completions";
        g->urls[i] = malloc(ul);
        if (!g->urls[i])
            goto nomem;
        snprintf(g->urls[i], ul, "%.*s/chat/completions", (int)bl, a->base_url);
        size_t mi = 0;
        g->marm[i] = mcat && metrics_banditd_add_arm(mcat, a->name, &mi) == BD_OK ? (int)mi : -1;
    }
    return g;
nomem:
    g->owns_cfg = 0; /* the caller keeps cfg on failure */
    g->refs = 1;
    gen_unref(g);
    return NULL;
}

/* Arm `arm` of r's generation, in the router's current numbering (-1: the
 * arm was removed by a reload since r was routed). */
static int rt_arm(const struct req *r, int arm)
{
    if (arm < 0 || r->g == r->srv->cur)
        return arm;
    return router_arm_index(r->srv->d.rt, r->g->cfg->arms[arm].name);
}

/* Metrics handles of arm `arm` of r's generation (NULL without metrics). */
static const struct metrics_banditd_arm *m_arm(const struct req *r, int arm)
{
    if (!r->srv->d.mcat || arm < 0 || r->g->marm[arm] < 0)
        return NULL;
    return metrics_banditd_arm(r->srv->d.mcat, (size_t)r->g->marm[arm]);
}

/* ---- small helpers ---------------------------------------------------- */

/* Append s JSON-escaped (without quotes) into out[cap], truncating. */
static void json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
}

/* snprintf(dst, cap, "%s", src) without the formatting machinery (~1,000
 * instructions per call on the request path). cap >= 1. */
static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void req_wake(struct req *r)
{
    if (r->suspended) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
    }
}

static void req_suspend(struct req *r)
{
    assert(!r->suspended);
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
}

static void set_final(struct req *r, unsigned status, char *body, size_t len, const char *ctype,
                      int routed)
{
    free(r->final_body);
    r->final_status = status;
    r->final_body = body;
    r->final_len = len;
    copy_str(r->final_ctype, sizeof r->final_ctype, ctype);
    r->final_routed = routed;
    r->phase = PH_RESPOND;
}

static void set_final_error(struct req *r, unsigned status, const char *msg, const char *type,
                            const char *param, const char *code)
{
    char *body = openai_error_json(msg, type, param, code);
    set_final(r, status, body, body ? strlen(body) : 0, "application/json", 0);
}

static void add_bandit_headers(struct req *r, struct MHD_Response *resp)
{
    char v[64];
    MHD_add_response_header(resp, "X-Bandit-Request-Id", r->id);
    if (r->arm >= 0)
        MHD_add_response_header(resp, "X-Bandit-Arm", r->g->cfg->arms[r->arm].name);
    util_fmt_fixed8(v, sizeof v, r->cost_usd); /* "%.8f" */
    MHD_add_response_header(resp, "X-Bandit-Cost-Usd", v);
    util_fmt_int(v, sizeof v, r->fallbacks);
    MHD_add_response_header(resp, "X-Bandit-Fallbacks", v);
    if (r->scores)
        MHD_add_response_header(resp, "X-Bandit-Scores", r->scores);
}

/* Queue the PH_RESPOND response. */
static enum MHD_Result queue_final(struct req *r)
{
    assert(r->phase == PH_RESPOND);
    char *body = r->final_body;
    size_t len = r->final_len;
    r->final_body = NULL;
    if (!body) {
        /* openai_error_json or a copy failed: answer a static 500. */
        static const char oom[] =
            "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
            "\"param\":null,\"code\":\"internal_error\"}}";
        body = strdup(oom);
        len = body ? strlen(body) : 0;
        r->final_status = 500;
        r->final_routed = 0;
        if (!body)
            return MHD_NO;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", r->final_ctype);
    if (r->final_routed)
        add_bandit_headers(r, resp);
    else if (r->id[0])
        MHD_add_response_header(resp, "X-Bandit-Request-Id", r->id);
    if (r->final_retry_after)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (r->www_auth)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (r->close_conn)
        MHD_add_response_header(resp, "Connection", "close");
    if (r->allow)
        MHD_add_response_header(resp, "Allow", r->allow);
    enum MHD_Result ret = MHD_queue_response(r->conn, r->final_status, resp);
    MHD_destroy_response(resp);
    r->status = r->final_status;
    r->phase = PH_QUEUED;
    return ret;
}

static enum MHD_Result respond_error(struct req *r, unsigned status, const char *msg,
                                     const char *type, const char *param, const char *code)
{
    set_final_error(r, status, msg, type, param, code);
    return queue_final(r);
}

static enum MHD_Result respond_json(struct req *r, unsigned status, char *json)
{
    set_final(r, status, json, json ? strlen(json) : 0, "application/json", 0);
    return queue_final(r);
}

/* ---- request state ----------------------------------------------------- */

static enum route route_of(const char *url, const char **allow)
{
    static const struct {
        const char *path;
        enum route r;
        const char *allow;
    } routes[] = {
        {"/v1/chat/completions", R_CHAT, "POST"},  {"/v1/models", R_MODELS, "GET, HEAD"},
        {"/healthz", R_HEALTH, "GET, HEAD"},       {"/readyz", R_READY, "GET, HEAD"},
        {"/feedback", R_FEEDBACK, "POST"},         {"/v1/feedback", R_FEEDBACK, "POST"},
        {"/stats", R_STATS, "GET, HEAD"},          {"/metrics", R_METRICS, "GET, HEAD"},
        {"/admin/reload", R_ADMIN_RELOAD, "POST"}, {"/debug/model", R_DEBUG_MODEL, "GET, HEAD"},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(url, routes[i].path) == 0) {
            *allow = routes[i].allow;
            return routes[i].r;
        }
    }
    *allow = NULL;
    return R_NOTFOUND;
}

/* 1 if method is one of the comma-separated tokens of allow. */
static int method_allowed(const char *allow, const char *method)
{
    size_t ml = strlen(method);
    const char *p = allow;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (n == ml && n > 0 && strncmp(p, method, n) == 0)
            return 1;
        p += n;
    }
    return 0;
}

static struct req *req_new(http_server *s, struct MHD_Connection *conn, const char *url,
                           const char *method)
{
    /* A pooled state saves a 4.5 KiB calloc/free pair (and its feature
     * vector another) per request: large chunks are the allocator's slow path. */
    struct req *r = s->free_reqs;
    if (r) {
        s->free_reqs = r->next;
        s->n_free_reqs--;
        double *x = r->x;
        int x_dim = r->x_dim;
        struct util_buf body = r->body; /* empty; its memory is reused */
        void *chat_spare = r->chat_spare;
        memset(r, 0, sizeof *r);
        r->x = x;
        r->x_dim = x_dim;
        r->body = body;
        r->chat_spare = chat_spare;
    } else {
        r = calloc(1, sizeof *r);
        if (!r)
            return NULL;
    }
    r->srv = s;
    r->conn = conn;
    r->g = s->cur;
    r->g->refs++;
    r->arm = -1;
    r->t_start_ms = util_now_ms();
    r->ttfb_ms = -1;
    copy_str(r->method, sizeof r->method, method);
    copy_str(r->path, sizeof r->path, url);
    r->route = route_of(url, &r->allow);
    if (r->route != R_NOTFOUND)
        r->method_ok = method_allowed(r->allow, method);
    r->wants_body = r->method_ok && (r->route == R_CHAT || r->route == R_FEEDBACK);
    size_t cap = r->route == R_CHAT ? s->cfg->limits.max_body_bytes : HTTP_FEEDBACK_BODY_MAX;
    util_buf_rearm(&r->body, cap);
    util_buf_init(&r->resp, HTTP_UPSTREAM_BODY_MAX);
    util_buf_init(&r->relay, HTTP_RELAY_MAX);
    r->next = s->reqs;
    if (s->reqs)
        s->reqs->prev = r;
    s->reqs = r;
    s->n_reqs++;
    if (s->d.mcat) {
        metrics_gauge_add(metrics_banditd_inflight(s->d.mcat), 1);
        r->counted = 1;
    }
    return r;
}

static void access_log(struct req *r)
{
    if (!LOG_ENABLED(LOG_INFO))
        return;
    char path[HTTP_PATH_LOG_MAX * 6 + 8], method[16 * 6 + 8];
    json_escape(path, sizeof path, r->path);
    json_escape(method, sizeof method, r->method);
    char f[1536];
    int n =
        snprintf(f, sizeof f, "\"method\":\"%s\",\"path\":\"%s\",\"status\":%u,\"latency_ms\":%.3f",
                 method, path, r->status, util_now_ms() - r->t_start_ms);
    if (r->route == R_CHAT && r->id[0] && n > 0 && (size_t)n < sizeof f) {
        snprintf(f + n, sizeof f - (size_t)n,
                 ",\"request_id\":\"%s\",\"arm\":\"%s\",\"cost_usd\":%.8f,\"stream\":%s,"
                 "\"fallbacks\":%d,\"preference\":{\"quality\":%.4g,\"cost\":%.4g,"
                 "\"latency\":%.4g}",
                 r->id, r->arm >= 0 ? r->g->cfg->arms[r->arm].name : "", r->cost_usd,
                 r->chat_ok && r->chat.stream ? "true" : "false", r->fallbacks, r->w.quality,
                 r->w.cost, r->w.latency);
    }
    log_emit(LOG_INFO, "request", f);
}

/* Free a finished (or pooled) request state for good. */
static void req_destroy(struct req *r)
{
    util_buf_free(&r->body);
    openai_chat_spare_free(r->chat_spare);
    free(r->x);
    free(r);
}

/* Done with the request body: keep a small buffer for the next request on
 * this state (it saves the buffer's growth, four reallocs for 1 KiB). */
static void body_release(struct req *r)
{
    if (r->body.cap > HTTP_BODY_KEEP)
        util_buf_free(&r->body);
    else
        util_buf_reset(&r->body);
}

static void req_free(struct req *r)
{
    http_server *s = r->srv;
    feedback_job_detach(r->fb_job); /* it still settles; it just won't answer */
    r->fb_job = NULL;
    state_redis_job_detach(r->rfb_job);
    r->rfb_job = NULL;
    if (r->call) {
        upstream_cancel(s->d.up, r->call);
        r->call = NULL;
    }
    if (r->admitted) {
        health_release(r->g->h, r->admitted_arm, r->probe, HEALTH_NEUTRAL, util_now_ms());
        r->admitted = 0;
    }
    if (r->retry_timer) {
        upstream_timer_cancel(s->d.up, r->retry_timer);
        r->retry_timer = NULL;
    }
    if (r->prev)
        r->prev->next = r->next;
    else
        s->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    assert(s->n_reqs > 0);
    s->n_reqs--;
    body_release(r);
    util_buf_free(&r->resp);
    util_buf_free(&r->relay);
    if (r->chat_ok)
        openai_chat_release(&r->chat, &r->chat_spare); /* req_destroy frees the spare */
    if (r->sse_init)
        openai_sse_free(&r->sse);
    free(r->scores);
    free(r->up_body);
    free(r->final_body);
    if (r->counted)
        metrics_gauge_add(metrics_banditd_inflight(s->d.mcat), -1);
    gen_unref(r->g);
    if (s->n_free_reqs < HTTP_REQ_POOL_MAX) {
        r->next = s->free_reqs;
        s->free_reqs = r;
        s->n_free_reqs++;
        return;
    }
    req_destroy(r);
}

static enum metrics_route metrics_route_of(enum route rt)
{
    switch (rt) {
    case R_CHAT:
        return METRICS_ROUTE_CHAT;
    case R_FEEDBACK:
        return METRICS_ROUTE_FEEDBACK;
    case R_MODELS:
        return METRICS_ROUTE_MODELS;
    case R_HEALTH:
        return METRICS_ROUTE_HEALTHZ;
    case R_READY:
        return METRICS_ROUTE_READYZ;
    case R_METRICS:
        return METRICS_ROUTE_METRICS;
    case R_STATS:
        return METRICS_ROUTE_STATS;
    default:
        return METRICS_ROUTE_OTHER;
    }
}

static void observe_request(const struct req *r)
{
    struct metrics_banditd *mc = r->srv->d.mcat;
    if (!mc)
        return;
    enum metrics_route mr = metrics_route_of(r->route);
    int ai = mr == METRICS_ROUTE_CHAT && r->arm >= 0 ? r->g->marm[r->arm] : -1;
    metrics_counter_inc(metrics_banditd_requests(mc, mr, ai, (int)r->status));
    metrics_hist_observe(metrics_banditd_request_duration(mc, mr),
                         (util_now_ms() - r->t_start_ms) / 1000.0);
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    struct req *r = *req_cls;
    if (!r)
        return;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->status == 0)
        r->status = 499; /* client went away before an answer (nginx's convention) */
    observe_request(r);
    access_log(r);
    req_free(r);
    *req_cls = NULL;
}

/* ---- upstream attempts -------------------------------------------------- */

static void on_headers(void *ud, long status, const char *ctype);
static size_t on_data(void *ud, const char *data, size_t len);
static void on_done(void *ud, int result, const char *msg);

static const struct upstream_cbs req_cbs = {on_headers, on_data, on_done};

static void decision_record(struct req *r)
{
    if (r->recorded || !r->srv->d.ds)
        return;
    struct decision d;
    memset(&d, 0, sizeof d);
    memcpy(d.id, r->id, sizeof d.id);
    d.arm = rt_arm(r, r->arm);
    if (d.arm < 0)
        return; /* the arm was removed by a reload meanwhile */
    d.x = r->x;
    d.w = r->w;
    d.created_s = util_wall_s();
    d.cost_usd = r->cost_usd;
    d.client = r->client;
    int rc = decisions_add(r->srv->d.ds, &d);
    if (rc == BD_OK && r->srv->d.state)
        state_decision(r->srv->d.state, &d); /* durable soon after (docs/state.md) */
    if (rc == BD_OK && r->srv->d.rstate)
        state_redis_decision(r->srv->d.rstate, &d); /* shared (docs/scale-out.md) */
    if (rc == BD_OK)
        r->recorded = 1;
    else
        log_msgf(LOG_WARN, "decision not stored: %s", bd_strerror(rc));
}

/* End the current attempt's health admission with outcome. */
static void attempt_release(struct req *r, enum health_outcome outcome)
{
    if (!r->admitted)
        return;
    health_release(r->g->h, r->admitted_arm, r->probe, outcome, util_now_ms());
    r->admitted = 0;
    r->probe = 0;
}

/* Start upstream attempts from r->attempt on, within the fallback budget and
 * the request's deadline, skipping arms whose circuit or in-flight cap does
 * not admit a call and arms curl refuses. Returns 0 when a call is running;
 * else BD_ERR_TIMEOUT (deadline passed), BD_ERR_BUSY (only in-flight caps
 * stood in the way), BD_ERR_NOMEM, or BD_ERR_UPSTREAM. */
static int attempt_start(struct req *r)
{
    http_server *s = r->srv;
    int rc = BD_ERR_UPSTREAM, busy = 0;
    while (r->attempt < r->n_attempts && r->fallbacks <= r->g->cfg->limits.max_fallbacks) {
        int arm = r->dec.order[r->attempt];
        const struct config_arm *a = &r->g->cfg->arms[arm];
        double now = util_now_ms();
        double left = r->deadline_ms - now;
        if (left < 1)
            return BD_ERR_TIMEOUT;
        int probe = 0;
        int hr = health_admit(r->g->h, arm, now, &probe);
        if (hr != BD_OK) {
            busy |= hr == BD_ERR_BUSY;
            r->attempt++;
            continue;
        }
        r->admitted = 1;
        r->probe = probe;
        r->admitted_arm = arm;
        r->arm = arm;
        free(r->up_body);
        r->up_body = openai_chat_rewrite(&r->chat, a->model, &r->up_body_len);
        if (!r->up_body) {
            attempt_release(r, HEALTH_NEUTRAL);
            return BD_ERR_NOMEM;
        }
        util_buf_reset(&r->resp);
        util_buf_reset(&r->relay);
        r->resp_too_big = 0;
        r->up_status = 0;
        r->up_ctype[0] = '\0';
        r->ttfb_ms = -1;
        r->retry_after_ms = -1;
        r->cost_usd = r->dec.s[arm].cost;
        if (r->sse_init)
            openai_sse_free(&r->sse);
        openai_sse_init(&r->sse);
        r->sse_init = 1;
        long tmo = a->timeout_ms;
        if (r->cap_ms > 0 && r->cap_ms < tmo)
            tmo = r->cap_ms;
        if ((double)tmo > left)
            tmo = (long)left;
        struct upstream_req rq = {
            .url = r->g->urls[arm],
            .api_key = r->g->keys[arm],
            .body = r->up_body,
            .body_len = r->up_body_len,
            .timeout_ms = tmo,
            .connect_timeout_ms = a->connect_timeout_ms < tmo ? a->connect_timeout_ms : tmo,
            .stream = r->chat.stream,
            .ttfb_timeout_ms =
                a->ttfb_timeout_ms > 0 && a->ttfb_timeout_ms < tmo ? a->ttfb_timeout_ms : 0,
        };
        r->t_attempt_ms = now;
        rc = upstream_start(s->d.up, &rq, &req_cbs, r, &r->call);
        if (rc == BD_OK) {
            r->phase = PH_UPSTREAM;
            return BD_OK;
        }
        r->call = NULL;
        attempt_release(r, HEALTH_NEUTRAL);
        router_observe_failure(s->d.rt, rt_arm(r, arm), 0);
        r->attempt++;
    }
    return busy && rc == BD_ERR_UPSTREAM ? BD_ERR_BUSY : rc;
}

static void on_headers(void *ud, long status, const char *ctype)
{
    struct req *r = ud;
    r->up_status = status;
    copy_str(r->up_ctype, sizeof r->up_ctype, ctype);
    if (r->call)
        r->retry_after_ms = upstream_retry_after_ms(r->call);
    if (r->chat.stream && status >= 200 && status < 300) {
        r->streaming = 1;
        decision_record(r);
        r->phase = PH_STREAM;
        req_wake(r);
    }
}

static size_t on_data(void *ud, const char *data, size_t len)
{
    struct req *r = ud;
    if (r->ttfb_ms < 0) {
        r->ttfb_ms = util_now_ms() - r->t_attempt_ms;
        const struct metrics_banditd_arm *ma = r->streaming ? m_arm(r, r->arm) : NULL;
        if (ma)
            metrics_hist_observe(ma->upstream_ttfb, r->ttfb_ms / 1000.0);
    }
    if (!r->streaming) {
        if (util_buf_append(&r->resp, data, len) != BD_OK) {
            r->resp_too_big = 1;
            return 0; /* abort the transfer */
        }
        return len;
    }
    if (r->relay.len > 0 && r->relay.len + len > r->relay.max) {
        r->paused = 1;
        return UPSTREAM_PAUSE;
    }
    if (util_buf_append(&r->relay, data, len) != BD_OK)
        return 0;
    openai_sse_feed(&r->sse, data, len);
    req_wake(r);
    return len;
}

static int is_retryable_status(long status)
{
    return status == 429 || status >= 500;
}

/* The usage-based cost of the answer in r (stream or buffered body). Sets
 * r->cost_usd; returns the completion tokens (estimated if absent). */
static long answer_cost(struct req *r, char *cid, size_t cidlen)
{
    const struct config_arm *a = &r->g->cfg->arms[r->arm];
    long pt = -1, ct = -1;
    size_t content_chars = 0;
    cid[0] = '\0';
    if (r->streaming) {
        pt = r->sse.prompt_tokens;
        ct = r->sse.completion_tokens;
        content_chars = r->sse.content_chars;
        snprintf(cid, cidlen, "%s", r->sse.id);
    } else if (openai_parse_usage(r->resp.data ? r->resp.data : "", r->resp.len, &pt, &ct, cid,
                                  cidlen, NULL) != BD_OK) {
        pt = ct = -1;
        cid[0] = '\0';
    } else if (ct < 0) { /* no usage: count the content (parses choices, so only now) */
        openai_parse_usage(r->resp.data, r->resp.len, NULL, NULL, NULL, 0, &content_chars);
    }
    const struct metrics_banditd_arm *ma = m_arm(r, r->arm);
    if (ma && pt >= 0)
        metrics_counter_add(ma->tokens_prompt, (double)pt);
    if (ma && ct >= 0)
        metrics_counter_add(ma->tokens_completion, (double)ct);
    if (pt < 0)
        pt = openai_estimate_tokens(r->chat.prompt_chars);
    if (ct < 0)
        ct = openai_estimate_tokens(content_chars);
    r->cost_usd = openai_cost_usd(pt, ct, a->price_in_per_mtok, a->price_out_per_mtok);
    if (ma)
        metrics_counter_add(ma->cost_usd, r->cost_usd);
    return ct;
}

static void stream_finished(struct req *r, int result, const char *msg)
{
    http_server *s = r->srv;
    double total = util_now_ms() - r->t_attempt_ms;
    const struct metrics_banditd_arm *ma = m_arm(r, r->arm);
    if (ma)
        metrics_hist_observe(ma->upstream_duration, total / 1000.0);
    r->up_done = 1;
    r->up_result = result;
    r->paused = 0;
    attempt_release(r, result == BD_OK ? HEALTH_SUCCESS : HEALTH_FAILURE);
    char cid[DECISIONS_ID_MAX];
    if (result == BD_OK) {
        long ct = answer_cost(r, cid, sizeof cid);
        router_observe(s->d.rt, rt_arm(r, r->arm), ct, r->ttfb_ms, total);
        if (r->recorded) {
            decisions_complete(s->d.ds, r->id, cid, r->cost_usd, total);
            if (s->d.state)
                state_complete(s->d.state, r->id, cid, r->cost_usd, total);
            if (s->d.rstate)
                state_redis_complete(s->d.rstate, r->id, cid, r->cost_usd, total);
        }
    } else {
        router_observe_failure(s->d.rt, rt_arm(r, r->arm), total);
        char m[256];
        snprintf(m, sizeof m, "upstream stream failed: %s", msg);
        char *ev = openai_sse_error_event(
            m, "api_error", result == BD_ERR_TIMEOUT ? "upstream_timeout" : "upstream_error");
        if (ev) {
            /* The terminating event may exceed the relay cap by its own size. */
            size_t n = strlen(ev);
            r->relay.max += n;
            util_buf_append(&r->relay, ev, n);
            free(ev);
        }
    }
    req_wake(r);
}

/* Queue the final answer for a non-streaming attempt that ended with result
 * (the last one: no retry or fallback follows). */
static void finish_answer(struct req *r, int result, const char *msg, double total)
{
    http_server *s = r->srv;
    if (result != BD_OK) {
        if (result == BD_ERR_TIMEOUT)
            set_final_error(r, 504, "upstream timed out", "api_error", NULL, "upstream_timeout");
        else if (r->resp_too_big)
            set_final_error(r, 502, "upstream response too large", "api_error", NULL,
                            "upstream_error");
        else {
            char m[256];
            snprintf(m, sizeof m, "upstream unreachable: %s", msg);
            set_final_error(r, 502, m, "api_error", NULL,
                            result == BD_ERR_NOMEM ? "internal_error" : "upstream_error");
        }
        r->final_routed = 1; /* X-Bandit-Arm/-Fallbacks say what was tried */
        req_wake(r);
        return;
    }
    /* A complete HTTP answer: relay status and body unchanged. */
    if (r->up_status >= 200 && r->up_status < 300) {
        char cid[DECISIONS_ID_MAX];
        long ct = answer_cost(r, cid, sizeof cid);
        router_observe(s->d.rt, rt_arm(r, r->arm), ct, r->ttfb_ms, total);
        decision_record(r);
        if (r->recorded) {
            decisions_complete(s->d.ds, r->id, cid, r->cost_usd, total);
            if (s->d.state)
                state_complete(s->d.state, r->id, cid, r->cost_usd, total);
            if (s->d.rstate)
                state_redis_complete(s->d.rstate, r->id, cid, r->cost_usd, total);
        }
    }
    char *body = r->resp.data;
    size_t len = r->resp.len;
    util_buf_init(&r->resp, HTTP_UPSTREAM_BODY_MAX); /* ownership moves to the response */
    if (!body)
        body = calloc(1, 1);
    unsigned status = r->up_status >= 100 && r->up_status <= 999 ? (unsigned)r->up_status : 502;
    set_final(r, status, body, len, r->up_ctype[0] ? r->up_ctype : "application/json", 1);
    req_wake(r);
}

/* Saved last failure, replayed when a retry cannot start. */
static void retry_fire(void *ud)
{
    struct req *r = ud;
    r->retry_timer = NULL;
    int rc = attempt_start(r);
    if (rc == BD_OK)
        return;
    if (r->resp.len > 0 && r->up_status > 0)
        finish_answer(r, BD_OK, "", 0); /* relay the 429/503 we were told to wait for */
    else
        finish_answer(r, rc == BD_ERR_BUSY ? BD_ERR_UPSTREAM : rc, "retry could not start", 0);
}

/* Retry the same arm after its Retry-After when no other arm is left to fall
 * back to (pinned, or the last candidate), the answer was 429/503, the retry
 * budget allows it and the wait fits the deadline. Exponential back-off with
 * jitter, never earlier than Retry-After. Returns 1 when scheduled. */
static int schedule_retry(struct req *r, int result)
{
    http_server *s = r->srv;
    if (result != BD_OK || (r->up_status != 429 && r->up_status != 503))
        return 0;
    if (r->retries >= r->g->cfg->limits.max_retries)
        return 0;
    if (!r->pinned && r->attempt + 1 < r->n_attempts &&
        r->fallbacks <= r->g->cfg->limits.max_fallbacks)
        return 0; /* another arm can answer now: prefer it */
    double backoff = 100.0 * (double)(1u << (r->retries < 10 ? r->retries : 10));
    double base = r->retry_after_ms >= 0 ? (double)r->retry_after_ms : backoff;
    if (base < backoff)
        base = backoff;
    char hex[33];
    double u = 0.5; /* jitter in [0, 1) */
    if (util_random_hex128(hex) == BD_OK) {
        hex[4] = '\0';
        u = (double)strtoul(hex, NULL, 16) / 65536.0;
    }
    double delay = base + backoff * 0.5 * u;
    if (util_now_ms() + delay + 1 >= r->deadline_ms)
        return 0;
    if (upstream_timer_start(s->d.up, delay, retry_fire, r, &r->retry_timer) != BD_OK)
        return 0;
    r->retries++;
    r->phase = PH_UPSTREAM;
    log_msgf(LOG_INFO, "arm %s answered %ld; retrying in %.0f ms", r->g->cfg->arms[r->arm].name,
             r->up_status, delay);
    return 1;
}

static void on_done(void *ud, int result, const char *msg)
{
    struct req *r = ud;
    http_server *s = r->srv;
    r->call = NULL;
    if (r->streaming) {
        stream_finished(r, result, msg);
        return;
    }
    double total = util_now_ms() - r->t_attempt_ms;
    const struct metrics_banditd_arm *ma = m_arm(r, r->arm);
    if (ma)
        metrics_hist_observe(ma->upstream_duration, total / 1000.0);
    int failed = result != BD_OK || is_retryable_status(r->up_status);
    attempt_release(r, failed ? HEALTH_FAILURE : HEALTH_SUCCESS);
    if (failed) {
        /* Infrastructure failure: latency/health only, never quality. */
        router_observe_failure(s->d.rt, rt_arm(r, r->arm), total);
        r->fallbacks++;
        if (schedule_retry(r, result))
            return;
        if (!r->pinned && r->attempt + 1 < r->n_attempts &&
            r->fallbacks <= r->g->cfg->limits.max_fallbacks) {
            int failed_arm = r->arm;
            long failed_status = r->up_status;
            /* Keep the failed answer in case no other arm can start. */
            struct util_buf keep = r->resp;
            char keep_ctype[sizeof r->up_ctype];
            memcpy(keep_ctype, r->up_ctype, sizeof keep_ctype);
            util_buf_init(&r->resp, HTTP_UPSTREAM_BODY_MAX);
            r->attempt++;
            int rc = attempt_start(r);
            if (rc == BD_OK) {
                util_buf_free(&keep);
                if (ma)
                    metrics_counter_inc(ma->fallbacks);
                log_msgf(LOG_WARN, "arm %s failed (%s, status %ld); falling back",
                         r->g->cfg->arms[failed_arm].name, msg, failed_status);
                return;
            }
            util_buf_free(&r->resp);
            r->resp = keep;
            r->arm = failed_arm;
            r->up_status = failed_status;
            memcpy(r->up_ctype, keep_ctype, sizeof keep_ctype);
        }
    }
    finish_answer(r, result, msg, total);
}

/* ---- streaming response ------------------------------------------------ */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct req *r = cls;
    if (r->relay.len == 0 && r->paused && r->call) {
        r->paused = 0;
        upstream_resume(r->call); /* may append to relay synchronously */
    }
    if (r->relay.len > 0) {
        size_t n = r->relay.len < max ? r->relay.len : max;
        memcpy(buf, r->relay.data, n);
        util_buf_consume(&r->relay, n);
        if (r->paused && r->call && r->relay.len <= r->relay.max / 2) {
            r->paused = 0;
            upstream_resume(r->call);
        }
        return (ssize_t)n;
    }
    if (r->up_done || !r->call)
        return MHD_CONTENT_READER_END_OF_STREAM;
    req_suspend(r);
    return 0;
}

static enum MHD_Result queue_stream(struct req *r)
{
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK, stream_reader, r, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type",
                            r->up_ctype[0] ? r->up_ctype : "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    add_bandit_headers(r, resp);
    unsigned status = (unsigned)r->up_status;
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->phase = PH_STREAMING;
    return ret;
}

/* ---- handlers ----------------------------------------------------------- */

static char *debug_scores(const struct req *r)
{
    struct util_buf b;
    util_buf_init(&b, 4096);
    for (int i = 0; i < r->dec.n; i++) {
        int a = r->dec.order[i];
        const struct router_arm_score *sc = &r->dec.s[a];
        if (util_buf_printf(&b, "%s%s:%.4g/%.4g/%.4g/%.4g/%.4g", i ? ";" : "",
                            r->g->cfg->arms[a].name, sc->mean, sc->width, sc->cost, sc->latency,
                            sc->score) != BD_OK)
            break;
    }
    return b.data; /* may be NULL */
}

static enum MHD_Result handle_chat(struct req *r)
{
    http_server *s = r->srv;
    const struct config *cfg = s->cfg;
    char err[256];
    const char *param = NULL;
    if (r->too_big)
        return respond_error(r, 413, "request body too large", "invalid_request_error", NULL,
                             "request_too_large");
    if (r->g != s->cur) { /* a reload happened while the body was read */
        gen_unref(r->g);
        r->g = s->cur;
        r->g->refs++;
    }
    if (cfg->log.debug_bodies && LOG_ENABLED(LOG_DEBUG)) {
        static char esc[HTTP_BODY_LOG_MAX * 6 + 8];
        char raw[HTTP_BODY_LOG_MAX + 1];
        size_t bl = r->body.len < HTTP_BODY_LOG_MAX ? r->body.len : HTTP_BODY_LOG_MAX;
        if (bl)
            memcpy(raw, r->body.data, bl);
        raw[bl] = '\0';
        json_escape(esc, sizeof esc, raw);
        char *f = malloc(sizeof esc + 64);
        if (f) {
            snprintf(f, sizeof esc + 64, "\"body\":\"%s\",\"truncated\":%s", esc,
                     r->body.len > bl ? "true" : "false");
            log_emit(LOG_DEBUG, "request body", f);
            free(f);
        }
    }
    memset(&r->chat, 0, sizeof r->chat);
    if (openai_chat_parse_with(r->body.data ? r->body.data : "", r->body.len, &r->chat,
                               &r->chat_spare, err, sizeof err, &param) != BD_OK)
        return respond_error(r, 400, err, "invalid_request_error", param, "invalid_request");
    r->chat_ok = 1;
    body_release(r);

    int pinned = -1;
    if (!config_is_alias(cfg, r->chat.model)) {
        pinned = config_arm_index(cfg, r->chat.model);
        if (pinned < 0) {
            char m[256];
            snprintf(m, sizeof m, "The model `%.128s` does not exist", r->chat.model);
            return respond_error(r, 404, m, "invalid_request_error", "model", "model_not_found");
        }
    }

    const char *pv = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Bandit-Preference");
    if (!pv)
        pv = cfg->router.default_preference;
    if (pref_parse(pv, strlen(pv), cfg->router.profiles, cfg->router.n_profiles, &r->w, err,
                   sizeof err) != BD_OK) {
        char m[320];
        snprintf(m, sizeof m, "X-Bandit-Preference: %s", err);
        return respond_error(r, 400, m, "invalid_request_error", NULL, "invalid_preference");
    }

    if (cfg->limits.max_inflight && upstream_inflight(s->d.up) >= cfg->limits.max_inflight) {
        set_final_error(r, 503, "too many requests in flight", "server_error", NULL, "overloaded");
        r->final_retry_after = 1;
        return queue_final(r);
    }

    long budget = cfg->limits.request_timeout_ms > 0 ? cfg->limits.request_timeout_ms : 120000;
    const char *tv = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Bandit-Timeout-Ms");
    if (tv) {
        char *end = NULL;
        errno = 0;
        long long v = tv[0] >= '0' && tv[0] <= '9' ? strtoll(tv, &end, 10) : -1;
        if (v < 1 || v > 86400000LL || errno || !end || *end)
            return respond_error(r, 400,
                                 "X-Bandit-Timeout-Ms: expected an integer number of milliseconds "
                                 "in [1, 86400000]",
                                 "invalid_request_error", NULL, "invalid_timeout");
        r->cap_ms = (long)v;
        if (r->cap_ms < budget)
            budget = r->cap_ms;
    }
    r->deadline_ms = r->t_start_ms + (double)budget;
    r->pinned = pinned >= 0;

    int dim = router_dim(s->d.rt);
    if (r->x && r->x_dim == dim) {
        memset(r->x, 0, (size_t)dim * sizeof *r->x);
    } else {
        free(r->x);
        r->x_dim = 0;
        r->x = calloc((size_t)dim, sizeof *r->x);
        if (!r->x)
            return respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
        r->x_dim = dim;
    }
    if (features_from_request_tw(r->chat.root, r->x, dim, r->g->cfg->router.text_weight) != BD_OK)
        return respond_error(r, 400, "cannot featurize the request", "invalid_request_error",
                             "messages", "invalid_request");
    long pt = openai_estimate_tokens(r->chat.prompt_chars);
    unsigned char healthy[ROUTER_MAX_ARMS];
    const unsigned char *hmask = NULL;
    if (r->g == s->cur && (size_t)router_n_arms(s->d.rt) == r->g->cfg->n_arms) {
        /* Arms whose circuit is open (and cooling down) leave the candidate set. */
        int nh = health_candidates(r->g->h, util_now_ms(), healthy);
        if (nh == 0 || (pinned >= 0 && !healthy[pinned])) {
            set_final_error(
                r, 503,
                pinned >= 0 ? "the requested arm is unavailable (circuit open)" : "no healthy arm",
                "server_error", NULL, pinned >= 0 ? "arm_unavailable" : "no_healthy_arm");
            r->final_retry_after = 1;
            return queue_final(r);
        }
        hmask = healthy;
    }
    if (router_decide(s->d.rt, r->x, &r->w, pt, hmask, pinned, &r->dec) != BD_OK || r->dec.n < 1)
        return respond_error(r, 503, "no healthy arm", "server_error", NULL, "no_healthy_arm");
    if (decisions_new_id(r->id, util_wall_s()) != BD_OK) /* time-ordered: decisions.h */
        return respond_error(r, 500, "no randomness", "server_error", NULL, "internal_error");
    const char *dbg = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Bandit-Debug");
    if (dbg && strcmp(dbg, "1") == 0)
        r->scores = debug_scores(r);
    r->n_attempts = pinned >= 0 ? 1 : r->dec.n;
    r->attempt = 0;
    int rc = attempt_start(r);
    if (rc != BD_OK) {
        if (rc == BD_ERR_NOMEM)
            return respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
        if (rc == BD_ERR_BUSY || rc == BD_ERR_UPSTREAM) {
            /* Every candidate is at its in-flight cap or its circuit just closed on us. */
            set_final_error(r, 503,
                            rc == BD_ERR_BUSY ? "too many requests in flight to the arms"
                                              : "no upstream could be started",
                            "server_error", NULL,
                            rc == BD_ERR_BUSY ? "overloaded" : "no_healthy_arm");
            r->final_retry_after = 1;
            return queue_final(r);
        }
        return respond_error(r, 504, "request deadline passed", "api_error", NULL,
                             "upstream_timeout");
    }
    req_suspend(r);
    return MHD_YES;
}

/* /stats of the current generation. NULL on OOM. */
static char *stats_of(struct req *r)
{
    http_server *s = r->srv;
    return stats_json(s->cur->cfg, s->d.rt, s->d.ds, s->cur->h, util_now_ms(),
                      upstream_inflight(s->d.up), s->n_reqs);
}

/* Authenticate r at its first call (before any body is read). Client
 * routes (/v1/..., /feedback) need a client key when keys are configured;
 * admin routes need the admin key. Queues 401/403 and returns 1 when refused. */
static int auth_refused(struct req *r, enum MHD_Result *ret)
{
    http_server *s = r->srv;
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    int rc;
    if (r->route == R_CHAT || r->route == R_FEEDBACK || r->route == R_MODELS) {
        struct auth_identity id;
        rc = auth_check_client(s->auth, h, &id);
        r->client = id.client;
        r->is_admin = id.role == AUTH_ADMIN;
    } else if (r->route == R_STATS || r->route == R_ADMIN_RELOAD || r->route == R_DEBUG_MODEL) {
        rc = auth_check_admin(s->auth, h);
    } else {
        return 0;
    }
    if (rc == BD_OK)
        return 0;
    r->too_big = 1; /* do not keep the body */
    if (rc == BD_ERR_FORBIDDEN) {
        *ret = respond_error(r, 403, "this endpoint needs the admin key", "permission_error", NULL,
                             "forbidden");
    } else {
        r->www_auth = 1;
        *ret = respond_error(r, 401,
                             h ? "Incorrect API key provided"
                               : "Missing API key: send Authorization: Bearer <key>",
                             "invalid_request_error", NULL, "invalid_api_key");
    }
    return 1;
}

static enum MHD_Result handle_models(struct req *r)
{
    const struct config *cfg = r->srv->cfg;
    cJSON *root = cJSON_CreateObject();
    cJSON *data = cJSON_CreateArray();
    if (!root || !data) {
        cJSON_Delete(root);
        cJSON_Delete(data);
        return respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
    }
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddItemToObject(root, "data", data);
    for (size_t i = 0; i < cfg->n_aliases + cfg->n_arms; i++) {
        const char *name =
            i < cfg->n_aliases ? cfg->aliases[i] : cfg->arms[i - cfg->n_aliases].name;
        cJSON *m = cJSON_CreateObject();
        if (!m)
            break;
        cJSON_AddStringToObject(m, "id", name);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", 0);
        cJSON_AddStringToObject(m, "owned_by", "banditd");
        cJSON_AddItemToArray(data, m);
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return respond_json(r, 200, json);
}

/* Feedback metrics from one /feedback answer (single or batch document, see
 * feedback.h): received, applied, rejected by reason. Also refreshes the
 * per-arm reward means. Call it with every final /feedback answer. */
static int feedback_code_err(const char *code)
{
    if (!code)
        return BD_ERR_INVALID;
    if (strcmp(code, "unknown_request_id") == 0)
        return BD_ERR_NOTFOUND;
    if (strcmp(code, "duplicate_feedback") == 0)
        return BD_ERR_EXISTS;
    if (strcmp(code, "expired_request_id") == 0)
        return BD_ERR_EXPIRED;
    if (strcmp(code, "forbidden") == 0)
        return BD_ERR_FORBIDDEN;
    if (strcmp(code, "unauthorized") == 0 || strcmp(code, "invalid_api_key") == 0)
        return BD_ERR_AUTH;
    if (strncmp(code, "feedback_not_applied", 20) == 0 || strncmp(code, "store_", 6) == 0)
        return BD_ERR_INTERNAL;
    return BD_ERR_INVALID;
}

static void observe_feedback(http_server *s, int status, const char *body)
{
    struct metrics_banditd *mc = s->d.mcat;
    if (!mc || !body)
        return;
    cJSON *root = cJSON_Parse(body);
    const cJSON *data = root ? cJSON_GetObjectItemCaseSensitive(root, "data") : NULL;
    const cJSON *one = root;
    int n = cJSON_IsArray(data) ? cJSON_GetArraySize(data) : 1;
    for (int i = 0; i < n; i++) {
        if (cJSON_IsArray(data))
            one = cJSON_GetArrayItem(data, i);
        metrics_counter_inc(metrics_banditd_feedback(mc, METRICS_FEEDBACK_RECEIVED, 0));
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(one, "status");
        int applied = cJSON_IsString(st) ? strcmp(st->valuestring, "applied") == 0
                                         : (!cJSON_IsArray(data) && status == 200);
        if (applied) {
            metrics_counter_inc(metrics_banditd_feedback(mc, METRICS_FEEDBACK_APPLIED, 0));
            continue;
        }
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(one, "error");
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
        int err = feedback_code_err(cJSON_IsString(code) ? code->valuestring : NULL);
        metrics_counter_inc(metrics_banditd_feedback(mc, METRICS_FEEDBACK_REJECTED, err));
    }
    cJSON_Delete(root);
    const struct config *cfg = s->cfg;
    for (size_t a = 0; a < cfg->n_arms; a++) {
        struct router_arm_stats st;
        router_arm_stats(s->d.rt, (int)a, &st);
        const struct metrics_banditd_arm *ma =
            s->cur->marm[a] >= 0 ? metrics_banditd_arm(mc, (size_t)s->cur->marm[a]) : NULL;
        if (ma && st.feedback > 0)
            metrics_gauge_set(ma->reward_mean, st.reward_sum / (double)st.feedback);
    }
}

static enum MHD_Result handle_metrics(struct req *r)
{
    http_server *s = r->srv;
    if (!s->d.metrics)
        return respond_error(r, 404, "metrics are disabled", "invalid_request_error", NULL,
                             "not_found");
    /* banditd_circuit_state{arm}: read at scrape time from the current generation's breakers */
    for (size_t a = 0; s->d.mcat && a < s->cur->cfg->n_arms; a++) {
        const struct metrics_banditd_arm *ma =
            s->cur->marm[a] >= 0 ? metrics_banditd_arm(s->d.mcat, (size_t)s->cur->marm[a]) : NULL;
        enum health_state hs = health_state_of(s->cur->h, (int)a);
        enum metrics_circuit mcs = METRICS_CIRCUIT_CLOSED;
        if (hs == HEALTH_OPEN)
            mcs = METRICS_CIRCUIT_OPEN;
        else if (hs == HEALTH_HALF_OPEN)
            mcs = METRICS_CIRCUIT_HALF_OPEN;
        if (ma)
            metrics_gauge_set(ma->circuit_state, (double)mcs);
    }
    struct util_buf b;
    util_buf_init(&b, HTTP_METRICS_MAX);
    if (metrics_expose(s->d.metrics, &b) != BD_OK) {
        util_buf_free(&b);
        return respond_error(r, 500, "metrics exposition failed", "server_error", NULL,
                             "internal_error");
    }
    char *body = b.data ? b.data : calloc(1, 1);
    set_final(r, 200, body, b.len, METRICS_CONTENT_TYPE, 0);
    return queue_final(r);
}

/* 1 if the peer of conn is a loopback address. */
static int peer_is_loopback(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return 0;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return 1;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return in6->sin6_addr.s6_addr[12] == 127;
    }
    return 0;
}

/* POST /admin/reload. Guard: when auth.admin_key_env names a set variable,
 * the caller must send "Authorization: Bearer <that key>"; otherwise only
 * loopback peers may reload. */
static enum MHD_Result handle_admin_reload(struct req *r)
{
    http_server *s = r->srv;
    const char *env = s->cfg->auth.admin_key_env;
    const char *key = env[0] ? getenv(env) : NULL;
    if (key && key[0]) {
        const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
        size_t kl = strlen(key);
        unsigned diff = 1;
        if (h && strncmp(h, "Bearer ", 7) == 0 && strlen(h + 7) == kl) {
            diff = 0;
            for (size_t i = 0; i < kl; i++)
                diff |= (unsigned)(h[7 + i] ^ key[i]);
        }
        if (diff)
            return respond_error(r, 401, "admin key required", "invalid_request_error", NULL,
                                 "invalid_api_key");
    } else if (!peer_is_loopback(r->conn)) {
        return respond_error(r, 403, "reload is only allowed from loopback without an admin key",
                             "permission_error", NULL, "forbidden");
    }
    if (!s->reload_fn)
        return respond_error(r, 501, "reload is not available", "server_error", NULL,
                             "not_implemented");
    char err[512] = "";
    int rc = s->reload_fn(s->reload_ud, err, sizeof err);
    if (rc != BD_OK)
        return respond_error(r, rc == BD_ERR_NOMEM ? 500 : 400, err[0] ? err : bd_strerror(rc),
                             "invalid_request_error", NULL, "reload_failed");
    return respond_json(r, 200, strdup("{\"status\":\"reloaded\"}"));
}

/* feedback_submit's answer, on the loop thread once every item is settled. */
static void feedback_reply(void *ud, int status, char *body)
{
    struct req *r = ud;
    r->fb_job = NULL;
    r->rfb_job = NULL;
    if (body)
        observe_feedback(r->srv, status, body);
    set_final(r, (unsigned)status, body, body ? strlen(body) : 0, "application/json", 0);
    if (status == 503)
        r->final_retry_after = 1;
    req_wake(r);
}

static enum MHD_Result handle_feedback(struct req *r)
{
    http_server *s = r->srv;
    if (r->too_big)
        return respond_error(r, 413, "request body too large", "invalid_request_error", NULL,
                             "request_too_large");
    int status = 500;
    char *out = NULL;
    if (s->d.rstate) {
        /* Replicas: answered when Redis has recorded it (docs/scale-out.md). */
        state_redis_job *job = NULL;
        if (state_redis_feedback_submit(s->d.rstate, r->body.data ? r->body.data : "", r->body.len,
                                        r->client, r->is_admin, util_wall_s(), feedback_reply, r,
                                        &job, &status, &out) != BD_OK) {
            free(out);
            return respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
        }
        if (job) {
            r->rfb_job = job;
            r->phase = PH_UPSTREAM;
            req_suspend(r);
            return MHD_YES;
        }
    } else if (s->d.state) {
        /* Durable: answered when the store has committed (feedback_reply). */
        feedback_job *job = NULL;
        if (feedback_submit(state_feedback(s->d.state), r->body.data ? r->body.data : "",
                            r->body.len, r->client, r->is_admin, util_wall_s(), feedback_reply, r,
                            &job, &status, &out) != BD_OK) {
            free(out);
            return respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
        }
        if (job) {
            r->fb_job = job;
            r->phase = PH_UPSTREAM;
            req_suspend(r);
            return MHD_YES;
        }
    } else if (feedback_handle(s->d.ds, s->d.rt, r->body.data ? r->body.data : "", r->body.len,
                               r->client, r->is_admin, util_wall_s(), &status, &out) != BD_OK) {
        free(out);
        out = NULL;
    }
    if (!out)
        return respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
    observe_feedback(s, status, out);
    if (status == 503)
        r->final_retry_after = 1;
    return respond_json(r, (unsigned)status, out);
}

/* GET /debug/model?arm=NAME: one arm's A, A^-1, b, theta (state.h). */
static enum MHD_Result handle_debug_model(struct req *r)
{
    http_server *s = r->srv;
    const char *name = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "arm");
    int status = 500;
    char *json = state_model_json(s->d.rt, s->cfg, name, &status);
    if (!json)
        return status == 404
                   ? respond_error(r, 404, "unknown arm", "invalid_request_error", "arm",
                                   "not_found")
                   : respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
    return respond_json(r, 200, json);
}

static enum MHD_Result dispatch(struct req *r)
{
    http_server *s = r->srv;
    if (r->route == R_NOTFOUND)
        return respond_error(r, 404, "not found", "invalid_request_error", NULL, "not_found");
    if (!r->method_ok) {
        char m[128];
        snprintf(m, sizeof m, "method not allowed (allowed: %s)", r->allow);
        return respond_error(r, 405, m, "invalid_request_error", NULL, "method_not_allowed");
    }
    if (s->draining && r->route != R_HEALTH && r->route != R_METRICS) {
        /* Graceful shutdown: new requests on kept-alive connections go elsewhere. */
        set_final_error(r, 503, "shutting down", "server_error", NULL, "shutting_down");
        r->final_retry_after = 1;
        r->close_conn = 1;
        return queue_final(r);
    }
    switch (r->route) {
    case R_CHAT:
        return handle_chat(r);
    case R_MODELS:
        return handle_models(r);
    case R_HEALTH:
        return respond_json(r, 200, strdup("{\"status\":\"ok\"}"));
    case R_READY:
        /* Ready while at least one arm's circuit admits calls. */
        if (s->cur->cfg->n_arms >= 1 && health_ready(s->cur->h, util_now_ms()))
            return respond_json(r, 200, strdup("{\"status\":\"ready\"}"));
        return respond_json(r, 503, strdup("{\"status\":\"not ready\"}"));
    case R_FEEDBACK:
        return handle_feedback(r);
    case R_STATS:
        return respond_json(r, 200, stats_of(r));
    case R_METRICS:
        return handle_metrics(r);
    case R_ADMIN_RELOAD:
        return handle_admin_reload(r);
    case R_DEBUG_MODEL:
        return handle_debug_model(r);
    case R_NOTFOUND:
        break;
    }
    return MHD_NO;
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **req_cls)
{
    (void)version;
    http_server *s = cls;
    struct req *r = *req_cls;
    if (!r) {
        r = req_new(s, conn, url, method);
        if (!r)
            return MHD_NO;
        *req_cls = r;
        enum MHD_Result aret = MHD_NO;
        if (r->method_ok && auth_refused(r, &aret))
            return aret;
        if (r->wants_body) {
            const char *cl =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl) {
                char *end;
                errno = 0;
                unsigned long long n = strtoull(cl, &end, 10);
                if (errno == 0 && end != cl && n > r->body.max) {
                    r->too_big = 1;
                    /* Answer before reading the body; MHD closes the connection after. */
                    return respond_error(r, 413, "request body too large", "invalid_request_error",
                                         NULL, "request_too_large");
                }
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (r->wants_body && !r->too_big && r->phase == PH_BODY &&
            util_buf_append(&r->body, upload_data, *upload_data_size) != BD_OK) {
            r->too_big = 1;
            util_buf_free(&r->body);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (s->stopping)
        return MHD_NO;
    switch (r->phase) {
    case PH_BODY:
        return dispatch(r);
    case PH_UPSTREAM:
        req_suspend(r); /* woken without news: wait again */
        return MHD_YES;
    case PH_RESPOND:
        return queue_final(r);
    case PH_STREAM:
        return queue_stream(r);
    case PH_STREAMING:
    case PH_QUEUED:
        return MHD_YES;
    }
    return MHD_NO;
}

/* ---- server ------------------------------------------------------------- */

__attribute__((format(printf, 2, 0))) static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char m[512];
    vsnprintf(m, sizeof m, fmt, ap);
    size_t n = strlen(m);
    while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == '\r'))
        m[--n] = '\0';
    log_emit(LOG_WARN, m, "\"source\":\"microhttpd\"");
}

static int bind_listen(const char *host, int port, int *port_out, char *err, size_t errlen)
{
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int g = getaddrinfo(host && host[0] ? host : NULL, ps, &hints, &res);
    if (g != 0) {
        snprintf(err, errlen, "cannot resolve listen address %s: %s", host, gai_strerror(g));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(e));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    *port_out = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            *port_out = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            *port_out = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return fd;
}

static void server_free(http_server *s)
{
    while (s->free_reqs) {
        struct req *r = s->free_reqs;
        s->free_reqs = r->next;
        req_destroy(r);
    }
    auth_destroy(s->auth);
    gen_unref(s->cur);
    free(s);
}

int http_start(const struct http_deps *deps, const char *host, int port, http_server **out,
               char *err, size_t errlen)
{
    assert(deps && deps->cfg && deps->rt && deps->up && out);
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    s->d = *deps;
    s->cfg = deps->cfg;
    s->epfd = -1;
    s->cur = gen_new(s->cfg, deps->mcat);
    if (!s->cur) {
        snprintf(err, errlen, "out of memory");
        free(s);
        return BD_ERR_NOMEM;
    }
    /* Client/admin keys; without client keys, loopback only unless allowed. */
    int arc = auth_from_config(s->cfg, &s->auth, err, errlen);
    if (arc == BD_OK)
        arc = auth_listen_allowed(s->auth, host, s->cfg->auth.allow_unauthenticated_remote, err,
                                  errlen);
    if (arc != BD_OK) {
        server_free(s);
        return arc == BD_ERR_NOMEM ? BD_ERR_NOMEM : BD_ERR_INVALID;
    }
    if (auth_n_client_keys(s->auth) == 0)
        log_msgf(LOG_WARN, "no client keys configured: client authentication is off");
    int fd = bind_listen(host, port, &s->port, err, errlen);
    if (fd < 0) {
        server_free(s);
        return BD_ERR_IO;
    }
    unsigned timeout = s->cfg->limits.connection_timeout_s;
    unsigned limit = s->cfg->limits.max_connections;
    s->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        access_handler, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s, MHD_OPTION_LISTEN_SOCKET,
        (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT, limit ? limit : 10000u,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)HTTP_CONN_MEMORY_LIMIT, MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_END);
    if (!s->mhd) {
        close(fd);
        snprintf(err, errlen, "cannot start the HTTP server on %s:%d", host, s->port);
        server_free(s);
        return BD_ERR_IO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info) {
        MHD_stop_daemon(s->mhd);
        snprintf(err, errlen, "microhttpd has no epoll fd");
        server_free(s);
        return BD_ERR_IO;
    }
    s->epfd = info->epoll_fd;
    *out = s;
    return BD_OK;
}

int http_port(const http_server *s)
{
    return s->port;
}

int http_epoll_fd(const http_server *s)
{
    return s->epfd;
}

long http_timeout_ms(http_server *s)
{
    MHD_UNSIGNED_LONG_LONG t = 0;
    if (MHD_get_timeout(s->mhd, &t) != MHD_YES)
        return -1;
    return t > 1000000 ? 1000000 : (long)t;
}

void http_run(http_server *s)
{
    MHD_run(s->mhd);
}

size_t http_active(const http_server *s)
{
    return s->n_reqs;
}

void http_detach_state(http_server *s)
{
    s->d.state = NULL;
    s->d.rstate = NULL;
}

void http_destroy(http_server *s)
{
    if (!s)
        return;
    s->stopping = 1;
    for (struct req *r = s->reqs; r; r = r->next)
        req_wake(r);
    MHD_stop_daemon(s->mhd); /* completes (and frees) every request */
    while (s->reqs)
        req_free(s->reqs);
    server_free(s);
}

/* ---- operations --------------------------------------------------------- */

const struct config *http_config(const http_server *s)
{
    return s->cfg;
}

void http_set_reload_hook(http_server *s, http_reload_fn fn, void *ud)
{
    s->reload_fn = fn;
    s->reload_ud = ud;
}

int http_reconfigure(http_server *s, struct config *newcfg, char *err, size_t errlen)
{
    assert(s && newcfg);
    struct gen *g = gen_new(newcfg, s->d.mcat);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    int n_old = router_n_arms(s->d.rt);
    int map[ROUTER_MAX_ARMS];
    int rc = router_reconfigure(s->d.rt, newcfg, map);
    if (rc != BD_OK) {
        snprintf(err, errlen, "the router refused the new config: %s", bd_strerror(rc));
        gen_unref(g); /* owns_cfg is 0: newcfg stays the caller's */
        return rc;
    }
    if (s->d.ds) {
        size_t dropped = decisions_remap_arms(s->d.ds, map, n_old);
        if (dropped)
            log_msgf(LOG_INFO, "reload: %zu pending decisions of removed arms expired", dropped);
    }
    g->owns_cfg = 1;
    gen_unref(s->cur); /* freed once the last request routed with it completes */
    s->cur = g;
    s->cfg = newcfg;
    s->d.cfg = newcfg;
    if (s->d.state)
        state_set_config(s->d.state, newcfg);
    if (s->d.rstate)
        state_redis_set_config(s->d.rstate, newcfg);
    return BD_OK;
}

void http_quiesce(http_server *s)
{
    if (!s || s->draining)
        return;
    s->draining = 1;
    MHD_socket fd = MHD_quiesce_daemon(s->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}
