/* Unit tests for config: defaults, a full config, every validation error. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "banditd/config.h"
#include "banditd/err.h"
#include "banditd/log.h"

#define EPS 1e-12
#define ARM_A                                                                                      \
    "{\"name\":\"a\",\"base_url\":\"http://127.0.0.1:9001/"                                        \
    "v1\",\"price_in_per_mtok\":1,\"price_out_per_mtok\":2}"
#define ARM_B                                                                                      \
    "{\"name\":\"b\",\"base_url\":\"https://b.example/"                                            \
    "v1\",\"price_in_per_mtok\":0.5,\"price_out_per_mtok\":0.5}"
#define EXAMPLE_PATH "config/banditd.example.json"

/* Field-by-field equality of two router sections (memcmp would also compare
 * the padding of struct pref_weights, which struct assignment leaves undefined). */
static int router_eq(const struct config_router *a, const struct config_router *b)
{
    if (a->policy != b->policy || a->alpha != b->alpha || a->alpha_base != b->alpha_base ||
        a->lambda != b->lambda || a->mu0 != b->mu0 || a->dim != b->dim ||
        a->forgetting != b->forgetting || a->text_weight != b->text_weight ||
        a->thompson_v != b->thompson_v || a->seed != b->seed ||
        a->refactor_every != b->refactor_every || a->n_profiles != b->n_profiles ||
        strcmp(a->default_preference, b->default_preference) != 0)
        return 0;
    for (size_t i = 0; i < a->n_profiles; i++) {
        const struct pref_profile *x = &a->profiles[i], *y = &b->profiles[i];
        if (strcmp(x->name, y->name) != 0 || x->w.quality != y->w.quality ||
            x->w.cost != y->w.cost || x->w.latency != y->w.latency ||
            x->w.has_tolerance != y->w.has_tolerance || x->w.tolerance != y->w.tolerance)
            return 0;
    }
    return 1;
}

static struct config *parse_ok(const char *json)
{
    struct config *cfg = NULL;
    char err[512] = "";
    int rc = config_parse(json, strlen(json), &cfg, err, sizeof err);
    ck_assert_msg(rc == 0, "rejected (%d): %s\nconfig: %s", rc, err, json);
    ck_assert_ptr_nonnull(cfg);
    return cfg;
}

/* The config must be rejected with a message that starts with `field` (the
 * JSON path) followed by ':' and that contains `needle` if given. */
static void parse_bad(const char *json, const char *field, const char *needle)
{
    struct config *cfg = (struct config *)(uintptr_t)0x1; /* must stay untouched */
    char err[512] = "";
    int rc = config_parse(json, strlen(json), &cfg, err, sizeof err);
    ck_assert_msg(rc == BD_ERR_INVALID, "accepted (%d): %s", rc, json);
    ck_assert_msg(cfg == (struct config *)(uintptr_t)0x1, "*out touched on failure");
    size_t fl = strlen(field);
    ck_assert_msg(strncmp(err, field, fl) == 0 && err[fl] == ':',
                  "error does not name '%s': \"%s\"\nconfig: %s", field, err, json);
    if (needle)
        ck_assert_msg(strstr(err, needle) != NULL, "error lacks '%s': \"%s\"", needle, err);
}

/* A config with ARM_A and the given extra top-level members. */
static char *with(const char *extra)
{
    static char buf[8192];
    snprintf(buf, sizeof buf, "{\"arms\":[" ARM_A "]%s%s}", extra[0] ? "," : "", extra);
    return buf;
}

/* A config whose only arm has ARM_A's fields plus/overridden by `fields`. */
static char *arm_with(const char *fields)
{
    static char buf[8192];
    snprintf(buf, sizeof buf, "{\"arms\":[" ARM_B ",{%s%s\"price_out_per_mtok\":2}]}", fields,
             fields[0] ? "," : "");
    return buf;
}

static const struct pref_profile *find_profile(const struct config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->router.n_profiles; i++)
        if (strcmp(cfg->router.profiles[i].name, name) == 0)
            return &cfg->router.profiles[i];
    return NULL;
}

