/* upstream — forwarding through libcurl's multi interface (see upstream.h). */
#include "banditd/upstream.h"
#include "banditd/err.h"
#include "banditd/util.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#define UPSTREAM_MAX_EVENTS 512
#define UPSTREAM_POOL_MAX 64 /* finished calls kept for reuse (easy handle + headers) */
/* libcurl 7.88 (checked: curl -v) asks for a 100-continue for POST bodies
 * above 1 MiB only; older ones did above 1 KiB. */
#define UPSTREAM_EXPECT_MIN ((size_t)1024 * 1024)
#define UPSTREAM_EXPECT_1MIB_SINCE 0x075800 /* 7.88.0 */

struct upstream_call {
    upstream *u;
    CURL *easy;
    struct curl_slist *headers;
    char *hdr_key;  /* api key `headers` were built for ("" none); owned */
    int hdr_stream; /* and the stream flag */
    int hdr_expect; /* and whether "Expect:" is in it */
    int configured; /* easy has the options every call shares (set_static_opts) */
    int clean;      /* the transfer ended well, never paused: no reset needed */
    int was_paused; /* write_cb paused the transfer once */
    struct upstream_cbs cb;
    void *ud;
    long status; /* status of the latest status line */
    char content_type[128];
    int headers_done;
    double t_start_ms;
    double t_first_byte_ms;  /* <0 until the first body byte */
    double ttfb_deadline_ms; /* <0 none or first byte seen */
    long retry_after_ms;     /* latest Retry-After, -1 none */
    struct upstream_call *prev, *next;
};

struct upstream_timer {
    double due_ms;
    void (*fn)(void *ud);
    void *ud;
    struct upstream_timer *next;
};

/* Socket-driven multi interface: curl tells us (SOCKETFUNCTION) which sockets
 * to watch and when to call back (TIMERFUNCTION); we watch them in our own
 * epoll set together with the caller's extra fd (MHD's epoll fd) and an
 * eventfd for wakeups, and hand curl only the sockets that fired. Each loop
 * iteration thus costs O(active sockets), not O(transfers): with
 * curl_multi_perform every running transfer would be polled on every pass. */
struct upstream {
    CURLM *multi;
    struct upstream_call *calls; /* live calls, doubly linked */
    size_t n_calls;
    int epfd;                 /* curl's sockets + extra fd + wakefd */
    int wakefd;               /* eventfd */
    int extra_fd;             /* registered extra fd, -1 none */
    double timer_deadline_ms; /* curl's timer, <0 none */
    struct epoll_event ev[UPSTREAM_MAX_EVENTS];
    int n_ev;                      /* events from the last upstream_poll */
    double ttfb_next_ms;           /* earliest ttfb deadline of any call, <0 none */
    struct upstream_timer *timers; /* pending one-shot timers (few) */
    struct upstream_call *pool;    /* finished calls for reuse, linked by next */
    size_t n_pool;
    unsigned char *fds; /* per fd: FD_* registration state of curl's sockets */
    size_t n_fds;
    int no_proxy_env; /* no proxy variable set at start: tell curl, it skips the lookups */
    int expect_1mib;  /* this libcurl adds "Expect: 100-continue" only above 1 MiB */
};

/* Registration of curl's sockets in u->epfd, per fd number. Connection
 * sockets (opened through open_cb, closed through close_cb) stay registered
 * when curl stops watching them (CURL_POLL_REMOVE as the connection returns to
 * curl's cache): the next transfer on the same connection then asks for the
 * same events again and needs no epoll_ctl at all, where DEL + ADD cost two
 * system calls per request. A cached connection that becomes readable (the
 * upstream closed it) is deleted when its event arrives. Other sockets curl
 * hands us (the threaded resolver's socket pair, opened and closed behind our
 * back) are registered and deleted eagerly, as before. */
#define FD_IN_SET 0x01u /* in u->epfd, with the events below */
#define FD_EV_IN 0x02u
#define FD_EV_OUT 0x04u
#define FD_WANTED 0x08u /* curl watches it now */
#define FD_CONN 0x10u   /* a connection socket (open_cb): close_cb clears it */

static unsigned char *fd_state(upstream *u, curl_socket_t s)
{
    if (s < 0)
        return NULL;
    if ((size_t)s >= u->n_fds) {
        size_t n = u->n_fds ? u->n_fds : 64;
        while (n <= (size_t)s)
            n *= 2;
        unsigned char *f = realloc(u->fds, n);
        if (!f)
            return NULL;
        memset(f + u->n_fds, 0, n - u->n_fds);
        u->fds = f;
        u->n_fds = n;
    }
    return &u->fds[s];
}

