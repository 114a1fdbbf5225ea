/* decisions — pending routing decisions awaiting feedback.
 *
 * Layout: a pool of nodes addressed by 32-bit index (the pool grows by
 * doubling up to 2*max_entries nodes and recycles freed nodes through a free
 * list). Every node is either live (has features) or a tombstone (taken or
 * expired). Two chained hash tables index the nodes, one by request id and
 * one by completion id; the chains are intrusive (a link field per table in
 * the node). Two intrusive doubly linked lists keep age order: the live list
 * in insertion order (expiry and capacity eviction pop its head) and the
 * tombstone list in the order nodes became tombstones (purge and the bound pop
 * its head). Nothing on the request path scans more than one hash chain.
 *
 * A live node keeps its features in the store's exact compact form (xblob.h:
 * ~850 bytes instead of dim*8 = 2,048 for a chat request at dim=256), in one
 * malloc'd blob of the encoded length; decisions_find decodes it into a
 * scratch vector of ds, bit for bit the x that was added. */
#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/util.h"
#include "banditd/xblob.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX
#define MAX_ENTRIES_LIMIT ((size_t)1 << 30)
#define INITIAL_NODES 256
#define INITIAL_BUCKETS 256

enum node_state { NODE_FREE = 0, NODE_LIVE, NODE_TAKEN, NODE_EXPIRED };
enum { BY_ID = 0, BY_CID = 1 };

struct node {
    struct decision d;   /* d.x is always NULL: the features are xb */
    unsigned char *xb;   /* features blob (xblob.h); NULL for tombstones, free nodes */
    size_t xlen;         /* bytes in xb */
    double tomb_s;       /* when the node became a tombstone */
    uint64_t hash[2];    /* of d.id and d.completion_id */
    uint32_t chain[2];   /* next node in the same bucket of each table */
    uint32_t prev, next; /* age list (live or tombstone); next = free list */
    unsigned char state;
    unsigned char cid_indexed;
};

struct list {
    uint32_t head, tail; /* head = oldest */
    size_t n;
};

struct table {
    uint32_t *bucket;
    size_t mask; /* buckets - 1 (power of two) */
    size_t n;    /* nodes in the table */
};

struct decisions {
    int dim;
    size_t max_live, max_tombs, max_nodes;
    double ttl_s;
    double clock; /* latest time seen (add, find, expire) */
    struct node *nodes;
    size_t used, cap; /* indices [0, used) have been handed out; cap allocated */
    uint32_t free_head;
    struct list live, tombs;
    struct table tab[2];
    size_t evicted;
    unsigned char *enc;    /* dim*8: encoder output (decisions_add) */
    unsigned char *idx;    /* dim: encoder scratch */
    double *xout;          /* dim: the decoded x of *found */
    struct decision found; /* what decisions_find hands out */
};

static uint64_t key_hash(const char *key, size_t len)
{
    return util_fnv1a64(key, len, 0x5bd1e995u);
}

static const char *node_key(const struct node *n, int which)
{
    return which == BY_ID ? n->d.id : n->d.completion_id;
}

/* ---- hash tables ---- */

static int table_init(struct table *t)
{
    t->bucket = malloc(INITIAL_BUCKETS * sizeof *t->bucket);
    if (!t->bucket)
        return BD_ERR_NOMEM;
    for (size_t i = 0; i < INITIAL_BUCKETS; i++)
        t->bucket[i] = NIL;
    t->mask = INITIAL_BUCKETS - 1;
    t->n = 0;
    return BD_OK;
}

/* Double the buckets when the load would exceed 1. Failure is harmless: the
 * table keeps working with longer chains. */
