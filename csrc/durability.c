/*
 * durability.c -- guard.lock, the torn-file guard and the `unsynced` marker.
 *
 * With durability="process" (MDB_NOSYNC|MDB_WRITEMAP) an OS crash can tear
 * the data file.  While any process may hold unsynced commits, <dir>/unsynced
 * holds the boot id of the boot they were made in.  An opener that finds a
 * marker naming another boot knows the machine went down with unsynced
 * writes: it moves data.mdb and lock.mdb aside to <dir>/torn-<time>/ and the
 * cache starts empty (a read-only opener raises CorruptError instead).
 *
 * Ordering:
 *  - every writable open runs the guard and creates its marker holding an
 *    exclusive flock on <dir>/guard.lock, so no opener can move a file aside
 *    under another that is opening it;
 *  - the marker is created and removed under LMDB's writer lock, and an Env
 *    takes its reader slot before creating it, so the last closer (which
 *    sees no other process in the reader table) cannot remove a marker
 *    another opener relies on;
 *  - the marker is written to a temporary file and linked into place, so it
 *    exists only with its whole content: a process killed half-way leaves no
 *    marker or a complete one.  A marker that is empty, unreadable or not a
 *    boot id is never taken as proof of an OS crash; it is replaced.
 */
#define _GNU_SOURCE /* fallocate */
#include "lmdbcache.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MARKER_MAX 128

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = PyMem_RawMalloc(n);
    if (p != NULL)
        PyOS_snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Take an exclusive flock on fd, waiting up to timeout seconds with the GIL
 * released.  0, LMC_ERR_TIMEOUT or an errno. */
static int lock_wait(int fd, double timeout)
{
    double deadline = lmc_now() + timeout;
    int rc = 0;

    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            rc = 0;
            break;
        }
        if (errno != EWOULDBLOCK && errno != EINTR) {
            rc = errno;
            break;
        }
        if (lmc_now() >= deadline) {
            rc = LMC_ERR_TIMEOUT;
            break;
        }
        lmc_sleep_ms(5);
    }
    Py_END_ALLOW_THREADS
    return rc;
}

/* Read the marker: 1 and the boot id in buf when it holds one, 0 when it is
 * absent or holds no valid boot id (empty, unreadable, binary). */
static int marker_read(const char *path, char *buf, size_t size)
{
    ssize_t n;
    size_t i;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

    if (fd < 0)
        return 0;
    n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0)
        return 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    if (n == 0)
        return 0;
    for (i = 0; i < (size_t)n; i++) {
        if (buf[i] < 0x21 || buf[i] > 0x7e)
            return 0;
    }
    return 1;
}

/* Move data.mdb and lock.mdb to a new <prefix>-<time> directory (torn-...,
 * incompatible-...).  Call holding the exclusive flock on guard.lock. */
static int move_aside(lmc_env *e, const char *prefix, char **to)
{
    char stamp[64], fmt[48], *dir = NULL, *src = NULL, *dst = NULL;
    static const char *const names[] = {"data.mdb", "lock.mdb"};
    struct tm tm;
    time_t now = time(NULL);
    int i, rc = 0;

    localtime_r(&now, &tm);
    PyOS_snprintf(fmt, sizeof(fmt), "%s-%%Y%%m%%d-%%H%%M%%S", prefix);
    for (i = 0; i < 100; i++) {
        size_t n = strftime(stamp, sizeof(stamp), fmt, &tm);
        if (i > 0)
            PyOS_snprintf(stamp + n, sizeof(stamp) - n, "-%d", i);
        PyMem_RawFree(dir);
        dir = join(e->path, stamp);
        if (dir == NULL)
            return ENOMEM;
        if (mkdir(dir, 0700) == 0) {
            chmod(dir, 0700); /* exactly, whatever the umask */
            break;
        }
        if (errno != EEXIST) {
            rc = errno;
            goto done;
        }
    }
    for (i = 0; i < 2 && rc == 0; i++) {
        src = join(e->path, names[i]);
        dst = join(dir, names[i]);
        if (src == NULL || dst == NULL)
            rc = ENOMEM;
        else if (rename(src, dst) != 0 && errno != ENOENT)
            rc = errno;
        PyMem_RawFree(src);
        PyMem_RawFree(dst);
        src = dst = NULL;
    }
done:
    if (rc == 0)
        *to = dir;
    else
        PyMem_RawFree(dir);
    return rc;
}

