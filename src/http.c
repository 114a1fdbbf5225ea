/* http — the front end (see http.h and docs/architecture.md).
 *
 * Every response is queued from inside the access handler: when the upstream
 * call (driven by the loop through upstream.c) has something for the client,
 * its callback records it in the request state and resumes the connection;
 * MHD then calls the access handler again, which queues the response. */
#include "banditd/http.h"
#include "banditd/err.h"
#include "banditd/features.h"
#include "banditd/feedback.h"
#include "banditd/log.h"
#include "banditd/openai.h"
#include "banditd/pref.h"
#include "banditd/stats.h"
#include "banditd/util.h"

#include <assert.h>
#include <errno.h>
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

#define HTTP_CONN_MEMORY_LIMIT (64 * 1024)
#define HTTP_UPSTREAM_BODY_MAX ((size_t)64 * 1024 * 1024) /* buffered upstream answer */
#define HTTP_RELAY_MAX ((size_t)1024 * 1024)              /* SSE relay buffer */
#define HTTP_STREAM_BLOCK (32 * 1024)
#define HTTP_FEEDBACK_BODY_MAX ((size_t)8 * 1024 * 1024)
#define HTTP_PATH_LOG_MAX 128

enum route {
    R_NOTFOUND = 0,
    R_CHAT,
    R_MODELS,
    R_HEALTH,
    R_READY,
    R_FEEDBACK,
    R_STATS,
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
    double *x;
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
    const char *allow;

    unsigned status; /* what was queued, for the access log */
};

struct http_server {
    struct http_deps d;
    const struct config *cfg;
    struct MHD_Daemon *mhd;
    int port;
    int epfd;
    char **keys; /* per arm: API key from the environment, or NULL */
    char **urls; /* per arm: {base_url}/chat/completions */
    struct req *reqs;
    size_t n_reqs;
    int stopping;
};

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
    snprintf(r->final_ctype, sizeof r->final_ctype, "%s", ctype);
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
        MHD_add_response_header(resp, "X-Bandit-Arm", r->srv->cfg->arms[r->arm].name);
    snprintf(v, sizeof v, "%.8f", r->cost_usd);
    MHD_add_response_header(resp, "X-Bandit-Cost-Usd", v);
    snprintf(v, sizeof v, "%d", r->fallbacks);
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
        {"/v1/chat/completions", R_CHAT, "POST"}, {"/v1/models", R_MODELS, "GET, HEAD"},
        {"/healthz", R_HEALTH, "GET, HEAD"},      {"/readyz", R_READY, "GET, HEAD"},
        {"/feedback", R_FEEDBACK, "POST"},        {"/v1/feedback", R_FEEDBACK, "POST"},
        {"/stats", R_STATS, "GET, HEAD"},
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
    struct req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->srv = s;
    r->conn = conn;
    r->arm = -1;
    r->t_start_ms = util_now_ms();
    r->ttfb_ms = -1;
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->path, sizeof r->path, "%s", url);
    r->route = route_of(url, &r->allow);
    if (r->route != R_NOTFOUND)
        r->method_ok = method_allowed(r->allow, method);
    r->wants_body = r->method_ok && (r->route == R_CHAT || r->route == R_FEEDBACK);
    size_t cap = r->route == R_CHAT ? s->cfg->limits.max_body_bytes : HTTP_FEEDBACK_BODY_MAX;
    util_buf_init(&r->body, cap);
    util_buf_init(&r->resp, HTTP_UPSTREAM_BODY_MAX);
    util_buf_init(&r->relay, HTTP_RELAY_MAX);
    r->next = s->reqs;
    if (s->reqs)
        s->reqs->prev = r;
    s->reqs = r;
    s->n_reqs++;
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
                 "\"fallbacks\":%d",
                 r->id, r->arm >= 0 ? r->srv->cfg->arms[r->arm].name : "", r->cost_usd,
                 r->chat_ok && r->chat.stream ? "true" : "false", r->fallbacks);
    }
    log_emit(LOG_INFO, "request", f);
}

static void req_free(struct req *r)
{
    http_server *s = r->srv;
    if (r->call) {
        upstream_cancel(s->d.up, r->call);
        r->call = NULL;
    }
    if (r->prev)
        r->prev->next = r->next;
    else
        s->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    assert(s->n_reqs > 0);
    s->n_reqs--;
    util_buf_free(&r->body);
    util_buf_free(&r->resp);
    util_buf_free(&r->relay);
    if (r->chat_ok)
        openai_chat_free(&r->chat);
    if (r->sse_init)
        openai_sse_free(&r->sse);
    free(r->x);
    free(r->scores);
    free(r->up_body);
    free(r->final_body);
    free(r);
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
    d.arm = r->arm;
    d.x = r->x;
    d.w = r->w;
    d.created_s = util_wall_s();
    d.cost_usd = r->cost_usd;
    d.client = 0;
    int rc = decisions_add(r->srv->d.ds, &d);
    if (rc == BD_OK)
        r->recorded = 1;
    else
        log_msgf(LOG_WARN, "decision not stored: %s", bd_strerror(rc));
}