START_TEST(test_defaults)
{
    struct config *cfg = config_defaults();
    ck_assert_ptr_nonnull(cfg);
    ck_assert_str_eq(cfg->listen_host, "127.0.0.1");
    ck_assert_int_eq(cfg->listen_port, 8080);
    ck_assert_uint_eq(cfg->n_arms, 0);
    ck_assert_uint_eq(cfg->n_aliases, 1);
    ck_assert_str_eq(cfg->aliases[0], "auto");
    ck_assert_int_eq(cfg->router.policy, CONFIG_POLICY_LINUCB);
    ck_assert(cfg->router.alpha == 0.1 && cfg->router.lambda == 1.0 && cfg->router.mu0 == 1.0);
    ck_assert(cfg->router.alpha_base == 0.0);
    ck_assert_int_eq(cfg->router.dim, 256);
    ck_assert(cfg->router.forgetting == 1.0 && cfg->router.thompson_v == 0.1);
    ck_assert(cfg->router.text_weight == 0.5);
    ck_assert_uint_eq(cfg->router.seed, 1);
    ck_assert_int_eq(cfg->router.refactor_every, 1000);
    ck_assert_str_eq(cfg->router.default_preference, "balanced");
    ck_assert_uint_eq(cfg->router.n_profiles, 3);
    const struct pref_profile *p = find_profile(cfg, "cheap");
    ck_assert(p && fabs(p->w.quality - 0.8) < EPS && fabs(p->w.cost - 0.2) < EPS &&
              p->w.latency == 0);
    p = find_profile(cfg, "balanced");
    ck_assert(p && fabs(p->w.quality - 0.95) < EPS && fabs(p->w.cost - 0.05) < EPS);
    p = find_profile(cfg, "best");
    ck_assert(p && p->w.quality == 1.0 && p->w.cost == 0.0);
    ck_assert_int_eq(cfg->feedback.ttl_s, 86400);
    ck_assert_uint_eq(cfg->feedback.max_pending, 1000000);
    ck_assert_str_eq(cfg->store.path, "");
    ck_assert_str_eq(cfg->store.redis, "");
    ck_assert_int_eq(cfg->store.snapshot_interval_s, 60);
    ck_assert_int_eq(cfg->store.snapshot_every, 1000);
    ck_assert_int_eq(cfg->store.queue_cap, 4096);
    ck_assert_str_eq(cfg->auth.client_keys_env, "");
    ck_assert_str_eq(cfg->auth.admin_key_env, "");
    ck_assert_int_eq(cfg->log.level, LOG_INFO);
    ck_assert_str_eq(cfg->log.file, "");
    ck_assert_uint_eq(cfg->limits.max_body_bytes, 4u * 1024 * 1024);
    ck_assert_uint_eq(cfg->limits.max_connections, 10000);
    ck_assert_uint_eq(cfg->limits.connection_timeout_s, 30);
    ck_assert_uint_eq(cfg->limits.max_inflight, 10000);
    config_destroy(cfg);
    config_destroy(NULL);
}
END_TEST

START_TEST(test_minimal)
{
    struct config *cfg = parse_ok("{\"arms\":[" ARM_A "]}");
    struct config *def = config_defaults();
    ck_assert_uint_eq(cfg->n_arms, 1);
    const struct config_arm *a = &cfg->arms[0];
    ck_assert_str_eq(a->name, "a");
    ck_assert_str_eq(a->base_url, "http://127.0.0.1:9001/v1");
    ck_assert_str_eq(a->model, "a"); /* defaults to the arm's name */
    ck_assert_str_eq(a->api_key_env, "");
    ck_assert(a->price_in_per_mtok == 1.0 && a->price_out_per_mtok == 2.0);
    ck_assert_int_eq(a->timeout_ms, 60000);
    ck_assert_int_eq(a->connect_timeout_ms, 5000);
    ck_assert_int_eq(a->has_prior, 0);
    /* Everything else equals config_defaults(). */
    ck_assert_str_eq(cfg->listen_host, def->listen_host);
    ck_assert_int_eq(cfg->listen_port, def->listen_port);
    ck_assert(router_eq(&cfg->router, &def->router));
    ck_assert(memcmp(&cfg->limits, &def->limits, sizeof cfg->limits) == 0);
    ck_assert(memcmp(&cfg->feedback, &def->feedback, sizeof cfg->feedback) == 0);
    ck_assert_int_eq(cfg->log.level, def->log.level);
    ck_assert_uint_eq(cfg->n_aliases, 1);
    ck_assert_str_eq(cfg->aliases[0], "auto");
    config_destroy(def);
    config_destroy(cfg);
}
END_TEST

