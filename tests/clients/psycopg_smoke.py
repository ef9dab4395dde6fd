"""psycopg 3 smoke test of a PostgreSQL endpoint (byokpg or PostgreSQL itself).

Usage: psycopg_smoke.py DSN TABLE_PREFIX

Run by tests/e2e_clients.rs with the project's .venv. Exits non-zero with a
message on the first mismatch; prints "psycopg smoke: ok" at the end.
"""

import datetime
import decimal
import sys

import psycopg
from psycopg import sql


def check(cond, what):
    if not cond:
        print(f"psycopg smoke: MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


def check_eq(got, want, what):
    check(got == want, f"{what}: got {got!r}, want {want!r}")


def autocommit_and_tx(dsn, table):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "create table {} (id int primary key, name text, amount numeric(10,2),"
            " at timestamptz, data bytea, tags text[])"
        ).format(table))
        conn.execute(sql.SQL("insert into {} (id, name) values (%s, %s)").format(table), (1, "one"))
        # A failing statement in autocommit leaves the connection usable.
        try:
            conn.execute(sql.SQL("insert into {} (id, name) values (1, 'dup')").format(table))
            check(False, "duplicate key did not fail")
        except psycopg.errors.UniqueViolation as e:
            check_eq(e.sqlstate, "23505", "duplicate key sqlstate")
        check_eq(conn.execute("select 41 + 1").fetchone()[0], 42, "select after error")

    with psycopg.connect(dsn) as conn:  # transactional by default
        with conn.transaction():
            conn.execute(sql.SQL("insert into {} (id, name) values (2, 'two')").format(table))
        try:
            with conn.transaction():
                conn.execute(sql.SQL("insert into {} (id, name) values (3, 'three')").format(table))
                raise RuntimeError("roll it back")
        except RuntimeError:
            pass
        ids = [r[0] for r in conn.execute(sql.SQL("select id from {} order by id").format(table))]
        check_eq(ids, [1, 2], "ids after commit + rollback")
        # An error inside a transaction aborts it; rollback recovers.
        try:
            conn.execute("select 1/0")
            check(False, "division by zero did not fail")
        except psycopg.errors.DivisionByZero:
            conn.rollback()
        check_eq(conn.execute("select 'alive'").fetchone()[0], "alive", "after rollback")
        conn.commit()


def executemany_and_prepare(dsn, table):
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        cur = conn.cursor()
        rows = [
            (10 + i, f"name-{i}", decimal.Decimal(f"{i}.25"),
             datetime.datetime(2024, 2, 29, 12, 0, i, tzinfo=datetime.timezone.utc),
             bytes([i, 0, 255]), [f"t{i}", None])
            for i in range(20)
        ]
        cur.executemany(
            sql.SQL("insert into {} (id, name, amount, at, data, tags) values (%s, %s, %s, %s, %s, %s)")
            .format(table),
            rows,
        )
        q = sql.SQL("select name, amount, at, data, tags from {} where id = %s").format(table)
        for i in (0, 7, 19):
            got = conn.execute(q, (10 + i,)).fetchone()
            check_eq(got, rows[i][1:], f"row {10 + i} read back (prepared)")
        # prepare_threshold=0: the statement is prepared server-side at once.
        n = conn.execute(
            "select count(*) from pg_prepared_statements where statement like %s",
            ("%where id = $1%",), prepare=False,
        ).fetchone()[0]
        check(n >= 1, f"no server-side prepared statement found ({n})")
        with conn.pipeline():
            a = conn.execute("select 1")
            b = conn.execute("select %s::text", ("pipelined",))
        check_eq((a.fetchone()[0], b.fetchone()[0]), (1, "pipelined"), "pipeline results")


def copy_and_binary(dsn, table):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        with cur.copy(sql.SQL("copy {} (id, name, amount) from stdin").format(table)) as copy:
            for i in range(100, 200):
                copy.write_row((i, f"copied {i}", decimal.Decimal("1.50")))
        check_eq(
            conn.execute(sql.SQL("select count(*), sum(amount) from {} where id >= 100").format(table)).fetchone(),
            (100, decimal.Decimal("150.00")), "rows after COPY FROM",
        )
        out = []
        with cur.copy(sql.SQL("copy (select id, name from {} where id >= 100 order by id) to stdout")
                      .format(table)) as copy:
            for row in copy.rows():
                out.append(row)
        check_eq(len(out), 100, "COPY TO row count")
        check_eq(out[0], ("100", "copied 100"), "COPY TO first row")

        bcur = conn.cursor(binary=True)
        bcur.execute(
            "select 1::int4, 'text'::text, '\\x00ff'::bytea, '12345.6789'::numeric,"
            " '2024-02-29 12:34:56.789+00'::timestamptz, array[1,2,3]::int8[], true"
        )
        got = bcur.fetchone()
        want = (1, "text", b"\x00\xff", decimal.Decimal("12345.6789"),
                datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc),
                [1, 2, 3], True)
        check_eq(tuple(got[:4]) + (got[4].astimezone(datetime.timezone.utc),) + tuple(got[5:]),
                 want, "binary cursor row")


def notify(dsn, table):  # table: the plain prefix string
    channel = f"{table}_ch"
    with psycopg.connect(dsn, autocommit=True) as listener, \
            psycopg.connect(dsn, autocommit=True) as sender:
        listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        sender.execute("select pg_notify(%s, %s)", (channel, "hello from psycopg"))
        got = None
        for n in listener.notifies(timeout=20, stop_after=1):
            got = (n.channel, n.payload)
        check_eq(got, (channel, "hello from psycopg"), "notification")


def main():
    if len(sys.argv) != 3:
        print("usage: psycopg_smoke.py DSN TABLE_PREFIX", file=sys.stderr)
        sys.exit(2)
    dsn, prefix = sys.argv[1], sys.argv[2]
    table = sql.Identifier(prefix)
    autocommit_and_tx(dsn, table)
    executemany_and_prepare(dsn, table)
    copy_and_binary(dsn, table)
    notify(dsn, prefix)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop table {}").format(table))
    print("psycopg smoke: ok")


if __name__ == "__main__":
    main()
