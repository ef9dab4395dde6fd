"""asyncpg through byokpg on a protected table.

Usage: compat_asyncpg.py PROXY_DSN DIRECT_DSN TABLE MARKER
asyncpg always uses the extended protocol with named prepared statements
(and its statement cache), binary results where it can, executemany as a
pipeline of Bind/Execute, and fetches type information from the catalog.
See compat_common.py for the table. Prints "asyncpg: ok".
"""

import asyncio

import asyncpg

from compat_common import args, check_eq, check_stored, row


async def run(dsn, table, marker):
    client = "asyncpg"
    conn = await asyncpg.connect(dsn)
    try:
        rows = [row(marker, "a", i) for i in range(10)]
        ins = f'insert into "{table}" (email, ssn, notes, plain) values ($1, $2, $3, $4)'
        await conn.executemany(ins, rows[:6])
        ins_ret = ins + " returning id"
        for r in rows[6:]:
            await conn.fetchval(ins_ret, *r)
        got = await conn.fetch(
            f'select email, ssn, notes, plain from "{table}" order by id')
        check_eq(client, [tuple(r) for r in got], rows, "select all")
        look = await conn.prepare(f'select ssn, notes from "{table}" where email = $1')
        for r in rows:
            check_eq(client, tuple(await look.fetchrow(r[0])), (r[1], r[2]),
                     f"prepared lookup {r[0]!r}")
        check_eq(client, await look.fetchrow(f"{marker}-nobody@example.com"), None,
                 "lookup of an absent email")
        new_ssn = f"{marker}-ssn-a-updated"
        status = await conn.execute(
            f'update "{table}" set ssn = $1 where email = $2', new_ssn, rows[2][0])
        check_eq(client, status, "UPDATE 1", "update status")
        check_eq(client, tuple(await look.fetchrow(rows[2][0])), (new_ssn, rows[2][2]),
                 "lookup after update")
        inlist = await conn.fetch(
            f'select email from "{table}" where email in ($1, $2) order by id',
            rows[0][0], rows[9][0])
        check_eq(client, [r[0] for r in inlist], [rows[0][0], rows[9][0]], "IN lookup")
        async with conn.transaction():
            await conn.execute(
                f'update "{table}" set notes = $1 where email = $2', None, rows[4][0])
        check_eq(client, tuple(await look.fetchrow(rows[4][0])), (rows[4][1], None),
                 "update in a transaction")
        return len(rows)
    finally:
        await conn.close()


def main():
    dsn, direct, table, marker = args()
    n = asyncio.run(run(dsn, table, marker))
    check_stored("asyncpg", direct, table, marker, n)
    print("asyncpg: ok")


if __name__ == "__main__":
    main()
