/* store_redis — replicas sharing decisions, feedback and snapshots in Redis.
 * Contract: include/banditd/store_redis.h; design and guarantees:
 * docs/scale-out.md. */
#include "banditd/store_redis.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "banditd/err.h"
#include "banditd/features.h"
#include "banditd/log.h"
#include "banditd/util.h"

#define SRD_MAX_DIM 65536
#define SRD_XREAD_COUNT 512
#define SRD_BACKOFF_MIN_MS 50
#define SRD_BACKOFF_MAX_MS 2000
#define SRD_GAP_CHECK_MS 5000
#define SRD_KEY_MAX (STORE_REDIS_PREFIX_MAX + STORE_ID_MAX + 16)
#define SRD_MAX_ARGS 24

/* ---------- Lua scripts (run atomically by Redis) ---------- */

enum script_id { SC_FEEDBACK, SC_DECISION, SC_COMPLETE, SC_GET, SC_TRIM, SC_HEARTBEAT, SC_COUNT };

/* KEYS: fb:<rid>, stream, d:<rid>, dx:<rid>. ARGV: ttl_ms, rid, arm, x, reward, at.
 * Exactly once: the existence test and the writes run as one atomic unit,
 * which is what SET NX + XADD in one MULTI would give. */
static const char *const script_src[SC_COUNT] = {
    [SC_FEEDBACK] = "local ex = redis.call('GET', KEYS[1])\n"
                    "if ex then return {0, ex} end\n"
                    "local id = redis.call('XADD', KEYS[2], '*', 'r', ARGV[2], 'a', ARGV[3],"
                    " 'x', ARGV[4], 'v', ARGV[5], 't', ARGV[6])\n"
                    "redis.call('SET', KEYS[1], id, 'PX', ARGV[1])\n"
                    "redis.call('DEL', KEYS[3], KEYS[4])\n"
                    "return {1, id}\n",
    /* KEYS: d:<id>, c:<cid>, dx:<id>. ARGV: ttl_ms, id, a, x, wq, wc, wl, c, k, l, u, cid,
     * wt (tolerance, "" = none).
     * x lives in its own string key: a hash holding a 2 KiB field loses its
     * compact listpack encoding (measured 5.9 KB per decision vs ~2.8 KB). */
    [SC_DECISION] =
        "redis.call('HSET', KEYS[1], 'a', ARGV[3], 'wq', ARGV[5],"
        " 'wc', ARGV[6], 'wl', ARGV[7], 'c', ARGV[8], 'k', ARGV[9], 'l', ARGV[10],"
        " 'u', ARGV[11], 'cid', ARGV[12], 'wt', ARGV[13])\n"
        "redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
        "redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[1])\n"
        "if ARGV[12] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1]) end\n"
        "return 1\n",
    /* KEYS: d:<id>, c:<cid>. ARGV: id, cid, cost, latency */
    [SC_COMPLETE] = "local ttl = redis.call('PTTL', KEYS[1])\n"
                    "if ttl <= 0 then return 0 end\n"
                    "if ARGV[2] ~= '' then\n"
                    "  redis.call('HSET', KEYS[1], 'cid', ARGV[2])\n"
                    "  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)\n"
                    "end\n"
                    "redis.call('HSET', KEYS[1], 'k', ARGV[3], 'l', ARGV[4])\n"
                    "return 1\n",
    /* KEYS: d:<id>, c:<id>, fb:<id>. ARGV: prefix, id.
     * Returns {0} unknown, {2, rid} already has feedback, {1, rid, fields…}. */
    [SC_GET] = "local rid = ARGV[2]\n"
               "if redis.call('EXISTS', KEYS[3]) == 1 then return {2, rid} end\n"
               "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
               "  local m = redis.call('GET', KEYS[2])\n"
               "  if not m then return {0} end\n"
               "  rid = m\n"
               "  if redis.call('EXISTS', ARGV[1] .. 'fb:' .. rid) == 1 then return {2, rid} end\n"
               "end\n"
               "local v = redis.call('HMGET', ARGV[1] .. 'd:' .. rid, 'a', 'wq', 'wc', 'wl',"
               " 'c', 'k', 'l', 'u', 'cid', 'wt')\n"
               "local x = redis.call('GET', ARGV[1] .. 'dx:' .. rid)\n"
               "if not v[1] or not x then return {0} end\n"
               "return {1, rid, v[1], x, v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9],"
               " v[10] or ''}\n",
    /* KEYS: arms, replicas, stream. ARGV: prefix, stale_ms, replica id, its applied
     * pos (published first, as a heartbeat). Returns entries removed. */
    [SC_TRIM] =
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "redis.call('HSET', KEYS[2], ARGV[3], ARGV[4] .. ' ' .. string.format('%d', now))\n"
        "local function parse(s)\n"
        "  local a, b = string.match(s, '^(%d+)%-(%d+)$')\n"
        "  if not a then return nil end\n"
        "  return {tonumber(a), tonumber(b)}\n"
        "end\n"
        "local function less(x, y) return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2]) end\n"
        "local arms = redis.call('SMEMBERS', KEYS[1])\n"
        "if #arms == 0 then return 0 end\n"
        "local min = nil\n"
        "for _, a in ipairs(arms) do\n"
        "  local p = redis.call('HGET', ARGV[1] .. 'snap:' .. a, 'pos')\n"
        "  if not p then return 0 end\n"
        "  local q = parse(p)\n"
        "  if not q then return 0 end\n"
        "  if not min or less(q, min) then min = q end\n"
        "end\n"
        "local reps = redis.call('HGETALL', KEYS[2])\n"
        "for i = 1, #reps, 2 do\n"
        "  local pos, ms = string.match(reps[i + 1], '^(%S+) (%d+)$')\n"
        "  if not pos or now - tonumber(ms) > tonumber(ARGV[2]) then\n"
        "    redis.call('HDEL', KEYS[2], reps[i])\n"
        "  else\n"
        "    local q = parse(pos)\n"
        "    if q and less(q, min) then min = q end\n"
        "  end\n"
        "end\n"
        "return redis.call('XTRIM', KEYS[3], 'MINID', string.format('%d-%d', min[1], min[2]))\n",
    /* KEYS: replicas. ARGV: replica id, applied pos. Server clock. */
    [SC_HEARTBEAT] =
        "local t = redis.call('TIME')\n"
        "local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. string.format('%d', ms))\n"
        "return 1\n",
};

/* ---------- operations and events ---------- */

enum op_kind { OP_DECISION, OP_COMPLETE, OP_GET, OP_FEEDBACK, OP_SNAPSHOT, OP_TRIM, OP_HEARTBEAT };

struct snap_arm {
    char name[STORE_NAME_MAX];
    struct store_arm_state st; /* pointers unused */
    unsigned char *A, *b;      /* encoded doubles */
    struct store_redis_pos pos;
};

struct op {
    enum op_kind kind;
    struct op *next;
    int rc;
    int use_eval;                     /* retry with EVAL after NOSCRIPT */
    int again;                        /* OP_GET found nothing yet: look again later (worker) */
    double give_up_ms, not_before_ms; /* OP_GET retry window (monotonic) */
    store_done_fn done_cb;
    store_redis_decision_fn dec_cb;
    store_redis_feedback_fn fb_cb;
    void *ud;
    int64_t count;
    struct store_redis_pos pos;
    char id[STORE_ID_MAX];
    char id2[STORE_ID_MAX];
    char arm[STORE_NAME_MAX];
    struct pref_weights w;
    double t1, t2, t3; /* decision: created, cost, latency; feedback: reward, at */
    uint64_t client;
    int n_snap;
    struct snap_arm *snap;
    double *xres; /* OP_GET: decoded x of the result */
    size_t xlen;
    unsigned char *x; /* encoded features */
};

struct event {
    struct event *next;
    struct store_redis_pos pos;
    int skip;
    double reward, at_s;
    char rid[STORE_ID_MAX];
    char arm[STORE_NAME_MAX];
    double x[];
};

struct arm_pos {
    char name[STORE_NAME_MAX];
    struct store_redis_pos pos;
};

struct conn_cfg {
    char host[256];
    int port;
    int db;
    char password[128];
};

struct store_redis {
    int dim;
    struct conn_cfg cc;
    struct store_redis_opts o;
    char prefix[STORE_REDIS_PREFIX_MAX];
    char replica_id[40];
    char sha[SC_COUNT][41];
    redisContext *sync; /* loop thread, start-up only */

