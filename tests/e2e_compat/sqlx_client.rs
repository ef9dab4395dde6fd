//! The sqlx row of the matrix: sqlx 0.8 (`runtime-tokio` + `postgres`, no
//! TLS, no macros). sqlx prepares every `query()` as a named statement and
//! caches it (`persistent(false)` uses the unnamed statement), binds in
//! binary, and sends `raw_sql` over the simple protocol.

use sqlx::{Connection as _, PgConnection, Row as _};

/// Rows `round_trips` leaves in the table.
pub const ROWS: usize = 8;

fn plain(m: &str, i: usize) -> (String, String, Option<String>, String) {
    (
        format!("{m}-x{i}@example.com"),
        format!("{m}-ssn-x-{i}"),
        (!i.is_multiple_of(3)).then(|| format!("{m} note {i} ünïcødé")),
        format!("plain-x-{i}"),
    )
}

type Stored = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn select_by_id(conn: &mut PgConnection, t: &str, id: i32) -> Stored {
    let sql = format!("select email, ssn, notes, plain from {t} where id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .expect("sqlx select by id");
    (
        row.get("email"),
        row.get("ssn"),
        row.get("notes"),
        row.get("plain"),
    )
}

/// Insert (prepared and unnamed), select decrypted, deterministic lookup,
/// update, and a simple-protocol read, all checked against the plaintext.
pub async fn round_trips(dsn: &str, t: &str, m: &str) {
    let mut conn = PgConnection::connect(dsn).await.expect("sqlx connect");
    let insert =
        format!("insert into {t} (email, ssn, notes, plain) values ($1, $2, $3, $4) returning id");
    let mut ids = Vec::new();
    for i in 0..ROWS {
        let (email, ssn, notes, pl) = plain(m, i);
        let id: i32 = sqlx::query_scalar(&insert)
            .bind(email)
            .bind(ssn)
            .bind(notes)
            .bind(pl)
            .persistent(!i.is_multiple_of(4))
            .fetch_one(&mut conn)
            .await
            .expect("sqlx insert");
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate() {
        let (email, ssn, notes, pl) = plain(m, i);
        assert_eq!(
            select_by_id(&mut conn, t, *id).await,
            (Some(email), Some(ssn), notes, Some(pl)),
            "sqlx: row {i} read back"
        );
    }
    let lookup = format!("select id from {t} where email = $1");
    for (i, id) in ids.iter().enumerate() {
        let found: Vec<i32> = sqlx::query_scalar(&lookup)
            .bind(plain(m, i).0)
            .fetch_all(&mut conn)
            .await
            .expect("sqlx lookup");
        assert_eq!(found, [*id], "sqlx: lookup of row {i} by email");
    }
    let new_ssn = format!("{m}-ssn-x-updated");
    let done = sqlx::query(&format!(
        "update {t} set ssn = $1, notes = null where email = $2"
    ))
    .bind(&new_ssn)
    .bind(plain(m, 2).0)
    .execute(&mut conn)
    .await
    .expect("sqlx update");
    assert_eq!(done.rows_affected(), 1);
    let (email, _, _, pl) = plain(m, 2);
    assert_eq!(
        select_by_id(&mut conn, t, ids[2]).await,
        (Some(email.clone()), Some(new_ssn.clone()), None, Some(pl)),
        "sqlx: row after update"
    );
    // Simple protocol: a literal lookup, text-format results.
    let rows = sqlx::raw_sql(&format!("select ssn from {t} where email = '{email}'"))
        .fetch_all(&mut conn)
        .await
        .expect("sqlx raw_sql");
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, [new_ssn], "sqlx: raw_sql lookup");
    conn.close().await.expect("sqlx close");
}