START_TEST(test_full)
{
    const char *json =
        "{\"listen\":\"0.0.0.0:9090\",\n"
        " \"arms\":[{\"name\":\"strong\",\"base_url\":\"https://api.example/v1/\","
        "\"model\":\"big-model\",\"api_key_env\":\"STRONG_API_KEY\",\"price_in_per_mtok\":5.0,"
        "\"price_out_per_mtok\":15.0,\"timeout_ms\":30000,\"connect_timeout_ms\":2000,"
        "\"prior_quality\":0.85},\n"
        "  {\"name\":\"cheap.v2:q4\",\"base_url\":\"HTTP://10.0.0.2:8000\",\"model\":\"small\","
        "\"price_in_per_mtok\":0,\"price_out_per_mtok\":0.2}],\n"
        " \"aliases\":[\"auto\",\"router\"],\n"
        " \"router\":{\"policy\":\"thompson\",\"alpha\":0.05,\"alpha_base\":0.8,\"lambda\":2.5,"
        "\"mu0\":0.5,"
        "\"dim\":1024,\"forgetting\":0.99,\"text_weight\":1.0,\"thompson_v\":0.3,\"seed\":12345,"
        "\"refactor_every\":50,\"default_preference\":\"quality=1,latency=1\","
        "\"profiles\":{\"cheap\":0.1,\"fast\":{\"quality\":2e-1,\"latency\":0.6},"
        "\"mid\":0.5}},\n"
        " \"feedback\":{\"ttl_s\":3600,\"max_pending\":5000},\n"
        " \"store\":{\"path\":\"/var/lib/banditd/state.db\"},\n"
        " \"auth\":{\"client_keys_env\":\"MY_KEYS\",\"admin_key_env\":\"ADMIN_KEY\"},\n"
        " \"log\":{\"level\":\"debug\",\"file\":\"/var/log/banditd.log\"},\n"
        " \"limits\":{\"max_body_bytes\":65536,\"max_connections\":200,"
        "\"connection_timeout_s\":10,\"max_inflight\":150}}";
    struct config *cfg = parse_ok(json);
    ck_assert_str_eq(cfg->listen_host, "0.0.0.0");
    ck_assert_int_eq(cfg->listen_port, 9090);
    ck_assert_uint_eq(cfg->n_arms, 2);
    const struct config_arm *s = &cfg->arms[0], *c = &cfg->arms[1];
    ck_assert_str_eq(s->name, "strong");
    ck_assert_str_eq(s->base_url, "https://api.example/v1"); /* trailing '/' dropped */
    ck_assert_str_eq(s->model, "big-model");
    ck_assert_str_eq(s->api_key_env, "STRONG_API_KEY");
    ck_assert(s->price_in_per_mtok == 5.0 && s->price_out_per_mtok == 15.0);
    ck_assert_int_eq(s->timeout_ms, 30000);
    ck_assert_int_eq(s->connect_timeout_ms, 2000);
    ck_assert(s->has_prior && s->prior_quality == 0.85);
    ck_assert_str_eq(c->name, "cheap.v2:q4");
    ck_assert_str_eq(c->base_url, "HTTP://10.0.0.2:8000");
    ck_assert(c->price_in_per_mtok == 0.0 && c->price_out_per_mtok == 0.2);
    ck_assert(!c->has_prior);
    ck_assert_uint_eq(cfg->n_aliases, 2);
    ck_assert_str_eq(cfg->aliases[1], "router");
    const struct config_router *r = &cfg->router;
    ck_assert_int_eq(r->policy, CONFIG_POLICY_THOMPSON);
    ck_assert(r->alpha == 0.05 && r->alpha_base == 0.8 && r->lambda == 2.5 && r->mu0 == 0.5);
    ck_assert_int_eq(r->dim, 1024);
    ck_assert(r->forgetting == 0.99 && r->thompson_v == 0.3 && r->text_weight == 1.0);
    ck_assert_uint_eq(r->seed, 12345);
    ck_assert_int_eq(r->refactor_every, 50);
    ck_assert_str_eq(r->default_preference, "quality=1,latency=1");
    /* Merged over the defaults: cheap replaced, balanced/best kept, 2 added. */
    ck_assert_uint_eq(r->n_profiles, 5);
    const struct pref_profile *p = find_profile(cfg, "cheap");
    ck_assert(p && fabs(p->w.quality - 0.1) < EPS && fabs(p->w.cost - 0.9) < EPS);
    p = find_profile(cfg, "balanced");
    ck_assert(p && fabs(p->w.quality - 0.95) < EPS);
    p = find_profile(cfg, "best");
    ck_assert(p && p->w.quality == 1.0);
    p = find_profile(cfg, "fast"); /* 0.2 : 0 : 0.6 normalised = 0.25 : 0 : 0.75 */
    ck_assert(p && fabs(p->w.quality - 0.25) < EPS && p->w.cost == 0 &&
              fabs(p->w.latency - 0.75) < EPS);
    p = find_profile(cfg, "mid");
    ck_assert(p && fabs(p->w.quality - 0.5) < EPS && fabs(p->w.cost - 0.5) < EPS);
    ck_assert_int_eq(cfg->feedback.ttl_s, 3600);
    ck_assert_uint_eq(cfg->feedback.max_pending, 5000);
    ck_assert_str_eq(cfg->store.path, "/var/lib/banditd/state.db");
    ck_assert_str_eq(cfg->auth.client_keys_env, "MY_KEYS");
    ck_assert_str_eq(cfg->auth.admin_key_env, "ADMIN_KEY");
    ck_assert_int_eq(cfg->log.level, LOG_DEBUG);
    ck_assert_str_eq(cfg->log.file, "/var/log/banditd.log");
    ck_assert_uint_eq(cfg->limits.max_body_bytes, 65536);
    ck_assert_uint_eq(cfg->limits.max_connections, 200);
    ck_assert_uint_eq(cfg->limits.connection_timeout_s, 10);
    ck_assert_uint_eq(cfg->limits.max_inflight, 150);

    ck_assert_int_eq(config_arm_index(cfg, "strong"), 0);
    ck_assert_int_eq(config_arm_index(cfg, "cheap.v2:q4"), 1);
    ck_assert_int_eq(config_arm_index(cfg, "Strong"), -1);
    ck_assert_int_eq(config_arm_index(cfg, "auto"), -1);
    ck_assert_int_eq(config_is_alias(cfg, "auto"), 1);
    ck_assert_int_eq(config_is_alias(cfg, "router"), 1);
    ck_assert_int_eq(config_is_alias(cfg, "strong"), 0);
    ck_assert_int_eq(config_is_alias(cfg, ""), 0);
    config_destroy(cfg);
}
END_TEST