    /* worker */
    pthread_t worker;
    int worker_started;
    redisContext *wctx;
    double w_next_try;
    int w_backoff;

    /* reader */
    pthread_t reader;
    int reader_started;
    struct store_redis_pos start_pos;
    struct arm_pos *snap_pos; /* loaded snapshot positions; immutable after start */
    int n_snap_pos;

    /* q_mu + q_cv: operation queue, stop, stats. */
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    pthread_cond_t stop_cv; /* with q_mu: signalled only by close (reader sleeps) */
    struct op *q_head, *q_tail;
    size_t q_count;
    uint64_t q_enq, q_fin; /* accepted ops / finished ops (for flush) */
    int stop;
    struct store_redis_stats st;

    /* done_mu: finished operations. */
    pthread_mutex_t done_mu;
    struct op *d_head, *d_tail;

    /* ev_mu + ev_cv: decoded events (reader -> loop). */
    pthread_mutex_t ev_mu;
    pthread_cond_t ev_cv;
    struct event *e_head, *e_tail;
    size_t e_count;

    /* loop thread */
    struct store_redis_pos applied;
    double next_hb;
    int closing;
};

/* ---------- small helpers ---------- */

static void put_u64le(unsigned char *p, uint64_t u)
{
    for (int k = 0; k < 8; k++)
        p[k] = (unsigned char)(u >> (8 * k));
}

static uint64_t get_u64le(const unsigned char *p)
{
    uint64_t u = 0;
    for (int k = 0; k < 8; k++)
        u |= (uint64_t)p[k] << (8 * k);
    return u;
}

static void put_f64(unsigned char *p, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    put_u64le(p, u);
}

static double get_f64(const unsigned char *p)
{
    uint64_t u = get_u64le(p);
    double d;
    memcpy(&d, &u, 8);
    return d;
}

static void enc_doubles(unsigned char *out, const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        put_f64(out + 8 * i, x[i]);
}

static void dec_doubles(double *out, const unsigned char *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = get_f64(in + 8 * i);
}

/* Features: 'D' + dim LE doubles, or 'S' + (u32 index, f64 value) pairs in
 * increasing index order, whichever is smaller. Returns a malloc'd buffer. */
static unsigned char *enc_x(const double *x, int dim, size_t *len)
{
    size_t nz = 0;
    for (int i = 0; i < dim; i++)
        nz += x[i] != 0.0;
    size_t dense = 1 + (size_t)dim * 8, sparse = 1 + nz * 12;
    unsigned char *p = malloc(sparse < dense ? sparse : dense);
    if (!p)
        return NULL;
    if (sparse < dense) {
        p[0] = 'S';
        unsigned char *q = p + 1;
        for (int i = 0; i < dim; i++) {
            if (x[i] == 0.0)
                continue;
            for (int k = 0; k < 4; k++)
                q[k] = (unsigned char)((uint32_t)i >> (8 * k));
            put_f64(q + 4, x[i]);
            q += 12;
        }
        *len = sparse;
    } else {
        p[0] = 'D';
        enc_doubles(p + 1, x, (size_t)dim);
        *len = dense;
    }
    return p;
}

static int dec_x(const char *buf, size_t len, int dim, double *out)
{
    const unsigned char *p = (const unsigned char *)buf;
    if (len < 1)
        return BD_ERR_CORRUPT;
    if (p[0] == 'D') {
        if (len != 1 + (size_t)dim * 8)
            return BD_ERR_CORRUPT;
        dec_doubles(out, p + 1, (size_t)dim);
    } else if (p[0] == 'S') {
        if ((len - 1) % 12 != 0)
            return BD_ERR_CORRUPT;
        memset(out, 0, (size_t)dim * sizeof *out);
        long prev = -1;
        for (size_t off = 1; off < len; off += 12) {
            uint32_t idx = 0;
            for (int k = 0; k < 4; k++)
                idx |= (uint32_t)p[off + k] << (8 * k);
            if ((long)idx <= prev || idx >= (uint32_t)dim)
                return BD_ERR_CORRUPT;
            prev = (long)idx;
            out[idx] = get_f64(p + off + 4);
        }
    } else {
        return BD_ERR_CORRUPT;
    }
    return util_all_finite(out, (size_t)dim) ? 0 : BD_ERR_CORRUPT;
}

static int parse_double(const char *s, size_t len, double *out)
{
    char tmp[64];
    if (!s || len == 0 || len >= sizeof tmp)
        return BD_ERR_CORRUPT;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    char *end;
    errno = 0;
    double d = strtod(tmp, &end);
    if (*end || errno == ERANGE || !isfinite(d))
        return BD_ERR_CORRUPT;
    *out = d;
    return 0;
}

static int parse_u64(const char *s, size_t len, int base, uint64_t *out)
{
    char tmp[32];
    if (!s || len == 0 || len >= sizeof tmp || s[0] == '-')
        return BD_ERR_CORRUPT;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    char *end;
    errno = 0;
    unsigned long long v = strtoull(tmp, &end, base);
    if (*end || errno == ERANGE)
        return BD_ERR_CORRUPT;
    *out = (uint64_t)v;
    return 0;
}

/* ---------- stream positions ---------- */

int store_redis_pos_parse(const char *str, struct store_redis_pos *out)
{
    if (!str || !out)
        return BD_ERR_INVALID;
    const char *dash = strchr(str, '-');
    size_t n1 = dash ? (size_t)(dash - str) : strlen(str);
    struct store_redis_pos p = {0, 0};
    if (parse_u64(str, n1, 10, &p.ms) != 0)
        return BD_ERR_INVALID;
    if (dash && parse_u64(dash + 1, strlen(dash + 1), 10, &p.seq) != 0)
        return BD_ERR_INVALID;
    for (const char *c = str; *c; c++)
        if (!((*c >= '0' && *c <= '9') || *c == '-'))
            return BD_ERR_INVALID;
    *out = p;
    return 0;
}

char *store_redis_pos_format(struct store_redis_pos p, char *out)
{
    snprintf(out, STORE_REDIS_POS_MAX, "%" PRIu64 "-%" PRIu64, p.ms, p.seq);
    return out;
}

int store_redis_pos_cmp(struct store_redis_pos a, struct store_redis_pos b)
{
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    if (a.seq != b.seq)
        return a.seq < b.seq ? -1 : 1;
    return 0;
}

static int pos_from_reply(const redisReply *r, struct store_redis_pos *out)
{
    char tmp[STORE_REDIS_POS_MAX];
    if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS) ||
        r->len >= sizeof tmp)
        return BD_ERR_CORRUPT;
    memcpy(tmp, r->str, r->len);
    tmp[r->len] = '\0';
    return store_redis_pos_parse(tmp, out) == 0 ? 0 : BD_ERR_CORRUPT;
}

/* ---------- url, options ---------- */

static int parse_url(const char *url, struct conn_cfg *cc)
{
    memset(cc, 0, sizeof *cc);
    cc->port = 6379;
    if (!url || strnlen(url, STORE_REDIS_URL_MAX) >= STORE_REDIS_URL_MAX)
        return BD_ERR_INVALID;
    if (strncmp(url, "redis://", 8) != 0)
        return BD_ERR_INVALID;
    const char *p = url + 8;
    const char *at = strchr(p, '@');
    if (at) { /* [user]:password@ — the user part (ACL) is ignored */
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= sizeof cc->password)
            return BD_ERR_INVALID;
        memcpy(cc->password, pw, n);
        cc->password[n] = '\0';
        p = at + 1;
    }
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof cc->host)
        return BD_ERR_INVALID;
    memcpy(cc->host, p, hl);
    cc->host[hl] = '\0';
    p += hl;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port < 1 || port > 65535)
            return BD_ERR_INVALID;
        cc->port = (int)port;
        p = end;
    }
    if (*p == '/') {
        p++;
        if (*p) {
            char *end;
            long db = strtol(p, &end, 10);
            if (end == p || *end || db < 0 || db > 1023)
                return BD_ERR_INVALID;
            cc->db = (int)db;
            p = end;
        }
    }
    return *p ? BD_ERR_INVALID : 0;
}

void store_redis_opts_default(struct store_redis_opts *o)
{
    memset(o, 0, sizeof *o);
    o->ttl_s = 86400;
    o->queue_cap = 4096;
    o->timeout_ms = 1000;
    o->block_ms = 100;
    o->heartbeat_s = 1.0;
    o->replica_stale_s = 60.0;
    o->lookup_wait_ms = 500;
    o->text_weight = FEATURES_TEXT_WEIGHT;
}