static void table_maybe_grow(struct decisions *ds, int which)
{
    struct table *t = &ds->tab[which];
    size_t nb = t->mask + 1;
    if (t->n + 1 <= nb)
        return;
    size_t nnb = nb * 2;
    uint32_t *b = malloc(nnb * sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < nnb; i++)
        b[i] = NIL;
    for (size_t i = 0; i < nb; i++) {
        uint32_t k = t->bucket[i];
        while (k != NIL) {
            struct node *n = &ds->nodes[k];
            uint32_t next = n->chain[which];
            size_t h = (size_t)(n->hash[which] & (nnb - 1));
            n->chain[which] = b[h];
            b[h] = k;
            k = next;
        }
    }
    free(t->bucket);
    t->bucket = b;
    t->mask = nnb - 1;
}

static void table_insert(struct decisions *ds, int which, uint32_t idx)
{
    struct table *t = &ds->tab[which];
    struct node *n = &ds->nodes[idx];
    size_t h = (size_t)(n->hash[which] & t->mask);
    n->chain[which] = t->bucket[h];
    t->bucket[h] = idx;
    t->n++;
}

static uint32_t table_find(const struct decisions *ds, int which, const char *key, size_t len,
                           uint64_t hash)
{
    const struct table *t = &ds->tab[which];
    uint32_t k = t->bucket[hash & t->mask];
    while (k != NIL) {
        const struct node *n = &ds->nodes[k];
        if (n->hash[which] == hash && strncmp(node_key(n, which), key, len + 1) == 0)
            return k;
        k = n->chain[which];
    }
    return NIL;
}

static void table_remove(struct decisions *ds, int which, uint32_t idx)
{
    struct table *t = &ds->tab[which];
    uint32_t *link = &t->bucket[ds->nodes[idx].hash[which] & t->mask];
    while (*link != idx) {
        assert(*link != NIL && "node missing from its hash chain");
        link = &ds->nodes[*link].chain[which];
    }
    *link = ds->nodes[idx].chain[which];
    ds->nodes[idx].chain[which] = NIL;
    t->n--;
}

/* ---- age lists ---- */

static void list_push(struct decisions *ds, struct list *l, uint32_t idx)
{
    struct node *n = &ds->nodes[idx];
    n->prev = l->tail;
    n->next = NIL;
    if (l->tail != NIL)
        ds->nodes[l->tail].next = idx;
    else
        l->head = idx;
    l->tail = idx;
    l->n++;
}

static void list_unlink(struct decisions *ds, struct list *l, uint32_t idx)
{
    struct node *n = &ds->nodes[idx];
    if (n->prev != NIL)
        ds->nodes[n->prev].next = n->next;
    else
        l->head = n->next;
    if (n->next != NIL)
        ds->nodes[n->next].prev = n->prev;
    else
        l->tail = n->prev;
    n->prev = n->next = NIL;
    assert(l->n > 0);
    l->n--;
}

/* ---- node lifecycle ---- */

/* Make sure a node can be handed out without allocating. */
static int reserve_node(struct decisions *ds)
{
    if (ds->free_head != NIL || ds->used < ds->cap)
        return BD_OK;
    if (ds->cap >= ds->max_nodes)
        return BD_OK; /* eviction will free a tombstone node (see decisions_add) */
    size_t ncap = ds->cap ? ds->cap * 2 : INITIAL_NODES;
    if (ncap > ds->max_nodes)
        ncap = ds->max_nodes;
    struct node *p = realloc(ds->nodes, ncap * sizeof *p);
    if (!p)
        return BD_ERR_NOMEM;
    ds->nodes = p;
    ds->cap = ncap;
    return BD_OK;
}

static uint32_t node_alloc(struct decisions *ds)
{
    uint32_t idx;
    if (ds->free_head != NIL) {
        idx = ds->free_head;
        ds->free_head = ds->nodes[idx].next;
    } else {
        assert(ds->used < ds->cap);
        idx = (uint32_t)ds->used++;
    }
    struct node *n = &ds->nodes[idx];
    memset(n, 0, sizeof *n);
    n->chain[BY_ID] = n->chain[BY_CID] = NIL;
    n->prev = n->next = NIL;
    return idx;
}

