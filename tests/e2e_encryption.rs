//! Transparent column encryption end to end: every test goes through the real
//! `byokpg serve` to the real PostgreSQL, then reads the region database
//! directly (and a `pg_dump --data-only` of it) to check that only ciphertext
//! was stored.
//!
//! Every plaintext a test writes contains a per-test marker (distinct from the
//! table name), so "the dump holds no plaintext" is checked by looking for the
//! marker, its hex form (bytea) and, for random bytea values, their hex.
//!
//! Each test creates its own tables directly in the region databases before
//! it starts its proxy, so the proxy's first catalog load knows them.
#![allow(clippy::unwrap_used)]
// Every test names its table `t`, its plaintext marker `m`, its client `c`
// and its fixture `f`: short names keep the many SQL format strings legible.
#![allow(clippy::many_single_char_names)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::process::Command;

use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use common::{
    Proxy, ProxyBuilder, assert_success, create_in_regions, db_message, direct_client,
    expect_sqlstate, region_db, unique_name,
};
use futures_util::{SinkExt as _, TryStreamExt as _};
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};

/// The default test user, its tenant and that tenant's region.
const USER: &str = "acme_app";
const TENANT: &str = "acme";
const REGION: &str = "eu";
/// Mode bytes of the envelope (docs/FORMAT.md §2) and their overheads.
const RND: u8 = 1;
const DET: u8 = 2;
/// The columns every read selects, in `Rec` order after `id`.
const COLS: &str = "id, email, ssn, notes, doc, tag";
/// A second tenant of acme's region (for cross-tenant reads).
const NEIGHBOUR: &str = "enc_neighbour";

// ---------------------------------------------------------------------------
// Fixture: a protected table and a proxy
// ---------------------------------------------------------------------------

/// DDL of the standard protected table: text, unbounded varchar and bytea
/// columns in both modes, a unique index on the deterministic `email`, and an
/// unprotected column that must stay plaintext.
fn table_ddl(t: &str) -> String {
    format!(
        "create table {t} (id serial primary key, tenant_id text, email text, ssn text, \
         notes varchar, doc bytea, tag bytea, plain text);
         create unique index {t}_email on {t} (email);"
    )
}

fn policy(t: &str) -> String {
    format!(
        "[[table]]\nname = \"{t}\"\ntenant_column = \"tenant_id\"\n[table.columns]\n\
         email = \"deterministic\"\nssn = \"randomized\"\nnotes = \"randomized\"\n\
         doc = \"randomized\"\ntag = \"deterministic\"\n"
    )
}

struct Fixture {
    proxy: Proxy,
    table: String,
    /// In every plaintext the test writes; never in the table name.
    marker: String,
}

impl Fixture {
    /// Creates the standard table (plus `extra` DDL, `{t}` = the table) in
    /// `regions`, then starts a proxy with its policy added to `builder`.
    async fn new(builder: ProxyBuilder, regions: &[&str], extra: &str) -> Self {
        let table = unique_name("enc");
        let marker = unique_name("pt");
        let ddl = format!("{}\n{}", table_ddl(&table), extra.replace("{t}", &table));
        create_in_regions(regions, &ddl).await;
        let proxy = builder.policy_table(&policy(&table)).start();
        proxy.require_proxy();
        Self {
            proxy,
            table,
            marker,
        }
    }

    async fn client(&self) -> Client {
        self.proxy.connect(USER, None).await
    }

    /// Needles that must not appear in a dump: the marker as text and as the
    /// hex a bytea holding it would be dumped as.
    fn needles(&self) -> Vec<Vec<u8>> {
        vec![
            self.marker.as_bytes().to_vec(),
            hex::encode(self.marker.as_bytes()).into_bytes(),
        ]
    }
}

// ---------------------------------------------------------------------------
// Expected rows and how they are read back
// ---------------------------------------------------------------------------

/// Plaintext of the protected columns of one row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rec {
    email: Option<String>,
    ssn: Option<String>,
    notes: Option<String>,
    doc: Option<Vec<u8>>,
    tag: Option<Vec<u8>>,
}

fn rec(
    email: Option<&str>,
    ssn: Option<&str>,
    notes: Option<&str>,
    doc: Option<&[u8]>,
    tag: Option<&[u8]>,
) -> Rec {
    Rec {
        email: email.map(str::to_string),
        ssn: ssn.map(str::to_string),
        notes: notes.map(str::to_string),
        doc: doc.map(<[u8]>::to_vec),
        tag: tag.map(<[u8]>::to_vec),
    }
}

/// A row of `select {COLS}` in the binary result format (tokio-postgres).
fn rec_of_row(r: &Row) -> (i32, Rec) {
    (
        r.get(0),
        Rec {
            email: r.get(1),
            ssn: r.get(2),
            notes: r.get(3),
            doc: r.get(4),
            tag: r.get(5),
        },
    )
}

/// `\x...` bytea text output to bytes.
fn unhex_bytea(s: &str) -> Vec<u8> {
    let h = s
        .strip_prefix("\\x")
        .unwrap_or_else(|| panic!("not a hex bytea: {s:.80}"));
    hex::decode(h).unwrap()
}

/// Rows of a simple-query response to `select {COLS}` (text format).
fn recs_of_simple(msgs: &[SimpleQueryMessage]) -> Vec<(i32, Rec)> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap().parse().unwrap(),
                Rec {
                    email: r.get(1).map(str::to_string),
                    ssn: r.get(2).map(str::to_string),
                    notes: r.get(3).map(str::to_string),
                    doc: r.get(4).map(unhex_bytea),
                    tag: r.get(5).map(unhex_bytea),
                },
            )),
            _ => None,
        })
        .collect()
}

/// First column of each row of a simple-query response.
fn simple_col0(msgs: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .collect()
}

fn ids_of(rows: &[Row]) -> BTreeSet<i32> {
    rows.iter().map(|r| r.get::<_, i32>(0)).collect()
}

/// Reads the whole table through the proxy in both result formats and checks
/// both against `want`.
async fn assert_reads(c: &Client, t: &str, want: &BTreeMap<i32, Rec>) {
    let sql = format!("select {COLS} from {t} order by id");
    let binary: BTreeMap<i32, Rec> = c
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(rec_of_row)
        .collect();
    assert_eq!(&binary, want, "extended protocol (binary results)");
    let text: BTreeMap<i32, Rec> = recs_of_simple(&c.simple_query(&sql).await.unwrap())
        .into_iter()
        .collect();
    assert_eq!(&text, want, "simple query (text results)");
}

// ---------------------------------------------------------------------------
// What the database holds
// ---------------------------------------------------------------------------

/// Checks one stored value against its plaintext: NULL stays NULL; anything
/// else must be a format-1 envelope of the column's mode whose length is that
/// of exactly this plaintext (docs/FORMAT.md §2, §4), stored as `byok1:` +
/// base64 in a text column, and must not contain the plaintext.
fn assert_envelope(what: &str, mode: u8, stored: Option<&[u8]>, text: bool, plain: Option<&[u8]>) {
    let (stored, plain) = match (stored, plain) {
        (None, None) => return,
        (Some(s), Some(p)) => (s, p),
        (s, p) => panic!(
            "{what}: stored NULL-ness differs from the plaintext's (stored {:?}, plaintext {:?})",
            s.map(String::from_utf8_lossy),
            p.map(String::from_utf8_lossy)
        ),
    };
    let envelope = if text {
        let s = std::str::from_utf8(stored).unwrap();
        let b64 = s
            .strip_prefix("byok1:")
            .unwrap_or_else(|| panic!("{what}: stored text is not byok1: ciphertext: {s:.120}"));
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("{what}: not base64 after byok1: ({e})"))
    } else {
        stored.to_vec()
    };
    let overhead = if mode == DET { 22 } else { 34 };
    assert_eq!(envelope.first(), Some(&1), "{what}: format version byte");
    assert_eq!(envelope.get(1), Some(&mode), "{what}: mode byte");
    assert_eq!(
        envelope.len(),
        overhead + plain.len(),
        "{what}: envelope length for a {}-byte plaintext",
        plain.len()
    );
    if plain.len() >= 4 {
        assert!(
            memchr::memmem::find(stored, plain).is_none(),
            "{what}: the plaintext is stored in the clear"
        );
    }
}