static void key(const store_redis *s, char *out, const char *kind, const char *id)
{
    snprintf(out, SRD_KEY_MAX, "%s%s%s", s->prefix, kind, id ? id : "");
}

/* ---------- connections ---------- */

static redisReply *cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    return r;
}

/* Record field = value in the meta hash mk unless it has one (a new shared
 * state, or one from a banditd that did not record the field), then read the
 * field back into *out (a string reply, to free). 0, BD_ERR_IO, BD_ERR_CORRUPT. */
static int meta_record(redisContext *c, const char *mk, const char *field, const char *value,
                       redisReply **out, char *err, size_t errlen)
{
    *out = NULL;
    redisReply *r = cmd(c, "HSETNX %s %s %s", mk, field, value);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        util_errf(err, errlen, "redis HSETNX %s: %s", mk, r ? r->str : c->errstr);
        if (r)
            freeReplyObject(r);
        return BD_ERR_IO;
    }
    freeReplyObject(r);
    r = cmd(c, "HGET %s %s", mk, field);
    if (!r || r->type != REDIS_REPLY_STRING) {
        util_errf(err, errlen, "redis %s: %s unreadable", mk, field);
        if (!r)
            return BD_ERR_IO;
        freeReplyObject(r);
        return BD_ERR_CORRUPT;
    }
    *out = r;
    return 0;
}

/* Connect, authenticate, select the db, check dim and text_weight, load the
 * scripts. */
static int conn_open(store_redis *s, int timeout_ms, redisContext **out, char *err, size_t errlen)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(s->cc.host, s->cc.port, tv);
    if (!c) {
        util_errf(err, errlen, "redis %s:%d: out of memory", s->cc.host, s->cc.port);
        return BD_ERR_NOMEM;
    }
    if (c->err) {
        util_errf(err, errlen, "redis %s:%d: %s", s->cc.host, s->cc.port, c->errstr);
        redisFree(c);
        return BD_ERR_IO;
    }
    redisSetTimeout(c, tv);
    int rc = 0;
    redisReply *r = NULL;
    if (s->cc.password[0]) {
        r = cmd(c, "AUTH %s", s->cc.password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            util_errf(err, errlen, "redis AUTH: %s", r ? r->str : c->errstr);
            rc = r ? BD_ERR_INVALID : BD_ERR_IO;
            goto out;
        }
        freeReplyObject(r);
    }
    if (s->cc.db) {
        r = cmd(c, "SELECT %d", s->cc.db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            util_errf(err, errlen, "redis SELECT %d: %s", s->cc.db, r ? r->str : c->errstr);
            rc = r ? BD_ERR_INVALID : BD_ERR_IO;
            goto out;
        }
        freeReplyObject(r);
    }
    char mk[SRD_KEY_MAX], val[32];
    key(s, mk, "meta", NULL);
    snprintf(val, sizeof val, "%d", s->dim);
    if ((rc = meta_record(c, mk, "dim", val, &r, err, errlen)))
        goto out;
    if (atoi(r->str) != s->dim) {
        util_errf(err, errlen,
                  "redis has dim=%s, config says dim=%d; use another prefix or migrate", r->str,
                  s->dim);
        rc = BD_ERR_INVALID;
        goto out;
    }
    freeReplyObject(r);
    snprintf(val, sizeof val, "%.17g", s->o.text_weight);
    if ((rc = meta_record(c, mk, "text_weight", val, &r, err, errlen)))
        goto out;
    if ((rc =
             store_text_weight_check(r->str, s->o.text_weight, "store", mk,
                                     "use another prefix or delete the shared state", err, errlen)))
        goto out;
    freeReplyObject(r);
    for (int i = 0; i < SC_COUNT; i++) {
        r = cmd(c, "SCRIPT LOAD %s", script_src[i]);
        if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
            util_errf(err, errlen, "redis SCRIPT LOAD: %s",
                      r ? (r->str ? r->str : "?") : c->errstr);
            rc = BD_ERR_IO;
            goto out;
        }
        memcpy(s->sha[i], r->str, 41);
        freeReplyObject(r);
    }
    r = NULL;
