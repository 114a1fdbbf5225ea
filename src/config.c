/* config — parse and validate the JSON config (DESIGN.md §3, docs/config.md). */
#include "banditd/config.h"
#include "banditd/err.h"
#include "banditd/util.h"
#include "banditd/features.h"
#include "banditd/log.h"
#include "banditd/pref.h"

#include <cjson/cJSON.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_FILE_MAX (1024 * 1024) /* config_load_file refuses bigger files */
#define CONFIG_MAX_DEPTH 64           /* JSON nesting limit */
#define PATH_MAX_LEN 160              /* longest field path we print */

/* Where error messages go. */
struct ctx {
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3))) static int fail(struct ctx *c, const char *fmt, ...)
{
    if (c->err && c->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return BD_ERR_INVALID;
}

/* "parent.key" (or "key" at the top level) into out. */
static void join(char *out, size_t n, const char *parent, const char *key)
{
    if (parent[0])
        snprintf(out, n, "%s.%s", parent, key);
    else
        snprintf(out, n, "%s", key);
}

/* ---- field helpers. Each takes the parent object and its path. ---- */

/* Reject unknown and duplicate members of obj. allowed is NULL-terminated. */
static int check_fields(struct ctx *c, const cJSON *obj, const char *path,
                        const char *const *allowed)
{
    unsigned long seen = 0;
    char p[PATH_MAX_LEN];
    const cJSON *it;
    cJSON_ArrayForEach(it, obj)
    {
        int idx = -1;
        for (int i = 0; allowed[i]; i++) {
            if (strcmp(it->string, allowed[i]) == 0) {
                idx = i;
                break;
            }
        }
        join(p, sizeof p, path, it->string);
        if (idx < 0)
            return fail(c, "%s: unknown field", p);
        assert(idx < (int)(sizeof seen * CHAR_BIT));
        if (seen & (1UL << idx))
            return fail(c, "%s: given more than once", p);
        seen |= 1UL << idx;
    }
    return 0;
}

static const cJSON *member(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* Optional string member copied into dst (dstsize bytes incl. NUL). */
static int get_string(struct ctx *c, const cJSON *obj, const char *key, const char *path, char *dst,
                      size_t dstsize, int required)
{
    char p[PATH_MAX_LEN];
    const cJSON *v = member(obj, key);
    join(p, sizeof p, path, key);
    if (!v)
        return required ? fail(c, "%s: required", p) : 0;
    if (!cJSON_IsString(v) || !v->valuestring)
        return fail(c, "%s: must be a string", p);
    size_t n = strlen(v->valuestring);
    if (n >= dstsize)
        return fail(c, "%s: too long (at most %zu bytes)", p, dstsize - 1);
    memcpy(dst, v->valuestring, n + 1);
    return 0;
}

/* Optional number in a range. lo_open/hi_open make the bound exclusive;
 * desc is the human form of the range used in the error. */
static int get_number(struct ctx *c, const cJSON *obj, const char *key, const char *path,
                      double *dst, double lo, int lo_open, double hi, int hi_open, const char *desc,
                      int required)
{
    char p[PATH_MAX_LEN];
    const cJSON *v = member(obj, key);
    join(p, sizeof p, path, key);
    if (!v)
        return required ? fail(c, "%s: required (a number %s)", p, desc) : 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    int ok = isfinite(d) && (lo_open ? d > lo : d >= lo) && (hi_open ? d < hi : d <= hi);
    if (!ok)
        return fail(c, "%s: must be a number %s", p, desc);
    *dst = d;
    return 0;
}

/* Optional integer in [lo, hi] (|bounds| <= 2^53 so doubles are exact). */
static int get_integer(struct ctx *c, const cJSON *obj, const char *key, const char *path,
                       long long *dst, long long lo, long long hi)
{
    char p[PATH_MAX_LEN];
    const cJSON *v = member(obj, key);
    join(p, sizeof p, path, key);
    if (!v)
        return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!isfinite(d) || d != floor(d) || d < (double)lo || d > (double)hi)
        return fail(c, "%s: must be an integer in [%lld, %lld]", p, lo, hi);
    *dst = (long long)d;
    return 0;
}

static int get_object(struct ctx *c, const cJSON *parent, const char *key, const char *path,
                      const cJSON **out)
{
    char p[PATH_MAX_LEN];
    const cJSON *v = member(parent, key);
    *out = NULL;
    if (!v)
        return 0;
    join(p, sizeof p, path, key);
    if (!cJSON_IsObject(v))
        return fail(c, "%s: must be an object", p);
    *out = v;
    return 0;
}

/* Arm and alias names: non-empty, [A-Za-z0-9._:-]. */
static int valid_model_name(const char *s)
{
    if (!s[0])
        return 0;
    for (; *s; s++) {
        char ch = *s;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '_' || ch == ':' || ch == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

/* Environment variable names: empty, or [A-Za-z_][A-Za-z0-9_]*. */
static int valid_env_name(const char *s)
{
    if (!s[0])
        return 1;
    if (s[0] >= '0' && s[0] <= '9')
        return 0;
    for (; *s; s++) {
        char ch = *s;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '_';
        if (!ok)
            return 0;
    }
    return 1;
}

/* Profile names: a letter, then [A-Za-z0-9._-]. Never parses as a number or
 * as explicit weights. */
static int valid_profile_name(const char *s)
{
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
        return 0;
    for (s++; *s; s++) {
        char ch = *s;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '_' || ch == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

static int env_string(struct ctx *c, const cJSON *obj, const char *key, const char *path, char *dst,
                      size_t dstsize)
{
    int rc = get_string(c, obj, key, path, dst, dstsize, 0);
    if (rc)
        return rc;
    if (!valid_env_name(dst)) {
        char p[PATH_MAX_LEN];
        join(p, sizeof p, path, key);
        return fail(c, "%s: must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", p);
    }
    return 0;
}

/* ---- sections ---- */

static int parse_listen(struct ctx *c, const char *s, struct config *cfg)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return fail(c, "listen: must be \"HOST:PORT\" (e.g. \"127.0.0.1:8080\")");
    const char *h = s;
    size_t hlen = (size_t)(colon - s);
    if (h[0] == '[') { /* [IPv6]:port */
        if (hlen < 3 || h[hlen - 1] != ']')
            return fail(c, "listen: an IPv6 host must be written [ADDR]:PORT");
        h++;
        hlen -= 2;
    } else if (memchr(h, ':', hlen)) {
        return fail(c, "listen: an IPv6 host must be written [ADDR]:PORT");
    }
    for (size_t i = 0; i < hlen; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (ch <= ' ' || ch >= 0x7f || ch == '[' || ch == ']' || ch == '/')
            return fail(c, "listen: invalid character in host");
    }
    if (hlen >= sizeof cfg->listen_host)
        return fail(c, "listen: host too long (at most %zu bytes)", sizeof cfg->listen_host - 1);
    const char *port = colon + 1;
    size_t plen = strlen(port);
    long v = 0;
    if (plen == 0 || plen > 5)
        return fail(c, "listen: port must be an integer in [0, 65535] (0 = any free port)");
    for (size_t i = 0; i < plen; i++) {
        if (port[i] < '0' || port[i] > '9')
            return fail(c, "listen: port must be an integer in [0, 65535] (0 = any free port)");
        v = v * 10 + (port[i] - '0');
    }
    if (v < 0 || v > 65535)
        return fail(c, "listen: port must be an integer in [0, 65535] (0 = any free port)");
    memcpy(cfg->listen_host, h, hlen);
    cfg->listen_host[hlen] = '\0';
    cfg->listen_port = (int)v;
    return 0;
}

static int parse_arm(struct ctx *c, const cJSON *a, size_t i, struct config_arm *arm)
{
    static const char *const fields[] = {"name",
                                         "base_url",
                                         "model",
                                         "api_key_env",
                                         "price_in_per_mtok",
                                         "price_out_per_mtok",
                                         "timeout_ms",
                                         "connect_timeout_ms",
                                         "prior_quality",
                                         "ttfb_timeout_ms",
                                         "max_inflight",
                                         NULL};
    char path[32];
    int rc;
    snprintf(path, sizeof path, "arms[%zu]", i);
    if (!cJSON_IsObject(a))
        return fail(c, "%s: must be an object", path);
    if ((rc = check_fields(c, a, path, fields)))
        return rc;

    memset(arm, 0, sizeof *arm);
    arm->timeout_ms = 60000;
    arm->connect_timeout_ms = 5000;

    if ((rc = get_string(c, a, "name", path, arm->name, sizeof arm->name, 1)))
        return rc;
    if (!valid_model_name(arm->name))
        return fail(c, "%s.name: must be non-empty and use only [A-Za-z0-9._:-]", path);

    if ((rc = get_string(c, a, "base_url", path, arm->base_url, sizeof arm->base_url, 1)))
        return rc;
    const char *u = arm->base_url;
    size_t scheme = strncasecmp(u, "http://", 7) == 0    ? 7
                    : strncasecmp(u, "https://", 8) == 0 ? 8
                                                         : 0;
    if (!scheme)
        return fail(c, "%s.base_url: must start with http:// or https://", path);
    if (u[scheme] == '\0' || u[scheme] == '/')
        return fail(c, "%s.base_url: has no host", path);
    for (const char *q = u; *q; q++)
        if ((unsigned char)*q <= ' ' || (unsigned char)*q == 0x7f)
            return fail(c, "%s.base_url: must not contain spaces or control characters", path);
    /* "…/v1/" and "…/v1" mean the same: drop trailing slashes. */
    size_t ulen = strlen(arm->base_url);
    while (ulen > scheme + 1 && arm->base_url[ulen - 1] == '/')
        arm->base_url[--ulen] = '\0';

    if (member(a, "model")) {
        if ((rc = get_string(c, a, "model", path, arm->model, sizeof arm->model, 0)))
            return rc;
        if (!arm->model[0])
            return fail(c, "%s.model: must not be empty", path);
    } else {
        snprintf(arm->model, sizeof arm->model, "%s", arm->name);
    }
    if ((rc = env_string(c, a, "api_key_env", path, arm->api_key_env, sizeof arm->api_key_env)))
        return rc;
    if ((rc = get_number(c, a, "price_in_per_mtok", path, &arm->price_in_per_mtok, 0, 0, 1e9, 0,
                         ">= 0", 1)))
        return rc;
    if ((rc = get_number(c, a, "price_out_per_mtok", path, &arm->price_out_per_mtok, 0, 0, 1e9, 0,
                         ">= 0", 1)))
        return rc;
    long long t = arm->timeout_ms;
    if ((rc = get_integer(c, a, "timeout_ms", path, &t, 1, 86400000LL)))
        return rc;
    arm->timeout_ms = (long)t;
    t = arm->connect_timeout_ms;
    if ((rc = get_integer(c, a, "connect_timeout_ms", path, &t, 1, 86400000LL)))
        return rc;
    arm->connect_timeout_ms = (long)t;
    t = 0;
    if ((rc = get_integer(c, a, "ttfb_timeout_ms", path, &t, 0, 86400000LL)))
        return rc;
    arm->ttfb_timeout_ms = (long)t;
    t = 0;
    if ((rc = get_integer(c, a, "max_inflight", path, &t, 0, 1000000)))
        return rc;
    arm->max_inflight = (unsigned)t;
    if (member(a, "prior_quality")) {
        if ((rc = get_number(c, a, "prior_quality", path, &arm->prior_quality, 0, 0, 1, 0,
                             "in [0, 1]", 0)))
            return rc;
        arm->has_prior = 1;
    }
    return 0;
}

static int parse_arms(struct ctx *c, const cJSON *root, struct config *cfg)
{
    const cJSON *arms = member(root, "arms");
    if (!arms)
        return fail(c, "arms: required (a non-empty array of arms)");
    if (!cJSON_IsArray(arms))
        return fail(c, "arms: must be an array");
    int n = cJSON_GetArraySize(arms);
    if (n < 1)
        return fail(c, "arms: must hold at least one arm");
    if (n > CONFIG_MAX_ARMS)
        return fail(c, "arms: at most %d arms", CONFIG_MAX_ARMS);
    size_t i = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, arms)
    {
        int rc = parse_arm(c, a, i, &cfg->arms[i]);
        if (rc)
            return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->arms[j].name, cfg->arms[i].name) == 0)
                return fail(c, "arms[%zu].name: duplicate arm name \"%s\" (also arms[%zu])", i,
                            cfg->arms[i].name, j);
        i++;
    }
    cfg->n_arms = i;
    return 0;
}

static int parse_aliases(struct ctx *c, const cJSON *root, struct config *cfg)
{
    const cJSON *al = member(root, "aliases");
    if (!al)
        return 0;
    if (!cJSON_IsArray(al))
        return fail(c, "aliases: must be an array of names");
    int n = cJSON_GetArraySize(al);
    if (n < 1 || n > CONFIG_MAX_ALIASES)
        return fail(c, "aliases: must hold 1 to %d names", CONFIG_MAX_ALIASES);
    size_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, al)
    {
        if (!cJSON_IsString(v) || !v->valuestring)
            return fail(c, "aliases[%zu]: must be a string", i);
        if (strlen(v->valuestring) >= CONFIG_NAME_MAX)
            return fail(c, "aliases[%zu]: too long (at most %d bytes)", i, CONFIG_NAME_MAX - 1);
        if (!valid_model_name(v->valuestring))
            return fail(c, "aliases[%zu]: must be non-empty and use only [A-Za-z0-9._:-]", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->aliases[j], v->valuestring) == 0)
                return fail(c, "aliases[%zu]: duplicate alias \"%s\"", i, v->valuestring);
        snprintf(cfg->aliases[i], CONFIG_NAME_MAX, "%s", v->valuestring);
        i++;
    }
    cfg->n_aliases = i;
    return 0;
}

