/*
 * lmdbcache.h -- internal declarations shared by the files of lmdbcache._core.
 *
 *   module.c      module state, exception types, the one error table, fork generation
 *   env.c         Env: registry and lifetime, txn begin, reads, writes (its CONTRACT)
 *   envopen.c     opening an Env: lmc_env_acquire, format and signature records
 *   space.c       the file's size (never shrinks), map growth, disk reservation
 *   durability.c  guard.lock, the torn-file guard and the `unsynced` marker
 *   namespace.c   the table of open namespaces (sub-databases) of an Env
 *   keys.c        key encodings (the on-disk format), keysets, long-key digests
 *   codec.c       value encodings (the on-disk format): serializers, compression
 *   record.c      record parsing, checksum, bounds check, the one lookup (no Py*)
 *   evict.c       size_limit: eviction index, LRS/LRU culling
 *   txnops.c      every lmc_write_fn callback: runs without the GIL, no Py* call
 *   store.c       the Store type: construction, slots, single-key reads, the type spec
 *   storewrite.c  the single-key writes: set, add, delete, pop, lmc_store_put/remove
 *   batch.c       multi-key methods, scans, transactions, introspection
 *   iter.c        the iterator over keys, values or items
 *   rmw.c         the read-modify-write methods: incr, touch
 *   args.c        argument parsing helpers of the Store methods
 *   maint.c       maintenance: copy/compact, environment survey, record walk (verify)
 *
 * Everything here runs with the GIL held unless a comment says otherwise.
 */
#ifndef LMDBCACHE_H
#define LMDBCACHE_H

#define PY_SSIZE_T_CLEAN
#include "compat.h" /* first: Python.h, and shims for older Pythons */
#include <Python.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#if defined(__GNUC__)
#define LMC_LIKELY(x) __builtin_expect(!!(x), 1)
#define LMC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LMC_LIKELY(x) (x)
#define LMC_UNLIKELY(x) (x)
#endif

/* ---- on-disk format ------------------------------------------------------ */

/* Version of the whole cache layout, stored in __meta__ under "format". */
#define LMC_FORMAT_VERSION 3
/* Version byte at the start of every value record. */
#define LMC_RECORD_VERSION 3
/* LMDB's default MDB_MAXKEYSIZE; checked against the library at open. */
#define LMC_MAX_KEY 511
/* Longest namespace name, in UTF-8 bytes (enforced in store.c). */
#define LMC_MAX_NS 200
/* Name of the metadata sub-database.  Its first byte, '_', sorts below every
 * key tag, so sub-database records in the main DB come before all user keys. */
#define LMC_META_DB "__meta__"
/* Smallest byte that can start a user key in the main DB. */
#define LMC_FIRST_KEY_TAG 'b'

/* key tags */
#define LMC_KEY_BYTES 'b'
#define LMC_KEY_FLOAT 'd'   /* 8 bytes, order-preserving; -0.0 stored as 0.0 */
#define LMC_KEY_BOOL 'k'    /* 1 byte, 0 or 1 */
#define LMC_KEY_BIGINT 'l'  /* an int outside int64, as signed hexadecimal ASCII */
#define LMC_KEY_NONE 'n'    /* no payload */
#define LMC_KEY_DIGEST 'h'
#define LMC_KEY_FROZENSET 'f'
#define LMC_KEY_INT 'i'
#define LMC_KEY_PICKLE 'p'
#define LMC_KEY_STR 's'
#define LMC_KEY_TUPLE 't'

/* value tags */
#define LMC_VAL_NONE 'N'
#define LMC_VAL_TRUE 'T'
#define LMC_VAL_FALSE 'F'
#define LMC_VAL_BYTES 'b'
#define LMC_VAL_STR 's'
#define LMC_VAL_INT 'i'
#define LMC_VAL_FLOAT 'd'
#define LMC_VAL_PICKLE 'p'
#define LMC_VAL_JSON 'j'    /* serializer="json" */
#define LMC_VAL_MSGPACK 'm' /* serializer="msgpack" */
#define LMC_VAL_CUSTOM 'c'  /* serializer=<object with dumps/loads> */

/* value flags */
#define LMC_FLAG_EXPIRES 0x01 /* 8-byte double (unix time) follows the header */
#define LMC_FLAG_LONGKEY 0x02 /* uint32 length + full key encoding follow */
#define LMC_FLAG_SEQ 0x04     /* 8-byte store sequence number (eviction order) */
#define LMC_FLAG_MAC 0x08     /* a 16-byte MAC follows the checksum (secret=) */
#define LMC_FLAG_ZSTD 0x10    /* the payload is a zstd frame (compress="zstd") */
#define LMC_KNOWN_FLAGS \
    (LMC_FLAG_EXPIRES | LMC_FLAG_LONGKEY | LMC_FLAG_SEQ | LMC_FLAG_MAC | LMC_FLAG_ZSTD)