static curl_socket_t open_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)purpose;
    upstream *u = clientp;
    curl_socket_t s = socket(a->family, a->socktype, a->protocol);
    if (s == CURL_SOCKET_BAD)
        return s;
    unsigned char *st = fd_state(u, s);
    if (!st) {
        close(s);
        return CURL_SOCKET_BAD;
    }
    *st = FD_CONN; /* a fresh file: whatever the number meant before is gone */
    return s;
}

static int close_cb(void *clientp, curl_socket_t s)
{
    upstream *u = clientp;
    if (s >= 0 && (size_t)s < u->n_fds)
        u->fds[s] = 0; /* close() takes it out of the epoll set */
    return close(s);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    upstream *u = userp;
    unsigned char *st = fd_state(u, s);
    if (!st)
        return -1;
    if (what == CURL_POLL_REMOVE) {
        if (*st & FD_CONN) {
            *st &= (unsigned char)~FD_WANTED; /* lazily: see FD_CONN */
        } else {
            epoll_ctl(u->epfd, EPOLL_CTL_DEL, s, NULL); /* may already be closed: fine */
            *st = 0;
        }
        return 0;
    }
    unsigned ev = (what & CURL_POLL_IN ? FD_EV_IN : 0u) | (what & CURL_POLL_OUT ? FD_EV_OUT : 0u);
    if ((*st & FD_IN_SET) && (*st & (FD_EV_IN | FD_EV_OUT)) == ev) {
        *st |= FD_WANTED;
        return 0;
    }
    struct epoll_event e = {0};
    e.events = (ev & FD_EV_IN ? EPOLLIN : 0u) | (ev & FD_EV_OUT ? EPOLLOUT : 0u);
    e.data.fd = s;
    int ok = 0;
    if (*st & FD_IN_SET) {
        ok = epoll_ctl(u->epfd, EPOLL_CTL_MOD, s, &e) == 0;
        if (!ok && errno != ENOENT) /* ENOENT: closed and reused behind our back */
            return -1;
    }
    if (!ok && epoll_ctl(u->epfd, EPOLL_CTL_ADD, s, &e) != 0 &&
        (errno != EEXIST || epoll_ctl(u->epfd, EPOLL_CTL_MOD, s, &e) != 0))
        return -1;
    *st = (unsigned char)((*st & FD_CONN) | FD_IN_SET | FD_WANTED | ev);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    upstream *u = userp;
    u->timer_deadline_ms = timeout_ms < 0 ? -1.0 : util_now_ms() + (double)timeout_ms;
    return 0;
}

upstream *upstream_create(long max_total, long max_host)
{
    upstream *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->extra_fd = -1;
    u->timer_deadline_ms = -1;
    u->ttfb_next_ms = -1;
    u->epfd = epoll_create1(EPOLL_CLOEXEC);
    u->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    u->multi = curl_multi_init();
    struct epoll_event we = {.events = EPOLLIN, .data.fd = u->wakefd};
    if (!u->multi || u->epfd < 0 || u->wakefd < 0 ||
        epoll_ctl(u->epfd, EPOLL_CTL_ADD, u->wakefd, &we) != 0) {
        if (u->multi)
            curl_multi_cleanup(u->multi);
        if (u->epfd >= 0)
            close(u->epfd);
        if (u->wakefd >= 0)
            close(u->wakefd);
        free(u);
        return NULL;
    }
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, max_total < 0 ? 0L : max_total);
    curl_multi_setopt(u->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host < 0 ? 0L : max_host);
    /* Keep enough idle connections cached for reuse under load. */
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, 1024L);
    static const char *const proxy_vars[] = {"http_proxy",  "HTTP_PROXY", "https_proxy",
                                             "HTTPS_PROXY", "all_proxy",  "ALL_PROXY"};
    const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
    u->expect_1mib = cv && cv->version_num >= UPSTREAM_EXPECT_1MIB_SINCE;
    u->no_proxy_env = 1;
    for (size_t i = 0; i < sizeof proxy_vars / sizeof proxy_vars[0]; i++) {
        const char *v = getenv(proxy_vars[i]);
        if (v && v[0])
            u->no_proxy_env = 0;
    }
    return u;
}