/* One profile value: a number q (quality=q, cost=1-q) or {quality,cost,latency}. */
static int parse_profile(struct ctx *c, const cJSON *v, const char *path, struct pref_weights *w)
{
    if (cJSON_IsNumber(v)) {
        double q = v->valuedouble;
        if (!isfinite(q) || q < 0 || q > 1)
            return fail(c, "%s: must be a number in [0, 1] or an object of weights", path);
        *w = pref_from_scalar(q);
        return 0;
    }
    if (!cJSON_IsObject(v))
        return fail(c, "%s: must be a number in [0, 1] or an object of weights", path);
    static const char *const fields[] = {"quality", "cost", "latency", NULL};
    int rc = check_fields(c, v, path, fields);
    if (rc)
        return rc;
    double q = 0, co = 0, l = 0;
    if ((rc = get_number(c, v, "quality", path, &q, 0, 0, 1, 0, "in [0, 1]", 0)) ||
        (rc = get_number(c, v, "cost", path, &co, 0, 0, 1, 0, "in [0, 1]", 0)) ||
        (rc = get_number(c, v, "latency", path, &l, 0, 0, 1, 0, "in [0, 1]", 0)))
        return rc;
    double sum = q + co + l;
    if (!(sum > 0))
        return fail(c, "%s: weights must sum to more than 0", path);
    w->quality = q / sum;
    w->cost = co / sum;
    w->latency = l / sum;
    return 0;
}