#define LMC_HEADER_SIZE 7 /* version, tag, flags, CRC32C */
#define LMC_SUM_OFF 3     /* offset of the checksum in the record */
#define LMC_MAC_OFF 7     /* offset of the MAC, when LMC_FLAG_MAC */
#define LMC_MAC_SIZE 16

/* Keyed BLAKE2b (blake2b.c): the record MAC of Cache(secret=...). */
typedef struct {
    uint64_t h[8];
    uint64_t t[2];
    unsigned char b[128];
    size_t c;      /* bytes in b */
    size_t outlen;
} lmc_blake2b;

typedef struct {
    lmc_blake2b keyed; /* the state after the key block */
} lmc_mac;

int lmc_mac_init(lmc_mac *mac, const void *secret, size_t len);
void lmc_blake2b_update(lmc_blake2b *s, const void *in, size_t n);
void lmc_blake2b_final(lmc_blake2b *s, unsigned char *out);
/* The MAC of a message of at least one byte. */
static inline void lmc_mac_of(const lmc_mac *mac, const void *p, size_t n, unsigned char *out)
{
    lmc_blake2b s = mac->keyed;
    lmc_blake2b_update(&s, p, n);
    lmc_blake2b_final(&s, out);
}

#include <time.h>

/* Sleep ms milliseconds (call without the GIL). */
static inline void lmc_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline double lmc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- module state ---------------------------------------------------------- */

typedef struct {
    PyObject *Error;
    PyObject *MapFullError;
    PyObject *ReadOnlyError;
    PyObject *CorruptError;
    PyObject *LockError;
    PyObject *FormatError;
    PyObject *UnsafeCacheError;
    PyObject *SecretError;
    PyObject *pickle_dumps;
    PyObject *pickle_loads;
    PyObject *UnpicklingError;
    PyObject *sha256;
    PyObject *protocol; /* int 5 */
    PyTypeObject *StoreType;
    PyTypeObject *IterType;
    PyTypeObject *TxnType;
} lmc_state;

extern PyModuleDef lmc_module_def;

/* Bumped in the child after every fork (pthread_atfork and os.register_at_fork).
 * An Env opened under another value belongs to an ancestor process. */
extern unsigned long lmc_fork_generation;

struct lmc_env;

/* Raise the exception mapped to an LMDB, errno or LMC_ERR_* code, naming op and
 * path (the one error table, module.c). */
void lmc_raise(lmc_state *st, int rc, const char *op, const char *path);
/* The same, with what the Env knows (its size_limit) in the message. */
void lmc_raise_env(lmc_state *st, int rc, const char *op, const struct lmc_env *e);
/* Raise type(fmt % ...) with the current exception as its __cause__. */
void lmc_raise_from(PyObject *type, const char *fmt, ...);

/* ---- Env (env.c, envopen.c) ------------------------------------------------ */

typedef struct {
    char *name;            /* LMDB sub-database name: LMC_NS_PREFIX + user name */
    MDB_dbi dbi;
} lmc_ns;

#define LMC_NS_PREFIX "__ns__:"
#define LMC_ORDER_DB "__order__"
#define LMC_ATIME_DB "__atime__"

#define LMC_POLICY_NONE 0  /* size_limit reached: MapFullError */
#define LMC_POLICY_LRS 1   /* evict least recently stored */
#define LMC_POLICY_LRU 2   /* evict least recently used */

#define LMC_ENV_OPENING 0 /* in the registry, mdb_env_open in progress */
#define LMC_ENV_OPEN 1
#define LMC_ENV_CLOSING 2 /* in the registry until mdb_env_close has returned */