out:
    if (r)
        freeReplyObject(r);
    if (rc) {
        redisFree(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* ---------- command building (worker) ---------- */

struct argv {
    int n;
    const char *v[SRD_MAX_ARGS];
    size_t l[SRD_MAX_ARGS];
    char num[SRD_MAX_ARGS][96]; /* up to three %.17g numbers */
};

static void arg_str(struct argv *a, const char *str, size_t len)
{
    assert(a->n < SRD_MAX_ARGS);
    a->v[a->n] = str;
    a->l[a->n] = len;
    a->n++;
}

static void arg_cstr(struct argv *a, const char *str)
{
    arg_str(a, str, strlen(str));
}

static void arg_fmt(struct argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg_fmt(struct argv *a, const char *fmt, ...)
{
    assert(a->n < SRD_MAX_ARGS);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(a->num[a->n], sizeof a->num[a->n], fmt, ap);
    va_end(ap);
    assert(n > 0 && (size_t)n < sizeof a->num[0]);
    arg_str(a, a->num[a->n], (size_t)n);
}

static void arg_script(store_redis *s, struct argv *a, enum script_id id, int use_eval, int nkeys)
{
    if (use_eval) {
        arg_cstr(a, "EVAL");
        arg_cstr(a, script_src[id]);
    } else {
        arg_cstr(a, "EVALSHA");
        arg_cstr(a, s->sha[id]);
    }
    arg_fmt(a, "%d", nkeys);
}

static long long ttl_ms(const store_redis *s)
{
    double ms = s->o.ttl_s * 1000.0;
    return ms < 1 ? 1 : (long long)ms;
}

/* Append the op's command(s); returns the number of replies to read. */
static int op_append(store_redis *s, redisContext *c, struct op *op)
{
    struct argv a;
    char k1[SRD_KEY_MAX], k2[SRD_KEY_MAX], k3[SRD_KEY_MAX], k4[SRD_KEY_MAX];
    char pb[STORE_REDIS_POS_MAX]; /* must outlive redisAppendCommandArgv below */
    a.n = 0;
    switch (op->kind) {
    case OP_DECISION:
        key(s, k1, "d:", op->id);
        key(s, k2, "c:", op->id2);
        key(s, k3, "dx:", op->id);
        arg_script(s, &a, SC_DECISION, op->use_eval, 3);
        arg_cstr(&a, k1);
        arg_cstr(&a, k2);
        arg_cstr(&a, k3);
        arg_fmt(&a, "%lld", ttl_ms(s));
        arg_cstr(&a, op->id);
        arg_cstr(&a, op->arm);
        arg_str(&a, (const char *)op->x, op->xlen);
        arg_fmt(&a, "%.17g", op->w.quality);
        arg_fmt(&a, "%.17g", op->w.cost);
        arg_fmt(&a, "%.17g", op->w.latency);
        arg_fmt(&a, "%.17g", op->t1);
        arg_fmt(&a, "%.17g", op->t2);
        arg_fmt(&a, "%.17g", op->t3);
        arg_fmt(&a, "%016" PRIx64, op->client);
        arg_cstr(&a, op->id2);
        if (op->w.has_tolerance)
            arg_fmt(&a, "%.17g", op->w.tolerance);
        else
            arg_cstr(&a, "");
        break;
    case OP_COMPLETE:
        key(s, k1, "d:", op->id);
        key(s, k2, "c:", op->id2);
        arg_script(s, &a, SC_COMPLETE, op->use_eval, 2);
        arg_cstr(&a, k1);
        arg_cstr(&a, k2);
        arg_cstr(&a, op->id);
        arg_cstr(&a, op->id2);
        arg_fmt(&a, "%.17g", op->t2);
        arg_fmt(&a, "%.17g", op->t3);
        break;
    case OP_GET:
        key(s, k1, "d:", op->id);
        key(s, k2, "c:", op->id);
        key(s, k3, "fb:", op->id);
        arg_script(s, &a, SC_GET, op->use_eval, 3);
        arg_cstr(&a, k1);
        arg_cstr(&a, k2);
        arg_cstr(&a, k3);
        arg_cstr(&a, s->prefix);
        arg_cstr(&a, op->id);
        break;
    case OP_FEEDBACK:
        key(s, k1, "fb:", op->id);
        key(s, k2, "feedback", NULL);
        key(s, k3, "d:", op->id);
        key(s, k4, "dx:", op->id);
        arg_script(s, &a, SC_FEEDBACK, op->use_eval, 4);
        arg_cstr(&a, k1);
        arg_cstr(&a, k2);
        arg_cstr(&a, k3);
        arg_cstr(&a, k4);
        arg_fmt(&a, "%lld", ttl_ms(s));
        arg_cstr(&a, op->id);
        arg_cstr(&a, op->arm);
        arg_str(&a, (const char *)op->x, op->xlen);
        arg_fmt(&a, "%.17g", op->t1);
        arg_fmt(&a, "%.17g", op->t2);
        break;
    case OP_TRIM:
        key(s, k1, "arms", NULL);
        key(s, k2, "replicas", NULL);
        key(s, k3, "feedback", NULL);
        arg_script(s, &a, SC_TRIM, op->use_eval, 3);
        arg_cstr(&a, k1);
        arg_cstr(&a, k2);
        arg_cstr(&a, k3);
        arg_cstr(&a, s->prefix);
        arg_fmt(&a, "%lld", (long long)(s->o.replica_stale_s * 1000.0));
        arg_cstr(&a, s->replica_id);
        arg_cstr(&a, store_redis_pos_format(op->pos, pb));
        break;
    case OP_HEARTBEAT: {
        key(s, k1, "replicas", NULL);
        arg_script(s, &a, SC_HEARTBEAT, op->use_eval, 1);
        arg_cstr(&a, k1);
        arg_cstr(&a, s->replica_id);
        arg_cstr(&a, store_redis_pos_format(op->pos, pb));
        break;
    }
    case OP_SNAPSHOT: {
        size_t Alen = (size_t)s->dim * (size_t)s->dim * 8, blen = (size_t)s->dim * 8;
        for (int i = 0; i < op->n_snap; i++) {
            const struct snap_arm *sa = &op->snap[i];
            a.n = 0;
            key(s, k1, "snap:", sa->name);
            arg_cstr(&a, "HSET");
            arg_cstr(&a, k1);
            arg_cstr(&a, "dim");
            arg_fmt(&a, "%d", s->dim);
            arg_cstr(&a, "A");
            arg_str(&a, (const char *)sa->A, Alen);
            arg_cstr(&a, "b");
            arg_str(&a, (const char *)sa->b, blen);
            arg_cstr(&a, "n");
            arg_fmt(&a, "%" PRIu64, sa->st.n);
            arg_cstr(&a, "pos");
            arg_cstr(&a, store_redis_pos_format(sa->pos, pb));
            arg_cstr(&a, "ctr");
            arg_fmt(&a, "%" PRIu64 " %" PRIu64 " %" PRIu64, sa->st.pulls, sa->st.feedback,
                    sa->st.usage_obs);
            arg_cstr(&a, "est");
            arg_fmt(&a, "%.17g %.17g", sa->st.reward_sum, sa->st.exp_completion_tokens);
            arg_cstr(&a, "lat");
            arg_fmt(&a, "%.17g %.17g %.17g", sa->st.latency_ms, sa->st.ttfb_ms, sa->st.taken_at);
            redisAppendCommandArgv(c, a.n, a.v, a.l);
        }
        a.n = 0;
        key(s, k2, "arms", NULL);
        arg_cstr(&a, "SADD");
        arg_cstr(&a, k2);
        for (int i = 0; i < op->n_snap && a.n < SRD_MAX_ARGS; i++)
            arg_cstr(&a, op->snap[i].name);
        redisAppendCommandArgv(c, a.n, a.v, a.l);
        return op->n_snap + 1;
    }
    }
    redisAppendCommandArgv(c, a.n, a.v, a.l);
    return 1;
}

static int is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

static int reply_str(const redisReply *r, char *dst, size_t max)
{
    if (!r || r->type != REDIS_REPLY_STRING || r->len >= max)
        return BD_ERR_CORRUPT;
    memcpy(dst, r->str, r->len);
    dst[r->len] = '\0';
    return 0;
}

/* Decode an OP_GET found reply {1, rid, a, x, wq, wc, wl, c, k, l, u, cid, wt}. */
static int get_decode(store_redis *s, struct op *op, const redisReply *r)
{
    if (r->elements != 13 || r->element[12]->type != REDIS_REPLY_STRING)
        return BD_ERR_CORRUPT;
    redisReply **e = r->element;
    for (int i = 1; i < 11; i++)
        if (e[i]->type != REDIS_REPLY_STRING)
            return BD_ERR_CORRUPT;
    if (reply_str(e[1], op->id, sizeof op->id) || reply_str(e[2], op->arm, sizeof op->arm))
        return BD_ERR_CORRUPT;
    op->id2[0] = '\0';
    if (e[11]->type == REDIS_REPLY_STRING && reply_str(e[11], op->id2, sizeof op->id2))
        return BD_ERR_CORRUPT;
    op->xres = malloc((size_t)s->dim * sizeof(double));
    if (!op->xres)
        return BD_ERR_NOMEM;
    int rc = dec_x(e[3]->str, e[3]->len, s->dim, op->xres);
    if (!rc)
        rc = parse_double(e[4]->str, e[4]->len, &op->w.quality);
    if (!rc)
        rc = parse_double(e[5]->str, e[5]->len, &op->w.cost);
    if (!rc)
        rc = parse_double(e[6]->str, e[6]->len, &op->w.latency);
    if (!rc)
        rc = parse_double(e[7]->str, e[7]->len, &op->t1);
    if (!rc)
        rc = parse_double(e[8]->str, e[8]->len, &op->t2);
    if (!rc)
        rc = parse_double(e[9]->str, e[9]->len, &op->t3);
    if (!rc)
        rc = parse_u64(e[10]->str, e[10]->len, 16, &op->client);
    op->w.has_tolerance = e[12]->len > 0;
    if (!rc && op->w.has_tolerance)
        rc = parse_double(e[12]->str, e[12]->len, &op->w.tolerance);
    return rc;
}

/* Interpret one op's reply (not for snapshots). */
static void op_result(store_redis *s, struct op *op, const redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR) {
        log_msgf(LOG_WARN, "store_redis: redis error: %.200s", r->str);
        op->rc = BD_ERR_IO;
        return;
    }
    switch (op->kind) {
    case OP_DECISION:
    case OP_COMPLETE:
    case OP_HEARTBEAT:
        op->rc = r->type == REDIS_REPLY_INTEGER ? 0 : BD_ERR_IO;
        break;
    case OP_TRIM:
        op->rc = r->type == REDIS_REPLY_INTEGER ? 0 : BD_ERR_IO;
        op->count = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
        break;
    case OP_FEEDBACK:
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_INTEGER) {
            op->rc = BD_ERR_IO;
            break;
        }
        op->rc = r->element[0]->integer == 1 ? 0 : BD_ERR_EXISTS;
        if (pos_from_reply(r->element[1], &op->pos) != 0 && op->rc == 0)
            op->rc = BD_ERR_CORRUPT;
        break;
    case OP_GET:
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
            r->element[0]->type != REDIS_REPLY_INTEGER) {
            op->rc = BD_ERR_IO;
        } else if (r->element[0]->integer == 0) {
            op->rc = BD_ERR_NOTFOUND;
            /* maybe written by another replica a moment ago: look again */
            op->again = util_now_ms() < op->give_up_ms;
        } else if (r->element[0]->integer == 2) {
            op->rc = BD_ERR_EXISTS;
            if (r->elements == 2)
                reply_str(r->element[1], op->id, sizeof op->id);
        } else {
            op->rc = get_decode(s, op, r);
            if (op->rc)
                log_msgf(LOG_WARN, "store_redis: undecodable decision %s", op->id);
        }
        break;
    case OP_SNAPSHOT:
        assert(0);
        break;
    }
}

/* ---------- worker thread ---------- */

static void free_op(struct op *op)
{
    free(op->x);
    free(op->xres);
    if (op->snap) {
        for (int i = 0; i < op->n_snap; i++)
            free(op->snap[i].A), free(op->snap[i].b);
        free(op->snap);
    }
    free(op);
}