/* ---- the trust check ---------------------------------------------------------
 * Values and non-native keys are pickles: whoever can write the cache's files
 * can run code in every process that reads them.  So before any file is
 * opened, the directory and the files lmdbcache opens must be ours (or
 * root's) and not writable by group or others; none of the files may be a
 * symlink.  Once the directory passes, no other user can add, remove or
 * replace its entries, so what is checked here is what LMDB opens. */

static const char *const trusted_names[] = {"data.mdb", "lock.mdb", "guard.lock", "unsynced"};

static int unsafe(lmc_state *st, const char *dir, const char *what, const char *problem,
                  const char *fix)
{
    PyErr_Format(st->UnsafeCacheError,
                 "refusing to open the cache in '%s': %s %s; whoever can write a cache can "
                 "run code in every process that reads it (values are pickles).  %s",
                 dir, what, problem, fix);
    return -1;
}

/* Owner and mode of sb (the entry `what` of the cache in dir). */
static int trust_stat(lmc_state *st, const char *dir, const char *what, const struct stat *sb,
                      const lmc_options *opt)
{
    char problem[160], fix[PATH_MAX + 200];
    uid_t me = geteuid();

    if (opt->allow_shared)
        return 0;
    if (sb->st_uid != me && sb->st_uid != 0) {
        PyOS_snprintf(problem, sizeof(problem), "is owned by uid %ld, not by this process's "
                      "uid %ld (nor root)", (long)sb->st_uid, (long)me);
        PyOS_snprintf(fix, sizeof(fix), "Use a directory of your own, or pass "
                      "allow_shared=True if you trust every user who can write it.");
        return unsafe(st, dir, what, problem, fix);
    }
    if (sb->st_mode & (S_IWGRP | S_IWOTH)) {
        PyOS_snprintf(problem, sizeof(problem), "is writable by %s (mode %04o)",
                      (sb->st_mode & S_IWOTH) ? "others" : "its group",
                      (unsigned)(sb->st_mode & 07777));
        PyOS_snprintf(fix, sizeof(fix), "Run chmod go-w on it, or pass allow_shared=True if "
                      "you trust every user who can write it.");
        return unsafe(st, dir, what, problem, fix);
    }
    return 0;
}

