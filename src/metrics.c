/* metrics — Prometheus registry, text exposition 0.0.4, process metrics and
 * the banditd catalogue. Single-threaded by contract (see metrics.h). */
#include "banditd/metrics.h"
#include "banditd/err.h"

#include <assert.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

/* One series. The public handle types are this struct under another name:
 * a handle is converted back to `struct series *` before any access. */
struct series {
    struct metrics_family *fam;
    const char *values[METRICS_MAX_LABELS]; /* raw values, point into vbuf */
    char *vbuf;                             /* the raw values, NUL-separated */
    char *labels; /* rendered label pairs without braces: a="x",b="y" ("" if none) */
    size_t labels_len;
    int is_fn; /* callback series */
    metrics_value_fn fn;
    void *user;
    double value; /* counter, gauge */
    double sum;   /* histogram */
    uint64_t count;
    uint64_t buckets[]; /* histogram: n_bounds + 1 non-cumulative counts (last = +Inf) */
};

struct metrics_family {
    struct metrics *reg;
    enum metrics_type type;
    char *name;
    char *help; /* escaped for # HELP */
    size_t n_labels;
    char *label_names[METRICS_MAX_LABELS];
    size_t n_bounds;
    double bounds[METRICS_MAX_BUCKETS];
    char le[METRICS_MAX_BUCKETS + 1][32]; /* rendered bounds, last "+Inf" */
    struct series **series;               /* sorted by values */
    size_t n_series, cap_series;
};

struct metrics {
    struct metrics_family **fams; /* sorted by name */
    size_t n_fams, cap_fams;
};

/* ---- small helpers ----------------------------------------------------- */

static int valid_name(const char *s)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        int digit = c >= '0' && c <= '9';
        if (!alpha && !(digit && p != s))
            return 0;
    }
    return 1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && memcmp(s + ls - lx, suffix, lx) == 0;
}

/* Strict UTF-8 validation (no overlongs, no surrogates, <= U+10FFFF). */
static int valid_utf8(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned c = *s;
        size_t n;
        unsigned min;
        if (c < 0x80) {
            s++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1, min = 0x80, c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, min = 0x800, c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((s[i] & 0xC0) != 0x80)
                return 0;
            c = (c << 6) | (s[i] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return 0;
        s += n + 1;
    }
    return 1;
}

/* Decimal digits of u into out (at least 21 bytes). */
static void fmt_u64(char *out, uint64_t u)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
}

/* The shortest %g spelling (at least 6 significant digits, so that 10 is "10"
 * and not "1e+01", as Go's FormatFloat(v, 'g', -1) does) that reads back as
 * exactly v; Prometheus spellings for the non-finite values. */