static void finish(store_redis *s, struct op *list)
{
    size_t n = 0;
    uint64_t ok = 0, bad = 0;
    int last = 0;
    struct op *keep = NULL, *tail = NULL;
    while (list) {
        struct op *op = list;
        list = op->next;
        op->next = NULL;
        n++;
        if (op->rc == 0)
            ok++;
        else if (op->rc != BD_ERR_EXISTS && op->rc != BD_ERR_NOTFOUND)
            bad++, last = op->rc;
        int has_cb = op->done_cb || op->dec_cb || op->fb_cb;
        if (!has_cb) {
            free_op(op);
            continue;
        }
        if (tail)
            tail->next = op;
        else
            keep = op;
        tail = op;
    }
    if (keep) {
        pthread_mutex_lock(&s->done_mu);
        if (s->d_tail)
            s->d_tail->next = keep;
        else
            s->d_head = keep;
        s->d_tail = tail;
        pthread_mutex_unlock(&s->done_mu);
    }
    pthread_mutex_lock(&s->q_mu);
    s->q_fin += n;
    s->st.ops_ok += ok;
    s->st.ops_failed += bad;
    if (last)
        s->st.last_error = last;
    pthread_cond_broadcast(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
    if (keep && s->o.wake)
        s->o.wake(s->o.wake_ud);
}

static void worker_drop_conn(store_redis *s)
{
    if (s->wctx)
        redisFree(s->wctx);
    s->wctx = NULL;
    pthread_mutex_lock(&s->q_mu);
    s->st.worker_connected = 0;
    pthread_mutex_unlock(&s->q_mu);
}

/* Run a batch: one pipeline (plus one retry pipeline for NOSCRIPT). */
static void run_batch(store_redis *s, struct op *batch)
{
    for (struct op *op = batch; op; op = op->next)
        op->rc = BD_ERR_IO;
    if (!s->wctx) {
        double now = util_now_ms();
        if (now < s->w_next_try)
            return; /* in back-off: fail fast */
        char err[256];
        int rc = conn_open(s, s->o.timeout_ms, &s->wctx, err, sizeof err);
        if (rc) {
            s->w_next_try = util_now_ms() + s->w_backoff;
            s->w_backoff =
                s->w_backoff * 2 > SRD_BACKOFF_MAX_MS ? SRD_BACKOFF_MAX_MS : s->w_backoff * 2;
            log_msgf(LOG_WARN, "store_redis: worker cannot connect: %s", err);
            return;
        }
        s->w_backoff = SRD_BACKOFF_MIN_MS;
        pthread_mutex_lock(&s->q_mu);
        s->st.worker_connected = 1;
        s->st.reconnects++;
        pthread_mutex_unlock(&s->q_mu);
    }
    for (int pass = 0; pass < 2; pass++) {
        int nops = 0, retry = 0;
        for (struct op *op = batch; op; op = op->next) {
            if (pass == 1 && !op->use_eval)
                continue;
            op->count = op_append(s, s->wctx, op); /* reply count, reused below */
            nops++;
        }
        if (nops == 0)
            break;
        pthread_mutex_lock(&s->q_mu);
        s->st.roundtrips++;
        pthread_mutex_unlock(&s->q_mu);
        int broken = 0;
        for (struct op *op = batch; op; op = op->next) {
            if (pass == 1 && !op->use_eval)
                continue;
            int nrep = (int)op->count;
            op->count = 0;
            int snap_ok = 1;
            for (int i = 0; i < nrep; i++) {
                redisReply *r = NULL;
                if (broken || redisGetReply(s->wctx, (void **)&r) != REDIS_OK || !r) {
                    broken = 1;
                    op->rc = BD_ERR_IO;
                    break;
                }
                if (op->kind == OP_SNAPSHOT) {
                    if (r->type == REDIS_REPLY_ERROR)
                        snap_ok = 0;
                    if (i == nrep - 1)
                        op->rc = snap_ok ? 0 : BD_ERR_IO;
                } else if (pass == 0 && is_noscript(r)) {
                    op->use_eval = 1;
                    retry = 1;
                } else {
                    op->use_eval = 0;
                    op_result(s, op, r);
                }
                freeReplyObject(r);
            }
        }
        if (broken) {
            log_msgf(LOG_WARN, "store_redis: connection lost: %s",
                     s->wctx->errstr[0] ? s->wctx->errstr : "?");
            worker_drop_conn(s);
            s->w_next_try = 0;
            return;
        }
        if (!retry)
            break;
    }
}

#define SRD_LOOKUP_RETRY_MS 40

static void worker_wait(store_redis *s, double until_ms)
{
    double left = until_ms - util_now_ms();
    if (left <= 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long ns = (long)(left * 1e6);
    ts.tv_sec += ns / 1000000000L;
    ts.tv_nsec += ns % 1000000000L;
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&s->q_cv, &s->q_mu, &ts);
}

static void *worker_main(void *arg)
{
    store_redis *s = arg;
    struct op *deferred = NULL; /* lookups to run again (worker only) */
    for (;;) {
        pthread_mutex_lock(&s->q_mu);
        for (;;) {
            int due = 0;
            double first = 0;
            for (struct op *d = deferred; d; d = d->next) {
                if (d->not_before_ms <= util_now_ms() || s->stop)
                    due = 1;
                if (first == 0 || d->not_before_ms < first)
                    first = d->not_before_ms;
            }
            if (s->q_head || due || (s->stop && !deferred))
                break;
            if (deferred)
                worker_wait(s, first);
            else
                pthread_cond_wait(&s->q_cv, &s->q_mu);
        }
        if (!s->q_head && !deferred && s->stop) {
            pthread_mutex_unlock(&s->q_mu);
            break;
        }
        struct op *batch = s->q_head;
        s->q_head = s->q_tail = NULL;
        s->q_count = 0;
        int stop = s->stop;
        pthread_mutex_unlock(&s->q_mu);
        /* due deferred lookups join this batch; on stop they end as NOTFOUND */
        struct op *keep = NULL, *ready = NULL;
        for (struct op *d = deferred, *n; d; d = n) {
            n = d->next;
            if (stop) {
                d->next = NULL;
                finish(s, d);
            } else if (d->not_before_ms <= util_now_ms()) {
                d->again = 0;
                d->next = ready;
                ready = d;
            } else {
                d->next = keep;
                keep = d;
            }
        }
        deferred = keep;
        if (ready) {
            struct op *t = ready;
            while (t->next)
                t = t->next;
            t->next = batch;
            batch = ready;
        }
        if (!batch)
            continue;
        run_batch(s, batch);
        struct op *done = NULL, **tail = &done;
        for (struct op *op = batch, *n; op; op = n) {
            n = op->next;
            op->next = NULL;
            if (op->again && !stop) {
                op->not_before_ms = util_now_ms() + SRD_LOOKUP_RETRY_MS;
                op->next = deferred;
                deferred = op;
            } else {
                *tail = op;
                tail = &op->next;
            }
        }
        if (done)
            finish(s, done);
    }
    if (s->wctx)
        redisFree(s->wctx);
    s->wctx = NULL;
    return NULL;
}

/* ---------- reader thread ---------- */

static int stopping(store_redis *s)
{
    pthread_mutex_lock(&s->q_mu);
    int st = s->stop;
    pthread_mutex_unlock(&s->q_mu);
    return st;
}

/* Sleep up to ms, waking early on stop. */
static void reader_sleep(store_redis *s, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&s->q_mu);
    if (!s->stop)
        pthread_cond_timedwait(&s->stop_cv, &s->q_mu, &ts);
    pthread_mutex_unlock(&s->q_mu);
}

static const struct store_redis_pos *snap_pos_of(const store_redis *s, const char *arm)
{
    for (int i = 0; i < s->n_snap_pos; i++)
        if (strcmp(s->snap_pos[i].name, arm) == 0)
            return &s->snap_pos[i].pos;
    return NULL;
}

/* Decode one stream entry [id, [f, v, …]] into a new event. *bad set when
 * undecodable (the position is still returned so the reader moves on). */
static struct event *decode_entry(store_redis *s, const redisReply *e, struct store_redis_pos *pos,
                                  int *bad)
{
    *bad = 0;
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || pos_from_reply(e->element[0], pos))
        return NULL; /* no usable id: caller treats as a protocol error */
    struct event *ev = calloc(1, sizeof *ev + (size_t)s->dim * sizeof(double));
    if (!ev)
        return NULL;
    ev->pos = *pos;
    const redisReply *f = e->element[1];
    int have = 0;
    if (f->type != REDIS_REPLY_ARRAY || f->elements % 2)
        goto bad;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || k->len != 1)
            goto bad;
        switch (k->str[0]) {
        case 'r':
            if (reply_str(v, ev->rid, sizeof ev->rid))
                goto bad;
            have |= 1;
            break;
        case 'a':
            if (reply_str(v, ev->arm, sizeof ev->arm) || v->len == 0)
                goto bad;
            have |= 2;
            break;
        case 'x':
            if (dec_x(v->str, v->len, s->dim, ev->x))
                goto bad;
            have |= 4;
            break;
        case 'v':
            if (parse_double(v->str, v->len, &ev->reward))
                goto bad;
            have |= 8;
            break;
        case 't':
            if (parse_double(v->str, v->len, &ev->at_s))
                goto bad;
            have |= 16;
            break;
        default:
            break; /* unknown fields: forward compatible */
        }
    }
    if (have != 31)
        goto bad;
    const struct store_redis_pos *sp = snap_pos_of(s, ev->arm);
    ev->skip = sp && store_redis_pos_cmp(ev->pos, *sp) <= 0;
    return ev;
