/*
 * txnops.c -- every lmc_write_fn callback: the body of a write txn.
 *
 * These run inside lmc_env_write with the GIL released (or inside this
 * thread's explicit transaction).  They touch no Python object and call no
 * Py* function -- tests/test_csrc_lint.py checks this file for it -- so memory
 * comes from malloc, keys and values arrive encoded (lmc_kref, lmc_value),
 * and results go back through the arg structs.
 *
 * Corrupt records (lmc_lookup -> LMC_CORRUPT): writes may replace them (set,
 * add, delete, clear); read-modify-writes (incr, touch) refuse with
 * LMC_ERR_CORRUPT, which the caller raises as CorruptError.
 */
#include "lmdbcache.h"

#include <stdlib.h>
#include <string.h>

int lmc_noop_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    (void)txn;
    (void)e;
    (void)arg;
    return 0; /* the LRU log is flushed by env_run before this */
}

int lmc_ns_open_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    lmc_ns_arg *a = arg;
    return lmc_ns_open_in(e, txn, a->dbname, a->create, &a->dbi);
}

/* ---- put ---------------------------------------------------------------------- */

static int put_one(MDB_txn *txn, lmc_env *e, lmc_put_arg *a, Py_ssize_t i)
{
    MDB_val v;
    uint64_t seq = 0;
    int rc, evicts = lmc_env_evicts(e);

    v.mv_size = lmc_value_size(&a->vals[i]);
    v.mv_data = NULL;
    rc = mdb_put(txn, a->dbi, &a->keys[i].val, &v, MDB_RESERVE);
    if (rc != 0)
        return rc;
    if (evicts)
        seq = lmc_evict_next_seq(e, txn);
    lmc_value_write(&a->vals[i], v.mv_data, seq, a->dbname, &a->keys[i].val, lmc_env_mac(e));
    if (evicts)
        rc = lmc_evict_note(txn, e, a->dbname, &a->keys[i].val, seq);
    return rc;
}

typedef struct {
    const MDB_val *key;
    Py_ssize_t index;
} put_order;

/* LMDB's default key order (memcmp, then length); equal keys keep call order
 * so the last value given for a key wins. */
static int put_order_cmp(const void *pa, const void *pb)
{
    const put_order *a = pa, *b = pb;
    size_t n = a->key->mv_size < b->key->mv_size ? a->key->mv_size : b->key->mv_size;
    int c = memcmp(a->key->mv_data, b->key->mv_data, n);
    if (c == 0)
        c = (a->key->mv_size > b->key->mv_size) - (a->key->mv_size < b->key->mv_size);
    if (c == 0)
        c = (a->index > b->index) - (a->index < b->index);
    return c;
}

/* A batch: in key order through one cursor, so each insert searches from the
 * leaf page the previous one left the cursor on instead of from the root. */
static int put_batch(MDB_txn *txn, lmc_env *e, lmc_put_arg *a)
{
    put_order *order;
    MDB_cursor *cur = NULL;
    MDB_val v;
    Py_ssize_t i, j;
    uint64_t seq = 0;
    int rc, evicts = lmc_env_evicts(e);

    order = malloc((size_t)a->n * sizeof(*order));
    if (order == NULL)
        return ENOMEM;
    for (i = 0; i < a->n; i++) {
        order[i].key = &a->keys[i].val;
        order[i].index = i;
    }
    qsort(order, (size_t)a->n, sizeof(*order), put_order_cmp);
    rc = mdb_cursor_open(txn, a->dbi, &cur);
    for (j = 0; rc == 0 && j < a->n; j++) {
        i = order[j].index;
        v.mv_size = lmc_value_size(&a->vals[i]);
        v.mv_data = NULL;
        rc = mdb_cursor_put(cur, &a->keys[i].val, &v, MDB_RESERVE);
        if (rc != 0)
            break;
        if (evicts)
            seq = lmc_evict_next_seq(e, txn);
        lmc_value_write(&a->vals[i], v.mv_data, seq, a->dbname, &a->keys[i].val,
                        lmc_env_mac(e));
        if (evicts)
            rc = lmc_evict_note(txn, e, a->dbname, &a->keys[i].val, seq);
    }
    if (cur != NULL)
        mdb_cursor_close(cur);
    free(order);
    return rc;
}