int lmc_trust_check(lmc_state *st, const char *path, const lmc_options *opt)
{
    char what[PATH_MAX + 32], *file;
    struct stat sb, lsb;
    size_t i;
    int rc;

    if (lstat(path, &lsb) != 0) {
        lmc_raise(st, errno, "open the cache directory", path);
        return -1;
    }
    if (S_ISLNK(lsb.st_mode)) {
        /* A symlink of ours (or root's) to a directory that passes itself: the
         * link can only be replaced by who can write its parent, which is not
         * checked (see docs/security.md). */
        if (!opt->allow_shared && lsb.st_uid != geteuid() && lsb.st_uid != 0)
            return unsafe(st, path, "the directory", "is a symlink owned by another user",
                          "Pass the real path of the directory.");
        if (stat(path, &sb) != 0) {
            lmc_raise(st, errno, "open the cache directory", path);
            return -1;
        }
    }
    else
        sb = lsb;
    if (!S_ISDIR(sb.st_mode))
        return 0; /* the caller reports it */
    if (trust_stat(st, path, "the directory", &sb, opt) < 0)
        return -1;
    for (i = 0; i < sizeof(trusted_names) / sizeof(trusted_names[0]); i++) {
        file = join(path, trusted_names[i]);
        if (file == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        rc = lstat(file, &lsb);
        if (rc != 0 && errno != ENOENT && errno != ENOTDIR) {
            lmc_raise(st, errno, "inspect the cache's files", file);
            PyMem_RawFree(file);
            return -1;
        }
        PyMem_RawFree(file);
        if (rc != 0)
            continue;
        PyOS_snprintf(what, sizeof(what), "'%s'", trusted_names[i]);
        if (S_ISLNK(lsb.st_mode))
            return unsafe(st, path, what, "is a symlink (which LMDB would follow)",
                          "Remove it; lmdbcache never creates symlinks.");
        if (!S_ISREG(lsb.st_mode))
            return unsafe(st, path, what, "is not a regular file", "Remove it.");
        if (trust_stat(st, path, what, &lsb, opt) < 0)
            return -1;
    }
    return 0;
}

int lmc_guard_enter(lmc_state *st, lmc_env *e, const lmc_options *opt, int *lock_fd)
{
    char written[MARKER_MAX], *guard = NULL, *marker = NULL;
    const char *op = "open guard.lock";
    int rc = 0, fd = -1, valid;

    *lock_fd = -1;
    guard = join(e->path, "guard.lock");
    marker = join(e->path, "unsynced");
    if (guard == NULL || marker == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    if (!opt->readonly) {
        fd = open(guard, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 && errno != EACCES && errno != EROFS && errno != EPERM) {
            rc = errno;
            goto lmdb_error;
        }
        if (fd >= 0 && (rc = lock_wait(fd, opt->timeout)) != 0) {
            op = "lock guard.lock";
            goto lmdb_error;
        }
    }
    valid = marker_read(marker, written, sizeof(written));
    if (!valid) {
        /* absent, or not a boot id: no proof of anything; a new one is made */
        if (fd >= 0)
            unlink(marker);
    }
    else if (opt->boot_id != NULL && strcmp(written, opt->boot_id) != 0) {
        if (fd < 0) {
            PyErr_Format(st->CorruptError,
                         "the cache in '%s' may be torn: the machine went down while it held "
                         "unsynced writes; open it once with readonly=False to discard it",
                         e->path);
            goto error;
        }
        op = "move a torn cache aside";
        if ((rc = move_aside(e, "torn", &e->torn_to)) != 0)
            goto lmdb_error;
        e->torn_boot = PyMem_RawMalloc(strlen(written) + 1);
        if (e->torn_boot == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        strcpy(e->torn_boot, written);
        if (unlink(marker) != 0 && errno != ENOENT) {
            rc = errno;
            goto lmdb_error;
        }
    }
    PyMem_RawFree(guard);
    PyMem_RawFree(marker);
    *lock_fd = fd;
    return 0;

lmdb_error:
    lmc_raise(st, rc, op, rc == LMC_ERR_TIMEOUT || fd < 0 ? guard : e->path);
error:
    if (fd >= 0)
        close(fd);
    PyMem_RawFree(guard);
    PyMem_RawFree(marker);
    return -1;
}

void lmc_guard_leave(int lock_fd)
{
    if (lock_fd >= 0)
        flock(lock_fd, LOCK_UN); /* the Env keeps the descriptor for size changes */
}

int lmc_marker_create(lmc_state *st, lmc_env *e, const lmc_options *opt)
{
    char tmpname[64], *tmp;
    MDB_txn *txn;
    size_t len = strlen(opt->boot_id);
    int rc, fd;

    e->marker_path = join(e->path, "unsynced");
    PyOS_snprintf(tmpname, sizeof(tmpname), "unsynced.%ld.tmp", (long)getpid());
    tmp = join(e->path, tmpname);
    if (e->marker_path == NULL || tmp == NULL) {
        PyMem_RawFree(tmp);
        PyErr_NoMemory();
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->write_lock);
    rc = lmc_env_begin(e, 0, &txn, &_save); /* LMDB's writer lock, across processes */
    if (rc == 0) {
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            rc = errno;
        else {
            errno = 0;
            if (write(fd, opt->boot_id, len) != (ssize_t)len)
                rc = errno ? errno : ENOSPC;
            if (close(fd) != 0 && rc == 0)
                rc = errno;
            if (rc == 0 && link(tmp, e->marker_path) != 0 && errno != EEXIST)
                rc = errno;
            unlink(tmp);
        }
        mdb_txn_abort(txn);
    }
    pthread_mutex_unlock(&e->write_lock);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(tmp);
    if (rc != 0) {
        lmc_raise(st, rc, "write the durability marker", e->marker_path);
        return -1;
    }
    e->marker = 1;
    return 0;
}

static int count_other_readers(const char *msg, void *ctx)
{
    int pid;
    if (sscanf(msg, "%d", &pid) == 1 && pid != (int)getpid())
        (*(int *)ctx)++;
    return 0;
}

void lmc_marker_release(lmc_env *e)
{
    MDB_txn *txn;
    int rc, dead, others = 0;

    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->write_lock);
    rc = lmc_env_begin(e, 0, &txn, &_save);
    if (rc == 0) {
        if (mdb_env_sync(e->env, 1) == 0 && mdb_reader_check(e->env, &dead) == 0 &&
            mdb_reader_list(e->env, count_other_readers, &others) >= 0 && others == 0)
            unlink(e->marker_path);
        mdb_txn_abort(txn);
    }
    pthread_mutex_unlock(&e->write_lock);
    Py_END_ALLOW_THREADS
}

/* ---- the files, before LMDB touches them --------------------------------------
 * data.mdb: a symlink, a non-regular file or an empty file is refused; the
 * size is checked against the newer valid meta page's last used page, so a
 * truncated file is CorruptError instead of SIGBUS (or LMDB extending it
 * with zeros).  lmdbcache keeps the file at least that long (env_reserve).
 * lock.mdb: fully allocated up front -- LMDB creates it sparse, and a reader
 * slot on an unallocated page of a full disk is a SIGBUS. */

#define LMDB_MAGIC 0xBEEFC0DEu
/* The page header before the meta of pages 0 and 1: 16 bytes in data format
 * 1 (pgno, pad, flags, lower/upper); formats 2 and 3 added a txnid after the
 * pgno (24 bytes).  The meta itself kept its layout (mdb.c, MDB_meta). */
#define META_OFF_V1 16
#define META_OFF_V2 24

typedef struct {
    uint32_t magic, version;
    uint64_t mapsize, last_pg, txnid;
    uint32_t psize;
} meta_view;

static int meta_read(int fd, off_t off, unsigned hdr, meta_view *m)
{
    unsigned char b[META_OFF_V2 + 136];
    if (pread(fd, b, hdr + 136, off) != (ssize_t)(hdr + 136))
        return -1;
    memcpy(&m->magic, b + hdr + 0, 4);
    memcpy(&m->version, b + hdr + 4, 4);
    memcpy(&m->mapsize, b + hdr + 16, 8);
    memcpy(&m->psize, b + hdr + 24, 4); /* mm_dbs[FREE_DBI].md_pad */
    memcpy(&m->last_pg, b + hdr + 120, 8);
    memcpy(&m->txnid, b + hdr + 128, 8);
    return m->magic == LMDB_MAGIC ? 0 : -1;
}

/* The data format (MDB_DATA_VERSION, a meta page's mm_version) of the liblmdb
 * in use.  LMDB does not export it; it follows from mdb_version(), per mdb.c
 * of each line (git.openldap.org/openldap/openldap, branch or tag):
 *   0.9.x (LMDB_0.9.* tags, mdb.RE/0.9, mdb.master)     1
 *   0.9.90 (mdb.master3: the 1.0 development series)    2  txnid in page header
 *   1.0.x (LMDB 1.0 releases)                           3
 * 0: a release this table does not know (LMDB's own check decides). */
unsigned lmc_lmdb_data_version(void)
{
    int major, minor, patch;
    mdb_version(&major, &minor, &patch);
    if (major == 0 && minor == 9)
        return patch >= 90 ? 2 : 1;
    if (major == 1 && minor == 0)
        return 3;
    return 0;
}

static const char *format_name(unsigned version)
{
    switch (version) {
    case 1: return "LMDB 0.9";
    case 2: return "an LMDB 1.0 development snapshot";
    case 3: return "LMDB 1.0";
    default: return "an unknown LMDB release";
    }
}

/* The data format of a file whose first page is an LMDB meta page of either
 * header layout; 0 when it is neither. */
static unsigned file_data_version(int fd)
{
    meta_view m;
    if (meta_read(fd, 0, META_OFF_V1, &m) == 0 || meta_read(fd, 0, META_OFF_V2, &m) == 0)
        return m.version;
    return 0;
}

/* data.mdb was written by an LMDB of another data format: raise FormatError,
 * or with on_incompatible="reset" move it aside (under guard.lock).  0 when
 * moved, -1 with an exception. */
static int incompatible(lmc_state *st, lmc_env *e, const lmc_options *opt, const char *data,
                        unsigned theirs, unsigned ours)
{
    int major, minor, patch, rc;

    mdb_version(&major, &minor, &patch);
    if (!opt->reset_incompatible || opt->readonly) {
        PyErr_Format(st->FormatError,
                     "'%s' was written by %s (data format %u); this lmdbcache uses LMDB "
                     "%d.%d.%d (data format %u), and neither can read the other's files.  "
                     "Open it with Cache(path, on_incompatible=\"reset\")%s to move the old "
                     "files aside and start an empty cache, or delete the directory",
                     data, format_name(theirs), theirs, major, minor, patch, ours,
                     opt->readonly ? " (not readonly)" : "");
        return -1;
    }
    if ((rc = move_aside(e, "incompatible", &e->incompat_to)) != 0) {
        lmc_raise(st, rc, "move an incompatible cache aside", e->path);
        return -1;
    }
    e->incompat_version = theirs;
    return 0;
}

int lmc_guard_warn(lmc_env *e)
{
    int major, minor, patch;

    if (e->torn_to != NULL &&
        PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                         "lmdbcache: the cache in '%s' was not synced before the machine went "
                         "down (boot %s), so its file may be torn; it was moved to '%s' and "
                         "the cache starts empty",
                         e->path, e->torn_boot, e->torn_to) < 0)
        return -1;
    mdb_version(&major, &minor, &patch);
    if (e->incompat_to != NULL &&
        PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                         "lmdbcache: the cache in '%s' was written by %s (data format %u), "
                         "which LMDB %d.%d.%d cannot read; it was moved to '%s' and the cache "
                         "starts empty",
                         e->path, format_name(e->incompat_version), e->incompat_version,
                         major, minor, patch, e->incompat_to) < 0)
        return -1;
    return 0;
}