START_TEST(test_field_errors)
{
    /* Top level and arms. */
    parse_bad("[]", "(top level)", "object");
    parse_bad("{}", "arms", "required");
    parse_bad("{\"arms\":{}}", "arms", "array");
    parse_bad("{\"arms\":[]}", "arms", "at least one");
    parse_bad("{\"arms\":[1]}", "arms[0]", "object");
    parse_bad("{\"arms\":[" ARM_A ",\"x\"]}", "arms[1]", "object");
    parse_bad(arm_with("\"base_url\":\"http://x\",\"price_in_per_mtok\":1"), "arms[1].name",
              "required");
    parse_bad(arm_with("\"name\":\"\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1"),
              "arms[1].name", NULL);
    parse_bad(arm_with("\"name\":\"a b\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1"),
              "arms[1].name", "A-Za-z0-9");
    parse_bad(arm_with("\"name\":\"a/b\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1"),
              "arms[1].name", NULL);
    parse_bad(arm_with("\"name\":7,\"base_url\":\"http://x\",\"price_in_per_mtok\":1"),
              "arms[1].name", "string");
    parse_bad(arm_with("\"name\":\"x\",\"price_in_per_mtok\":1"), "arms[1].base_url", "required");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"ftp://x\",\"price_in_per_mtok\":1"),
              "arms[1].base_url", "http");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"x.example/v1\",\"price_in_per_mtok\":1"),
              "arms[1].base_url", "http");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://\",\"price_in_per_mtok\":1"),
              "arms[1].base_url", "host");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://a b\",\"price_in_per_mtok\":1"),
              "arms[1].base_url", NULL);
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"model\":\"\","
                       "\"price_in_per_mtok\":1"),
              "arms[1].model", NULL);
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"api_key_env\":\"MY-KEY\","
                       "\"price_in_per_mtok\":1"),
              "arms[1].api_key_env", NULL);
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"api_key_env\":\"1KEY\","
                       "\"price_in_per_mtok\":1"),
              "arms[1].api_key_env", NULL);
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\""), "arms[1].price_in_per_mtok",
              "required");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":-1"),
              "arms[1].price_in_per_mtok", "must be a number >= 0");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":\"1\""),
              "arms[1].price_in_per_mtok", ">= 0");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1e999"),
              "arms[1].price_in_per_mtok", NULL);
    parse_bad("{\"arms\":[{\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1}]}",
              "arms[0].price_out_per_mtok", "required");
    parse_bad("{\"arms\":[{\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
              "\"price_out_per_mtok\":-0.5}]}",
              "arms[0].price_out_per_mtok", ">= 0");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
                       "\"timeout_ms\":0"),
              "arms[1].timeout_ms", NULL);
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
                       "\"timeout_ms\":1.5"),
              "arms[1].timeout_ms", "integer");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
                       "\"connect_timeout_ms\":-5"),
              "arms[1].connect_timeout_ms", NULL);
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
                       "\"prior_quality\":1.01"),
              "arms[1].prior_quality", "[0, 1]");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
                       "\"prior_quality\":null"),
              "arms[1].prior_quality", NULL);

    /* Aliases. */
    parse_bad(with("\"aliases\":\"auto\""), "aliases", "array");
    parse_bad(with("\"aliases\":[]"), "aliases", NULL);
    parse_bad(with("\"aliases\":[\"auto\",3]"), "aliases[1]", "string");
    parse_bad(with("\"aliases\":[\"auto\",\"auto\"]"), "aliases[1]", "duplicate");
    parse_bad(with("\"aliases\":[\"a b\"]"), "aliases[0]", NULL);
    parse_bad(with("\"aliases\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]"),
              "aliases", NULL);
    parse_bad(with("\"aliases\":[\"a\"]"), "arms[0].name", "alias");
    parse_bad("{\"arms\":[{\"name\":\"auto\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
              "\"price_out_per_mtok\":1}]}",
              "arms[0].name", "alias");

    /* Router. */
    parse_bad(with("\"router\":[]"), "router", "object");
    parse_bad(with("\"router\":{\"policy\":\"ucb\"}"), "router.policy", "linucb");
    parse_bad(with("\"router\":{\"policy\":1}"), "router.policy", NULL);
    parse_bad(with("\"router\":{\"alpha\":-0.1}"), "router.alpha", ">= 0");
    parse_bad(with("\"router\":{\"alpha_base\":-1}"), "router.alpha_base", ">= 0");
    parse_bad(with("\"router\":{\"lambda\":0}"), "router.lambda", "> 0");
    parse_bad(with("\"router\":{\"mu0\":true}"), "router.mu0", NULL);
    parse_bad(with("\"router\":{\"dim\":15}"), "router.dim", "[16, 4096]");
    parse_bad(with("\"router\":{\"dim\":4097}"), "router.dim", NULL);
    parse_bad(with("\"router\":{\"dim\":256.5}"), "router.dim", "integer");
    parse_bad(with("\"router\":{\"forgetting\":0}"), "router.forgetting", "(0, 1]");
    parse_bad(with("\"router\":{\"text_weight\":0}"), "router.text_weight", "(0, 4]");
    parse_bad(with("\"router\":{\"text_weight\":5}"), "router.text_weight", "(0, 4]");
    parse_bad(with("\"router\":{\"forgetting\":1.0001}"), "router.forgetting", NULL);
    parse_bad(with("\"router\":{\"thompson_v\":-1}"), "router.thompson_v", NULL);
    parse_bad(with("\"router\":{\"seed\":-1}"), "router.seed", NULL);
    parse_bad(with("\"router\":{\"refactor_every\":0}"), "router.refactor_every", NULL);
    parse_bad(with("\"router\":{\"default_preference\":\"premium\"}"), "router.default_preference",
              "premium");
    parse_bad(with("\"router\":{\"default_preference\":\"1.5\"}"), "router.default_preference",
              NULL);
    parse_bad(with("\"router\":{\"default_preference\":\"\"}"), "router.default_preference", NULL);
    parse_bad(with("\"router\":{\"profiles\":[]}"), "router.profiles", "object");
    parse_bad(with("\"router\":{\"profiles\":{\"x\":1.5}}"), "router.profiles.x", NULL);
    parse_bad(with("\"router\":{\"profiles\":{\"x\":\"0.5\"}}"), "router.profiles.x", NULL);
    parse_bad(with("\"router\":{\"profiles\":{\"x\":{\"quality\":0,\"cost\":0}}}"),
              "router.profiles.x", "sum");
    parse_bad(with("\"router\":{\"profiles\":{\"x\":{\"quality\":2}}}"),
              "router.profiles.x.quality", "[0, 1]");
    parse_bad(with("\"router\":{\"profiles\":{\"x\":{\"speed\":1}}}"), "router.profiles.x.speed",
              "unknown field");
    parse_bad(with("\"router\":{\"profiles\":{\"0.5\":1}}"), "router.profiles.0.5", NULL);
    parse_bad(with("\"router\":{\"profiles\":{\"a=b\":1}}"), "router.profiles.a=b", NULL);
    parse_bad(with("\"router\":{\"profiles\":{\"x\":1,\"x\":0.5}}"), "router.profiles.x",
              "more than once");

    /* Other sections. */
    parse_bad(with("\"feedback\":{\"ttl_s\":0}"), "feedback.ttl_s", NULL);
    parse_bad(with("\"feedback\":{\"max_pending\":0}"), "feedback.max_pending", NULL);
    parse_bad(with("\"feedback\":1"), "feedback", "object");
    parse_bad(with("\"store\":{\"path\":5}"), "store.path", "string");
    parse_bad(with("\"store\":{\"snapshot_interval_s\":0}"), "store.snapshot_interval_s", NULL);
    parse_bad(with("\"store\":{\"snapshot_every\":0}"), "store.snapshot_every", NULL);
    parse_bad(with("\"store\":{\"queue_cap\":8}"), "store.queue_cap", NULL);
    parse_bad(with("\"store\":{\"redis\":\"http://x\"}"), "store.redis", "redis://");
    parse_bad(with("\"store\":{\"redis\":\"redis://h:1\",\"path\":\"a.db\"}"), "store", "not both");
    parse_bad(with("\"store\":{\"queue_cap\":1.5}"), "store.queue_cap", NULL);
    {
        struct config *sc = parse_ok(with("\"store\":{\"path\":\"x.db\",\"snapshot_interval_s\":5,"
                                          "\"snapshot_every\":7,\"queue_cap\":64}"));
        ck_assert_int_eq(sc->store.snapshot_interval_s, 5);
        ck_assert_int_eq(sc->store.snapshot_every, 7);
        ck_assert_int_eq(sc->store.queue_cap, 64);
        config_destroy(sc);
    }
    {
        struct config *sc = parse_ok(with("\"store\":{\"redis\":\"redis://10.0.0.5:6380/2\"}"));
        ck_assert_str_eq(sc->store.redis, "redis://10.0.0.5:6380/2");
        ck_assert_str_eq(sc->store.path, "");
        config_destroy(sc);
    }
    parse_bad(with("\"auth\":{\"client_keys_env\":\"A B\"}"), "auth.client_keys_env", NULL);
    parse_bad(with("\"auth\":{\"admin_key_env\":[]}"), "auth.admin_key_env", NULL);
    parse_bad(with("\"log\":{\"level\":\"verbose\"}"), "log.level", "debug");
    parse_bad(with("\"log\":{\"level\":\"Info\"}"), "log.level", NULL);
    parse_bad(with("\"log\":{\"file\":false}"), "log.file", NULL);
    parse_bad(with("\"limits\":{\"max_body_bytes\":100}"), "limits.max_body_bytes", NULL);
    parse_bad(with("\"limits\":{\"max_connections\":0}"), "limits.max_connections", NULL);
    parse_bad(with("\"limits\":{\"connection_timeout_s\":-1}"), "limits.connection_timeout_s",
              NULL);
    parse_bad(with("\"limits\":{\"max_inflight\":1e300}"), "limits.max_inflight", NULL);
}
END_TEST