/// (column, plaintext, stored) of every non-NULL protected value seen.
type Seen = Vec<(&'static str, Vec<u8>, Vec<u8>)>;

/// Deterministic columns: equal plaintexts ⇔ equal ciphertexts; randomized
/// columns: equal plaintexts never give equal ciphertexts.
fn assert_modes(seen: &Seen) {
    for (i, (col, plain, stored)) in seen.iter().enumerate() {
        for (col2, plain2, stored2) in &seen[i + 1..] {
            if col != col2 {
                continue;
            }
            let det = matches!(*col, "email" | "tag");
            if det {
                assert_eq!(
                    plain == plain2,
                    stored == stored2,
                    "deterministic column {col}: equal plaintexts must give equal ciphertexts and only those"
                );
            } else if plain == plain2 {
                assert_ne!(
                    stored, stored2,
                    "randomized column {col}: two writes of one value gave one ciphertext"
                );
            }
        }
    }
}

/// Reads the table directly (bypassing byokpg) and checks every row: the
/// tenant column, every protected value as an envelope of exactly the
/// expected plaintext, and the set of rows.
async fn assert_stored(region: &str, t: &str, tenant: &str, want: &BTreeMap<i32, Rec>) {
    let d = direct_client(region).await;
    let rows = d
        .query(
            &format!("select id, tenant_id, email, ssn, notes, doc, tag from {t}"),
            &[],
        )
        .await
        .unwrap();
    let mut seen: Seen = Vec::new();
    for r in &rows {
        let id: i32 = r.get(0);
        let w = want
            .get(&id)
            .unwrap_or_else(|| panic!("row {id} of {t} was not expected"));
        let tenant_id: Option<String> = r.get(1);
        assert_eq!(tenant_id.as_deref(), Some(tenant), "tenant_id of row {id}");
        let texts = [
            ("email", DET, w.email.as_deref()),
            ("ssn", RND, w.ssn.as_deref()),
            ("notes", RND, w.notes.as_deref()),
        ];
        for (i, (col, mode, plain)) in texts.into_iter().enumerate() {
            let stored: Option<String> = r.get(i + 2);
            let what = format!("{t}.{col} of row {id}");
            assert_envelope(
                &what,
                mode,
                stored.as_deref().map(str::as_bytes),
                true,
                plain.map(str::as_bytes),
            );
            if let (Some(s), Some(p)) = (stored, plain) {
                seen.push((col, p.as_bytes().to_vec(), s.into_bytes()));
            }
        }
        let bins = [
            ("doc", RND, w.doc.as_deref()),
            ("tag", DET, w.tag.as_deref()),
        ];
        for (i, (col, mode, plain)) in bins.into_iter().enumerate() {
            let stored: Option<Vec<u8>> = r.get(i + 5);
            let what = format!("{t}.{col} of row {id}");
            assert_envelope(&what, mode, stored.as_deref(), false, plain);
            if let (Some(s), Some(p)) = (stored, plain) {
                seen.push((col, p.to_vec(), s));
            }
        }
    }
    let got: BTreeSet<i32> = rows.iter().map(|r| r.get(0)).collect();
    let expected: BTreeSet<i32> = want.keys().copied().collect();
    assert_eq!(got, expected, "rows stored in {t}");
    assert_modes(&seen);
}

/// Every non-NULL protected value of the table is a well-formed envelope
/// holding no marker (for tables filled by client scripts); returns the row
/// count.
async fn assert_all_ciphertext(region: &str, t: &str, marker: &str) -> usize {
    let d = direct_client(region).await;
    let rows = d
        .query(&format!("select email, ssn, notes, doc, tag from {t}"), &[])
        .await
        .unwrap();
    for r in &rows {
        for (i, col) in ["email", "ssn", "notes"].into_iter().enumerate() {
            if let Some(s) = r.get::<_, Option<String>>(i) {
                assert!(s.starts_with("byok1:AQ"), "{t}.{col} stored as {s:.120}");
                assert!(!s.contains(marker), "{t}.{col} holds plaintext: {s:.120}");
            }
        }
        for (i, col) in ["doc", "tag"].into_iter().enumerate() {
            if let Some(b) = r.get::<_, Option<Vec<u8>>>(i + 3) {
                assert!(
                    b.len() >= 22 && b[0] == 1 && (b[1] == RND || b[1] == DET),
                    "{t}.{col} is not an envelope: {:?}",
                    &b[..b.len().min(16)]
                );
                assert!(
                    memchr::memmem::find(&b, marker.as_bytes()).is_none(),
                    "{t}.{col} holds plaintext"
                );
            }
        }
    }
    rows.len()
}

/// `pg_dump --data-only` of the region database holds the table's data (as
/// ciphertext) and none of the needles.
fn assert_dump_clean(region: &str, t: &str, needles: &[Vec<u8>]) {
    let dump = common::pg_dump_data_only(&region_db(region));
    let copy_line = format!("COPY public.{t} ");
    assert!(
        memchr::memmem::find(&dump, copy_line.as_bytes()).is_some(),
        "the dump of {} has no data of {t}",
        region_db(region)
    );
    assert!(
        memchr::memmem::find(&dump, b"byok1:AQ").is_some(),
        "no ciphertext in the dump"
    );
    for needle in needles {
        if let Some(at) = memchr::memmem::find(&dump, needle) {
            let from = at.saturating_sub(80);
            let to = (at + needle.len() + 80).min(dump.len());
            panic!(
                "plaintext {:?} is in `pg_dump --data-only {}`: ...{}...",
                String::from_utf8_lossy(&needle[..needle.len().min(64)]),
                region_db(region),
                String::from_utf8_lossy(&dump[from..to])
            );
        }
    }
}

/// Direct read of one stored value (bypassing byokpg).
async fn stored_text(region: &str, t: &str, col: &str, id: i32) -> Option<String> {
    direct_client(region)
        .await
        .query_one(&format!("select {col} from {t} where id = $1"), &[&id])
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// A string literal (standard_conforming_strings on), or NULL.
fn lit(v: Option<&str>) -> String {
    v.map_or_else(
        || "NULL".to_string(),
        |s| format!("'{}'", s.replace('\'', "''")),
    )
}

/// A bytea literal in hex input format, or NULL.
fn blit(v: Option<&[u8]>) -> String {
    v.map_or_else(
        || "NULL".to_string(),
        |b| format!("'\\x{}'", hex::encode(b)),
    )
}

fn values_tuple(r: &Rec) -> String {
    format!(
        "({}, {}, {}, {}, {})",
        lit(r.email.as_deref()),
        lit(r.ssn.as_deref()),
        lit(r.notes.as_deref()),
        blit(r.doc.as_deref()),
        blit(r.tag.as_deref())
    )
}

/// 1 MiB of ASCII text in which every 40-byte window holds the marker.
fn big_text(marker: &str) -> String {
    let mut s = String::with_capacity(1 << 20);
    let mut i = 0u32;
    while s.len() < 1 << 20 {
        write!(s, "{i:07}-{marker}|").unwrap();
        i += 1;
    }
    s.truncate(1 << 20);
    s
}

/// Random bytes from the OS, with NULs forced at both ends and the middle.
fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom as _;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b[0] = 0;
    b[n / 2] = 0;
    b[n - 1] = 0;
    b
}

/// The marker plus some bytes that are not UTF-8 and a NUL.
fn marked_bytes(marker: &str, tail: u8) -> Vec<u8> {
    let mut b = vec![0u8, 0xff, 0xfe];
    b.extend_from_slice(marker.as_bytes());
    b.push(tail);
    b
}

/// A parameter sent in the TEXT format (tokio-postgres sends binary by
/// default); bytea values are written in hex input format.
#[derive(Debug)]
struct TextParam(Option<String>);

impl ToSql for TextParam {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match &self.0 {
            Some(s) => {
                out.put_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

fn text_params(r: &Rec) -> Vec<TextParam> {
    let b = |v: &Option<Vec<u8>>| v.as_ref().map(|b| format!("\\x{}", hex::encode(b)));
    vec![
        TextParam(r.email.clone()),
        TextParam(r.ssn.clone()),
        TextParam(r.notes.clone()),
        TextParam(b(&r.doc)),
        TextParam(b(&r.tag)),
    ]
}

fn dynp(p: &TextParam) -> &(dyn ToSql + Sync) {
    p
}

fn as_params(p: &[TextParam]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|x| x as &(dyn ToSql + Sync)).collect()
}

/// Binary-format parameters of a `Rec`, in `email, ssn, notes, doc, tag` order.
fn bin_params(r: &Rec) -> [&(dyn ToSql + Sync); 5] {
    [&r.email, &r.ssn, &r.notes, &r.doc, &r.tag]
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The connection still answers, and still decrypts.
async fn assert_usable(c: &Client) {
    let msgs = c.simple_query("select 'still usable'").await.unwrap();
    assert_eq!(simple_col0(&msgs), [Some("still usable".to_string())]);
    let row = c.query_one("select $1::text", &[&"ext ok"]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "ext ok");
}

/// The error is a byokpg message naming `table` and `column`, with none of
/// the `secrets` in it.
fn assert_names(e: &tokio_postgres::Error, table: &str, column: &str, secrets: &[&str]) {
    let msg = db_message(e);
    let full = format!("{e:?}");
    assert!(msg.starts_with("byokpg:"), "not a byokpg message: {msg}");
    assert!(
        msg.contains(table),
        "message does not name table {table}: {msg}"
    );
    assert!(
        msg.contains(column),
        "message does not name column {column}: {msg}"
    );
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(!full.contains(s), "the error reveals {s:?}: {full}");
    }
}

/// `sql` fails with XX001 naming the column, in the simple and the extended
/// protocol, and the connection stays usable.
async fn expect_xx001(c: &Client, sql: &str, table: &str, column: &str, secrets: &[&str]) {
    let e = expect_sqlstate(c.simple_query(sql).await, "XX001");
    assert_names(&e, table, column, secrets);
    assert_usable(c).await;
    let e = expect_sqlstate(c.query(sql, &[]).await, "XX001");
    assert_names(&e, table, column, secrets);
    assert_usable(c).await;
}

// ---------------------------------------------------------------------------
// 1. Round trips
// ---------------------------------------------------------------------------

/// INSERT (single and multi-row) with RETURNING, UPDATE SET, ON CONFLICT
/// (email) DO UPDATE, and `=` / `<>` / `IN` lookups, all as simple-query
/// literals; NULL, empty strings, unicode, bytea with NULs, a 1 MiB value.
#[tokio::test]
async fn simple_query_literals_round_trip() {
    let f = Fixture::new(Proxy::builder(), &[REGION], "").await;
    let (t, m) = (&f.table, &f.marker);
    let c = f.client().await;
    let mut want = BTreeMap::new();

    let a = rec(
        Some(&format!("{m}-alice@example.com")),
        Some(&format!("{m}-123-45-6789")),
        Some(&format!("{m} 😀 漢字 naïve ünïcødé")),
        Some(&marked_bytes(m, 0)),
        Some(&marked_bytes(m, 1)),
    );
    let sql = format!(
        "insert into {t} (email, ssn, notes, doc, tag) values {} returning {COLS}",
        values_tuple(&a)
    );
    let got = recs_of_simple(&c.simple_query(&sql).await.unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, a, "RETURNING of a single-row insert");
    let id_a = got[0].0;
    want.insert(id_a, a.clone());

    let rows = [
        rec(None, None, None, None, None),
        rec(Some(""), Some(""), Some(""), Some(b""), Some(b"")),
        rec(
            Some(&format!("{m}-李小龍@例え.jp")),
            Some(&format!("{m}-🔐🗝️")),
            Some(&format!("{m} it's a 'quoted' \\ value")),
            None,
            Some(&marked_bytes(m, 1)),
        ),
    ];
    let tuples: Vec<String> = rows.iter().map(values_tuple).collect();
    let sql = format!(
        "insert into {t} (email, ssn, notes, doc, tag) values {} returning {COLS}",
        tuples.join(", ")
    );
    let got = recs_of_simple(&c.simple_query(&sql).await.unwrap());
    assert_eq!(
        got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(),
        rows,
        "multi-row RETURNING"
    );
    want.extend(got);

    simple_updates(&c, t, m, id_a, &mut want).await;
    simple_lookups(&c, t, m, &want).await;

    let big = big_text(m);
    let sql = format!(
        "insert into {t} (notes) values ({}) returning id",
        lit(Some(&big))
    );
    let id_big: i32 = simple_col0(&c.simple_query(&sql).await.unwrap())[0]
        .as_ref()
        .unwrap()
        .parse()
        .unwrap();
    want.insert(id_big, rec(None, None, Some(&big), None, None));

    multi_statement_and_star(&c, t, m, &mut want).await;
    assert_reads(&c, t, &want).await;
    assert_stored(REGION, t, TENANT, &want).await;
    assert_dump_clean(REGION, t, &f.needles());
}

/// One simple Query holding an INSERT ... RETURNING, a SELECT and an UPDATE
/// of protected columns: each result decrypted; then `SELECT *` and
/// `RETURNING *` (protected columns found by position).
async fn multi_statement_and_star(c: &Client, t: &str, m: &str, want: &mut BTreeMap<i32, Rec>) {
    let r = rec(
        Some(&format!("{m}-multi@example.com")),
        Some(&format!("{m}-multi-ssn")),
        None,
        None,
        Some(&marked_bytes(m, 5)),
    );
    let sql = format!(
        "insert into {t} (email, ssn, tag) values ({}, {}, {}) returning {COLS}; \
         select {COLS} from {t} where email = {}; \
         update {t} set notes = '{m}-multi-note' where email = {} returning {COLS}",
        lit(r.email.as_deref()),
        lit(r.ssn.as_deref()),
        blit(r.tag.as_deref()),
        lit(r.email.as_deref()),
        lit(r.email.as_deref())
    );
    let got = recs_of_simple(&c.simple_query(&sql).await.unwrap());
    assert_eq!(got.len(), 3, "three results of one multi-statement Query");
    let id = got[0].0;
    let mut updated = r.clone();
    updated.notes = Some(format!("{m}-multi-note"));
    assert_eq!(got, [(id, r.clone()), (id, r), (id, updated.clone())]);
    want.insert(id, updated.clone());

    // SELECT * and RETURNING *: id, tenant_id, email, ssn, notes, doc, tag, plain.
    let star = |row: &Row| -> (i32, Option<String>, Rec, Option<String>) {
        let (id, tenant, plain) = (row.get(0), row.get(1), row.get(7));
        let r = Rec {
            email: row.get(2),
            ssn: row.get(3),
            notes: row.get(4),
            doc: row.get(5),
            tag: row.get(6),
        };
        (id, tenant, r, plain)
    };
    let rows = c
        .query(&format!("select * from {t} where id = $1"), &[&id])
        .await
        .unwrap();
    let expected = (id, Some(TENANT.to_string()), updated.clone(), None);
    assert_eq!(star(&rows[0]), expected, "select *");
    let rows = c
        .query(
            &format!("update {t} set plain = 'visible' where id = $1 returning *"),
            &[&id],
        )
        .await
        .unwrap();
    let expected = (
        id,
        Some(TENANT.to_string()),
        updated,
        Some("visible".to_string()),
    );
    assert_eq!(star(&rows[0]), expected, "returning *");
}

/// UPDATE ... SET and INSERT ... ON CONFLICT (email) DO UPDATE with literals.
async fn simple_updates(c: &Client, t: &str, m: &str, id_a: i32, want: &mut BTreeMap<i32, Rec>) {
    let a = want[&id_a].clone();
    let new_ssn = format!("{m}-987-65-4321");
    let sql = format!(
        "update {t} set ssn = {}, notes = NULL, doc = {} where email = {} returning {COLS}",
        lit(Some(&new_ssn)),
        blit(Some(&marked_bytes(m, 9))),
        lit(a.email.as_deref())
    );
    let got = recs_of_simple(&c.simple_query(&sql).await.unwrap());
    let mut updated = a.clone();
    updated.ssn = Some(new_ssn);
    updated.notes = None;
    updated.doc = Some(marked_bytes(m, 9));
    assert_eq!(got, [(id_a, updated.clone())], "UPDATE ... RETURNING");

    let upsert_ssn = format!("{m}-000-00-0001");
    let sql = format!(
        "insert into {t} (email, ssn) values ({}, {}) \
         on conflict (email) do update set ssn = EXCLUDED.ssn returning {COLS}",
        lit(a.email.as_deref()),
        lit(Some(&upsert_ssn))
    );
    let got = recs_of_simple(&c.simple_query(&sql).await.unwrap());
    updated.ssn = Some(upsert_ssn);
    assert_eq!(
        got,
        [(id_a, updated.clone())],
        "ON CONFLICT (email) DO UPDATE SET ssn = EXCLUDED.ssn"
    );

    let note = format!("{m}-upserted note");
    let sql = format!(
        "insert into {t} (email, ssn) values ({}, 'ignored') \
         on conflict (email) do update set notes = {} returning {COLS}",
        lit(a.email.as_deref()),
        lit(Some(&note))
    );
    let got = recs_of_simple(&c.simple_query(&sql).await.unwrap());
    updated.notes = Some(note);
    assert_eq!(
        got,
        [(id_a, updated.clone())],
        "ON CONFLICT DO UPDATE SET notes = literal"
    );
    want.insert(id_a, updated);
}

/// `=`, `<>`, `IN` on the deterministic text and bytea columns, as literals.
async fn simple_lookups(c: &Client, t: &str, m: &str, want: &BTreeMap<i32, Rec>) {
    let ids = |sql: String| async move {
        simple_col0(&c.simple_query(&sql).await.unwrap())
            .into_iter()
            .map(|v| v.unwrap().parse::<i32>().unwrap())
            .collect::<BTreeSet<i32>>()
    };
    let with_email = |e: &str| {
        want.iter()
            .filter(|(_, r)| r.email.as_deref() == Some(e))
            .map(|(id, _)| *id)
            .collect::<BTreeSet<i32>>()
    };
    let alice = format!("{m}-alice@example.com");
    let lee = format!("{m}-李小龍@例え.jp");
    assert_eq!(
        ids(format!(
            "select id from {t} where email = {}",
            lit(Some(&alice))
        ))
        .await,
        with_email(&alice)
    );
    assert_eq!(
        ids(format!("select id from {t} where email = ''")).await,
        with_email("")
    );
    let not_alice: BTreeSet<i32> = want
        .iter()
        .filter(|(_, r)| r.email.as_ref().is_some_and(|e| *e != alice))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        ids(format!(
            "select id from {t} where email <> {}",
            lit(Some(&alice))
        ))
        .await,
        not_alice
    );
    let both: BTreeSet<i32> = with_email(&alice)
        .union(&with_email(&lee))
        .copied()
        .collect();
    let sql = format!(
        "select id from {t} where email in ({}, {}, 'nobody-{m}')",
        lit(Some(&alice)),
        lit(Some(&lee))
    );
    assert_eq!(ids(sql).await, both);
    let tag = marked_bytes(m, 1);
    let tagged: BTreeSet<i32> = want
        .iter()
        .filter(|(_, r)| r.tag.as_deref() == Some(&tag[..]))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(tagged.len(), 2);
    assert_eq!(
        ids(format!(
            "select id from {t} where tag = {}",
            blit(Some(&tag))
        ))
        .await,
        tagged
    );
    let sql = format!("select id from {t} where email is null");
    assert_eq!(
        ids(sql).await.len(),
        want.values().filter(|r| r.email.is_none()).count()
    );
}

/// Extended protocol: parameters in binary and text format for INSERT,
/// UPDATE, ON CONFLICT and lookups; NULL, empty, unicode, 1 MiB text and
/// random bytea with NULs.
#[tokio::test]
async fn extended_parameters_text_and_binary_round_trip() {
    let f = Fixture::new(Proxy::builder(), &[REGION], "").await;
    let (t, m) = (&f.table, &f.marker);
    let c = f.client().await;
    let mut want = BTreeMap::new();
    let random = random_bytes(64 * 1024);
    let big = big_text(m);
    let binary_rows = [
        rec(
            Some(&format!("{m}-bin@example.com")),
            Some(&format!("{m}-bin-ssn")),
            Some(&format!("{m} 😀 漢字")),
            Some(&random),
            Some(&marked_bytes(m, 2)),
        ),
        rec(None, None, None, None, None),
        rec(Some(""), Some(""), Some(""), Some(b""), Some(b"")),
        rec(None, None, Some(&big), None, None),
    ];
    let ins = c
        .prepare(&format!(
            "insert into {t} (email, ssn, notes, doc, tag) values ($1, $2, $3, $4, $5) returning {COLS}"
        ))
        .await
        .unwrap();
    for r in &binary_rows {
        let (id, got) = rec_of_row(&c.query_one(&ins, &bin_params(r)).await.unwrap());
        assert_eq!(&got, r, "binary-format parameters, RETURNING");
        want.insert(id, got);
    }
    let text_rows = [
        rec(
            Some(&format!("{m}-text@example.com")),
            Some(&format!("{m}-text-ssn-漢字")),
            Some(&format!("{m} 🙂 text format")),
            Some(&random[..1000]),
            Some(&marked_bytes(m, 3)),
        ),
        rec(None, Some(""), None, Some(b""), None),
        rec(None, Some(&big), None, None, None),
    ];
    for r in &text_rows {
        let p = text_params(r);
        let (id, got) = rec_of_row(&c.query_one(&ins, &as_params(&p)).await.unwrap());
        assert_eq!(&got, r, "text-format parameters, RETURNING");
        want.insert(id, got);
    }
    extended_updates(&c, t, m, &mut want).await;
    extended_lookups(&c, t, m, &want).await;

    assert_reads(&c, t, &want).await;
    assert_stored(REGION, t, TENANT, &want).await;
    let mut needles = f.needles();
    needles.push(hex::encode(&random[100..164]).into_bytes());
    assert_dump_clean(REGION, t, &needles);
}

/// UPDATE and ON CONFLICT with parameters, binary and text.
async fn extended_updates(c: &Client, t: &str, m: &str, want: &mut BTreeMap<i32, Rec>) {
    let email = format!("{m}-bin@example.com");
    let id = *want
        .iter()
        .find(|(_, r)| r.email.as_deref() == Some(&email))
        .unwrap()
        .0;
    let mut r = want[&id].clone();
    let upd =
        format!("update {t} set ssn = $1, notes = $2, doc = $3 where email = $4 returning {COLS}");
    r.ssn = Some(format!("{m}-bin-ssn-2"));
    r.notes = None;
    r.doc = Some(marked_bytes(m, 4));
    let got = c
        .query_one(&upd, &[&r.ssn, &r.notes, &r.doc, &email])
        .await
        .unwrap();
    assert_eq!(
        rec_of_row(&got),
        (id, r.clone()),
        "UPDATE with binary parameters"
    );

    r.ssn = Some(format!("{m}-text-ssn-3"));
    r.notes = Some(format!("{m}-text-notes-3"));
    r.doc = None;
    let p = [
        TextParam(r.ssn.clone()),
        TextParam(r.notes.clone()),
        TextParam(None),
        TextParam(Some(email.clone())),
    ];
    let got = c
        .query_typed(
            &upd,
            &[
                (dynp(&p[0]), Type::TEXT),
                (dynp(&p[1]), Type::VARCHAR),
                (dynp(&p[2]), Type::BYTEA),
                (dynp(&p[3]), Type::TEXT),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(rec_of_row).collect::<Vec<_>>(),
        [(id, r.clone())],
        "UPDATE with text parameters (unnamed statement)"
    );

    let upsert = format!(
        "insert into {t} (email, ssn) values ($1, $2) \
         on conflict (email) do update set ssn = excluded.ssn returning {COLS}"
    );
    r.ssn = Some(format!("{m}-upsert-bin"));
    let got = c.query_one(&upsert, &[&email, &r.ssn]).await.unwrap();
    assert_eq!(
        rec_of_row(&got),
        (id, r.clone()),
        "ON CONFLICT with binary parameters"
    );
    r.ssn = Some(format!("{m}-upsert-text"));
    let p = [TextParam(Some(email.clone())), TextParam(r.ssn.clone())];
    let got = c.query_one(&upsert, &as_params(&p)).await.unwrap();
    assert_eq!(
        rec_of_row(&got),
        (id, r.clone()),
        "ON CONFLICT with text parameters"
    );
    want.insert(id, r);
}

/// `=`, `<>`, `IN` with parameters in both formats, on text and bytea.
async fn extended_lookups(c: &Client, t: &str, m: &str, want: &BTreeMap<i32, Rec>) {
    let bin = format!("{m}-bin@example.com");
    let text = format!("{m}-text@example.com");
    let id_of = |e: &str| {
        *want
            .iter()
            .find(|(_, r)| r.email.as_deref() == Some(e))
            .unwrap()
            .0
    };
    let (id_bin, id_text) = (id_of(&bin), id_of(&text));
    let eq = format!("select id from {t} where email = $1");
    assert_eq!(
        ids_of(&c.query(&eq, &[&bin]).await.unwrap()),
        BTreeSet::from([id_bin])
    );
    let p = [TextParam(Some(text.clone()))];
    assert_eq!(
        ids_of(&c.query(&eq, &as_params(&p)).await.unwrap()),
        BTreeSet::from([id_text])
    );
    assert_eq!(
        ids_of(&c.query(&eq, &[&""]).await.unwrap()),
        BTreeSet::from([id_of("")])
    );

    let ne = format!("select id from {t} where email <> $1");
    let others: BTreeSet<i32> = want
        .iter()
        .filter(|(_, r)| r.email.as_ref().is_some_and(|e| *e != bin))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids_of(&c.query(&ne, &[&bin]).await.unwrap()), others);

    let inl = format!("select id from {t} where email in ($1, $2, $3, $4)");
    let p = [
        TextParam(Some(text.clone())),
        TextParam(Some(format!("nobody-{m}"))),
    ];
    let got = c
        .query(&inl, &[&bin, &p[0], &p[1], &None::<String>])
        .await
        .unwrap();
    assert_eq!(
        ids_of(&got),
        BTreeSet::from([id_bin, id_text]),
        "IN with mixed formats and NULL"
    );

    let tag = format!("select id from {t} where tag = $1");
    let got = c.query(&tag, &[&marked_bytes(m, 2)]).await.unwrap();
    assert_eq!(
        ids_of(&got),
        BTreeSet::from([id_bin]),
        "bytea lookup, binary parameter"
    );
    let p = [TextParam(Some(format!(
        "\\x{}",
        hex::encode(marked_bytes(m, 3))
    )))];
    let got = c.query(&tag, &as_params(&p)).await.unwrap();
    assert_eq!(
        ids_of(&got),
        BTreeSet::from([id_text]),
        "bytea lookup, text parameter"
    );
}

/// Named prepared statements reused many times, and pipelined statements
/// (named and unnamed) sent without waiting for each answer.
#[tokio::test]
async fn prepared_reuse_and_pipelined_statements() {
    let f = Fixture::new(Proxy::builder(), &[REGION], "").await;
    let (t, m) = (f.table.as_str(), f.marker.as_str());
    let c = f.client().await;
    let mut want = BTreeMap::new();
    let ins: Statement = c.prepare(&insert_sql(t, "id")).await.unwrap();
    let sel = c
        .prepare(&format!("select {COLS} from {t} where email = $1"))
        .await
        .unwrap();
    for i in 0..150 {
        let r = nth(m, i);
        let id: i32 = c.query_one(&ins, &bin_params(&r)).await.unwrap().get(0);
        want.insert(id, r);
    }
    for i in (0..150).step_by(7) {
        let r = nth(m, i);
        let got = c.query_one(&sel, &[&r.email]).await.unwrap();
        assert_eq!(rec_of_row(&got).1, r, "named statement reused, lookup {i}");
    }
    pipelined_named(&c, t, m, &ins, &mut want).await;
    pipelined_unnamed(&c, t, m, &mut want).await;
    assert_reads(&c, t, &want).await;
    portal_in_chunks(&f.proxy, t, &want).await;
    assert_stored(REGION, t, TENANT, &want).await;
    assert_dump_clean(REGION, t, &f.needles());
}

/// `insert into t (protected columns) values ($1..$5) returning {returning}`.
fn insert_sql(t: &str, returning: &str) -> String {
    format!(
        "insert into {t} (email, ssn, notes, doc, tag) values ($1, $2, $3, $4, $5) \
         returning {returning}"
    )
}

/// Row `i` of the prepared/pipelined test.
fn nth(m: &str, i: u32) -> Rec {
    rec(
        Some(&format!("{m}-user{i}@example.com")),
        Some(&format!("{m}-ssn-{i}")),
        (!i.is_multiple_of(3))
            .then(|| format!("{m}-note-{i}-é"))
            .as_deref(),
        Some(&marked_bytes(m, u8::try_from(i % 256).unwrap())),
        Some(&[u8::try_from(i % 7).unwrap(), 0, 1][..]),
    )
}

/// Named statements sent without waiting (tokio-postgres prepares
/// `query(&str)` as a named statement too).
async fn pipelined_named(
    c: &Client,
    t: &str,
    m: &str,
    ins: &Statement,
    want: &mut BTreeMap<i32, Rec>,
) {
    let (r1, r2) = (nth(m, 1000), nth(m, 1001));
    let (p1, p2) = (bin_params(&r1), bin_params(&r2));
    let (e3, e4) = (nth(m, 3).email, nth(m, 4).email);
    let p34: [&(dyn ToSql + Sync); 2] = [&e3, &e4];
    let lookup_sql = format!("select {COLS} from {t} where email in ($1, $2)");
    let (a, b, s) = futures_util::join!(
        c.query_one(ins, &p1),
        c.query_one(ins, &p2),
        c.query(&lookup_sql, &p34),
    );
    want.insert(a.unwrap().get(0), r1);
    want.insert(b.unwrap().get(0), r2);
    let mut found: Vec<Rec> = s.unwrap().iter().map(|r| rec_of_row(r).1).collect();
    found.sort_by(|x, y| x.email.cmp(&y.email));
    assert_eq!(found, [nth(m, 3), nth(m, 4)], "pipelined IN lookup");
}

/// Unnamed statements sent without waiting (query_typed: Parse "", Bind,
/// Describe, Execute, Sync each): inserts and lookups interleaved.
async fn pipelined_unnamed(c: &Client, t: &str, m: &str, want: &mut BTreeMap<i32, Rec>) {
    let ins_sql = insert_sql(t, "id");
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::VARCHAR,
        Type::BYTEA,
        Type::BYTEA,
    ];
    let batch: Vec<Rec> = (2000..2016).map(|i| nth(m, i)).collect();
    let inserts = batch.iter().map(|r| {
        let bound: Vec<(&(dyn ToSql + Sync), Type)> =
            bin_params(r).into_iter().zip(types.clone()).collect();
        let sql = &ins_sql;
        async move { c.query_typed(sql, &bound).await }
    });
    let sel_sql = format!("select {COLS} from {t} where email = $1");
    let lookups = (10..20).map(|i| {
        let sql = &sel_sql;
        async move {
            let email = nth(m, i).email;
            (
                i,
                c.query_typed(sql, &[(&email as &(dyn ToSql + Sync), Type::TEXT)])
                    .await,
            )
        }
    });
    let (inserted, looked_up) = futures_util::join!(
        futures_util::future::join_all(inserts),
        futures_util::future::join_all(lookups)
    );
    for (r, res) in batch.iter().zip(inserted) {
        want.insert(res.unwrap()[0].get(0), r.clone());
    }
    for (i, res) in looked_up {
        let rows = res.unwrap();
        assert_eq!(
            rows.iter().map(|r| rec_of_row(r).1).collect::<Vec<_>>(),
            [nth(m, i)],
            "pipelined unnamed lookup {i}"
        );
    }
}

/// A bound portal read 7 rows at a time (Execute with a row limit, so the
/// backend answers PortalSuspended and the same portal is executed again).
async fn portal_in_chunks(proxy: &Proxy, t: &str, want: &BTreeMap<i32, Rec>) {
    let mut c = proxy.connect(USER, None).await;
    let tx = c.transaction().await.unwrap();
    let stmt = tx
        .prepare(&format!("select {COLS} from {t} order by id"))
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut got = BTreeMap::new();
    loop {
        let rows = tx.query_portal(&portal, 7).await.unwrap();
        if rows.is_empty() {
            break;
        }
        got.extend(rows.iter().map(rec_of_row));
    }
    tx.commit().await.unwrap();
    assert_eq!(&got, want, "portal read in chunks of 7 rows");
}

/// bytea in PostgreSQL's escape input format (`a\000b`), as a literal and as
/// a text-format parameter: stored encrypted, read back as the same bytes.
#[tokio::test]
async fn bytea_escape_format_round_trips() {
    let f = Fixture::new(Proxy::builder(), &[REGION], "").await;
    let (t, m) = (&f.table, &f.marker);
    let c = f.client().await;
    let mut want = BTreeMap::new();
    let mut expected = m.as_bytes().to_vec();
    expected.extend_from_slice(&[0, b'b', b'\\', b'c']);
    let escaped = format!("{m}\\000b\\\\c");
    let sql = format!("insert into {t} (doc) values ('{escaped}') returning {COLS}");
    let got = recs_of_simple(&c.simple_query(&sql).await.unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1.doc.as_deref(),
        Some(&expected[..]),
        "escape-format bytea literal"
    );
    want.insert(got[0].0, rec(None, None, None, Some(&expected), None));
    let p = [TextParam(Some(escaped))];
    let got = c
        .query_one(
            &format!("insert into {t} (doc) values ($1) returning {COLS}"),
            &as_params(&p),
        )
        .await
        .unwrap();
    let (id, r) = rec_of_row(&got);
    assert_eq!(
        r.doc.as_deref(),
        Some(&expected[..]),
        "escape-format bytea text parameter"
    );
    want.insert(id, r);
    assert_reads(&c, t, &want).await;
    assert_stored(REGION, t, TENANT, &want).await;
}

// ---------------------------------------------------------------------------
// 2. Fail closed
// ---------------------------------------------------------------------------

/// Flips one byte of the envelope inside a `byok1:` text value.
fn flip_text(stored: &str, index_from_end: usize) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut env = engine
        .decode(stored.strip_prefix("byok1:").unwrap())
        .unwrap();
    let i = env.len() - 1 - index_from_end;
    env[i] ^= 0x01;
    format!("byok1:{}", engine.encode(env))
}