static void default_profiles(struct config_router *r)
{
    static const struct {
        const char *name;
        double q;
    } defs[] = {{"cheap", 0.8}, {"balanced", 0.95}, {"best", 1.0}};
    r->n_profiles = 0;
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
        snprintf(r->profiles[i].name, PREF_NAME_MAX, "%s", defs[i].name);
        r->profiles[i].w = pref_from_scalar(defs[i].q);
        r->n_profiles++;
    }
}

static int parse_profiles(struct ctx *c, const cJSON *obj, struct config_router *r)
{
    char p[PATH_MAX_LEN];
    if (cJSON_GetArraySize(obj) > CONFIG_MAX_PROFILES)
        return fail(c, "router.profiles: at most %d profiles", CONFIG_MAX_PROFILES);
    const cJSON *v;
    cJSON_ArrayForEach(v, obj)
    {
        snprintf(p, sizeof p, "router.profiles.%.64s", v->string);
        for (const cJSON *u = obj->child; u != v; u = u->next)
            if (strcmp(u->string, v->string) == 0)
                return fail(c, "%s: given more than once", p);
        if (strlen(v->string) >= PREF_NAME_MAX)
            return fail(c, "%s: name too long (at most %d bytes)", p, PREF_NAME_MAX - 1);
        if (!valid_profile_name(v->string))
            return fail(c, "%s: a profile name starts with a letter and uses only [A-Za-z0-9._-]",
                        p);
        struct pref_weights w;
        int rc = parse_profile(c, v, p, &w);
        if (rc)
            return rc;
        size_t k = 0;
        while (k < r->n_profiles && strcmp(r->profiles[k].name, v->string) != 0)
            k++;
        if (k == r->n_profiles) {
            if (r->n_profiles == CONFIG_MAX_PROFILES)
                return fail(c, "router.profiles: at most %d profiles (the defaults included)",
                            CONFIG_MAX_PROFILES);
            snprintf(r->profiles[k].name, PREF_NAME_MAX, "%s", v->string);
            r->n_profiles++;
        }
        r->profiles[k].w = w;
    }
    return 0;
}

