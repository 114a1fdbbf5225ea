/* Unit tests for decisions: lookups by both ids, TTL and tombstones, bounds,
 * incremental expiry, and 100k random operations checked against a naive
 * reference model (array scans, sequence numbers instead of lists). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/util.h"
#include "banditd/xblob.h"

#define DIM 4

static void mk(struct decision *d, const char *id, int arm, double t, double *x)
{
    memset(d, 0, sizeof *d);
    snprintf(d->id, sizeof d->id, "%s", id);
    d->arm = arm;
    d->created_s = t;
    for (int i = 0; i < DIM; i++)
        x[i] = arm * 10.0 + i;
    d->x = x;
    d->w.quality = 0.7;
    d->w.cost = 0.3;
}

static void idn(char out[33], int i)
{
    snprintf(out, 33, "%032x", (unsigned)i);
}

START_TEST(test_create_invalid)
{
    ck_assert_ptr_null(decisions_create(0, 10, 1));
    ck_assert_ptr_null(decisions_create(4, 0, 1));
    ck_assert_ptr_null(decisions_create(4, 10, 0));
    ck_assert_ptr_null(decisions_create(4, 10, -1));
    ck_assert_ptr_null(decisions_create(4, 10, 1.0 / 0.0));
    decisions *ds = decisions_create(4, 10, 1);
    ck_assert_ptr_nonnull(ds);
    ck_assert_int_eq(decisions_dim(ds), 4);
    ck_assert_uint_eq(decisions_pending(ds), 0);
    decisions_destroy(ds);
    decisions_destroy(NULL);
}
END_TEST

START_TEST(test_add_find_both_ids)
{
    decisions *ds = decisions_create(DIM, 100, 60);
    struct decision d;
    double x[DIM];
    mk(&d, "0123456789abcdef0123456789abcdef", 1, 1000, x);
    d.client = 42;
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    x[0] = -99; /* the store holds its own copy */
    ck_assert_uint_eq(decisions_pending(ds), 1);

    const struct decision *o = NULL;
    ck_assert_int_eq(decisions_find(ds, "0123456789abcdef0123456789abcdef", 1001, &o), 0);
    ck_assert_str_eq(o->id, "0123456789abcdef0123456789abcdef");
    ck_assert_int_eq(o->arm, 1);
    ck_assert_uint_eq(o->client, 42);
    ck_assert(o->x != x);
    ck_assert(o->x[0] == 10.0 && o->x[3] == 13.0);
    ck_assert(o->w.quality == 0.7);
    ck_assert_str_eq(o->completion_id, "");

    /* Completion id unknown until complete(). */
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-abc", 1001, &o), BD_ERR_NOTFOUND);
    ck_assert_int_eq(
        decisions_complete(ds, "0123456789abcdef0123456789abcdef", "chatcmpl-abc", 0.25, 812.5), 0);
    o = NULL;
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-abc", 1001, &o), 0);
    ck_assert_str_eq(o->id, "0123456789abcdef0123456789abcdef");
    ck_assert_str_eq(o->completion_id, "chatcmpl-abc");
    ck_assert(o->cost_usd == 0.25 && o->latency_ms == 812.5);

    /* Replacing the completion id unindexes the old one. */
    ck_assert_int_eq(
        decisions_complete(ds, "0123456789abcdef0123456789abcdef", "chatcmpl-xyz", 0.5, 1), 0);
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-abc", 1001, &o), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-xyz", 1001, &o), 0);
    /* NULL completion id: cost/latency only. */
    ck_assert_int_eq(decisions_complete(ds, "0123456789abcdef0123456789abcdef", NULL, 0.75, 2), 0);
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-xyz", 1001, &o), 0);
    ck_assert(o->cost_usd == 0.75 && o->latency_ms == 2);

    /* Unknown keys, empty key, NULL key, a prefix of a real id. */
    ck_assert_int_eq(decisions_find(ds, "ffffffffffffffffffffffffffffffff", 1001, &o),
                     BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_find(ds, "", 1001, &o), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_find(ds, NULL, 1001, &o), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_find(ds, "0123456789abcdef", 1001, &o), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_complete(ds, "nope", "chatcmpl-1", 0, 0), BD_ERR_NOTFOUND);
    decisions_destroy(ds);
}
END_TEST

