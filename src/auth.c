/* auth — client/admin keys and the loopback rule (see auth.h). */
#include "banditd/auth.h"
#include "banditd/err.h"
#include "banditd/util.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct auth {
    char **keys; /* client keys */
    size_t n;
    char *admin; /* NULL = none */
};

static int (*g_eq)(const char *, const char *) = util_secret_eq;

void auth_set_compare(int (*eq)(const char *presented, const char *secret))
{
    g_eq = eq ? eq : util_secret_eq;
}

static void scrub_free(char *s)
{
    if (s) {
        volatile char *v = s;
        while (*v)
            *v++ = 0;
        free(s);
    }
}

void auth_destroy(auth *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        scrub_free(a->keys[i]);
    free(a->keys);
    scrub_free(a->admin);
    free(a);
}

static int valid_key(const char *s, size_t n)
{
    if (n == 0 || n > AUTH_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch >= 0x7f || ch == ',')
            return 0;
    }
    return 1;
}

/* Trim spaces/tabs/CR around s[0..n). */
static const char *trim(const char *s, size_t *n)
{
    while (*n > 0 && (s[0] == ' ' || s[0] == '\t' || s[0] == '\r')) {
        s++;
        (*n)--;
    }
    while (*n > 0 && (s[*n - 1] == ' ' || s[*n - 1] == '\t' || s[*n - 1] == '\r'))
        (*n)--;
    return s;
}

static int add_key(auth *a, const char *s, size_t n, const char *where, size_t pos, char *err,
                   size_t errlen)
{
    if (!valid_key(s, n)) {
        snprintf(err, errlen,
                 "%s: key %zu is invalid (1..%d bytes of printable ASCII, no spaces or commas)",
                 where, pos, AUTH_KEY_MAX);
        return BD_ERR_INVALID;
    }
    if (a->n >= AUTH_MAX_KEYS) {
        snprintf(err, errlen, "%s: more than %d client keys", where, AUTH_MAX_KEYS);
        return BD_ERR_INVALID;
    }
    char *k = strndup(s, n);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    char **nk = realloc(a->keys, (a->n + 1) * sizeof *nk);
    if (!nk) {
        scrub_free(k);
        snprintf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    a->keys = nk;
    a->keys[a->n++] = k;
    return BD_OK;
}

int auth_create(const char *client_keys_csv, const char *keys_file_text, const char *admin_key,
                auth **out, char *err, size_t errlen)
{
    assert(out);
    auth *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    int rc = BD_OK;
    if (client_keys_csv && client_keys_csv[0]) {
        const char *p = client_keys_csv;
        size_t pos = 1;
        for (;;) {
            size_t n = strcspn(p, ",");
            const char *k = trim(p, &n);
            if ((rc = add_key(a, k, n, "client keys (environment)", pos, err, errlen)))
                goto fail;
            p += strcspn(p, ",");
            if (!*p)
                break;
            p++;
            pos++;
        }
    }
    if (keys_file_text) {
        const char *p = keys_file_text;
        size_t line = 1;
        while (*p) {
            size_t n = strcspn(p, "\n");
            size_t tn = n;
            const char *k = trim(p, &tn);
            if (tn > 0 && k[0] != '#' &&
                (rc = add_key(a, k, tn, "client keys file", line, err, errlen)))
                goto fail;
            p += n;
            if (*p)
                p++;
            line++;
        }
    }
    if (admin_key && admin_key[0]) {
        size_t n = strlen(admin_key);
        const char *k = trim(admin_key, &n);
        if (!valid_key(k, n)) {
            snprintf(err, errlen, "admin key is invalid (1..%d bytes of printable ASCII)",
                     AUTH_KEY_MAX);
            rc = BD_ERR_INVALID;
            goto fail;
        }
        a->admin = strndup(k, n);
        if (!a->admin) {
            snprintf(err, errlen, "out of memory");
            rc = BD_ERR_NOMEM;
            goto fail;
        }
    }
    *out = a;
    return BD_OK;
fail:
    auth_destroy(a);
    return rc;
}

static int read_file(const char *path, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "auth.client_keys_file: cannot open %s: %s", path, strerror(errno));
        return BD_ERR_IO;
    }
    char *buf = malloc(AUTH_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        snprintf(err, errlen, "out of memory");
        return BD_ERR_NOMEM;
    }
    size_t n = fread(buf, 1, AUTH_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > AUTH_FILE_MAX || memchr(buf, '\0', n)) {
        snprintf(err, errlen, "auth.client_keys_file: %s is %s", path,
                 bad                 ? "unreadable"
                 : n > AUTH_FILE_MAX ? "larger than 1 MiB"
                                     : "binary");
        memset(buf, 0, n < AUTH_FILE_MAX ? n : AUTH_FILE_MAX);
        free(buf);
        return BD_ERR_IO;
    }
    buf[n] = '\0';
    *out = buf;
    return BD_OK;
}

