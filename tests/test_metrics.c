/* Unit tests for metrics: the registry, the text exposition (checked by an
 * independent parser written here), escaping, histogram buckets, callbacks,
 * process metrics, the banditd catalogue, and promtool when installed. */
#include "banditd/metrics.h"
#include "banditd/err.h"
#include "banditd/util.h"

#include <check.h>
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- an independent parser of the text format 0.0.4 ----------------------
 * Strict: every line is a comment (# HELP / # TYPE), or a sample
 * `name{l="v",...} value`; names and label names are checked against the
 * grammar, label values may only use the escapes \\ \" \n. */

#define P_MAX_LABELS 4

struct p_sample {
    char name[128];
    int nl;
    char lname[P_MAX_LABELS][64];
    char lval[P_MAX_LABELS][1100];
    double value;
};

struct p_family {
    char name[128];
    char type[16];
    char help[2048]; /* unescaped */
    int has_help, has_type;
};

struct parsed {
    struct p_sample *s;
    int n, cap;
    struct p_family f[256];
    int nf;
    char err[256];
};

static int is_name_char(char c, int first)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':')
        return 1;
    return !first && c >= '0' && c <= '9';
}

/* Read a name at *p into out; returns its length (0 = none). */
static size_t p_name(const char **p, char *out, size_t outlen, int allow_colon)
{
    size_t n = 0;
    while (is_name_char((*p)[n], n == 0) && (allow_colon || (*p)[n] != ':')) {
        if (n + 1 >= outlen)
            return 0;
        out[n] = (*p)[n];
        n++;
    }
    out[n] = '\0';
    *p += n;
    return n;
}

static struct p_family *p_family_get(struct parsed *ps, const char *name)
{
    for (int i = 0; i < ps->nf; i++)
        if (strcmp(ps->f[i].name, name) == 0)
            return &ps->f[i];
    if (ps->nf == 256)
        return NULL;
    struct p_family *f = &ps->f[ps->nf++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    return f;
}

/* The family a sample belongs to: exact name, or for histograms the name
 * without _bucket/_sum/_count. */
static struct p_family *p_family_of(struct parsed *ps, const char *sample)
{
    for (int i = 0; i < ps->nf; i++) {
        struct p_family *f = &ps->f[i];
        size_t ln = strlen(f->name);
        if (strcmp(f->name, sample) == 0 && strcmp(f->type, "histogram") != 0)
            return f;
        if (strcmp(f->type, "histogram") == 0 && strncmp(sample, f->name, ln) == 0 &&
            (strcmp(sample + ln, "_bucket") == 0 || strcmp(sample + ln, "_sum") == 0 ||
             strcmp(sample + ln, "_count") == 0))
            return f;
    }
    return NULL;
}

static int p_fail(struct parsed *ps, int line, const char *what)
{
    snprintf(ps->err, sizeof ps->err, "line %d: %s", line, what);
    return -1;
}

static int parse_line(struct parsed *ps, const char *l, int lineno)
{
    if (l[0] == '#') {
        int help = strncmp(l, "# HELP ", 7) == 0, type = strncmp(l, "# TYPE ", 7) == 0;
        if (!help && !type)
            return 0; /* other comments are allowed */
        const char *p = l + 7;
        char name[128];
        if (!p_name(&p, name, sizeof name, 1) || *p != ' ')
            return p_fail(ps, lineno, "bad name in comment");
        p++;
        struct p_family *f = p_family_get(ps, name);
        if (!f)
            return p_fail(ps, lineno, "too many families");
        if (help) {
            if (f->has_help)
                return p_fail(ps, lineno, "second HELP");
            size_t o = 0;
            for (; *p; p++) {
                char c = *p;
                if (c == '\\') {
                    p++;
                    if (*p == '\\')
                        c = '\\';
                    else if (*p == 'n')
                        c = '\n';
                    else
                        return p_fail(ps, lineno, "bad escape in HELP");
                }
                if (o + 1 >= sizeof f->help)
                    return p_fail(ps, lineno, "HELP too long");
                f->help[o++] = c;
            }
            f->help[o] = '\0';
            f->has_help = 1;
        } else {
            if (f->has_type)
                return p_fail(ps, lineno, "second TYPE");
            if (strcmp(p, "counter") && strcmp(p, "gauge") && strcmp(p, "histogram") &&
                strcmp(p, "summary") && strcmp(p, "untyped"))
                return p_fail(ps, lineno, "unknown type");
            snprintf(f->type, sizeof f->type, "%s", p);
            f->has_type = 1;
        }
        return 0;
    }
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 256;
        ps->s = realloc(ps->s, (size_t)ps->cap * sizeof *ps->s);
        ck_assert_ptr_nonnull(ps->s);
    }
    struct p_sample *s = &ps->s[ps->n];
    memset(s, 0, sizeof *s);
    const char *p = l;
    if (!p_name(&p, s->name, sizeof s->name, 1))
        return p_fail(ps, lineno, "bad metric name");
    if (*p == '{') {
        p++;
        while (*p != '}') {
            if (s->nl == P_MAX_LABELS)
                return p_fail(ps, lineno, "too many labels");
            if (!p_name(&p, s->lname[s->nl], sizeof s->lname[0], 0))
                return p_fail(ps, lineno, "bad label name");
            for (int j = 0; j < s->nl; j++)
                if (strcmp(s->lname[j], s->lname[s->nl]) == 0)
                    return p_fail(ps, lineno, "duplicate label");
            if (p[0] != '=' || p[1] != '"')
                return p_fail(ps, lineno, "expected =\"");
            p += 2;
            size_t o = 0;
            char *v = s->lval[s->nl];
            for (; *p != '"'; p++) {
                char c = *p;
                if (c == '\0' || c == '\n')
                    return p_fail(ps, lineno, "unterminated label value");
                if (c == '\\') {
                    p++;
                    if (*p == '\\')
                        c = '\\';
                    else if (*p == '"')
                        c = '"';
                    else if (*p == 'n')
                        c = '\n';
                    else
                        return p_fail(ps, lineno, "bad escape in label value");
                }
                if (o + 1 >= sizeof s->lval[0])
                    return p_fail(ps, lineno, "label value too long");
                v[o++] = c;
            }
            v[o] = '\0';
            p++; /* closing quote */
            s->nl++;
            if (*p == ',')
                p++;
            else if (*p != '}')
                return p_fail(ps, lineno, "expected , or }");
        }
        p++;
    }
    if (*p != ' ')
        return p_fail(ps, lineno, "expected a space before the value");
    p++;
    char *end;
    s->value = strtod(p, &end);
    if (end == p || (*end != '\0' && *end != ' '))
        return p_fail(ps, lineno, "bad value");
    struct p_family *f = p_family_of(ps, s->name);
    if (!f || !f->has_type)
        return p_fail(ps, lineno, "sample before its # TYPE");
    ps->n++;
    return 0;
}

