"""psycopg 3 through byokpg on a protected table, in two modes.

Usage: compat_psycopg.py PROXY_DSN DIRECT_DSN TABLE MARKER MODE
MODE "prepared": prepare_threshold=0 (every statement prepared server-side,
named statements). MODE "unprepared": prepare_threshold=None (never
prepared: unnamed statements only). See compat_common.py for the table.
Prints "psycopg MODE: ok".
"""

import sys

import psycopg

from compat_common import check_eq, check_stored, fail, row

MODES = {"prepared": 0, "unprepared": None}


def main():
    if len(sys.argv) != 6 or sys.argv[5] not in MODES:
        print("usage: compat_psycopg.py PROXY_DSN DIRECT_DSN TABLE MARKER prepared|unprepared",
              file=sys.stderr)
        sys.exit(2)
    dsn, direct, table, marker, mode = sys.argv[1:6]
    client = f"psycopg {mode}"
    rows = [row(marker, mode[0], i) for i in range(8)]
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=MODES[mode]) as conn:
        ins = f'insert into "{table}" (email, ssn, notes, plain) values (%s, %s, %s, %s) returning id'
        ids = [conn.execute(ins, r).fetchone()[0] for r in rows]
        sel = f'select email, ssn, notes, plain from "{table}" where id = %s'
        for i, r in zip(ids, rows):
            check_eq(client, conn.execute(sel, (i,)).fetchone(), r, f"select id {i}")
        look = f'select id, ssn from "{table}" where email = %s'
        for i, r in zip(ids, rows):
            check_eq(client, conn.execute(look, (r[0],)).fetchall(), [(i, r[1])],
                     f"lookup email = {r[0]!r}")
        new_ssn = f"{marker}-ssn-{mode}-updated"
        upd = f'update "{table}" set ssn = %s, notes = %s where email = %s'
        check_eq(client, conn.execute(upd, (new_ssn, None, rows[3][0])).rowcount, 1, "update rowcount")
        check_eq(client, conn.execute(look, (rows[3][0],)).fetchall(), [(ids[3], new_ssn)],
                 "lookup after update")
        check_eq(client, conn.execute(sel, (ids[3],)).fetchone(),
                 (rows[3][0], new_ssn, None, rows[3][3]), "row after update")
        prepared = conn.execute(
            "select count(*) from pg_prepared_statements where statement like %s",
            (f"%{table}%",)).fetchone()[0]
        if mode == "prepared" and prepared < 3:
            fail(client, f"only {prepared} server-side prepared statements on {table}")
        if mode == "unprepared" and prepared != 0:
            fail(client, f"{prepared} server-side prepared statements with prepare_threshold=None")
    check_stored(client, direct, table, marker, len(rows))
    print(f"{client}: ok")


if __name__ == "__main__":
    main()