START_TEST(test_completion_id_rules)
{
    decisions *ds = decisions_create(DIM, 100, 60);
    struct decision d;
    double x[DIM];
    char a[33], b[33];
    idn(a, 1);
    idn(b, 2);
    mk(&d, a, 0, 0, x);
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    mk(&d, b, 1, 0, x);
    ck_assert_int_eq(decisions_add(ds, &d), 0);

    /* Exactly DECISIONS_ID_MAX-1 chars is indexed; one more is not. */
    char longid[DECISIONS_ID_MAX + 1];
    memset(longid, 'c', DECISIONS_ID_MAX - 1);
    longid[DECISIONS_ID_MAX - 1] = '\0';
    ck_assert_int_eq(decisions_complete(ds, a, longid, 0, 0), 0);
    const struct decision *o;
    ck_assert_int_eq(decisions_find(ds, longid, 1, &o), 0);
    ck_assert_int_eq(o->arm, 0);
    longid[DECISIONS_ID_MAX - 1] = 'c';
    longid[DECISIONS_ID_MAX] = '\0';
    ck_assert_int_eq(decisions_complete(ds, b, longid, 0.1, 0), 0);
    ck_assert_int_eq(decisions_find(ds, longid, 1, &o), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_find(ds, b, 1, &o), 0);
    ck_assert_str_eq(o->completion_id, "");
    ck_assert(o->cost_usd == 0.1);

    /* A completion id held by another decision is not stolen. */
    ck_assert_int_eq(decisions_complete(ds, a, "chatcmpl-same", 0, 0), 0);
    ck_assert_int_eq(decisions_complete(ds, b, "chatcmpl-same", 0.2, 0), BD_ERR_EXISTS);
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-same", 1, &o), 0);
    ck_assert_int_eq(o->arm, 0);
    ck_assert_int_eq(decisions_find(ds, b, 1, &o), 0);
    ck_assert(o->cost_usd == 0.2);

    /* A completion id given at add time is indexed too. */
    char c[33];
    idn(c, 3);
    mk(&d, c, 1, 0, x);
    snprintf(d.completion_id, sizeof d.completion_id, "chatcmpl-at-add");
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-at-add", 1, &o), 0);
    ck_assert_str_eq(o->id, c);

    /* Invalid adds. */
    mk(&d, "", 0, 0, x);
    ck_assert_int_eq(decisions_add(ds, &d), BD_ERR_INVALID);
    idn(d.id, 9);
    d.x = NULL;
    ck_assert_int_eq(decisions_add(ds, &d), BD_ERR_INVALID);
    decisions_destroy(ds);
}
END_TEST

/* Features come back bit for bit through the compact form the table keeps
 * them in (xblob.h): -0.0, the smallest subnormal, ±DBL_MAX, a NaN payload
 * (the table does not judge values), a 256-distinct-value vector (raw form)
 * and an all-zero one. decisions_xblob hands out that very blob; a taken
 * decision has none. A corrupt blob is refused by the decoder. */
