use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::messages::{self, Reader};
use super::scram::{ScramServer, Verifier};
use super::startup::{self, StartupPacket};
use super::*;

fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_i32(i32::try_from(body.len() + 4).unwrap());
    b.put_slice(body);
    b
}

#[test]
fn frames_split_exactly_and_wait_for_more() {
    let mut buf = frame(b'Q', b"select 1\0");
    buf.extend_from_slice(&frame(b'S', b"")[..3]);
    let f = next_frame(&mut buf).unwrap().unwrap();
    assert_eq!(f.tag, b'Q');
    assert_eq!(f.body(), b"select 1\0");
    assert_eq!(next_frame(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), 3);
}

#[test]
fn absurd_and_negative_lengths_are_errors() {
    let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
    assert!(matches!(next_frame(&mut buf), Err(FrameError::TooLarge(_))));
    let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
    assert_eq!(next_frame(&mut buf), Err(FrameError::BadLength(3)));
}

#[test]
fn decoders_reject_short_and_trailing_bytes() {
    assert!(messages::parse_query(b"select 1").is_err());
    assert!(messages::parse_query(b"select 1\0x").is_err());
    assert!(messages::parse_data_row(&[0, 1, 0, 0]).is_err());
    assert!(messages::parse_bind(b"p\0s\0\0\x01").is_err());
    assert!(messages::parse_execute(b"p\0\0\0").is_err());
    assert!(messages::parse_target(b"X\0", "Describe").is_err());
}

#[test]
fn bind_roundtrip() {
    let mut body = Vec::new();
    body.extend_from_slice(b"p1\0s1\0");
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&2i16.to_be_bytes());
    body.extend_from_slice(&3i32.to_be_bytes());
    body.extend_from_slice(b"abc");
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    let b = messages::parse_bind(&body).unwrap();
    assert_eq!(b.portal, b"p1");
    assert_eq!(b.statement, b"s1");
    assert_eq!(b.param_formats, vec![1]);
    assert_eq!(b.params, vec![Some(&b"abc"[..]), None]);
    let head = messages::parse_bind_head(&body).unwrap();
    assert_eq!(head.statement, b"s1");
}

#[test]
fn row_description_fields() {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(b"email\0");
    body.extend_from_slice(&16384i32.to_be_bytes());
    body.extend_from_slice(&2i16.to_be_bytes());
    body.extend_from_slice(&25i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    let f = messages::parse_row_description(&body).unwrap();
    assert_eq!(f[0].name, b"email");
    assert_eq!((f[0].table_oid, f[0].attnum, f[0].type_oid), (16384, 2, 25));
}

#[test]
fn startup_packets() {
    let ssl = startup::encode_ssl_request();
    assert_eq!(
        startup::parse_startup(&ssl).unwrap(),
        StartupPacket::SslRequest
    );
    let cancel = startup::encode_cancel(7, -9);
    assert_eq!(
        startup::parse_startup(&cancel).unwrap(),
        StartupPacket::Cancel { pid: 7, secret: -9 }
    );
    let s = startup::encode_startup(&[("user", "u"), ("database", "d")]);
    assert_eq!(startup::startup_len(&s).unwrap(), Some(s.len()));
    let StartupPacket::Startup(m) = startup::parse_startup(&s).unwrap() else {
        panic!("not a startup message")
    };
    assert_eq!((m.major, m.minor, m.get("user")), (3, 0, Some("u")));
    assert!(startup::startup_len(&[0x7f, 0xff, 0xff, 0xff]).is_err());
    assert!(startup::startup_len(&[0, 0, 0, 2]).is_err());
}

#[test]
fn tenant_option_is_taken_and_the_rest_kept() {
    let (t, rest) = startup::take_tenant_option("-c byokpg.tenant=acme -c work_mem=4MB");
    assert_eq!(t.as_deref(), Some("acme"));
    assert_eq!(rest, "-c work_mem=4MB");
    let (t, rest) = startup::take_tenant_option("--byokpg.tenant=globex -csearch_path=a\\ b");
    assert_eq!(t.as_deref(), Some("globex"));
    assert_eq!(rest, "-csearch_path=a\\ b");
    assert_eq!(startup::take_tenant_option(""), (None, String::new()));
}

#[test]
fn error_response_has_code_and_byokpg_prefix() {
    let e = PgError::region_unreachable("eu", "connection refused").to_bytes();
    let f = next_frame(&mut e.clone()).unwrap().unwrap();
    assert_eq!(f.tag, b'E');
    let (code, msg) = errors::error_summary(f.body());
    assert_eq!(code, "08006");
    assert!(msg.starts_with("byokpg: "));
}

fn scram_login(verifier: &Verifier, password: &[u8]) -> Result<(), scram::ScramError> {
    let mut client = ScramSha256::new(password, ChannelBinding::unsupported());
    let mut server = ScramServer::new(verifier);
    let first = server.client_first(client.message())?;
    client.update(first.as_bytes()).unwrap();
    let fin = server.client_final(client.message())?;
    client.finish(fin.as_bytes()).unwrap();
    Ok(())
}

#[test]
fn scram_interoperates_with_postgres_protocol_client() {
    let v = Verifier::from_password(b"s3cret");
    scram_login(&v, b"s3cret").unwrap();
    assert_eq!(scram_login(&v, b"wrong"), Err(scram::ScramError::BadProof));
    let reparsed = Verifier::parse(&v.to_pg_string()).unwrap();
    scram_login(&reparsed, b"s3cret").unwrap();
    assert!(format!("{v:?}").contains("***"));
}

#[test]
fn scram_verifier_from_postgresql_is_accepted() {
    // Produced by PostgreSQL 15.19 for password 'pencil':
    // `set password_encryption = 'scram-sha-256'; create role x password 'pencil';
    //  select rolpassword from pg_authid where rolname = 'x'`.
    let pg = "SCRAM-SHA-256$4096:5HH688fKTVsJzQFcMkDTDA==$WGmTAygUJ0W1n3zTJi0e8zTw+ufn8sWdXfnH5Or/gag=:Bj8XdkqPljw26u8KYPAz4RsPsVxZkIOvS1E+/pdvXPM=";
    let v = Verifier::parse(pg).unwrap();
    assert_eq!(v.to_pg_string(), pg);
    scram_login(&v, b"pencil").unwrap();
    assert!(scram_login(&v, b"Pencil").is_err());
    assert!(Reader::new(b"", "x").finish().is_ok());
}
