/* main — command line, config load, signals, start and stop the loop. */
#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/http.h"
#include "banditd/log.h"
#include "banditd/loop.h"
#include "banditd/metrics.h"
#include "banditd/reload.h"
#include "banditd/replay.h"
#include "banditd/router.h"
#include "banditd/state.h"
#include "banditd/state_redis.h"
#include "banditd/store.h"
#include "banditd/upstream.h"
#include "banditd/util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cblas.h>
#include <curl/curl.h>

#define BANDITD_VERSION "0.1.0"

static loop *g_loop; /* for the signal handler */

static void on_signal(int sig)
{
    if (!g_loop)
        return;
    if (sig == SIGHUP)
        loop_request_reload(g_loop);
    else
        loop_stop(g_loop);
}

/* Reload (SIGHUP, POST /admin/reload): runs on the loop thread. */
struct reload_ctx {
    http_server *hs;
    const char *path;
    int listen_fixed; /* --listen given: the file's listen is not used */
};

static int reload_hook_http(void *ud, char *err, size_t errlen)
{
    struct reload_ctx *rc = ud;
    int r = reload_from_file(rc->hs, rc->path, rc->listen_fixed, err, errlen);
    if (r != BD_OK)
        log_emit(LOG_ERROR, err, "\"event\":\"reload_rejected\"");
    return r;
}

static void reload_hook_signal(void *ud)
{
    char err[512];
    reload_hook_http(ud, err, sizeof err);
}

static double decisions_pending_fn(void *ud)
{
    return (double)decisions_pending(ud);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: banditd --config FILE [--listen HOST:PORT] [--port-file PATH]\n"
               "       banditd --check-config FILE\n"
               "       banditd --config FILE --reset-state   (delete the stored state first)\n"
               "       banditd export --format jsonl [--config FILE | --db PATH] [--output F]\n"
               "       banditd replay --data FILE.jsonl [options]   (see banditd replay --help)\n"
               "       banditd --help | --version\n"
               "\n"
               "An OpenAI-compatible proxy that learns which backend to route each chat\n"
               "request to (preference-conditioned LinUCB, trained by POST /feedback).\n");
}

/* Split "HOST:PORT" / "[v6]:PORT" / ":PORT". Returns 0 or -1. */
static int parse_listen(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        return -1;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= hostlen)
        return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || p < 0 || p > 65535)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (!host[0])
        snprintf(host, hostlen, "0.0.0.0");
    *port = (int)p;
    return 0;
}

static int write_port_file(const char *path, int port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int ok = fprintf(f, "%d\n", port) > 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* The store's writer thread wakes the loop through curl's eventfd. */
static void store_wake(void *ud)
{
    upstream_wakeup(ud);
}

/* banditd export --format jsonl [--config FILE | --db PATH] [--output FILE] */
static int export_main(int argc, char **argv)
{
    const char *format = "jsonl", *config_path = NULL, *db = NULL, *output = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--format") == 0 && i + 1 < argc)
            format = argv[++i];
        else if (strcmp(a, "--config") == 0 && i + 1 < argc)
            config_path = argv[++i];
        else if (strcmp(a, "--db") == 0 && i + 1 < argc)
            db = argv[++i];
        else if (strcmp(a, "--output") == 0 && i + 1 < argc)
            output = argv[++i];
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            printf("usage: banditd export --format jsonl [--config FILE | --db PATH] "
                   "[--output FILE]\n"
                   "Dumps the decisions and the feedback log of a banditd database as JSON\n"
                   "lines (docs/state.md); safe while the daemon runs.\n");
            return 0;
        } else {
            fprintf(stderr, "banditd export: unknown or incomplete argument \"%s\"\n", a);
            return 2;
        }
    }
    if (strcmp(format, "jsonl") != 0) {
        fprintf(stderr, "banditd export: unsupported --format \"%s\" (only jsonl)\n", format);
        return 2;
    }
    if (!!config_path == !!db) {
        fprintf(stderr, "banditd export: give exactly one of --config FILE or --db PATH\n");
        return 2;
    }
    char err[512];
    struct config *cfg = NULL;
    if (config_path) {
        if (config_load_file(config_path, &cfg, err, sizeof err) != BD_OK) {
            fprintf(stderr, "banditd export: %s\n", err);
            return 1;
        }
        if (!cfg->store.path[0]) {
            fprintf(stderr, "banditd export: %s has no store.path (state is in memory only)\n",
                    config_path);
            config_destroy(cfg);
            return 1;
        }
        db = cfg->store.path;
    }
    FILE *out = output ? fopen(output, "w") : stdout;
    int rc = 1;
    if (!out) {
        fprintf(stderr, "banditd export: cannot open %s for writing\n", output);
    } else if (store_export(db, out, err, sizeof err) != BD_OK) {
        fprintf(stderr, "banditd export: %s\n", err);
    } else {
        rc = 0;
    }
    if (out && out != stdout && fclose(out) != 0 && rc == 0) {
        fprintf(stderr, "banditd export: writing %s failed\n", output);
        rc = 1;
    }
    config_destroy(cfg);
    return rc;
}