static void call_unlink(upstream *u, upstream_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        u->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    assert(u->n_calls > 0);
    u->n_calls--;
}

static void call_destroy(upstream_call *c)
{
    curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    free(c->hdr_key);
    free(c);
}

/* A finished or cancelled call: its easy handle (reset, so no option of this
 * call leaks into the next) and header list go back to the pool. Connections
 * live in the multi handle's cache either way. */
static void call_unget(upstream *u, upstream_call *c);

static void call_free(upstream *u, upstream_call *c)
{
    call_unlink(u, c);
    curl_multi_remove_handle(u->multi, c->easy);
    call_unget(u, c);
}

/* A call from the pool or a new one; NULL on OOM. Its headers (if any) are
 * those of an earlier call and are checked by call_headers. */
static upstream_call *call_get(upstream *u)
{
    upstream_call *c = u->pool;
    if (c) {
        u->pool = c->next;
        u->n_pool--;
    } else {
        c = calloc(1, sizeof *c);
        if (!c)
            return NULL;
        c->easy = curl_easy_init();
        if (!c->easy) {
            free(c);
            return NULL;
        }
    }
    CURL *easy = c->easy;
    struct curl_slist *headers = c->headers;
    char *hdr_key = c->hdr_key;
    int hdr_stream = c->hdr_stream;
    int hdr_expect = c->hdr_expect;
    int configured = c->configured;
    memset(c, 0, sizeof *c);
    c->easy = easy;
    c->headers = headers;
    c->hdr_key = hdr_key;
    c->hdr_stream = hdr_stream;
    c->hdr_expect = hdr_expect;
    c->configured = configured;
    return c;
}

/* Make c->headers the request headers for (stream, api_key, expect),
 * reusing the pooled list when it was built for the same. "Expect:" (an
 * empty value) stops curl's "Expect: 100-continue" and its wait for a 100;
 * expect 0 leaves it out where curl would not add one anyway (each custom
 * header costs curl ~2,500 instructions per request). 0 or BD_ERR_NOMEM. */
static int call_headers(upstream_call *c, int stream, const char *api_key, int expect)
{
    const char *key = api_key ? api_key : "";
    if (c->headers && c->hdr_key && c->hdr_stream == stream && c->hdr_expect == expect &&
        strcmp(c->hdr_key, key) == 0)
        return BD_OK;
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    free(c->hdr_key);
    c->hdr_key = NULL;
    struct curl_slist *h = NULL, *t;
    const char *hdrs[] = {"Content-Type: application/json",
                          stream ? "Accept: text/event-stream" : "Accept: application/json",
                          "Expect:"};
    size_t nh = expect ? 3 : 2; /* "Expect:" last */
    for (size_t i = 0; i < nh; i++) {
        t = curl_slist_append(h, hdrs[i]);
        if (!t)
            goto nomem;
        h = t;
    }
    if (key[0]) {
        struct util_buf ab;
        util_buf_init(&ab, 8192);
        if (util_buf_printf(&ab, "Authorization: Bearer %s", key) != 0) {
            util_buf_free(&ab);
            goto nomem;
        }
        t = curl_slist_append(h, ab.data);
        /* Scrub the key from our temporary copy. */
        memset(ab.data, 0, ab.len);
        util_buf_free(&ab);
        if (!t)
            goto nomem;
        h = t;
    }
    c->hdr_key = strdup(key);
    if (!c->hdr_key)
        goto nomem;
    c->headers = h;
    c->hdr_stream = stream;
    c->hdr_expect = expect;
    return BD_OK;
nomem:
    curl_slist_free_all(h);
    return BD_ERR_NOMEM;
}

static void call_pool(upstream *u, upstream_call *c)
{
    c->next = u->pool;
    u->pool = c;
    u->n_pool++;
}

/* Back to the pool (or destroyed when it is full); the call is in no list
 * and not in the multi handle: after a failed start, or from call_free. */
static void call_unget(upstream *u, upstream_call *c)
{
    if (u->n_pool >= UPSTREAM_POOL_MAX) {
        call_destroy(c);
        return;
    }
    /* After a transfer that ended well the handle is reused as it is, as
     * with curl_easy_perform on one handle: each option a call sets is set
     * again by the next one and the shared ones stay (~5,000 instructions of
     * reset and setopt per request). Anything else (an error, a pause, a
     * cancel, a refused start) is reset to a fresh handle. */
    if (!c->clean) {
        curl_easy_reset(c->easy);
        c->configured = 0;
    }
    call_pool(u, c);
}

