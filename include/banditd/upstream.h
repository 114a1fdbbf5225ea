/* upstream — forwarding through libcurl's multi interface.
 *
 * One `upstream` owns one CURLM multi handle (and with it the pool of kept-alive
 * upstream connections). Each forwarded request is an `upstream_call` (one easy
 * handle). All callbacks run on the thread that drives the multi handle (the
 * event loop): on_headers and on_data from inside upstream_perform() or
 * upstream_resume(), on_done from inside upstream_perform() only, after curl has
 * let go of the transfer (so on_done may start a new call, e.g. a fallback).
 * Single-threaded except upstream_wakeup(), which any thread or a signal
 * handler may call. */
#ifndef BANDITD_UPSTREAM_H
#define BANDITD_UPSTREAM_H

#include <stddef.h>

typedef struct upstream upstream;
typedef struct upstream_call upstream_call;

/* on_data's return value asking curl to pause the transfer (nothing consumed);
 * the same bytes are delivered again after upstream_resume(). */
#define UPSTREAM_PAUSE ((size_t)-1)

struct upstream_cbs {
    /* End of the final response header block: HTTP status and Content-Type
     * ("" when absent). Called at most once per call. */
    void (*on_headers)(void *ud, long status, const char *content_type);
    /* Body bytes (borrowed for the call). Return len (all consumed) or
     * UPSTREAM_PAUSE (none consumed); any other value aborts the transfer. */
    size_t (*on_data)(void *ud, const char *data, size_t len);
    /* The transfer ended: result is 0 (a complete HTTP answer, any status),
     * BD_ERR_TIMEOUT, or BD_ERR_UPSTREAM (connect/transport failure or aborted);
     * msg is a short static-or-borrowed description. The call handle is freed
     * right after on_done returns: forget it. */
    void (*on_done)(void *ud, int result, const char *msg);
};

struct upstream_req {
    const char *url;     /* full URL, copied by curl */
    const char *api_key; /* "Authorization: Bearer <key>" when non-NULL and non-empty */
    const char *body;    /* borrowed: must stay valid until on_done or cancel */
    size_t body_len;
    long timeout_ms; /* total deadline (0 = none) */
    long connect_timeout_ms;
    int stream; /* Accept: text/event-stream */
    /* Deadline for the first response byte (status line), 0 = none. When it
     * passes, the call ends with on_done(BD_ERR_TIMEOUT). */
    long ttfb_timeout_ms;
};

/* max_total: cap on open upstream connections (0 = unlimited); max_host: per
 * host (0 = unlimited). NULL on failure. */
upstream *upstream_create(long max_total, long max_host);
/* Cancels (without callbacks) and frees every live call, then the multi handle. */
void upstream_destroy(upstream *u);

/* Start a call. Returns 0 and *out, BD_ERR_NOMEM, or BD_ERR_UPSTREAM when curl
 * refuses (nothing started, no callback will run). */
int upstream_start(upstream *u, const struct upstream_req *rq, const struct upstream_cbs *cb,
                   void *ud, upstream_call **out);
/* Abort a live call: no callback runs afterwards, the handle is freed. */
void upstream_cancel(upstream *u, upstream_call *c);
/* Un-pause a call whose on_data returned UPSTREAM_PAUSE. May call on_data
 * synchronously. */
void upstream_resume(upstream_call *c);
/* Milliseconds since the call started until its first body byte (<0 if none). */
double upstream_ttfb_ms(const upstream_call *c);

/* The latest response header block's Retry-After in ms (delta-seconds form
 * only), or -1 when absent/unparsable. Valid from on_headers on. */
long upstream_retry_after_ms(const upstream_call *c);

/* One-shot timers on the same loop (e.g. retry back-off): fn(ud) runs from
 * inside upstream_perform() once delay_ms have passed; the timer is freed
 * before fn runs. upstream_timeout_ms() accounts for pending timers.
 * Returns 0 and *out, or BD_ERR_NOMEM. */
typedef struct upstream_timer upstream_timer;
int upstream_timer_start(upstream *u, double delay_ms, void (*fn)(void *ud), void *ud,
                         upstream_timer **out);
/* Cancel a pending timer (fn never runs). NULL is a no-op. */
void upstream_timer_cancel(upstream *u, upstream_timer *t);

/* Wait (epoll) up to timeout_ms (0..) for upstream socket activity, for extra_fd (-1 = none;
 * registered once, level-triggered)
 * to become readable, or for upstream_wakeup(). Returns 0 or BD_ERR_IO. */
int upstream_poll(upstream *u, int extra_fd, int timeout_ms);
/* Drive transfers and report finished ones (on_done). Returns 0 or BD_ERR_IO. */
int upstream_perform(upstream *u);
/* curl's suggested timeout in ms, -1 = none. */
long upstream_timeout_ms(upstream *u);
/* Interrupt upstream_poll from any thread or a signal handler. */
void upstream_wakeup(upstream *u);
/* Live calls. */
size_t upstream_inflight(const upstream *u);

#endif