START_TEST(test_exact_features)
{
    enum { BIGD = 256 };
    decisions *ds = decisions_create(BIGD, 16, 60);
    static double x[3][BIGD], y[BIGD];
    uint64_t nan_bits = 0x7ff8000000c0ffeeull;
    for (int i = 0; i < BIGD; i++)
        x[0][i] = i % 5 == 0 ? 0.0 : ((i * 13) % 23 - 11) / 37.0;
    x[0][1] = -0.0;
    x[0][2] = 4.9406564584124654e-324;
    x[0][3] = -1.7976931348623157e308;
    x[0][4] = 1.7976931348623157e308;
    memcpy(&x[0][6], &nan_bits, 8);
    for (int i = 0; i < BIGD; i++)
        x[1][i] = 1.0 + i * 0x1p-40; /* 256 distinct values */
    /* x[2]: all +0.0 */
    static unsigned char enc[BIGD * 8], idx[BIGD];
    const size_t want_len[3] = {0, BIGD * 8, 2 + BIGD};
    for (int k = 0; k < 3; k++) {
        struct decision d;
        memset(&d, 0, sizeof d);
        snprintf(d.id, sizeof d.id, "x%d", k);
        d.x = x[k];
        d.created_s = 1;
        ck_assert_int_eq(decisions_add(ds, &d), 0);
        const unsigned char *blob = NULL;
        size_t len = 0;
        ck_assert_int_eq(decisions_xblob(ds, d.id, &blob, &len), 0);
        ck_assert_uint_eq(len, xblob_encode(enc, x[k], BIGD, idx));
        ck_assert_int_eq(memcmp(blob, enc, len), 0);
        if (want_len[k])
            ck_assert_uint_eq(len, want_len[k]);
        else
            ck_assert_uint_lt(len, BIGD * 4); /* dictionary form */
        ck_assert_int_eq(xblob_decode(y, blob, len, BIGD), 0);
        ck_assert_int_eq(memcmp(y, x[k], sizeof y), 0);
    }
    for (int k = 0; k < 3; k++) {
        char id[8];
        snprintf(id, sizeof id, "x%d", k);
        const struct decision *o = NULL;
        ck_assert_int_eq(decisions_find(ds, id, 2, &o), 0);
        ck_assert_int_eq(memcmp(o->x, x[k], sizeof x[k]), 0);
    }
    const unsigned char *blob = NULL;
    size_t len = 0;
    ck_assert_int_eq(decisions_take(ds, "x0"), 0);
    ck_assert_int_eq(decisions_xblob(ds, "x0", &blob, &len), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_xblob(ds, "nope", &blob, &len), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_xblob(ds, NULL, &blob, &len), BD_ERR_NOTFOUND);

    len = xblob_encode(enc, x[0], BIGD, idx);
    ck_assert_int_eq(xblob_decode(y, enc, len - 1, BIGD), BD_ERR_CORRUPT);
    ck_assert_int_eq(xblob_decode(y, NULL, len, BIGD), BD_ERR_CORRUPT);
    enc[len - 1] = (unsigned char)(enc[1] + 1); /* an index beyond k */
    ck_assert_int_eq(xblob_decode(y, enc, len, BIGD), BD_ERR_CORRUPT);
    enc[0] = 0;
    ck_assert_int_eq(xblob_decode(y, enc, len, BIGD), BD_ERR_CORRUPT);
    decisions_destroy(ds);
}
END_TEST

/* Request ids: 32 hex digits, the first 12 the clock in ms (so ids sort by
 * time), the rest random (two ids of the same ms differ). */
START_TEST(test_new_id)
{
    char a[33], b[33], c[33];
    ck_assert_int_eq(decisions_new_id(a, 1764300000.1234), 0);
    ck_assert_int_eq(decisions_new_id(b, 1764300000.1234), 0);
    ck_assert_int_eq(decisions_new_id(c, 1764300000.1244), 0);
    ck_assert_uint_eq(strlen(a), 32);
    ck_assert_uint_eq(strspn(a, "0123456789abcdef"), 32);
    char want[13];
    snprintf(want, sizeof want, "%012llx", 1764300000123ULL);
    ck_assert_int_eq(strncmp(a, want, 12), 0);
    ck_assert_int_eq(strncmp(b, want, 12), 0);
    ck_assert_str_ne(a, b);
    ck_assert_int_lt(strcmp(a, c), 0);
    ck_assert_int_eq(decisions_new_id(a, -1), 0); /* a clock before 1970: prefix 0 */
    ck_assert_int_eq(strncmp(a, "000000000000", 12), 0);
}
END_TEST

START_TEST(test_duplicate_id)
{
    decisions *ds = decisions_create(DIM, 10, 60);
    struct decision d;
    double x[DIM];
    mk(&d, "aa", 0, 0, x);
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    mk(&d, "aa", 1, 0, x);
    ck_assert_int_eq(decisions_add(ds, &d), BD_ERR_EXISTS);
    const struct decision *o;
    ck_assert_int_eq(decisions_find(ds, "aa", 0, &o), 0);
    ck_assert_int_eq(o->arm, 0); /* the first one stays */
    ck_assert_uint_eq(decisions_pending(ds), 1);
    /* A tombstoned id cannot be reused either. */
    ck_assert_int_eq(decisions_take(ds, "aa"), 0);
    ck_assert_int_eq(decisions_add(ds, &d), BD_ERR_EXISTS);
    decisions_destroy(ds);
}
END_TEST