/// A direct change (bypassing byokpg) to stored values; then `read` through
/// the proxy must fail with XX001 naming `table` and `column`.
struct Tamper<'a> {
    change: String,
    params: Vec<&'a (dyn ToSql + Sync)>,
    read: String,
    table: &'a str,
    column: &'a str,
}

impl Tamper<'_> {
    async fn expect_xx001(self, c: &Client, secrets: &[&str]) {
        direct_client(REGION)
            .await
            .execute(&self.change, &self.params)
            .await
            .unwrap();
        expect_xx001(c, &self.read, self.table, self.column, secrets).await;
    }
}

/// Ciphertext moved to another column (same and other mode), to another
/// table, or altered by one byte (text and bytea), and plaintext written
/// behind byokpg's back → XX001 naming the column, never the value; the
/// connection keeps working.
#[tokio::test]
async fn moved_or_tampered_ciphertext_is_xx001() {
    let other = unique_name("enc_other");
    let fx = Fixture::new(
        Proxy::builder().policy_table(&policy(&other)),
        &[REGION],
        &table_ddl(&other),
    )
    .await;
    let (t, m) = (fx.table.as_str(), fx.marker.as_str());
    let client = fx.client().await;
    let ssn = format!("{m}-secret-ssn");
    let email = format!("{m}-victim@example.com");
    let ins =
        format!("insert into {t} (email, ssn, notes, doc) values ($1, $2, $3, $4) returning id");
    let note = format!("{m}-note");
    let id: i32 = client
        .query_one(&ins, &[&email, &ssn, &note, &marked_bytes(m, 7)])
        .await
        .unwrap()
        .get(0);
    let ctl = (format!("{m}-control@example.com"), format!("{m}-ctl"));
    let ctl_id: i32 = client
        .query_one(&ins, &[&ctl.0, &ctl.1, &None::<String>, &None::<Vec<u8>>])
        .await
        .unwrap()
        .get(0);
    let other_id: i32 = client
        .query_one(
            &format!("insert into {other} (ssn) values ($1) returning id"),
            &[&format!("{m}-other")],
        )
        .await
        .unwrap()
        .get(0);
    let secrets = [ssn.as_str(), email.as_str(), m];
    moved_cases(&client, (t, id), (&other, other_id), ctl_id, &secrets).await;
    // The control row still decrypts on the same connection.
    let row = client
        .query_one(&format!("select ssn from {t} where id = $1"), &[&ctl_id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), ctl.1);
    tampered_cases(&client, t, id, &email, &secrets).await;
    assert_usable(&client).await;
}

