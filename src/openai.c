/* openai — the OpenAI wire format: validation, rewrite, errors, usage, SSE. */
#include "banditd/openai.h"
#include "banditd/err.h"
#include "banditd/util.h"

#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define OPENAI_MAX_DEPTH 64        /* request nesting limit */
#define SSE_LINE_MAX (1024 * 1024) /* longer SSE lines are skipped */
#define SSE_SKIPPING 1             /* s->skipping: inside an over-long line */

__attribute__((format(printf, 3, 4))) static int invalid(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return BD_ERR_INVALID;
}

/* Parse exactly len bytes (no NULs inside, checked by the caller) through a
 * NUL-terminated private copy, so cJSON never reads past the input. Trailing
 * garbage fails. NULL on syntax error; *oom set on allocation failure. */
static cJSON *parse_exact(const char *s, size_t len, int *oom)
{
    *oom = 0;
    char *buf = malloc(len + 1);
    if (!buf) {
        *oom = 1;
        return NULL;
    }
    if (len)
        memcpy(buf, s, len);
    buf[len] = '\0';
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len + 1, NULL, 1);
    free(buf);
    return root;
}

/* ---- A strict JSON scanner (no allocation) for the fast paths ----
 *
 * It walks RFC 8259 JSON and reports where values start and end, so the hot
 * path can splice the request and read the answer's usage without building
 * (or printing) a whole cJSON tree. It is deliberately stricter than cJSON:
 * whatever it does not accept (non-strict syntax, control bytes or NULs in
 * strings, lone surrogate escapes, nesting deeper than SCAN_MAX_DEPTH, keys
 * written with escapes) makes the caller fall back to the cJSON path, so a
 * fast answer is always the answer the cJSON path would give. */

#define SCAN_MAX_DEPTH 64

/* Bytes that stop the run of plain string bytes: '"', '\\' and controls. */
static const unsigned char str_stop[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1,
    [0x07] = 1, [0x08] = 1, [0x09] = 1, [0x0a] = 1, [0x0b] = 1, [0x0c] = 1, [0x0d] = 1,
    [0x0e] = 1, [0x0f] = 1, [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x14] = 1,
    [0x15] = 1, [0x16] = 1, [0x17] = 1, [0x18] = 1, [0x19] = 1, [0x1a] = 1, [0x1b] = 1,
    [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1, ['"'] = 1,  ['\\'] = 1,
};

/* The first byte at or after p that str_stop marks, or end. SSE2 (part of
 * x86-64) tests 16 bytes at a time; the table loop takes the rest. */
static const char *skip_plain(const char *p, const char *end)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
    const __m128i ctl = _mm_set1_epi8(0x1f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i hit =
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                         _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v)); /* v <= 0x1f */
        int m = _mm_movemask_epi8(hit);
        if (m)
            return p + __builtin_ctz((unsigned)m);
        p += 16;
    }
#endif
    while (p < end && !str_stop[(unsigned char)*p])
        p++;
    return p;
}

static const char *scan_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* Four hex digits at p (p + 4 <= end checked by the caller); -1 if not hex. */
static long scan_hex4(const char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* p at the opening '"'. Returns the byte after the closing '"', or NULL.
 * *esc is set when the string contains an escape. */
static const char *scan_string(const char *p, const char *end, int *esc)
{
    assert(p < end && *p == '"');
    p++;
    *esc = 0;
    for (;;) {
        p = skip_plain(p, end);
        if (p >= end)
            return NULL;
        if (*p == '"')
            return p + 1;
        if (*p != '\\')
            return NULL; /* a raw control byte (cJSON would take it; we leave it to cJSON) */
        *esc = 1;
        if (end - p < 2)
            return NULL;
        char e = p[1];
        if (e == 'u') {
            if (end - p < 6)
                return NULL;
            long u = scan_hex4(p + 2);
            if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF))
                return NULL;
            p += 6;
            if (u >= 0xD800 && u <= 0xDBFF) { /* a high surrogate needs its low half */
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
                    return NULL;
                long lo = scan_hex4(p + 2);
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return NULL;
                p += 6;
            }
        } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                   e == 'r' || e == 't') {
            p += 2;
        } else {
            return NULL;
        }
    }
}

static const char *scan_digits(const char *p, const char *end)
{
    const char *s = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p == s ? NULL : p;
}

/* -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static const char *scan_number(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0')
        p++;
    else if (!(p = scan_digits(p, end)))
        return NULL;
    if (p < end && *p == '.' && !(p = scan_digits(p + 1, end)))
        return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!(p = scan_digits(p, end)))
            return NULL;
    }
    return p;
}

static const char *scan_lit(const char *p, const char *end, const char *lit, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0 ? p + n : NULL;
}

static const char *scan_value(const char *p, const char *end, int depth);

/* p at '{' or '['. Returns the byte after the matching close, or NULL. */
static const char *scan_container(const char *p, const char *end, int depth)
{
    if (depth >= SCAN_MAX_DEPTH)
        return NULL;
    char close = *p == '{' ? '}' : ']';
    int obj = *p == '{';
    p = scan_ws(p + 1, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        if (obj) {
            int esc;
            if (p >= end || *p != '"' || !(p = scan_string(p, end, &esc)))
                return NULL;
            p = scan_ws(p, end);
            if (p >= end || *p != ':')
                return NULL;
            p = scan_ws(p + 1, end);
        }
        if (!(p = scan_value(p, end, depth + 1)))
            return NULL;
        p = scan_ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == close)
            return p + 1;
        if (*p != ',')
            return NULL;
        p = scan_ws(p + 1, end);
    }
}

/* p at the first byte of a value (no leading whitespace). */
static const char *scan_value(const char *p, const char *end, int depth)
{
    if (p >= end)
        return NULL;
    int esc;
    switch (*p) {
    case '"':
        return scan_string(p, end, &esc);
    case '{':
    case '[':
        return scan_container(p, end, depth);
    case 't':
        return scan_lit(p, end, "true", 4);
    case 'f':
        return scan_lit(p, end, "false", 5);
    case 'n':
        return scan_lit(p, end, "null", 4);
    default:
        return scan_number(p, end);
    }
}

