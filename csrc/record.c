/*
 * record.c -- reading a stored value record: parse and validate it, verify its
 * checksum, check that it lies inside the data file, and the one lookup every
 * read and write-txn body uses (lmc_lookup).  No Py* call: these run inside
 * write txns without the GIL as well.  Encoding is in codec.c.
 */
#include "lmdbcache.h"

#include <string.h>
#include <sys/stat.h>

/* The record checksum: CRC32C over the sub-database name, the LMDB key and
 * the whole record except the checksum field itself, each length-prefixed. */
uint32_t lmc_record_sum(const char *dbname, const MDB_val *key, const char *p, size_t n)
{
    /* one pass over a small buffer holding everything but the payload */
    unsigned char buf[4 + sizeof(LMC_NS_PREFIX) + LMC_MAX_NS + 4 + LMC_MAX_KEY + LMC_SUM_OFF];
    uint32_t dl = (uint32_t)strlen(dbname), kl = (uint32_t)key->mv_size, crc;
    size_t pos = 0;

    if (LMC_UNLIKELY(dl > sizeof(LMC_NS_PREFIX) + LMC_MAX_NS || kl > LMC_MAX_KEY)) {
        crc = lmc_crc32c(0, &dl, 4);
        crc = lmc_crc32c(crc, dbname, dl);
        crc = lmc_crc32c(crc, &kl, 4);
        crc = lmc_crc32c(crc, key->mv_data, kl);
        crc = lmc_crc32c(crc, p, LMC_SUM_OFF);
    }
    else {
        memcpy(buf, &dl, 4);
        memcpy(buf + 4, dbname, dl);
        pos = 4 + dl;
        memcpy(buf + pos, &kl, 4);
        memcpy(buf + pos + 4, key->mv_data, kl);
        pos += 4 + kl;
        memcpy(buf + pos, p, LMC_SUM_OFF);
        crc = lmc_crc32c(0, buf, pos + LMC_SUM_OFF);
    }
    return lmc_crc32c(crc, p + LMC_SUM_OFF + 4, n - LMC_SUM_OFF - 4);
}

/* The record MAC (a signed cache): keyed BLAKE2b-128 over what the checksum
 * covers, minus the checksum and the MAC fields.  The record must have the
 * MAC field (n >= LMC_MAC_OFF + LMC_MAC_SIZE). */
void lmc_record_mac(const lmc_mac *mac, const char *dbname, const MDB_val *key, const char *p,
                    size_t n, unsigned char *out)
{
    lmc_blake2b s = mac->keyed;
    uint32_t dl = (uint32_t)strlen(dbname), kl = (uint32_t)key->mv_size;

    lmc_blake2b_update(&s, &dl, 4);
    lmc_blake2b_update(&s, dbname, dl);
    lmc_blake2b_update(&s, &kl, 4);
    lmc_blake2b_update(&s, key->mv_data, kl);
    lmc_blake2b_update(&s, p, LMC_SUM_OFF);
    lmc_blake2b_update(&s, p + LMC_MAC_OFF + LMC_MAC_SIZE, n - LMC_MAC_OFF - LMC_MAC_SIZE);
    lmc_blake2b_final(&s, out);
}

const char *lmc_record_parse_raw(const char *p, size_t n, lmc_record *rec)
{
    size_t off = LMC_HEADER_SIZE;
    uint32_t kl;

    rec->tag = 0;
    rec->flags = 0;
    rec->expires = 0;
    rec->seq = 0;
    rec->key = NULL;
    rec->key_len = 0;
    rec->data = NULL;
    rec->data_len = 0;
    if (LMC_UNLIKELY(n < LMC_HEADER_SIZE))
        return "record shorter than its header";
    if (LMC_UNLIKELY((unsigned char)p[0] != LMC_RECORD_VERSION))
        return "unknown record version";
    rec->tag = (unsigned char)p[1];
    rec->flags = (unsigned char)p[2];
    rec->expires = 0;
    rec->seq = 0;
    rec->key = NULL;
    rec->key_len = 0;
    if (LMC_UNLIKELY(rec->flags & ~LMC_KNOWN_FLAGS))
        return "unknown record flags";
    if (rec->flags & LMC_FLAG_MAC) {
        if (n - off < LMC_MAC_SIZE)
            return "truncated MAC";
        off += LMC_MAC_SIZE;
    }
    if (rec->flags & LMC_FLAG_EXPIRES) {
        if (n - off < 8)
            return "truncated expiry";
        memcpy(&rec->expires, p + off, 8);
        off += 8;
    }
    if (rec->flags & LMC_FLAG_SEQ) {
        if (n - off < 8)
            return "truncated sequence number";
        memcpy(&rec->seq, p + off, 8);
        off += 8;
    }
    if (rec->flags & LMC_FLAG_LONGKEY) {
        if (n - off < 4)
            return "truncated key length";
        memcpy(&kl, p + off, 4);
        off += 4;
        if (n - off < kl)
            return "truncated key";
        rec->key = p + off;
        rec->key_len = kl;
        off += kl;
    }
    rec->data = p + off;
    rec->data_len = n - off;
    if (rec->flags & LMC_FLAG_ZSTD) {
        switch (rec->tag) {
        case LMC_VAL_BYTES:
        case LMC_VAL_STR:
        case LMC_VAL_PICKLE:
        case LMC_VAL_JSON:
        case LMC_VAL_MSGPACK:
        case LMC_VAL_CUSTOM:
            return rec->data_len != 0 ? NULL : "empty compressed payload";
        default:
            return "a compressed constant or number";
        }
    }
    switch (rec->tag) {
    case LMC_VAL_NONE:
    case LMC_VAL_TRUE:
    case LMC_VAL_FALSE:
        return rec->data_len == 0 ? NULL : "payload after a constant";
    case LMC_VAL_INT:
    case LMC_VAL_FLOAT:
        return rec->data_len == 8 ? NULL : "number payload is not 8 bytes";
    case LMC_VAL_BYTES:
    case LMC_VAL_STR:
        return NULL;
    case LMC_VAL_PICKLE:
        return rec->data_len != 0 ? NULL : "empty pickle";
    case LMC_VAL_JSON:
    case LMC_VAL_MSGPACK:
    case LMC_VAL_CUSTOM:
        return NULL;
    default:
        return "unknown value type tag";
    }
}