/// Values moved between columns and tables (`own` / `other` = table, row).
async fn moved_cases(
    c: &Client,
    own: (&str, i32),
    other: (&str, i32),
    ctl_id: i32,
    secrets: &[&str],
) {
    let (t, id) = own;
    // Another column of the same mode (randomized ssn → randomized notes),
    // read alone and through `select *`.
    Tamper {
        change: format!("update {t} set notes = ssn where id = {id}"),
        params: vec![],
        read: format!("select notes from {t} where id = {id}"),
        table: t,
        column: "notes",
    }
    .expect_xx001(c, secrets)
    .await;
    expect_xx001(
        c,
        &format!("select * from {t} where id = {id}"),
        t,
        "notes",
        secrets,
    )
    .await;
    // Another column of another mode (randomized ssn → deterministic email).
    let ctl_email = stored_text(REGION, t, "email", ctl_id).await;
    Tamper {
        change: format!("update {t} set email = ssn where id = {ctl_id}"),
        params: vec![],
        read: format!("select email from {t} where id = {ctl_id}"),
        table: t,
        column: "email",
    }
    .expect_xx001(c, secrets)
    .await;
    let d = direct_client(REGION).await;
    d.execute(
        &format!("update {t} set email = $1, notes = null where id = $2"),
        &[&ctl_email, &ctl_id],
    )
    .await
    .unwrap();
    d.execute(
        &format!("update {t} set notes = null where id = $1"),
        &[&id],
    )
    .await
    .unwrap();
    // Another table, same column name and mode.
    let (o, oid) = other;
    Tamper {
        change: format!(
            "update {o} set ssn = (select ssn from {t} where id = {id}) where id = {oid}"
        ),
        params: vec![],
        read: format!("select ssn from {o} where id = {oid}"),
        table: o,
        column: "ssn",
    }
    .expect_xx001(c, secrets)
    .await;
}