/* Remove a tombstone entirely. */
static void tomb_drop(struct decisions *ds, uint32_t idx)
{
    struct node *n = &ds->nodes[idx];
    assert(n->state == NODE_TAKEN || n->state == NODE_EXPIRED);
    assert(n->xb == NULL);
    list_unlink(ds, &ds->tombs, idx);
    table_remove(ds, BY_ID, idx);
    if (n->cid_indexed)
        table_remove(ds, BY_CID, idx);
    n->state = NODE_FREE;
    n->cid_indexed = 0;
    n->next = ds->free_head;
    ds->free_head = idx;
}

/* Turn a live node into a tombstone of the given state; keeps the bound. */
static void make_tomb(struct decisions *ds, uint32_t idx, unsigned char state)
{
    struct node *n = &ds->nodes[idx];
    assert(n->state == NODE_LIVE);
    list_unlink(ds, &ds->live, idx);
    free(n->xb);
    n->xb = NULL;
    n->xlen = 0;
    n->state = state;
    n->tomb_s = ds->clock;
    list_push(ds, &ds->tombs, idx);
    while (ds->tombs.n > ds->max_tombs)
        tomb_drop(ds, ds->tombs.head);
}

static void see_time(struct decisions *ds, double t)
{
    if (isfinite(t) && t > ds->clock)
        ds->clock = t;
}

static int is_expired(const struct decisions *ds, double created_s, double now_s)
{
    return now_s - created_s > ds->ttl_s;
}

/* Look a key up as a request id, then as a completion id. */
static uint32_t lookup(const struct decisions *ds, const char *key)
{
    if (!key)
        return NIL;
    size_t len = strnlen(key, DECISIONS_ID_MAX);
    if (len == 0 || len >= DECISIONS_ID_MAX)
        return NIL;
    uint64_t h = key_hash(key, len);
    uint32_t idx = NIL;
    if (len < sizeof ds->nodes[0].d.id)
        idx = table_find(ds, BY_ID, key, len, h);
    if (idx == NIL)
        idx = table_find(ds, BY_CID, key, len, h);
    return idx;
}

/* ---- public API ---- */

decisions *decisions_create(int dim, size_t max_entries, double ttl_s)
{
    if (dim < 1 || max_entries < 1 || max_entries > MAX_ENTRIES_LIMIT || !isfinite(ttl_s) ||
        ttl_s <= 0)
        return NULL;
    decisions *ds = calloc(1, sizeof *ds);
    if (!ds)
        return NULL;
    ds->dim = dim;
    ds->max_live = max_entries;
    ds->max_tombs = max_entries;
    ds->max_nodes = ds->max_live + ds->max_tombs;
    ds->ttl_s = ttl_s;
    ds->clock = -INFINITY;
    ds->free_head = NIL;
    ds->live.head = ds->live.tail = NIL;
    ds->tombs.head = ds->tombs.tail = NIL;
    ds->enc = malloc((size_t)dim * sizeof(double));
    ds->idx = malloc((size_t)dim);
    ds->xout = malloc((size_t)dim * sizeof *ds->xout);
    if (!ds->enc || !ds->idx || !ds->xout || table_init(&ds->tab[BY_ID]) ||
        table_init(&ds->tab[BY_CID]) || reserve_node(ds)) {
        decisions_destroy(ds);
        return NULL;
    }
    return ds;
}

void decisions_destroy(decisions *ds)
{
    if (!ds)
        return;
    for (size_t i = 0; i < ds->used; i++)
        free(ds->nodes[i].xb); /* NULL except for live nodes */
    free(ds->nodes);
    free(ds->enc);
    free(ds->idx);
    free(ds->xout);
    free(ds->tab[BY_ID].bucket);
    free(ds->tab[BY_CID].bucket);
    free(ds);
}

