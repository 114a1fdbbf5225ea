/* null_proxy — the floor of banditd's stack for bench/proxy.sh (target "floor").
 *
 * A forwarder that does no work of its own: libmicrohttpd in front with the
 * flags banditd uses (external epoll, turbo, suspend/resume, no thread),
 * banditd's own libcurl module (src/upstream.c: multi handle driven by
 * curl_multi_socket_action over one epoll set that also holds MHD's epoll fd,
 * kept-alive connections, pooled easy handles, the same options and headers),
 * and the same loop step as src/loop.c. Per request: collect the POST body
 * (capped), suspend, POST it to the upstream URL, buffer the answer (capped),
 * resume, answer with the upstream's status and body as application/json. No
 * JSON, no routing, no store, no access log.
 *
 *   usage: null_proxy PORT UPSTREAM_URL     (listens on 127.0.0.1; SIGTERM stops) */
#include "banditd/err.h"
#include "banditd/upstream.h"
#include "banditd/util.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NP_MAX_BODY (4u << 20)     /* request body cap (banditd's default max_body_bytes) */
#define NP_MAX_ANSWER (8u << 20)   /* buffered upstream answer cap */
#define NP_CONN_MEMORY (16 * 1024) /* HTTP_CONN_MEMORY_LIMIT in src/http.c */
#define NP_MAX_WAIT_MS 1000

enum phase { NP_BODY, NP_UPSTREAM, NP_DONE };

struct np_req {
    struct MHD_Connection *conn;
    enum phase phase;
    int too_big;
    int suspended;
    struct util_buf body, answer;
    upstream_call *call;
    unsigned status;
    struct np_req *prev, *next; /* live requests, for shutdown */
};

static struct {
    const char *url;
    upstream *up;
    struct np_req *live;
    volatile sig_atomic_t stop;
} np;

static void on_signal(int sig)
{
    (void)sig;
    np.stop = 1;
    upstream_wakeup(np.up);
}

static void req_resume(struct np_req *r)
{
    if (r->suspended) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
    }
}

static void on_headers(void *ud, long status, const char *content_type)
{
    (void)content_type;
    struct np_req *r = ud;
    r->status = status >= 100 && status <= 999 ? (unsigned)status : 502;
}

static size_t on_data(void *ud, const char *data, size_t len)
{
    struct np_req *r = ud;
    return util_buf_append(&r->answer, data, len) == BD_OK ? len : 0; /* 0 aborts */
}

static void on_done(void *ud, int result, const char *msg)
{
    (void)msg;
    struct np_req *r = ud;
    r->call = NULL;
    if (result != BD_OK) {
        static const char err[] = "{\"error\":{\"message\":\"upstream failed\"}}";
        util_buf_reset(&r->answer);
        r->status = util_buf_append(&r->answer, err, sizeof err - 1) == BD_OK ? 502 : 500;
    }
    r->phase = NP_DONE;
    req_resume(r);
}

static const struct upstream_cbs np_cbs = {on_headers, on_data, on_done};

static enum MHD_Result respond(struct np_req *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(r->answer.len, r->answer.data, free);
    if (!resp)
        return MHD_NO;
    r->answer.data = NULL; /* MHD frees it */
    util_buf_free(&r->answer);
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(r->conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result forward(struct np_req *r)
{
    if (r->too_big) {
        r->status = 413;
        r->phase = NP_DONE;
        return respond(r);
    }
    r->status = 502; /* until on_headers says otherwise */
    struct upstream_req rq = {.url = np.url,
                              .body = r->body.data ? r->body.data : "",
                              .body_len = r->body.len,
                              .timeout_ms = 30000,
                              .connect_timeout_ms = 2000};
    if (upstream_start(np.up, &rq, &np_cbs, r, &r->call) != BD_OK)
        return MHD_NO;
    r->phase = NP_UPSTREAM;
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    return MHD_YES;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **req_cls)
{
    (void)cls;
    (void)url;
    (void)method;
    (void)version;
    struct np_req *r = *req_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->conn = conn;
        util_buf_init(&r->body, NP_MAX_BODY);
        util_buf_init(&r->answer, NP_MAX_ANSWER);
        r->next = np.live;
        if (np.live)
            np.live->prev = r;
        np.live = r;
        *req_cls = r;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!r->too_big && util_buf_append(&r->body, upload_data, *upload_data_size) != BD_OK)
            r->too_big = 1;
        *upload_data_size = 0;
        return MHD_YES;
    }
    switch (r->phase) {
    case NP_BODY:
        return forward(r);
    case NP_UPSTREAM: /* woken without news: wait again */
        r->suspended = 1;
        MHD_suspend_connection(conn);
        return MHD_YES;
    case NP_DONE:
        return respond(r);
    }
    return MHD_NO;
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct np_req *r = *req_cls;
    if (!r)
        return;
    *req_cls = NULL;
    if (r->call)
        upstream_cancel(np.up, r->call);
    if (r->prev)
        r->prev->next = r->next;
    else
        np.live = r->next;
    if (r->next)
        r->next->prev = r->prev;
    util_buf_free(&r->body);
    util_buf_free(&r->answer);
    free(r);
}

/* One pass of src/loop.c's loop_step: wait on the shared epoll set, let curl
 * act first (its callbacks resume connections), then MHD. */
static int step(struct MHD_Daemon *d, int mhd_epfd)
{
    long t = NP_MAX_WAIT_MS, tc = upstream_timeout_ms(np.up);
    MHD_UNSIGNED_LONG_LONG th = 0;
    if (MHD_get_timeout(d, &th) == MHD_YES && th < (MHD_UNSIGNED_LONG_LONG)t)
        t = (long)th;
    if (tc >= 0 && tc < t)
        t = tc;
    if (upstream_poll(np.up, mhd_epfd, (int)t) != BD_OK || upstream_perform(np.up) != BD_OK)
        return -1;
    MHD_run(d);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT UPSTREAM_URL\n", argv[0]);
        return 2;
    }
    np.url = argv[2];
    np.up = upstream_create(0, 0);
    if (!np.up)
        return 1;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        access_cb, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_LIMIT,
        10000u, MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)NP_CONN_MEMORY, MHD_OPTION_NOTIFY_COMPLETED, completed_cb, NULL,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_END);
    const union MHD_DaemonInfo *info = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!info) {
        fprintf(stderr, "null_proxy: cannot listen on 127.0.0.1:%s\n", argv[1]);
        return 1;
    }
    struct sigaction sig = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sig, NULL);
    sigaction(SIGINT, &sig, NULL);
    int rc = 0;
    while (!np.stop && rc == 0)
        rc = step(d, info->epoll_fd);
    for (struct np_req *r = np.live; r; r = r->next)
        req_resume(r);
    MHD_stop_daemon(d); /* completes (and frees) every request */
    upstream_destroy(np.up);
    return rc == 0 ? 0 : 1;
}