START_TEST(test_resilience_fields)
{
    /* Defaults (issue 6 fields). */
    struct config *cfg = parse_ok("{\"arms\":[" ARM_A "]}");
    ck_assert_int_eq(cfg->arms[0].ttfb_timeout_ms, 0);
    ck_assert_uint_eq(cfg->arms[0].max_inflight, 0);
    ck_assert_int_eq(cfg->limits.max_fallbacks, 2);
    ck_assert_int_eq(cfg->limits.max_retries, 1);
    ck_assert_int_eq(cfg->limits.request_timeout_ms, 120000);
    ck_assert_int_eq(cfg->health.failure_threshold, 5);
    ck_assert_int_eq(cfg->health.cooldown_ms, 10000);
    ck_assert_str_eq(cfg->auth.client_keys_file, "");
    ck_assert_int_eq(cfg->auth.allow_unauthenticated_remote, 0);
    config_destroy(cfg);
    /* Explicit values. */
    cfg = parse_ok("{\"arms\":[{\"name\":\"a\",\"base_url\":\"http://h/v1\","
                   "\"price_in_per_mtok\":1,\"price_out_per_mtok\":2,\"ttfb_timeout_ms\":250,"
                   "\"max_inflight\":7}],"
                   "\"limits\":{\"max_fallbacks\":0,\"max_retries\":3,\"request_timeout_ms\":900},"
                   "\"health\":{\"failure_threshold\":2,\"cooldown_ms\":1500},"
                   "\"auth\":{\"client_keys_file\":\"/etc/keys\","
                   "\"allow_unauthenticated_remote\":true}}");
    ck_assert_int_eq(cfg->arms[0].ttfb_timeout_ms, 250);
    ck_assert_uint_eq(cfg->arms[0].max_inflight, 7);
    ck_assert_int_eq(cfg->limits.max_fallbacks, 0);
    ck_assert_int_eq(cfg->limits.max_retries, 3);
    ck_assert_int_eq(cfg->limits.request_timeout_ms, 900);
    ck_assert_int_eq(cfg->health.failure_threshold, 2);
    ck_assert_int_eq(cfg->health.cooldown_ms, 1500);
    ck_assert_str_eq(cfg->auth.client_keys_file, "/etc/keys");
    ck_assert_int_eq(cfg->auth.allow_unauthenticated_remote, 1);
    config_destroy(cfg);
    /* Errors name the field. */
    parse_bad(with("\"limits\":{\"max_fallbacks\":-1}"), "limits.max_fallbacks", NULL);
    parse_bad(with("\"limits\":{\"max_retries\":1.5}"), "limits.max_retries", NULL);
    parse_bad(with("\"limits\":{\"request_timeout_ms\":0}"), "limits.request_timeout_ms", NULL);
    parse_bad(with("\"health\":{\"failure_threshold\":0}"), "health.failure_threshold", NULL);
    parse_bad(with("\"health\":{\"cooldown_ms\":\"x\"}"), "health.cooldown_ms", NULL);
    parse_bad(with("\"health\":{\"probes\":1}"), "health.probes", "unknown field");
    parse_bad(with("\"health\":3"), "health", "object");
    parse_bad(with("\"auth\":{\"allow_unauthenticated_remote\":1}"),
              "auth.allow_unauthenticated_remote", NULL);
    parse_bad(with("\"auth\":{\"client_keys_file\":7}"), "auth.client_keys_file", NULL);
}
END_TEST