/// One byte of the ciphertext altered (deterministic text, randomized text
/// in the GCM tag and in the ciphertext, bytea), then plaintext stored
/// directly: never returned.
async fn tampered_cases(c: &Client, t: &str, id: i32, email: &str, secrets: &[&str]) {
    let stored_email = stored_text(REGION, t, "email", id).await.unwrap();
    let stored_ssn = stored_text(REGION, t, "ssn", id).await.unwrap();
    let flipped = [
        ("email", flip_text(&stored_email, 3)),
        ("ssn", flip_text(&stored_ssn, 0)),
        ("ssn", flip_text(&stored_ssn, 20)),
    ];
    for (column, value) in &flipped {
        Tamper {
            change: format!("update {t} set {column} = $1 where id = {id}"),
            params: vec![value],
            read: format!("select {column} from {t} where id = {id}"),
            table: t,
            column,
        }
        .expect_xx001(c, secrets)
        .await;
    }
    Tamper {
        change: format!(
            "update {t} set doc = set_byte(doc, 25, get_byte(doc, 25) # 1) where id = {id}"
        ),
        params: vec![],
        read: format!("select doc from {t} where id = {id}"),
        table: t,
        column: "doc",
    }
    .expect_xx001(c, secrets)
    .await;
    let plain = email.to_string();
    Tamper {
        change: format!("update {t} set email = $1, doc = null where id = {id}"),
        params: vec![&plain],
        read: format!("select email from {t} where id = {id}"),
        table: t,
        column: "email",
    }
    .expect_xx001(c, secrets)
    .await;
}