int decisions_add(decisions *ds, const struct decision *d)
{
    assert(ds && d);
    size_t idlen = strnlen(d->id, sizeof d->id);
    if (idlen == 0 || idlen >= sizeof d->id || !d->x)
        return BD_ERR_INVALID;
    uint64_t h = key_hash(d->id, idlen);
    if (table_find(ds, BY_ID, d->id, idlen, h) != NIL)
        return BD_ERR_EXISTS;

    size_t cidlen = strnlen(d->completion_id, sizeof d->completion_id);
    int index_cid = 0;
    uint64_t ch = 0;
    if (cidlen > 0 && cidlen < sizeof d->completion_id) {
        ch = key_hash(d->completion_id, cidlen);
        index_cid = table_find(ds, BY_CID, d->completion_id, cidlen, ch) == NIL;
    }

    /* Every allocation happens before any state changes. */
    size_t xlen = xblob_encode(ds->enc, d->x, (size_t)ds->dim, ds->idx);
    unsigned char *xb = malloc(xlen);
    if (!xb)
        return BD_ERR_NOMEM;
    if (reserve_node(ds)) {
        free(xb);
        return BD_ERR_NOMEM;
    }
    memcpy(xb, ds->enc, xlen);
    table_maybe_grow(ds, BY_ID);
    if (index_cid)
        table_maybe_grow(ds, BY_CID);

    see_time(ds, d->created_s);
    if (ds->live.n >= ds->max_live) {
        make_tomb(ds, ds->live.head, NODE_EXPIRED);
        ds->evicted++;
    }
    /* live + tombs <= max_nodes - 1 now, so a node is available. */
    uint32_t idx = node_alloc(ds);
    struct node *n = &ds->nodes[idx];
    n->d = *d;
    n->d.id[idlen] = '\0';
    n->d.x = NULL;
    n->xb = xb;
    n->xlen = xlen;
    if (!index_cid)
        n->d.completion_id[0] = '\0';
    n->state = NODE_LIVE;
    n->hash[BY_ID] = h;
    table_insert(ds, BY_ID, idx);
    if (index_cid) {
        n->hash[BY_CID] = ch;
        n->cid_indexed = 1;
        table_insert(ds, BY_CID, idx);
    }
    list_push(ds, &ds->live, idx);
    return BD_OK;
}

/* The live decision with request id id (not a completion id), or NIL. */
static uint32_t live_by_id(const struct decisions *ds, const char *id)
{
    if (!id)
        return NIL;
    size_t idlen = strnlen(id, sizeof ds->nodes[0].d.id);
    if (idlen == 0 || idlen >= sizeof ds->nodes[0].d.id)
        return NIL;
    uint32_t idx = table_find(ds, BY_ID, id, idlen, key_hash(id, idlen));
    return idx != NIL && ds->nodes[idx].state == NODE_LIVE ? idx : NIL;
}

int decisions_complete(decisions *ds, const char *id, const char *completion_id, double cost_usd,
                       double latency_ms)
{
    assert(ds);
    uint32_t idx = live_by_id(ds, id);
    if (idx == NIL)
        return BD_ERR_NOTFOUND;
    struct node *n = &ds->nodes[idx];
    n->d.cost_usd = cost_usd;
    n->d.latency_ms = latency_ms;
    if (!completion_id)
        return BD_OK;

    size_t len = strnlen(completion_id, DECISIONS_ID_MAX);
    if (n->cid_indexed && len < DECISIONS_ID_MAX && strcmp(n->d.completion_id, completion_id) == 0)
        return BD_OK; /* unchanged */
    if (n->cid_indexed) {
        table_remove(ds, BY_CID, idx);
        n->cid_indexed = 0;
    }
    n->d.completion_id[0] = '\0';
    if (len == 0 || len >= DECISIONS_ID_MAX)
        return BD_OK; /* nothing to index */
    uint64_t h = key_hash(completion_id, len);
    if (table_find(ds, BY_CID, completion_id, len, h) != NIL)
        return BD_ERR_EXISTS;
    table_maybe_grow(ds, BY_CID);
    n = &ds->nodes[idx];
    memcpy(n->d.completion_id, completion_id, len + 1);
    n->hash[BY_CID] = h;
    n->cid_indexed = 1;
    table_insert(ds, BY_CID, idx);
    return BD_OK;
}

