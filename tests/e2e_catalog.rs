//! Catalog resolution against the real PostgreSQL: RowDescription origins of
//! tables, views, nested views and materialized views map to the protected
//! base columns.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use byokpg::catalog;
use common::{direct_client, ensure_databases, unique_name};

#[tokio::test]
async fn tables_and_views_over_them_map_to_protected_columns() {
    ensure_databases(&[]);
    let client = direct_client("us").await;
    let t = unique_name("cat_t");
    let (v1, v2, mv) = (format!("{t}_v1"), format!("{t}_v2"), format!("{t}_mv"));
    client
        .batch_execute(&format!(
            "create table {t} (id int, email text, ssn bytea, plain text);
             create view {v1} as select id, plain, email as contact from {t};
             create view {v2} as select contact, id from {v1};
             create materialized view {mv} as select ssn from {t};"
        ))
        .await
        .unwrap();
    let toml = format!(
        "[[users]]\nname = \"u\"\ntenants = [\"a\"]\n[server]\nauth = \"trust\"\n\
         [regions.us]\ndsn = \"postgres://postgres@127.0.0.1:5432/x\"\n\
         [kms.dev]\nprovider = \"local\"\nallow_insecure_local = true\nkey_file = \"k\"\n\
         [tenants.a]\nregion = \"us\"\nkms = \"dev\"\nkey = \"a\"\n\
         [[table]]\nname = \"{t}\"\n[table.columns]\nemail = \"deterministic\"\nssn = \"randomized\"\n"
    );
    let cfg = byokpg::config::parse_str(&toml, Path::new("t.toml")).unwrap();
    let cat = catalog::load(&client, &cfg.tables).await.unwrap();

    let oid = |name: &str| {
        cat.relations
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.oid)
            .unwrap()
    };
    let col = |o: u32, a: i16| cat.by_attr.get(o, a).map(|i| cat.columns[i].column.clone());
    assert_eq!(col(oid(&t), 2).as_deref(), Some("email"));
    assert_eq!(col(oid(&t), 3).as_deref(), Some("ssn"));
    assert!(cat.columns.iter().any(|c| c.column == "ssn" && c.is_bytea));
    assert_eq!(col(oid(&t), 4), None, "plain column is not protected");
    assert_eq!(
        col(oid(&v1), 3).as_deref(),
        Some("email"),
        "aliased view column"
    );
    assert_eq!(col(oid(&v1), 2), None);
    assert_eq!(col(oid(&v2), 1).as_deref(), Some("email"), "nested view");
    assert_eq!(
        col(oid(&mv), 1).as_deref(),
        Some("ssn"),
        "materialized view"
    );
    assert_eq!(cat.views().count(), 3);
    assert!(cat.knows(oid(&v2)));

    // What the read path relies on: a query on the view reports the view.
    let stmt = client
        .prepare(&format!("select contact from {v2}"))
        .await
        .unwrap();
    assert_eq!(stmt.columns()[0].table_oid(), Some(oid(&v2)));
}