START_TEST(test_ttl_boundary)
{
    decisions *ds = decisions_create(DIM, 10, 10);
    struct decision d;
    double x[DIM];
    mk(&d, "t1", 0, 100, x);
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    const struct decision *o;
    ck_assert_int_eq(decisions_find(ds, "t1", 109.999, &o), 0);
    ck_assert_int_eq(decisions_find(ds, "t1", 110, &o), 0); /* exactly ttl old: still valid */
    ck_assert_int_eq(decisions_find(ds, "t1", 110.5, &o), BD_ERR_EXPIRED);
    /* Before the purge it is still a live (expired) entry. */
    ck_assert_uint_eq(decisions_pending(ds), 1);
    ck_assert_uint_eq(decisions_expire(ds, 110, 100), 0);
    ck_assert_uint_eq(decisions_expire(ds, 110.5, 100), 1);
    ck_assert_uint_eq(decisions_pending(ds), 0);
    ck_assert_uint_eq(decisions_tombstones(ds), 1);
    /* Late feedback answers 410 for another ttl after the purge... */
    ck_assert_int_eq(decisions_find(ds, "t1", 120, &o), BD_ERR_EXPIRED);
    ck_assert_int_eq(decisions_take(ds, "t1"), BD_ERR_NOTFOUND);
    ck_assert_uint_eq(decisions_expire(ds, 120.5, 100), 0);
    ck_assert_int_eq(decisions_find(ds, "t1", 120.5, &o), BD_ERR_EXPIRED);
    /* ...then it is forgotten. */
    ck_assert_uint_eq(decisions_expire(ds, 120.75, 100), 1);
    ck_assert_uint_eq(decisions_tombstones(ds), 0);
    ck_assert_int_eq(decisions_find(ds, "t1", 121, &o), BD_ERR_NOTFOUND);
    decisions_destroy(ds);
}
END_TEST

START_TEST(test_take_then_exists)
{
    decisions *ds = decisions_create(DIM, 10, 10);
    struct decision d;
    double x[DIM];
    mk(&d, "k1", 1, 0, x);
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    ck_assert_int_eq(decisions_complete(ds, "k1", "chatcmpl-k1", 0, 0), 0);
    const struct decision *o;
    ck_assert_int_eq(decisions_find(ds, "k1", 1.5, &o), 0); /* feedback arrives at t=1.5 */
    ck_assert_int_eq(decisions_take(ds, "k1"), 0);
    ck_assert_uint_eq(decisions_pending(ds), 0);
    ck_assert_uint_eq(decisions_tombstones(ds), 1);
    ck_assert_int_eq(decisions_find(ds, "k1", 2, &o), BD_ERR_EXISTS);
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-k1", 2, &o), BD_ERR_EXISTS);
    ck_assert_int_eq(decisions_take(ds, "k1"), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_take(ds, "zz"), BD_ERR_NOTFOUND);
    /* complete() after feedback (a stream whose feedback came first). */
    ck_assert_int_eq(decisions_complete(ds, "k1", "chatcmpl-k2", 0, 0), BD_ERR_NOTFOUND);
    /* Still 409 (not 410) past the decision's own ttl, until ttl after the take. */
    ck_assert_int_eq(decisions_find(ds, "k1", 10.5, &o), BD_ERR_EXISTS);
    ck_assert_uint_eq(decisions_expire(ds, 10.5, 100), 0);
    ck_assert_int_eq(decisions_find(ds, "k1", 10.5, &o), BD_ERR_EXISTS);
    ck_assert_uint_eq(decisions_expire(ds, 11.5, 100), 0); /* exactly ttl after the take */
    ck_assert_int_eq(decisions_find(ds, "k1", 11.5, &o), BD_ERR_EXISTS);
    ck_assert_uint_eq(decisions_expire(ds, 11.75, 100), 1);
    ck_assert_int_eq(decisions_find(ds, "k1", 11.75, &o), BD_ERR_NOTFOUND);
    ck_assert_int_eq(decisions_find(ds, "chatcmpl-k1", 11.75, &o), BD_ERR_NOTFOUND);

    /* take by completion id works too. */
    mk(&d, "k3", 0, 20, x);
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    ck_assert_int_eq(decisions_complete(ds, "k3", "chatcmpl-k3", 0, 0), 0);
    ck_assert_int_eq(decisions_take(ds, "chatcmpl-k3"), 0);
    ck_assert_int_eq(decisions_find(ds, "k3", 20, &o), BD_ERR_EXISTS);
    decisions_destroy(ds);
}
END_TEST

