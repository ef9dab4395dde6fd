"""psycopg 3 through byokpg on a protected table: round trips and stored ciphertext.

Usage: psycopg_encryption.py PROXY_DSN DIRECT_DSN TABLE MARKER

Run by tests/e2e_encryption.rs with the project's .venv. TABLE already exists
in the tenant's region database and is in the proxy's policy (email and tag
deterministic; ssn, notes and doc randomized; doc and tag are bytea; tenant
column tenant_id). Every plaintext written here contains MARKER, so the Rust
test can look for it in a pg_dump afterwards.

DIRECT_DSN reaches the same database without the proxy: the script checks
there that every protected value is stored as ciphertext. Exits non-zero with
a message on the first mismatch; prints "psycopg encryption: ok" at the end.
"""

import sys

import psycopg
from psycopg import sql

COLS = "id, email, ssn, notes, doc, tag"


def check(cond, what):
    if not cond:
        print(f"psycopg encryption: MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


def check_eq(got, want, what):
    check(got == want, f"{what}: got {got!r}, want {want!r}")


def q(text, table):
    return sql.SQL(text).format(t=sql.Identifier(table))


def row(marker, i):
    """The plaintext of row i: (email, ssn, notes, doc, tag)."""
    return (
        f"{marker}-user{i}@example.com",
        f"{marker}-ssn-{i}",
        None if i % 4 == 0 else f"{marker} note {i} ünïcødé 😀 漢字",
        b"\x00\xff" + marker.encode() + bytes([i % 256, 0]),
        bytes([i % 5, 0, 1]),
    )


def as_plain(r):
    """A fetched row without its id, bytea as bytes (psycopg gives bytes)."""
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in r[1:])


def params_and_update(dsn, table, marker):
    with psycopg.connect(dsn, autocommit=True) as conn:
        ins = q("insert into {t} (email, ssn, notes, doc, tag) values (%s, %s, %s, %s, %s) "
                "returning " + COLS, table)
        r0 = row(marker, 0)
        got = conn.execute(ins, r0).fetchone()
        check_eq(as_plain(got), r0, "insert ... returning")
        empty = (f"{marker}-empty@example.com", "", "", b"", b"")
        check_eq(as_plain(conn.execute(ins, empty).fetchone()), empty, "empty values")
        nulls = (f"{marker}-nulls@example.com", None, None, None, None)
        check_eq(as_plain(conn.execute(ins, nulls).fetchone()), nulls, "NULL values")

        found = conn.execute(q("select " + COLS + " from {t} where email = %s", table),
                             (r0[0],)).fetchall()
        check_eq([as_plain(r) for r in found], [r0], "lookup with =")
        new_ssn = f"{marker}-ssn-updated"
        upd = conn.execute(
            q("update {t} set ssn = %s, notes = %s where email = %s returning " + COLS, table),
            (new_ssn, None, r0[0])).fetchone()
        check_eq(as_plain(upd), (r0[0], new_ssn, None, r0[3], r0[4]), "update ... returning")
        ups = conn.execute(
            q("insert into {t} (email, ssn) values (%s, %s) on conflict (email) "
              "do update set ssn = excluded.ssn returning " + COLS, table),
            (r0[0], f"{marker}-ssn-upserted")).fetchone()
        check_eq(ups[2], f"{marker}-ssn-upserted", "on conflict do update")


def executemany_and_lookups(dsn, table, marker):
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = [row(marker, i) for i in range(1, 25)]
        with conn.cursor() as cur:
            cur.executemany(
                q("insert into {t} (email, ssn, notes, doc, tag) values (%s, %s, %s, %s, %s)", table),
                rows)
        got = conn.execute(
            q("select " + COLS + " from {t} where email in (%s, %s, %s) order by id", table),
            (rows[0][0], rows[5][0], f"{marker}-nobody")).fetchall()
        check_eq([as_plain(r) for r in got], [rows[0], rows[5]], "IN lookup after executemany")
        n = conn.execute(q("select count(*) from {t} where email <> %s", table),
                         (rows[0][0],)).fetchone()[0]
        check(n >= 24, f"<> lookup counted {n}")
        tagged = conn.execute(q("select id from {t} where tag = %s", table),
                              (bytes([2, 0, 1]),)).fetchall()
        want = sum(1 for r in rows if r[4] == bytes([2, 0, 1]))
        check_eq(len(tagged), want, "bytea lookup")