bad:
    *bad = 1;
    ev->skip = 1; /* still carries the position */
    return ev;
}

static void reader_check_gap(store_redis *s, redisContext *c, const char *stream,
                             struct store_redis_pos pos)
{
    redisReply *r = cmd(c, "XINFO STREAM %s", stream);
    if (!r)
        return;
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            const redisReply *k = r->element[i];
            struct store_redis_pos md;
            if (k->type == REDIS_REPLY_STRING && strcmp(k->str, "max-deleted-entry-id") == 0 &&
                pos_from_reply(r->element[i + 1], &md) == 0 && store_redis_pos_cmp(md, pos) > 0) {
                char a[STORE_REDIS_POS_MAX], b[STORE_REDIS_POS_MAX];
                pthread_mutex_lock(&s->q_mu);
                int first = !s->st.gap;
                s->st.gap = 1;
                pthread_mutex_unlock(&s->q_mu);
                if (first)
                    log_msgf(LOG_ERROR,
                             "store_redis: stream trimmed past this replica (read %s, deleted "
                             "up to %s): model incomplete, restart the replica",
                             store_redis_pos_format(pos, a), store_redis_pos_format(md, b));
            }
        }
    }
    freeReplyObject(r);
}

static void *reader_main(void *arg)
{
    store_redis *s = arg;
    redisContext *c = NULL;
    struct store_redis_pos pos = s->start_pos;
    int backoff = SRD_BACKOFF_MIN_MS;
    double next_gap_check = 0;
    char stream[SRD_KEY_MAX];
    key(s, stream, "feedback", NULL);
    while (!stopping(s)) {
        if (!c) {
            char err[256];
            if (conn_open(s, s->o.timeout_ms, &c, err, sizeof err) != 0) {
                log_msgf(LOG_WARN, "store_redis: reader cannot connect: %s", err);
                reader_sleep(s, backoff);
                backoff = backoff * 2 > SRD_BACKOFF_MAX_MS ? SRD_BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            int tmo = s->o.timeout_ms + s->o.block_ms;
            struct timeval tv = {tmo / 1000, (tmo % 1000) * 1000};
            redisSetTimeout(c, tv);
            backoff = SRD_BACKOFF_MIN_MS;
            pthread_mutex_lock(&s->q_mu);
            s->st.reader_connected = 1;
            s->st.reconnects++;
            pthread_mutex_unlock(&s->q_mu);
            next_gap_check = 0;
        }
        if (util_now_ms() >= next_gap_check) {
            reader_check_gap(s, c, stream, pos);
            next_gap_check = util_now_ms() + SRD_GAP_CHECK_MS;
        }
        /* back-pressure: wait for room in the event queue */
        pthread_mutex_lock(&s->ev_mu);
        while (s->e_count >= s->o.queue_cap && !s->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L)
                ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&s->ev_cv, &s->ev_mu, &ts);
            pthread_mutex_unlock(&s->ev_mu);
            if (stopping(s))
                goto out;
            pthread_mutex_lock(&s->ev_mu);
        }
        size_t room = s->o.queue_cap - s->e_count;
        pthread_mutex_unlock(&s->ev_mu);
        if (room > SRD_XREAD_COUNT)
            room = SRD_XREAD_COUNT;
        char pb[STORE_REDIS_POS_MAX];
        store_redis_pos_format(pos, pb);
        redisReply *r =
            cmd(c, "XREAD COUNT %d BLOCK %d STREAMS %s %s", (int)room, s->o.block_ms, stream, pb);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            log_msgf(LOG_WARN, "store_redis: reader: %s",
                     r ? r->str : (c->errstr[0] ? c->errstr : "connection lost"));
            if (r)
                freeReplyObject(r);
            redisFree(c);
            c = NULL;
            pthread_mutex_lock(&s->q_mu);
            s->st.reader_connected = 0;
            pthread_mutex_unlock(&s->q_mu);
            reader_sleep(s, backoff);
            continue;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
            r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements != 2) {
            freeReplyObject(r); /* nil: BLOCK timed out */
            continue;
        }
        const redisReply *entries = r->element[0]->element[1];
        struct event *head = NULL, *tail = NULL;
        size_t n = 0;
        uint64_t nbad = 0;
        for (size_t i = 0; i < entries->elements; i++) {
            struct store_redis_pos p;
            int bad;
            struct event *ev = decode_entry(s, entries->element[i], &p, &bad);
            if (!ev)
                break; /* OOM or no id: retry from pos later */
            if (bad) {
                nbad++;
                log_msgf(LOG_WARN, "store_redis: undecodable stream entry %s skipped",
                         store_redis_pos_format(p, pb));
            }
            pos = p;
            if (tail)
                tail->next = ev;
            else
                head = ev;
            tail = ev;
            n++;
        }
        freeReplyObject(r);
        if (n) {
            pthread_mutex_lock(&s->ev_mu);
            if (s->e_tail)
                s->e_tail->next = head;
            else
                s->e_head = head;
            s->e_tail = tail;
            s->e_count += n;
            pthread_mutex_unlock(&s->ev_mu);
            pthread_mutex_lock(&s->q_mu);
            s->st.events_read += n;
            s->st.events_bad += nbad;
            pthread_mutex_unlock(&s->q_mu);
            if (s->o.wake)
                s->o.wake(s->o.wake_ud);
        }
    }
out:
    if (c)
        redisFree(c);
    return NULL;
}

/* Run the callbacks of a completion list and free it (loop thread). */
static size_t run_callbacks(struct op *list)
{
    size_t n = 0;
    while (list) {
        struct op *op = list;
        list = op->next;
        if (op->done_cb) {
            op->done_cb(op->rc, op->count, op->ud);
        } else if (op->fb_cb) {
            op->fb_cb(op->rc, op->pos, op->ud);
        } else if (op->dec_cb) {
            if (op->rc == 0) {
                struct store_decision d = {op->id,    op->id2[0] ? op->id2 : NULL,
                                           op->arm,   op->xres,
                                           op->w,     op->t1,
                                           op->t2,    op->t3,
                                           op->client};
                op->dec_cb(0, &d, op->ud);
            } else {
                op->dec_cb(op->rc, NULL, op->ud);
            }
        }
        free_op(op);
        n++;
    }
    return n;
}

/* ---------- public: lifecycle ---------- */