static int run_daemon(const char *config_path, const char *listen, const char *port_file,
                      int reset_state)
{
    char err[512];
    struct config *cfg = NULL;
    if (config_load_file(config_path, &cfg, err, sizeof err) != BD_OK) {
        fprintf(stderr, "banditd: %s\n", err); /* err names the file */
        return 1;
    }
    log_set_level(cfg->log.level);
    if (cfg->log.file[0] && log_open(cfg->log.file) != BD_OK) {
        fprintf(stderr, "banditd: cannot open log file %s\n", cfg->log.file);
        config_destroy(cfg);
        return 1;
    }
    char host[128];
    int port = cfg->listen_port;
    snprintf(host, sizeof host, "%s", cfg->listen_host);
    if (listen && parse_listen(listen, host, sizeof host, &port) != 0) {
        fprintf(stderr, "banditd: --listen: expected HOST:PORT, got \"%s\"\n", listen);
        config_destroy(cfg);
        return 1;
    }

    int rc = 1;
    router *rt = NULL;
    decisions *ds = NULL;
    upstream *up = NULL;
    http_server *hs = NULL;
    loop *lp = NULL;
    state *st = NULL;
    state_redis *rst = NULL;
    struct metrics *reg = NULL;
    struct metrics_banditd *mcat = NULL;

    rt = router_create(cfg);
    if (!rt) {
        fprintf(stderr, "banditd: cannot create the router\n");
        goto out;
    }
    ds = decisions_create(router_dim(rt), cfg->feedback.max_pending, (double)cfg->feedback.ttl_s);
    if (!ds) {
        fprintf(stderr, "banditd: cannot create the decision store\n");
        goto out;
    }
    up = upstream_create(0, 0);
    if (!up) {
        fprintf(stderr, "banditd: cannot create the upstream client\n");
        goto out;
    }
    if (cfg->store.path[0]) {
        /* Durable state: restore the model and the pending decisions first. */
        struct state_restore_info ri;
        double t0 = util_now_ms();
        if (state_open(cfg, rt, ds, reset_state ? STORE_RESET : 0, store_wake, up, &st, &ri, err,
                       sizeof err) != BD_OK) {
            fprintf(stderr, "banditd: %s\n", err);
            goto out;
        }
        char f[384];
        snprintf(f, sizeof f,
                 "\"path\":\"%.200s\",\"snapshots\":%d,\"replayed\":%llu,\"decisions\":%llu,"
                 "\"ms\":%.1f",
                 cfg->store.path, ri.snapshots, (unsigned long long)ri.replayed,
                 (unsigned long long)ri.decisions, util_now_ms() - t0);
        log_emit(LOG_INFO, "state restored", f);
    } else if (reset_state) {
        fprintf(stderr, "banditd: --reset-state: the config has no store.path\n");
        goto out;
    }
    if (cfg->store.redis[0]) {
        /* Replicas: load the shared model from Redis, then follow its stream. */
        int snaps = 0;
        if (state_redis_open(cfg, rt, ds, store_wake, up, &rst, &snaps, err, sizeof err) != BD_OK) {
            fprintf(stderr, "banditd: %s\n", err);
            goto out;
        }
        char f[128];
        snprintf(f, sizeof f, "\"snapshots\":%d,\"replica\":\"%s\"", snaps,
                 store_redis_replica_id(state_redis_store(rst)));
        log_emit(LOG_INFO, "shared state (redis) loaded", f);
    }
    reg = metrics_create();
    const char *arm_names[CONFIG_MAX_ARMS];
    for (size_t i = 0; i < cfg->n_arms; i++)
        arm_names[i] = cfg->arms[i].name;
    if (!reg || metrics_banditd_create(reg, BANDITD_VERSION, arm_names, cfg->n_arms, &mcat) != 0) {
        fprintf(stderr, "banditd: cannot create the metrics registry\n");
        goto out;
    }
    metrics_banditd_bind_decisions_pending(mcat, decisions_pending_fn, ds);
    struct http_deps deps = {.cfg = cfg,
                             .rt = rt,
                             .ds = ds,
                             .up = up,
                             .metrics = reg,
                             .mcat = mcat,
                             .state = st,
                             .rstate = rst};
    if (http_start(&deps, host, port, &hs, err, sizeof err) != BD_OK) {
        fprintf(stderr, "banditd: %s\n", err);
        goto out;
    }
    lp = loop_create(hs, up, ds);
    if (!lp) {
        fprintf(stderr, "banditd: out of memory\n");
        goto out;
    }
    loop_set_state(lp, st);
    loop_set_state_redis(lp, rst);
    char fields[256];
    snprintf(fields, sizeof fields,
             "\"host\":\"%.100s\",\"port\":%d,\"arms\":%zu,\"version\":\"%s\"", host, http_port(hs),
             cfg->n_arms, BANDITD_VERSION);
    log_emit(LOG_INFO, "listening", fields);
    if (port_file && write_port_file(port_file, http_port(hs)) != 0) {
        fprintf(stderr, "banditd: cannot write port file %s\n", port_file);
        goto out;
    }

    struct reload_ctx rctx = {.hs = hs, .path = config_path, .listen_fixed = listen != NULL};
    http_set_reload_hook(hs, reload_hook_http, &rctx);
    loop_set_reload_hook(lp, reload_hook_signal, &rctx);

    g_loop = lp;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    rc = loop_run(lp) == BD_OK ? 0 : 1;
    if (rc == 0) {
        /* Graceful shutdown: stop accepting, let requests in flight (streams
         * too) finish up to limits.shutdown_grace_s. */
        unsigned grace = http_config(hs)->limits.shutdown_grace_s;
        char f[128];
        snprintf(f, sizeof f, "\"inflight\":%zu,\"grace_s\":%u", http_active(hs), grace);
        log_emit(LOG_INFO, "shutting down: draining", f);
        http_quiesce(hs);
        int d = loop_drain(lp, util_now_ms() + 1000.0 * grace);
        snprintf(f, sizeof f, "\"drained\":%s,\"cut\":%zu", d == BD_OK ? "true" : "false",
                 http_active(hs));
        log_emit(d == BD_OK ? LOG_INFO : LOG_WARN, "shutting down", f);
    }
    /* The store's final flush (queue drain + snapshot) runs at out: below,
     * after the drain and before the teardown. */

out:
    /* Ignore (not default) from here: a second SIGTERM must not kill the
     * process while the store flushes. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    g_loop = NULL;
    /* Flush the store (every queued write commits, acknowledged feedback is
     * applied, requests still waiting get their answer), final snapshot,
     * close. Before http_destroy: the config a reload installed lives there. */
    if (lp)
        loop_set_state(lp, NULL);
    state_close(st);
    if (lp)
        loop_set_state_redis(lp, NULL);
    state_redis_close(rst);
    if (hs)
        http_detach_state(hs);
    http_destroy(hs); /* resumes suspended connections, cancels upstream calls */
    loop_destroy(lp);
    upstream_destroy(up);
    decisions_destroy(ds);
    router_destroy(rt);
    metrics_banditd_destroy(mcat);
    metrics_destroy(reg);
    config_destroy(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "replay") == 0)
        return replay_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "export") == 0)
        return export_main(argc - 1, argv + 1);

    const char *config_path = NULL, *listen = NULL, *port_file = NULL, *check = NULL;
    int reset_state = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("banditd " BANDITD_VERSION "\n");
            return 0;
        } else if (strcmp(a, "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strcmp(a, "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else if (strcmp(a, "--port-file") == 0 && i + 1 < argc) {
            port_file = argv[++i];
        } else if (strcmp(a, "--check-config") == 0 && i + 1 < argc) {
            check = argv[++i];
        } else if (strcmp(a, "--reset-state") == 0) {
            reset_state = 1;
        } else {
            fprintf(stderr, "banditd: unknown or incomplete argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (check) {
        char err[512];
        struct config *cfg = NULL;
        if (config_load_file(check, &cfg, err, sizeof err) != BD_OK) {
            printf("%s\n", err); /* err names the file and the field */
            return 1;
        }
        config_destroy(cfg);
        printf("ok\n");
        return 0;
    }
    if (!config_path) {
        usage(stderr);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit must fail the store's write (EFBIG: the feedback
     * answers 503), not kill the daemon. */
    signal(SIGXFSZ, SIG_IGN);
    openblas_set_num_threads(1);
    raise_fd_limit();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "banditd: curl_global_init failed\n");
        return 1;
    }
    int rc = run_daemon(config_path, listen, port_file, reset_state);
    curl_global_cleanup();
    return rc;
}
