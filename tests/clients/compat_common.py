"""Shared by the compat_*.py scripts (docs/COMPATIBILITY.md, tests/e2e_compat.rs).

Every script gets: PROXY_DSN DIRECT_DSN TABLE MARKER. TABLE exists in the
tenant's region database with columns (id serial primary key, tenant_id text,
email text, ssn text, notes text, plain text) and is in the proxy's policy:
email deterministic, ssn and notes randomized, tenant column tenant_id.
Every protected plaintext contains MARKER; `plain` never does.
"""

import sys

import psycopg


def fail(client, what):
    print(f"{client}: MISMATCH: {what}", file=sys.stderr)
    sys.exit(1)


def check_eq(client, got, want, what):
    if got != want:
        fail(client, f"{what}: got {got!r}, want {want!r}")


def args():
    if len(sys.argv) != 5:
        print("usage: SCRIPT PROXY_DSN DIRECT_DSN TABLE MARKER", file=sys.stderr)
        sys.exit(2)
    return sys.argv[1:5]


def row(marker, tag, i):
    """Plaintext (email, ssn, notes, plain) of row i of one client run."""
    return (
        f"{marker}-{tag}{i}@example.com",
        f"{marker}-ssn-{tag}-{i}",
        f"{marker} note {i} ünïcødé 😀",
        f"plain-{tag}-{i}",
    )


def check_stored(client, direct_dsn, table, marker, want_rows):
    """Reads TABLE without the proxy: protected columns hold only ciphertext
    (`byok1:` envelopes without the marker), `plain` holds the plaintext."""
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        rows = conn.execute(
            f'select email, ssn, notes, plain from "{table}" order by id').fetchall()
    if len(rows) < want_rows:
        fail(client, f"{len(rows)} rows stored, want at least {want_rows}")
    for email, ssn, notes, plain in rows:
        for col, value in (("email", email), ("ssn", ssn), ("notes", notes)):
            if value is None:
                continue
            if not value.startswith("byok1:AQ") or marker in value:
                fail(client, f"{table}.{col} stored as plaintext: {value[:80]!r}")
        if plain is not None and not plain.startswith("plain-"):
            fail(client, f"{table}.plain is not plaintext: {plain[:80]!r}")
    return len(rows)