/* Parse text (NUL-terminated). Returns 0 or -1 with ps->err set. */
static int parse_exposition(const char *text, struct parsed *ps)
{
    memset(ps, 0, sizeof *ps);
    int lineno = 0;
    const char *p = text;
    if (*p && text[strlen(text) - 1] != '\n')
        return p_fail(ps, 0, "no final newline");
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = (size_t)(nl - p);
        char *line = malloc(len + 1);
        memcpy(line, p, len);
        line[len] = '\0';
        lineno++;
        int rc = len ? parse_line(ps, line, lineno) : p_fail(ps, lineno, "empty line");
        free(line);
        if (rc)
            return rc;
        p = nl + 1;
    }
    return 0;
}

static void parsed_free(struct parsed *ps)
{
    free(ps->s);
    ps->s = NULL;
}

static const char *label_of(const struct p_sample *s, const char *name)
{
    for (int i = 0; i < s->nl; i++)
        if (strcmp(s->lname[i], name) == 0)
            return s->lval[i];
    return NULL;
}

/* Find sample `name` whose labels are exactly the given pairs (NULL-ended
 * list name, value, name, value, ...). */
static const struct p_sample *find_sample(const struct parsed *ps, const char *name,
                                          const char *const *pairs)
{
    int want = 0;
    while (pairs && pairs[2 * want])
        want++;
    for (int i = 0; i < ps->n; i++) {
        const struct p_sample *s = &ps->s[i];
        if (strcmp(s->name, name) || s->nl != want)
            continue;
        int ok = 1;
        for (int k = 0; k < want && ok; k++) {
            const char *v = label_of(s, pairs[2 * k]);
            ok = v && strcmp(v, pairs[2 * k + 1]) == 0;
        }
        if (ok)
            return s;
    }
    return NULL;
}

static int count_samples(const struct parsed *ps, const char *name)
{
    int n = 0;
    for (int i = 0; i < ps->n; i++)
        n += strcmp(ps->s[i].name, name) == 0;
    return n;
}

/* Same labels except `le`. */
static int same_series(const struct p_sample *a, const struct p_sample *b)
{
    int na = 0, nb = 0;
    for (int i = 0; i < a->nl; i++) {
        if (strcmp(a->lname[i], "le") == 0)
            continue;
        na++;
        const char *v = label_of(b, a->lname[i]);
        if (!v || strcmp(v, a->lval[i]))
            return 0;
    }
    for (int i = 0; i < b->nl; i++)
        nb += strcmp(b->lname[i], "le") != 0;
    return na == nb;
}

/* Structural checks of every histogram in ps: for each series, `le` strictly
 * increasing ending in +Inf, cumulative counts non-decreasing, _count equal
 * to the +Inf bucket, _sum present. Returns the number of series checked. */
static int check_histograms(const struct parsed *ps)
{
    int checked = 0;
    for (int fi = 0; fi < ps->nf; fi++) {
        const struct p_family *f = &ps->f[fi];
        if (strcmp(f->type, "histogram"))
            continue;
        char bname[160], cname[160], sname[160];
        snprintf(bname, sizeof bname, "%s_bucket", f->name);
        snprintf(cname, sizeof cname, "%s_count", f->name);
        snprintf(sname, sizeof sname, "%s_sum", f->name);
        for (int i = 0; i < ps->n; i++) {
            const struct p_sample *c = &ps->s[i];
            if (strcmp(c->name, cname))
                continue;
            double prev_le = -INFINITY, prev = 0, inf_bucket = -1;
            int nb = 0;
            for (int j = 0; j < ps->n; j++) {
                const struct p_sample *b = &ps->s[j];
                if (strcmp(b->name, bname) || !same_series(b, c))
                    continue;
                const char *le = label_of(b, "le");
                ck_assert_ptr_nonnull(le);
                double lev = strtod(le, NULL);
                ck_assert_msg(lev > prev_le, "le not increasing in %s", f->name);
                ck_assert_msg(b->value >= prev, "bucket counts decrease in %s", f->name);
                prev_le = lev;
                prev = b->value;
                nb++;
                if (strcmp(le, "+Inf") == 0)
                    inf_bucket = b->value;
            }
            ck_assert_msg(nb >= 2, "histogram %s series has %d buckets", f->name, nb);
            ck_assert_msg(isinf(prev_le), "last bucket of %s is not +Inf", f->name);
            ck_assert_msg(inf_bucket == c->value, "%s: _count %g != +Inf bucket %g", f->name,
                          c->value, inf_bucket);
            int has_sum = 0;
            for (int j = 0; j < ps->n; j++)
                has_sum |= strcmp(ps->s[j].name, sname) == 0 && same_series(&ps->s[j], c);
            ck_assert_msg(has_sum, "%s has no _sum", f->name);
            checked++;
        }
    }
    return checked;
}

static char *expose_str(struct metrics *m)
{
    struct util_buf b;
    util_buf_init(&b, 64u << 20);
    ck_assert_int_eq(metrics_expose(m, &b), 0);
    if (!b.data) /* empty exposition */
        return strdup("");
    return b.data;
}

static void expose_parse(struct metrics *m, struct parsed *ps)
{
    char *text = expose_str(m);
    int rc = parse_exposition(text, ps);
    ck_assert_msg(rc == 0, "parse error: %s\n%s", ps->err, text);
    free(text);
}

/* ---- tests ----------------------------------------------------------------- */

