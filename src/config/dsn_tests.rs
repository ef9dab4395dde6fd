//! DSN parsing: both libpq forms, decoding, refusals, redaction.
use std::path::PathBuf;

use super::{Dsn, SslMode};

fn ok(s: &str) -> Dsn {
    Dsn::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn err(s: &str) -> String {
    Dsn::parse(s).expect_err(s).to_string()
}

#[test]
fn url_form_full() {
    let d = ok(
        "postgres://byokpg:p%40ss%2Fw%3Ard@db-us.internal:6543/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=byokpg%20us",
    );
    assert_eq!(d.host, "db-us.internal");
    assert_eq!(d.port, 6543);
    assert_eq!(d.user, "byokpg");
    assert_eq!(d.password.as_ref().unwrap().expose(), "p@ss/w:rd");
    assert_eq!(d.dbname.as_deref(), Some("app"));
    assert_eq!(d.sslmode, SslMode::VerifyFull);
    assert_eq!(d.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(d.application_name.as_deref(), Some("byokpg us"));
}

#[test]
fn url_form_defaults_and_variants() {
    let d = ok("postgresql://app@localhost");
    assert_eq!((d.host.as_str(), d.port), ("localhost", 5432));
    assert!(d.password.is_none());
    assert!(d.dbname.is_none());
    assert_eq!(d.sslmode, SslMode::Prefer);
    let d = ok("POSTGRES://app@[::1]:5433/db");
    assert_eq!((d.host.as_str(), d.port), ("::1", 5433));
    let d = ok("postgres://app@h/?sslmode=disable");
    assert!(d.dbname.is_none());
    assert_eq!(d.sslmode, SslMode::Disable);
    // An unencoded '@' or '?' in the password still splits right (libpq does too).
    let d = ok("postgres://app:a@b?c@h:1/db");
    assert_eq!(d.password.as_ref().unwrap().expose(), "a@b?c");
    assert_eq!(d.host, "h");
    // '+' is not a space in libpq URLs.
    assert_eq!(ok("postgres://u:a+b@h").password.unwrap().expose(), "a+b");
    // Connection keywords are accepted as query parameters too.
    let d = ok("postgres://h?user=u&password=pw&dbname=d&port=7");
    assert_eq!((d.user.as_str(), d.port), ("u", 7));
    assert_eq!(d.password.unwrap().expose(), "pw");
    for (m, want) in [
        ("allow", SslMode::Allow),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
    ] {
        assert_eq!(ok(&format!("postgres://u@h?sslmode={m}")).sslmode, want);
    }
}

#[test]
fn keyword_form() {
    let d = ok(
        "host=db port = 5433 user=app password='a b\\'c' dbname=app sslmode=require application_name=a\\ b",
    );
    assert_eq!(
        (d.host.as_str(), d.port, d.user.as_str()),
        ("db", 5433, "app")
    );
    assert_eq!(d.password.unwrap().expose(), "a b'c");
    assert_eq!(d.sslmode, SslMode::Require);
    assert_eq!(d.application_name.as_deref(), Some("a b"));
    assert_eq!(d.dbname.as_deref(), Some("app"));
    assert_eq!(
        ok("host=h user=u password=''").password.unwrap().expose(),
        ""
    );
}

#[test]
fn refusals() {
    assert!(
        err("postgres://u@h?connect_timeout=3").contains("unknown parameter `connect_timeout`")
    );
    assert!(err("host=h user=u sslcert=x").contains("unknown parameter `sslcert`"));
    assert!(err("postgres://u@h?sslmode=bogus").contains("sslmode must be one of"));
    assert!(err("postgres://u@h:99999").contains("port"));
    assert!(err("postgres://u@h:0").contains("port"));
    assert!(err("postgres://u@/db").contains("no host"));
    assert!(err("postgres://h1/db").contains("no user"));
    assert!(err("postgres://u@h1,h2/db").contains("several hosts"));
    assert!(err("host=/var/run/postgresql user=u").contains("Unix-domain"));
    assert!(err("mysql://u@h").contains("postgres://"));
    assert!(err("postgres://u@h?sslmode").contains("no '='"));
    assert!(err("postgres://u:%zz@h").contains("percent-encoding"));
    assert!(err("host=h user=u password='open").contains("closing single quote"));
    assert!(err("just words").contains("key=value"));
    assert!(err("postgres://u@[::1/db").contains("']'"));
}

#[test]
fn errors_never_echo_the_password() {
    // An unencoded '/' in the password makes the host/port/path wrong; the
    // message must not show any of those pieces.
    for dsn in [
        "postgres://app:Sup3r/S3cret@h:5432/db",
        "postgres://app:Sup3r:S3cret:x@h:zz/db",
        "host=h user=u password=Sup3r S3cret=x",
        "host=h user=u password=Sup3rS3cret port=Sup3rS3cret",
    ] {
        let e = err(dsn);
        assert!(
            !e.contains("Sup3r") && !e.contains("S3cret"),
            "{dsn} -> {e}"
        );
    }
}

#[test]
fn redaction() {
    let d = ok("postgres://byokpg:hunter2@db:5432/app?sslmode=require");
    assert_eq!(
        d.redacted(),
        "postgres://byokpg:***@db:5432/app?sslmode=require"
    );
    let dbg = format!("{d:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("Secret(***)"), "{dbg}");
    let d = ok("host=::1 user=u");
    assert_eq!(d.redacted(), "postgres://u@[::1]:5432?sslmode=prefer");
}

#[test]
fn pg_config_carries_everything_but_tls() {
    let d = ok("postgres://u:pw@h:7/db?application_name=x");
    let c = d.pg_config();
    assert_eq!(c.get_user(), Some("u"));
    assert_eq!(c.get_password(), Some(&b"pw"[..]));
    assert_eq!(c.get_dbname(), Some("db"));
    assert_eq!(c.get_ports(), [7]);
    assert_eq!(c.get_application_name(), Some("x"));
}