/* Start upstream attempts from r->attempt on, skipping arms curl refuses.
 * Returns 0 when a call is running, else the error of the last failure. */
static int attempt_start(struct req *r)
{
    http_server *s = r->srv;
    int rc = BD_ERR_UPSTREAM;
    while (r->attempt < r->n_attempts) {
        int arm = r->dec.order[r->attempt];
        const struct config_arm *a = &s->cfg->arms[arm];
        r->arm = arm;
        r->fallbacks = r->attempt;
        free(r->up_body);
        r->up_body = openai_chat_rewrite(&r->chat, a->model, &r->up_body_len);
        if (!r->up_body)
            return BD_ERR_NOMEM;
        util_buf_reset(&r->resp);
        util_buf_reset(&r->relay);
        r->resp_too_big = 0;
        r->up_status = 0;
        r->up_ctype[0] = '\0';
        r->ttfb_ms = -1;
        r->cost_usd = r->dec.s[arm].cost;
        if (r->sse_init)
            openai_sse_free(&r->sse);
        openai_sse_init(&r->sse);
        r->sse_init = 1;
        struct upstream_req rq = {
            .url = s->urls[arm],
            .api_key = s->keys[arm],
            .body = r->up_body,
            .body_len = r->up_body_len,
            .timeout_ms = a->timeout_ms,
            .connect_timeout_ms = a->connect_timeout_ms,
            .stream = r->chat.stream,
        };
        r->t_attempt_ms = util_now_ms();
        rc = upstream_start(s->d.up, &rq, &req_cbs, r, &r->call);
        if (rc == BD_OK) {
            r->phase = PH_UPSTREAM;
            return BD_OK;
        }
        r->call = NULL;
        router_observe_failure(s->d.rt, arm, 0);
        r->attempt++;
    }
    return rc;
}

static void on_headers(void *ud, long status, const char *ctype)
{
    struct req *r = ud;
    r->up_status = status;
    snprintf(r->up_ctype, sizeof r->up_ctype, "%s", ctype);
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
    if (r->ttfb_ms < 0)
        r->ttfb_ms = util_now_ms() - r->t_attempt_ms;
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
    const struct config_arm *a = &r->srv->cfg->arms[r->arm];
    long pt = -1, ct = -1;
    size_t content_chars = 0;
    cid[0] = '\0';
    if (r->streaming) {
        pt = r->sse.prompt_tokens;
        ct = r->sse.completion_tokens;
        content_chars = r->sse.content_chars;
        snprintf(cid, cidlen, "%s", r->sse.id);
    } else if (openai_parse_usage(r->resp.data ? r->resp.data : "", r->resp.len, &pt, &ct, cid,
                                  cidlen, &content_chars) != BD_OK) {
        pt = ct = -1;
        cid[0] = '\0';
    }
    if (pt < 0)
        pt = openai_estimate_tokens(r->chat.prompt_chars);
    if (ct < 0)
        ct = openai_estimate_tokens(content_chars);
    r->cost_usd = openai_cost_usd(pt, ct, a->price_in_per_mtok, a->price_out_per_mtok);
    return ct;
}