void upstream_destroy(upstream *u)
{
    if (!u)
        return;
    while (u->calls)
        call_free(u, u->calls);
    while (u->timers) {
        struct upstream_timer *t = u->timers;
        u->timers = t->next;
        free(t);
    }
    while (u->pool) {
        upstream_call *c = u->pool;
        u->pool = c->next;
        call_destroy(c);
    }
    curl_multi_cleanup(u->multi); /* closes cached connections through close_cb */
    close(u->epfd);
    close(u->wakefd);
    free(u->fds);
    free(u);
}

static size_t header_cb(char *data, size_t size, size_t nmemb, void *p)
{
    upstream_call *c = p;
    size_t len = size * nmemb;
    c->ttfb_deadline_ms = -1; /* the first byte is here */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        /* A new status line (there may be 1xx interim responses first). */
        const char *sp = memchr(data, ' ', len);
        c->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        c->content_type[0] = '\0';
        c->retry_after_ms = -1;
        return len;
    }
    static const char ra[] = "retry-after:";
    if (len > sizeof ra - 1 && len < 64 && strncasecmp(data, ra, sizeof ra - 1) == 0) {
        char v[64];
        memcpy(v, data + sizeof ra - 1, len - (sizeof ra - 1));
        v[len - (sizeof ra - 1)] = '\0';
        char *q = v, *end;
        while (*q == ' ' || *q == '\t')
            q++;
        errno = 0;
        long secs = strtol(q, &end, 10);
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
            end++;
        if (end != q && *end == '\0' && errno == 0 && secs >= 0 && secs <= 86400)
            c->retry_after_ms = secs * 1000;
        return len;
    }
    static const char ct[] = "content-type:";
    if (len > sizeof ct - 1 && strncasecmp(data, ct, sizeof ct - 1) == 0) {
        size_t i = sizeof ct - 1;
        while (i < len && (data[i] == ' ' || data[i] == '\t'))
            i++;
        size_t j = len;
        while (j > i && isspace((unsigned char)data[j - 1]))
            j--;
        size_t n = j - i;
        if (n >= sizeof c->content_type)
            n = sizeof c->content_type - 1;
        memcpy(c->content_type, data + i, n);
        c->content_type[n] = '\0';
        return len;
    }
    if ((len == 2 && data[0] == '\r' && data[1] == '\n') || (len == 1 && data[0] == '\n')) {
        /* End of a header block; 1xx blocks are followed by the real one. */
        if (c->status >= 200 && !c->headers_done) {
            c->headers_done = 1;
            if (c->cb.on_headers)
                c->cb.on_headers(c->ud, c->status, c->content_type);
        }
    }
    return len;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *p)
{
    upstream_call *c = p;
    size_t len = size * nmemb;
    if (c->t_first_byte_ms < 0 && len > 0)
        c->t_first_byte_ms = util_now_ms();
    if (!c->headers_done) {
        /* HTTP/0.9 or a server that sends no blank line: report what we have. */
        c->headers_done = 1;
        if (c->cb.on_headers)
            c->cb.on_headers(c->ud, c->status, c->content_type);
    }
    size_t r = c->cb.on_data(c->ud, data, len);
    if (r == UPSTREAM_PAUSE) {
        c->was_paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    return r;
}

/* The options every call sets alike (callbacks get c, which keeps its easy
 * handle for life). 0 or BD_ERR_UPSTREAM. */
static int set_static_opts(upstream *u, upstream_call *c)
{
    CURL *e = c->easy;
    int bad = 0;
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, c) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, c) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, c) != CURLE_OK;
    /* Relay bytes exactly as sent: no transparent decoding. */
    bad |= curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, u) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, u) != CURLE_OK;
    if (u->no_proxy_env) /* "" = no proxy: curl then skips its environment lookups */
        bad |= curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK;
    return bad ? BD_ERR_UPSTREAM : BD_OK;
}