static int parse_router(struct ctx *c, const cJSON *root, struct config_router *r)
{
    static const char *const fields[] = {
        "policy",     "alpha", "alpha_base",     "lambda",
        "mu0",        "dim",   "forgetting",     "text_weight",
        "thompson_v", "seed",  "refactor_every", "default_preference",
        "profiles",   NULL};
    const cJSON *o;
    int rc = get_object(c, root, "router", "", &o);
    if (rc)
        return rc;
    if (o) {
        if ((rc = check_fields(c, o, "router", fields)))
            return rc;
        char policy[16] = "linucb";
        const cJSON *pv = member(o, "policy");
        if (pv &&
            (!cJSON_IsString(pv) || !pv->valuestring ||
             (strcmp(pv->valuestring, "linucb") != 0 && strcmp(pv->valuestring, "thompson") != 0)))
            return fail(c, "router.policy: must be \"linucb\" or \"thompson\"");
        if (pv)
            snprintf(policy, sizeof policy, "%s", pv->valuestring);
        r->policy = strcmp(policy, "thompson") == 0 ? CONFIG_POLICY_THOMPSON : CONFIG_POLICY_LINUCB;
        if ((rc = get_number(c, o, "alpha", "router", &r->alpha, 0, 0, 1e6, 0, ">= 0", 0)) ||
            (rc = get_number(c, o, "alpha_base", "router", &r->alpha_base, 0, 0, 1e6, 0, ">= 0",
                             0)) ||
            (rc = get_number(c, o, "lambda", "router", &r->lambda, 0, 1, 1e12, 0, "> 0", 0)) ||
            (rc = get_number(c, o, "mu0", "router", &r->mu0, -1e6, 0, 1e6, 0, "in [-1e6, 1e6]",
                             0)) ||
            (rc = get_number(c, o, "forgetting", "router", &r->forgetting, 0, 1, 1, 0, "in (0, 1]",
                             0)) ||
            (rc = get_number(c, o, "text_weight", "router", &r->text_weight, 0, 1,
                             FEATURES_MAX_TEXT_WEIGHT, 0, "in (0, 4]", 0)) ||
            (rc =
                 get_number(c, o, "thompson_v", "router", &r->thompson_v, 0, 0, 1e6, 0, ">= 0", 0)))
            return rc;
        long long v = r->dim;
        if ((rc = get_integer(c, o, "dim", "router", &v, FEATURES_MIN_DIM, FEATURES_MAX_DIM)))
            return rc;
        r->dim = (int)v;
        v = (long long)r->seed;
        if ((rc = get_integer(c, o, "seed", "router", &v, 0, 9007199254740992LL)))
            return rc;
        r->seed = (unsigned long long)v;
        v = r->refactor_every;
        if ((rc = get_integer(c, o, "refactor_every", "router", &v, 1, INT_MAX)))
            return rc;
        r->refactor_every = (int)v;
        const cJSON *pr;
        if ((rc = get_object(c, o, "profiles", "router", &pr)))
            return rc;
        if (pr && (rc = parse_profiles(c, pr, r)))
            return rc;
        if ((rc = get_string(c, o, "default_preference", "router", r->default_preference,
                             sizeof r->default_preference, 0)))
            return rc;
    }
    struct pref_weights w;
    char perr[256];
    if (pref_parse(r->default_preference, strlen(r->default_preference), r->profiles, r->n_profiles,
                   &w, perr, sizeof perr) != 0)
        return fail(c, "router.default_preference: %s", perr);
    return 0;
}