START_TEST(test_capacity_eviction)
{
    decisions *ds = decisions_create(DIM, 3, 100);
    struct decision d;
    double x[DIM];
    char id[33];
    for (int i = 0; i < 4; i++) {
        idn(id, i);
        mk(&d, id, i, i, x);
        ck_assert_int_eq(decisions_add(ds, &d), 0);
    }
    ck_assert_uint_eq(decisions_pending(ds), 3);
    ck_assert_uint_eq(decisions_evicted(ds), 1);
    const struct decision *o;
    idn(id, 0);
    ck_assert_int_eq(decisions_find(ds, id, 4, &o), BD_ERR_EXPIRED);
    for (int i = 1; i < 4; i++) {
        idn(id, i);
        ck_assert_int_eq(decisions_find(ds, id, 4, &o), 0);
        ck_assert_int_eq(o->arm, i);
    }
    /* Taking one frees a slot: the next add evicts nothing. */
    idn(id, 2);
    ck_assert_int_eq(decisions_take(ds, id), 0);
    idn(id, 4);
    mk(&d, id, 4, 4, x);
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    ck_assert_uint_eq(decisions_evicted(ds), 1);
    /* The next one evicts the oldest live one (1), not the tombstone (2). */
    idn(id, 5);
    mk(&d, id, 5, 5, x);
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    ck_assert_uint_eq(decisions_evicted(ds), 2);
    idn(id, 1);
    ck_assert_int_eq(decisions_find(ds, id, 5, &o), BD_ERR_EXPIRED);
    idn(id, 3);
    ck_assert_int_eq(decisions_find(ds, id, 5, &o), 0);
    decisions_destroy(ds);
}
END_TEST

START_TEST(test_tombstone_bound)
{
    decisions *ds = decisions_create(DIM, 3, 100);
    struct decision d;
    double x[DIM];
    char id[33];
    for (int i = 0; i < 5; i++) {
        idn(id, i);
        mk(&d, id, 0, i, x);
        ck_assert_int_eq(decisions_add(ds, &d), 0);
        ck_assert_int_eq(decisions_take(ds, id), 0);
        ck_assert_uint_le(decisions_tombstones(ds), 3);
    }
    ck_assert_uint_eq(decisions_tombstones(ds), 3);
    ck_assert_uint_eq(decisions_pending(ds), 0);
    const struct decision *o;
    for (int i = 0; i < 5; i++) {
        idn(id, i);
        ck_assert_int_eq(decisions_find(ds, id, 5, &o), i < 2 ? BD_ERR_NOTFOUND : BD_ERR_EXISTS);
    }
    /* Many more: memory stays bounded by the node pool (no leak under ASan). */
    for (int i = 5; i < 20000; i++) {
        idn(id, i);
        mk(&d, id, 0, i, x);
        ck_assert_int_eq(decisions_add(ds, &d), 0);
        if (i % 2)
            ck_assert_int_eq(decisions_take(ds, id), 0);
    }
    /* 19999 evicted 19994 and was then taken: 19996 and 19998 are live. */
    ck_assert_uint_eq(decisions_pending(ds), 2);
    ck_assert_uint_eq(decisions_tombstones(ds), 3);
    /* Evens 6..19998 were never taken: all but the two live ones got evicted. */
    ck_assert_uint_eq(decisions_evicted(ds), (19998 - 6) / 2 + 1 - 2);
    decisions_destroy(ds);
}
END_TEST