typedef struct lmc_env {
    MDB_env *env;
    int state;             /* LMC_ENV_*: openers of the same path wait unless OPEN */
    MDB_dbi main_dbi;      /* the default namespace lives in the main DB */
    MDB_dbi meta_dbi;
    MDB_txn *rtxn;         /* reusable read txn, reset between uses; NULL = none */
    int rtxn_busy;         /* rtxn renewed and not yet reset */
    unsigned long generation; /* lmc_fork_generation when opened */
    Py_ssize_t refcnt;     /* Stores and in-flight calls holding this Env */
    dev_t dev;
    ino_t ino;
    char *path;            /* directory, as given to mdb_env_open */
    unsigned int flags;    /* MDB_RDONLY, MDB_NOSYNC as opened */
    size_t size_limit;     /* 0 = unbounded */
    size_t page_size;
    int fd;                /* data file (-1 until open) */
    int guard_fd;          /* guard.lock, flocked around size changes; -1: none */
    const char *map_lo;    /* the map, and how much of it the data file backs */
    size_t map_len;        /* (records read are checked against it) */
    int can_reserve;       /* fallocate works on this filesystem */
    size_t reserved;       /* bytes of the data file known to be allocated */
    pthread_mutex_t write_lock; /* serialises this process's writers; see env.c */
    struct lmc_env *next;  /* registry link */

    /* Namespaces opened in this Env.  Changed and read under write_lock (or
     * the GIL on a read-only Env, which has no writers).  The last n_pending
     * entries were opened by the write txn in progress: kept on commit,
     * dropped on abort. */
    lmc_ns *ns;
    int n_ns, cap_ns, n_pending;
    unsigned int ns_epoch; /* bumped when an abort drops pending namespaces */

    /* Eviction (evict.c): active when size_limit != 0 and policy != NONE. */
    int policy;
    MDB_dbi order_dbi;     /* seq (8 bytes BE) -> [u8 len][ns db name][key] */
    MDB_dbi atime_dbi;     /* LRU: [u8 len][ns db name][key] -> last-use seq */
    unsigned int seq_counter; /* sequence numbers handed out in this txn */
    pthread_mutex_t lru_lock; /* guards lru_buf: readers append with the GIL,
                                 writers drain under write_lock */
    unsigned char *lru_buf;
    size_t lru_len, lru_cap;
    uint32_t lru_seen[256];   /* hashes of keys already in lru_buf */

    /* An explicit transaction (Cache.transaction()): the write txn, the thread
     * owning it, nesting depth, and whether an operation failed inside it. */
    MDB_txn *wtxn;
    pthread_t wtxn_owner;
    int wtxn_depth;
    int wtxn_failed;
    size_t wtxn_added;     /* bytes hinted by writes inside it (disk reserve) */

    int marker;            /* this Env created or shares the durability marker */
    char *marker_path;
    char *torn_to;         /* set by the guard when it moved a torn file aside */
    char *torn_boot;
    double warmed_at;      /* when lmc_env_warm last read the file (lmc_now) */
    char *incompat_to;     /* set when a file of another LMDB data format was moved aside */
    unsigned incompat_version;

    /* A signed cache (secret=): every Store of this Env has the same secret
     * (lmc_env_acquire compares mac_id), and every record read is verified. */
    int is_signed;
    lmc_mac mac;
    unsigned char mac_id[LMC_MAC_SIZE]; /* the MAC of LMC_SIGNED_TEXT: names the secret */
} lmc_env;

#define LMC_SIGNED_TEXT "lmdbcache: the records of this cache are signed"

static inline const lmc_mac *lmc_env_mac(const lmc_env *e)
{
    return e->is_signed ? &e->mac : NULL;
}

static inline int lmc_env_evicts(const lmc_env *e)
{
    return e->size_limit != 0 && e->policy != LMC_POLICY_NONE;
}

/* Largest map a growing write may reach.  With eviction the data is kept under
 * size_limit, but pages freed by a txn are reusable only two commits later,
 * so the file needs headroom above the limit. */
static inline size_t lmc_env_map_cap(const lmc_env *e)
{
    if (e->size_limit == 0 || !lmc_env_evicts(e))
        return e->size_limit;
    return e->size_limit + e->size_limit / 4 + ((size_t)4 << 20);
}

static inline int lmc_env_in_txn(const lmc_env *e)
{
    return e->wtxn != NULL && pthread_equal(e->wtxn_owner, pthread_self());
}

typedef struct {
    size_t map_size;
    size_t size_limit; /* 0 = none */
    int policy;        /* LMC_POLICY_* */
    int readonly;
    int sync;          /* 1 = fsync per commit (durability="full") */
    const char *boot_id; /* this boot (NULL: unknown, the guard is off) */
    unsigned int max_readers;
    double timeout;    /* seconds an open may wait for another process's guard.lock */
    int reset_incompatible; /* on_incompatible="reset": move another LMDB format aside */
    int readahead;     /* 0: MDB_NORDAHEAD (whole-file scans warm up first) */
    int allow_shared;  /* 1: skip the owner/mode trust check (never the symlink check) */
    const lmc_mac *mac; /* secret=: records are signed; NULL = none */
} lmc_options;

/* Return a new reference to the Env for path (opening it if this process has
 * none), or NULL with an exception set. */
lmc_env *lmc_env_acquire(lmc_state *st, const char *path, const lmc_options *opt);
void lmc_env_release(lmc_env *e);
void lmc_env_forget_all(void);
/* env.c's registry of this process's Envs (see its CONTRACT), shared with the
 * opening code of envopen.c; GIL held.  Unlink an Env from it, and free an
 * Env's struct and strings (nothing else). */
extern lmc_env *lmc_env_registry;
void lmc_registry_unlink(lmc_env *e);
void lmc_env_free(lmc_env *e);

static inline int lmc_env_is_current(const lmc_env *e)
{
    return e->generation == lmc_fork_generation;
}

/* One txn begin for every site: retries MDB_MAP_RESIZED (adopting the new map
 * size) and MDB_READERS_FULL (reclaiming dead readers' slots).  `save`: NULL
 * when called with the GIL held and without write_lock; else the thread state
 * saved by Py_BEGIN_ALLOW_THREADS of a caller holding write_lock. */
int lmc_env_begin(lmc_env *e, unsigned int flags, MDB_txn **txn, PyThreadState **save);

/* space.c: the file's size and disk space (see there).  write_lock held;
 * lmc_env_adopt/lmc_env_grow also hold the size lock and the GIL. */