static int parse_sections(struct ctx *c, const cJSON *root, struct config *cfg)
{
    const cJSON *o;
    long long v;
    int rc;

    /* feedback */
    if ((rc = get_object(c, root, "feedback", "", &o)))
        return rc;
    if (o) {
        static const char *const f[] = {"ttl_s", "max_pending", NULL};
        if ((rc = check_fields(c, o, "feedback", f)))
            return rc;
        v = cfg->feedback.ttl_s;
        if ((rc = get_integer(c, o, "ttl_s", "feedback", &v, 1, 365LL * 86400)))
            return rc;
        cfg->feedback.ttl_s = (long)v;
        v = (long long)cfg->feedback.max_pending;
        if ((rc = get_integer(c, o, "max_pending", "feedback", &v, 1, 1000000000LL)))
            return rc;
        cfg->feedback.max_pending = (size_t)v;
    }
    /* store */
    if ((rc = get_object(c, root, "store", "", &o)))
        return rc;
    if (o) {
        static const char *const f[] = {
            "path", "snapshot_interval_s", "snapshot_every", "queue_cap", "redis", NULL};
        if ((rc = check_fields(c, o, "store", f)) ||
            (rc = get_string(c, o, "path", "store", cfg->store.path, sizeof cfg->store.path, 0)) ||
            (rc = get_string(c, o, "redis", "store", cfg->store.redis, sizeof cfg->store.redis, 0)))
            return rc;
        if (cfg->store.redis[0] && strncmp(cfg->store.redis, "redis://", 8) != 0)
            return fail(c, "store.redis: must be a URL redis://[:password@]host[:port][/db]");
        if (cfg->store.redis[0] && cfg->store.path[0])
            return fail(c, "store: give either path (one daemon, SQLite) or redis (replicas), "
                           "not both");
        v = cfg->store.snapshot_interval_s;
        if ((rc = get_integer(c, o, "snapshot_interval_s", "store", &v, 1, 86400)))
            return rc;
        cfg->store.snapshot_interval_s = (long)v;
        v = cfg->store.snapshot_every;
        if ((rc = get_integer(c, o, "snapshot_every", "store", &v, 1, 1000000000LL)))
            return rc;
        cfg->store.snapshot_every = (long)v;
        v = cfg->store.queue_cap;
        if ((rc = get_integer(c, o, "queue_cap", "store", &v, 16, 1048576)))
            return rc;
        cfg->store.queue_cap = (long)v;
    }
    /* auth */
    if ((rc = get_object(c, root, "auth", "", &o)))
        return rc;
    if (o) {
        static const char *const f[] = {"client_keys_env", "admin_key_env", "client_keys_file",
                                        "allow_unauthenticated_remote", NULL};
        if ((rc = check_fields(c, o, "auth", f)) ||
            (rc = env_string(c, o, "client_keys_env", "auth", cfg->auth.client_keys_env,
                             sizeof cfg->auth.client_keys_env)) ||
            (rc = env_string(c, o, "admin_key_env", "auth", cfg->auth.admin_key_env,
                             sizeof cfg->auth.admin_key_env)) ||
            (rc = get_string(c, o, "client_keys_file", "auth", cfg->auth.client_keys_file,
                             sizeof cfg->auth.client_keys_file, 0)))
            return rc;
        const cJSON *ar = member(o, "allow_unauthenticated_remote");
        if (ar) {
            if (!cJSON_IsBool(ar))
                return fail(c, "auth.allow_unauthenticated_remote: must be true or false");
            cfg->auth.allow_unauthenticated_remote = cJSON_IsTrue(ar) ? 1 : 0;
        }
    }
    /* health */
    if ((rc = get_object(c, root, "health", "", &o)))
        return rc;
    if (o) {
        static const char *const f[] = {"failure_threshold", "cooldown_ms", NULL};
        if ((rc = check_fields(c, o, "health", f)))
            return rc;
        v = cfg->health.failure_threshold;
        if ((rc = get_integer(c, o, "failure_threshold", "health", &v, 1, 1000000)))
            return rc;
        cfg->health.failure_threshold = (int)v;
        v = cfg->health.cooldown_ms;
        if ((rc = get_integer(c, o, "cooldown_ms", "health", &v, 1, 86400000LL)))
            return rc;
        cfg->health.cooldown_ms = (long)v;
    }
    /* log */
    if ((rc = get_object(c, root, "log", "", &o)))
        return rc;
    if (o) {
        static const char *const f[] = {"level", "file", "debug_bodies", NULL};
        char level[16] = "info";
        if ((rc = check_fields(c, o, "log", f)))
            return rc;
        const cJSON *lv = member(o, "level");
        if (lv) {
            if (!cJSON_IsString(lv) || !lv->valuestring || strlen(lv->valuestring) >= sizeof level)
                return fail(c, "log.level: must be one of debug, info, warn, error");
            snprintf(level, sizeof level, "%s", lv->valuestring);
        }
        int l = log_level_parse(level);
        if (l < 0)
            return fail(c, "log.level: must be one of debug, info, warn, error");
        cfg->log.level = l;
        if ((rc = get_string(c, o, "file", "log", cfg->log.file, sizeof cfg->log.file, 0)))
            return rc;
        const cJSON *db = member(o, "debug_bodies");
        if (db) {
            if (!cJSON_IsBool(db))
                return fail(c, "log.debug_bodies: must be true or false");
            cfg->log.debug_bodies = cJSON_IsTrue(db) ? 1 : 0;
        }
    }
    /* limits */
    if ((rc = get_object(c, root, "limits", "", &o)))
        return rc;
    if (o) {
        static const char *const f[] = {
            "max_body_bytes",     "max_connections",  "connection_timeout_s",
            "max_inflight",       "max_fallbacks",    "max_retries",
            "request_timeout_ms", "shutdown_grace_s", NULL};
        if ((rc = check_fields(c, o, "limits", f)))
            return rc;
        v = (long long)cfg->limits.max_body_bytes;
        if ((rc = get_integer(c, o, "max_body_bytes", "limits", &v, 1024, 1LL << 30)))
            return rc;
        cfg->limits.max_body_bytes = (size_t)v;
        v = cfg->limits.max_connections;
        if ((rc = get_integer(c, o, "max_connections", "limits", &v, 1, 1000000)))
            return rc;
        cfg->limits.max_connections = (unsigned)v;
        v = cfg->limits.connection_timeout_s;
        if ((rc = get_integer(c, o, "connection_timeout_s", "limits", &v, 1, 86400)))
            return rc;
        cfg->limits.connection_timeout_s = (unsigned)v;
        v = cfg->limits.max_inflight;
        if ((rc = get_integer(c, o, "max_inflight", "limits", &v, 1, 1000000)))
            return rc;
        cfg->limits.max_inflight = (unsigned)v;
        v = cfg->limits.max_fallbacks;
        if ((rc = get_integer(c, o, "max_fallbacks", "limits", &v, 0, CONFIG_MAX_ARMS)))
            return rc;
        cfg->limits.max_fallbacks = (int)v;
        v = cfg->limits.max_retries;
        if ((rc = get_integer(c, o, "max_retries", "limits", &v, 0, 10)))
            return rc;
        cfg->limits.max_retries = (int)v;
        v = cfg->limits.request_timeout_ms;
        if ((rc = get_integer(c, o, "request_timeout_ms", "limits", &v, 1, 86400000LL)))
            return rc;
        cfg->limits.request_timeout_ms = (long)v;
        v = cfg->limits.shutdown_grace_s;
        if ((rc = get_integer(c, o, "shutdown_grace_s", "limits", &v, 0, 86400)))
            return rc;
        cfg->limits.shutdown_grace_s = (unsigned)v;
    }
    return 0;
}