int store_redis_open(const char *url, int dim, const struct store_redis_opts *o, store_redis **out,
                     char *err, size_t errlen)
{
    if (!out || !o) {
        util_errf(err, errlen, "store_redis_open: missing arguments");
        return BD_ERR_INVALID;
    }
    *out = NULL;
    if (dim < 1 || dim > SRD_MAX_DIM || !o->apply || o->queue_cap < 1 || !(o->ttl_s > 0) ||
        o->timeout_ms < 1 || o->block_ms < 1 || o->lookup_wait_ms < 0 || !(o->heartbeat_s > 0) ||
        !(o->replica_stale_s > 0) || !isfinite(o->text_weight) || !(o->text_weight > 0)) {
        util_errf(err, errlen,
                  "store_redis_open: invalid options (dim, apply, queue_cap, ttl_s, "
                  "timeouts, text_weight)");
        return BD_ERR_INVALID;
    }
    store_redis *s = calloc(1, sizeof *s);
    if (!s) {
        util_errf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    s->dim = dim;
    s->o = *o;
    if (parse_url(url, &s->cc) != 0) {
        util_errf(err, errlen,
                  "store.redis: bad url \"%.100s\" (want redis://[:password@]host[:port][/db])",
                  url ? url : "");
        free(s);
        return BD_ERR_INVALID;
    }
    if (util_copy_name(s->prefix, sizeof s->prefix,
                       o->prefix ? o->prefix : STORE_REDIS_PREFIX_DEFAULT, 0) != 0) {
        util_errf(err, errlen, "store_redis: prefix too long");
        free(s);
        return BD_ERR_INVALID;
    }
    s->o.prefix = NULL;
    if (o->replica_id) {
        if (util_copy_name(s->replica_id, sizeof s->replica_id, o->replica_id, 0) != 0 ||
            strchr(s->replica_id, ' ')) {
            util_errf(err, errlen, "store_redis: bad replica id");
            free(s);
            return BD_ERR_INVALID;
        }
    } else {
        char hex[33];
        if (util_random_hex128(hex) != 0) {
            util_errf(err, errlen, "store_redis: no randomness for the replica id");
            free(s);
            return BD_ERR_IO;
        }
        snprintf(s->replica_id, sizeof s->replica_id, "r-%.16s", hex);
    }
    s->o.replica_id = NULL;
    s->w_backoff = SRD_BACKOFF_MIN_MS;
    pthread_mutex_init(&s->q_mu, NULL);
    pthread_cond_init(&s->q_cv, NULL);
    pthread_cond_init(&s->stop_cv, NULL);
    pthread_mutex_init(&s->done_mu, NULL);
    pthread_mutex_init(&s->ev_mu, NULL);
    pthread_cond_init(&s->ev_cv, NULL);
    int rc = conn_open(s, o->timeout_ms, &s->sync, err, errlen);
    if (rc) {
        store_redis_close(s);
        return rc;
    }
    if (pthread_create(&s->worker, NULL, worker_main, s) != 0) {
        util_errf(err, errlen, "store_redis: cannot start the worker thread");
        store_redis_close(s);
        return BD_ERR_NOMEM;
    }
    s->worker_started = 1;
    s->st.worker_connected = 0; /* the worker connects on its first batch */
    *out = s;
    return 0;
}

void store_redis_close(store_redis *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->q_mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->q_cv);
    pthread_cond_broadcast(&s->stop_cv);
    pthread_mutex_unlock(&s->q_mu);
    pthread_mutex_lock(&s->ev_mu);
    pthread_cond_broadcast(&s->ev_cv);
    pthread_mutex_unlock(&s->ev_mu);
    if (s->reader_started)
        pthread_join(s->reader, NULL);
    if (s->worker_started)
        pthread_join(s->worker, NULL);
    s->closing = 1;
    /* remaining callbacks (enqueue is refused from here: closing) */
    for (;;) {
        pthread_mutex_lock(&s->done_mu);
        struct op *list = s->d_head;
        s->d_head = s->d_tail = NULL;
        pthread_mutex_unlock(&s->done_mu);
        if (!list)
            break;
        run_callbacks(list);
    }
    for (struct event *e = s->e_head, *n; e; e = n) {
        n = e->next;
        free(e);
    }
    if (s->sync)
        redisFree(s->sync);
    free(s->snap_pos);
    pthread_mutex_destroy(&s->q_mu);
    pthread_cond_destroy(&s->q_cv);
    pthread_cond_destroy(&s->stop_cv);
    pthread_mutex_destroy(&s->done_mu);
    pthread_mutex_destroy(&s->ev_mu);
    pthread_cond_destroy(&s->ev_cv);
    free(s);
}

/* ---------- public: start-up reads ---------- */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int hash_get(const redisReply *h, const char *field, const redisReply **out)
{
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, field) == 0) {
            *out = h->element[i + 1];
            return (*out)->type == REDIS_REPLY_STRING ? 0 : BD_ERR_CORRUPT;
        }
    return BD_ERR_CORRUPT;
}

static int load_arm(store_redis *s, const char *name, double *A, double *b,
                    struct store_arm_state *st, struct store_redis_pos *pos)
{
    char k[SRD_KEY_MAX];
    key(s, k, "snap:", name);
    redisReply *r = cmd(s->sync, "HGETALL %s", k);
    if (!r)
        return BD_ERR_IO;
    int rc = BD_ERR_CORRUPT;
    const redisReply *v;
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        goto out;
    size_t d = (size_t)s->dim;
    if (hash_get(r, "dim", &v) || atoi(v->str) != s->dim)
        goto out;
    if (hash_get(r, "A", &v) || v->len != d * d * 8)
        goto out;
    dec_doubles(A, (const unsigned char *)v->str, d * d);
    if (hash_get(r, "b", &v) || v->len != d * 8)
        goto out;
    dec_doubles(b, (const unsigned char *)v->str, d);
    if (!util_all_finite(A, d * d) || !util_all_finite(b, d))
        goto out;
    if (hash_get(r, "n", &v) || parse_u64(v->str, v->len, 10, &st->n))
        goto out;
    if (hash_get(r, "pos", &v) || pos_from_reply(v, pos))
        goto out;
    if (hash_get(r, "ctr", &v) || sscanf(v->str, "%" SCNu64 " %" SCNu64 " %" SCNu64, &st->pulls,
                                         &st->feedback, &st->usage_obs) != 3)
        goto out;
    if (hash_get(r, "est", &v) ||
        sscanf(v->str, "%lf %lf", &st->reward_sum, &st->exp_completion_tokens) != 2)
        goto out;
    if (hash_get(r, "lat", &v) ||
        sscanf(v->str, "%lf %lf %lf", &st->latency_ms, &st->ttfb_ms, &st->taken_at) != 3)
        goto out;
    rc = 0;
out:
    freeReplyObject(r);
    return rc;
}

int store_redis_load_model(store_redis *s, int (*cb)(const struct store_arm_state *a, void *ud),
                           void *ud)
{
    if (!s || !cb || !s->sync || s->reader_started)
        return BD_ERR_INVALID;
    char k[SRD_KEY_MAX];
    key(s, k, "arms", NULL);
    redisReply *r = cmd(s->sync, "SMEMBERS %s", k);
    if (!r)
        return BD_ERR_IO;
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return BD_ERR_CORRUPT;
    }
    size_t n = r->elements, d = (size_t)s->dim;
    const char **names = calloc(n ? n : 1, sizeof *names);
    struct arm_pos *ap = calloc(n ? n : 1, sizeof *ap);
    double *A = malloc(d * d * sizeof(double)), *b = malloc(d * sizeof(double));
    int rc = 0;
    if (!names || !ap || !A || !b) {
        rc = BD_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (r->element[i]->type != REDIS_REPLY_STRING || r->element[i]->len >= STORE_NAME_MAX) {
            rc = BD_ERR_CORRUPT;
            goto out;
        }
        names[i] = r->element[i]->str;
    }
    qsort(names, n, sizeof *names, cmp_names);
    int np = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        struct store_arm_state st;
        memset(&st, 0, sizeof st);
        struct store_redis_pos pos;
        rc = load_arm(s, names[i], A, b, &st, &pos);
        if (rc)
            break;
        st.arm_name = names[i];
        st.A = A;
        st.b = b;
        st.feedback_seq = 0;
        snprintf(ap[np].name, sizeof ap[np].name, "%s", names[i]);
        ap[np].pos = pos;
        np++;
        rc = cb(&st, ud);
    }
    if (!rc) {
        free(s->snap_pos);
        s->snap_pos = ap;
        s->n_snap_pos = np;
        ap = NULL;
    }
out:
    free(names);
    free(ap);
    free(A);
    free(b);
    freeReplyObject(r);
    return rc;
}

int store_redis_start(store_redis *s)
{
    if (!s || s->reader_started)
        return BD_ERR_INVALID;
    struct store_redis_pos start = {0, 0};
    for (int i = 0; i < s->n_snap_pos; i++)
        if (i == 0 || store_redis_pos_cmp(s->snap_pos[i].pos, start) < 0)
            start = s->snap_pos[i].pos;
    s->start_pos = start;
    s->applied = start;
    if (s->sync) {
        redisFree(s->sync);
        s->sync = NULL;
    }
    if (pthread_create(&s->reader, NULL, reader_main, s) != 0)
        return BD_ERR_NOMEM;
    s->reader_started = 1;
    return 0;
}

/* ---------- public: operations ---------- */

static struct op *op_new(enum op_kind kind)
{
    struct op *op = calloc(1, sizeof *op);
    if (op)
        op->kind = kind;
    return op;
}