int lmc_env_reserve(lmc_env *e, size_t hint, int kind);
void lmc_size_lock(lmc_env *e);
void lmc_size_unlock(lmc_env *e);
int lmc_env_adopt(lmc_env *e);
int lmc_env_grow(lmc_env *e, int kind);

/* Record where the map is and how much of it is backed by a file of
 * file_size bytes.  GIL held or write_lock held. */
void lmc_env_note_map(lmc_env *e, size_t file_size, int rebase);

/* Before a scan of the whole file: with MDB_NORDAHEAD, read the used part of
 * data.mdb sequentially (1 MiB preads on a descriptor of its own), at most
 * once per LMC_WARM_INTERVAL seconds per Env.  GIL held; released while
 * reading.  Best effort: errors are ignored. */
#define LMC_WARM_INTERVAL 60.0
void lmc_env_warm(lmc_env *e);

/* Read transactions: GIL held from begin to end, no Python code in between. */
int lmc_read_begin(lmc_env *e, MDB_txn **txn);
void lmc_read_end(lmc_env *e, MDB_txn *txn);
/* lmc_read_begin's slow path: begin a new read txn, kept as the Env's rtxn
 * when it has none (also how an open takes the Env's reader slot). */
int lmc_read_begin_slow(lmc_env *e, MDB_txn **txn);

struct lmc_evict_counts;

/* A write: fn runs inside a write txn with the GIL released; it must not touch
 * Python objects.  lmc_env_write retries after map growth or a map resized by
 * another process, and commits.  Returns an LMDB/errno code (0 = committed);
 * a non-zero code from fn aborts the txn and is returned.  `hint` bounds the
 * bytes the txn may add to the file (disk blocks are reserved first).  Call
 * with the GIL. */
typedef int (*lmc_write_fn)(MDB_txn *txn, lmc_env *e, void *arg);
#define LMC_WRITE_GROWS 0   /* may grow the map up to size_limit */
#define LMC_WRITE_FREES 1   /* deletes: may use a reserve beyond size_limit */
int lmc_env_write(lmc_env *e, lmc_write_fn fn, void *arg, int kind, size_t hint,
                  struct lmc_evict_counts *counts);

/* Codes of our own, returned like LMDB codes but never from LMDB. */
#define LMC_ERR_NOT_INT (-1001)    /* incr/decr of a value that is no int */
#define LMC_ERR_OVERFLOW (-1002)   /* incr/decr beyond 64 bits */
#define LMC_ERR_TXN_FAILED (-1003) /* an earlier operation in the transaction failed */
#define LMC_ERR_NO_TXN (-1004)     /* no transaction of this thread is open */
#define LMC_ERR_TOO_BIG (-1005)    /* a write larger than size_limit allows */
#define LMC_ERR_CORRUPT (-1006)    /* a record failed validation (read-modify-write) */
#define LMC_ERR_NS_MISSING (-1007) /* the namespace does not exist (read-only open) */
#define LMC_ERR_TIMEOUT (-1008)    /* another process held guard.lock too long */
#define LMC_IS_LOGICAL(rc) ((rc) <= -1001 && (rc) >= -1099)

/* Number of user keys in the DB (the main DB holds sub-database records too). */
int lmc_env_count(lmc_env *e, MDB_txn *txn, MDB_dbi dbi, size_t *count);

/* ---- namespaces (namespace.c) ----------------------------------------------- */

/* The dbi of namespace `name` (user name, "" = default), opening (and with
 * create, creating) it.  Returns an LMDB code; MDB_NOTFOUND when absent and
 * not created.  GIL held, caller holds a reference on e. */
int lmc_env_namespace(lmc_env *e, const char *name, int create, MDB_dbi *dbi);
/* Look a sub-database name up among the open namespaces, opening it in txn
 * when unknown (a pending entry).  write_lock held. */
int lmc_env_ns_dbi(lmc_env *e, MDB_txn *txn, const char *dbname, MDB_dbi *dbi);
/* Drop (abort) or keep (commit) the namespaces opened by the txn that ended. */
/* The same for a name given in full, with create; write_lock held. */
int lmc_ns_open_in(lmc_env *e, MDB_txn *txn, const char *dbname, int create, MDB_dbi *dbi);
void lmc_ns_settle(lmc_env *e, int committed);
void lmc_ns_free(lmc_env *e);
typedef struct {
    const char *dbname;
    int create;
    MDB_dbi dbi;
} lmc_ns_arg;
int lmc_ns_open_fn(MDB_txn *txn, lmc_env *e, void *arg);

/* ---- durability guard (durability.c) ------------------------------------------ */

/* Before mdb_env_open: take guard.lock (writable opens; waits up to
 * opt->timeout with the GIL released), then refuse or move aside a data file
 * that the `unsynced` marker says an OS crash may have torn.  *lock_fd is -1
 * when no lock was taken.  -1 with an exception. */