/* A member's value found by scan_members: [v, vend); v == NULL if absent. */
struct span {
    const char *v, *vend;
    int esc; /* string value with escapes */
};

/* Walk the object at p ('{'), strictly, recording the value span of the
 * FIRST member named keys[i] (cJSON's lookup returns the first too) in
 * out[i]. *close gets the position of the closing '}'. Returns 0, or -1 when
 * the scanner is unsure (see above) — including any key with an escape, which
 * cJSON would decode before comparing. */
static int scan_members(const char *p, const char *end, const char *const *keys, size_t nkeys,
                        struct span *out, const char **close)
{
    for (size_t i = 0; i < nkeys; i++)
        out[i].v = out[i].vend = NULL;
    if (p >= end || *p != '{')
        return -1;
    p = scan_ws(p + 1, end);
    if (p < end && *p == '}') {
        *close = p;
        return 0;
    }
    for (;;) {
        int esc;
        const char *k = p;
        if (p >= end || *p != '"' || !(p = scan_string(p, end, &esc)) || esc)
            return -1;
        size_t klen = (size_t)(p - k) - 2;
        p = scan_ws(p, end);
        if (p >= end || *p != ':')
            return -1;
        p = scan_ws(p + 1, end);
        const char *v = p;
        int vesc = 0;
        if (p < end && *p == '"')
            p = scan_string(p, end, &vesc);
        else
            p = scan_value(p, end, 1);
        if (!p)
            return -1;
        for (size_t i = 0; i < nkeys; i++) {
            if (!out[i].v && strlen(keys[i]) == klen && memcmp(keys[i], k + 1, klen) == 0) {
                out[i].v = v;
                out[i].vend = p;
                out[i].esc = vesc;
            }
        }
        p = scan_ws(p, end);
        if (p >= end)
            return -1;
        if (*p == '}') {
            *close = p;
            return 0;
        }
        if (*p != ',')
            return -1;
        p = scan_ws(p + 1, end);
    }
}

/* ---- A cJSON tree from strict JSON, in one arena ----
 *
 * cJSON's parser makes one allocation per value, one per key and one per
 * string value (~50 malloc/free pairs for a 1 KB chat request) and copies
 * strings byte by byte. For JSON the strict scanner accepts, this builds the
 * same tree (same types, values, valueint, strings, member order and links,
 * head->prev = last child, as cJSON_Parse leaves them) in one arena:
 * strings are found by the scanner's table loop and copied with memcpy.
 * Anything else (a number longer than cJSON's 63-byte buffer, and whatever
 * the scanner leaves to cJSON) returns "unsure" and the caller runs cJSON,
 * so a tree built here is always the tree cJSON would have built. Such a
 * tree must never reach cJSON_Delete: it is freed with its arena. */

struct arena_chunk {
    struct arena_chunk *next;
    size_t size; /* bytes after the header */
};

struct arena {
    struct arena_chunk *chunks; /* malloc'd chunks, newest first */
    char *cur;
    size_t left;
    size_t next_size; /* size of the next chunk */
};

/* An arena whose first bytes are buf[cap] (not owned; may be NULL). */
static void arena_init(struct arena *a, void *buf, size_t cap, size_t next_size)
{
    a->chunks = NULL;
    a->cur = buf;
    a->left = buf ? cap : 0;
    a->next_size = next_size;
}

static void arena_free_chunks(struct arena_chunk *c)
{
    while (c) {
        struct arena_chunk *n = c->next;
        free(c);
        c = n;
    }
}

#define ARENA_ALIGN 8 /* enough for cJSON's double and pointers */
#define ARENA_HDR ((sizeof(struct arena_chunk) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1))
#define CHAT_SPARE_MAX ((size_t)64 * 1024) /* largest first chunk kept for reuse */

/* Start a with the spare chunk c (from openai_chat_release) as its first. */
static void arena_adopt(struct arena *a, struct arena_chunk *c)
{
    c->next = NULL;
    a->chunks = c;
    a->cur = (char *)c + ARENA_HDR;
    a->left = c->size;
}

static void *arena_alloc(struct arena *a, size_t n)
{
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (n > a->left) {
        size_t size = a->next_size > n ? a->next_size : n;
        size_t hdr = ARENA_HDR;
        struct arena_chunk *c = malloc(hdr + size);
        if (!c)
            return NULL;
        c->next = a->chunks;
        c->size = size;
        a->chunks = c;
        a->cur = (char *)c + hdr;
        a->left = size;
        a->next_size = size * 2;
    }
    void *p = a->cur;
    a->cur += n;
    a->left -= n;
    return p;
}

/* Where the root object's members of interest are, for the splice rewrite
 * (byte offsets into the source; valid when ok). */
struct top_spans {
    const char *model, *model_end; /* first "model" member's value */
    const char *so, *so_end;       /* first "stream_options" member's value, or NULL */
    const char *close;             /* the root's closing brace */
    int unsure;                    /* a root key has an escape: leave the splice to the scanner */
};

struct build {
    const char *end;
    struct arena *a;
    struct top_spans *top; /* NULL: not recorded */
    int oom;
};

static cJSON *build_node(struct build *b)
{
    cJSON *it = arena_alloc(b->a, sizeof *it);
    if (!it) {
        b->oom = 1;
        return NULL;
    }
    memset(it, 0, sizeof *it);
    return it;
}

/* The code point of a validated \uXXXX (and its low half) at p; *adv = bytes read. */
static unsigned long build_code_point(const char *p, size_t *adv)
{
    unsigned long u = (unsigned long)scan_hex4(p + 2);
    *adv = 6;
    if (u >= 0xD800 && u <= 0xDBFF) {
        unsigned long lo = (unsigned long)scan_hex4(p + 8);
        *adv = 12;
        u = 0x10000 + (((u & 0x3FF) << 10) | (lo & 0x3FF));
    }
    return u;
}

/* Decode the body of a string the scanner validated, [p, e), into d; returns
 * the bytes written (UTF-8 for \u escapes, as cJSON writes them). */