int upstream_start(upstream *u, const struct upstream_req *rq, const struct upstream_cbs *cb,
                   void *ud, upstream_call **out)
{
    assert(u && rq && rq->url && cb && cb->on_data && cb->on_done && out);
    upstream_call *c = call_get(u);
    if (!c)
        return BD_ERR_NOMEM;
    c->u = u;
    c->cb = *cb;
    c->ud = ud;
    c->t_first_byte_ms = -1;
    c->ttfb_deadline_ms = -1;
    c->retry_after_ms = -1;
    int expect = !u->expect_1mib || rq->body_len > UPSTREAM_EXPECT_MIN;
    if (call_headers(c, rq->stream != 0, rq->api_key, expect) != BD_OK) {
        call_unget(u, c);
        return BD_ERR_NOMEM;
    }
    CURL *e = c->easy;
    int bad = 0;
    if (!c->configured) {
        bad |= set_static_opts(u, c) != BD_OK;
        c->configured = !bad;
    }
    /* What differs between calls; everything else is set_static_opts'. */
    bad |= curl_easy_setopt(e, CURLOPT_URL, rq->url) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, rq->connect_timeout_ms) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, rq->timeout_ms) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len) != CURLE_OK;
    if (bad)
        goto refused;
    c->t_start_ms = util_now_ms();
    if (rq->ttfb_timeout_ms > 0) {
        c->ttfb_deadline_ms = c->t_start_ms + (double)rq->ttfb_timeout_ms;
        if (u->ttfb_next_ms < 0 || c->ttfb_deadline_ms < u->ttfb_next_ms)
            u->ttfb_next_ms = c->ttfb_deadline_ms;
    }
    c->next = u->calls;
    if (u->calls)
        u->calls->prev = c;
    u->calls = c;
    u->n_calls++;
    if (curl_multi_add_handle(u->multi, e) != CURLM_OK) {
        call_unlink(u, c);
        goto refused;
    }
    *out = c;
    return BD_OK;
refused:
    call_unget(u, c);
    return BD_ERR_UPSTREAM;
}

void upstream_cancel(upstream *u, upstream_call *c)
{
    if (c)
        call_free(u, c);
}

void upstream_resume(upstream_call *c)
{
    curl_easy_pause(c->easy, CURLPAUSE_CONT);
}

long upstream_retry_after_ms(const upstream_call *c)
{
    return c->retry_after_ms;
}

int upstream_timer_start(upstream *u, double delay_ms, void (*fn)(void *ud), void *ud,
                         upstream_timer **out)
{
    assert(u && fn && out);
    struct upstream_timer *t = calloc(1, sizeof *t);
    if (!t)
        return BD_ERR_NOMEM;
    t->due_ms = util_now_ms() + (delay_ms > 0 ? delay_ms : 0);
    t->fn = fn;
    t->ud = ud;
    t->next = u->timers;
    u->timers = t;
    *out = t;
    return BD_OK;
}

void upstream_timer_cancel(upstream *u, upstream_timer *t)
{
    if (!t)
        return;
    for (struct upstream_timer **pp = &u->timers; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            free(t);
            return;
        }
    }
    assert(!"upstream_timer_cancel: unknown timer");
}

/* Run due timers, one at a time (a callback may add or cancel timers). */
static void run_timers(upstream *u)
{
    double now = util_now_ms();
    for (;;) {
        struct upstream_timer **pp = &u->timers;
        while (*pp && (*pp)->due_ms > now)
            pp = &(*pp)->next;
        struct upstream_timer *t = *pp;
        if (!t)
            return;
        *pp = t->next;
        void (*fn)(void *) = t->fn;
        void *ud = t->ud;
        free(t);
        fn(ud);
    }
}

/* End calls whose first byte is overdue, one at a time (on_done may start or
 * cancel calls), then recompute the earliest remaining deadline. */
static void expire_ttfb(upstream *u)
{
    double now = util_now_ms();
    if (u->ttfb_next_ms < 0 || now < u->ttfb_next_ms)
        return;
    for (;;) {
        upstream_call *c = u->calls;
        while (c && !(c->ttfb_deadline_ms >= 0 && c->ttfb_deadline_ms <= now))
            c = c->next;
        if (!c)
            break;
        struct upstream_cbs cb = c->cb;
        void *ud = c->ud;
        call_free(u, c);
        cb.on_done(ud, BD_ERR_TIMEOUT, "upstream time to first byte exceeded");
    }
    u->ttfb_next_ms = -1;
    for (upstream_call *c = u->calls; c; c = c->next)
        if (c->ttfb_deadline_ms >= 0 &&
            (u->ttfb_next_ms < 0 || c->ttfb_deadline_ms < u->ttfb_next_ms))
            u->ttfb_next_ms = c->ttfb_deadline_ms;
}

double upstream_ttfb_ms(const upstream_call *c)
{
    return c->t_first_byte_ms < 0 ? -1.0 : c->t_first_byte_ms - c->t_start_ms;
}