int lmc_guard_enter(lmc_state *st, lmc_env *e, const lmc_options *opt, int *lock_fd);
void lmc_guard_leave(int lock_fd);
/* Before any file of the cache is opened (every lmc_env_acquire): refuse
 * (UnsafeCacheError) a cache directory, data.mdb, lock.mdb, guard.lock or
 * unsynced that is a symlink or not a regular file (the directory may be a
 * symlink of ours to a directory that passes), writable by group or others,
 * or owned by a uid other than the effective uid or root.  allow_shared skips
 * the owner and mode checks.  -1 with an exception. */
int lmc_trust_check(lmc_state *st, const char *path, const lmc_options *opt);
/* Before mdb_env_open: refuse a data file that is a symlink, empty or
 * truncated (CorruptError); preallocate the lock file.  *file_size: the data
 * file's size (0 when it does not exist yet). */
int lmc_files_check(lmc_state *st, lmc_env *e, const lmc_options *opt, size_t *file_size);
/* The data format (mm_version) of the liblmdb in use; 0 = unknown release. */
unsigned lmc_lmdb_data_version(void);
/* After a successful open: warn about files the guard moved aside.  -1 when
 * a warning raised (the warnings filter says "error"). */
int lmc_guard_warn(lmc_env *e);
/* After the Env holds its reader slot: create the marker (atomically). */
int lmc_marker_create(lmc_state *st, lmc_env *e, const lmc_options *opt);
/* Last close in this process: flush, and drop the marker if no other process
 * has the cache open.  GIL held; releases it. */
void lmc_marker_release(lmc_env *e);

/* Explicit transactions (GIL held). */
int lmc_env_txn_begin(lmc_env *e);
int lmc_env_txn_end(lmc_env *e, int commit);

/* Flush dirty pages to disk (mdb_env_sync force).  GIL held. */
int lmc_env_sync(lmc_env *e);

/* ---- eviction (evict.c) ------------------------------------------------------ */

typedef struct lmc_evict_counts {
    size_t evicted;
    size_t expired;
} lmc_evict_counts;

/* Next sequence number in this write txn. */
uint64_t lmc_evict_next_seq(lmc_env *e, MDB_txn *txn);
/* Record that key of namespace dbname ("" = default) was stored with seq. */
int lmc_evict_note(MDB_txn *txn, lmc_env *e, const char *dbname, const MDB_val *key,
                   uint64_t seq);
/* Evict until the data fits size_limit; `hint` = bytes this txn may add. */
int lmc_evict_enforce(MDB_txn *txn, lmc_env *e, size_t hint, size_t pending,
                      lmc_evict_counts *out);
/* LRU: remember a read of key (GIL held; never a write txn per read). */
void lmc_lru_touch(lmc_env *e, const char *dbname, const MDB_val *key);
/* LRU: write the remembered reads into the index (inside a write txn). */
int lmc_lru_flush(MDB_txn *txn, lmc_env *e);
/* Free eviction state of a closing Env. */
void lmc_evict_free(lmc_env *e);

/* ---- codec (keys.c: keys, codec.c: values) --------------------------------- */

/* How a Store turns values into bytes and back (Cache(serializer=...,
 * compress=...)).  Owned by the Store; set once by Store.__init__. */
#define LMC_SER_PICKLE 0
#define LMC_SER_JSON 1
#define LMC_SER_MSGPACK 2
#define LMC_SER_CUSTOM 3
typedef struct {
    lmc_state *st;
    int kind;             /* LMC_SER_*: anything but pickle never unpickles */
    PyObject *dumps;      /* value -> bytes (or str) for kind; NULL for pickle */
    PyObject *loads[4];   /* by LMC_SER_*: decoder of a payload with that tag, or
                             NULL: such records are refused */
    PyObject *compress;   /* bytes -> bytes, or NULL: never compress */
    PyObject *decompress; /* bytes -> bytes, or NULL: compressed records fail */
    size_t threshold;     /* payloads of at least this many bytes are compressed */
    int sign;             /* records written get a MAC (secret=) */
} lmc_codec;

/* An encoded key: what is looked up in LMDB, and (owned) the full encoding
 * when that is a digest. */
typedef struct {
    MDB_val val;
    PyObject *full;       /* owner of full_data */
    const char *full_data; /* the full encoding of a digested key, else NULL */
    size_t full_len;
} lmc_kref;

/* An encoded key with its own storage, for single-key operations. */
typedef struct {
    lmc_kref r;
    unsigned char buf[LMC_MAX_KEY + 1];
} lmc_key;

/* Many encoded keys in one buffer (batches). */
typedef struct {
    lmc_kref *refs;
    unsigned char *buf;
    Py_ssize_t n;
} lmc_keyset;

/* Encode key; on failure sets TypeError (unhashable/unpicklable, or needing
 * pickle under another serializer) and returns -1.
 * lmc_key_clear must be called after success. */