static size_t build_unescape(const char *p, const char *e, char *d)
{
    char *o = d;
    while (p < e) {
        const char *bs = memchr(p, '\\', (size_t)(e - p));
        size_t run = bs ? (size_t)(bs - p) : (size_t)(e - p);
        memcpy(o, p, run);
        o += run;
        p += run;
        if (p >= e)
            break;
        char c = p[1];
        size_t adv = 2;
        switch (c) {
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            unsigned long cp = build_code_point(p, &adv);
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else if (cp < 0x800) {
                *o++ = (char)(0xC0 | (cp >> 6));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *o++ = (char)(0xE0 | (cp >> 12));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xF0 | (cp >> 18));
                *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: /* '"', '\\', '/' */
            *o++ = c;
        }
        p += adv;
    }
    return (size_t)(o - d);
}

/* p at '"': the string's value in the arena (*out), *esc as scan_string. */
static const char *build_string(struct build *b, const char *p, char **out, int *esc)
{
    const char *q = scan_string(p, b->end, esc);
    if (!q)
        return NULL;
    size_t n = (size_t)(q - p) - 2; /* decoding never lengthens */
    char *d = arena_alloc(b->a, n + 1);
    if (!d) {
        b->oom = 1;
        return NULL;
    }
    if (*esc)
        n = build_unescape(p + 1, q - 1, d);
    else
        memcpy(d, p + 1, n);
    d[n] = '\0';
    *out = d;
    return q;
}

/* A number as cJSON reads it: its bytes copied into a 64-byte buffer and
 * converted by strtod (the process runs in the C locale). */
static const char *build_number(const char *p, const char *end, cJSON *it)
{
    const char *q = scan_number(p, end);
    char buf[64];
    if (!q || (size_t)(q - p) >= sizeof buf)
        return NULL; /* cJSON would cut it at 63 bytes: let cJSON decide */
    size_t n = (size_t)(q - p);
    int neg = *p == '-';
    double d;
    /* An integer of at most 15 digits is exact in a double, which is what
     * strtod returns for it ("-0" included: -0.0). */
    int64_t v = 0;
    const char *c = p + neg;
    while (c < q && c - (p + neg) < 15 && *c >= '0' && *c <= '9')
        v = v * 10 + (*c++ - '0');
    if (c == q) {
        d = neg ? -(double)v : (double)v;
    } else {
        memcpy(buf, p, n);
        buf[n] = '\0';
        char *after;
        d = strtod(buf, &after);
        if (after != buf + n)
            return NULL;
    }
    it->type = cJSON_Number;
    it->valuedouble = d;
    it->valueint = d >= INT_MAX ? INT_MAX : d <= (double)INT_MIN ? INT_MIN : (int)d;
    return q;
}

static const char *build_value(struct build *b, const char *p, cJSON *it, int depth);

/* p at '{' or '[' (the scanner's depth convention: the root is depth 0). */
static const char *build_container(struct build *b, const char *p, cJSON *it, int depth)
{
    if (depth >= SCAN_MAX_DEPTH)
        return NULL;
    const char *end = b->end;
    int obj = *p == '{';
    char close = obj ? '}' : ']';
    it->type = obj ? cJSON_Object : cJSON_Array;
    struct top_spans *top = depth == 0 && obj ? b->top : NULL;
    p = scan_ws(p + 1, end);
    if (p < end && *p == close) {
        if (top)
            top->close = p;
        return p + 1;
    }
    cJSON *head = NULL, *last = NULL;
    for (;;) {
        cJSON *c = build_node(b);
        if (!c)
            return NULL;
        if (last) {
            last->next = c;
            c->prev = last;
        } else {
            head = c;
        }
        last = c;
        int kesc = 0;
        if (obj) {
            if (p >= end || *p != '"' || !(p = build_string(b, p, &c->string, &kesc)))
                return NULL;
            p = scan_ws(p, end);
            if (p >= end || *p != ':')
                return NULL;
            p = scan_ws(p + 1, end);
        }
        const char *v = p;
        if (!(p = build_value(b, p, c, depth + 1)))
            return NULL;
        if (top) {
            if (kesc)
                top->unsure = 1;
            else if (!top->model && strcmp(c->string, "model") == 0)
                top->model = v, top->model_end = p;
            else if (!top->so && strcmp(c->string, "stream_options") == 0)
                top->so = v, top->so_end = p;
        }
        p = scan_ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == close) {
            head->prev = last;
            it->child = head;
            if (top)
                top->close = p;
            return p + 1;
        }
        if (*p != ',')
            return NULL;
        p = scan_ws(p + 1, end);
    }
}

static const char *build_value(struct build *b, const char *p, cJSON *it, int depth)
{
    const char *end = b->end;
    if (p >= end)
        return NULL;
    int esc;
    switch (*p) {
    case '"':
        it->type = cJSON_String;
        return build_string(b, p, &it->valuestring, &esc);
    case '{':
    case '[':
        return build_container(b, p, it, depth);
    case 't':
        it->type = cJSON_True;
        it->valueint = 1;
        return scan_lit(p, end, "true", 4);
    case 'f':
        it->type = cJSON_False;
        return scan_lit(p, end, "false", 5);
    case 'n':
        it->type = cJSON_NULL;
        return scan_lit(p, end, "null", 4);
    default:
        return build_number(p, end, it);
    }
}

/* The tree of the JSON text [s, s + len) in arena a, or NULL: *oom set when
 * an allocation failed, else the text is not strict JSON (or not one that is
 * certain to give cJSON's tree) and cJSON must decide. top (may be NULL)
 * gets the root object's spans. Whatever it allocated stays in a. */
static cJSON *build_tree(const char *s, size_t len, struct arena *a, struct top_spans *top,
                         int *oom)
{
    struct build b = {s + len, a, top, 0};
    if (top)
        memset(top, 0, sizeof *top);
    const char *p = scan_ws(s, b.end);
    cJSON *root = build_node(&b);
    if (root)
        p = build_value(&b, p, root, 0);
    *oom = b.oom;
    if (!root || !p || scan_ws(p, b.end) != b.end)
        return NULL;
    return root;
}

