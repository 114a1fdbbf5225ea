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
/* One iteration with at most max_wait_ms of waiting (for tests). */
int loop_step(loop *l, int max_wait_ms);

#endif