static void fill_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->listen_host, sizeof cfg->listen_host, "127.0.0.1");
    cfg->listen_port = 8080;
    cfg->n_arms = 0;
    snprintf(cfg->aliases[0], CONFIG_NAME_MAX, "auto");
    cfg->n_aliases = 1;
    struct config_router *r = &cfg->router;
    r->policy = CONFIG_POLICY_LINUCB;
    r->alpha = 0.1;
    r->alpha_base = 0.0;
    r->lambda = 1.0;
    r->mu0 = 1.0;
    r->dim = 256;
    r->forgetting = 1.0;
    r->text_weight = FEATURES_TEXT_WEIGHT;
    r->thompson_v = 0.1;
    r->seed = 1;
    r->refactor_every = 1000;
    snprintf(r->default_preference, sizeof r->default_preference, "balanced");
    default_profiles(r);
    cfg->feedback.ttl_s = 86400;
    cfg->feedback.max_pending = 1000000;
    cfg->store.path[0] = '\0';
    cfg->store.redis[0] = '\0';
    cfg->store.snapshot_interval_s = 60;
    cfg->store.snapshot_every = 1000;
    cfg->store.queue_cap = 4096;
    cfg->auth.client_keys_env[0] = '\0';
    cfg->auth.admin_key_env[0] = '\0';
    cfg->log.level = LOG_INFO;
    cfg->log.file[0] = '\0';
    cfg->limits.max_body_bytes = 4u * 1024 * 1024;
    cfg->limits.max_connections = 10000;
    cfg->limits.connection_timeout_s = 30;
    cfg->limits.max_inflight = 10000;
    cfg->limits.max_fallbacks = 2;
    cfg->limits.max_retries = 1;
    cfg->limits.request_timeout_ms = 120000;
    cfg->limits.shutdown_grace_s = 30;
    cfg->auth.client_keys_file[0] = '\0';
    cfg->auth.allow_unauthenticated_remote = 0;
    cfg->health.failure_threshold = 5;
    cfg->health.cooldown_ms = 10000;
}