START_TEST(test_counter_exposition)
{
    struct metrics *m = metrics_create();
    struct metrics_family *f;
    const char *ln[] = {"arm", "status"};
    ck_assert_int_eq(metrics_counter_family(m, "t_requests_total", "Requests seen.", 2, ln, &f), 0);
    struct metrics_counter *a, *b, *a2;
    const char *va[] = {"cheap", "2xx"}, *vb[] = {"strong", "5xx"};
    ck_assert_int_eq(metrics_counter_series(f, va, &a), 0);
    ck_assert_int_eq(metrics_counter_series(f, vb, &b), 0);
    ck_assert_int_eq(metrics_counter_series(f, va, &a2), 0);
    ck_assert_ptr_eq(a, a2); /* idempotent */
    double ref = 0;
    for (int i = 1; i <= 100; i++) {
        metrics_counter_add(a, i * 0.5);
        ref += i * 0.5;
    }
    metrics_counter_inc(b);
    metrics_counter_inc(b);
    struct parsed ps;
    expose_parse(m, &ps);
    ck_assert_int_eq(ps.nf, 1);
    ck_assert_str_eq(ps.f[0].type, "counter");
    ck_assert_str_eq(ps.f[0].help, "Requests seen.");
    const char *pa[] = {"arm", "cheap", "status", "2xx", NULL};
    const char *pb[] = {"arm", "strong", "status", "5xx", NULL};
    const struct p_sample *sa = find_sample(&ps, "t_requests_total", pa);
    const struct p_sample *sb = find_sample(&ps, "t_requests_total", pb);
    ck_assert_ptr_nonnull(sa);
    ck_assert_ptr_nonnull(sb);
    ck_assert_double_eq(sa->value, ref);
    ck_assert_double_eq(sb->value, 2);
    ck_assert_int_eq(ps.n, 2);
    parsed_free(&ps);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_gauge_exposition)
{
    struct metrics *m = metrics_create();
    struct metrics_family *f;
    struct metrics_gauge *g;
    ck_assert_int_eq(metrics_gauge_family(m, "t_temperature", "A gauge.", 0, NULL, &f), 0);
    ck_assert_int_eq(metrics_gauge_series(f, NULL, &g), 0);
    metrics_gauge_set(g, 10);
    metrics_gauge_add(g, -2.5);
    metrics_gauge_add(g, 0.125);
    struct parsed ps;
    expose_parse(m, &ps);
    ck_assert_int_eq(ps.n, 1);
    ck_assert_str_eq(ps.f[0].type, "gauge");
    ck_assert_int_eq(ps.s[0].nl, 0);
    ck_assert_double_eq(ps.s[0].value, 7.625);
    parsed_free(&ps);
    /* Non-finite values use Prometheus spellings and parse back. */
    metrics_gauge_set(g, -INFINITY);
    char *text = expose_str(m);
    ck_assert_ptr_nonnull(strstr(text, "t_temperature -Inf\n"));
    free(text);
    /* Spellings: shortest that reads back exactly (checked with strtod). */
    const double vals[] = {0.1, -42, 123456789012.0, 1e15, 1.0 / 3, -2.5e-9, 0x1p60, 0.0123};
    const char *want[] = {"0.1", "-42", "123456789012", "1e+15", NULL, NULL, NULL, "0.0123"};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        metrics_gauge_set(g, vals[i]);
        text = expose_str(m);
        const char *num = strstr(text, "\nt_temperature ");
        ck_assert_ptr_nonnull(num);
        num += strlen("\nt_temperature ");
        ck_assert_double_eq(strtod(num, NULL), vals[i]);
        if (want[i]) {
            ck_assert_int_eq(strncmp(num, want[i], strlen(want[i])), 0);
            ck_assert_int_eq(num[strlen(want[i])], '\n');
        }
        free(text);
    }
    metrics_destroy(m);
}
END_TEST

