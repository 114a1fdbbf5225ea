/* pref — parse X-Bandit-Preference values into normalised weights. */
#include "banditd/pref.h"
#include "banditd/err.h"
#include "banditd/util.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pref_weights pref_from_scalar(double q)
{
    struct pref_weights w;
    assert(isfinite(q));
    w.quality = q + 0.0; /* +0.0 turns -0.0 into 0.0 */
    w.cost = 1.0 - q;
    w.latency = 0.0;
    w.has_tolerance = 0;
    w.tolerance = 0.0;
    return w;
}

struct pref_weights pref_from_tolerance(double t)
{
    struct pref_weights w;
    assert(isfinite(t) && t >= 0.0 && t <= 1.0);
    w.quality = 1.0;
    w.cost = 0.0;
    w.latency = 0.0;
    w.has_tolerance = 1;
    w.tolerance = t + 0.0;
    return w;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Trim spaces/tabs from both ends of [*s, *s + *n). */
static void trim(const char **s, size_t *n)
{
    while (*n > 0 && is_space(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_space((*s)[*n - 1]))
        (*n)--;
}

/* Strict decimal number: only [0-9.eE+-], whole text consumed, finite.
 * Returns 0 and *out, or -1 (not a number) or -2 (not finite). */
static int parse_number(const char *s, size_t n, double *out)
{
    char buf[PREF_HEADER_MAX + 1];
    if (n == 0 || n > PREF_HEADER_MAX)
        return -1;
    int digits = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9')
            digits = 1;
        else if (c != '.' && c != 'e' && c != 'E' && c != '+' && c != '-')
            return -1;
    }
    if (!digits)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end = NULL;
    double v = strtod(buf, &end);
    if (end != buf + n)
        return -1;
    if (!isfinite(v))
        return -2; /* overflow, e.g. 1e999 (underflow to ~0 is accepted) */
    *out = v;
    return 0;
}

static int in_unit(double v)
{
    return v >= 0.0 && v <= 1.0;
}

/* Human-readable list of profile names, for error messages. */
static void profile_list(const struct pref_profile *profiles, size_t n, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used + 1 < len; i++) {
        int k = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", profiles[i].name);
        if (k < 0)
            break;
        used += (size_t)k;
    }
    if (used >= len)
        buf[len - 1] = '\0';
}

static int parse_explicit(const char *s, size_t n, struct pref_weights *out, char *err,
                          size_t errlen)
{
    static const char *const keys[4] = {"quality", "cost", "latency", "tolerance"};
    double vals[4] = {0, 0, 0, 0};
    int seen[4] = {0, 0, 0, 0};
    char name[PREF_HEADER_MAX + 1];
    size_t pos = 0;

    for (;;) {
        const char *comma = memchr(s + pos, ',', n - pos);
        size_t end = comma ? (size_t)(comma - s) : n;
        const char *item = s + pos;
        size_t ilen = end - pos;
        trim(&item, &ilen);
        if (ilen == 0) {
            util_errf(err, errlen, "%sempty item in weights (expected key=value, ...)",
                      "invalid preference: ");
            return BD_ERR_INVALID;
        }
        const char *eq = memchr(item, '=', ilen);
        if (!eq) {
            util_errf(err, errlen, "invalid preference: item without '=' (expected %s)",
                      "quality=Q,cost=C,latency=L");
            return BD_ERR_INVALID;
        }
        const char *k = item;
        size_t klen = (size_t)(eq - item);
        const char *v = eq + 1;
        size_t vlen = ilen - klen - 1;
        trim(&k, &klen);
        trim(&v, &vlen);
        memcpy(name, k, klen);
        name[klen] = '\0';
        int idx = -1;
        for (int i = 0; i < 4; i++)
            if (strlen(keys[i]) == klen && memcmp(keys[i], k, klen) == 0)
                idx = i;
        if (idx < 0) {
            if (err && errlen)
                snprintf(err, errlen,
                         "invalid preference: unknown key '%.64s' (keys: quality, cost, latency; "
                         "or tolerance alone)",
                         name);
            return BD_ERR_INVALID;
        }
        if (seen[idx]) {
            util_errf(err, errlen, "invalid preference: key '%s' given more than once", keys[idx]);
            return BD_ERR_INVALID;
        }
        seen[idx] = 1;
        double d;
        if (parse_number(v, vlen, &d) != 0 || !in_unit(d)) {
            util_errf(err, errlen, "invalid preference: %s must be a number in [0,1]", keys[idx]);
            return BD_ERR_INVALID;
        }
        vals[idx] = d + 0.0;
        if (!comma)
            break;
        pos = end + 1;
    }
    if (seen[3]) {
        if (seen[0] || seen[1] || seen[2]) {
            util_errf(err, errlen, "invalid preference: %s",
                      "tolerance cannot be combined with quality/cost/latency weights");
            return BD_ERR_INVALID;
        }
        *out = pref_from_tolerance(vals[3]);
        return BD_OK;
    }
    double sum = vals[0] + vals[1] + vals[2];
    if (!(sum > 0.0)) {
        util_errf(err, errlen, "invalid preference: %s", "weights must sum to more than 0");
        return BD_ERR_INVALID;
    }
    out->quality = vals[0] / sum;
    out->cost = vals[1] / sum;
    out->latency = vals[2] / sum;
    out->has_tolerance = 0;
    out->tolerance = 0.0;
    return BD_OK;
}

