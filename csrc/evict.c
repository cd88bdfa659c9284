/*
 * evict.c -- bounded size: the eviction index, least-recently-stored and
 * least-recently-used order, and the culling step.
 *
 * Active only when size_limit is set and eviction_policy is not "none"; with
 * no size_limit none of this runs and records carry no sequence number.
 *
 * Every stored record carries a sequence number (write txn id << 24 | a counter
 * within the txn: increasing across processes).  __order__ maps seq -> the
 * record's namespace and key, appended (MDB_APPEND) on every store.  Entries
 * are never updated in place: an overwrite or a delete leaves the old entry
 * behind, and the culling step recognises it as stale (its seq is no longer
 * the record's) and drops it.  Stale entries cost pages, which count against
 * size_limit, so they cannot pile up past it.
 *
 * LRU: reads are never a write txn each.  A read hit appends the key to a
 * per-process log (lru_buf); the log is written at this process's next write
 * txn (or when it grows past LRU_FLUSH bytes) as a new __order__ entry plus
 * __atime__[key] = seq.  A key's current seq is then max(record seq, atime).
 *
 * Culling runs at the start of a growing write txn: when the pages in use
 * (branch + leaf + overflow of every sub-database) plus the pages the write
 * may add exceed size_limit, the oldest entries go until the data is 1/16
 * under the limit, so one culling step serves many writes.
 */
#include "lmdbcache.h"

#include <string.h>

#define EVICT_FAST_SLACK ((size_t)64 << 10)
#define LRU_MAX_BUF ((size_t)1 << 20)
/* An index entry: [u8 len][sub-database name][key encoding]. */
#define DBNAME_MAX (sizeof(LMC_NS_PREFIX) - 1 + LMC_MAX_NS)
#define ENTRY_MAX (1 + DBNAME_MAX + LMC_MAX_KEY)
_Static_assert(DBNAME_MAX <= 255, "a sub-database name length must fit the entry's length byte");
_Static_assert(DBNAME_MAX < 256, "discover_namespaces and evict_oldest keep names in 256 bytes");
/* An entry is also the key of __atime__, but may be longer than LMDB's key
 * limit: such entries are keyed by ATIME_HASHED + a 128-bit hash instead. */
#define ATIME_HASHED 0xff
_Static_assert(DBNAME_MAX < ATIME_HASHED, "a hashed atime key never looks like an entry");