int upstream_poll(upstream *u, int extra_fd, int timeout_ms)
{
    if (extra_fd != u->extra_fd) {
        if (u->extra_fd >= 0)
            epoll_ctl(u->epfd, EPOLL_CTL_DEL, u->extra_fd, NULL);
        u->extra_fd = -1;
        if (extra_fd >= 0) {
            struct epoll_event e = {.events = EPOLLIN, .data.fd = extra_fd};
            if (epoll_ctl(u->epfd, EPOLL_CTL_ADD, extra_fd, &e) != 0)
                return BD_ERR_IO;
            u->extra_fd = extra_fd;
        }
    }
    if (timeout_ms < 0)
        timeout_ms = 0;
    int n = epoll_wait(u->epfd, u->ev, UPSTREAM_MAX_EVENTS, timeout_ms);
    if (n < 0) {
        u->n_ev = 0;
        return errno == EINTR ? BD_OK : BD_ERR_IO;
    }
    u->n_ev = n;
    return BD_OK;
}

static void drain_done(upstream *u)
{
    CURLMsg *m;
    int left = 0;
    while ((m = curl_multi_info_read(u->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        upstream_call *c = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        assert(c && c->easy == m->easy_handle);
        CURLcode res = m->data.result;
        int result = BD_OK;
        const char *msg = "ok";
        if (res == CURLE_OPERATION_TIMEDOUT) {
            result = BD_ERR_TIMEOUT;
            msg = "upstream timed out";
        } else if (res != CURLE_OK) {
            result = BD_ERR_UPSTREAM;
            msg = curl_easy_strerror(res);
        }
        if (result == BD_OK && !c->headers_done) {
            c->headers_done = 1;
            if (c->cb.on_headers)
                c->cb.on_headers(c->ud, c->status, c->content_type);
        }
        c->clean = res == CURLE_OK && !c->was_paused;
        struct upstream_cbs cb = c->cb;
        void *ud = c->ud;
        /* Free first: on_done may start a new call or free its owner. */
        call_free(u, c);
        cb.on_done(ud, result, msg);
    }
}

int upstream_perform(upstream *u)
{
    int running = 0;
    for (int i = 0; i < u->n_ev; i++) {
        int fd = u->ev[i].data.fd;
        uint32_t ev = u->ev[i].events;
        if (fd == u->extra_fd)
            continue;
        if (fd == u->wakefd) {
            uint64_t v;
            while (read(u->wakefd, &v, sizeof v) > 0) {
            }
            continue;
        }
        if ((size_t)fd < u->n_fds && !(u->fds[fd] & FD_WANTED)) {
            /* An idle cached connection woke up (the upstream closed it, most
             * likely): stop watching it; curl checks it before any reuse. */
            if (u->fds[fd] & FD_IN_SET)
                epoll_ctl(u->epfd, EPOLL_CTL_DEL, fd, NULL);
            u->fds[fd] &= (unsigned char)FD_CONN;
            continue;
        }
        int mask = (ev & EPOLLIN ? CURL_CSELECT_IN : 0) | (ev & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                   (ev & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
        if (curl_multi_socket_action(u->multi, fd, mask, &running) != CURLM_OK)
            return BD_ERR_IO;
    }
    u->n_ev = 0;
    if (u->timer_deadline_ms >= 0 && util_now_ms() >= u->timer_deadline_ms) {
        u->timer_deadline_ms = -1; /* curl re-arms it from inside socket_action */
        if (curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running) != CURLM_OK)
            return BD_ERR_IO;
    }
    drain_done(u);
    expire_ttfb(u);
    run_timers(u);
    return BD_OK;
}

long upstream_timeout_ms(upstream *u)
{
    double due = u->timer_deadline_ms;
    if (u->ttfb_next_ms >= 0 && (due < 0 || u->ttfb_next_ms < due))
        due = u->ttfb_next_ms;
    for (const struct upstream_timer *t = u->timers; t; t = t->next)
        if (due < 0 || t->due_ms < due)
            due = t->due_ms;
    if (due < 0)
        return -1;
    double left = due - util_now_ms();
    return left <= 0 ? 0 : (long)left + 1;
}

void upstream_wakeup(upstream *u)
{
    uint64_t one = 1;
    ssize_t w = write(u->wakefd, &one, sizeof one); /* async-signal-safe */
    (void)w;
}

size_t upstream_inflight(const upstream *u)
{
    return u->n_calls;
}