int auth_from_config(const struct config *cfg, auth **out, char *err, size_t errlen)
{
    const char *csv = cfg->auth.client_keys_env[0] ? getenv(cfg->auth.client_keys_env) : NULL;
    const char *adm = cfg->auth.admin_key_env[0] ? getenv(cfg->auth.admin_key_env) : NULL;
    char *text = NULL;
    if (cfg->auth.client_keys_file[0]) {
        int rc = read_file(cfg->auth.client_keys_file, &text, err, errlen);
        if (rc)
            return rc;
    }
    int rc = auth_create(csv, text, adm, out, err, errlen);
    if (text) {
        memset(text, 0, strlen(text));
        free(text);
    }
    return rc;
}

size_t auth_n_client_keys(const auth *a)
{
    return a->n;
}

int auth_has_admin(const auth *a)
{
    return a->admin != NULL;
}

uint64_t auth_client_id(const char *key)
{
    uint64_t h = util_fnv1a64(key, strlen(key), 0x62616e6469746421ULL);
    /* One extra avalanche round so ids of similar keys differ everywhere. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h ? h : 1;
}

/* The token of "Bearer <token>" copied into tok (NUL-terminated); 0 or -1. */
static int bearer_token(const char *hdr, char *tok, size_t toklen)
{
    if (!hdr)
        return -1;
    while (*hdr == ' ' || *hdr == '\t')
        hdr++;
    if (strncasecmp(hdr, "Bearer", 6) != 0 || (hdr[6] != ' ' && hdr[6] != '\t'))
        return -1;
    hdr += 6;
    while (*hdr == ' ' || *hdr == '\t')
        hdr++;
    size_t n = strlen(hdr);
    while (n > 0 && (hdr[n - 1] == ' ' || hdr[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= toklen)
        return -1;
    memcpy(tok, hdr, n);
    tok[n] = '\0';
    return 0;
}

void auth_identify(const auth *a, const char *authorization, struct auth_identity *out)
{
    char tok[AUTH_KEY_MAX + 2];
    out->role = AUTH_NONE;
    out->client = 0;
    if (bearer_token(authorization, tok, sizeof tok) != 0)
        return;
    /* Compare with every key; no early exit. */
    int client = 0, admin = 0;
    for (size_t i = 0; i < a->n; i++)
        client |= g_eq(tok, a->keys[i]);
    if (a->admin)
        admin = g_eq(tok, a->admin);
    if (admin || client) {
        out->role = admin ? AUTH_ADMIN : AUTH_CLIENT;
        out->client = auth_client_id(tok);
    }
    memset(tok, 0, sizeof tok);
}

int auth_check_client(const auth *a, const char *authorization, struct auth_identity *id)
{
    auth_identify(a, authorization, id);
    if (a->n == 0)
        return BD_OK;
    return id->role == AUTH_NONE ? BD_ERR_AUTH : BD_OK;
}

int auth_check_admin(const auth *a, const char *authorization)
{
    struct auth_identity id;
    if (!a->admin)
        return auth_check_client(a, authorization, &id);
    auth_identify(a, authorization, &id);
    if (id.role == AUTH_ADMIN)
        return BD_OK;
    return id.role == AUTH_CLIENT ? BD_ERR_FORBIDDEN : BD_ERR_AUTH;
}

int auth_is_loopback(const char *host)
{
    if (!host)
        return 0;
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    struct in6_addr a6;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return memcmp(&a6, &in6addr_loopback, sizeof a6) == 0;
    return 0;
}

int auth_listen_allowed(const auth *a, const char *host, int allow_remote, char *err, size_t errlen)
{
    if (a->n > 0 || allow_remote || auth_is_loopback(host))
        return BD_OK;
    snprintf(err, errlen,
             "refusing to listen on %.128s without client keys: configure auth.client_keys_env "
             "or auth.client_keys_file, listen on loopback, or set "
             "auth.allow_unauthenticated_remote",
             host && host[0] ? host : "(all addresses)");
    return BD_ERR_FORBIDDEN;
}