int lmc_put_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    lmc_put_arg *a = arg;
    lmc_record rec;
    const char *why;
    int rc, status;

    if (a->n > 1)
        return put_batch(txn, e, a);
    if (a->mode == LMC_PUT_ADD) {
        a->added = 0;
        rc = lmc_lookup(e, txn, a->dbi, a->dbname, &a->keys[0], &rec, &status, &why);
        if (rc != 0)
            return rc;
        if (status == LMC_LIVE)
            return 0; /* present: nothing to do (a corrupt record is replaced) */
        a->added = 1;
    }
    return put_one(txn, e, a, 0);
}

/* ---- delete --------------------------------------------------------------------- */

/* Delete one key.  Returns 1 deleted, 0 absent (expired ones are deleted
 * too but count as absent), or an LMDB code (< 0 or an errno). */
static int del_one(MDB_txn *txn, lmc_env *e, lmc_del_arg *a, Py_ssize_t i)
{
    MDB_val k = a->keys[i].val, v;
    lmc_record rec;
    const char *why;
    int rc, status;

    rc = lmc_lookup(e, txn, a->dbi, a->dbname, &a->keys[i], &rec, &status, &why);
    if (rc != 0)
        return rc;
    if (status == LMC_ABSENT)
        return 0;
    if (status == LMC_CORRUPT && a->want_old)
        a->old_why = why;
    else if (status != LMC_EXPIRED && a->want_old) {
        rc = mdb_get(txn, a->dbi, &k, &v);
        if (rc != 0)
            return rc;
        a->old = malloc(v.mv_size ? v.mv_size : 1);
        if (a->old == NULL)
            return ENOMEM;
        memcpy(a->old, v.mv_data, v.mv_size);
        a->old_len = v.mv_size;
    }
    rc = mdb_del(txn, a->dbi, &k, NULL);
    return rc != 0 ? rc : status != LMC_EXPIRED;
}

int lmc_del_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    lmc_del_arg *a = arg;
    Py_ssize_t i;
    int rc;
    free(a->old); /* a retried txn starts over */
    a->old = NULL;
    a->old_why = NULL;
    a->deleted = 0;
    for (i = 0; i < a->n; i++) {
        rc = del_one(txn, e, a, i);
        if (rc != 0 && rc != 1)
            return rc;
        a->deleted += rc;
    }
    return 0;
}

/* ---- read-modify-write ------------------------------------------------------------ */

int lmc_incr_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    lmc_rmw_arg *a = arg;
    lmc_record rec;
    lmc_value val;
    MDB_val v;
    const char *why;
    long long base = a->dflt;
    double expires = a->expires;
    uint64_t seq = 0;
    int rc, status, evicts = lmc_env_evicts(e);

    rc = lmc_lookup(e, txn, a->dbi, a->dbname, a->key, &rec, &status, &why);
    if (rc != 0)
        return rc;
    if (status == LMC_CORRUPT)
        return LMC_ERR_CORRUPT;
    if (status == LMC_LIVE) {
        if (rec.tag != LMC_VAL_INT)
            return LMC_ERR_NOT_INT;
        memcpy(&base, rec.data, 8);
        expires = (rec.flags & LMC_FLAG_EXPIRES) ? rec.expires : 0;
    }
    if (__builtin_add_overflow(base, a->delta, &a->result))
        return LMC_ERR_OVERFLOW;
    memcpy(val.num, &a->result, 8);
    val.data = (const char *)val.num;
    val.data_len = 8;
    val.owner = NULL;
    lmc_value_head(&val, LMC_VAL_INT, e->is_signed ? LMC_FLAG_MAC : 0, expires, evicts, a->key);
    v.mv_size = lmc_value_size(&val);
    v.mv_data = NULL;
    rc = mdb_put(txn, a->dbi, &a->key->val, &v, MDB_RESERVE);
    if (rc != 0)
        return rc;
    if (evicts)
        seq = lmc_evict_next_seq(e, txn);
    lmc_value_write(&val, v.mv_data, seq, a->dbname, &a->key->val, lmc_env_mac(e));
    return evicts ? lmc_evict_note(txn, e, a->dbname, &a->key->val, seq) : 0;
}