START_TEST(test_unknown_fields)
{
    parse_bad(with("\"lisen\":\"127.0.0.1:80\""), "lisen", "unknown field");
    parse_bad(arm_with("\"name\":\"x\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
                       "\"price_per_mtok\":1"),
              "arms[1].price_per_mtok", "unknown field");
    parse_bad(with("\"router\":{\"aplha\":0.1}"), "router.aplha", "unknown field");
    parse_bad(with("\"feedback\":{\"ttl\":5}"), "feedback.ttl", "unknown field");
    parse_bad(with("\"store\":{\"pth\":\"x\"}"), "store.pth", "unknown field");
    parse_bad(with("\"auth\":{\"keys\":\"x\"}"), "auth.keys", "unknown field");
    parse_bad(with("\"log\":{\"lvl\":\"info\"}"), "log.lvl", "unknown field");
    parse_bad(with("\"limits\":{\"max_body\":1}"), "limits.max_body", "unknown field");
    /* Field names are case-sensitive. */
    parse_bad(with("\"Listen\":\"127.0.0.1:80\""), "Listen", "unknown field");
    /* A field given twice is an error too (the second would be ignored). */
    parse_bad(with("\"listen\":\"127.0.0.1:80\",\"listen\":\"127.0.0.1:81\""), "listen",
              "more than once");
    parse_bad(with("\"router\":{\"alpha\":0.1,\"alpha\":0.2}"), "router.alpha", "more than once");
}
END_TEST

START_TEST(test_duplicate_arm)
{
    parse_bad("{\"arms\":[" ARM_A "," ARM_B "," ARM_A "]}", "arms[2].name", "duplicate");
    /* Names differing in case are distinct arms. */
    struct config *cfg = parse_ok(
        "{\"arms\":[" ARM_A ",{\"name\":\"A\",\"base_url\":\"http://x\",\"price_in_per_mtok\":1,"
        "\"price_out_per_mtok\":1}]}");
    ck_assert_uint_eq(cfg->n_arms, 2);
    config_destroy(cfg);
    /* At most CONFIG_MAX_ARMS arms. */
    char *buf = malloc(65536);
    ck_assert_ptr_nonnull(buf);
    for (int n = CONFIG_MAX_ARMS; n <= CONFIG_MAX_ARMS + 1; n++) {
        size_t used = (size_t)snprintf(buf, 65536, "{\"arms\":[");
        for (int i = 0; i < n; i++)
            used += (size_t)snprintf(buf + used, 65536 - used,
                                     "%s{\"name\":\"arm%d\",\"base_url\":\"http://x\","
                                     "\"price_in_per_mtok\":%d,\"price_out_per_mtok\":1}",
                                     i ? "," : "", i, i);
        snprintf(buf + used, 65536 - used, "]}");
        if (n == CONFIG_MAX_ARMS) {
            cfg = parse_ok(buf);
            ck_assert_uint_eq(cfg->n_arms, CONFIG_MAX_ARMS);
            ck_assert_int_eq(config_arm_index(cfg, "arm63"), 63);
            ck_assert(cfg->arms[63].price_in_per_mtok == 63.0);
            config_destroy(cfg);
        } else {
            parse_bad(buf, "arms", "at most");
        }
    }
    free(buf);
}
END_TEST

/* A string of n copies of ch. */
static char *rep(char ch, size_t n)
{
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, ch, n);
    s[n] = '\0';
    return s;
}