START_TEST(test_expire_max_work)
{
    decisions *ds = decisions_create(DIM, 100, 1);
    struct decision d;
    double x[DIM];
    char id[33];
    for (int i = 0; i < 10; i++) {
        idn(id, i);
        mk(&d, id, 0, 0, x);
        ck_assert_int_eq(decisions_add(ds, &d), 0);
    }
    idn(id, 10);
    mk(&d, id, 0, 4.5, x); /* not expired at t=5 */
    ck_assert_int_eq(decisions_add(ds, &d), 0);

    ck_assert_uint_eq(decisions_expire(ds, 5, 0), 0);
    ck_assert_uint_eq(decisions_expire(ds, 5, 3), 3);
    ck_assert_uint_eq(decisions_pending(ds), 8);
    ck_assert_uint_eq(decisions_tombstones(ds), 3);
    ck_assert_uint_eq(decisions_expire(ds, 5, 3), 3);
    ck_assert_uint_eq(decisions_expire(ds, 5, 3), 3);
    ck_assert_uint_eq(decisions_expire(ds, 5, 3), 1); /* only 1 expired left */
    ck_assert_uint_eq(decisions_pending(ds), 1);
    ck_assert_uint_eq(decisions_tombstones(ds), 10);
    /* Tombstones made at t=5 go after t=6; the live one (4.5) expires too. */
    ck_assert_uint_eq(decisions_expire(ds, 6, 100), 1);
    ck_assert_uint_eq(decisions_pending(ds), 0);
    ck_assert_uint_eq(decisions_expire(ds, 6.5, 4), 4);
    ck_assert_uint_eq(decisions_tombstones(ds), 7);
    ck_assert_uint_eq(decisions_expire(ds, 6.5, 100), 6);
    /* The one tombstoned at t=6 stays until after t=7. */
    ck_assert_uint_eq(decisions_tombstones(ds), 1);
    idn(id, 10);
    const struct decision *o;
    ck_assert_int_eq(decisions_find(ds, id, 7, &o), BD_ERR_EXPIRED);
    ck_assert_uint_eq(decisions_expire(ds, 7.01, 100), 1);
    ck_assert_int_eq(decisions_find(ds, id, 7.01, &o), BD_ERR_NOTFOUND);
    decisions_destroy(ds);
}
END_TEST

/* ---- reference model: a flat array, every query a linear scan ---- */

enum { R_FREE = 0, R_LIVE, R_TAKEN, R_EXPIRED };

struct rrec {
    int state;
    char id[33];
    char cid[DECISIONS_ID_MAX];
    int arm;
    double created, tomb_s, cost;
    unsigned long live_seq, tomb_seq;
};

struct ref {
    struct rrec *r;
    size_t n; /* slots */
    size_t max;
    double ttl, clock;
    unsigned long seq;
    size_t evicted;
    size_t nlive, ntomb;
};

/* Counts are kept by the model's own state changes (set_state). */
static size_t ref_count(const struct ref *m, int live)
{
    return live ? m->nlive : m->ntomb;
}

static void set_state(struct ref *m, struct rrec *r, int state)
{
    m->nlive -= r->state == R_LIVE;
    m->ntomb -= r->state == R_TAKEN || r->state == R_EXPIRED;
    r->state = state;
    m->nlive += state == R_LIVE;
    m->ntomb += state == R_TAKEN || state == R_EXPIRED;
}

static struct rrec *ref_oldest(struct ref *m, int live)
{
    struct rrec *best = NULL;
    for (size_t i = 0; i < m->n; i++) {
        struct rrec *r = &m->r[i];
        if (live && r->state == R_LIVE && (!best || r->live_seq < best->live_seq))
            best = r;
        if (!live && (r->state == R_TAKEN || r->state == R_EXPIRED) &&
            (!best || r->tomb_seq < best->tomb_seq))
            best = r;
    }
    return best;
}

static void ref_tomb(struct ref *m, struct rrec *r, int state)
{
    set_state(m, r, state);
    r->tomb_s = m->clock;
    r->tomb_seq = ++m->seq;
    if (ref_count(m, 0) > m->max)
        set_state(m, ref_oldest(m, 0), R_FREE);
}

static void ref_see(struct ref *m, double t)
{
    if (t > m->clock)
        m->clock = t;
}

static struct rrec *ref_lookup(struct ref *m, const char *key)
{
    if (!key[0])
        return NULL;
    for (size_t i = 0; i < m->n; i++)
        if (m->r[i].state != R_FREE && strcmp(m->r[i].id, key) == 0)
            return &m->r[i];
    for (size_t i = 0; i < m->n; i++)
        if (m->r[i].state != R_FREE && m->r[i].cid[0] && strcmp(m->r[i].cid, key) == 0)
            return &m->r[i];
    return NULL;
}