START_TEST(test_histogram_exposition)
{
    struct metrics *m = metrics_create();
    struct metrics_family *f;
    const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    const size_t nb = sizeof bounds / sizeof bounds[0];
    const char *ln[] = {"route"};
    ck_assert_int_eq(metrics_hist_family(m, "t_latency_seconds", "Latency.", 1, ln, bounds, nb, &f),
                     0);
    struct metrics_hist *h;
    const char *v[] = {"chat"};
    ck_assert_int_eq(metrics_hist_series(f, v, &h), 0);
    struct util_rng rng;
    util_rng_seed(&rng, 42);
    enum { N = 5000 };
    static double obs[N];
    double sum = 0;
    for (int i = 0; i < N; i++) {
        obs[i] = 20 * util_rng_uniform(&rng) * util_rng_uniform(&rng) * util_rng_uniform(&rng);
        metrics_hist_observe(h, obs[i]);
        sum += obs[i];
    }
    metrics_hist_observe(h, NAN); /* ignored */
    ck_assert_uint_eq(metrics_hist_count(h), N);
    struct parsed ps;
    expose_parse(m, &ps);
    ck_assert_int_eq(check_histograms(&ps), 1);
    ck_assert_str_eq(ps.f[0].type, "histogram");
    /* Buckets against a brute-force count of the observations. */
    for (size_t k = 0; k <= nb; k++) {
        char le[32];
        double bound = k < nb ? bounds[k] : INFINITY;
        if (k < nb)
            snprintf(le, sizeof le, "%g", bounds[k]);
        else
            strcpy(le, "+Inf");
        const char *pairs[] = {"route", "chat", "le", le, NULL};
        const struct p_sample *s = find_sample(&ps, "t_latency_seconds_bucket", pairs);
        ck_assert_msg(s != NULL, "no bucket le=%s", le);
        int want = 0;
        for (int i = 0; i < N; i++)
            want += obs[i] <= bound;
        ck_assert_double_eq(s->value, want);
    }
    const char *pr[] = {"route", "chat", NULL};
    const struct p_sample *ssum = find_sample(&ps, "t_latency_seconds_sum", pr);
    const struct p_sample *scnt = find_sample(&ps, "t_latency_seconds_count", pr);
    ck_assert_ptr_nonnull(ssum);
    ck_assert_ptr_nonnull(scnt);
    ck_assert_double_eq(scnt->value, N);
    ck_assert_double_eq_tol(ssum->value, sum, 1e-9 * sum);
    ck_assert_int_eq(count_samples(&ps, "t_latency_seconds_bucket"), (int)nb + 1);
    parsed_free(&ps);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_histogram_boundaries)
{
    struct metrics *m = metrics_create();
    struct metrics_family *f;
    const double bounds[] = {0.1, 0.2, 1};
    ck_assert_int_eq(metrics_hist_family(m, "t_b_seconds", "B.", 0, NULL, bounds, 3, &f), 0);
    struct metrics_hist *h;
    ck_assert_int_eq(metrics_hist_series(f, NULL, &h), 0);
    metrics_hist_observe(h, 0.1);                 /* exactly a bound: le="0.1" */
    metrics_hist_observe(h, nextafter(0.1, 1.0)); /* just above: le="0.2" */
    metrics_hist_observe(h, 0.2);                 /* le="0.2" */
    metrics_hist_observe(h, 1.0);                 /* le="1" */
    metrics_hist_observe(h, nextafter(1.0, 2.0)); /* +Inf only */
    metrics_hist_observe(h, -5);                  /* below all: first bucket */
    metrics_hist_observe(h, INFINITY);            /* +Inf only */
    struct parsed ps;
    expose_parse(m, &ps);
    check_histograms(&ps);
    const char *p1[] = {"le", "0.1", NULL}, *p2[] = {"le", "0.2", NULL}, *p3[] = {"le", "1", NULL},
               *p4[] = {"le", "+Inf", NULL};
    ck_assert_double_eq(find_sample(&ps, "t_b_seconds_bucket", p1)->value, 2);
    ck_assert_double_eq(find_sample(&ps, "t_b_seconds_bucket", p2)->value, 4);
    ck_assert_double_eq(find_sample(&ps, "t_b_seconds_bucket", p3)->value, 5);
    ck_assert_double_eq(find_sample(&ps, "t_b_seconds_bucket", p4)->value, 7);
    ck_assert_double_eq(find_sample(&ps, "t_b_seconds_count", NULL)->value, 7);
    parsed_free(&ps);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_escaping)
{
    struct metrics *m = metrics_create();
    struct metrics_family *f;
    const char *ln[] = {"a", "b", "c"};
    ck_assert_int_eq(metrics_counter_family(m, "t_esc_total",
                                            "Help with a \\ backslash,\na newline and \"quotes\".",
                                            3, ln, &f),
                     0);
    const char *nasty[][3] = {
        {"back\\slash", "quo\"te", "new\nline"},
        {"\\\"\n", "\\n is not a newline", "}{,=\" le=\"x"},
        {"", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "tab\there"},
        {"\\", "\\\\", "\"\""},
    };
    const int n = (int)(sizeof nasty / sizeof nasty[0]);
    for (int i = 0; i < n; i++) {
        struct metrics_counter *c;
        ck_assert_int_eq(metrics_counter_series(f, nasty[i], &c), 0);
        metrics_counter_add(c, i + 1);
    }
    char *text = expose_str(m);
    /* Raw newlines only end lines: every line must parse. */
    struct parsed ps;
    int rc = parse_exposition(text, &ps);
    ck_assert_msg(rc == 0, "parse error: %s\n%s", ps.err, text);
    ck_assert_str_eq(ps.f[0].help, "Help with a \\ backslash,\na newline and \"quotes\".");
    ck_assert_ptr_nonnull(strstr(text, "# HELP t_esc_total Help with a \\\\ backslash,\\na"));
    ck_assert_ptr_nonnull(strstr(text, "a=\"back\\\\slash\",b=\"quo\\\"te\",c=\"new\\nline\""));
    ck_assert_int_eq(ps.n, n);
    for (int i = 0; i < n; i++) {
        const char *pairs[] = {"a", nasty[i][0], "b", nasty[i][1], "c", nasty[i][2], NULL};
        const struct p_sample *s = find_sample(&ps, "t_esc_total", pairs);
        ck_assert_msg(s != NULL, "series %d did not round-trip", i);
        ck_assert_double_eq(s->value, i + 1);
    }
    parsed_free(&ps);
    free(text);
    /* Invalid UTF-8 and over-long values are refused. */
    struct metrics_counter *c;
    const char *bad1[] = {"x", "\xc3\x28", "y"};     /* broken 2-byte sequence */
    const char *bad2[] = {"\xed\xa0\x80", "x", "y"}; /* surrogate */
    const char *bad3[] = {"\xc0\xaf", "x", "y"};     /* overlong */
    ck_assert_int_eq(metrics_counter_series(f, bad1, &c), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_counter_series(f, bad2, &c), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_counter_series(f, bad3, &c), BD_ERR_INVALID);
    char longv[METRICS_MAX_VALUE_LEN + 2];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    const char *bad4[] = {longv, "x", "y"};
    ck_assert_int_eq(metrics_counter_series(f, bad4, &c), BD_ERR_INVALID);
    longv[METRICS_MAX_VALUE_LEN] = '\0'; /* exactly the maximum is fine */
    ck_assert_int_eq(metrics_counter_series(f, bad4, &c), 0);
    const char *bad5[] = {"x", NULL, "y"};
    ck_assert_int_eq(metrics_counter_series(f, bad5, &c), BD_ERR_INVALID);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_naming_rules)
{
    struct metrics *m = metrics_create();
    struct metrics_family *f;
    const double b[] = {1, 2};
    const char *le[] = {"le"}, *dup[] = {"x", "x"}, *res[] = {"__x"}, *badl[] = {"a-b"};
    const char *four[] = {"a", "b", "c", "d"};
    ck_assert_int_eq(metrics_counter_family(m, "t_requests", "h", 0, NULL, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_things_total", "h", 0, NULL, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_x_count", "h", 0, NULL, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_x_sum", "h", 0, NULL, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_hist_family(m, "t_x_bucket", "h", 0, NULL, b, 2, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "9lives", "h", 0, NULL, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "a:b", "h", 0, NULL, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_nohelp", "", 0, NULL, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_g", "\xff", 0, NULL, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_hist_family(m, "t_h_seconds", "h", 1, le, b, 2, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_g", "h", 1, le, &f), 0); /* le ok off histograms */
    ck_assert_int_eq(metrics_gauge_family(m, "t_g2", "h", 2, dup, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_g3", "h", 1, res, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_g4", "h", 1, badl, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_gauge_family(m, "t_g5", "h", 4, four, &f), BD_ERR_INVALID);
    /* Bounds: increasing, finite, 1..16. */
    const double dec[] = {1, 1}, nan_b[] = {1, NAN}, inf_b[] = {1, INFINITY};
    double many[METRICS_MAX_BUCKETS + 1];
    for (int i = 0; i <= METRICS_MAX_BUCKETS; i++)
        many[i] = i + 1;
    ck_assert_int_eq(metrics_hist_family(m, "t_h1", "h", 0, NULL, dec, 2, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_hist_family(m, "t_h1", "h", 0, NULL, nan_b, 2, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_hist_family(m, "t_h1", "h", 0, NULL, inf_b, 2, &f), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_hist_family(m, "t_h1", "h", 0, NULL, b, 0, &f), BD_ERR_INVALID);
    ck_assert_int_eq(
        metrics_hist_family(m, "t_h1", "h", 0, NULL, many, METRICS_MAX_BUCKETS + 1, &f),
        BD_ERR_INVALID);
    ck_assert_int_eq(metrics_hist_family(m, "t_h1", "h", 0, NULL, many, METRICS_MAX_BUCKETS, &f),
                     0);
    /* Duplicate family: EXISTS, and the same family back when the type matches. */
    struct metrics_family *f2 = NULL;
    ck_assert_int_eq(metrics_hist_family(m, "t_h1", "h", 0, NULL, b, 2, &f2), BD_ERR_EXISTS);
    ck_assert_ptr_eq(f2, f);
    ck_assert_int_eq(metrics_gauge_family(m, "t_h1", "h", 0, NULL, &f2), BD_ERR_EXISTS);
    ck_assert_ptr_null(f2);
    ck_assert_ptr_eq(metrics_family_find(m, "t_h1"), f);
    ck_assert_ptr_null(metrics_family_find(m, "t_nope"));
    /* Series of the wrong type. */
    struct metrics_counter *c;
    ck_assert_int_eq(metrics_counter_series(f, NULL, &c), BD_ERR_INVALID);
    ck_assert_int_eq(metrics_fn_series(f, NULL, NULL, NULL), BD_ERR_INVALID);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_counter_monotone)
{
    struct metrics *m = metrics_create();
    struct metrics_family *f;
    struct metrics_counter *c;
    ck_assert_int_eq(metrics_counter_family(m, "t_mono_total", "M.", 0, NULL, &f), 0);
    ck_assert_int_eq(metrics_counter_series(f, NULL, &c), 0);
    struct util_rng rng;
    util_rng_seed(&rng, 7);
    double prev = -1;
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 20; i++) {
            double v = util_rng_uniform(&rng) * 4 - 2; /* half negative */
            metrics_counter_add(c, v);
        }
        metrics_counter_add(c, NAN);
        metrics_counter_add(c, -INFINITY);
        struct parsed ps;
        expose_parse(m, &ps);
        ck_assert_int_eq(ps.n, 1);
        ck_assert_msg(ps.s[0].value >= prev, "counter decreased: %g < %g", ps.s[0].value, prev);
        ck_assert(isfinite(ps.s[0].value));
        prev = ps.s[0].value;
        parsed_free(&ps);
    }
    ck_assert(prev > 0);
    /* NULL handles are no-ops and read as 0. */
    metrics_counter_add(NULL, 1);
    metrics_gauge_set(NULL, 1);
    metrics_hist_observe(NULL, 1);
    ck_assert_double_eq(metrics_counter_value(NULL), 0);
    metrics_destroy(m);
}
END_TEST

struct cb_state {
    int calls;
    double value;
};

static double cb_fn(void *user)
{
    struct cb_state *st = user;
    st->calls++;
    return st->value;
}

START_TEST(test_callback_gauges)
{
    struct metrics *m = metrics_create();
    struct cb_state a = {0, 17}, b = {0, 3.5};
    ck_assert_int_eq(metrics_gauge_callback(m, "t_queue_depth", "Q.", cb_fn, &a), 0);
    struct metrics_family *f;
    const char *ln[] = {"store"};
    ck_assert_int_eq(metrics_gauge_family(m, "t_pending", "P.", 1, ln, &f), 0);
    const char *v1[] = {"sqlite"}, *v2[] = {"redis"};
    ck_assert_int_eq(metrics_fn_series(f, v1, cb_fn, &b), 0);
    ck_assert_int_eq(metrics_fn_series(f, v2, NULL, NULL), 0); /* unbound: omitted */
    struct metrics_gauge *g;
    ck_assert_int_eq(metrics_gauge_series(f, v1, &g), BD_ERR_EXISTS);
    struct parsed ps;
    expose_parse(m, &ps);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_double_eq(find_sample(&ps, "t_queue_depth", NULL)->value, 17);
    const char *p1[] = {"store", "sqlite", NULL}, *p2[] = {"store", "redis", NULL};
    ck_assert_double_eq(find_sample(&ps, "t_pending", p1)->value, 3.5);
    ck_assert_ptr_null(find_sample(&ps, "t_pending", p2));
    parsed_free(&ps);
    /* Value changes are seen at the next exposition; NaN omits the sample,
     * and a family with nothing to show is omitted whole. */
    a.value = 18;
    b.value = NAN;
    char *text = expose_str(m);
    ck_assert_int_eq(a.calls, 2);
    ck_assert_int_eq(b.calls, 2);
    ck_assert_ptr_nonnull(strstr(text, "t_queue_depth 18\n"));
    ck_assert_ptr_null(strstr(text, "t_pending"));
    free(text);
    /* Re-binding an existing callback series. */
    struct cb_state c = {0, 99};
    ck_assert_int_eq(metrics_fn_series(f, v2, cb_fn, &c), 0);
    expose_parse(m, &ps);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_double_eq(find_sample(&ps, "t_pending", p2)->value, 99);
    parsed_free(&ps);
    /* A value series refuses to become a callback. */
    struct metrics_gauge *g2;
    const char *v3[] = {"plain"};
    ck_assert_int_eq(metrics_gauge_series(f, v3, &g2), 0);
    ck_assert_int_eq(metrics_fn_series(f, v3, cb_fn, &c), BD_ERR_EXISTS);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_order_and_many_series)
{
    struct metrics *m = metrics_create();
    struct metrics_family *fz, *fa, *fm;
    /* Families registered out of order come out sorted by name. */
    ck_assert_int_eq(metrics_counter_family(m, "zz_total", "Z.", 1, (const char *[]){"k"}, &fz), 0);
    ck_assert_int_eq(metrics_gauge_family(m, "aa", "A.", 0, NULL, &fa), 0);
    ck_assert_int_eq(metrics_counter_family(m, "mm_total", "M.", 0, NULL, &fm), 0);
    struct metrics_gauge *g;
    struct metrics_counter *c;
    ck_assert_int_eq(metrics_gauge_series(fa, NULL, &g), 0);
    ck_assert_int_eq(metrics_counter_series(fm, NULL, &c), 0);
    /* Many series, created in a scrambled order. */
    enum { NS = 3000 };
    static struct metrics_counter *h[NS];
    for (int i = 0; i < NS; i++) {
        int k = (i * 7919) % NS; /* a permutation: 7919 is prime, coprime with NS */
        char v[16];
        snprintf(v, sizeof v, "s%05d", k);
        const char *vals[] = {v};
        ck_assert_int_eq(metrics_counter_series(fz, vals, &h[k]), 0);
    }
    for (int k = 0; k < NS; k++)
        metrics_counter_add(h[k], k);
    char *t1 = expose_str(m);
    char *t2 = expose_str(m);
    ck_assert_str_eq(t1, t2); /* deterministic */
    struct parsed ps;
    int rc = parse_exposition(t1, &ps);
    ck_assert_msg(rc == 0, "%s", ps.err);
    ck_assert_int_eq(ps.nf, 3);
    ck_assert_str_eq(ps.f[0].name, "aa");
    ck_assert_str_eq(ps.f[1].name, "mm_total");
    ck_assert_str_eq(ps.f[2].name, "zz_total");
    ck_assert_int_eq(count_samples(&ps, "zz_total"), NS);
    int idx = 0;
    for (int i = 0; i < ps.n; i++) {
        if (strcmp(ps.s[i].name, "zz_total"))
            continue;
        char want[16];
        snprintf(want, sizeof want, "s%05d", idx);
        ck_assert_str_eq(ps.s[i].lval[0], want); /* sorted by label value */
        ck_assert_double_eq(ps.s[i].value, idx);
        idx++;
    }
    parsed_free(&ps);
    free(t1);
    free(t2);
    /* The per-family cardinality guard. */
    for (int k = NS; k < METRICS_MAX_SERIES; k++) {
        char v[16];
        snprintf(v, sizeof v, "s%05d", k);
        const char *vals[] = {v};
        ck_assert_int_eq(metrics_counter_series(fz, vals, &c), 0);
    }
    const char *over[] = {"one-too-many"}, *old[] = {"s00001"};
    ck_assert_int_eq(metrics_counter_series(fz, over, &c), BD_ERR_TOOBIG);
    ck_assert_int_eq(metrics_counter_series(fz, old, &c), 0); /* existing still found */
    ck_assert_ptr_eq(c, h[1]);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_expose_cap)
{
    struct metrics *m = metrics_create();
    struct metrics_family *f;
    ck_assert_int_eq(metrics_counter_family(m, "t_cap_total", "C.", 1, (const char *[]){"i"}, &f),
                     0);
    for (int i = 0; i < 100; i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", i);
        struct metrics_counter *c;
        ck_assert_int_eq(metrics_counter_series(f, (const char *[]){v}, &c), 0);
    }
    struct util_buf b;
    util_buf_init(&b, 1000);
    ck_assert_int_eq(util_buf_append(&b, "prefix", 6), 0);
    ck_assert_int_eq(metrics_expose(m, &b), BD_ERR_TOOBIG);
    ck_assert_uint_eq(b.len, 6); /* untouched on error */
    ck_assert_str_eq(b.data, "prefix");
    util_buf_free(&b);
    util_buf_init(&b, 1 << 20);
    ck_assert_int_eq(metrics_expose(m, &b), 0);
    ck_assert(b.len > 1000);
    util_buf_free(&b);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_hot_path_no_alloc)
{
    struct metrics *m = metrics_create();
    struct metrics_family *fc, *fh;
    struct metrics_counter *c;
    struct metrics_hist *h;
    const double b[] = {1, 2, 3};
    ck_assert_int_eq(metrics_counter_family(m, "t_na_total", "N.", 0, NULL, &fc), 0);
    ck_assert_int_eq(metrics_hist_family(m, "t_na_seconds", "N.", 0, NULL, b, 3, &fh), 0);
    ck_assert_int_eq(metrics_counter_series(fc, NULL, &c), 0);
    ck_assert_int_eq(metrics_hist_series(fh, NULL, &h), 0);
    struct mallinfo2 before = mallinfo2();
    for (int i = 0; i < 100000; i++) {
        metrics_counter_add(c, 1);
        metrics_hist_observe(h, i % 5);
    }
    struct mallinfo2 after = mallinfo2();
    ck_assert_uint_eq(after.uordblks, before.uordblks);
    ck_assert_double_eq(metrics_counter_value(c), 100000);
    ck_assert_uint_eq(metrics_hist_count(h), 100000);
    ck_assert_double_eq(metrics_hist_sum(h), 100000.0 / 5 * (0 + 1 + 2 + 3 + 4));
    metrics_destroy(m);
}
END_TEST

static double cpu_clock_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

START_TEST(test_process_metrics)
{
    /* Open fds: 8 more descriptors are seen. */
    double fds0 = metrics_proc_open_fds();
    ck_assert(fds0 >= 0);
    int extra[8];
    for (int i = 0; i < 8; i++) {
        extra[i] = open("/dev/null", O_RDONLY);
        ck_assert_int_ge(extra[i], 0);
    }
    ck_assert_double_eq(metrics_proc_open_fds(), fds0 + 8);
    for (int i = 0; i < 8; i++)
        close(extra[i]);
    ck_assert_double_eq(metrics_proc_open_fds(), fds0);
    /* RSS grows when 64 MiB are touched. */
    double rss0 = metrics_proc_rss_bytes();
    ck_assert(rss0 > 0);
    size_t big = 64u << 20;
    char *mem = malloc(big);
    ck_assert_ptr_nonnull(mem);
    memset(mem, 1, big);
    __asm__ volatile("" : : "r"(mem) : "memory"); /* keep the stores: -O2 may drop them */
    double rss1 = metrics_proc_rss_bytes();
    ck_assert_msg(rss1 - rss0 > 0.9 * (double)big, "rss %g -> %g", rss0, rss1);
    ck_assert(metrics_proc_vsize_bytes() >= rss1);
    free(mem);
    /* CPU time grows with a busy loop: spin until the process CPU clock
     * (an independent reference) has advanced 100 ms. */
    double cpu0 = metrics_proc_cpu_seconds();
    double c0 = cpu_clock_s(), t0 = util_now_ms();
    volatile double x = 0;
    while (cpu_clock_s() - c0 < 0.1 && util_now_ms() - t0 < 20000)
        x += 1;
    ck_assert(x > 0);
    double dcpu = metrics_proc_cpu_seconds() - cpu0, dref = cpu_clock_s() - c0;
    ck_assert_msg(dref >= 0.1, "busy loop got only %g s of CPU", dref);
    ck_assert_msg(fabs(dcpu - dref) < 0.05, "cpu seconds grew %g, reference %g", dcpu, dref);
    /* The process started recently (this test binary), not in the future. */
    double st = metrics_proc_start_time_s(), now = util_wall_s();
    ck_assert_msg(st <= now + 1 && st > now - 600, "start %f now %f", st, now);
    ck_assert(metrics_proc_max_fds() >= 64);
    /* Registered as callback series, they appear in the exposition. */
    struct metrics *m = metrics_create();
    ck_assert_int_eq(metrics_process_register(m), 0);
    struct parsed ps;
    expose_parse(m, &ps);
    const char *names[] = {"process_cpu_seconds_total",
                           "process_open_fds",
                           "process_max_fds",
                           "process_resident_memory_bytes",
                           "process_virtual_memory_bytes",
                           "process_start_time_seconds"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        ck_assert_msg(find_sample(&ps, names[i], NULL) != NULL, "missing %s", names[i]);
    ck_assert_str_eq(ps.f[0].name, "process_cpu_seconds_total");
    ck_assert_str_eq(ps.f[0].type, "counter");
    parsed_free(&ps);
    metrics_destroy(m);
}
END_TEST

static double fixed_7(void *u)
{
    (void)u;
    return 7;
}
static double fixed_3(void *u)
{
    (void)u;
    return 3;
}

/* Fill every family of the catalogue with something. */
static struct metrics_banditd *populated_catalogue(struct metrics *m)
{
    const char *arms[] = {"cheap", "strong \"gpt\"\\4\n"};
    struct metrics_banditd *cat;
    ck_assert_int_eq(metrics_banditd_create(m, "0.1.0-test", arms, 2, &cat), 0);
    for (int r = 0; r < METRICS_ROUTE_COUNT; r++) {
        metrics_counter_inc(metrics_banditd_requests(cat, (enum metrics_route)r, -1, 200));
        metrics_hist_observe(metrics_banditd_request_duration(cat, (enum metrics_route)r),
                             0.001 * (r + 1));
    }
    metrics_counter_add(metrics_banditd_requests(cat, METRICS_ROUTE_CHAT, 0, 200), 5);
    metrics_counter_add(metrics_banditd_requests(cat, METRICS_ROUTE_CHAT, 1, 503), 2);
    metrics_counter_inc(metrics_banditd_requests(cat, METRICS_ROUTE_CHAT, 1, 429));
    for (size_t i = 0; i < metrics_banditd_n_arms(cat); i++) {
        const struct metrics_banditd_arm *a = metrics_banditd_arm(cat, i);
        metrics_hist_observe(a->upstream_duration, 0.8 + (double)i);
        metrics_hist_observe(a->upstream_ttfb, 0.2);
        metrics_counter_add(a->tokens_prompt, 1200);
        metrics_counter_add(a->tokens_completion, 300);
        metrics_counter_add(a->cost_usd, 0.0123);
        metrics_counter_inc(a->fallbacks);
        metrics_gauge_set(a->circuit_state, METRICS_CIRCUIT_HALF_OPEN);
        metrics_gauge_set(a->reward_mean, 0.75);
    }
    metrics_gauge_add(metrics_banditd_inflight(cat), 4);
    metrics_gauge_add(metrics_banditd_inflight(cat), -1);
    metrics_counter_add(metrics_banditd_feedback(cat, METRICS_FEEDBACK_RECEIVED, 0), 10);
    metrics_counter_add(metrics_banditd_feedback(cat, METRICS_FEEDBACK_APPLIED, 0), 7);
    metrics_counter_add(metrics_banditd_feedback(cat, METRICS_FEEDBACK_REJECTED, BD_ERR_EXISTS), 2);
    metrics_counter_inc(metrics_banditd_feedback(cat, METRICS_FEEDBACK_REJECTED, BD_ERR_EXPIRED));
    metrics_banditd_bind_decisions_pending(cat, fixed_7, NULL);
    metrics_banditd_bind_store_queue_depth(cat, fixed_3, NULL);
    return cat;
}

START_TEST(test_catalogue)
{
    struct metrics *m = metrics_create();
    struct metrics_banditd *cat = populated_catalogue(m);
    struct parsed ps;
    expose_parse(m, &ps);
    ck_assert_int_ge(check_histograms(&ps), METRICS_ROUTE_COUNT + 4);
    const char *fams[][2] = {
        {"banditd_requests_total", "counter"},
        {"banditd_request_duration_seconds", "histogram"},
        {"banditd_upstream_duration_seconds", "histogram"},
        {"banditd_upstream_ttfb_seconds", "histogram"},
        {"banditd_tokens_total", "counter"},
        {"banditd_cost_usd_total", "counter"},
        {"banditd_fallbacks_total", "counter"},
        {"banditd_circuit_state", "gauge"},
        {"banditd_inflight_requests", "gauge"},
        {"banditd_feedback_total", "counter"},
        {"banditd_reward_mean", "gauge"},
        {"banditd_decisions_pending", "gauge"},
        {"banditd_store_queue_depth", "gauge"},
        {"banditd_build_info", "gauge"},
        {"process_cpu_seconds_total", "counter"},
        {"process_open_fds", "gauge"},
        {"process_resident_memory_bytes", "gauge"},
        {"process_start_time_seconds", "gauge"},
    };
    for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++) {
        int found = 0;
        for (int k = 0; k < ps.nf; k++)
            if (strcmp(ps.f[k].name, fams[i][0]) == 0) {
                found = 1;
                ck_assert_str_eq(ps.f[k].type, fams[i][1]);
                ck_assert(ps.f[k].has_help);
            }
        ck_assert_msg(found, "family %s missing", fams[i][0]);
    }
    const char *q1[] = {"route", "chat_completions", "arm", "cheap", "status", "2xx", NULL};
    const char *q2[] = {"route", "chat_completions", "arm", "strong \"gpt\"\\4\n", "status", "5xx",
                        NULL};
    const char *q3[] = {"route", "chat_completions", "arm", "strong \"gpt\"\\4\n", "status", "4xx",
                        NULL};
    const char *q4[] = {"route", "feedback", "arm", "", "status", "2xx", NULL};
    const char *q5[] = {"route", "stats", "arm", "", "status", "3xx", NULL};
    ck_assert_double_eq(find_sample(&ps, "banditd_requests_total", q1)->value, 5);
    ck_assert_double_eq(find_sample(&ps, "banditd_requests_total", q2)->value, 2);
    ck_assert_double_eq(find_sample(&ps, "banditd_requests_total", q3)->value, 1);
    ck_assert_double_eq(find_sample(&ps, "banditd_requests_total", q4)->value, 1);
    ck_assert_double_eq(find_sample(&ps, "banditd_requests_total", q5)->value, 0); /* pre-made */
    const char *t1[] = {"arm", "cheap", "kind", "prompt", NULL};
    const char *t2[] = {"arm", "cheap", "kind", "completion", NULL};
    ck_assert_double_eq(find_sample(&ps, "banditd_tokens_total", t1)->value, 1200);
    ck_assert_double_eq(find_sample(&ps, "banditd_tokens_total", t2)->value, 300);
    const char *ac[] = {"arm", "cheap", NULL};
    ck_assert_double_eq(find_sample(&ps, "banditd_cost_usd_total", ac)->value, 0.0123);
    ck_assert_double_eq(find_sample(&ps, "banditd_circuit_state", ac)->value, 2);
    ck_assert_double_eq(find_sample(&ps, "banditd_reward_mean", ac)->value, 0.75);
    ck_assert_double_eq(find_sample(&ps, "banditd_inflight_requests", NULL)->value, 3);
    ck_assert_double_eq(find_sample(&ps, "banditd_decisions_pending", NULL)->value, 7);
    ck_assert_double_eq(find_sample(&ps, "banditd_store_queue_depth", NULL)->value, 3);
    const char *bi[] = {"version", "0.1.0-test", NULL};
    ck_assert_double_eq(find_sample(&ps, "banditd_build_info", bi)->value, 1);
    const char *f1[] = {"result", "received", "reason", "", NULL};
    const char *f2[] = {"result", "rejected", "reason", "duplicate", NULL};
    const char *f3[] = {"result", "rejected", "reason", "expired", NULL};
    const char *f4[] = {"result", "rejected", "reason", "unknown_id", NULL};
    ck_assert_double_eq(find_sample(&ps, "banditd_feedback_total", f1)->value, 10);
    ck_assert_double_eq(find_sample(&ps, "banditd_feedback_total", f2)->value, 2);
    ck_assert_double_eq(find_sample(&ps, "banditd_feedback_total", f3)->value, 1);
    ck_assert_double_eq(find_sample(&ps, "banditd_feedback_total", f4)->value, 0);
    const char *d1[] = {"route", "models", "le", "0.005", NULL};
    ck_assert_double_eq(find_sample(&ps, "banditd_request_duration_seconds_bucket", d1)->value,
                        1); /* 0.003 s */
    parsed_free(&ps);
    /* Out-of-range inputs map to the documented fallbacks. */
    ck_assert_ptr_eq(metrics_banditd_requests(cat, METRICS_ROUTE_CHAT, 99, 200),
                     metrics_banditd_requests(cat, METRICS_ROUTE_CHAT, -1, 200));
    ck_assert_ptr_eq(metrics_banditd_requests(cat, METRICS_ROUTE_MODELS, 0, 200),
                     metrics_banditd_requests(cat, METRICS_ROUTE_MODELS, -1, 250));
    ck_assert_ptr_eq(metrics_banditd_requests(cat, METRICS_ROUTE_OTHER, -1, 0),
                     metrics_banditd_requests(cat, METRICS_ROUTE_OTHER, -1, 101));
    ck_assert_ptr_eq(metrics_banditd_requests(cat, METRICS_ROUTE_OTHER, -1, 999),
                     metrics_banditd_requests(cat, METRICS_ROUTE_OTHER, -1, 500));
    ck_assert_ptr_null(metrics_banditd_requests(cat, METRICS_ROUTE_COUNT, -1, 200));
    ck_assert_ptr_eq(metrics_banditd_feedback(cat, METRICS_FEEDBACK_REJECTED, BD_ERR_IO),
                     metrics_banditd_feedback(cat, METRICS_FEEDBACK_REJECTED, BD_ERR_INTERNAL));
    ck_assert_ptr_null(metrics_banditd_arm(cat, 2));
    ck_assert_int_eq(metrics_banditd_arm_index(cat, "cheap"), 0);
    ck_assert_int_eq(metrics_banditd_arm_index(cat, "nope"), -1);
    /* A second catalogue in the same registry is refused. */
    struct metrics_banditd *cat2;
    ck_assert_int_eq(metrics_banditd_create(m, "x", NULL, 0, &cat2), BD_ERR_EXISTS);
    metrics_banditd_destroy(cat);
    metrics_destroy(m);
}
END_TEST

START_TEST(test_catalogue_reload)
{
    struct metrics *m = metrics_create();
    const char *arms[] = {"a"};
    struct metrics_banditd *cat;
    ck_assert_int_eq(metrics_banditd_create(m, "v", arms, 1, &cat), 0);
    const struct metrics_banditd_arm *a0 = metrics_banditd_arm(cat, 0);
    metrics_counter_add(a0->cost_usd, 1.5);
    /* Add arms after start; the old handles stay valid. */
    size_t idx;
    for (int i = 0; i < 40; i++) {
        char name[16];
        snprintf(name, sizeof name, "late%02d", i);
        ck_assert_int_eq(metrics_banditd_add_arm(cat, name, &idx), 0);
        ck_assert_uint_eq(idx, (size_t)i + 1);
    }
    ck_assert_int_eq(metrics_banditd_add_arm(cat, "late07", &idx), 0); /* idempotent */
    ck_assert_uint_eq(idx, 8);
    ck_assert_int_eq(metrics_banditd_add_arm(cat, "", &idx), BD_ERR_INVALID);
    ck_assert_uint_eq(metrics_banditd_n_arms(cat), 41);
    ck_assert_ptr_eq(metrics_banditd_arm(cat, 0), a0);
    metrics_counter_add(a0->cost_usd, 1.0);
    metrics_counter_add(metrics_banditd_arm(cat, 40)->cost_usd, 0.25);
    metrics_counter_inc(metrics_banditd_requests(cat, METRICS_ROUTE_CHAT, 40, 200));
    struct parsed ps;
    expose_parse(m, &ps);
    check_histograms(&ps);
    const char *pa[] = {"arm", "a", NULL}, *pl[] = {"arm", "late39", NULL};
    ck_assert_double_eq(find_sample(&ps, "banditd_cost_usd_total", pa)->value, 2.5);
    ck_assert_double_eq(find_sample(&ps, "banditd_cost_usd_total", pl)->value, 0.25);
    const char *rq[] = {"route", "chat_completions", "arm", "late39", "status", "2xx", NULL};
    ck_assert_double_eq(find_sample(&ps, "banditd_requests_total", rq)->value, 1);
    ck_assert_int_eq(count_samples(&ps, "banditd_cost_usd_total"), 41);
    parsed_free(&ps);
    metrics_banditd_destroy(cat);
    metrics_destroy(m);
}
END_TEST

/* Run the exposition of a fully populated catalogue, plus nasty labels,
 * through tests/e2e/check_metrics.sh (promtool, strict: lint warnings fail). */
START_TEST(test_promtool)
{
    const char *srcdir = getenv("BANDITD_SRCDIR");
    char helper[1024];
    snprintf(helper, sizeof helper, "%s/tests/e2e/check_metrics.sh", srcdir ? srcdir : ".");
    if (access(helper, X_OK) != 0 || system("command -v promtool >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test_promtool: SKIPPED (promtool or %s missing)\n", helper);
        return;
    }
    struct metrics *m = metrics_create();
    struct metrics_banditd *cat = populated_catalogue(m);
    struct metrics_family *f;
    const char *ln[] = {"v"};
    ck_assert_int_eq(
        metrics_gauge_family(m, "zz_nasty_labels", "Escapes: \\ and\nnewline.", 1, ln, &f), 0);
    const char *vals[] = {"a\\b", "q\"q", "n\nn", "caf\xc3\xa9", ""};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        struct metrics_gauge *g;
        ck_assert_int_eq(metrics_gauge_series(f, &vals[i], &g), 0);
        metrics_gauge_set(g, i == 0 ? -INFINITY : (double)i * 1e-7);
    }
    char *text = expose_str(m);
    char path[] = "/tmp/test_metrics_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    size_t len = strlen(text);
    ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "'%s' '%s'", helper, path);
    int st = system(cmd);
    unlink(path);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "promtool check metrics rejected the exposition (status %d)", st);
    /* The helper does fail on bad input (so this test can fail). */
    char bad[] = "/tmp/test_metrics_bad_XXXXXX";
    fd = mkstemp(bad);
    ck_assert_int_ge(fd, 0);
    const char *badtext = "# TYPE x_count counter\nx_count{a=\"unterminated} 1\n";
    ck_assert_int_eq(write(fd, badtext, strlen(badtext)), (ssize_t)strlen(badtext));
    close(fd);
    snprintf(cmd, sizeof cmd, "'%s' '%s' 2>/dev/null", helper, bad);
    st = system(cmd);
    unlink(bad);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    free(text);
    metrics_banditd_destroy(cat);
    metrics_destroy(m);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_counter_exposition);
    tcase_add_test(tc, test_gauge_exposition);
    tcase_add_test(tc, test_histogram_exposition);
    tcase_add_test(tc, test_histogram_boundaries);
    tcase_add_test(tc, test_escaping);
    tcase_add_test(tc, test_naming_rules);
    tcase_add_test(tc, test_counter_monotone);
    tcase_add_test(tc, test_callback_gauges);
    tcase_add_test(tc, test_order_and_many_series);
    tcase_add_test(tc, test_expose_cap);
    tcase_add_test(tc, test_hot_path_no_alloc);
    tcase_add_test(tc, test_process_metrics);
    tcase_add_test(tc, test_catalogue);
    tcase_add_test(tc, test_catalogue_reload);
    tcase_add_test(tc, test_promtool);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