int pref_parse(const char *value, size_t len, const struct pref_profile *profiles, size_t n,
               struct pref_weights *out, char *err, size_t errlen)
{
    assert(out != NULL);
    assert(profiles != NULL || n == 0);
    if (value == NULL)
        len = 0;
    if (len > PREF_HEADER_MAX) {
        if (err && errlen)
            snprintf(err, errlen, "invalid preference: longer than %d bytes", PREF_HEADER_MAX);
        return BD_ERR_INVALID;
    }
    if (len > 0 && memchr(value, '\0', len) != NULL) {
        util_errf(err, errlen, "invalid preference: %s", "contains a NUL byte");
        return BD_ERR_INVALID;
    }
    const char *s = value;
    size_t sn = len;
    trim(&s, &sn);
    if (sn == 0) {
        util_errf(err, errlen, "invalid preference: %s",
                  "empty (expected a number in [0,1], a profile name or quality=..,cost=..)");
        return BD_ERR_INVALID;
    }
    if (memchr(s, '=', sn) != NULL)
        return parse_explicit(s, sn, out, err, errlen);

    for (size_t i = 0; i < n; i++) {
        if (strlen(profiles[i].name) == sn && memcmp(profiles[i].name, s, sn) == 0) {
            *out = profiles[i].w;
            return BD_OK;
        }
    }

    double q;
    int rc = parse_number(s, sn, &q);
    if (rc == 0) {
        if (!in_unit(q)) {
            util_errf(err, errlen, "invalid preference: %s",
                      "a number must be in [0,1] (the weight on quality)");
            return BD_ERR_INVALID;
        }
        *out = pref_from_scalar(q);
        return BD_OK;
    }
    if (err && errlen) {
        char names[256];
        char shown[48];
        size_t k = sn < sizeof shown - 1 ? sn : sizeof shown - 1;
        memcpy(shown, s, k);
        shown[k] = '\0';
        for (size_t i = 0; i < k; i++)
            if ((unsigned char)shown[i] < 0x20 || (unsigned char)shown[i] == 0x7f)
                shown[i] = '?';
        profile_list(profiles, n, names, sizeof names);
        if (rc == -2)
            snprintf(err, errlen, "invalid preference '%s': the number must be finite", shown);
        else
            snprintf(err, errlen,
                     "invalid preference '%s': expected a number in [0,1], a profile name "
                     "(%s) or weights like quality=0.6,cost=0.3,latency=0.1",
                     shown, n ? names : "none configured");
    }
    return BD_ERR_INVALID;
}
