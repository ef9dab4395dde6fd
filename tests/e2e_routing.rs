//! Tenant → region routing and authentication outcomes, checked from the
//! outside: rows written through the proxy are looked for directly in each
//! region database.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod common;

use common::{Proxy, ProxyBuilder, db_message, expect_sqlstate, free_port, unique_name};

/// Users of the routing tests: one per region, plus one allowed two tenants.
fn routing_proxy() -> ProxyBuilder {
    Proxy::builder()
        .scram()
        .user("us_app", "us-secret", &["globex", "acme"])
        .user("eu_app", "eu-secret", &["acme"])
        .user("apac_app", "apac-secret", &["initech"])
}

#[tokio::test]
async fn each_tenants_rows_land_only_in_its_region() {
    let proxy = routing_proxy().start();
    proxy.require_proxy();
    let t = unique_name("route");
    for region in common::REGIONS {
        let direct = common::direct_client(region).await;
        direct
            .batch_execute(&format!("create table {t} (tenant text, via text)"))
            .await
            .unwrap();
    }
    // (user, tenant option, expected tenant)
    let writers = [
        ("us_app", None, "globex"),
        ("eu_app", None, "acme"),
        ("apac_app", None, "initech"),
        ("us_app", Some("acme"), "acme"),
    ];
    for (user, option, tenant) in writers {
        let client = proxy.connect(user, option).await;
        let n = client
            .execute(
                &format!("insert into {t} values ($1, $2)"),
                &[&tenant, &user],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        let db: String = client
            .query_one("select current_database()::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            db,
            common::region_db(&proxy.region_of(tenant)),
            "{user} as {tenant}"
        );
    }
    let expected = [
        ("us", vec![("globex", "us_app")]),
        ("eu", vec![("acme", "eu_app"), ("acme", "us_app")]),
        ("apac", vec![("initech", "apac_app")]),
    ];
    for (region, want) in expected {
        let direct = common::direct_client(region).await;
        let rows: Vec<(String, String)> = direct
            .query(
                &format!("select tenant, via from {t} order by tenant, via"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect();
        assert_eq!(rows, want, "rows in region {region}");
        direct
            .batch_execute(&format!("drop table {t}"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn tenant_option_selects_the_second_tenant() {
    let proxy = routing_proxy().start();
    proxy.require_proxy();
    let default = proxy.connect("us_app", None).await;
    let second = proxy.connect("us_app", Some("acme")).await;
    let db = |c: tokio_postgres::Client| async move {
        c.query_one("select current_database()::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    assert_eq!(db(default).await, "byokpg_t_us");
    assert_eq!(db(second).await, "byokpg_t_eu");
    let named_first = proxy.connect("us_app", Some("globex")).await;
    assert_eq!(db(named_first).await, "byokpg_t_us");
}

#[tokio::test]
async fn tenant_not_allowed_is_28000() {
    let proxy = routing_proxy().start();
    proxy.require_proxy();
    // Configured, but not one of this user's tenants.
    let e = expect_sqlstate(proxy.try_connect("eu_app", Some("initech")).await, "28000");
    assert!(db_message(&e).starts_with("byokpg:"), "{e:?}");
    // Not configured at all.
    let e = expect_sqlstate(
        proxy.try_connect("eu_app", Some("nosuchtenant")).await,
        "28000",
    );
    assert!(db_message(&e).starts_with("byokpg:"), "{e:?}");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_28p01() {
    let proxy = routing_proxy().start();
    proxy.require_proxy();
    let connect = |user: &str, password: &str| {
        let dsn = proxy.dsn(user, password, None);
        async move {
            tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .map(|(c, _)| c)
        }
    };
    let e = expect_sqlstate(connect("eu_app", "not-the-password").await, "28P01");
    assert!(db_message(&e).starts_with("byokpg:"), "{e:?}");
    let e = expect_sqlstate(connect("nobody_here", "whatever").await, "28P01");
    assert!(db_message(&e).starts_with("byokpg:"), "{e:?}");
    // psql shows the same outcome.
    let out = proxy.psql(&proxy.dsn("eu_app", "wrong", None), &["-c", "select 1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("byokpg:"), "psql stderr: {stderr}");
    // The right password still works afterwards.
    let ok = connect("eu_app", "eu-secret").await;
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[tokio::test]
async fn dead_region_is_08006_and_other_tenants_still_work() {
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/byokpg_t_apac?sslmode=disable",
        free_port()
    );
    let proxy = routing_proxy().region_dsn("apac", &dead).start();
    proxy.require_proxy();
    let e = expect_sqlstate(proxy.try_connect("apac_app", None).await, "08006");
    assert!(db_message(&e).starts_with("byokpg:"), "{e:?}");
    let client = proxy.connect("eu_app", None).await;
    let row = client
        .query_one("select current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "byokpg_t_eu");
    // And again: one failed region does not poison the listener.
    expect_sqlstate(proxy.try_connect("apac_app", None).await, "08006");
    let client = proxy.connect("us_app", None).await;
    client.simple_query("select 1").await.unwrap();
}