int lmc_key_encode(const lmc_codec *c, PyObject *key, lmc_key *out);
static inline void lmc_key_clear(lmc_key *k) { Py_CLEAR(k->r.full); }
/* Encode keys[0..n) into ks; -1 with an exception (nothing to free) on error. */
int lmc_keyset_build(const lmc_codec *c, PyObject *const *keys, Py_ssize_t n, lmc_keyset *ks);
void lmc_keyset_free(lmc_keyset *ks);

/* Decode a stored key encoding back to the Python key (may run pickle, only
 * under the pickle serializer). */
PyObject *lmc_key_decode(const lmc_codec *c, const char *p, size_t n);
/* Is the exception set while decoding stored bytes (a key or a value) one to
 * report as CorruptError, with it as the cause?  (Not MemoryError, not a
 * non-Exception such as KeyboardInterrupt, not our own errors.) */
int lmc_decode_failed(lmc_state *st);

typedef struct {
    unsigned char head[LMC_HEADER_SIZE + LMC_MAC_SIZE + 8 + 8 + 4];
    size_t head_len;
    size_t seq_off;         /* offset of the sequence number, 0 = none */
    const char *key;        /* full key (long keys only) */
    size_t key_len;
    const char *data;       /* payload */
    size_t data_len;
    PyObject *owner;        /* owned: keeps data alive */
    unsigned char num[8];   /* payload storage for int/float */
} lmc_value;

/* Encode value with c's serializer (and compressor).  Errors from pickling
 * propagate unchanged; another serializer's are TypeError.  lmc_value_clear
 * after success. */
int lmc_value_encode(const lmc_codec *c, PyObject *value, const lmc_kref *key,
                     double expires, int with_seq, lmc_value *out);
/* Fill in the header of out (tag, flags LMC_FLAG_MAC / LMC_FLAG_ZSTD from
 * extra, expiry, room for a sequence number, long key).  Touches no Python
 * object state: callable without the GIL. */
void lmc_value_head(lmc_value *out, int tag, int extra, double expires, int with_seq,
                    const lmc_kref *key);
static inline void lmc_value_clear(lmc_value *v) { Py_CLEAR(v->owner); }
static inline size_t lmc_value_size(const lmc_value *v)
{
    return v->head_len + v->key_len + v->data_len;
}
/* Write the encoded record into dst (lmc_value_size bytes), with the sequence
 * number when the value has room for one, and its MAC when the header has
 * LMC_FLAG_MAC (mac must then be non-NULL).  No GIL needed. */
void lmc_value_write(const lmc_value *v, char *dst, uint64_t seq, const char *dbname,
                     const MDB_val *key, const lmc_mac *mac);

/* A parsed record, pointing into LMDB memory (valid while the txn lives). */
typedef struct {
    int tag;
    int flags;
    double expires;
    uint64_t seq;
    const char *key;
    size_t key_len;
    const char *data;
    size_t data_len;
} lmc_record;

/* Validate and parse without the GIL: NULL, or why the bytes are bad.  Does
 * not verify the checksum (lmc_record_check does). */
const char *lmc_record_parse_raw(const char *p, size_t n, lmc_record *rec);
/* Parse and verify the checksum of the record stored under key in dbname,
 * and with a mac (a signed cache) its MAC: an unsigned record then fails. */
const char *lmc_record_check(const char *dbname, const MDB_val *key, const char *p, size_t n,
                             lmc_record *rec, const lmc_mac *mac);
uint32_t lmc_record_sum(const char *dbname, const MDB_val *key, const char *p, size_t n);
void lmc_record_mac(const lmc_mac *mac, const char *dbname, const MDB_val *key, const char *p,
                    size_t n, unsigned char *out);
/* CRC32C (crc32c.c): SSE4.2 / ARMv8 instructions when present. */
uint32_t lmc_crc32c(uint32_t crc, const void *p, size_t n);

/* The one record lookup: what `key` holds in dbi.  Returns 0 and sets *status,
 * or an LMDB code (never MDB_NOTFOUND).  For LMC_CORRUPT, *why says what is
 * wrong.  Runs without the GIL; no Py* call. */
#define LMC_LIVE 0
#define LMC_ABSENT 1   /* no record, or one of another key with the same digest */
#define LMC_EXPIRED 2
#define LMC_CORRUPT 3
int lmc_lookup(lmc_env *e, MDB_txn *txn, MDB_dbi dbi, const char *dbname, const lmc_kref *key,
               lmc_record *rec, int *status, const char **why);
/* Does [p, p+n), read in txn, lie in the part of the map the data file backs?
 * (Checked for the Env's read txn only; looks at the file again before no.) */
int lmc_record_in_file(lmc_env *e, MDB_txn *txn, const char *p, size_t n);
/* Validate and parse; returns -1 with CorruptError set on bad bytes. */
int lmc_record_parse(lmc_state *st, const char *p, size_t n, lmc_record *rec,
                     const char *path);