/// A builder with acme (eu) and a second tenant of eu, each with a user.
fn two_tenants_of_eu(second: &str) -> ProxyBuilder {
    Proxy::builder()
        .tenant(second, REGION)
        .user(USER, "acme_app-pw", &[TENANT])
        .user(
            &format!("{second}_app"),
            &format!("{second}_app-pw"),
            &[second],
        )
}

/// A row written by acme is read by another tenant of the same region → XX001.
#[tokio::test]
async fn another_tenant_of_the_same_region_gets_xx001() {
    let f = Fixture::new(two_tenants_of_eu(NEIGHBOUR), &[REGION], "").await;
    let (t, m) = (&f.table, &f.marker);
    let acme = f.client().await;
    let neighbour = f.proxy.connect(&format!("{NEIGHBOUR}_app"), None).await;
    let ins = format!("insert into {t} (email, ssn, doc) values ($1, $2, $3) returning id");
    let email = format!("{m}-acme@example.com");
    let ssn = format!("{m}-acme-ssn");
    let id: i32 = acme
        .query_one(&ins, &[&email, &ssn, &marked_bytes(m, 1)])
        .await
        .unwrap()
        .get(0);
    // The neighbour has a DEK of its own (version 1, like acme's).
    let n_email = format!("{m}-neighbour@example.com");
    let n_id: i32 = neighbour
        .query_one(&ins, &[&n_email, &format!("{m}-n-ssn"), &None::<Vec<u8>>])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored_tenant(t, n_id).await.as_deref(),
        Some(NEIGHBOUR),
        "the neighbour's row carries its tenant"
    );
    let secrets = [email.as_str(), ssn.as_str(), m.as_str()];
    for col in ["email", "ssn", "doc"] {
        expect_xx001(
            &neighbour,
            &format!("select {col} from {t} where id = {id}"),
            t,
            col,
            &secrets,
        )
        .await;
    }
    // And the other way round; both still read their own rows.
    expect_xx001(
        &acme,
        &format!("select email from {t} where id = {n_id}"),
        t,
        "email",
        &[n_email.as_str()],
    )
    .await;
    let own = neighbour
        .query_one(&format!("select email from {t} where id = $1"), &[&n_id])
        .await
        .unwrap();
    assert_eq!(own.get::<_, String>(0), n_email);
    let own = acme
        .query_one(&format!("select email from {t} where id = $1"), &[&id])
        .await
        .unwrap();
    assert_eq!(own.get::<_, String>(0), email);
    // A lookup by another tenant's value finds nothing (other key).
    let rows = neighbour
        .query(&format!("select id from {t} where email = $1"), &[&email])
        .await
        .unwrap();
    assert!(
        rows.is_empty(),
        "the neighbour's lookup matched acme's ciphertext"
    );
}

/// A tenant that has never written anything (no DEK yet) reading another
/// tenant's value → XX001 as well (SPEC §5), not a key error.
#[tokio::test]
async fn fresh_tenant_reading_another_tenants_value_gets_xx001() {
    let fresh = unique_name("fresh");
    let f = Fixture::new(two_tenants_of_eu(&fresh), &[REGION], "").await;
    let (t, m) = (&f.table, &f.marker);
    let acme = f.client().await;
    let email = format!("{m}-acme@example.com");
    let id: i32 = acme
        .query_one(
            &format!("insert into {t} (email) values ($1) returning id"),
            &[&email],
        )
        .await
        .unwrap()
        .get(0);
    let reader = f.proxy.connect(&format!("{fresh}_app"), None).await;
    let sql = format!("select email from {t} where id = {id}");
    let e = reader.query(&sql, &[]).await.unwrap_err();
    let d = direct_client(REGION).await;
    d.execute(
        "delete from byokpg.tenant_keys where tenant = $1",
        &[&fresh],
    )
    .await
    .unwrap();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("XX001"), "{e:?}");
    assert_names(&e, t, "email", &[email.as_str()]);
    assert_usable(&reader).await;
}

async fn stored_tenant(t: &str, id: i32) -> Option<String> {
    stored_text(REGION, t, "tenant_id", id).await
}