static int ref_add(struct ref *m, const char *id, int arm, double t)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->r[i].state != R_FREE && strcmp(m->r[i].id, id) == 0)
            return BD_ERR_EXISTS;
    ref_see(m, t);
    if (ref_count(m, 1) >= m->max) {
        ref_tomb(m, ref_oldest(m, 1), R_EXPIRED);
        m->evicted++;
    }
    for (size_t i = 0; i < m->n; i++) {
        struct rrec *r = &m->r[i];
        if (r->state == R_FREE) {
            memset(r, 0, sizeof *r);
            set_state(m, r, R_LIVE);
            snprintf(r->id, sizeof r->id, "%s", id);
            r->arm = arm;
            r->created = t;
            r->live_seq = ++m->seq;
            return 0;
        }
    }
    ck_abort_msg("reference model out of slots");
    return BD_ERR_INTERNAL;
}

static int ref_complete(struct ref *m, const char *id, const char *cid, double cost)
{
    struct rrec *r = NULL;
    for (size_t i = 0; i < m->n; i++)
        if (m->r[i].state != R_FREE && strcmp(m->r[i].id, id) == 0)
            r = &m->r[i];
    if (!r || r->state != R_LIVE)
        return BD_ERR_NOTFOUND;
    r->cost = cost;
    if (strcmp(r->cid, cid) == 0)
        return 0;
    r->cid[0] = '\0';
    for (size_t i = 0; i < m->n; i++)
        if (m->r[i].state != R_FREE && strcmp(m->r[i].cid, cid) == 0)
            return BD_ERR_EXISTS;
    snprintf(r->cid, sizeof r->cid, "%s", cid);
    return 0;
}

static int ref_find(struct ref *m, const char *key, double now, struct rrec **out)
{
    ref_see(m, now);
    struct rrec *r = ref_lookup(m, key);
    if (!r)
        return BD_ERR_NOTFOUND;
    if (r->state == R_TAKEN)
        return BD_ERR_EXISTS;
    if (r->state == R_EXPIRED || now - r->created > m->ttl)
        return BD_ERR_EXPIRED;
    *out = r;
    return 0;
}

static int ref_take(struct ref *m, const char *key)
{
    struct rrec *r = ref_lookup(m, key);
    if (!r || r->state != R_LIVE)
        return BD_ERR_NOTFOUND;
    ref_tomb(m, r, R_TAKEN);
    return 0;
}

static size_t ref_expire(struct ref *m, double now, size_t max_work)
{
    ref_see(m, now);
    size_t work = 0;
    struct rrec *r;
    while (work < max_work && (r = ref_oldest(m, 1)) && now - r->created > m->ttl) {
        ref_tomb(m, r, R_EXPIRED);
        work++;
    }
    while (work < max_work && (r = ref_oldest(m, 0)) && now - r->tomb_s > m->ttl) {
        set_state(m, r, R_FREE);
        work++;
    }
    return work;
}

/* Check records every passing ck_assert (a write per call); the 100k-op loop
 * only calls into Check when something fails. */
#define EXPECT(c)                                                                                  \
    do {                                                                                           \
        if (!(c))                                                                                  \
            ck_abort_msg("op %d: %s", op, #c);                                                     \
    } while (0)
#define EXPECT_MSG(c, ...)                                                                         \
    do {                                                                                           \
        if (!(c))                                                                                  \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)
#define EXPECT_EQ(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            ck_abort_msg("op %d: %s == %lld, %s == %lld", op, #a, a_, #b, b_);                     \
    } while (0)

