"""The version-3 record layout, written out independently of the C code, for
tests that inspect or forge records (test_secret.py, test_serializers.py)."""
import hashlib
import struct


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def frame(dbname, key):
    """What every checksum and MAC starts with: the sub-database name and key."""
    return struct.pack("=I", len(dbname)) + dbname + struct.pack("=I", len(key)) + key


def mac_key(secret):
    return secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()


def expected_mac(secret, dbname, key, record):
    """The MAC a record should carry: keyed blake2b-128 over the frame, the
    first 3 header bytes and everything after the checksum and MAC fields."""
    msg = frame(dbname, key) + record[:3] + record[23:]
    return hashlib.blake2b(msg, key=mac_key(secret), digest_size=16).digest()


def make_record(dbname, key, tag, payload, flags=0, mac=None):
    """A version-3 record with a valid CRC32C (and the MAC field if given)."""
    head = bytes([3, ord(tag), flags | (0x08 if mac is not None else 0)])
    rest = (mac or b"") + payload
    crc = crc32c(frame(dbname, key) + head + rest)
    return head + struct.pack("=I", crc) + rest


def recrc(dbname, key, record):
    """record with its checksum recomputed (an attacker can always do this)."""
    head, rest = bytes(record[:3]), bytes(record[7:])
    return head + struct.pack("=I", crc32c(frame(dbname, key) + head + rest)) + rest


def drain(iterable, exc_type):
    """Every item of an iterator that raises exc_type for some entries and
    goes on after them: (items, the exceptions)."""
    it, items, errors = iter(iterable), [], []
    while True:
        try:
            items.append(next(it))
        except exc_type as exc:
            errors.append(exc)
        except StopIteration:
            return items, errors