static void stream_finished(struct req *r, int result, const char *msg)
{
    http_server *s = r->srv;
    double total = util_now_ms() - r->t_attempt_ms;
    r->up_done = 1;
    r->up_result = result;
    r->paused = 0;
    char cid[DECISIONS_ID_MAX];
    if (result == BD_OK) {
        long ct = answer_cost(r, cid, sizeof cid);
        router_observe(s->d.rt, r->arm, ct, r->ttfb_ms, total);
        if (r->recorded)
            decisions_complete(s->d.ds, r->id, cid, r->cost_usd, total);
    } else {
        router_observe_failure(s->d.rt, r->arm, total);
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
    int retry = 0;
    if (result != BD_OK || is_retryable_status(r->up_status)) {
        router_observe_failure(s->d.rt, r->arm, total);
        retry = r->attempt + 1 < r->n_attempts;
    }
    if (retry) {
        log_msgf(LOG_WARN, "arm %s failed (%s, status %ld); falling back",
                 s->cfg->arms[r->arm].name, msg, r->up_status);
        r->attempt++;
        int rc = attempt_start(r);
        if (rc == BD_OK)
            return;
        result = rc;
    }
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
        req_wake(r);
        return;
    }
    /* A complete HTTP answer: relay status and body unchanged. */
    if (r->up_status >= 200 && r->up_status < 300) {
        char cid[DECISIONS_ID_MAX];
        long ct = answer_cost(r, cid, sizeof cid);
        router_observe(s->d.rt, r->arm, ct, r->ttfb_ms, total);
        decision_record(r);
        if (r->recorded)
            decisions_complete(s->d.ds, r->id, cid, r->cost_usd, total);
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
                            r->srv->cfg->arms[a].name, sc->mean, sc->width, sc->cost, sc->latency,
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
    memset(&r->chat, 0, sizeof r->chat);
    if (openai_chat_parse(r->body.data ? r->body.data : "", r->body.len, &r->chat, err, sizeof err,
                          &param) != BD_OK)
        return respond_error(r, 400, err, "invalid_request_error", param, "invalid_request");
    r->chat_ok = 1;
    util_buf_free(&r->body);

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

    int dim = router_dim(s->d.rt);
    r->x = calloc((size_t)dim, sizeof *r->x);
    if (!r->x)
        return respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
    if (features_from_request(r->chat.root, r->x, dim) != BD_OK)
        return respond_error(r, 400, "cannot featurize the request", "invalid_request_error",
                             "messages", "invalid_request");
    long pt = openai_estimate_tokens(r->chat.prompt_chars);
    if (router_decide(s->d.rt, r->x, &r->w, pt, NULL, pinned, &r->dec) != BD_OK || r->dec.n < 1)
        return respond_error(r, 503, "no healthy arm", "server_error", NULL, "no_healthy_arm");
    if (util_random_hex128(r->id) != BD_OK)
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
        return respond_error(r, 502, "no upstream could be started", "api_error", NULL,
                             "upstream_error");
    }
    req_suspend(r);
    return MHD_YES;
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

static enum MHD_Result handle_feedback(struct req *r)
{
    http_server *s = r->srv;
    if (r->too_big)
        return respond_error(r, 413, "request body too large", "invalid_request_error", NULL,
                             "request_too_large");
    int status = 500;
    char *out = NULL;
    if (feedback_handle(s->d.ds, s->d.rt, r->body.data ? r->body.data : "", r->body.len, 0, 0,
                        util_wall_s(), &status, &out) != BD_OK ||
        !out) {
        free(out);
        return respond_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
    }
    return respond_json(r, (unsigned)status, out);
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
    switch (r->route) {
    case R_CHAT:
        return handle_chat(r);
    case R_MODELS:
        return handle_models(r);
    case R_HEALTH:
        return respond_json(r, 200, strdup("{\"status\":\"ok\"}"));
    case R_READY:
        /* Every configured arm counts as healthy until health tracking lands. */
        if (s->cfg->n_arms >= 1)
            return respond_json(r, 200, strdup("{\"status\":\"ready\"}"));
        return respond_json(r, 503, strdup("{\"status\":\"not ready\"}"));
    case R_FEEDBACK:
        return handle_feedback(r);
    case R_STATS:
        return respond_json(
            r, 200, stats_json(s->cfg, s->d.rt, s->d.ds, upstream_inflight(s->d.up), s->n_reqs));
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
    if (s->keys) {
        for (size_t i = 0; i < s->cfg->n_arms; i++) {
            if (s->keys[i]) {
                memset(s->keys[i], 0, strlen(s->keys[i]));
                free(s->keys[i]);
            }
        }
    }
    if (s->urls) {
        for (size_t i = 0; i < s->cfg->n_arms; i++)
            free(s->urls[i]);
    }
    free(s->keys);
    free(s->urls);
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
    size_t n = s->cfg->n_arms;
    s->keys = calloc(n ? n : 1, sizeof *s->keys);
    s->urls = calloc(n ? n : 1, sizeof *s->urls);
    if (!s->keys || !s->urls)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        const struct config_arm *a = &s->cfg->arms[i];
        if (a->api_key_env[0]) {
            const char *k = getenv(a->api_key_env);
            if (k && k[0]) {
                s->keys[i] = strdup(k);
                if (!s->keys[i])
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
        s->urls[i] = malloc(ul);
        if (!s->urls[i])
            goto nomem;
        snprintf(s->urls[i], ul, "%.*s/chat/completions", (int)bl, a->base_url);
    }
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
nomem:
    snprintf(err, errlen, "out of memory");
    server_free(s);
    return BD_ERR_NOMEM;
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