START_TEST(test_random_vs_reference)
{
    const size_t max = 40;
    const double ttl = 5.0;
    decisions *ds = decisions_create(DIM, max, ttl);
    struct ref m = {.r = calloc(2 * max + 1, sizeof(struct rrec)),
                    .n = 2 * max + 1,
                    .max = max,
                    .ttl = ttl,
                    .clock = -1e300};
    ck_assert_ptr_nonnull(m.r);
    struct util_rng rng;
    util_rng_seed(&rng, 20240601);
    double now = 0;
    size_t counts[8] = {0};
    for (int op = 0; op < 100000; op++) {
        now += util_rng_uniform(&rng) * 0.1;
        char id[33], cid[DECISIONS_ID_MAX], key[DECISIONS_ID_MAX];
        int k = (int)(util_rng_next(&rng) % 300);
        idn(id, k);
        snprintf(cid, sizeof cid, "chatcmpl-%d", (int)(util_rng_next(&rng) % 300));
        if (util_rng_uniform(&rng) < 0.5)
            snprintf(key, sizeof key, "%s", id);
        else
            snprintf(key, sizeof key, "chatcmpl-%d", k);
        int what = (int)(util_rng_next(&rng) % 100);
        if (what < 30) {
            /* created times are mostly "now", sometimes a little in the past */
            double t = now - (util_rng_uniform(&rng) < 0.1 ? util_rng_uniform(&rng) * 3 : 0);
            struct decision d;
            double x[DIM];
            mk(&d, id, k % 7, t, x);
            int rc = decisions_add(ds, &d);
            EXPECT_EQ(rc, ref_add(&m, id, k % 7, t));
            counts[0] += rc == 0;
        } else if (what < 45) {
            double cost = util_rng_uniform(&rng);
            int rc = decisions_complete(ds, id, cid, cost, 1);
            EXPECT_EQ(rc, ref_complete(&m, id, cid, cost));
            counts[1] += rc == 0;
        } else if (what < 75) {
            const struct decision *o = NULL;
            struct rrec *r = NULL;
            int rc = decisions_find(ds, key, now, &o);
            int rrc = ref_find(&m, key, now, &r);
            EXPECT_MSG(rc == rrc, "op %d find %s: %d vs ref %d", op, key, rc, rrc);
            if (rc == 0) {
                EXPECT(strcmp(o->id, r->id) == 0);
                EXPECT(strcmp(o->completion_id, r->cid) == 0);
                EXPECT_EQ(o->arm, r->arm);
                EXPECT(o->created_s == r->created && o->cost_usd == r->cost);
                for (int i = 0; i < DIM; i++)
                    EXPECT(o->x[i] == r->arm * 10.0 + i);
            }
            counts[2 + (rc == 0 ? 0 : rc == BD_ERR_EXISTS ? 1 : rc == BD_ERR_EXPIRED ? 2 : 3)]++;
        } else if (what < 90) {
            int rc = decisions_take(ds, key);
            EXPECT_EQ(rc, ref_take(&m, key));
            counts[6] += rc == 0;
        } else {
            size_t mw = util_rng_next(&rng) % 4;
            size_t got = decisions_expire(ds, now, mw);
            EXPECT_EQ(got, ref_expire(&m, now, mw));
            EXPECT((got) <= (mw));
            counts[7] += got;
        }
        EXPECT_EQ(decisions_pending(ds), ref_count(&m, 1));
        EXPECT_EQ(decisions_tombstones(ds), ref_count(&m, 0));
        EXPECT_EQ(decisions_evicted(ds), m.evicted);
        EXPECT((decisions_pending(ds)) <= (max));
        EXPECT((decisions_tombstones(ds)) <= (max));
    }
    /* Every path was exercised a fair number of times. */
    for (int i = 0; i < 8; i++)
        ck_assert_msg(counts[i] > 50, "path %d exercised only %zu times", i, counts[i]);
    ck_assert_uint_gt(m.evicted, 100);
    free(m.r);
    decisions_destroy(ds);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("decisions");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_create_invalid);
    tcase_add_test(tc, test_add_find_both_ids);
    tcase_add_test(tc, test_completion_id_rules);
    tcase_add_test(tc, test_exact_features);
    tcase_add_test(tc, test_new_id);
    tcase_add_test(tc, test_duplicate_id);
    tcase_add_test(tc, test_ttl_boundary);
    tcase_add_test(tc, test_take_then_exists);
    tcase_add_test(tc, test_capacity_eviction);
    tcase_add_test(tc, test_tombstone_bound);
    tcase_add_test(tc, test_expire_max_work);
    tcase_add_test(tc, test_random_vs_reference);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
