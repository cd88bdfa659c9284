/*
 * namespace.c -- the namespaces (LMDB sub-databases) an Env has open.
 *
 * A namespace "x" is the sub-database LMC_NS_PREFIX "x"; the default
 * namespace is the main DB.  Each Env keeps a table name -> dbi.  It is
 * changed and read under write_lock (or the GIL on a read-only Env, which has
 * no writers).  The last n_pending entries were opened by the write txn in
 * progress: LMDB keeps such a handle on commit and drops it on abort, and so
 * does lmc_ns_settle.  The table uses malloc, not PyMem: it is changed with the
 * GIL released.
 */
#include "lmdbcache.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(LMC_NS_PREFIX) - 1 + LMC_MAX_NS <= LMC_MAX_KEY,
               "a namespace's sub-database name must fit LMDB's key limit");

static int ns_find(lmc_env *e, const char *dbname, MDB_dbi *dbi)
{
    int i;
    for (i = 0; i < e->n_ns; i++) {
        if (strcmp(e->ns[i].name, dbname) == 0) {
            *dbi = e->ns[i].dbi;
            return 0;
        }
    }
    return MDB_NOTFOUND;
}

static int ns_add(lmc_env *e, const char *dbname, MDB_dbi dbi, int pending)
{
    size_t n = strlen(dbname) + 1;
    char *name;

    if (e->n_ns == e->cap_ns) {
        int cap = e->cap_ns ? e->cap_ns * 2 : 8;
        lmc_ns *ns = realloc(e->ns, (size_t)cap * sizeof(*ns));
        if (ns == NULL)
            return ENOMEM;
        e->ns = ns;
        e->cap_ns = cap;
    }
    name = malloc(n);
    if (name == NULL)
        return ENOMEM;
    memcpy(name, dbname, n);
    e->ns[e->n_ns].name = name;
    e->ns[e->n_ns++].dbi = dbi;
    if (pending)
        e->n_pending++;
    return 0;
}

int lmc_env_ns_dbi(lmc_env *e, MDB_txn *txn, const char *dbname, MDB_dbi *dbi)
{
    int rc;
    if (dbname[0] == '\0') {
        *dbi = e->main_dbi;
        return 0;
    }
    if (ns_find(e, dbname, dbi) == 0)
        return 0;
    rc = mdb_dbi_open(txn, dbname, 0, dbi);
    if (rc != 0)
        return rc;
    return ns_add(e, dbname, *dbi, 1);
}

int lmc_ns_open_in(lmc_env *e, MDB_txn *txn, const char *dbname, int create, MDB_dbi *dbi)
{
    int rc;
    if (ns_find(e, dbname, dbi) == 0)
        return 0;
    rc = mdb_dbi_open(txn, dbname, create ? MDB_CREATE : 0, dbi);
    if (rc != 0)
        return rc;
    return ns_add(e, dbname, *dbi, 1);
}

void lmc_ns_settle(lmc_env *e, int committed)
{
    if (!committed && e->n_pending > 0) {
        e->ns_epoch++; /* Stores holding those dbi handles look again */
        while (e->n_pending > 0) {
            free(e->ns[--e->n_ns].name);
            e->n_pending--;
        }
    }
    e->n_pending = 0;
}

void lmc_ns_free(lmc_env *e)
{
    int i;
    for (i = 0; i < e->n_ns; i++)
        free(e->ns[i].name);
    free(e->ns);
    e->ns = NULL;
    e->n_ns = e->cap_ns = e->n_pending = 0;
}

int lmc_env_namespace(lmc_env *e, const char *name, int create, MDB_dbi *dbi)
{
    char dbname[sizeof(LMC_NS_PREFIX) + LMC_MAX_NS];
    lmc_ns_arg a;
    MDB_txn *txn;
    int rc;

    if (name[0] == '\0') {
        *dbi = e->main_dbi;
        return 0;
    }
    if (strlen(name) > LMC_MAX_NS)
        return MDB_BAD_VALSIZE;
    PyOS_snprintf(dbname, sizeof(dbname), "%s%s", LMC_NS_PREFIX, name);
    if (!(e->flags & MDB_RDONLY)) {
        a.dbname = dbname;
        a.create = create;
        rc = lmc_env_write(e, lmc_ns_open_fn, &a, LMC_WRITE_FREES, 0, NULL);
        if (rc == 0)
            *dbi = a.dbi;
        return rc;
    }
    /* read-only Env: no writer exists, the GIL guards the table */
    if (ns_find(e, dbname, dbi) == 0)
        return 0;
    rc = lmc_env_begin(e, MDB_RDONLY, &txn, NULL);
    if (rc != 0)
        return rc;
    rc = mdb_dbi_open(txn, dbname, 0, dbi);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    rc = mdb_txn_commit(txn);
    if (rc == 0)
        rc = ns_add(e, dbname, *dbi, 0);
    return rc;
}
