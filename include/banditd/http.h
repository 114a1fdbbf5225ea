/* http — the front end: libmicrohttpd in external-polling epoll mode, routes,
 * capped body accumulation, suspend/resume around upstream calls, the SSE
 * relay, OpenAI-shaped errors, the access log.
 *
 * Routes: POST /v1/chat/completions, GET /v1/models, GET /healthz, GET /readyz,
 * POST /feedback and /v1/feedback, GET /stats. Unknown path 404, wrong method
 * 405 (with Allow). Single-threaded: driven by the event loop (loop.h). */
#ifndef BANDITD_HTTP_H
#define BANDITD_HTTP_H

#include <stddef.h>
#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/router.h"
#include "banditd/upstream.h"

struct metrics;
struct metrics_banditd;
struct state;
struct state_redis;

typedef struct http_server http_server;

struct http_deps {
    const struct config *cfg; /* borrowed; must outlive the server */
    router *rt;               /* borrowed */
    decisions *ds;            /* borrowed */
    upstream *up;             /* borrowed */
    /* Optional (NULL = no /metrics): the registry served on GET /metrics and
     * the banditd catalogue observed on the request path (both borrowed). */
    struct metrics *metrics;
    struct metrics_banditd *mcat;
    /* Optional (NULL = in memory only): durable state (state.h). Decisions
     * are persisted and /feedback answers after its commit. */
    struct state *state;
    /* Optional (NULL = none): shared state of replicas in Redis
     * (state_redis.h, docs/scale-out.md); excludes state. */
    struct state_redis *rstate;
};

/* Bind host:port (port 0 = any free port; SO_REUSEADDR) and start MHD with no
 * thread of its own. Each arm's API key is read from its api_key_env once,
 * here, and kept in memory only. Returns 0 and *out, or BD_ERR_IO/BD_ERR_NOMEM
 * with a message in err. */
int http_start(const struct http_deps *deps, const char *host, int port, http_server **out,
               char *err, size_t errlen);
/* The bound TCP port. */
int http_port(const http_server *s);
/* MHD's epoll fd, for the loop's poll. */
int http_epoll_fd(const http_server *s);
/* MHD's timeout in ms, -1 = none. */
long http_timeout_ms(http_server *s);
/* Process ready connections (MHD_run). */
void http_run(http_server *s);
/* Requests alive (request states; idle keep-alive connections have none).
 * Graceful shutdown waits for this to reach 0. */
size_t http_active(const http_server *s);
/* ---- operations (reload, graceful shutdown) ------------------------------
 * Ownership during a reload: the server holds a refcounted *generation*
 * {config, per-arm URLs and keys, metrics arm indices}. Every request takes
 * a reference to the current generation when it is routed and uses that
 * generation's arm table until it completes; the router and the decision
 * store always use the CURRENT arm numbering, and a request that spans a
 * reload translates its arm by name (an arm removed meanwhile is simply not
 * observed). A generation is freed when its last request completes. */

/* The config the server currently runs with (borrowed; valid until the next
 * http_reconfigure or http_destroy). */
const struct config *http_config(const http_server *s);
/* Switch to newcfg (ownership passes to the server on success only):
 * builds the new generation (keys from the environment), reconfigures the
 * router (router_reconfigure: learned state kept by arm name), renumbers the
 * pending decisions, adds metric series for new arms, then swaps. The caller
 * checked restart-only fields (listen, router.dim, store.path). Returns 0,
 * or BD_ERR_INVALID / BD_ERR_NOMEM with a message in err; nothing changed. */
int http_reconfigure(http_server *s, struct config *newcfg, char *err, size_t errlen);
/* Hook run by POST /admin/reload (on the loop thread): 0 on success, else a
 * negative bd_err with a message in err. */
typedef int (*http_reload_fn)(void *ud, char *err, size_t errlen);
void http_set_reload_hook(http_server *s, http_reload_fn fn, void *ud);
/* Graceful shutdown, step 1: stop accepting connections (MHD_quiesce_daemon,
 * the listening socket is closed) and answer 503 + Connection: close to new
 * requests on open keep-alive connections. Requests in flight continue.
 * Idempotent. */
void http_quiesce(http_server *s);

/* Forget deps.state (it is being closed): from now on decisions are kept in
 * memory only and /feedback takes the synchronous path. */
void http_detach_state(http_server *s);

/* Resume every suspended connection, stop MHD (which completes every request
 * and cancels its upstream call) and free everything. NULL is a no-op. */
void http_destroy(http_server *s);

#endif
