/* config — parse and validate the JSON config into plain structs.
 *
 * The schema is DESIGN.md §3; config/banditd.example.json documents each field.
 * Unknown fields are errors; every error message names the field by its JSON
 * path (e.g. "arms[1].price_in_per_mtok: must be a number >= 0").
 * A struct config is immutable after load and owned by its creator. */
#ifndef BANDITD_CONFIG_H
#define BANDITD_CONFIG_H

#include <stddef.h>
#include "banditd/pref.h"

#define CONFIG_MAX_ARMS 64
#define CONFIG_MAX_PROFILES 16
#define CONFIG_MAX_ALIASES 8
#define CONFIG_NAME_MAX 64

enum config_policy { CONFIG_POLICY_LINUCB = 0, CONFIG_POLICY_THOMPSON = 1 };

struct config_arm {
    char name[CONFIG_NAME_MAX];        /* arm name (unique; pins the arm as `model`) */
    char base_url[512];                /* e.g. "http://127.0.0.1:9001/v1" */
    char model[128];                   /* upstream model name the request is rewritten to */
    char api_key_env[CONFIG_NAME_MAX]; /* env var holding the key; "" = no key */
    double price_in_per_mtok;          /* USD per million prompt tokens */
    double price_out_per_mtok;         /* USD per million completion tokens */
    long timeout_ms;                   /* total upstream deadline (default 60000) */
    long connect_timeout_ms;           /* default 5000 */
    long ttfb_timeout_ms;  /* deadline for the first response byte; 0 = none (default) */
    unsigned max_inflight; /* calls in flight to this arm; 0 = unlimited (default) */
    int has_prior;         /* prior_quality given? */
    double prior_quality;  /* in [0,1] */
};

struct config_router {
    enum config_policy policy; /* "linucb" (default) | "thompson" */
    double alpha;              /* UCB width factor, default 0.1 */
    double alpha_base;         /* UCB factor on the base rate's width, default 0.0 */
    double lambda;             /* ridge, default 1.0 */
    double mu0;                /* optimistic offset, default 1.0 */
    int dim;                   /* feature dimension, default 256 (16..4096) */
    double forgetting;         /* gamma in (0,1], default 1.0 */
    double text_weight;        /* hashed-text block norm vs the bias, (0,4], default 0.5 */
    double thompson_v;         /* posterior scale v, default 0.1 */
    unsigned long long seed;   /* RNG seed for Thompson/tie noise, default 1 */
    int refactor_every;        /* re-derive A^-1 every N updates, default 1000 */
    char default_preference[PREF_HEADER_MAX]; /* header value used when absent */
    struct pref_profile profiles[CONFIG_MAX_PROFILES];
    size_t n_profiles; /* defaults: cheap, balanced, best */
};

struct config {
    char listen_host[128]; /* default "127.0.0.1" */
    int listen_port;       /* default 8080 */
    struct config_arm arms[CONFIG_MAX_ARMS];
    size_t n_arms;                                     /* >= 1 */
    char aliases[CONFIG_MAX_ALIASES][CONFIG_NAME_MAX]; /* router aliases, default {"auto"} */
    size_t n_aliases;
    struct config_router router;
    struct {
        long ttl_s;         /* default 86400 */
        size_t max_pending; /* decisions kept awaiting feedback, default 1000000 */
    } feedback;
    struct {
        char path[512];           /* SQLite path; "" = in memory only */
        long snapshot_interval_s; /* model snapshot at most this often, default 60 */
        long snapshot_every;      /* ...or after this many feedbacks to an arm, default 1000 */
        long queue_cap;           /* store write queue (ops), default 4096 */
        char redis[512];          /* "redis://host:port/db": shared state for replicas
                                     (docs/scale-out.md); "" = none; excludes path */
    } store;
    struct {
        char client_keys_env[CONFIG_NAME_MAX]; /* "" = no client auth */
        char admin_key_env[CONFIG_NAME_MAX];
        char client_keys_file[512];       /* file with one client key per line; "" = none */
        int allow_unauthenticated_remote; /* bind non-loopback without client keys (default 0) */
    } auth;
    struct {
        int failure_threshold; /* consecutive failures that open an arm's circuit, default 5 */
        long cooldown_ms;      /* open → half-open probe after this, default 10000 */
    } health;
    struct {
        int level;        /* enum log_level, default info */
        char file[512];   /* "" = stderr */
        int debug_bodies; /* log request bodies at debug level (default 0: never) */
    } log;
    struct {
        size_t max_body_bytes;         /* default 4 MiB */
        unsigned max_connections;      /* default 10000 */
        unsigned connection_timeout_s; /* idle/slow client timeout, default 30 */
        unsigned max_inflight;         /* upstream calls in flight, default 10000 */
        int max_fallbacks;             /* other arms tried after a failure, default 2 */
        int max_retries;               /* same-arm retries on 429/503 + Retry-After, default 1 */
        long request_timeout_ms;       /* overall deadline of one chat request, default 120000 */
        unsigned shutdown_grace_s; /* SIGTERM: wait this long for in-flight requests, default 30 */
    } limits;
};

/* Parse and validate. On success *out is a new config (free with
 * config_destroy) and 0 is returned. On failure returns BD_ERR_INVALID (or
 * BD_ERR_IO / BD_ERR_NOMEM), *out is untouched and err holds a message that
 * names the field. */
int config_parse(const char *json, size_t len, struct config **out, char *err, size_t errlen);
int config_load_file(const char *path, struct config **out, char *err, size_t errlen);
/* A config with every default and no arms (for replay/tests); NULL on OOM. */
struct config *config_defaults(void);
void config_destroy(struct config *cfg);

/* Index of the arm named `name`, or -1. */
int config_arm_index(const struct config *cfg, const char *name);
/* 1 if `name` is a router alias. */
int config_is_alias(const struct config *cfg, const char *name);

#endif