struct config *config_defaults(void)
{
    struct config *cfg = malloc(sizeof *cfg);
    if (!cfg)
        return NULL;
    fill_defaults(cfg);
    return cfg;
}

void config_destroy(struct config *cfg)
{
    free(cfg);
}

static int parse_root(struct ctx *c, const cJSON *root, struct config *cfg)
{
    static const char *const fields[] = {"listen", "arms", "aliases", "router", "feedback", "store",
                                         "auth",   "log",  "limits",  "health", NULL};
    int rc;
    if (!cJSON_IsObject(root))
        return fail(c, "(top level): must be a JSON object");
    if ((rc = check_fields(c, root, "", fields)))
        return rc;
    const cJSON *l = member(root, "listen");
    if (l) {
        if (!cJSON_IsString(l) || !l->valuestring)
            return fail(c, "listen: must be a string \"HOST:PORT\"");
        if ((rc = parse_listen(c, l->valuestring, cfg)))
            return rc;
    }
    if ((rc = parse_arms(c, root, cfg)) || (rc = parse_aliases(c, root, cfg)) ||
        (rc = parse_router(c, root, &cfg->router)) || (rc = parse_sections(c, root, cfg)))
        return rc;
    for (size_t i = 0; i < cfg->n_arms; i++)
        for (size_t j = 0; j < cfg->n_aliases; j++)
            if (strcmp(cfg->arms[i].name, cfg->aliases[j]) == 0)
                return fail(c, "arms[%zu].name: \"%s\" is also a router alias", i,
                            cfg->arms[i].name);
    return 0;
}