static int prealloc_lock(const char *path, unsigned int max_readers)
{
#ifdef __linux__
    /* LMDB sizes the file (max_readers - 1) * 64 + a header of a few cache
     * lines; allocate blocks past that without changing the size, which
     * LMDB sets itself (and from which it derives the reader count). */
    off_t size = (off_t)max_readers * 64 + 8192;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600), rc = 0;
    if (fd < 0)
        return errno == EACCES || errno == EROFS || errno == EPERM ? 0 : errno;
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size) != 0 && errno != EOPNOTSUPP &&
        errno != ENOSYS)
        rc = errno;
    close(fd);
    return rc;
#else
    (void)path;
    (void)max_readers;
    return 0;
#endif
}

/* LMDB's mdb_env_open waits without a bound (F_SETLKW) while another process
 * holds the exclusive fcntl lock on byte 0 of lock.mdb: LMDB's first opener
 * holds it during its own mdb_env_open, compact() during its swap -- and a
 * hostile process that can open lock.mdb for writing, forever.  Wait here
 * instead, at most timeout seconds (GIL released), then LockError.  F_GETLK
 * takes no lock, so closing the probe descriptor drops none of this
 * process's (it holds none on the file yet: one Env per file).  A lock taken
 * between this probe and LMDB's is still waited for by LMDB. */