int lmc_touch_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    lmc_rmw_arg *a = arg;
    lmc_record rec;
    lmc_value val;
    MDB_val v;
    const char *why;
    char *copy;
    uint64_t seq;
    int rc, status;

    a->found = 0;
    rc = lmc_lookup(e, txn, a->dbi, a->dbname, a->key, &rec, &status, &why);
    if (rc != 0)
        return rc;
    if (status == LMC_CORRUPT)
        return LMC_ERR_CORRUPT;
    if (status != LMC_LIVE)
        return 0;
    /* copy the payload out: the put below may move the old record */
    copy = malloc(rec.data_len ? rec.data_len : 1);
    if (copy == NULL)
        return ENOMEM;
    memcpy(copy, rec.data, rec.data_len);
    seq = rec.seq;
    val.data = copy;
    val.data_len = rec.data_len;
    val.owner = NULL;
    lmc_value_head(&val, rec.tag, (rec.flags & LMC_FLAG_ZSTD) | (e->is_signed ? LMC_FLAG_MAC : 0),
                   a->expires, (rec.flags & LMC_FLAG_SEQ) != 0, a->key);
    v.mv_size = lmc_value_size(&val);
    v.mv_data = NULL;
    rc = mdb_put(txn, a->dbi, &a->key->val, &v, MDB_RESERVE);
    if (rc == 0) {
        lmc_value_write(&val, v.mv_data, seq, a->dbname, &a->key->val, /* same seq */
                        lmc_env_mac(e));
        a->found = 1;
    }
    free(copy);
    return rc;
}

/* ---- scans ------------------------------------------------------------------------ */

int lmc_expire_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    lmc_scan_arg *a = arg;
    MDB_cursor *cur;
    MDB_val k = {1, (void *)"b"}, v;
    lmc_record rec;
    double now = lmc_now();
    int rc;
    (void)e;

    a->removed = 0;
    rc = mdb_cursor_open(txn, a->dbi, &cur);
    if (rc != 0)
        return rc;
    rc = mdb_cursor_get(cur, &k, &v, a->is_main ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        /* the CRC only: a forged record that says it expired is dropped too */
        if (lmc_record_check(a->dbname, &k, v.mv_data, v.mv_size, &rec, NULL) == NULL &&
            (rec.flags & LMC_FLAG_EXPIRES) && rec.expires <= now) {
            rc = mdb_cursor_del(cur, 0);
            if (rc != 0)
                break;
            a->removed++;
        }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int lmc_clear_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    lmc_scan_arg *a = arg;
    MDB_cursor *cur;
    MDB_val k = {1, (void *)"b"}, v;
    int rc;
    (void)e;

    if (!a->is_main)
        return mdb_drop(txn, a->dbi, 0); /* empties the sub-database */
    rc = mdb_cursor_open(txn, a->dbi, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        rc = mdb_cursor_del(cur, 0);
        if (rc != 0)
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Keys whose encoding starts with the encoding of a tuple `prefix`: a tuple
 * key (a, b, c) encodes as 't' + the items, so every key (a, b, ...) starts
 * with the encoding of (a, b).  (Digested long keys do not.)  Also used for
 * counting inside a read txn. */
int lmc_prefix_scan(MDB_txn *txn, lmc_prefix_arg *a)
{
    MDB_cursor *cur;
    MDB_val k = a->prefix, v;
    int rc;

    a->count = 0;
    rc = mdb_cursor_open(txn, a->dbi, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < a->prefix.mv_size ||
            memcmp(k.mv_data, a->prefix.mv_data, a->prefix.mv_size) != 0)
            break;
        if (a->delete && (rc = mdb_cursor_del(cur, 0)) != 0)
            break;
        a->count++;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : rc;
}

int lmc_prefix_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    (void)e;
    return lmc_prefix_scan(txn, arg);
}