/* Does the record belong to key (long keys are checked against the full key)? */
int lmc_record_matches(const lmc_record *rec, const lmc_kref *key);
/* Phase 1, under the txn: native values become objects; serialized or
 * compressed payloads are copied to a bytes object, and *pending is set to
 * the record's tag (| LMC_PENDING_ZSTD when compressed); else 0.  Runs no
 * Python code. */
#define LMC_PENDING_ZSTD 0x100
PyObject *lmc_record_take(const lmc_record *rec, int *pending);
/* Phase 2, after the txn ended: decompress and decode a copied payload
 * (steals ref). */
PyObject *lmc_value_finish(const lmc_codec *c, PyObject *obj, int pending, const char *path);

/* ---- store (store.c, storewrite.c, batch.c, iter.c, rmw.c, args.c) ----------- */

typedef struct {
    PyObject_HEAD
    lmc_state *state;
    lmc_env *env;     /* the Store's own reference; NULL when closed */
    MDB_dbi dbi;      /* this namespace's sub-database in env */
    unsigned int ns_epoch; /* env->ns_epoch when dbi was looked up */
    char *path;       /* absolute directory path (filesystem encoding) */
    char *ns;         /* namespace name, "" = default */
    char *dbname;     /* LMDB sub-database name, "" = main DB */
    char *boot_id;    /* this boot, or NULL */
    double ttl;       /* default time-to-live in seconds, 0 = none */
    lmc_options opt;
    lmc_codec codec;
    lmc_mac mac;      /* from secret=; opt.mac points here when given */
    unsigned long long hits, misses, sets, deletes, evictions, expirations;
    PyObject *miss_hook; /* remote tier: called as hook(key) on a local miss by
                            [], get and in; returns (value,) or None */
} StoreObject;

/* THE RULE: every Store entry point calls lmc_store_enter first and
 * lmc_store_leave on every way out.  Enter returns a new reference on the
 * Store's current Env (reopening it when closed, inherited across fork, or
 * when its namespace handle went stale) and the namespace's dbi, or NULL with
 * an exception.  Between the two, user code (__hash__, __reduce__,
 * __setstate__, finalizers) and other threads may close the Store: the Env
 * stays alive for the call. */
lmc_env *lmc_store_enter(StoreObject *self, MDB_dbi *dbi);
static inline void lmc_store_leave(lmc_env *e)
{
    lmc_env_release(e);
}
int lmc_store_check_writable(StoreObject *self);
void lmc_store_count(StoreObject *self, const lmc_evict_counts *c);
/* Raise KeyError(key) (the key wrapped in a tuple, so a tuple key survives). */
void lmc_raise_key_error(PyObject *key);
int lmc_parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                   const char *fname, const char *const *names, int nreq, int nmax,
                   PyObject **out);
int lmc_parse_ttl(StoreObject *self, PyObject *ttl, double *expires);
/* Store n pairs in one txn (PUT_ADD: n == 1, returns 1 if added, 0 if
 * present); -1 with an exception, nothing stored. */
#define LMC_PUT_OVERWRITE 0
#define LMC_PUT_ADD 1
int lmc_store_put(StoreObject *self, PyObject *const *keys, PyObject *const *values,
                  Py_ssize_t n, double expires, int mode);
/* Delete keys; the number deleted or -1 with an exception.  With old: the
 * single removed record (malloc'd; caller frees). */
Py_ssize_t lmc_store_remove(StoreObject *self, PyObject *const *keys, Py_ssize_t n,
                            char **old, size_t *old_len);
/* Strong references to the items of an iterable (never borrowed storage
 * across user code).  -1 with an exception; lmc_objs_free after success. */
int lmc_objs_from(PyObject *iterable, const char *what, PyObject ***out, Py_ssize_t *n);
void lmc_objs_free(PyObject **objs, Py_ssize_t n);

/* The single-key write methods (storewrite.c), for the type spec in store.c. */
PyObject *lmc_store_set(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames);
PyObject *lmc_store_add(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames);
int lmc_store_ass_subscript(StoreObject *self, PyObject *key, PyObject *value);
PyObject *lmc_store_delete(StoreObject *self, PyObject *key);
PyObject *lmc_store_pop(StoreObject *self, PyObject *const *args, Py_ssize_t nargs);

