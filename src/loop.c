/* loop — one thread drives libmicrohttpd (external epoll) and the libcurl multi
 * handle (see loop.h and docs/architecture.md). */
#include "banditd/loop.h"
#include "banditd/err.h"
#include "banditd/log.h"
#include "banditd/state.h"
#include "banditd/state_redis.h"
#include "banditd/util.h"

#include <assert.h>
#include <signal.h>
#include <stdlib.h>

#define LOOP_MAX_WAIT_MS 1000
#define LOOP_EXPIRE_BUDGET 64

struct loop {
    http_server *http;
    upstream *up;
    decisions *ds;
    volatile sig_atomic_t stop;
    struct state *st;             /* durable state, or NULL */
    struct state_redis *rst;      /* shared Redis state, or NULL */
    volatile sig_atomic_t reload; /* SIGHUP seen, hook not run yet */
    loop_reload_fn reload_fn;
    void *reload_ud;
};

loop *loop_create(http_server *h, upstream *u, decisions *ds)
{
    assert(h && u);
    loop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->http = h;
    l->up = u;
    l->ds = ds;
    return l;
}

void loop_destroy(loop *l)
{
    free(l);
}

void loop_set_state(loop *l, struct state *st)
{
    l->st = st;
}

void loop_set_state_redis(loop *l, struct state_redis *rst)
{
    l->rst = rst;
}

void loop_stop(loop *l)
{
    l->stop = 1;
    upstream_wakeup(l->up);
}

int loop_step(loop *l, int max_wait_ms)
{
    long t_http = http_timeout_ms(l->http);
    long t_curl = upstream_timeout_ms(l->up);
    long t = max_wait_ms;
    if (t_http >= 0 && t_http < t)
        t = t_http;
    if (t_curl >= 0 && t_curl < t)
        t = t_curl;
    if (t < 0)
        t = 0;
    if (upstream_poll(l->up, http_epoll_fd(l->http), (int)t) != BD_OK)
        return BD_ERR_IO;
    /* curl first: its callbacks may resume connections, which MHD_run then serves. */
    if (upstream_perform(l->up) != BD_OK)
        return BD_ERR_IO;
    if (l->st)
        state_poll(l->st, util_wall_s()); /* store callbacks may resume connections too */
    if (l->rst)
        state_redis_poll(l->rst, util_wall_s()); /* stream events + Redis callbacks */
    http_run(l->http);
    if (l->ds)
        decisions_expire(l->ds, util_wall_s(), LOOP_EXPIRE_BUDGET);
    return BD_OK;
}

void loop_set_reload_hook(loop *l, loop_reload_fn fn, void *ud)
{
    l->reload_fn = fn;
    l->reload_ud = ud;
}

void loop_request_reload(loop *l)
{
    l->reload = 1;
    upstream_wakeup(l->up);
}

static void run_reload(loop *l)
{
    l->reload = 0;
    if (l->reload_fn)
        l->reload_fn(l->reload_ud);
}

int loop_drain(loop *l, double deadline_ms)
{
    while (http_active(l->http) > 0) {
        double left = deadline_ms - util_now_ms();
        if (left <= 0)
            return BD_ERR_TIMEOUT;
        if (l->reload)
            run_reload(l);
        if (loop_step(l, left < LOOP_MAX_WAIT_MS ? (int)left + 1 : LOOP_MAX_WAIT_MS) != BD_OK)
            return BD_ERR_IO;
    }
    return BD_OK;
}

int loop_run(loop *l)
{
    while (!l->stop) {
        if (l->reload)
            run_reload(l);
        if (loop_step(l, LOOP_MAX_WAIT_MS) != BD_OK) {
            log_emit(LOG_ERROR, "event loop polling failed", NULL);
            return BD_ERR_IO;
        }
    }
    return BD_OK;
}