/* A short-lived tree of a small JSON text (an answer's usage, an SSE
 * chunk): built in a stack buffer when it can be, by cJSON otherwise. */
struct quick_tree {
    struct arena a;
    _Alignas(16) char buf[2048];
    int in_arena;
};

static cJSON *quick_parse(struct quick_tree *q, const char *s, size_t len, int *oom)
{
    arena_init(&q->a, q->buf, sizeof q->buf, 8192);
    cJSON *root = build_tree(s, len, &q->a, NULL, oom);
    q->in_arena = root != NULL;
    if (!root) {
        arena_free_chunks(q->a.chunks);
        q->a.chunks = NULL;
        root = parse_exact(s, len, oom);
    }
    return root;
}

static void quick_done(struct quick_tree *q, cJSON *root)
{
    if (!q->in_arena)
        cJSON_Delete(root);
    arena_free_chunks(q->a.chunks);
}

static const cJSON *member(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* Number of members of obj called key (duplicates would let the upstream see
 * a different value than the one we validated and rewrote). */
static int count_member(const cJSON *obj, const char *key)
{
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj)
    {
        if (it->string && strcmp(it->string, key) == 0)
            n++;
    }
    return n;
}

/* Characters of text in a content value (string or array of parts). */
static size_t content_chars(const cJSON *content)
{
    if (cJSON_IsString(content))
        return strlen(content->valuestring);
    size_t n = 0;
    if (cJSON_IsArray(content)) {
        const cJSON *part;
        cJSON_ArrayForEach(part, content)
        {
            const cJSON *t = member(part, "text");
            if (cJSON_IsString(t))
                n += strlen(t->valuestring);
        }
    }
    return n;
}

static int validate(cJSON *root, struct openai_chat *out, char *err, size_t errlen,
                    const char **param)
{
    if (!cJSON_IsObject(root))
        return invalid(err, errlen, "the request body must be a JSON object");

    static const char *const unique[] = {"model",          "messages",   "stream",
                                         "stream_options", "max_tokens", "max_completion_tokens"};
    for (size_t i = 0; i < sizeof unique / sizeof unique[0]; i++) {
        if (count_member(root, unique[i]) > 1) {
            *param = unique[i];
            return invalid(err, errlen, "'%s' is given more than once", unique[i]);
        }
    }

    const cJSON *model = member(root, "model");
    if (!model) {
        *param = "model";
        return invalid(err, errlen, "you must provide a model parameter");
    }
    if (!cJSON_IsString(model) || !model->valuestring || !model->valuestring[0]) {
        *param = "model";
        return invalid(err, errlen, "'model' must be a non-empty string");
    }

    const cJSON *msgs = member(root, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) < 1) {
        *param = "messages";
        return invalid(err, errlen, "'messages' must be a non-empty array");
    }
    size_t chars = 0, i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        if (!cJSON_IsObject(m)) {
            *param = "messages";
            return invalid(err, errlen, "messages[%zu] must be an object", i);
        }
        const cJSON *role = member(m, "role");
        if (!cJSON_IsString(role) || !role->valuestring[0]) {
            *param = "messages.role";
            return invalid(err, errlen, "messages[%zu].role must be a non-empty string", i);
        }
        const cJSON *content = member(m, "content");
        int is_assistant = strcmp(role->valuestring, "assistant") == 0;
        if (!content) {
            if (!is_assistant) {
                *param = "messages.content";
                return invalid(err, errlen, "messages[%zu].content is required", i);
            }
        } else if (cJSON_IsArray(content)) {
            const cJSON *part;
            size_t j = 0;
            cJSON_ArrayForEach(part, content)
            {
                if (!cJSON_IsObject(part)) {
                    *param = "messages.content";
                    return invalid(err, errlen,
                                   "messages[%zu].content[%zu] must be a content part object", i,
                                   j);
                }
                j++;
            }
        } else if (!cJSON_IsString(content) && !cJSON_IsNull(content)) {
            *param = "messages.content";
            return invalid(err, errlen,
                           "messages[%zu].content must be a string, null or an array of content "
                           "parts",
                           i);
        }
        chars += content_chars(content);
        i++;
    }

    const cJSON *stream = member(root, "stream");
    if (stream && !cJSON_IsBool(stream)) {
        *param = "stream";
        return invalid(err, errlen, "'stream' must be a boolean");
    }
    const cJSON *so = member(root, "stream_options");
    int include_usage = 0;
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so) || count_member(so, "include_usage") > 1) {
            *param = "stream_options";
            return invalid(err, errlen, "'stream_options' must be an object");
        }
        const cJSON *iu = member(so, "include_usage");
        if (iu && !cJSON_IsBool(iu)) {
            *param = "stream_options";
            return invalid(err, errlen, "'stream_options.include_usage' must be a boolean");
        }
        include_usage = cJSON_IsTrue(iu);
    }

    long max_tokens = -1;
    static const char *const mt_keys[] = {"max_completion_tokens", "max_tokens"};
    for (size_t k = 0; k < 2 && max_tokens < 0; k++) {
        const cJSON *mt = member(root, mt_keys[k]);
        if (!mt || cJSON_IsNull(mt))
            continue;
        double d = cJSON_IsNumber(mt) ? mt->valuedouble : NAN;
        if (!isfinite(d) || d < 0 || d != floor(d) || d > 1e15) {
            *param = mt_keys[k];
            return invalid(err, errlen, "'%s' must be a non-negative integer", mt_keys[k]);
        }
        max_tokens = (long)d;
    }

    out->root = root;
    out->model = model->valuestring;
    out->stream = cJSON_IsTrue(stream);
    out->include_usage = include_usage;
    out->messages = msgs;
    out->prompt_chars = chars;
    out->max_tokens = max_tokens;
    return 0;
}

/* util_json_prescan's answer, quickly for the common body: with no NUL byte
 * and at most max_depth '{' and '[' bytes in all (strings included), the
 * nesting cannot exceed max_depth, so the answer is 0 without tracking
 * strings byte by byte (memchr runs a vector width at a time; the byte loop
 * cost ~14 instructions per byte of every request). Anything else gets the
 * exact scan, so the result (and which error wins) is always the same. */
