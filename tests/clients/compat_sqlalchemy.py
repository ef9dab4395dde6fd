"""SQLAlchemy 2 ORM (psycopg 3 driver) through byokpg on a protected table.

Usage: compat_sqlalchemy.py PROXY_DSN DIRECT_DSN TABLE MARKER
A declarative mapped class over TABLE; Session.add_all + commit, Session.get,
select() by the deterministic column (== and in_), attribute update + commit
(UPDATE ... WHERE id), a bulk update() statement, and a refresh. See
compat_common.py for the table. Prints "sqlalchemy: ok".

SQLAlchemy's default batched insert ("insertmanyvalues") sends
INSERT ... SELECT ... FROM (VALUES ...) ORDER BY ... RETURNING, which byokpg
refuses (0A000: it encrypts only VALUES literals and parameters). The script
checks that refusal (nothing is stored), then uses the documented setting
create_engine(..., use_insertmanyvalues=False): one INSERT ... RETURNING per row.
"""

from sqlalchemy import String, create_engine, select, update
from sqlalchemy.exc import NotSupportedError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from compat_common import args, check_eq, check_stored, fail, row


class Base(DeclarativeBase):
    pass


def mapped(table):
    class Customer(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str | None] = mapped_column(String)
        ssn: Mapped[str | None] = mapped_column(String)
        notes: Mapped[str | None] = mapped_column(String)
        plain: Mapped[str | None] = mapped_column(String)

    return Customer


def as_tuple(c):
    return (c.email, c.ssn, c.notes, c.plain)


def refused_by_default(client, engine, Customer, marker):
    """The default batched INSERT is refused as a whole, with SQLSTATE 0A000."""
    with Session(engine) as s:
        s.add_all([Customer(email=f"{marker}-batch{i}@example.com", ssn=f"{marker}-b{i}",
                            plain=f"plain-b{i}") for i in range(2)])
        try:
            s.commit()
            fail(client, "the default insertmanyvalues INSERT was accepted")
        except NotSupportedError as e:
            check_eq(client, getattr(e.orig, "sqlstate", None), "0A000", "refusal SQLSTATE")
            s.rollback()
    engine.dispose()


def run(dsn, table, marker):
    client = "sqlalchemy"
    Customer = mapped(table)
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    refused_by_default(client, create_engine(url), Customer, marker)
    engine = create_engine(url, use_insertmanyvalues=False)
    rows = [row(marker, "s", i) for i in range(6)]
    with Session(engine) as s:
        objs = [Customer(email=e, ssn=n, notes=t, plain=p) for e, n, t, p in rows]
        s.add_all(objs)
        s.commit()
        ids = [o.id for o in objs]
    with Session(engine) as s:
        for i, r in zip(ids, rows):
            check_eq(client, as_tuple(s.get(Customer, i)), r, f"get({i})")
        found = s.scalars(select(Customer).where(Customer.email == rows[2][0])).all()
        check_eq(client, [as_tuple(c) for c in found], [rows[2]], "select where email ==")
        found = s.scalars(select(Customer).where(Customer.email.in_([rows[0][0], rows[5][0]]))
                          .order_by(Customer.id)).all()
        check_eq(client, [c.id for c in found], [ids[0], ids[5]], "select where email in")
        c = found[0]
        c.ssn = f"{marker}-ssn-s-updated"
        c.notes = None
        s.commit()
        s.refresh(c)
        check_eq(client, as_tuple(c), (rows[0][0], f"{marker}-ssn-s-updated", None, rows[0][3]),
                 "refresh after attribute update")
        res = s.execute(update(Customer).where(Customer.email == rows[1][0])
                        .values(notes=f"{marker} bulk note"))
        check_eq(client, res.rowcount, 1, "bulk update rowcount")
        s.commit()
    with Session(engine) as s:
        got = s.scalars(select(Customer).where(Customer.email == rows[1][0])).one()
        check_eq(client, got.notes, f"{marker} bulk note", "read after bulk update")
        check_eq(client, s.get(Customer, ids[0]).ssn, f"{marker}-ssn-s-updated",
                 "read after attribute update (new session)")
    engine.dispose()
    return len(rows)


def main():
    dsn, direct, table, marker = args()
    n = run(dsn, table, marker)
    check_stored("sqlalchemy", direct, table, marker, n)
    print("sqlalchemy: ok")


if __name__ == "__main__":
    main()
