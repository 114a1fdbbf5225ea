/* loop — the one event loop: libmicrohttpd's epoll fd + the libcurl multi
 * handle + periodic chores (decision expiry). See docs/architecture.md.
 *
 * One thread runs loop_run(); every MHD callback, curl callback, routing and
 * learning step happens on it, so none of them takes a lock. */
#ifndef BANDITD_LOOP_H
#define BANDITD_LOOP_H

#include "banditd/decisions.h"
#include "banditd/http.h"
#include "banditd/upstream.h"

typedef struct loop loop;

/* Borrows all three (they must outlive the loop). ds may be NULL. NULL on OOM. */
loop *loop_create(http_server *h, upstream *u, decisions *ds);
void loop_destroy(loop *l);

/* Run until loop_stop(). Returns 0, or BD_ERR_IO if polling failed. */
int loop_run(loop *l);
/* Ask loop_run to return soon. Async-signal-safe (a flag + upstream_wakeup). */
void loop_stop(loop *l);
/* Reload hook (SIGHUP): run on the loop thread by loop_run / loop_drain after
 * loop_request_reload. */
typedef void (*loop_reload_fn)(void *ud);
void loop_set_reload_hook(loop *l, loop_reload_fn fn, void *ud);
/* Async-signal-safe: a flag + upstream_wakeup. */
void loop_request_reload(loop *l);
/* Graceful shutdown: keep serving until http_active() is 0 (every request
 * answered, streams included) or the monotonic deadline (util_now_ms clock)
 * passes. Returns 0 (drained), BD_ERR_TIMEOUT or BD_ERR_IO. */
int loop_drain(loop *l, double deadline_ms);
/* Durable state (state.h; NULL = none): each iteration runs state_poll
 * (store callbacks, snapshots, purge) after curl and before MHD, so feedback
 * answers whose commit just finished are sent in the same iteration. */
struct state;
void loop_set_state(loop *l, struct state *st);
/* The same for the shared Redis state (state_redis.h), or NULL. */
struct state_redis;
void loop_set_state_redis(loop *l, struct state_redis *rst);
/* One iteration with at most max_wait_ms of waiting (for tests). */
int loop_step(loop *l, int max_wait_ms);

#endif
