/* main — command line, config load, signals, start and stop the loop. */
#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/http.h"
#include "banditd/log.h"
#include "banditd/loop.h"
#include "banditd/replay.h"
#include "banditd/router.h"
#include "banditd/upstream.h"

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
    (void)sig;
    if (g_loop)
        loop_stop(g_loop);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: banditd --config FILE [--listen HOST:PORT] [--port-file PATH]\n"
               "       banditd --check-config FILE\n"
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

static int run_daemon(const char *config_path, const char *listen, const char *port_file)
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
    struct http_deps deps = {.cfg = cfg, .rt = rt, .ds = ds, .up = up};
    if (http_start(&deps, host, port, &hs, err, sizeof err) != BD_OK) {
        fprintf(stderr, "banditd: %s\n", err);
        goto out;
    }
    lp = loop_create(hs, up, ds);
    if (!lp) {
        fprintf(stderr, "banditd: out of memory\n");
        goto out;
    }
    char fields[256];
    snprintf(fields, sizeof fields,
             "\"host\":\"%.100s\",\"port\":%d,\"arms\":%zu,\"version\":\"%s\"", host, http_port(hs),
             cfg->n_arms, BANDITD_VERSION);
    log_emit(LOG_INFO, "listening", fields);
    if (port_file && write_port_file(port_file, http_port(hs)) != 0) {
        fprintf(stderr, "banditd: cannot write port file %s\n", port_file);
        goto out;
    }

    g_loop = lp;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rc = loop_run(lp) == BD_OK ? 0 : 1;
    log_emit(LOG_INFO, "shutting down", NULL);

out:
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    g_loop = NULL;
    http_destroy(hs); /* resumes suspended connections, cancels upstream calls */
    loop_destroy(lp);
    upstream_destroy(up);
    decisions_destroy(ds);
    router_destroy(rt);
    config_destroy(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "replay") == 0)
        return replay_main(argc - 1, argv + 1);

    const char *config_path = NULL, *listen = NULL, *port_file = NULL, *check = NULL;
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
    openblas_set_num_threads(1);
    raise_fd_limit();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "banditd: curl_global_init failed\n");
        return 1;
    }
    int rc = run_daemon(config_path, listen, port_file);
    curl_global_cleanup();
    return rc;
}