/* rmw.c */
PyObject *lmc_store_incr(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames);
PyObject *lmc_store_touch(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames);
/* batch.c */
PyObject *lmc_store_get_many(StoreObject *self, PyObject *keys);
PyObject *lmc_store_set_many(StoreObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *lmc_store_delete_many(StoreObject *self, PyObject *keys);
PyObject *lmc_store_clear(StoreObject *self, PyObject *unused);
PyObject *lmc_store_expire(StoreObject *self, PyObject *unused);
/* hash128.c: Store._expire_time(key) (THE RULE) and _core._hash128(buffer). */
PyObject *lmc_store_expire_time(StoreObject *self, PyObject *key);
/* The one read of a single key's record (store.c): a read txn, lmc_lookup,
 * and take(rec, arg) on a live record while the txn is live (take may only
 * copy out and make native objects: no user code).  Returns LMC_LIVE,
 * LMC_ABSENT or LMC_EXPIRED, or -1 with an exception (a read error, or
 * CorruptError for a damaged record).  take's own failure is left to the
 * caller (take records it in arg). */
typedef void (*lmc_take_fn)(const lmc_record *rec, void *arg);
int lmc_store_read(StoreObject *self, lmc_env *e, MDB_dbi dbi, const lmc_kref *key,
                   lmc_take_fn take, void *arg);
PyObject *lmc_hash128(PyObject *module, PyObject *arg);
PyObject *lmc_store_prefix_count(StoreObject *self, PyObject *prefix);
PyObject *lmc_store_prefix_delete(StoreObject *self, PyObject *prefix);
PyObject *lmc_store_transaction(StoreObject *self, PyObject *unused);
PyObject *lmc_store_txn_begin(StoreObject *self, PyObject *unused);
PyObject *lmc_store_txn_end(StoreObject *self, PyObject *commit);
PyObject *lmc_store_in_txn(StoreObject *self, PyObject *unused);
PyObject *lmc_store_sync(StoreObject *self, PyObject *unused);
PyObject *lmc_store_stats(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames);
PyObject *lmc_store_env_info(StoreObject *self, PyObject *unused);
/* raw.c: encoded records in and out (the remote tier) */
PyObject *lmc_store_get_raw(StoreObject *self, PyObject *key);
PyObject *lmc_store_put_raw(StoreObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *lmc_store_encode_raw(StoreObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *lmc_store_key_raw(StoreObject *self, PyObject *key);
PyObject *lmc_store_delete_raw(StoreObject *self, PyObject *kb);
PyObject *lmc_store_set_namespace(StoreObject *self, PyObject *name);
/* iter.c */
PyObject *lmc_store_iter(StoreObject *self);
PyObject *lmc_store_iter_mode(StoreObject *self, PyObject *arg);

/* ---- write callbacks (txnops.c: no GIL, no Py* call) ----------------------- */

typedef struct {
    MDB_dbi dbi;
    const char *dbname;
    Py_ssize_t n;        /* number of records */
    lmc_kref *keys;
    lmc_value *vals;
    int mode;            /* LMC_PUT_* */
    int added;           /* LMC_PUT_ADD: stored? */
} lmc_put_arg;
int lmc_put_fn(MDB_txn *txn, lmc_env *e, void *arg);

typedef struct {
    MDB_dbi dbi;
    const char *dbname;
    Py_ssize_t n;
    lmc_kref *keys;
    Py_ssize_t deleted;
    int want_old;        /* pop: copy the removed record out (malloc) */
    char *old;
    size_t old_len;
    const char *old_why; /* pop: the removed record was corrupt (old is NULL) */
} lmc_del_arg;
int lmc_del_fn(MDB_txn *txn, lmc_env *e, void *arg);

typedef struct {
    MDB_dbi dbi;
    const char *dbname;
    lmc_kref *key;
    long long delta, dflt, result;
    double expires;      /* incr: expiry of a new record; touch: the new expiry */
    int found;           /* touch: was the key present */
} lmc_rmw_arg;
int lmc_incr_fn(MDB_txn *txn, lmc_env *e, void *arg);
int lmc_touch_fn(MDB_txn *txn, lmc_env *e, void *arg);

typedef struct {
    MDB_dbi dbi;
    const char *dbname;
    int is_main;
    size_t removed;
} lmc_scan_arg;
int lmc_expire_fn(MDB_txn *txn, lmc_env *e, void *arg);
int lmc_clear_fn(MDB_txn *txn, lmc_env *e, void *arg);

typedef struct {
    MDB_dbi dbi;
    MDB_val prefix;
    int delete;
    size_t count;
} lmc_prefix_arg;
int lmc_prefix_scan(MDB_txn *txn, lmc_prefix_arg *a);
int lmc_prefix_fn(MDB_txn *txn, lmc_env *e, void *arg);
int lmc_noop_fn(MDB_txn *txn, lmc_env *e, void *arg);

/* ---- maintenance (maint.c) ------------------------------------------------------
 * Store methods following THE RULE (lmc_store_enter/lmc_store_leave). */

/* Store._copy(dest, compact): copy the environment into the existing
 * directory dest (which must hold no data.mdb), compacting with
 * MDB_CP_COMPACT when compact is true, and flush the copy to disk. */
PyObject *lmc_store_copy(StoreObject *self, PyObject *const *args, Py_ssize_t nargs);
/* Store._maint(op, ...): "survey" -> dict (other reader pids, sub-databases,
 * sizes, format); "scan", after, limit -> dict (a chunk of the record walk of
 * this namespace, every record's checksum verified). */
PyObject *lmc_store_maint(StoreObject *self, PyObject *const *args, Py_ssize_t nargs);

extern PyType_Spec lmc_store_spec;
extern PyType_Spec lmc_iter_spec;
extern PyType_Spec lmc_txn_spec;

#endif /* LMDBCACHE_H */