static int prescan(const char *s, size_t len, int max_depth)
{
    if (memchr(s, '\0', len))
        return util_json_prescan(s, len, max_depth);
    long opens = 0;
    static const char openers[] = {'{', '['};
    for (size_t k = 0; k < sizeof openers; k++) {
        const char *p = s, *end = s + len;
        while (p < end && (p = memchr(p, openers[k], (size_t)(end - p))) != NULL) {
            if (++opens > max_depth)
                return util_json_prescan(s, len, max_depth);
            p++;
        }
    }
    return 0;
}

int openai_chat_parse(const char *body, size_t len, struct openai_chat *out, char *err,
                      size_t errlen, const char **param)
{
    return openai_chat_parse_with(body, len, out, NULL, err, errlen, param);
}

int openai_chat_parse_with(const char *body, size_t len, struct openai_chat *out, void **spare,
                           char *err, size_t errlen, const char **param)
{
    const char *dummy;
    assert(out != NULL);
    if (!param)
        param = &dummy;
    *param = NULL;
    memset(out, 0, sizeof *out);
    out->max_tokens = -1;
    if (!body)
        len = 0;
    if (len == 0)
        return invalid(err, errlen, "the request body is empty (expected a JSON object)");
    /* One allocation for the private copy and (usually) the whole tree: a
     * chat request's tree takes about twice its bytes. Rounded up to a power
     * of two from 1 KiB, so that a spare chunk fits the next similar body;
     * not more, as every request in flight holds its chunk (an 8 KiB floor
     * cost ~20 MiB of RSS at 5,000 small requests in flight: bench/slow.sh). */
    struct arena a;
    size_t first = len + 1;
    if (len < ((size_t)1 << 40)) {
        first = 1024;
        while (first < 3 * len + 256)
            first *= 2;
    }
    arena_init(&a, NULL, 0, first);
    if (spare && *spare) {
        struct arena_chunk *c = *spare;
        *spare = NULL;
        if (c->size >= first)
            arena_adopt(&a, c);
        else
            free(c);
    }
    char *src = arena_alloc(&a, len + 1);
    if (!src)
        return BD_ERR_NOMEM;
    memcpy(src, body, len);
    src[len] = '\0';
    struct top_spans top;
    int oom;
    /* A tree built here holds no NUL byte and nests at most 64 deep (the
     * scanner's limit), so the pre-scan would pass: it runs only before cJSON. */
    cJSON *root = build_tree(src, len, &a, &top, &oom);
    int in_arena = root != NULL;
    if (!root) { /* not certain to be cJSON's tree: as before, pre-scan then cJSON */
        int pre = prescan(src, len, OPENAI_MAX_DEPTH);
        if (pre != 0)
            arena_free_chunks(a.chunks);
        if (pre == -1)
            return invalid(err, errlen, "the request body contains a NUL byte");
        if (pre == -2)
            return invalid(err, errlen, "the request body is nested deeper than %d levels",
                           OPENAI_MAX_DEPTH);
        root = cJSON_ParseWithLengthOpts(src, len + 1, NULL, 1);
    }
    if (!root) {
        arena_free_chunks(a.chunks);
        return invalid(err, errlen, "the request body is not valid JSON");
    }
    int rc = validate(root, out, err, errlen, param);
    if (rc != 0) {
        if (!in_arena)
            cJSON_Delete(root);
        arena_free_chunks(a.chunks);
        memset(out, 0, sizeof *out);
        out->max_tokens = -1;
        return rc;
    }
    out->src = src;
    out->src_len = len;
    out->arena = a.chunks;
    out->tree_in_arena = in_arena;
    if (in_arena && !top.unsure && top.model && top.close) {
        out->spans_ok = 1;
        out->model_at = (size_t)(top.model - src);
        out->model_end = (size_t)(top.model_end - src);
        out->so_at = top.so ? (size_t)(top.so - src) : 0;
        out->so_end = top.so ? (size_t)(top.so_end - src) : 0;
        out->close_at = (size_t)(top.close - src);
    }
    return 0;
}

void openai_chat_free(struct openai_chat *c)
{
    openai_chat_release(c, NULL);
}

void openai_chat_release(struct openai_chat *c, void **spare)
{
    if (!c)
        return;
    if (!c->tree_in_arena)
        cJSON_Delete(c->root);
    struct arena_chunk *head = c->arena;
    if (spare && !*spare && head) {
        /* The first chunk is the oldest: last in the list. */
        struct arena_chunk *prev = NULL, *last = head;
        while (last->next) {
            prev = last;
            last = last->next;
        }
        if (last->size <= CHAT_SPARE_MAX) {
            if (prev)
                prev->next = NULL;
            else
                head = NULL;
            *spare = last;
        }
    }
    arena_free_chunks(head);
    memset(c, 0, sizeof *c);
    c->max_tokens = -1;
}

void openai_chat_spare_free(void *spare)
{
    free(spare);
}

/* Swap obj[key] for `repl` (owned by obj afterwards) and return the original
 * member detached (or NULL if there was none). `key` must be a string literal:
 * it is linked, not copied, so nothing here allocates or can fail. */
static cJSON *swap_member(cJSON *obj, const char *key, cJSON *repl)
{
    cJSON *orig = cJSON_DetachItemFromObjectCaseSensitive(obj, key);
    cJSON_AddItemToObjectCS(obj, key, repl);
    return orig;
}

/* Undo swap_member: drop the replacement, put the original back (it keeps
 * its own key string, so re-linking it allocates nothing). */
static void unswap_member(cJSON *obj, const char *key, cJSON *orig)
{
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (orig)
        cJSON_AddItemToArray(obj, orig);
}

/* Bytes of s as the body of a JSON string (cJSON's escaping: '"', '\\',
 * \b \f \n \r \t, other controls as \u00XX; everything else verbatim).
 * Writes to dst when non-NULL; returns the length either way. */