START_TEST(test_too_long)
{
    char buf[4096];
    struct config *cfg;
    /* name: 63 bytes fit, 64 do not (no silent truncation). */
    char *n63 = rep('n', CONFIG_NAME_MAX - 1), *n64 = rep('n', CONFIG_NAME_MAX);
    snprintf(buf, sizeof buf,
             "{\"arms\":[{\"name\":\"%s\",\"base_url\":\"http://x\","
             "\"price_in_per_mtok\":1,\"price_out_per_mtok\":1}]}",
             n63);
    cfg = parse_ok(buf);
    ck_assert_str_eq(cfg->arms[0].name, n63);
    config_destroy(cfg);
    snprintf(buf, sizeof buf,
             "{\"arms\":[{\"name\":\"%s\",\"base_url\":\"http://x\","
             "\"price_in_per_mtok\":1,\"price_out_per_mtok\":1}]}",
             n64);
    parse_bad(buf, "arms[0].name", "too long");

    char *u = rep('u', 511 - 7);
    snprintf(buf, sizeof buf,
             "{\"arms\":[{\"name\":\"x\",\"base_url\":\"http://%s\","
             "\"price_in_per_mtok\":1,\"price_out_per_mtok\":1}]}",
             u);
    cfg = parse_ok(buf);
    ck_assert_uint_eq(strlen(cfg->arms[0].base_url), 511);
    config_destroy(cfg);
    snprintf(buf, sizeof buf,
             "{\"arms\":[{\"name\":\"x\",\"base_url\":\"http://%su\","
             "\"price_in_per_mtok\":1,\"price_out_per_mtok\":1}]}",
             u);
    parse_bad(buf, "arms[0].base_url", "too long");

    char *m = rep('m', 128);
    snprintf(buf, sizeof buf,
             "{\"arms\":[{\"name\":\"x\",\"base_url\":\"http://x\","
             "\"model\":\"%s\",\"price_in_per_mtok\":1,\"price_out_per_mtok\":1}]}",
             m);
    parse_bad(buf, "arms[0].model", "too long");
    snprintf(buf, sizeof buf,
             "{\"arms\":[{\"name\":\"x\",\"base_url\":\"http://x\","
             "\"api_key_env\":\"%s\",\"price_in_per_mtok\":1,\"price_out_per_mtok\":1}]}",
             n64);
    parse_bad(buf, "arms[0].api_key_env", "too long");

    char *p512 = rep('p', 512);
    char extra[2048];
    snprintf(extra, sizeof extra, "\"store\":{\"path\":\"%s\"}", p512);
    parse_bad(with(extra), "store.path", "too long");
    snprintf(extra, sizeof extra, "\"log\":{\"file\":\"%s\"}", p512);
    parse_bad(with(extra), "log.file", "too long");
    snprintf(extra, sizeof extra, "\"auth\":{\"admin_key_env\":\"%s\"}", n64);
    parse_bad(with(extra), "auth.admin_key_env", "too long");
    snprintf(extra, sizeof extra, "\"aliases\":[\"%s\"]", n64);
    parse_bad(with(extra), "aliases[0]", "too long");
    snprintf(extra, sizeof extra, "\"router\":{\"profiles\":{\"%s\":1}}", n64);
    char field[128];
    snprintf(field, sizeof field, "router.profiles.%s", n64);
    parse_bad(with(extra), field, "too long");
    snprintf(extra, sizeof extra, "\"router\":{\"default_preference\":\"%s\"}", p512);
    parse_bad(with(extra), "router.default_preference", "too long");
    char *h = rep('h', 128);
    snprintf(extra, sizeof extra, "\"listen\":\"%s:80\"", h);
    parse_bad(with(extra), "listen", "too long");
    free(n63);
    free(n64);
    free(u);
    free(m);
    free(p512);
    free(h);
}
END_TEST

START_TEST(test_listen)
{
    static const struct {
        const char *listen;
        const char *host;
        int port;
    } good[] = {{"127.0.0.1:8080", "127.0.0.1", 8080}, {"0.0.0.0:1", "0.0.0.0", 1},
                {"127.0.0.1:0", "127.0.0.1", 0},       {"localhost:65535", "localhost", 65535},
                {"[::1]:9000", "::1", 9000},           {"[::]:80", "::", 80}};
    char extra[256];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        snprintf(extra, sizeof extra, "\"listen\":\"%s\"", good[i].listen);
        struct config *cfg = parse_ok(with(extra));
        ck_assert_str_eq(cfg->listen_host, good[i].host);
        ck_assert_int_eq(cfg->listen_port, good[i].port);
        config_destroy(cfg);
    }
    static const char *const bad[] = {
        "localhost", ":8080",     "host:", "host:65536", "host:80a",         "host:-1", "host:+80",
        "::1:8080",  "[::1:8080", "[]:80", "a b:80",     "host:99999999999", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(extra, sizeof extra, "\"listen\":\"%s\"", bad[i]);
        parse_bad(with(extra), "listen", NULL);
    }
    parse_bad(with("\"listen\":8080"), "listen", "HOST:PORT");
}
END_TEST

START_TEST(test_syntax)
{
    struct config *cfg = NULL;
    char err[256];
    const char *bad = "{\n  \"arms\": [\n    {\"name\": \"a\",,}\n  ]\n}";
    ck_assert_int_eq(config_parse(bad, strlen(bad), &cfg, err, sizeof err), BD_ERR_INVALID);
    ck_assert_msg(strstr(err, "line 3") != NULL, "no line number: %s", err);
    ck_assert_ptr_null(cfg);
    /* Trailing garbage, empty input, NUL bytes, deep nesting. */
    const char *trail = "{\"arms\":[" ARM_A "]} x";
    ck_assert_int_eq(config_parse(trail, strlen(trail), &cfg, err, sizeof err), BD_ERR_INVALID);
    ck_assert_int_eq(config_parse("", 0, &cfg, err, sizeof err), BD_ERR_INVALID);
    char nul[] = "{\"arms\":[" ARM_A "]}\0{}";
    ck_assert_int_eq(config_parse(nul, sizeof nul - 1, &cfg, err, sizeof err), BD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "NUL"));
    /* Only len bytes are read: a prefix that is a whole config parses. */
    const char *two = "{\"arms\":[" ARM_A "]}{garbage";
    ck_assert_int_eq(config_parse(two, strlen(two) - 8, &cfg, err, sizeof err), 0);
    config_destroy(cfg);
    cfg = NULL;
    char deep[300];
    size_t k = 0;
    k += (size_t)snprintf(deep, sizeof deep, "{\"arms\":[" ARM_A "],\"x\":");
    for (int i = 0; i < 80; i++)
        deep[k++] = '[';
    deep[k] = '\0';
    ck_assert_int_eq(config_parse(deep, k, &cfg, err, sizeof err), BD_ERR_INVALID);
    ck_assert_msg(strstr(err, "deep") != NULL, "%s", err);
    ck_assert_ptr_null(cfg);
}
END_TEST

