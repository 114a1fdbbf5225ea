/* reload — live reconfiguration from the config file (see reload.h). */
#include "banditd/reload.h"
#include "banditd/err.h"
#include "banditd/log.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

int reload_check_restart_fields(const struct config *running, const struct config *next,
                                int listen_fixed, char *err, size_t errlen)
{
    assert(running && next);
    if (!listen_fixed && (strcmp(running->listen_host, next->listen_host) != 0 ||
                          running->listen_port != next->listen_port)) {
        snprintf(err, errlen,
                 "listen changed (%s:%d -> %s:%d): needs a restart; config not reloaded",
                 running->listen_host, running->listen_port, next->listen_host, next->listen_port);
        return BD_ERR_INVALID;
    }
    if (running->router.dim != next->router.dim) {
        snprintf(err, errlen, "router.dim changed (%d -> %d): needs a restart; config not reloaded",
                 running->router.dim, next->router.dim);
        return BD_ERR_INVALID;
    }
    if (running->router.text_weight != next->router.text_weight) {
        snprintf(err, errlen,
                 "router.text_weight changed (%g -> %g): the learned models are in the old "
                 "feature space; needs a restart; config not reloaded",
                 running->router.text_weight, next->router.text_weight);
        return BD_ERR_INVALID;
    }
    if (strcmp(running->store.path, next->store.path) != 0) {
        snprintf(err, errlen, "store.path changed: needs a restart; config not reloaded");
        return BD_ERR_INVALID;
    }
    return BD_OK;
}

/* Settings read once at start: a change is logged and ignored. */
static void warn_fixed_fields(const struct config *a, const struct config *b)
{
    if (a->limits.max_connections != b->limits.max_connections)
        log_emit(LOG_WARN, "reload: limits.max_connections needs a restart; keeping the old value",
                 NULL);
    if (a->limits.connection_timeout_s != b->limits.connection_timeout_s)
        log_emit(LOG_WARN,
                 "reload: limits.connection_timeout_s needs a restart; keeping the old value",
                 NULL);
    if (a->feedback.ttl_s != b->feedback.ttl_s ||
        a->feedback.max_pending != b->feedback.max_pending)
        log_emit(LOG_WARN,
                 "reload: feedback.ttl_s/max_pending need a restart; keeping the old values", NULL);
}

int reload_from_file(http_server *hs, const char *path, int listen_fixed, char *err, size_t errlen)
{
    assert(hs && path);
    struct config *next = NULL;
    char m[512];
    int rc = config_load_file(path, &next, m, sizeof m);
    if (rc != BD_OK) {
        snprintf(err, errlen, "config not reloaded: %s", m);
        return rc;
    }
    const struct config *cur = http_config(hs);
    rc = reload_check_restart_fields(cur, next, listen_fixed, err, errlen);
    if (rc != BD_OK) {
        config_destroy(next);
        return rc;
    }
    int kept = 0, added = 0;
    for (size_t i = 0; i < next->n_arms; i++) {
        if (config_arm_index(cur, next->arms[i].name) >= 0)
            kept++;
        else
            added++;
    }
    int removed = (int)cur->n_arms - kept;
    int log_file_changed = strcmp(cur->log.file, next->log.file) != 0;
    warn_fixed_fields(cur, next);
    rc = http_reconfigure(hs, next, m, sizeof m);
    if (rc != BD_OK) {
        config_destroy(next);
        snprintf(err, errlen, "config not reloaded: %s", m);
        return rc;
    }
    /* next is now owned by hs (and is the running config). */
    log_set_level(next->log.level);
    if (log_file_changed && log_open(next->log.file) != BD_OK)
        log_msgf(LOG_WARN, "reload: cannot open log file %s; logging where it did", next->log.file);
    char f[160];
    snprintf(f, sizeof f, "\"arms\":%zu,\"kept\":%d,\"added\":%d,\"removed\":%d", next->n_arms,
             kept, added, removed);
    log_emit(LOG_INFO, "config reloaded", f);
    return BD_OK;
}