int config_parse(const char *json, size_t len, struct config **out, char *err, size_t errlen)
{
    struct ctx c = {err, errlen};
    assert(out != NULL);
    if (err && errlen)
        err[0] = '\0';
    if (!json)
        len = 0;
    int pre = util_json_prescan(json, len, CONFIG_MAX_DEPTH);
    if (pre == -1)
        return fail(&c, "(top level): the config contains a NUL byte");
    if (pre == -2)
        return fail(&c, "(top level): JSON nested deeper than %d levels", CONFIG_MAX_DEPTH);

    /* A NUL-terminated private copy: cJSON then never reads past the end. */
    char *buf = malloc(len + 1);
    if (!buf)
        return BD_ERR_NOMEM;
    if (len)
        memcpy(buf, json, len);
    buf[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(buf, &end, 1);
    if (!root) {
        size_t off = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
        size_t line = 1, col = 1;
        for (size_t i = 0; i < off; i++) {
            if (buf[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        free(buf);
        return fail(&c, "(top level): invalid JSON near line %zu, column %zu", line, col);
    }
    free(buf);

    struct config *cfg = config_defaults();
    if (!cfg) {
        cJSON_Delete(root);
        return BD_ERR_NOMEM;
    }
    int rc = parse_root(&c, root, cfg);
    cJSON_Delete(root);
    if (rc) {
        config_destroy(cfg);
        return rc;
    }
    assert(cfg->n_arms >= 1 && cfg->n_aliases >= 1);
    *out = cfg;
    return 0;
}

int config_load_file(const char *path, struct config **out, char *err, size_t errlen)
{
    struct ctx c = {err, errlen};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(&c, "%s: %s", path, strerror(errno));
        return BD_ERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        fail(&c, "%s: not a regular file", path);
        close(fd);
        return BD_ERR_IO;
    }
    /* Read at most CONFIG_FILE_MAX + 1 bytes so a bigger file is detected. */
    char *buf = malloc(CONFIG_FILE_MAX + 1);
    if (!buf) {
        close(fd);
        return BD_ERR_NOMEM;
    }
    size_t got = 0;
    while (got < CONFIG_FILE_MAX + 1) {
        ssize_t n = read(fd, buf + got, CONFIG_FILE_MAX + 1 - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail(&c, "%s: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return BD_ERR_IO;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got > CONFIG_FILE_MAX) {
        free(buf);
        return fail(&c, "%s: larger than %d bytes", path, CONFIG_FILE_MAX);
    }
    char inner[512];
    int rc = config_parse(buf, got, out, inner, sizeof inner);
    free(buf);
    if (rc)
        fail(&c, "%s: %s", path, inner);
    return rc;
}

int config_arm_index(const struct config *cfg, const char *name)
{
    if (!cfg || !name)
        return -1;
    for (size_t i = 0; i < cfg->n_arms; i++)
        if (strcmp(cfg->arms[i].name, name) == 0)
            return (int)i;
    return -1;
}

int config_is_alias(const struct config *cfg, const char *name)
{
    if (!cfg || !name)
        return 0;
    for (size_t i = 0; i < cfg->n_aliases; i++)
        if (strcmp(cfg->aliases[i], name) == 0)
            return 1;
    return 0;
}