static size_t json_escape_to(char *dst, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[6];
        size_t k = 0;
        switch (*p) {
        case '"':
        case '\\':
            tmp[k++] = '\\';
            tmp[k++] = (char)*p;
            break;
        case '\b':
            tmp[k++] = '\\', tmp[k++] = 'b';
            break;
        case '\f':
            tmp[k++] = '\\', tmp[k++] = 'f';
            break;
        case '\n':
            tmp[k++] = '\\', tmp[k++] = 'n';
            break;
        case '\r':
            tmp[k++] = '\\', tmp[k++] = 'r';
            break;
        case '\t':
            tmp[k++] = '\\', tmp[k++] = 't';
            break;
        default:
            if (*p < 0x20) {
                memcpy(tmp, "\\u00", 4);
                tmp[4] = hex[*p >> 4];
                tmp[5] = hex[*p & 15];
                k = 6;
            } else {
                tmp[k++] = (char)*p;
            }
        }
        if (dst)
            memcpy(dst + n, tmp, k);
        n += k;
    }
    return n;
}

/* One splice: replace src[from, to) by the literal `lit` or, when lit is
 * NULL, by the JSON string of `str` (quotes included). */
struct edit {
    size_t from, to;
    const char *lit;
    const char *str;
};

static size_t edit_len(const struct edit *e)
{
    return e->lit ? strlen(e->lit) : json_escape_to(NULL, e->str) + 2;
}

/* The splice path of openai_chat_rewrite: c->src with the "model" value
 * replaced in place and, for streams, stream_options.include_usage set by
 * replacing or inserting a few bytes. Every other byte is the client's.
 * Returns NULL with *unsure set when the scanner leaves it to cJSON (see
 * scan_members), NULL with *unsure clear on OOM. */
static char *rewrite_splice(const struct openai_chat *c, const char *model, size_t *len_out,
                            int *unsure)
{
    *unsure = 1;
    if (!c->src)
        return NULL;
    const char *src = c->src, *end = c->src + c->src_len;
    static const char *const top_keys[] = {"model", "stream_options"};
    struct span top[2];
    const char *close;
    if (c->spans_ok) { /* found while the tree was built */
        top[0] = (struct span){src + c->model_at, src + c->model_end, 0};
        top[1] = (struct span){c->so_end ? src + c->so_at : NULL, src + c->so_end, 0};
        close = src + c->close_at;
    } else {
        const char *p = scan_ws(src, end);
        if (scan_members(p, end, top_keys, 2, top, &close) != 0 || scan_ws(close + 1, end) != end)
            return NULL;
    }
    if (!top[0].v || *top[0].v != '"')
        return NULL; /* cannot happen after validation; leave it to cJSON */
    struct edit ed[2];
    size_t ne = 0;
    ed[ne++] = (struct edit){(size_t)(top[0].v - src), (size_t)(top[0].vend - src), NULL, model};
    if (c->stream) {
        const struct span *so = &top[1];
        if (!so->v) { /* no stream_options: add one before the closing brace */
            size_t at = (size_t)(close - src);
            ed[ne++] = (struct edit){at, at, ",\"stream_options\":{\"include_usage\":true}", NULL};
        } else if (*so->v == 'n') { /* null */
            ed[ne++] = (struct edit){(size_t)(so->v - src), (size_t)(so->vend - src),
                                     "{\"include_usage\":true}", NULL};
        } else {
            static const char *const so_keys[] = {"include_usage"};
            struct span iu;
            const char *so_close;
            if (scan_members(so->v, so->vend, so_keys, 1, &iu, &so_close) != 0)
                return NULL;
            if (iu.v) {
                ed[ne++] =
                    (struct edit){(size_t)(iu.v - src), (size_t)(iu.vend - src), "true", NULL};
            } else {
                size_t at = (size_t)(so->v - src) + 1; /* just after '{' */
                int empty = scan_ws(so->v + 1, so->vend) == so_close;
                ed[ne++] = (struct edit){
                    at, at, empty ? "\"include_usage\":true" : "\"include_usage\":true,", NULL};
            }
        }
    }
    if (ne == 2 && ed[1].from < ed[0].from) {
        struct edit t = ed[0];
        ed[0] = ed[1];
        ed[1] = t;
    }
    assert(ne < 2 || ed[0].to <= ed[1].from);
    size_t total = c->src_len;
    for (size_t i = 0; i < ne; i++)
        total += edit_len(&ed[i]) - (ed[i].to - ed[i].from);
    *unsure = 0;
    char *out = malloc(total + 1);
    if (!out)
        return NULL;
    size_t o = 0, at = 0;
    for (size_t i = 0; i < ne; i++) {
        memcpy(out + o, src + at, ed[i].from - at);
        o += ed[i].from - at;
        if (ed[i].lit) {
            size_t n = strlen(ed[i].lit);
            memcpy(out + o, ed[i].lit, n);
            o += n;
        } else {
            out[o++] = '"';
            o += json_escape_to(out + o, ed[i].str);
            out[o++] = '"';
        }
        at = ed[i].to;
    }
    memcpy(out + o, src + at, c->src_len - at);
    o += c->src_len - at;
    assert(o == total);
    out[o] = '\0';
    if (len_out)
        *len_out = o;
    return out;
}

char *openai_chat_rewrite(struct openai_chat *c, const char *upstream_model, size_t *len_out)
{
    assert(c != NULL && c->root != NULL && upstream_model != NULL);
    int unsure;
    char *fast = rewrite_splice(c, upstream_model, len_out, &unsure);
    if (fast || !unsure)
        return fast;
    return openai_chat_rewrite_print(c, upstream_model, len_out);
}