static int lock_file_wait(lmc_state *st, const char *lock, double timeout)
{
    struct flock fl;
    double deadline = lmc_now() + timeout;
    int fd, rc = 0;
    long pid = 0;

    fd = open(lock, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0; /* absent (LMDB creates it) or unreadable (LMDB reports it) */
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        memset(&fl, 0, sizeof(fl));
        fl.l_type = F_RDLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = 0;
        fl.l_len = 1;
        if (fcntl(fd, F_GETLK, &fl) != 0 || fl.l_type == F_UNLCK)
            break;
        if (lmc_now() >= deadline) {
            rc = 1;
            pid = (long)fl.l_pid;
            break;
        }
        lmc_sleep_ms(5);
    }
    Py_END_ALLOW_THREADS
    close(fd);
    if (rc != 0) {
        /* PyErr_Format has no %g (3.12 raises SystemError, 3.11 prints it raw). */
        char secs[32];
        snprintf(secs, sizeof(secs), "%g", timeout);
        PyErr_Format(st->LockError,
                     "cannot open the environment in '%s': process %ld has held the exclusive "
                     "lock on lock.mdb for more than %s s (see the timeout option)",
                     lock, pid, secs);
        return -1;
    }
    return 0;
}

int lmc_files_check(lmc_state *st, lmc_env *e, const lmc_options *opt, size_t *file_size)
{
    char *data = join(e->path, "data.mdb"), *lock = join(e->path, "lock.mdb");
    struct stat sb;
    meta_view m0, m1, *m = NULL;
    unsigned ours, theirs, hdr;
    int fd = -1, rc, ok0, ok1, result = -1;

    *file_size = 0;
    if (data == NULL || lock == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (lstat(data, &sb) != 0) {
        if (errno != ENOENT) {
            lmc_raise(st, errno, "inspect the data file", data);
            goto done;
        }
    }
    else if (S_ISLNK(sb.st_mode) || !S_ISREG(sb.st_mode)) {
        PyErr_Format(st->CorruptError, "'%s' is not a regular file (a symlink or a device): "
                     "refusing to open it", data);
        goto done;
    }
    else if (sb.st_size == 0) {
        PyErr_Format(st->CorruptError, "'%s' is empty: it is no LMDB data file (remove it to "
                     "start an empty cache)", data);
        goto done;
    }
    else {
        fd = open(data, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            lmc_raise(st, errno, "open the data file", data);
            goto done;
        }
        ours = lmc_lmdb_data_version();
        theirs = file_data_version(fd);
        if (ours != 0 && theirs != 0 && theirs != ours) {
            close(fd);
            fd = -1;
            if (incompatible(st, e, opt, data, theirs, ours) < 0)
                goto done;
            goto lock; /* moved aside: a new cache */
        }
        hdr = ours >= 2 ? META_OFF_V2 : META_OFF_V1;
        ok0 = meta_read(fd, 0, hdr, &m0) == 0;
        ok1 = ok0 && m0.psize >= 512 && m0.psize <= 65536 &&
              meta_read(fd, (off_t)m0.psize, hdr, &m1) == 0;
        if (ok0)
            m = ok1 && m1.txnid > m0.txnid ? &m1 : &m0;
        if (m != NULL && m->psize >= 512 && (uint64_t)sb.st_size < (m->last_pg + 1) * m->psize) {
            PyErr_Format(st->CorruptError,
                         "'%s' is truncated: %lld bytes, but its last page ends at byte %llu",
                         data, (long long)sb.st_size,
                         (unsigned long long)((m->last_pg + 1) * m->psize));
            goto done;
        }
        *file_size = (size_t)sb.st_size;
        /* no valid meta: LMDB's own check says MDB_INVALID -> CorruptError */
    }
lock:
    if (!opt->readonly && (rc = prealloc_lock(lock, opt->max_readers)) != 0) {
        lmc_raise(st, rc, "allocate the lock file", lock);
        goto done;
    }
    if (lock_file_wait(st, lock, opt->timeout) < 0)
        goto done;
    result = 0;
done:
    if (fd >= 0)
        close(fd);
    PyMem_RawFree(data);
    PyMem_RawFree(lock);
    return result;
}