int lmc_record_matches(const lmc_record *rec, const lmc_kref *key)
{
    if (key->full_data == NULL)
        return rec->key == NULL;
    return rec->key != NULL && rec->key_len == key->full_len &&
           memcmp(rec->key, key->full_data, rec->key_len) == 0;
}

/* Is [p, p+n) inside the part of the map that the data file backs?  Only
 * the Env's read txn is checked (GIL held): a write txn's dirty pages may
 * live outside the map.
 * The file grows under other processes: before saying no, look again. */
int lmc_record_in_file(lmc_env *e, MDB_txn *txn, const char *p, size_t n)
{
    struct stat sb;
    if (txn != e->rtxn || e->map_lo == NULL)
        return 1;
    if (LMC_LIKELY(p >= e->map_lo && n <= e->map_len &&
                   (size_t)(p - e->map_lo) <= e->map_len - n))
        return 1;
    if (e->fd >= 0 && fstat(e->fd, &sb) == 0)
        lmc_env_note_map(e, (size_t)sb.st_size, 0);
    return p >= e->map_lo && n <= e->map_len && (size_t)(p - e->map_lo) <= e->map_len - n;
}

int lmc_lookup(lmc_env *e, MDB_txn *txn, MDB_dbi dbi, const char *dbname, const lmc_kref *key,
               lmc_record *rec, int *status, const char **why)
{
    MDB_val k = key->val, v;
    int rc = mdb_get(txn, dbi, &k, &v);

    *why = NULL;
    if (rc == MDB_NOTFOUND) {
        *status = LMC_ABSENT;
        return 0;
    }
    if (rc != 0)
        return rc;
    if (LMC_UNLIKELY(!lmc_record_in_file(e, txn, v.mv_data, v.mv_size)))
        *why = "the record lies outside the data file";
    else
        *why = lmc_record_check(dbname, &key->val, v.mv_data, v.mv_size, rec, lmc_env_mac(e));
    if (LMC_UNLIKELY(*why != NULL))
        *status = LMC_CORRUPT;
    else if (LMC_UNLIKELY(!lmc_record_matches(rec, key)))
        *status = LMC_ABSENT; /* another key with the same digest */
    else if (LMC_UNLIKELY((rec->flags & LMC_FLAG_EXPIRES) && rec->expires <= lmc_now()))
        *status = LMC_EXPIRED;
    else
        *status = LMC_LIVE;
    return 0;
}

const char *lmc_record_check(const char *dbname, const MDB_val *key, const char *p, size_t n,
                             lmc_record *rec, const lmc_mac *mac)
{
    uint32_t sum;
    unsigned char tag[LMC_MAC_SIZE], diff = 0;
    const char *why = lmc_record_parse_raw(p, n, rec);
    size_t i;

    if (why != NULL)
        return why;
    memcpy(&sum, p + LMC_SUM_OFF, 4);
    if (LMC_UNLIKELY(sum != lmc_record_sum(dbname, key, p, n)))
        return "checksum mismatch";
    if (mac == NULL)
        return NULL;
    if (LMC_UNLIKELY(!(rec->flags & LMC_FLAG_MAC)))
        return "the record is not signed (written without the secret, or forged)";
    lmc_record_mac(mac, dbname, key, p, n, tag);
    for (i = 0; i < LMC_MAC_SIZE; i++) /* no early exit: time says nothing */
        diff |= (unsigned char)(tag[i] ^ (unsigned char)p[LMC_MAC_OFF + i]);
    if (LMC_UNLIKELY(diff != 0))
        return "MAC mismatch: the record was not written with this secret (tampered, forged "
               "or moved from another key)";
    return NULL;
}