static void fmt_double(char out[32], double v)
{
    if (isnan(v)) {
        strcpy(out, "NaN");
        return;
    }
    if (isinf(v)) {
        strcpy(out, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) { /* integral: the common case, no printf */
        fmt_u64(out + (v < 0), (uint64_t)fabs(v));
        if (v < 0)
            out[0] = '-';
        return;
    }
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* Append s to b with the escapes of the text format: backslash and newline
 * always, the double quote too when quote is set (label values). */
static int append_escaped(struct util_buf *b, const char *s, int quote)
{
    const char *run = s;
    for (const char *p = s;; p++) {
        const char *esc = NULL;
        if (*p == '\\')
            esc = "\\\\";
        else if (*p == '\n')
            esc = "\\n";
        else if (*p == '"' && quote)
            esc = "\\\"";
        else if (*p != '\0')
            continue;
        int rc = util_buf_append(b, run, (size_t)(p - run));
        if (rc)
            return rc;
        if (!esc)
            return BD_OK;
        if ((rc = util_buf_append(b, esc, 2)))
            return rc;
        run = p + 1;
    }
}

static int append_str(struct util_buf *b, const char *s)
{
    return util_buf_append(b, s, strlen(s));
}

/* ---- registry ------------------------------------------------------------ */

struct metrics *metrics_create(void)
{
    return calloc(1, sizeof(struct metrics));
}

static void series_free(struct series *s)
{
    if (!s)
        return;
    free(s->vbuf);
    free(s->labels);
    free(s);
}

static void family_free(struct metrics_family *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_series; i++)
        series_free(f->series[i]);
    free(f->series);
    for (size_t i = 0; i < f->n_labels; i++)
        free(f->label_names[i]);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_destroy(struct metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_fams; i++)
        family_free(m->fams[i]);
    free(m->fams);
    free(m);
}

/* Index of the first family whose name is >= name; *found when equal. */
static size_t family_pos(const struct metrics *m, const char *name, int *found)
{
    size_t lo = 0, hi = m->n_fams;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(m->fams[mid]->name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < m->n_fams && strcmp(m->fams[lo]->name, name) == 0;
    return lo;
}

struct metrics_family *metrics_family_find(const struct metrics *m, const char *name)
{
    int found;
    if (!m || !name)
        return NULL;
    size_t i = family_pos(m, name, &found);
    return found ? m->fams[i] : NULL;
}

static int family_create(struct metrics *m, enum metrics_type type, const char *name,
                         const char *help, size_t n_labels, const char *const *label_names,
                         const double *bounds, size_t n_bounds, struct metrics_family **out)
{
    assert(m && out);
    *out = NULL;
    if (!valid_name(name) || !help || !*help || !valid_utf8(help) ||
        n_labels > METRICS_MAX_LABELS || (n_labels && !label_names))
        return BD_ERR_INVALID;
    if ((type == METRICS_COUNTER) != ends_with(name, "_total"))
        return BD_ERR_INVALID;
    if (ends_with(name, "_bucket") || ends_with(name, "_sum") || ends_with(name, "_count"))
        return BD_ERR_INVALID;
    for (size_t i = 0; i < n_labels; i++) {
        const char *ln = label_names[i];
        if (!valid_name(ln) || strncmp(ln, "__", 2) == 0)
            return BD_ERR_INVALID;
        if (type == METRICS_HISTOGRAM && strcmp(ln, "le") == 0)
            return BD_ERR_INVALID;
        for (size_t j = 0; j < i; j++)
            if (strcmp(ln, label_names[j]) == 0)
                return BD_ERR_INVALID;
    }
    if (type == METRICS_HISTOGRAM) {
        if (!bounds || n_bounds < 1 || n_bounds > METRICS_MAX_BUCKETS)
            return BD_ERR_INVALID;
        for (size_t i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
                return BD_ERR_INVALID;
    }
    int found;
    size_t pos = family_pos(m, name, &found);
    if (found) {
        if (m->fams[pos]->type == type)
            *out = m->fams[pos];
        return BD_ERR_EXISTS;
    }
    if (m->n_fams == m->cap_fams) {
        size_t cap = m->cap_fams ? 2 * m->cap_fams : 16;
        struct metrics_family **p = realloc(m->fams, cap * sizeof *p);
        if (!p)
            return BD_ERR_NOMEM;
        m->fams = p;
        m->cap_fams = cap;
    }
    struct metrics_family *f = calloc(1, sizeof *f);
    if (!f)
        return BD_ERR_NOMEM;
    f->reg = m;
    f->type = type;
    f->name = strdup(name);
    /* Escape help once; HELP escapes backslash and newline only. */
    struct util_buf hb;
    util_buf_init(&hb, 64 * 1024);
    int rc = append_escaped(&hb, help, 0);
    f->help = hb.data;
    if (rc || !f->name || !f->help) {
        family_free(f);
        return rc ? rc : BD_ERR_NOMEM;
    }
    for (size_t i = 0; i < n_labels; i++) {
        f->label_names[i] = strdup(label_names[i]);
        f->n_labels = i + 1;
        if (!f->label_names[i]) {
            family_free(f);
            return BD_ERR_NOMEM;
        }
    }
    if (type == METRICS_HISTOGRAM) {
        f->n_bounds = n_bounds;
        for (size_t i = 0; i < n_bounds; i++) {
            f->bounds[i] = bounds[i];
            fmt_double(f->le[i], bounds[i]);
        }
        strcpy(f->le[n_bounds], "+Inf");
    }
    memmove(m->fams + pos + 1, m->fams + pos, (m->n_fams - pos) * sizeof *m->fams);
    m->fams[pos] = f;
    m->n_fams++;
    *out = f;
    return BD_OK;
}

int metrics_counter_family(struct metrics *m, const char *name, const char *help, size_t n_labels,
                           const char *const *label_names, struct metrics_family **out)
{
    return family_create(m, METRICS_COUNTER, name, help, n_labels, label_names, NULL, 0, out);
}

int metrics_gauge_family(struct metrics *m, const char *name, const char *help, size_t n_labels,
                         const char *const *label_names, struct metrics_family **out)
{
    return family_create(m, METRICS_GAUGE, name, help, n_labels, label_names, NULL, 0, out);
}

int metrics_hist_family(struct metrics *m, const char *name, const char *help, size_t n_labels,
                        const char *const *label_names, const double *bounds, size_t n_bounds,
                        struct metrics_family **out)
{
    return family_create(m, METRICS_HISTOGRAM, name, help, n_labels, label_names, bounds, n_bounds,
                         out);
}

/* ---- series -------------------------------------------------------------- */

static int values_cmp(const struct metrics_family *f, const char *const *a, const char *const *b)
{
    for (size_t i = 0; i < f->n_labels; i++) {
        int c = strcmp(a[i], b[i]);
        if (c)
            return c;
    }
    return 0;
}

static size_t series_pos(const struct metrics_family *f, const char *const *values, int *found)
{
    size_t lo = 0, hi = f->n_series;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (values_cmp(f, f->series[mid]->values, values) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < f->n_series && values_cmp(f, f->series[lo]->values, values) == 0;
    return lo;
}

/* Find or create. *created tells which. */
static int series_get(struct metrics_family *f, const char *const *values, struct series **out,
                      int *created)
{
    *out = NULL;
    *created = 0;
    if (f->n_labels && !values)
        return BD_ERR_INVALID;
    size_t total = 0;
    for (size_t i = 0; i < f->n_labels; i++) {
        if (!values[i])
            return BD_ERR_INVALID;
        size_t len = strlen(values[i]);
        if (len > METRICS_MAX_VALUE_LEN || !valid_utf8(values[i]))
            return BD_ERR_INVALID;
        total += len + 1;
    }
    int found;
    size_t pos = series_pos(f, values, &found);
    if (found) {
        *out = f->series[pos];
        return BD_OK;
    }
    if (f->n_series >= METRICS_MAX_SERIES)
        return BD_ERR_TOOBIG;
    if (f->n_series == f->cap_series) {
        size_t cap = f->cap_series ? 2 * f->cap_series : 8;
        struct series **p = realloc(f->series, cap * sizeof *p);
        if (!p)
            return BD_ERR_NOMEM;
        f->series = p;
        f->cap_series = cap;
    }
    size_t nb = f->type == METRICS_HISTOGRAM ? f->n_bounds + 1 : 0;
    struct series *s = calloc(1, sizeof *s + nb * sizeof(uint64_t));
    if (!s)
        return BD_ERR_NOMEM;
    s->fam = f;
    s->vbuf = malloc(total + 1);
    struct util_buf lb;
    util_buf_init(&lb, (size_t)1 << 20);
    int rc = util_buf_append(&lb, "", 0); /* "" even with no labels */
    if (!s->vbuf) {
        util_buf_free(&lb);
        series_free(s);
        return BD_ERR_NOMEM;
    }
    char *w = s->vbuf;
    for (size_t i = 0; i < f->n_labels && !rc; i++) {
        size_t len = strlen(values[i]);
        memcpy(w, values[i], len + 1);
        s->values[i] = w;
        w += len + 1;
        if (i > 0)
            rc = util_buf_append(&lb, ",", 1);
        if (!rc)
            rc = append_str(&lb, f->label_names[i]);
        if (!rc)
            rc = util_buf_append(&lb, "=\"", 2);
        if (!rc)
            rc = append_escaped(&lb, values[i], 1);
        if (!rc)
            rc = util_buf_append(&lb, "\"", 1);
    }
    s->labels = lb.data;
    s->labels_len = lb.len;
    if (rc) {
        series_free(s);
        return rc;
    }
    memmove(f->series + pos + 1, f->series + pos, (f->n_series - pos) * sizeof *f->series);
    f->series[pos] = s;
    f->n_series++;
    *out = s;
    *created = 1;
    return BD_OK;
}

static int value_series(struct metrics_family *f, enum metrics_type type, const char *const *values,
                        struct series **out)
{
    int created;
    *out = NULL;
    if (!f || f->type != type)
        return BD_ERR_INVALID;
    struct series *s;
    int rc = series_get(f, values, &s, &created);
    if (rc)
        return rc;
    if (s->is_fn)
        return BD_ERR_EXISTS;
    *out = s;
    return BD_OK;
}

int metrics_counter_series(struct metrics_family *f, const char *const *values,
                           struct metrics_counter **out)
{
    struct series *s;
    int rc = value_series(f, METRICS_COUNTER, values, &s);
    *out = (struct metrics_counter *)s;
    return rc;
}

int metrics_gauge_series(struct metrics_family *f, const char *const *values,
                         struct metrics_gauge **out)
{
    struct series *s;
    int rc = value_series(f, METRICS_GAUGE, values, &s);
    *out = (struct metrics_gauge *)s;
    return rc;
}

int metrics_hist_series(struct metrics_family *f, const char *const *values,
                        struct metrics_hist **out)
{
    struct series *s;
    int rc = value_series(f, METRICS_HISTOGRAM, values, &s);
    *out = (struct metrics_hist *)s;
    return rc;
}

int metrics_fn_series(struct metrics_family *f, const char *const *values, metrics_value_fn fn,
                      void *user)
{
    if (!f || f->type == METRICS_HISTOGRAM)
        return BD_ERR_INVALID;
    struct series *s;
    int created;
    int rc = series_get(f, values, &s, &created);
    if (rc)
        return rc;
    if (!created && !s->is_fn)
        return BD_ERR_EXISTS;
    s->is_fn = 1;
    s->fn = fn;
    s->user = user;
    return BD_OK;
}

int metrics_gauge_callback(struct metrics *m, const char *name, const char *help,
                           metrics_value_fn fn, void *user)
{
    struct metrics_family *f;
    int rc = metrics_gauge_family(m, name, help, 0, NULL, &f);
    if (rc)
        return rc;
    return metrics_fn_series(f, NULL, fn, user);
}

/* ---- hot path ---------------------------------------------------------- */

void metrics_counter_add(struct metrics_counter *c, double v)
{
    struct series *s = (struct series *)c;
    if (!s)
        return;
    assert(s->fam->type == METRICS_COUNTER && !s->is_fn);
    if (v >= 0) /* false for NaN too */
        s->value += v;
}

void metrics_counter_inc(struct metrics_counter *c)
{
    metrics_counter_add(c, 1.0);
}

void metrics_gauge_set(struct metrics_gauge *g, double v)
{
    struct series *s = (struct series *)g;
    if (!s)
        return;
    assert(s->fam->type == METRICS_GAUGE && !s->is_fn);
    s->value = v;
}

void metrics_gauge_add(struct metrics_gauge *g, double v)
{
    struct series *s = (struct series *)g;
    if (!s)
        return;
    assert(s->fam->type == METRICS_GAUGE && !s->is_fn);
    s->value += v;
}

void metrics_hist_observe(struct metrics_hist *h, double v)
{
    struct series *s = (struct series *)h;
    if (!s || isnan(v))
        return;
    const struct metrics_family *f = s->fam;
    assert(f->type == METRICS_HISTOGRAM);
    /* Index of the first bound >= v (le is inclusive), n_bounds for +Inf:
     * the number of bounds below v. A branch-free count over <= 16 bounds
     * beats a binary search, whose branches mispredict on varied values. */
    size_t idx = 0;
    for (size_t i = 0; i < f->n_bounds; i++)
        idx += v > f->bounds[i];
    s->buckets[idx]++;
    s->count++;
    s->sum += v;
}

double metrics_counter_value(const struct metrics_counter *c)
{
    const struct series *s = (const struct series *)c;
    return s ? s->value : 0.0;
}

double metrics_gauge_value(const struct metrics_gauge *g)
{
    const struct series *s = (const struct series *)g;
    return s ? s->value : 0.0;
}

uint64_t metrics_hist_count(const struct metrics_hist *h)
{
    const struct series *s = (const struct series *)h;
    return s ? s->count : 0;
}

double metrics_hist_sum(const struct metrics_hist *h)
{
    const struct series *s = (const struct series *)h;
    return s ? s->sum : 0.0;
}

/* ---- exposition -------------------------------------------------------- */

static const char *type_name(enum metrics_type t)
{
    switch (t) {
    case METRICS_COUNTER:
        return "counter";
    case METRICS_GAUGE:
        return "gauge";
    case METRICS_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

static int write_header(struct util_buf *b, const struct metrics_family *f)
{
    int rc = util_buf_printf(b, "# HELP %s ", f->name);
    if (!rc)
        rc = append_str(b, f->help); /* help may exceed printf's fast path */
    if (!rc)
        rc = util_buf_printf(b, "\n# TYPE %s %s\n", f->name, type_name(f->type));
    return rc;
}

/* name[suffix]{labels[,le="…"]} value\n */
static int write_sample(struct util_buf *b, const struct metrics_family *f, const char *suffix,
                        const struct series *s, const char *le, const char *value)
{
    int rc = append_str(b, f->name);
    if (!rc && suffix)
        rc = append_str(b, suffix);
    if (!rc && (s->labels_len || le)) {
        rc = util_buf_append(b, "{", 1);
        if (!rc)
            rc = util_buf_append(b, s->labels, s->labels_len);
        if (!rc && le) {
            if (s->labels_len)
                rc = util_buf_append(b, ",", 1);
            if (!rc)
                rc = util_buf_append(b, "le=\"", 4);
            if (!rc)
                rc = append_str(b, le);
            if (!rc)
                rc = util_buf_append(b, "\"", 1);
        }
        if (!rc)
            rc = util_buf_append(b, "}", 1);
    }
    if (!rc)
        rc = util_buf_append(b, " ", 1);
    if (!rc)
        rc = append_str(b, value);
    if (!rc)
        rc = util_buf_append(b, "\n", 1);
    return rc;
}

static int write_family(struct util_buf *b, const struct metrics_family *f)
{
    int rc = BD_OK, header = 0;
    char num[32];
    for (size_t i = 0; i < f->n_series && !rc; i++) {
        const struct series *s = f->series[i];
        double v = s->value;
        if (s->is_fn) {
            if (!s->fn)
                continue;
            v = s->fn(s->user);
            if (isnan(v))
                continue;
        }
        if (!header) {
            if ((rc = write_header(b, f)))
                break;
            header = 1;
        }
        if (f->type != METRICS_HISTOGRAM) {
            fmt_double(num, v);
            rc = write_sample(b, f, NULL, s, NULL, num);
            continue;
        }
        uint64_t cum = 0;
        for (size_t k = 0; k <= f->n_bounds && !rc; k++) {
            cum += s->buckets[k];
            fmt_u64(num, cum);
            rc = write_sample(b, f, "_bucket", s, f->le[k], num);
        }
        assert(rc || cum == s->count);
        fmt_double(num, s->sum);
        if (!rc)
            rc = write_sample(b, f, "_sum", s, NULL, num);
        fmt_u64(num, s->count);
        if (!rc)
            rc = write_sample(b, f, "_count", s, NULL, num);
    }
    return rc;
}

int metrics_expose(struct metrics *m, struct util_buf *out)
{
    assert(m && out);
    size_t start = out->len;
    int rc = BD_OK;
    for (size_t i = 0; i < m->n_fams && !rc; i++)
        rc = write_family(out, m->fams[i]);
    if (rc) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    return rc;
}

/* ---- process metrics --------------------------------------------------- */

static int read_statm(double *size_pages, double *rss_pages)
{
    FILE *fp = fopen("/proc/self/statm", "r");
    if (!fp)
        return BD_ERR_IO;
    unsigned long long size, rss;
    int n = fscanf(fp, "%llu %llu", &size, &rss);
    fclose(fp);
    if (n != 2)
        return BD_ERR_IO;
    *size_pages = (double)size;
    *rss_pages = (double)rss;
    return BD_OK;
}

double metrics_proc_rss_bytes(void)
{
    double size, rss;
    if (read_statm(&size, &rss))
        return NAN;
    return rss * (double)sysconf(_SC_PAGESIZE);
}

double metrics_proc_vsize_bytes(void)
{
    double size, rss;
    if (read_statm(&size, &rss))
        return NAN;
    return size * (double)sysconf(_SC_PAGESIZE);
}

double metrics_proc_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return NAN;
    int own = dirfd(d);
    double n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (atoi(e->d_name) == own)
            continue;
        n++;
    }
    closedir(d);
    return n;
}

double metrics_proc_max_fds(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return NAN;
    return rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur;
}

double metrics_proc_cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return NAN;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

double metrics_proc_start_time_s(void)
{
    /* starttime (field 22 of /proc/self/stat, clock ticks after boot) plus
     * btime from /proc/stat. comm (field 2) may hold spaces and ')', so
     * parse after the last ')'. */
    char buf[1024];
    FILE *fp = fopen("/proc/self/stat", "r");
    if (!fp)
        return NAN;
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return NAN;
    p++;
    unsigned long long start = 0;
    /* After ')' come fields 3.. (state is field 3); starttime is field 22. */
    int field = 2;
    char *save = NULL;
    for (char *tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        if (++field == 22) {
            start = strtoull(tok, NULL, 10);
            break;
        }
    }
    if (field != 22)
        return NAN;
    fp = fopen("/proc/stat", "r");
    if (!fp)
        return NAN;
    unsigned long long btime = 0;
    int got = 0;
    while (fgets(buf, sizeof buf, fp))
        if (sscanf(buf, "btime %llu", &btime) == 1) {
            got = 1;
            break;
        }
    fclose(fp);
    long hz = sysconf(_SC_CLK_TCK);
    if (!got || hz <= 0)
        return NAN;
    return (double)btime + (double)start / (double)hz;
}

static double cb_rss(void *u)
{
    (void)u;
    return metrics_proc_rss_bytes();
}
static double cb_vsize(void *u)
{
    (void)u;
    return metrics_proc_vsize_bytes();
}
static double cb_fds(void *u)
{
    (void)u;
    return metrics_proc_open_fds();
}
static double cb_max_fds(void *u)
{
    (void)u;
    return metrics_proc_max_fds();
}
static double cb_cpu(void *u)
{
    (void)u;
    return metrics_proc_cpu_seconds();
}
static double cb_start(void *u)
{
    /* Constant for the process; /proc/stat is slow to read, so read once. */
    static double cached = NAN;
    (void)u;
    if (isnan(cached))
        cached = metrics_proc_start_time_s();
    return cached;
}

int metrics_process_register(struct metrics *m)
{
    struct metrics_family *f;
    int rc =
        metrics_counter_family(m, "process_cpu_seconds_total",
                               "Total user and system CPU time spent in seconds.", 0, NULL, &f);
    if (!rc)
        rc = metrics_fn_series(f, NULL, cb_cpu, NULL);
    if (!rc)
        rc = metrics_gauge_callback(m, "process_open_fds", "Number of open file descriptors.",
                                    cb_fds, NULL);
    if (!rc)
        rc = metrics_gauge_callback(m, "process_max_fds",
                                    "Maximum number of open file descriptors.", cb_max_fds, NULL);
    if (!rc)
        rc = metrics_gauge_callback(m, "process_resident_memory_bytes",
                                    "Resident memory size in bytes.", cb_rss, NULL);
    if (!rc)
        rc = metrics_gauge_callback(m, "process_virtual_memory_bytes",
                                    "Virtual memory size in bytes.", cb_vsize, NULL);
    if (!rc)
        rc = metrics_gauge_callback(m, "process_start_time_seconds",
                                    "Start time of the process since unix epoch in seconds.",
                                    cb_start, NULL);
    return rc;
}

/* ---- banditd catalogue -------------------------------------------------- */

#define N_CLASSES 5 /* 1xx..5xx */
#define N_REASONS 6

static const char *const route_names[METRICS_ROUTE_COUNT] = {
    "chat_completions", "feedback", "models", "healthz", "readyz", "metrics", "stats", "other",
};
static const char *const class_names[N_CLASSES] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
static const char *const reason_names[N_REASONS] = {"invalid",   "unknown_id",   "expired",
                                                    "duplicate", "unauthorized", "other"};

/* Request duration buckets (seconds): fast local routes up to long streams. */
static const double request_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5,   1,      2.5,   5,    10,    30,   60,  120};
static const double ttfb_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

struct cat_arm {
    struct metrics_banditd_arm h;
    char *name;
    struct metrics_counter *requests[N_CLASSES]; /* route chat_completions */
};

struct metrics_banditd {
    struct metrics *reg;
    struct metrics_family *f_requests, *f_req_dur, *f_up_dur, *f_ttfb, *f_tokens, *f_cost,
        *f_fallbacks, *f_circuit, *f_feedback, *f_reward, *f_pending, *f_queue;
    /* requests with arm="" per route and class */
    struct metrics_counter *req_noarm[METRICS_ROUTE_COUNT][N_CLASSES];
    struct metrics_hist *req_dur[METRICS_ROUTE_COUNT];
    struct metrics_counter *fb_received, *fb_applied, *fb_rejected[N_REASONS];
    struct metrics_gauge *inflight;
    struct cat_arm **arms;
    size_t n_arms, cap_arms;
};

const char *metrics_route_name(enum metrics_route route)
{
    return (unsigned)route < METRICS_ROUTE_COUNT ? route_names[route] : NULL;
}

static int class_index(int status)
{
    int c = status / 100;
    if (c < 1)
        c = 1;
    if (c > 5)
        c = 5;
    return c - 1;
}

static int reason_index(int err)
{
    switch (err) {
    case BD_ERR_INVALID:
        return 0;
    case BD_ERR_NOTFOUND:
        return 1;
    case BD_ERR_EXPIRED:
        return 2;
    case BD_ERR_EXISTS:
        return 3;
    case BD_ERR_AUTH:
    case BD_ERR_FORBIDDEN:
        return 4;
    default:
        return 5;
    }
}

int metrics_banditd_create(struct metrics *reg, const char *version, const char *const *arms,
                           size_t n_arms, struct metrics_banditd **out)
{
    assert(reg && out);
    *out = NULL;
    if (!version || !*version || (n_arms && !arms))
        return BD_ERR_INVALID;
    for (size_t i = 0; i < n_arms; i++)
        if (!arms[i] || !*arms[i])
            return BD_ERR_INVALID;
    struct metrics_banditd *c = calloc(1, sizeof *c);
    if (!c)
        return BD_ERR_NOMEM;
    c->reg = reg;
    const char *l_req[] = {"route", "arm", "status"};
    const char *l_route[] = {"route"};
    const char *l_arm[] = {"arm"};
    const char *l_tokens[] = {"arm", "kind"};
    const char *l_fb[] = {"result", "reason"};
    const char *l_ver[] = {"version"};
    size_t nrb = sizeof request_bounds / sizeof request_bounds[0];
    size_t ntb = sizeof ttfb_bounds / sizeof ttfb_bounds[0];
    struct metrics_family *f_info = NULL, *f_inflight = NULL;
    struct metrics_gauge *info = NULL;
    int rc = metrics_counter_family(reg, "banditd_requests_total",
                                    "HTTP requests answered, by route, arm and status class.", 3,
                                    l_req, &c->f_requests);
    if (!rc)
        rc = metrics_hist_family(reg, "banditd_request_duration_seconds",
                                 "Time from request received to response complete, by route.", 1,
                                 l_route, request_bounds, nrb, &c->f_req_dur);
    if (!rc)
        rc = metrics_hist_family(reg, "banditd_upstream_duration_seconds",
                                 "Time of one upstream call to its last byte, by arm.", 1, l_arm,
                                 request_bounds, nrb, &c->f_up_dur);
    if (!rc)
        rc = metrics_hist_family(reg, "banditd_upstream_ttfb_seconds",
                                 "Time to the first byte of a streamed upstream answer, by arm.", 1,
                                 l_arm, ttfb_bounds, ntb, &c->f_ttfb);
    if (!rc)
        rc = metrics_counter_family(reg, "banditd_tokens_total",
                                    "Tokens reported by upstream usage, by arm and kind.", 2,
                                    l_tokens, &c->f_tokens);
    if (!rc)
        rc = metrics_counter_family(reg, "banditd_cost_usd_total",
                                    "Upstream cost in US dollars (estimated when usage is "
                                    "absent), by arm.",
                                    1, l_arm, &c->f_cost);
    if (!rc)
        rc = metrics_counter_family(reg, "banditd_fallbacks_total",
                                    "Upstream calls that failed over to another arm, by the "
                                    "failing arm.",
                                    1, l_arm, &c->f_fallbacks);
    if (!rc)
        rc = metrics_gauge_family(reg, "banditd_circuit_state",
                                  "Circuit breaker state by arm: 0 closed, 1 open, 2 half-open.", 1,
                                  l_arm, &c->f_circuit);
    if (!rc)
        rc = metrics_gauge_family(reg, "banditd_inflight_requests",
                                  "Requests received and not yet answered.", 0, NULL, &f_inflight);
    if (!rc)
        rc = metrics_gauge_series(f_inflight, NULL, &c->inflight);
    if (!rc)
        rc = metrics_counter_family(reg, "banditd_feedback_total",
                                    "Feedback items by result (received, applied, rejected) "
                                    "and rejection reason.",
                                    2, l_fb, &c->f_feedback);
    if (!rc)
        rc = metrics_gauge_family(reg, "banditd_reward_mean",
                                  "Mean reward of the feedback applied to each arm.", 1, l_arm,
                                  &c->f_reward);
    if (!rc)
        rc = metrics_gauge_family(reg, "banditd_decisions_pending",
                                  "Routing decisions awaiting feedback.", 0, NULL, &c->f_pending);
    if (!rc)
        rc = metrics_fn_series(c->f_pending, NULL, NULL, NULL);
    if (!rc)
        rc = metrics_gauge_family(reg, "banditd_store_queue_depth",
                                  "Writes queued for the persistent store.", 0, NULL, &c->f_queue);
    if (!rc)
        rc = metrics_fn_series(c->f_queue, NULL, NULL, NULL);
    if (!rc)
        rc = metrics_gauge_family(reg, "banditd_build_info",
                                  "Build information; the value is always 1.", 1, l_ver, &f_info);
    if (!rc)
        rc = metrics_gauge_series(f_info, &version, &info);
    metrics_gauge_set(info, 1);
    if (!rc)
        rc = metrics_process_register(reg);
    /* The arm-less series: every route and status class, and route durations. */
    for (int r = 0; r < METRICS_ROUTE_COUNT && !rc; r++) {
        for (int k = 0; k < N_CLASSES && !rc; k++) {
            const char *v[] = {route_names[r], "", class_names[k]};
            rc = metrics_counter_series(c->f_requests, v, &c->req_noarm[r][k]);
        }
        if (!rc)
            rc = metrics_hist_series(c->f_req_dur, &route_names[r], &c->req_dur[r]);
    }
    const char *v_recv[] = {"received", ""}, *v_appl[] = {"applied", ""};
    if (!rc)
        rc = metrics_counter_series(c->f_feedback, v_recv, &c->fb_received);
    if (!rc)
        rc = metrics_counter_series(c->f_feedback, v_appl, &c->fb_applied);
    for (int k = 0; k < N_REASONS && !rc; k++) {
        const char *v[] = {"rejected", reason_names[k]};
        rc = metrics_counter_series(c->f_feedback, v, &c->fb_rejected[k]);
    }
    for (size_t i = 0; i < n_arms && !rc; i++)
        rc = metrics_banditd_add_arm(c, arms[i], NULL);
    if (rc) {
        metrics_banditd_destroy(c);
        return rc;
    }
    *out = c;
    return BD_OK;
}

void metrics_banditd_destroy(struct metrics_banditd *cat)
{
    if (!cat)
        return;
    for (size_t i = 0; i < cat->n_arms; i++) {
        free(cat->arms[i]->name);
        free(cat->arms[i]);
    }
    free(cat->arms);
    free(cat);
}

int metrics_banditd_arm_index(const struct metrics_banditd *cat, const char *name)
{
    if (!cat || !name)
        return -1;
    for (size_t i = 0; i < cat->n_arms; i++)
        if (strcmp(cat->arms[i]->name, name) == 0)
            return (int)i;
    return -1;
}

int metrics_banditd_add_arm(struct metrics_banditd *cat, const char *name, size_t *idx)
{
    assert(cat);
    if (!name || !*name || strlen(name) > METRICS_MAX_VALUE_LEN || !valid_utf8(name))
        return BD_ERR_INVALID;
    int have = metrics_banditd_arm_index(cat, name);
    if (have >= 0) {
        if (idx)
            *idx = (size_t)have;
        return BD_OK;
    }
    if (cat->n_arms == cat->cap_arms) {
        size_t cap = cat->cap_arms ? 2 * cat->cap_arms : 8;
        struct cat_arm **p = realloc(cat->arms, cap * sizeof *p);
        if (!p)
            return BD_ERR_NOMEM;
        cat->arms = p;
        cat->cap_arms = cap;
    }
    struct cat_arm *a = calloc(1, sizeof *a);
    if (!a)
        return BD_ERR_NOMEM;
    a->name = strdup(name);
    if (!a->name) {
        free(a);
        return BD_ERR_NOMEM;
    }
    a->h.name = a->name;
    /* Series already created stay in the registry if a later one fails;
     * a retry finds them (creation is idempotent). */
    const char *v[] = {name};
    const char *vp[] = {name, "prompt"}, *vc[] = {name, "completion"};
    int rc = metrics_hist_series(cat->f_up_dur, v, &a->h.upstream_duration);
    if (!rc)
        rc = metrics_hist_series(cat->f_ttfb, v, &a->h.upstream_ttfb);
    if (!rc)
        rc = metrics_counter_series(cat->f_tokens, vp, &a->h.tokens_prompt);
    if (!rc)
        rc = metrics_counter_series(cat->f_tokens, vc, &a->h.tokens_completion);
    if (!rc)
        rc = metrics_counter_series(cat->f_cost, v, &a->h.cost_usd);
    if (!rc)
        rc = metrics_counter_series(cat->f_fallbacks, v, &a->h.fallbacks);
    if (!rc)
        rc = metrics_gauge_series(cat->f_circuit, v, &a->h.circuit_state);
    if (!rc)
        rc = metrics_gauge_series(cat->f_reward, v, &a->h.reward_mean);
    for (int k = 0; k < N_CLASSES && !rc; k++) {
        const char *vr[] = {route_names[METRICS_ROUTE_CHAT], name, class_names[k]};
        rc = metrics_counter_series(cat->f_requests, vr, &a->requests[k]);
    }
    if (rc) {
        free(a->name);
        free(a);
        return rc;
    }
    cat->arms[cat->n_arms] = a;
    if (idx)
        *idx = cat->n_arms;
    cat->n_arms++;
    return BD_OK;
}

size_t metrics_banditd_n_arms(const struct metrics_banditd *cat)
{
    return cat ? cat->n_arms : 0;
}

const struct metrics_banditd_arm *metrics_banditd_arm(const struct metrics_banditd *cat, size_t idx)
{
    if (!cat || idx >= cat->n_arms)
        return NULL;
    return &cat->arms[idx]->h;
}

struct metrics_counter *metrics_banditd_requests(const struct metrics_banditd *cat,
                                                 enum metrics_route route, int arm_idx,
                                                 int http_status)
{
    if (!cat || (unsigned)route >= METRICS_ROUTE_COUNT)
        return NULL;
    int k = class_index(http_status);
    if (route == METRICS_ROUTE_CHAT && arm_idx >= 0 && (size_t)arm_idx < cat->n_arms)
        return cat->arms[arm_idx]->requests[k];
    return cat->req_noarm[route][k];
}

struct metrics_hist *metrics_banditd_request_duration(const struct metrics_banditd *cat,
                                                      enum metrics_route route)
{
    if (!cat || (unsigned)route >= METRICS_ROUTE_COUNT)
        return NULL;
    return cat->req_dur[route];
}

struct metrics_counter *metrics_banditd_feedback(const struct metrics_banditd *cat,
                                                 enum metrics_feedback_result result, int err)
{
    if (!cat)
        return NULL;
    switch (result) {
    case METRICS_FEEDBACK_RECEIVED:
        return cat->fb_received;
    case METRICS_FEEDBACK_APPLIED:
        return cat->fb_applied;
    case METRICS_FEEDBACK_REJECTED:
        return cat->fb_rejected[reason_index(err)];
    default:
        return NULL;
    }
}

struct metrics_gauge *metrics_banditd_inflight(const struct metrics_banditd *cat)
{
    return cat ? cat->inflight : NULL;
}

void metrics_banditd_bind_decisions_pending(struct metrics_banditd *cat, metrics_value_fn fn,
                                            void *user)
{
    int rc = metrics_fn_series(cat->f_pending, NULL, fn, user);
    assert(rc == BD_OK);
    (void)rc;
}

void metrics_banditd_bind_store_queue_depth(struct metrics_banditd *cat, metrics_value_fn fn,
                                            void *user)
{
    int rc = metrics_fn_series(cat->f_queue, NULL, fn, user);
    assert(rc == BD_OK);
    (void)rc;
}