START_TEST(test_example_file)
{
    struct config *cfg = NULL;
    char err[512] = "";
    int rc = config_load_file(EXAMPLE_PATH, &cfg, err, sizeof err);
    ck_assert_msg(rc == 0, "example does not load: %s", err);

    /* Compare with an independent read of the same file through cJSON. */
    FILE *f = fopen(EXAMPLE_PATH, "rb");
    ck_assert_ptr_nonnull(f);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    cJSON *root = cJSON_Parse(text);
    ck_assert_ptr_nonnull(root);
    const cJSON *arms = cJSON_GetObjectItem(root, "arms");
    ck_assert_int_eq(cJSON_GetArraySize(arms), 3);
    ck_assert_uint_eq(cfg->n_arms, 3);
    for (int i = 0; i < 3; i++) {
        const cJSON *a = cJSON_GetArrayItem(arms, i);
        ck_assert_str_eq(cfg->arms[i].name, cJSON_GetObjectItem(a, "name")->valuestring);
        ck_assert_str_eq(cfg->arms[i].model, cJSON_GetObjectItem(a, "model")->valuestring);
        ck_assert(cfg->arms[i].price_in_per_mtok ==
                  cJSON_GetObjectItem(a, "price_in_per_mtok")->valuedouble);
        ck_assert(cfg->arms[i].price_out_per_mtok ==
                  cJSON_GetObjectItem(a, "price_out_per_mtok")->valuedouble);
    }
    /* Three distinct price levels: a strong, a mid and a cheap arm. */
    ck_assert(cfg->arms[0].price_out_per_mtok > cfg->arms[1].price_out_per_mtok);
    ck_assert(cfg->arms[1].price_out_per_mtok > cfg->arms[2].price_out_per_mtok);
    ck_assert_int_eq(cfg->router.dim,
                     cJSON_GetObjectItem(cJSON_GetObjectItem(root, "router"), "dim")->valueint);
    /* Every section of the schema is present in the example. */
    const char *sections[] = {"listen", "arms", "aliases", "router", "feedback",
                              "store",  "auth", "log",     "limits"};
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
        ck_assert_msg(cJSON_GetObjectItem(root, sections[i]) != NULL, "example lacks %s",
                      sections[i]);
    cJSON_Delete(root);
    config_destroy(cfg);
}
END_TEST

START_TEST(test_load_file_errors)
{
    struct config *cfg = NULL;
    char err[512];
    ck_assert_int_eq(config_load_file("/nonexistent/banditd.json", &cfg, err, sizeof err),
                     BD_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/banditd.json"));
    ck_assert_int_eq(config_load_file("/tmp", &cfg, err, sizeof err), BD_ERR_IO);
    ck_assert_ptr_null(cfg);

    /* A valid config padded with whitespace: loads at 1 MiB, refused above. */
    char path[] = "/tmp/test_config_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *json = "{\"arms\":[" ARM_A "]}";
    size_t jl = strlen(json);
    size_t total = 1024 * 1024;
    char *buf = malloc(total + 1);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, json, jl);
    memset(buf + jl, ' ', total + 1 - jl);
    ck_assert_int_eq(write(fd, buf, total), (ssize_t)total);
    ck_assert_int_eq(config_load_file(path, &cfg, err, sizeof err), 0);
    ck_assert_uint_eq(cfg->n_arms, 1);
    config_destroy(cfg);
    cfg = NULL;
    ck_assert_int_eq(write(fd, " ", 1), 1);
    ck_assert_int_eq(config_load_file(path, &cfg, err, sizeof err), BD_ERR_INVALID);
    ck_assert_msg(strstr(err, "larger") != NULL, "%s", err);
    ck_assert_ptr_null(cfg);
    /* Validation errors from a file still name the field. */
    ck_assert_int_eq(ftruncate(fd, 0), 0);
    const char *badj = "{\"arms\":[" ARM_A "],\"router\":{\"dim\":3}}";
    ck_assert_int_eq(pwrite(fd, badj, strlen(badj), 0), (ssize_t)strlen(badj));
    ck_assert_int_eq(config_load_file(path, &cfg, err, sizeof err), BD_ERR_INVALID);
    ck_assert_msg(strstr(err, "router.dim:") != NULL, "%s", err);
    close(fd);
    unlink(path);
    free(buf);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_minimal);
    tcase_add_test(tc, test_full);
    tcase_add_test(tc, test_field_errors);
    tcase_add_test(tc, test_unknown_fields);
    tcase_add_test(tc, test_resilience_fields);
    tcase_add_test(tc, test_duplicate_arm);
    tcase_add_test(tc, test_too_long);
    tcase_add_test(tc, test_listen);
    tcase_add_test(tc, test_syntax);
    tcase_add_test(tc, test_example_file);
    tcase_add_test(tc, test_load_file_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