def server_side_prepared(dsn, table, marker):
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        ins = q("insert into {t} (email, ssn, notes, doc, tag) values (%s, %s, %s, %s, %s) "
                "returning id", table)
        sel = q("select " + COLS + " from {t} where email = %s", table)
        for i in range(100, 140):
            conn.execute(ins, row(marker, i))
        for i in range(100, 140, 3):
            got = conn.execute(sel, (row(marker, i)[0],)).fetchall()
            check_eq([as_plain(r) for r in got], [row(marker, i)], f"prepared lookup {i}")
        # The statements really are prepared server-side (named statements).
        n = conn.execute("select count(*) from pg_prepared_statements where statement like %s",
                         (f"%{table}%",)).fetchone()[0]
        check(n >= 2, f"{n} server-side prepared statements on {table}")


def binary_cursor(dsn, table, marker):
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor(binary=True) as cur:
            r = row(marker, 200)
            cur.execute(
                q("insert into {t} (email, ssn, notes, doc, tag) values (%b, %b, %b, %b, %b) "
                  "returning " + COLS, table), r)
            check_eq(as_plain(cur.fetchone()), r, "binary insert ... returning")
            cur.execute(q("select " + COLS + " from {t} where email = %b", table), (r[0],))
            check_eq([as_plain(x) for x in cur.fetchall()], [r], "binary lookup")
            cur.execute(q("select " + COLS + " from {t} where email = %s", table),
                        (row(marker, 1)[0],))
            check_eq([as_plain(x) for x in cur.fetchall()], [row(marker, 1)],
                     "binary results, text parameter")


def transaction_rollback(dsn, table, marker):
    with psycopg.connect(dsn) as conn:
        try:
            with conn.transaction():
                conn.execute(q("insert into {t} (email) values (%s)", table),
                             (f"{marker}-rolled-back",))
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        n = conn.execute(q("select count(*) from {t} where email = %s", table),
                         (f"{marker}-rolled-back",)).fetchone()[0]
        check_eq(n, 0, "rolled-back row")
        # A refused statement inside a transaction, then the transaction goes on.
        try:
            conn.execute(q("select email from {t} order by email", table))
            check(False, "ORDER BY an encrypted column was not refused")
        except psycopg.errors.FeatureNotSupported as e:
            check(str(e).startswith("byokpg:"), f"refusal message: {e}")
        conn.rollback()
        check_eq(conn.execute("select 'alive'").fetchone()[0], "alive", "after refusal")


def direct_check(direct, table, marker):
    """Everything stored is ciphertext; nothing holds the marker."""
    mark = marker.encode()
    with psycopg.connect(direct) as conn:
        rows = conn.execute(q("select email, ssn, notes, doc, tag, tenant_id from {t}", table)).fetchall()
        check(len(rows) >= 60, f"only {len(rows)} rows stored")
        for email, ssn, notes, doc, tag, tenant in rows:
            check_eq(tenant, "acme", "tenant column")
            for name, v in (("email", email), ("ssn", ssn), ("notes", notes)):
                if v is not None:
                    check(v.startswith("byok1:AQ"), f"{name} stored as {v[:60]!r}")
                    check(marker not in v, f"{name} holds plaintext")
            for name, v in (("doc", doc), ("tag", tag)):
                if v is not None:
                    b = bytes(v)
                    check(len(b) >= 22 and b[0] == 1 and b[1] in (1, 2),
                          f"{name} is not an envelope: {b[:16]!r}")
                    check(mark not in b, f"{name} holds plaintext")
        nulls = [r for r in rows if r[1] is None and r[2] is None and r[3] is None]
        check(len(nulls) >= 1, "NULLs must stay NULL")


def main():
    dsn, direct, table, marker = sys.argv[1:5]
    params_and_update(dsn, table, marker)
    executemany_and_lookups(dsn, table, marker)
    server_side_prepared(dsn, table, marker)
    binary_cursor(dsn, table, marker)
    transaction_rollback(dsn, table, marker)
    direct_check(direct, table, marker)
    print("psycopg encryption: ok")


if __name__ == "__main__":
    main()