char *openai_chat_rewrite_print(struct openai_chat *c, const char *upstream_model, size_t *len_out)
{
    assert(c != NULL && c->root != NULL && upstream_model != NULL);
    /* Mutate the tree only for the duration of the print and restore it, so
     * c->model stays valid and rewrite can run again for a fallback arm. */
    cJSON *new_model = cJSON_CreateString(upstream_model);
    if (!new_model)
        return NULL;
    cJSON *orig_model = swap_member(c->root, "model", new_model);

    cJSON *so = NULL, *orig_so = NULL, *orig_iu = NULL;
    int so_mode = 0; /* 0 untouched, 1 replaced whole stream_options, 2 swapped include_usage */
    int oom = 0;
    if (c->stream) {
        cJSON *cur = cJSON_GetObjectItemCaseSensitive(c->root, "stream_options");
        if (cJSON_IsObject(cur)) {
            cJSON *t = cJSON_CreateTrue();
            if (t) {
                orig_iu = swap_member(cur, "include_usage", t);
                so = cur;
                so_mode = 2;
            } else {
                oom = 1;
            }
        } else {
            cJSON *fresh = cJSON_CreateObject();
            if (fresh && cJSON_AddTrueToObject(fresh, "include_usage")) {
                orig_so = swap_member(c->root, "stream_options", fresh);
                so_mode = 1;
            } else {
                cJSON_Delete(fresh);
                oom = 1;
            }
        }
    }

    char *s = oom ? NULL : cJSON_PrintUnformatted(c->root);

    if (so_mode == 2)
        unswap_member(so, "include_usage", orig_iu);
    else if (so_mode == 1)
        unswap_member(c->root, "stream_options", orig_so);
    unswap_member(c->root, "model", orig_model);
    /* c->model still points into orig_model, which is back in the tree. */
    assert(cJSON_GetObjectItemCaseSensitive(c->root, "model") == orig_model);

    if (s && len_out)
        *len_out = strlen(s);
    return s;
}

/* {"error":{...}} as a cJSON tree; NULL on OOM. */
static cJSON *error_tree(const char *message, const char *type, const char *param, const char *code)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = root ? cJSON_AddObjectToObject(root, "error") : NULL;
    int ok = e != NULL;
    ok = ok && cJSON_AddStringToObject(e, "message", message ? message : "");
    ok = ok && cJSON_AddStringToObject(e, "type", type ? type : "error");
    ok = ok && (param ? cJSON_AddStringToObject(e, "param", param) != NULL
                      : cJSON_AddNullToObject(e, "param") != NULL);
    ok = ok && (code ? cJSON_AddStringToObject(e, "code", code) != NULL
                     : cJSON_AddNullToObject(e, "code") != NULL);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

char *openai_error_json(const char *message, const char *type, const char *param, const char *code)
{
    cJSON *root = error_tree(message, type, param, code);
    if (!root)
        return NULL;
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *openai_sse_error_event(const char *message, const char *type, const char *code)
{
    char *j = openai_error_json(message, type, NULL, code);
    if (!j)
        return NULL;
    size_t n = strlen(j);
    char *ev = malloc(n + 9); /* "data: " + json + "\n\n" + NUL */
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, j, n);
        memcpy(ev + 6 + n, "\n\n", 3);
    }
    free(j);
    return ev;
}

/* A token count member: a non-negative integer, else -1. */
static long token_count(const cJSON *usage, const char *key)
{
    const cJSON *v = member(usage, key);
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d != floor(d) || d > 1e15)
        return -1;
    return (long)d;
}

static void copy_id(const cJSON *root, char *dst, size_t n)
{
    const cJSON *id = member(root, "id");
    if (n == 0 || !cJSON_IsString(id))
        return;
    snprintf(dst, n, "%s", id->valuestring);
}

static size_t choices_chars(const cJSON *choices)
{
    size_t n = 0;
    const cJSON *ch;
    cJSON_ArrayForEach(ch, choices)
    {
        n += content_chars(member(member(ch, "message"), "content"));
    }
    return n;
}

/* Parse just the value [v, vend) (it is strict JSON already). */
static cJSON *parse_span(struct quick_tree *q, const struct span *sp, int *oom)
{
    return quick_parse(q, sp->v, (size_t)(sp->vend - sp->v), oom);
}

/* The fast path of openai_parse_usage. Returns 0 or BD_ERR_NOMEM with the
 * outputs set, or 1 when the full parse must decide. */
static int usage_scan(const char *body, size_t len, long *pt, long *ct, char *id_out, size_t idlen,
                      size_t *cc)
{
    const char *end = body + len, *close;
    static const char *const keys[] = {"id", "usage", "choices"};
    struct span sp[3];
    const char *p = scan_ws(body, end);
    if (scan_members(p, end, keys, cc ? 3 : 2, sp, &close) != 0 || scan_ws(close + 1, end) != end)
        return 1;
    int oom = 0;
    if (id_out && idlen && sp[0].v && *sp[0].v == '"') {
        if (!sp[0].esc) { /* no escapes: the bytes are the value (snprintf-like cut) */
            size_t n = (size_t)(sp[0].vend - sp[0].v) - 2;
            if (n > idlen - 1)
                n = idlen - 1;
            memcpy(id_out, sp[0].v + 1, n);
            id_out[n] = '\0';
        } else {
            struct quick_tree q;
            cJSON *id = parse_span(&q, &sp[0], &oom);
            if (cJSON_IsString(id))
                snprintf(id_out, idlen, "%s", id->valuestring);
            quick_done(&q, id);
        }
    }
    if (sp[1].v && *sp[1].v == '{' && (pt || ct)) {
        struct quick_tree q;
        cJSON *usage = parse_span(&q, &sp[1], &oom);
        if (cJSON_IsObject(usage)) {
            if (pt)
                *pt = token_count(usage, "prompt_tokens");
            if (ct)
                *ct = token_count(usage, "completion_tokens");
        }
        quick_done(&q, usage);
    }
    if (cc && sp[2].v && (*sp[2].v == '[' || *sp[2].v == '{')) { /* cJSON iterates both */
        struct quick_tree q;
        cJSON *choices = parse_span(&q, &sp[2], &oom);
        *cc = choices_chars(choices);
        quick_done(&q, choices);
    }
    return oom ? BD_ERR_NOMEM : 0;
}