int decisions_find(decisions *ds, const char *key, double now_s, const struct decision **out)
{
    assert(ds && out);
    see_time(ds, now_s);
    uint32_t idx = lookup(ds, key);
    if (idx == NIL)
        return BD_ERR_NOTFOUND;
    const struct node *n = &ds->nodes[idx];
    switch (n->state) {
    case NODE_LIVE:
        if (is_expired(ds, n->d.created_s, now_s))
            return BD_ERR_EXPIRED;
        if (xblob_decode(ds->xout, n->xb, n->xlen, (size_t)ds->dim) != 0) {
            assert(!"a blob encoded by decisions_add does not decode");
            return BD_ERR_INTERNAL;
        }
        ds->found = n->d;
        ds->found.x = ds->xout;
        *out = &ds->found;
        return BD_OK;
    case NODE_TAKEN:
        return BD_ERR_EXISTS;
    case NODE_EXPIRED:
        return BD_ERR_EXPIRED;
    default:
        assert(!"free node reachable from an index");
        return BD_ERR_INTERNAL;
    }
}

int decisions_take(decisions *ds, const char *id)
{
    assert(ds);
    uint32_t idx = lookup(ds, id);
    if (idx == NIL || ds->nodes[idx].state != NODE_LIVE)
        return BD_ERR_NOTFOUND;
    make_tomb(ds, idx, NODE_TAKEN);
    return BD_OK;
}

size_t decisions_expire(decisions *ds, double now_s, size_t max_work)
{
    assert(ds);
    see_time(ds, now_s);
    size_t work = 0;
    while (work < max_work && ds->live.head != NIL &&
           is_expired(ds, ds->nodes[ds->live.head].d.created_s, now_s)) {
        make_tomb(ds, ds->live.head, NODE_EXPIRED);
        work++;
    }
    while (work < max_work && ds->tombs.head != NIL &&
           is_expired(ds, ds->nodes[ds->tombs.head].tomb_s, now_s)) {
        tomb_drop(ds, ds->tombs.head);
        work++;
    }
    return work;
}

int decisions_new_id(char out[33], double now_s)
{
    if (util_random_hex128(out) != BD_OK)
        return BD_ERR_IO;
    static const char hex[] = "0123456789abcdef";
    double ms = isfinite(now_s) && now_s > 0 ? floor(now_s * 1e3) : 0;
    uint64_t t = ms < 0x1p48 ? (uint64_t)ms : 0;
    for (int i = 11; i >= 0; i--, t >>= 4)
        out[i] = hex[t & 15];
    return BD_OK;
}

int decisions_xblob(const decisions *ds, const char *id, const unsigned char **blob, size_t *len)
{
    assert(ds && blob && len);
    uint32_t idx = live_by_id(ds, id);
    if (idx == NIL)
        return BD_ERR_NOTFOUND;
    *blob = ds->nodes[idx].xb;
    *len = ds->nodes[idx].xlen;
    return BD_OK;
}

size_t decisions_pending(const decisions *ds)
{
    return ds->live.n;
}

int decisions_dim(const decisions *ds)
{
    return ds->dim;
}

size_t decisions_evicted(const decisions *ds)
{
    return ds->evicted;
}

size_t decisions_tombstones(const decisions *ds)
{
    return ds->tombs.n;
}

size_t decisions_remap_arms(decisions *ds, const int *map, int n_old)
{
    assert(ds && map && n_old >= 0);
    size_t dropped = 0;
    uint32_t idx = ds->live.head;
    while (idx != NIL) {
        struct node *n = &ds->nodes[idx];
        uint32_t next = n->next;
        int arm = n->d.arm;
        int to = arm >= 0 && arm < n_old ? map[arm] : -1;
        if (to >= 0) {
            n->d.arm = to;
        } else {
            make_tomb(ds, idx, NODE_EXPIRED);
            dropped++;
        }
        idx = next;
    }
    return dropped;
}
