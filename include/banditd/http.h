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

typedef struct http_server http_server;

struct http_deps {
    const struct config *cfg; /* borrowed; must outlive the server */
    router *rt;               /* borrowed */
    decisions *ds;            /* borrowed */
    upstream *up;             /* borrowed */
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
/* Connections currently open (request states alive). */
size_t http_active(const http_server *s);
/* Resume every suspended connection, stop MHD (which completes every request
 * and cancels its upstream call) and free everything. NULL is a no-op. */
void http_destroy(http_server *s);

#endif