static int enqueue(store_redis *s, struct op *op)
{
    pthread_mutex_lock(&s->q_mu);
    if (s->stop || s->closing || s->q_count >= s->o.queue_cap) {
        s->st.rejected++;
        pthread_mutex_unlock(&s->q_mu);
        free_op(op);
        return BD_ERR_BUSY;
    }
    if (s->q_tail)
        s->q_tail->next = op;
    else
        s->q_head = op;
    s->q_tail = op;
    s->q_count++;
    s->q_enq++;
    s->st.enqueued++;
    pthread_cond_broadcast(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
    return 0;
}

int store_redis_put_decision(store_redis *s, const struct store_decision *d, store_done_fn cb,
                             void *ud)
{
    if (!s || !d || !d->x || !util_all_finite(d->x, (size_t)s->dim))
        return BD_ERR_INVALID;
    struct op *op = op_new(OP_DECISION);
    if (!op)
        return BD_ERR_NOMEM;
    if (util_copy_name(op->id, sizeof op->id, d->id, 0) ||
        util_copy_name(op->id2, sizeof op->id2, d->completion_id, 1) ||
        util_copy_name(op->arm, sizeof op->arm, d->arm_name, 0)) {
        free_op(op);
        return BD_ERR_INVALID;
    }
    op->x = enc_x(d->x, s->dim, &op->xlen);
    if (!op->x) {
        free_op(op);
        return BD_ERR_NOMEM;
    }
    op->w = d->w;
    op->t1 = d->created_s;
    op->t2 = d->cost_usd;
    op->t3 = d->latency_ms;
    op->client = d->client;
    op->done_cb = cb;
    op->ud = ud;
    return enqueue(s, op);
}

int store_redis_complete_decision(store_redis *s, const char *id, const char *completion_id,
                                  double cost_usd, double latency_ms)
{
    if (!s)
        return BD_ERR_INVALID;
    struct op *op = op_new(OP_COMPLETE);
    if (!op)
        return BD_ERR_NOMEM;
    if (util_copy_name(op->id, sizeof op->id, id, 0) ||
        util_copy_name(op->id2, sizeof op->id2, completion_id, 1)) {
        free_op(op);
        return BD_ERR_INVALID;
    }
    op->t2 = cost_usd;
    op->t3 = latency_ms;
    return enqueue(s, op);
}

int store_redis_get_decision(store_redis *s, const char *id, store_redis_decision_fn cb, void *ud)
{
    if (!s || !cb)
        return BD_ERR_INVALID;
    struct op *op = op_new(OP_GET);
    if (!op)
        return BD_ERR_NOMEM;
    if (util_copy_name(op->id, sizeof op->id, id, 0)) {
        free_op(op);
        return BD_ERR_INVALID;
    }
    op->dec_cb = cb;
    op->ud = ud;
    op->give_up_ms = util_now_ms() + s->o.lookup_wait_ms;
    return enqueue(s, op);
}

int store_redis_put_feedback(store_redis *s, const char *request_id, const char *arm_name,
                             const double *x, int dim, double reward, double at_s,
                             store_redis_feedback_fn cb, void *ud)
{
    if (!s || !cb || !x || dim != s->dim || !isfinite(reward) || !isfinite(at_s) ||
        !util_all_finite(x, (size_t)dim))
        return BD_ERR_INVALID;
    struct op *op = op_new(OP_FEEDBACK);
    if (!op)
        return BD_ERR_NOMEM;
    if (util_copy_name(op->id, sizeof op->id, request_id, 0) ||
        util_copy_name(op->arm, sizeof op->arm, arm_name, 0)) {
        free_op(op);
        return BD_ERR_INVALID;
    }
    op->x = enc_x(x, dim, &op->xlen);
    if (!op->x) {
        free_op(op);
        return BD_ERR_NOMEM;
    }
    op->t1 = reward;
    op->t2 = at_s;
    op->fb_cb = cb;
    op->ud = ud;
    return enqueue(s, op);
}

int store_redis_put_snapshot(store_redis *s, const struct store_arm_state *arms, int n,
                             store_done_fn cb, void *ud)
{
    if (!s || !arms || n < 1 || n > SRD_MAX_ARGS - 2)
        return BD_ERR_INVALID;
    size_t d = (size_t)s->dim;
    struct op *op = op_new(OP_SNAPSHOT);
    if (!op)
        return BD_ERR_NOMEM;
    op->snap = calloc((size_t)n, sizeof *op->snap);
    if (!op->snap) {
        free_op(op);
        return BD_ERR_NOMEM;
    }
    op->n_snap = n;
    for (int i = 0; i < n; i++) {
        struct snap_arm *sa = &op->snap[i];
        if (util_copy_name(sa->name, sizeof sa->name, arms[i].arm_name, 0) || !arms[i].A ||
            !arms[i].b || !util_all_finite(arms[i].A, d * d) || !util_all_finite(arms[i].b, d)) {
            free_op(op);
            return BD_ERR_INVALID;
        }
        sa->st = arms[i];
        sa->st.arm_name = NULL;
        sa->st.A = sa->st.b = NULL;
        sa->A = malloc(d * d * 8);
        sa->b = malloc(d * 8);
        if (!sa->A || !sa->b) {
            free_op(op);
            return BD_ERR_NOMEM;
        }
        enc_doubles(sa->A, arms[i].A, d * d);
        enc_doubles(sa->b, arms[i].b, d);
        sa->pos = s->applied;
        const struct store_redis_pos *lp = snap_pos_of(s, sa->name);
        if (lp && store_redis_pos_cmp(*lp, sa->pos) > 0)
            sa->pos = *lp;
    }
    op->done_cb = cb;
    op->ud = ud;
    return enqueue(s, op);
}

int store_redis_trim(store_redis *s, store_done_fn cb, void *ud)
{
    if (!s)
        return BD_ERR_INVALID;
    struct op *op = op_new(OP_TRIM);
    if (!op)
        return BD_ERR_NOMEM;
    op->pos = s->applied;
    op->done_cb = cb;
    op->ud = ud;
    return enqueue(s, op);
}

size_t store_redis_dispatch(store_redis *s)
{
    size_t n = 0;
    pthread_mutex_lock(&s->ev_mu);
    struct event *ev = s->e_head;
    s->e_head = s->e_tail = NULL;
    s->e_count = 0;
    pthread_cond_broadcast(&s->ev_cv);
    pthread_mutex_unlock(&s->ev_mu);
    uint64_t applied = 0, skipped = 0;
    while (ev) {
        struct event *next = ev->next;
        assert(store_redis_pos_cmp(ev->pos, s->applied) > 0);
        if (!ev->skip) {
            struct store_redis_event e = {ev->pos, ev->rid, ev->arm, ev->x, ev->reward, ev->at_s};
            s->o.apply(&e, s->o.apply_ud);
            applied++;
        } else {
            skipped++;
        }
        s->applied = ev->pos;
        free(ev);
        ev = next;
        n++;
    }
    if (applied || skipped) {
        pthread_mutex_lock(&s->q_mu);
        s->st.events_applied += applied;
        s->st.events_skipped += skipped;
        pthread_mutex_unlock(&s->q_mu);
    }
    pthread_mutex_lock(&s->done_mu);
    struct op *list = s->d_head;
    s->d_head = s->d_tail = NULL;
    pthread_mutex_unlock(&s->done_mu);
    n += run_callbacks(list);
    double now = util_now_ms();
    if (s->reader_started && now >= s->next_hb) {
        struct op *hb = op_new(OP_HEARTBEAT);
        if (hb) {
            hb->pos = s->applied;
            if (enqueue(s, hb) == 0)
                s->next_hb = now + s->o.heartbeat_s * 1000.0;
        }
    }
    return n;
}

void store_redis_flush(store_redis *s)
{
    pthread_mutex_lock(&s->q_mu);
    uint64_t target = s->q_enq;
    while (s->q_fin < target)
        pthread_cond_wait(&s->q_cv, &s->q_mu);
    pthread_mutex_unlock(&s->q_mu);
}

struct store_redis_pos store_redis_applied(const store_redis *s)
{
    return s->applied;
}

int store_redis_dim(const store_redis *s)
{
    return s->dim;
}

const char *store_redis_replica_id(const store_redis *s)
{
    return s->replica_id;
}

void store_redis_get_stats(store_redis *s, struct store_redis_stats *out)
{
    pthread_mutex_lock(&s->q_mu);
    *out = s->st;
    out->queue_depth = s->q_count;
    pthread_mutex_unlock(&s->q_mu);
    pthread_mutex_lock(&s->ev_mu);
    out->event_depth = s->e_count;
    pthread_mutex_unlock(&s->ev_mu);
}