int openai_parse_usage(const char *body, size_t len, long *prompt_tokens, long *completion_tokens,
                       char *id_out, size_t idlen, size_t *content_chars_out)
{
    if (prompt_tokens)
        *prompt_tokens = -1;
    if (completion_tokens)
        *completion_tokens = -1;
    if (id_out && idlen)
        id_out[0] = '\0';
    if (content_chars_out)
        *content_chars_out = 0;
    if (!body || len == 0)
        return BD_ERR_INVALID;
    int fast =
        usage_scan(body, len, prompt_tokens, completion_tokens, id_out, idlen, content_chars_out);
    if (fast != 1)
        return fast;
    if (util_json_prescan(body, len, 1000) != 0)
        return BD_ERR_INVALID;
    int oom;
    cJSON *root = parse_exact(body, len, &oom);
    if (!root)
        return oom ? BD_ERR_NOMEM : BD_ERR_INVALID;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return BD_ERR_INVALID;
    }
    if (id_out)
        copy_id(root, id_out, idlen);
    const cJSON *usage = member(root, "usage");
    if (cJSON_IsObject(usage)) {
        if (prompt_tokens)
            *prompt_tokens = token_count(usage, "prompt_tokens");
        if (completion_tokens)
            *completion_tokens = token_count(usage, "completion_tokens");
    }
    if (content_chars_out)
        *content_chars_out = choices_chars(member(root, "choices"));
    cJSON_Delete(root);
    return 0;
}

double openai_cost_usd(long prompt_tokens, long completion_tokens, double price_in_per_mtok,
                       double price_out_per_mtok)
{
    double pt = prompt_tokens > 0 ? (double)prompt_tokens : 0.0;
    double ct = completion_tokens > 0 ? (double)completion_tokens : 0.0;
    return (pt * price_in_per_mtok + ct * price_out_per_mtok) / 1e6;
}

long openai_estimate_tokens(size_t chars)
{
    if (chars == 0)
        return 0;
    size_t t = chars / 4;
    return t < 1 ? 1 : (long)t;
}

/* ---- SSE scanning ---- */

void openai_sse_init(struct openai_sse_scan *s)
{
    memset(s, 0, sizeof *s);
    s->prompt_tokens = -1;
    s->completion_tokens = -1;
}

void openai_sse_free(struct openai_sse_scan *s)
{
    free(s->line);
    s->line = NULL;
    s->line_len = s->line_cap = 0;
}

/* Handle one chunk's JSON payload (n bytes, no NUL inside). */
static void sse_json(struct openai_sse_scan *s, const char *p, size_t n)
{
    int oom;
    struct quick_tree q;
    cJSON *root = quick_parse(&q, p, n, &oom);
    if (!root)
        return; /* not JSON (or out of memory): ignored */
    if (cJSON_IsObject(root)) {
        if (!s->id[0])
            copy_id(root, s->id, sizeof s->id);
        const cJSON *usage = member(root, "usage");
        if (cJSON_IsObject(usage)) {
            long pt = token_count(usage, "prompt_tokens");
            long ct = token_count(usage, "completion_tokens");
            if (pt >= 0)
                s->prompt_tokens = pt;
            if (ct >= 0)
                s->completion_tokens = ct;
        }
        const cJSON *ch;
        cJSON_ArrayForEach(ch, member(root, "choices"))
        {
            s->content_chars += content_chars(member(member(ch, "delta"), "content"));
        }
    }
    quick_done(&q, root);
}

/* One complete line (without its terminator). */
static void sse_line(struct openai_sse_scan *s, const char *p, size_t n)
{
    if (n < 5 || memcmp(p, "data:", 5) != 0)
        return; /* comments, event:, id:, retry:, blank lines */
    p += 5;
    n -= 5;
    if (n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 6 && memcmp(p, "[DONE]", 6) == 0) {
        s->saw_done = 1;
        return;
    }
    if (n > 0 && memchr(p, '\0', n) == NULL)
        sse_json(s, p, n);
}

/* Append to the partial line; on overflow switch to skipping mode. */
static void sse_append(struct openai_sse_scan *s, const char *p, size_t n)
{
    if (n == 0 || (s->skipping & SSE_SKIPPING))
        return;
    if (n > SSE_LINE_MAX - s->line_len) {
        free(s->line); /* the line will never be complete: drop it */
        s->line = NULL;
        s->line_len = s->line_cap = 0;
        s->skipping |= SSE_SKIPPING;
        return;
    }
    if (s->line_len + n + 1 > s->line_cap) {
        size_t cap = s->line_cap ? s->line_cap : 4096;
        while (cap < s->line_len + n + 1)
            cap *= 2;
        if (cap > SSE_LINE_MAX + 1)
            cap = SSE_LINE_MAX + 1;
        char *nl = realloc(s->line, cap);
        if (!nl) { /* out of memory: treat like an over-long line */
            free(s->line);
            s->line = NULL;
            s->line_len = s->line_cap = 0;
            s->skipping |= SSE_SKIPPING;
            return;
        }
        s->line = nl;
        s->line_cap = cap;
    }
    memcpy(s->line + s->line_len, p, n);
    s->line_len += n;
    s->line[s->line_len] = '\0';
}

/* The current line ended. */
static void sse_end_line(struct openai_sse_scan *s, const char *p, size_t n)
{
    if (s->skipping & SSE_SKIPPING) {
        s->skipping &= ~SSE_SKIPPING;
    } else if (s->line_len == 0) {
        if (n <= SSE_LINE_MAX) /* whole line in this chunk: no copy */
            sse_line(s, p, n);
    } else {
        sse_append(s, p, n);
        if (!(s->skipping & SSE_SKIPPING))
            sse_line(s, s->line, s->line_len);
        s->skipping &= ~SSE_SKIPPING;
    }
    s->line_len = 0;
}

void openai_sse_feed(struct openai_sse_scan *s, const char *data, size_t len)
{
    /* '\n', '\r' and "\r\n" all end a line. A "\r\n" is seen as two line
     * ends with an empty line between them, which is harmless: empty lines
     * carry no data. So no state is needed across feeds for it. */
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && data[i] != '\n' && data[i] != '\r')
            i++;
        if (i == len) {
            sse_append(s, data + start, len - start);
            return;
        }
        sse_end_line(s, data + start, i - start);
        i++;
    }
}