/// Writing a row whose tenant column names another tenant → 42501, as a
/// literal and as a parameter, in INSERT, UPDATE and ON CONFLICT; nothing is
/// written and the connection keeps working.
#[tokio::test]
async fn writing_another_tenants_row_is_42501() {
    let f = Fixture::new(Proxy::builder(), &[REGION], "").await;
    let (t, m) = (&f.table, &f.marker);
    let c = f.client().await;
    let email = format!("{m}-own@example.com");
    let id: i32 = c
        .query_one(
            &format!("insert into {t} (email) values ($1) returning id"),
            &[&email],
        )
        .await
        .unwrap()
        .get(0);
    let forbidden_simple = [
        format!("insert into {t} (tenant_id, email) values ('globex', '{m}-x1')"),
        format!("insert into {t} (tenant_id, email) values ('{NEIGHBOUR}', '{m}-x2')"),
        format!(
            "insert into {t} (tenant_id, email) values ('acme', '{m}-x3'), ('globex', '{m}-x4')"
        ),
        format!("update {t} set tenant_id = 'globex' where id = {id}"),
        format!(
            "insert into {t} (email) values ('{m}-own@example.com') on conflict (email) do update set tenant_id = 'globex'"
        ),
    ];
    for sql in &forbidden_simple {
        let e = expect_sqlstate(c.simple_query(sql).await, "42501");
        assert!(db_message(&e).starts_with("byokpg:"), "{sql}: {e:?}");
        assert_usable(&c).await;
    }
    let forbidden_param = [
        format!("insert into {t} (tenant_id, email) values ($1, $2)"),
        format!("update {t} set tenant_id = $1 where email = $2"),
    ];
    for sql in &forbidden_param {
        for other in ["globex", NEIGHBOUR, "ACME", "acme "] {
            let e = expect_sqlstate(c.query(sql, &[&other, &email]).await, "42501");
            assert!(
                db_message(&e).starts_with("byokpg:"),
                "{sql} with {other:?}: {e:?}"
            );
            let p = [
                TextParam(Some(other.to_string())),
                TextParam(Some(email.clone())),
            ];
            expect_sqlstate(c.query(sql, &as_params(&p)).await, "42501");
            assert_usable(&c).await;
        }
    }
    let d = direct_client(REGION).await;
    let rows = d
        .query(&format!("select id, tenant_id from {t}"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "a refused write reached the database");
    assert_eq!(rows[0].get::<_, Option<String>>(1).as_deref(), Some(TENANT));
}

/// Every form impossible on ciphertext → 0A000 with a `byokpg:` message
/// naming table and column, in literal and parameter form; nothing written;
/// the connection usable after each.
#[tokio::test]
async fn refused_forms_are_0a000_naming_table_and_column() {
    let f = Fixture::new(Proxy::builder(), &[REGION], "").await;
    let (t, m) = (&f.table, &f.marker);
    let c = f.client().await;
    let email = format!("{m}-x@example.com");
    c.query(
        &format!("insert into {t} (email, ssn) values ($1, $2)"),
        &[&email, &format!("{m}-s")],
    )
    .await
    .unwrap();
    let simple: [(String, &str); 12] = [
        (format!("select email from {t} order by email"), "email"),
        (format!("select id, email from {t} order by 2"), "email"),
        (
            format!("select id from {t} where email like '{m}%'"),
            "email",
        ),
        (format!("select id from {t} where ssn ilike '%x%'"), "ssn"),
        (format!("select id from {t} where email > 'a'"), "email"),
        (
            format!("select id from {t} where email between 'a' and 'b'"),
            "email",
        ),
        (format!("select lower(email) from {t}"), "email"),
        (format!("select id from {t} where length(ssn) > 3"), "ssn"),
        (format!("select id from {t} where ssn = '{m}-s'"), "ssn"),
        (format!("select id from {t} where ssn in ('{m}-s')"), "ssn"),
        (
            format!("insert into {t} (email) select '{m}-sel@example.com'"),
            "email",
        ),
        (format!("update {t} set plain = email || 'x'"), "email"),
    ];
    for (sql, col) in &simple {
        let e = expect_sqlstate(c.simple_query(sql).await, "0A000");
        assert_names(&e, t, col, &[]);
        assert_usable(&c).await;
    }
    let params: [(String, &str); 6] = [
        (format!("select id from {t} where email like $1"), "email"),
        (format!("select id from {t} where email < $1"), "email"),
        (format!("select id from {t} where ssn = $1"), "ssn"),
        (
            format!("select id from {t} where email = lower($1)"),
            "email",
        ),
        (format!("insert into {t} (email) select $1"), "email"),
        (format!("update {t} set notes = lower($1)"), "notes"),
    ];
    for (sql, col) in &params {
        let e = expect_sqlstate(c.query(sql, &[&"a%"]).await, "0A000");
        assert_names(&e, t, col, &[]);
        assert_usable(&c).await;
    }
    let d = direct_client(REGION).await;
    let n: i64 = d
        .query_one(&format!("select count(*) from {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "a refused INSERT ... SELECT wrote rows");
    let row = d
        .query_one(&format!("select notes, plain from {t}"), &[])
        .await
        .unwrap();
    let unchanged: (Option<String>, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(unchanged, (None, None), "a refused UPDATE changed the row");
}

// ---------------------------------------------------------------------------
// 3. Tenant column
// ---------------------------------------------------------------------------

/// Omitted → filled with the connection's tenant (simple and extended,
/// multi-row, two tenants of two regions); given → checked and accepted.
#[tokio::test]
async fn tenant_column_filled_when_omitted_checked_when_given() {
    let f = Fixture::new(Proxy::builder(), &[REGION, "us"], "").await;
    let (t, m) = (&f.table, &f.marker);
    let acme = f.client().await;
    let globex = f.proxy.connect(USER, Some("globex")).await;
    let mut want_eu = BTreeMap::new();
    let sql = format!("insert into {t} (email) values ('{m}-s1@x'), ('{m}-s2@x') returning {COLS}");
    want_eu.extend(recs_of_simple(&acme.simple_query(&sql).await.unwrap()));
    let ins = format!("insert into {t} (email, ssn) values ($1, $2) returning {COLS}");
    let got = acme
        .query_one(&ins, &[&format!("{m}-e1@x"), &format!("{m}-ssn")])
        .await
        .unwrap();
    want_eu.extend([rec_of_row(&got)]);
    let given = [
        format!("insert into {t} (tenant_id, email) values ('acme', '{m}-g1@x') returning {COLS}"),
        format!(
            "insert into {t} (email, tenant_id) values ('{m}-g2@x', 'acme'), ('{m}-g3@x', 'acme') returning {COLS}"
        ),
    ];
    for sql in &given {
        want_eu.extend(recs_of_simple(&acme.simple_query(sql).await.unwrap()));
    }
    let ins_t = format!("insert into {t} (tenant_id, email) values ($1, $2) returning {COLS}");
    let got = acme
        .query_one(&ins_t, &[&TENANT, &format!("{m}-g4@x")])
        .await
        .unwrap();
    want_eu.extend([rec_of_row(&got)]);
    let p = [
        TextParam(Some(TENANT.into())),
        TextParam(Some(format!("{m}-g5@x"))),
    ];
    let got = acme.query_one(&ins_t, &as_params(&p)).await.unwrap();
    want_eu.extend([rec_of_row(&got)]);
    let upd = format!("update {t} set tenant_id = $1, ssn = $2 where email = $3 returning {COLS}");
    let got = acme
        .query_one(&upd, &[&TENANT, &format!("{m}-ssn2"), &format!("{m}-g4@x")])
        .await
        .unwrap();
    want_eu.extend([rec_of_row(&got)]);
    assert_eq!(want_eu.len(), 8);
    assert_stored(REGION, t, TENANT, &want_eu).await;

    let mut want_us = BTreeMap::new();
    let got = globex
        .query_one(&ins, &[&format!("{m}-globex@x"), &None::<String>])
        .await
        .unwrap();
    want_us.extend([rec_of_row(&got)]);
    let sql = format!("insert into {t} (ssn) values ('{m}-globex-ssn') returning {COLS}");
    want_us.extend(recs_of_simple(&globex.simple_query(&sql).await.unwrap()));
    assert_stored("us", t, "globex", &want_us).await;
    assert_reads(&globex, t, &want_us).await;
    assert_reads(&acme, t, &want_eu).await;
}

// ---------------------------------------------------------------------------
// 4. Views
// ---------------------------------------------------------------------------

/// A view renaming a protected column decrypts through the proxy (text and
/// binary), and a lookup through the view works.
#[tokio::test]
async fn view_over_protected_table_decrypts() {
    let views = "create view {t}_v as select id, email as contact from {t};
                 create view {t}_all as select * from {t};";
    let f = Fixture::new(Proxy::builder(), &[REGION], views).await;
    let (t, m) = (&f.table, &f.marker);
    let c = f.client().await;
    let contacts = [format!("{m}-v1@example.com"), format!("{m}-v2@例え.jp")];
    let sql = format!(
        "insert into {t} (email, ssn) values ({}, '{m}-vs1'), ({}, '{m}-vs2')",
        lit(Some(&contacts[0])),
        lit(Some(&contacts[1]))
    );
    c.simple_query(&sql).await.unwrap();
    let via_view = format!("select contact from {t}_v order by id");
    let got = simple_col0(&c.simple_query(&via_view).await.unwrap());
    assert_eq!(
        got,
        contacts.iter().cloned().map(Some).collect::<Vec<_>>(),
        "view, text results"
    );
    let got: Vec<String> = c
        .query(&via_view, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, contacts, "view, binary results");
    let rows = c
        .query(
            &format!("select id, contact from {t}_v where contact = $1"),
            &[&contacts[1]],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "lookup through the view");
    assert_eq!(rows[0].get::<_, String>(1), contacts[1]);
    let rows = c
        .query(&format!("select email, ssn from {t}_all order by id"), &[])
        .await
        .unwrap();
    let ssns: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(
        ssns,
        [format!("{m}-vs1"), format!("{m}-vs2")],
        "select * view"
    );
    assert_eq!(assert_all_ciphertext(REGION, t, m).await, 2);
    assert_dump_clean(REGION, t, &f.needles());
}

// ---------------------------------------------------------------------------
// 5. psql
// ---------------------------------------------------------------------------

/// psql: E'' (with \x, \u and \' escapes), dollar-quoted and U&'' literals
/// are stored encrypted (never the plaintext nor its escaped spelling) and
/// read back with `\x` on; a lookup with an E'' literal finds the row.
#[test]
fn psql_escape_dollar_and_unicode_literals_round_trip() {
    let table = unique_name("enc");
    let m = unique_name("pt");
    common::run_async({
        let ddl = table_ddl(&table);
        async move { create_in_regions(&[REGION], &ddl).await }
    });
    let proxy = Proxy::builder()
        .scram()
        .policy_table(&policy(&table))
        .start();
    proxy.require_proxy();
    let dsn = proxy.dsn(USER, &proxy.password(USER), None);
    let t = &table;
    let script = format!(
        "insert into {t} (email, ssn, notes) values (E'{m}-e\\x41\\u00e9\\'s@x', $${m}-dollar 'q' \\n$$, $q${m}-tagged $$ q$q$);\n\
         insert into {t} (email, notes) values (U&'{m}-\\00e9\\+01F600', E'{m}\\\\back');\n\
         \\x on\n\
         select email, ssn, notes from {t} order by id;\n\
         \\x off\n\
         select 'found ' || id from {t} where email = E'{m}-e\\x41\\u00e9\\'s@x';\n"
    );
    std::fs::write(proxy.dir().join("enc.sql"), script).unwrap();
    let out = proxy.psql(&dsn, &["-f", "enc.sql"]);
    let stdout = assert_success("psql encryption script", &out);
    let email1 = format!("{m}-eAé's@x");
    let expected = [
        format!("email|{email1}"),
        format!("ssn|{m}-dollar 'q' \\n"),
        format!("notes|{m}-tagged $$ q"),
        format!("email|{m}-é😀"),
        format!("notes|{m}\\back"),
    ];
    for line in &expected {
        assert!(
            stdout.lines().any(|l| l == line),
            "psql output lacks {line:?}:\n{stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("found ")),
        "E'' lookup found nothing:\n{stdout}"
    );
    common::run_async({
        let (t, m, email1) = (t.clone(), m.clone(), email1.clone());
        async move {
            let d = direct_client(REGION).await;
            let rows = d
                .query(
                    &format!("select email, ssn, notes from {t} order by id"),
                    &[],
                )
                .await
                .unwrap();
            let e0: String = rows[0].get(0);
            assert_envelope(
                "E'' literal",
                DET,
                Some(e0.as_bytes()),
                true,
                Some(email1.as_bytes()),
            );
            let e1: String = rows[1].get(0);
            assert_envelope(
                "U&'' literal",
                DET,
                Some(e1.as_bytes()),
                true,
                Some(format!("{m}-é😀").as_bytes()),
            );
            assert_eq!(assert_all_ciphertext(REGION, &t, &m).await, 2);
        }
    });
    let needles = [
        m.as_bytes().to_vec(),
        hex::encode(m.as_bytes()).into_bytes(),
    ];
    assert_dump_clean(REGION, t, &needles);
}

// ---------------------------------------------------------------------------
// 6, 7. psycopg and node-postgres
// ---------------------------------------------------------------------------

/// Runs a client script with (proxy DSN, direct DSN, table, marker), then
/// checks the table and the dump here too.
fn run_client_script(cmd: &mut Command, what: &str, ok_line: &str) {
    let table = unique_name("enc");
    let m = unique_name("pt");
    common::run_async({
        let ddl = table_ddl(&table);
        async move { create_in_regions(&[REGION], &ddl).await }
    });
    let proxy = Proxy::builder()
        .scram()
        .policy_table(&policy(&table))
        .start();
    proxy.require_proxy();
    let dsn = proxy.dsn(USER, &proxy.password(USER), None);
    let direct = common::local_dsn(&region_db(REGION));
    let out = common::run(cmd.arg(&dsn).arg(&direct).arg(&table).arg(&m));
    let stdout = assert_success(what, &out);
    assert!(stdout.contains(ok_line), "{what}: {stdout}");
    let rows = common::run_async({
        let (t, m) = (table.clone(), m.clone());
        async move { assert_all_ciphertext(REGION, &t, &m).await }
    });
    assert!(rows >= 10, "{what} left only {rows} rows");
    assert_dump_clean(
        REGION,
        &table,
        &[
            m.as_bytes().to_vec(),
            hex::encode(m.as_bytes()).into_bytes(),
        ],
    );
}

#[test]
fn psycopg_encryption_script() {
    let python = common::venv_python();
    let script = common::repo_root().join("tests/clients/psycopg_encryption.py");
    run_client_script(
        Command::new(python).arg(script),
        "psycopg_encryption.py",
        "psycopg encryption: ok",
    );
}

#[test]
fn node_pg_encryption_script() {
    let dir = common::node_dir();
    run_client_script(
        Command::new("node").arg("encryption.js").current_dir(dir),
        "node encryption.js",
        "node encryption: ok",
    );
}

// ---------------------------------------------------------------------------
// 8. Two proxies, one DEK
// ---------------------------------------------------------------------------

/// Two proxies on the same regions; brand-new tenants whose first sessions
/// (two per proxy) write at the same moment → exactly one DEK row per tenant,
/// and each proxy reads (and looks up) what the other wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_create_one_dek_per_new_tenant() {
    let tenants: Vec<String> = (0..3).map(|_| unique_name("newt")).collect();
    let mut builder = Proxy::builder();
    for tn in &tenants {
        builder = builder
            .tenant(tn, REGION)
            .user(&format!("{tn}_app"), "pw", &[tn.as_str()]);
    }
    let fx = Fixture::new(builder.clone(), &[REGION], "").await;
    let second = builder.policy_table(&policy(&fx.table)).start();
    let proxies = [&fx.proxy, &second];
    for tn in &tenants {
        let written = first_writes_at_once(proxies, &fx.table, &fx.marker, tn).await;
        let keys = direct_client(REGION)
            .await
            .query(
                "select version, status from byokpg.tenant_keys where tenant = $1",
                &[&tn],
            )
            .await
            .unwrap();
        assert_eq!(
            keys.len(),
            1,
            "tenant {tn}: DEK rows after a simultaneous first use by two proxies"
        );
        assert_eq!(keys[0].get::<_, String>(1), "active");
        for proxy in proxies {
            read_each_others_rows(proxy, &fx.table, tn, &written).await;
        }
    }
    drop(second);
    assert_eq!(
        assert_all_ciphertext(REGION, &fx.table, &fx.marker).await,
        12
    );
    let direct = direct_client(REGION).await;
    for tn in &tenants {
        direct
            .execute("delete from byokpg.tenant_keys where tenant = $1", &[tn])
            .await
            .unwrap();
    }
}

/// The tenant's very first sessions, two on each proxy, connect and write at
/// the same moment; returns (id, email) of the four rows.
async fn first_writes_at_once(
    proxies: [&Proxy; 2],
    table: &str,
    marker: &str,
    tenant: &str,
) -> Vec<(i32, String)> {
    let ins =
        format!("insert into {table} (tenant_id, email, ssn) values ($1, $2, $3) returning id");
    let write = |proxy: &Proxy, k: u32| {
        let dsn = proxy.dsn(&format!("{tenant}_app"), "pw", None);
        let (ins, tenant) = (ins.clone(), tenant.to_string());
        let email = format!("{marker}-{tenant}-{k}@x");
        let ssn = format!("{marker}-ssn-{k}");
        async move {
            let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let row = client.query_one(&ins, &[&tenant, &email, &ssn]).await;
            (row.unwrap().get::<_, i32>(0), email)
        }
    };
    let (w1, w2, w3, w4) = tokio::join!(
        tokio::spawn(write(proxies[0], 1)),
        tokio::spawn(write(proxies[1], 2)),
        tokio::spawn(write(proxies[0], 3)),
        tokio::spawn(write(proxies[1], 4)),
    );
    vec![w1.unwrap(), w2.unwrap(), w3.unwrap(), w4.unwrap()]
}

/// Through `proxy`, every row reads back and is found by a lookup.
async fn read_each_others_rows(proxy: &Proxy, table: &str, tenant: &str, rows: &[(i32, String)]) {
    let client = proxy.connect(&format!("{tenant}_app"), None).await;
    for (id, email) in rows {
        let row = client
            .query_one(&format!("select email from {table} where id = $1"), &[id])
            .await
            .unwrap();
        assert_eq!(
            &row.get::<_, String>(0),
            email,
            "tenant {tenant}: one proxy reads the other's row"
        );
        let found = client
            .query(
                &format!("select id from {table} where email = $1"),
                &[email],
            )
            .await
            .unwrap();
        assert_eq!(
            ids_of(&found),
            BTreeSet::from([*id]),
            "tenant {tenant}: lookup across proxies"
        );
    }
}

// ---------------------------------------------------------------------------
// COPY
// ---------------------------------------------------------------------------

/// psql `\copy` (simple-query COPY) in text and CSV goes in encrypted and
/// comes out decrypted; the database holds only ciphertext; the tenant column
/// is filled; the same through the extended protocol (tokio-postgres).
#[tokio::test]
async fn copy_from_and_to_stdout_in_text_and_csv() {
    let f = Fixture::new(Proxy::builder(), &[REGION], "").await;
    let (t, m) = (&f.table, &f.marker);
    let dir = f.proxy.dir();
    std::fs::write(
        dir.join("rows.txt"),
        format!("{m}-a@example.com\t{m}-tab\\there\t\\\\x0102\n{m}-b@example.com\t\\N\t\\N\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rows.csv"),
        format!("email,ssn\n\"{m}-c@example.com\",\"{m} comma, and \"\"quote\"\"\"\n"),
    )
    .unwrap();
    let dsn = f.proxy.dsn(USER, &f.proxy.password(USER), None);
    let out = f.proxy.psql(
        &dsn,
        &[
            "-c",
            &format!("\\copy {t} (email, ssn, doc) from 'rows.txt'"),
            "-c",
            &format!("\\copy {t} (email, ssn) from 'rows.csv' with (format csv, header)"),
            "-c",
            &format!("copy (select email, ssn, doc from {t} order by id) to stdout"),
        ],
    );
    let text = common::assert_success("psql copy", &out);
    let want = format!(
        "{m}-a@example.com\t{m}-tab\\there\t\\\\x0102\n{m}-b@example.com\t\\N\t\\N\n\
         {m}-c@example.com\t{m} comma, and \"quote\"\t\\N\n"
    );
    assert!(
        text.ends_with(&want),
        "COPY TO STDOUT gave:\n{text}\nwanted:\n{want}"
    );
    assert_eq!(assert_all_ciphertext(REGION, t, m).await, 3);
    let direct = direct_client(REGION).await;
    let tenants: Vec<String> = direct
        .query(&format!("select distinct tenant_id from {t}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, [TENANT], "tenant column filled by COPY");
    assert_dump_clean(REGION, t, &f.needles());
    // tokio-postgres copy_in / copy_out use the extended protocol.
    let c = f.client().await;
    let sink = c
        .copy_in::<_, bytes::Bytes>(&format!("copy {t} (email, ssn) from stdin"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(format!("{m}-d@example.com\t{m}-ext\n")))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    let out = c
        .copy_out(&format!(
            "copy (select email, ssn from {t} where email = '{m}-d@example.com') to stdout"
        ))
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
    assert_eq!(
        chunks.concat(),
        format!("{m}-d@example.com\t{m}-ext\n").into_bytes()
    );
    assert_eq!(assert_all_ciphertext(REGION, t, m).await, 4);
    assert_usable(&c).await;
}

/// Invalid bytea input for an encrypted bytea column is refused (22P02), as
/// PostgreSQL refuses it for a plain one, instead of being encrypted as text.
#[tokio::test]
async fn invalid_bytea_input_is_refused_not_encrypted_as_text() {
    let f = Fixture::new(Proxy::builder(), &[REGION], "").await;
    let t = &f.table;
    let c = f.client().await;
    for sql in [
        format!("insert into {t} (email, doc) values ('x1@example.com', '\\9bad')"),
        format!("insert into {t} (email, doc) values ('x2@example.com', '\\xzz')"),
    ] {
        let e = c.simple_query(&sql).await.unwrap_err();
        assert_eq!(common::sqlstate(&e).as_deref(), Some("22P02"), "{sql}: {e}");
    }
    let n: i64 = direct_client(REGION)
        .await
        .query_one(&format!("select count(*) from {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing was written");
    assert_usable(&c).await;
}