static uint64_t fnv64(const unsigned char *p, size_t n, uint64_t h)
{
    size_t i;
    for (i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* The __atime__ key of an entry (pointing into entry or buf[17]). */
static MDB_val atime_key(const unsigned char *entry, size_t n, unsigned char *buf)
{
    MDB_val k;
    uint64_t a, b;
    if (n <= LMC_MAX_KEY) {
        k.mv_data = (void *)entry;
        k.mv_size = n;
        return k;
    }
    a = fnv64(entry, n, 14695981039346656037ull);
    b = fnv64(entry, n, a ^ 0x9e3779b97f4a7c15ull);
    buf[0] = ATIME_HASHED;
    memcpy(buf + 1, &a, 8);
    memcpy(buf + 9, &b, 8);
    k.mv_data = buf;
    k.mv_size = 17;
    return k;
}

static void be64(uint64_t v, unsigned char *out)
{
    int i;
    for (i = 7; i >= 0; i--, v >>= 8)
        out[i] = (unsigned char)(v & 0xff);
}

static uint64_t unbe64(const unsigned char *p)
{
    uint64_t v = 0;
    int i;
    for (i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* [u8 len][dbname][key] */
static size_t entry_encode(unsigned char *buf, const char *dbname, const MDB_val *key)
{
    size_t n = strlen(dbname);
    /* dbname: at most DBNAME_MAX (store.c validates namespace names), key: at
     * most LMC_MAX_KEY (longer encodings are digested) */
    buf[0] = (unsigned char)n;
    memcpy(buf + 1, dbname, n);
    memcpy(buf + 1 + n, key->mv_data, key->mv_size);
    return 1 + n + key->mv_size;
}

uint64_t lmc_evict_next_seq(lmc_env *e, MDB_txn *txn)
{
    return ((uint64_t)mdb_txn_id(txn) << 24) | (e->seq_counter++ & 0xffffffu);
}

static int order_put(MDB_txn *txn, lmc_env *e, uint64_t seq, const unsigned char *entry,
                     size_t n)
{
    unsigned char kb[8];
    MDB_val k = {8, kb}, v = {n, (void *)entry};
    int rc;
    be64(seq, kb);
    rc = mdb_put(txn, e->order_dbi, &k, &v, MDB_APPEND);
    if (rc == MDB_KEYEXIST) /* counter wrapped within one txn */
        rc = mdb_put(txn, e->order_dbi, &k, &v, 0);
    return rc;
}

int lmc_evict_note(MDB_txn *txn, lmc_env *e, const char *dbname, const MDB_val *key,
                   uint64_t seq)
{
    unsigned char entry[ENTRY_MAX];
    return order_put(txn, e, seq, entry, entry_encode(entry, dbname, key));
}

/* Open every namespace another process may have created (pending entries). */
static int discover_namespaces(MDB_txn *txn, lmc_env *e)
{
    MDB_cursor *cur;
    MDB_val k, v;
    char names[8][256];
    size_t plen = sizeof(LMC_NS_PREFIX) - 1;
    MDB_dbi dbi;
    int rc, n = 0, i, more = 1;
    char after[256] = "";

    while (more) {
        rc = mdb_cursor_open(txn, e->main_dbi, &cur);
        if (rc != 0)
            return rc;
        k.mv_data = after;
        k.mv_size = strlen(after);
        rc = mdb_cursor_get(cur, &k, &v, k.mv_size ? MDB_SET_RANGE : MDB_FIRST);
        n = 0;
        while (rc == 0 && n < 8 && k.mv_size > 0 && ((char *)k.mv_data)[0] < LMC_FIRST_KEY_TAG) {
            if (k.mv_size > plen && k.mv_size < 256 && memcmp(k.mv_data, LMC_NS_PREFIX, plen) == 0 &&
                (k.mv_size != strlen(after) || memcmp(k.mv_data, after, k.mv_size) != 0)) {
                memcpy(names[n], k.mv_data, k.mv_size);
                names[n++][k.mv_size] = '\0';
            }
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        more = n == 8 && rc == 0;
        mdb_cursor_close(cur);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return rc;
        for (i = 0; i < n; i++) {
            rc = lmc_env_ns_dbi(e, txn, names[i], &dbi);
            if (rc != 0)
                return rc;
        }
        if (more)
            strcpy(after, names[n - 1]);
    }
    return 0;
}

static int pages_in_use(MDB_txn *txn, lmc_env *e, size_t *pages)
{
    MDB_stat ms;
    size_t total = 0;
    int i, rc;
    MDB_dbi fixed[4];
    int nfixed = 0;

    fixed[nfixed++] = e->main_dbi;
    fixed[nfixed++] = e->meta_dbi;
    fixed[nfixed++] = e->order_dbi;
    if (e->policy == LMC_POLICY_LRU)
        fixed[nfixed++] = e->atime_dbi;
    for (i = 0; i < nfixed + e->n_ns; i++) {
        rc = mdb_stat(txn, i < nfixed ? fixed[i] : e->ns[i - nfixed].dbi, &ms);
        if (rc != 0)
            return rc;
        total += ms.ms_branch_pages + ms.ms_leaf_pages + ms.ms_overflow_pages;
    }
    *pages = total;
    return 0;
}

/* Look at the oldest index entry (under cur) and evict its record if the
 * entry is current; drop the entry either way. */
static int evict_oldest(MDB_txn *txn, lmc_env *e, MDB_cursor *cur, const MDB_val *k,
                        const MDB_val *v, lmc_evict_counts *out)
{
    const unsigned char *p = v->mv_data;
    unsigned char hbuf[17];
    char dbname[256];
    MDB_val key, rv, av, ak;
    MDB_dbi dbi;
    lmc_record rec;
    uint64_t seq, current;
    size_t n;
    int rc;

    if (k->mv_size != 8 || v->mv_size < 1 || (n = p[0]) + 1 > v->mv_size)
        return mdb_cursor_del(cur, 0); /* malformed entry: drop it */
    seq = unbe64(k->mv_data);
    memcpy(dbname, p + 1, n);
    dbname[n] = '\0';
    key.mv_data = (void *)(p + 1 + n);
    key.mv_size = v->mv_size - 1 - n;
    if (key.mv_size == 0 || key.mv_size > LMC_MAX_KEY || n > DBNAME_MAX)
        return mdb_cursor_del(cur, 0); /* malformed entry: drop it */
    rc = lmc_env_ns_dbi(e, txn, dbname, &dbi);
    if (rc == MDB_NOTFOUND)
        return mdb_cursor_del(cur, 0);
    if (rc != 0)
        return rc;
    rc = mdb_get(txn, dbi, &key, &rv);
    if (rc == MDB_NOTFOUND)
        goto stale;
    if (rc != 0)
        return rc;
    current = 0;
    /* only the sequence number is needed: a forged one merely evicts */
    if (lmc_record_check(dbname, &key, rv.mv_data, rv.mv_size, &rec, NULL) == NULL)
        current = rec.seq;
    else
        current = seq; /* corrupt record: evict it */
    if (e->policy == LMC_POLICY_LRU) {
        ak = atime_key(v->mv_data, v->mv_size, hbuf);
        rc = mdb_get(txn, e->atime_dbi, &ak, &av);
        if (rc == 0 && av.mv_size == 8) {
            uint64_t t;
            memcpy(&t, av.mv_data, 8);
            if (t > current)
                current = t;
        }
        else if (rc != 0 && rc != MDB_NOTFOUND) {
            return rc;
        }
    }
    if (seq != current)
        return mdb_cursor_del(cur, 0); /* overwritten or used since */
    if ((rec.flags & LMC_FLAG_EXPIRES) && rec.expires <= lmc_now())
        out->expired++;
    else
        out->evicted++;
    rc = mdb_del(txn, dbi, &key, NULL);
    if (rc != 0)
        return rc;
stale:
    if (e->policy == LMC_POLICY_LRU) {
        ak = atime_key(v->mv_data, v->mv_size, hbuf);
        rc = mdb_del(txn, e->atime_dbi, &ak, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return rc;
    }
    return mdb_cursor_del(cur, 0);
}

int lmc_evict_enforce(MDB_txn *txn, lmc_env *e, size_t hint, size_t pending,
                      lmc_evict_counts *out)
{
    lmc_evict_counts scratch = {0, 0};
    MDB_envinfo info;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    size_t pages, limit_pages, target, hint_pages;
    int rc;

    if (out == NULL)
        out = &scratch;
    rc = mdb_env_info(e->env, &info);
    if (rc != 0)
        return rc;
    /* Fast path: the file has never been near the limit. */
    if ((info.me_last_pgno + 1) * e->page_size + pending + hint + EVICT_FAST_SLACK <=
        e->size_limit)
        return 0;
    if ((rc = discover_namespaces(txn, e)) != 0 || (rc = pages_in_use(txn, e, &pages)) != 0)
        return rc;
    limit_pages = e->size_limit / e->page_size;
    hint_pages = (hint + e->page_size - 1) / e->page_size;
    if (pages + hint_pages <= limit_pages)
        return 0;
    if (hint_pages + limit_pages / 16 > limit_pages)
        return LMC_ERR_TOO_BIG; /* could never fit: refuse, evict nothing */
    target = limit_pages - limit_pages / 16;
    target = target > hint_pages ? target - hint_pages : 0;
    rc = mdb_cursor_open(txn, e->order_dbi, &cur);
    if (rc != 0)
        return rc;
    while (pages > target) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc == MDB_NOTFOUND) {
            /* nothing left to evict: what is left (other namespaces' stale
             * entries aside) is this txn's own data */
            rc = pages + hint_pages > limit_pages ? LMC_ERR_TOO_BIG : 0;
            break;
        }
        if (rc != 0 || (rc = evict_oldest(txn, e, cur, &k, &v, out)) != 0 ||
            (rc = pages_in_use(txn, e, &pages)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    return rc;
}

/* ---- LRU ------------------------------------------------------------------ */

static uint32_t entry_hash(const unsigned char *p, size_t n)
{
    uint32_t h = 2166136261u;
    size_t i;
    for (i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h | 1;
}

void lmc_lru_touch(lmc_env *e, const char *dbname, const MDB_val *key)
{
    unsigned char entry[ENTRY_MAX];
    size_t n = entry_encode(entry, dbname, key), need = 2 + n;
    uint32_t h = entry_hash(entry, n);

    pthread_mutex_lock(&e->lru_lock);
    if (e->lru_seen[h & 255] == h)
        goto done; /* logged already since the last flush */
    if (e->lru_len + need > e->lru_cap) {
        size_t cap = e->lru_cap ? e->lru_cap * 2 : 4096;
        unsigned char *buf;
        if (cap > LRU_MAX_BUF)
            goto done; /* full until the next write: sample */
        buf = PyMem_RawRealloc(e->lru_buf, cap);
        if (buf == NULL)
            goto done;
        e->lru_buf = buf;
        e->lru_cap = cap;
    }
    e->lru_buf[e->lru_len] = (unsigned char)(n >> 8);
    e->lru_buf[e->lru_len + 1] = (unsigned char)(n & 0xff);
    memcpy(e->lru_buf + e->lru_len + 2, entry, n);
    e->lru_len += need;
    e->lru_seen[h & 255] = h;
done:
    pthread_mutex_unlock(&e->lru_lock);
}

int lmc_lru_flush(MDB_txn *txn, lmc_env *e)
{
    unsigned char *buf, hbuf[17];
    size_t len, pos, n;
    uint64_t seq;
    MDB_val k, v;
    int rc = 0;

    pthread_mutex_lock(&e->lru_lock);
    buf = e->lru_buf;
    len = e->lru_len;
    e->lru_buf = NULL;
    e->lru_len = e->lru_cap = 0;
    memset(e->lru_seen, 0, sizeof(e->lru_seen));
    pthread_mutex_unlock(&e->lru_lock);
    for (pos = 0; rc == 0 && pos + 2 <= len; pos += 2 + n) {
        n = ((size_t)buf[pos] << 8) | buf[pos + 1];
        seq = lmc_evict_next_seq(e, txn);
        k = atime_key(buf + pos + 2, n, hbuf);
        v.mv_size = 8;
        v.mv_data = &seq;
        rc = mdb_put(txn, e->atime_dbi, &k, &v, 0);
        if (rc == 0)
            rc = order_put(txn, e, seq, buf + pos + 2, n);
    }
    PyMem_RawFree(buf);
    return rc;
}

void lmc_evict_free(lmc_env *e)
{
    PyMem_RawFree(e->lru_buf);
    e->lru_buf = NULL;
    e->lru_len = e->lru_cap = 0;
}
