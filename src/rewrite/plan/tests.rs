use proptest::prelude::*;

use super::*;

/// customers: tenant column, one deterministic and two randomized columns,
/// column order known. people: column order unknown, no tenant column.
/// app."Audit Log": quoted name in another schema.
fn policy() -> PolicyView {
    use ColumnMode::{Deterministic as D, Randomized as R};
    let cols = |c: &[(&str, ColumnMode)]| c.iter().map(|(n, m)| ((*n).to_owned(), *m)).collect();
    let all = |c: &[&str]| Some(c.iter().map(|s| (*s).to_owned()).collect());
    PolicyView::new(vec![
        PolicyTable {
            schema: "public".into(),
            table: "customers".into(),
            tenant_column: Some("tenant_id".into()),
            columns: cols(&[("email", D), ("ssn", R), ("notes", R)]),
            append_only: false,
            all_columns: all(&["id", "tenant_id", "name", "email", "ssn", "notes"]),
        },
        PolicyTable {
            schema: "public".into(),
            table: "people".into(),
            tenant_column: None,
            columns: cols(&[("email", D), ("phone", D)]),
            append_only: false,
            all_columns: None,
        },
        PolicyTable {
            schema: "app".into(),
            table: "Audit Log".into(),
            tenant_column: None,
            columns: cols(&[("payload", R)]),
            append_only: true,
            all_columns: None,
        },
    ])
}

const EMAIL: ColumnRef = ColumnRef {
    table: 0,
    column: 0,
};
const SSN: ColumnRef = ColumnRef {
    table: 0,
    column: 1,
};
const NOTES: ColumnRef = ColumnRef {
    table: 0,
    column: 2,
};
const P_EMAIL: ColumnRef = ColumnRef {
    table: 1,
    column: 0,
};
const P_PHONE: ColumnRef = ColumnRef {
    table: 1,
    column: 1,
};
const PAYLOAD: ColumnRef = ColumnRef {
    table: 2,
    column: 0,
};

fn plans(sql: &str) -> Vec<StatementPlan> {
    match plan(sql, &policy()) {
        Ok(p) => p,
        Err(r) => panic!("{sql}\n  refused: {}", r.message()),
    }
}

fn one(sql: &str) -> StatementPlan {
    let mut p = plans(sql);
    assert_eq!(p.len(), 1, "{sql}");
    p.remove(0)
}

fn refusal(sql: &str) -> Refusal {
    match plan(sql, &policy()) {
        Ok(p) => panic!("{sql}\n  was not refused: {p:?}"),
        Err(r) => r,
    }
}

/// (raw source text of the literal, decoded value, column).
fn slots<'s>(sql: &'s str, p: &StatementPlan) -> Vec<(&'s str, String, ColumnRef)> {
    p.literals
        .iter()
        .map(|s| (&sql[s.range.clone()], s.value.clone(), s.column))
        .collect()
}

/// (sql, expected literal slots, expected parameters).
type Case = (
    &'static str,
    Vec<(String, String, ColumnRef)>,
    Vec<(usize, ColumnRef)>,
);

fn lit(raw: &str, value: &str, c: ColumnRef) -> (String, String, ColumnRef) {
    (raw.to_owned(), value.to_owned(), c)
}

fn check_slots(sql: &str, expected: &[(String, String, ColumnRef)], params: &[(usize, ColumnRef)]) {
    let p = one(sql);
    let got: Vec<(String, String, ColumnRef)> = slots(sql, &p)
        .into_iter()
        .map(|(r, v, c)| (r.to_owned(), v, c))
        .collect();
    assert_eq!(got, expected, "{sql}");
    assert_eq!(p.params, params, "{sql}");
    assert!(p.touches, "{sql}");
}

#[test]
fn inserts_encrypt_protected_values_only() {
    let cases: Vec<Case> = vec![
        (
            "insert into customers (tenant_id, name, email, ssn) values ('acme', 'Ann', 'a@x', '123')",
            vec![lit("'a@x'", "a@x", EMAIL), lit("'123'", "123", SSN)],
            vec![],
        ),
        (
            "INSERT INTO Customers (Tenant_Id, EMAIL, notes) VALUES ('acme', $1, $2), ('acme', $3, NULL)",
            vec![],
            vec![(1, EMAIL), (2, NOTES), (3, EMAIL)],
        ),
        (
            "insert into public.customers (tenant_id, email, ssn) values ($1, $2::text, 'x'::varchar)",
            vec![lit("'x'", "x", SSN)],
            vec![(2, EMAIL)],
        ),
        (
            "insert into \"customers\" (tenant_id, email, ssn, notes) values ('acme', DEFAULT, -42, E'l1\\nl2')",
            vec![lit("-42", "-42", SSN), lit("E'l1\\nl2'", "l1\nl2", NOTES)],
            vec![],
        ),
        (
            "insert into customers values (1, 'acme', 'Bob', 'b@x', $$it's$$, U&'d\\0061t\\+000061')",
            vec![
                lit("'b@x'", "b@x", EMAIL),
                lit("$$it's$$", "it's", SSN),
                lit("U&'d\\0061t\\+000061'", "data", NOTES),
            ],
            vec![],
        ),
        (
            "insert into customers (tenant_id, email) values ('acme', 'o''brien@x'), ('acme', $tag$x$tag$), ('acme', N'n')",
            vec![
                lit("'o''brien@x'", "o'brien@x", EMAIL),
                lit("$tag$x$tag$", "x", EMAIL),
                lit("N'n'", "n", EMAIL),
            ],
            vec![],
        ),
        (
            "insert into people (email, name) values ('p@x', 'plain')",
            vec![lit("'p@x'", "p@x", P_EMAIL)],
            vec![],
        ),
        (
            "insert into app.\"Audit Log\" (payload, at) values ('evt', now())",
            vec![lit("'evt'", "evt", PAYLOAD)],
            vec![],
        ),
        (
            "with x as (select 1) insert into customers (tenant_id, email) values ('acme', 'w@x')",
            vec![lit("'w@x'", "w@x", EMAIL)],
            vec![],
        ),
    ];
    for (sql, expected, params) in cases {
        check_slots(sql, &expected, &params);
    }
}

#[test]
fn on_conflict_and_returning() {
    check_slots(
        "insert into customers as c (tenant_id, email, ssn) values ('acme', 'a@x', $1) \
         on conflict (email) do update set ssn = excluded.ssn, notes = 'n', email = c.email \
         where c.email = 'a@x' returning id, email, c.ssn as s, *",
        &[
            lit("'a@x'", "a@x", EMAIL),
            lit("'n'", "n", NOTES),
            lit("'a@x'", "a@x", EMAIL),
        ],
        &[(1, SSN)],
    );
    check_slots(
        "insert into customers (tenant_id, email) values ('acme', 'a@x') on conflict do nothing",
        &[lit("'a@x'", "a@x", EMAIL)],
        &[],
    );
    check_slots(
        "insert into customers (tenant_id, email) values ('acme', $1) on conflict on constraint customers_email_key do update set notes = $2",
        &[],
        &[(1, EMAIL), (2, NOTES)],
    );
}

#[test]
fn updates_and_deletes() {
    check_slots(
        "update customers set ssn = '1', notes = NULL, name = 'n', email = DEFAULT where email = 'a@x' returning ssn",
        &[lit("'1'", "1", SSN), lit("'a@x'", "a@x", EMAIL)],
        &[],
    );
    check_slots(
        "UPDATE customers c SET (ssn, name) = ($1, $2) FROM orders o WHERE o.customer_id = c.id AND c.email IN ($3, 'b@x')",
        &[lit("'b@x'", "b@x", EMAIL)],
        &[(1, SSN), (3, EMAIL)],
    );
    check_slots(
        "delete from customers where email <> $1 or ssn is null or notes is not null returning *",
        &[],
        &[(1, EMAIL)],
    );
    check_slots(
        "delete from customers c using orders o where o.cid = c.id and c.email not in ('a', 'b')",
        &[lit("'a'", "a", EMAIL), lit("'b'", "b", EMAIL)],
        &[],
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one table of cases
fn lookups_in_selects() {
    let cases: Vec<Case> = vec![
        (
            "select * from customers where email = 'a@x'",
            vec![lit("'a@x'", "a@x", EMAIL)],
            vec![],
        ),
        (
            "select id from customers where 'a@x' = email and name like 'A%'",
            vec![lit("'a@x'", "a@x", EMAIL)],
            vec![],
        ),
        (
            "select c.email, ssn as s, c.* from customers c where c.email = $1::text",
            vec![],
            vec![(1, EMAIL)],
        ),
        (
            "select * from public.customers where public.customers.email is not distinct from 'z'",
            vec![lit("'z'", "z", EMAIL)],
            vec![],
        ),
        (
            "select * from customers c join people p on p.email = 'p' where c.email in (select email from customers where email = 'q')",
            vec![lit("'p'", "p", P_EMAIL), lit("'q'", "q", EMAIL)],
            vec![],
        ),
        (
            "select a.id from customers a join customers b on a.email = b.email",
            vec![],
            vec![],
        ),
        (
            "select id from customers a join customers b using (email)",
            vec![],
            vec![],
        ),
        (
            "with d as (select email e, ssn from customers) select e, ssn from d where e = 'w'",
            vec![lit("'w'", "w", EMAIL)],
            vec![],
        ),
        (
            "select s.x from (select email as x from customers) s where s.x = 'k' and x <> 'l'",
            vec![lit("'k'", "k", EMAIL), lit("'l'", "l", EMAIL)],
            vec![],
        ),
        (
            "select count(*) from customers group by name having count(*) > 1 order by name",
            vec![],
            vec![],
        ),
        (
            "select * from orders o where exists (select 1 from customers c where c.id = o.cid and c.email = 'e')",
            vec![lit("'e'", "e", EMAIL)],
            vec![],
        ),
        (
            "select case when email = 'c' then 1 else 0 end from customers",
            vec![lit("'c'", "c", EMAIL)],
            vec![],
        ),
        (
            "select count(*) filter (where phone = '1') from people",
            vec![lit("'1'", "1", P_PHONE)],
            vec![],
        ),
        (
            "select * from customers where email = $1 and name = $2 limit $3",
            vec![],
            vec![(1, EMAIL)],
        ),
        (
            "select * from customers where email = NULL or email in (NULL)",
            vec![],
            vec![],
        ),
        (
            "select * from customers where ssn is distinct from null or notes = null",
            vec![],
            vec![],
        ),
        (
            "with d as (delete from customers where email = 'x' returning *) select email from d",
            vec![lit("'x'", "x", EMAIL)],
            vec![],
        ),
        (
            "select id from customers order by name desc, 2 limit 5",
            vec![],
            vec![],
        ),
        (
            "explain select * from customers where email = 'x'",
            vec![lit("'x'", "x", EMAIL)],
            vec![],
        ),
        (
            "update only customers set ssn = 'o'",
            vec![lit("'o'", "o", SSN)],
            vec![],
        ),
        (
            "select * from only customers where email = 'o'",
            vec![lit("'o'", "o", EMAIL)],
            vec![],
        ),
        (
            "select * from customers tablesample system (10) where email = 'a'",
            vec![lit("'a'", "a", EMAIL)],
            vec![],
        ),
        (
            "select email = 'x', (email) from customers",
            vec![lit("'x'", "x", EMAIL)],
            vec![],
        ),
        (
            "select * from customers where not (email = 'x' or email <> $1)",
            vec![lit("'x'", "x", EMAIL)],
            vec![(1, EMAIL)],
        ),
        (
            "select * from (select * from customers) where email = 'x' for update",
            vec![lit("'x'", "x", EMAIL)],
            vec![],
        ),
        (
            "explain (analyze, buffers) select * from customers where email = 'x'",
            vec![lit("'x'", "x", EMAIL)],
            vec![],
        ),
        (
            "select * from customers where email = (select email from customers where id = 1)",
            vec![],
            vec![],
        ),
        (
            "select * from generate_series(1, 3) g, customers c where c.email = 5",
            vec![lit("5", "5", EMAIL)],
            vec![],
        ),
        (
            "select * from customers where email = +1.5",
            vec![lit("+1.5", "1.5", EMAIL)],
            vec![],
        ),
        (
            "declare c cursor for select ssn from customers where email = 'x'",
            vec![lit("'x'", "x", EMAIL)],
            vec![],
        ),
    ];
    for (sql, expected, params) in cases {
        check_slots(sql, &expected, &params);
    }
}

/// (sql, SQLSTATE, words the message must contain).
const REFUSED: &[(&str, &str, &[&str])] = &[
    (
        "select * from customers order by email",
        "0A000",
        &["email", "customers", "ordering"],
    ),
    (
        "select email from customers order by 1",
        "0A000",
        &["email", "ordering"],
    ),
    (
        "select email e from customers order by e",
        "0A000",
        &["email", "ordering"],
    ),
    (
        "select * from customers c order by c.ssn desc",
        "0A000",
        &["ssn", "ordering"],
    ),
    (
        "select name from customers group by email",
        "0A000",
        &["email", "GROUP BY"],
    ),
    (
        "select distinct on (email) id from customers",
        "0A000",
        &["email", "DISTINCT ON"],
    ),
    (
        "select distinct email from customers",
        "0A000",
        &["email", "DISTINCT"],
    ),
    (
        "select * from customers where email like 'a%'",
        "0A000",
        &["email", "pattern"],
    ),
    (
        "select * from customers where email ilike 'a%'",
        "0A000",
        &["pattern"],
    ),
    (
        "select * from customers where email similar to 'a%'",
        "0A000",
        &["pattern"],
    ),
    (
        "select * from customers where email ~ 'a'",
        "0A000",
        &["pattern"],
    ),
    (
        "select * from customers where email > 'a'",
        "0A000",
        &["email", "range"],
    ),
    (
        "select * from customers where email between 'a' and 'b'",
        "0A000",
        &["range"],
    ),
    (
        "select lower(email) from customers",
        "0A000",
        &["email", "functions"],
    ),
    (
        "select email || 'x' from customers",
        "0A000",
        &["functions"],
    ),
    ("select email::text from customers", "0A000", &["functions"]),
    (
        "select count(ssn) from customers",
        "0A000",
        &["ssn", "functions"],
    ),
    (
        "select * from customers where lower(email) = 'a'",
        "0A000",
        &["functions"],
    ),
    (
        "select * from customers where ssn = 'x'",
        "0A000",
        &["ssn", "randomized"],
    ),
    (
        "select * from customers where ssn in ('x')",
        "0A000",
        &["ssn", "randomized"],
    ),
    (
        "select * from customers where email = ssn",
        "0A000",
        &["email", "different keys", "customers.ssn"],
    ),
    (
        "select * from customers c join people p on p.email = c.email",
        "0A000",
        &["different keys"],
    ),
    (
        "select * from customers c join orders o on o.email = c.email",
        "0A000",
        &["unprotected"],
    ),
    (
        "select * from customers where email = lower('X')",
        "0A000",
        &["expression"],
    ),
    (
        "select * from customers where email = any($1)",
        "0A000",
        &["ANY"],
    ),
    (
        "select * from customers a join customers b using (ssn)",
        "0A000",
        &["randomized"],
    ),
    (
        "select * from customers natural join orders",
        "0A000",
        &["NATURAL"],
    ),
    (
        "select email from customers union select email from customers",
        "0A000",
        &["UNION"],
    ),
    (
        "select (select email from customers limit 1)",
        "0A000",
        &["subquery"],
    ),
    (
        "select * from orders where x in (select email from customers)",
        "0A000",
        &["subquery"],
    ),
    (
        "select row_to_json(c) from customers c",
        "0A000",
        &["whole-row"],
    ),
    (
        "select to_jsonb(c.*) from customers c",
        "0A000",
        &["whole-row"],
    ),
    (
        "select * from customers c, people p where email = 'x'",
        "0A000",
        &["ambiguous"],
    ),
    (
        "select * from customers c where exists (select 1 from orders o where email = 'x')",
        "0A000",
        &["email", "qualify"],
    ),
    (
        "insert into customers (tenant_id, email) values ('acme', lower('A'))",
        "0A000",
        &["email", "literals"],
    ),
    (
        "insert into customers (tenant_id, email) values ('acme', 'a' || 'b')",
        "0A000",
        &["email"],
    ),
    (
        "insert into customers (tenant_id, ssn) values ('acme', (select 'x'))",
        "0A000",
        &["ssn"],
    ),
    (
        "insert into customers (tenant_id, email) select 'acme', email from people",
        "0A000",
        &["email", "INSERT ... SELECT"],
    ),
    (
        "insert into customers (name) select name from orders",
        "0A000",
        &["tenant"],
    ),
    (
        "insert into customers default values",
        "0A000",
        &["DEFAULT VALUES"],
    ),
    (
        "insert into people values ('a', 'b')",
        "0A000",
        &["people", "column list"],
    ),
    (
        "insert into orders (note) select ssn from customers",
        "0A000",
        &["ssn", "unprotected"],
    ),
    (
        "insert into customers (tenant_id, ssn) values ('acme', 'x') on conflict (ssn) do nothing",
        "0A000",
        &["ssn", "ON CONFLICT"],
    ),
    (
        "insert into customers (tenant_id, email) values ('acme', 'x') on conflict (email) do update set ssn = excluded.notes",
        "0A000",
        &["ssn"],
    ),
    (
        "insert into customers (tenant_id, email) values ('acme', 'x') returning lower(email)",
        "0A000",
        &["functions"],
    ),
    (
        "update customers set email = lower(email)",
        "0A000",
        &["email"],
    ),
    (
        "update customers set name = email",
        "0A000",
        &["email", "unprotected"],
    ),
    ("update customers set ssn = ssn || 'x'", "0A000", &["ssn"]),
    (
        "with d as (delete from customers where ssn = 'x' returning *) select * from d",
        "0A000",
        &["ssn", "randomized"],
    ),
    (
        "delete from customers where ssn like '1%'",
        "0A000",
        &["pattern"],
    ),
    (
        "select * from customers where email = $1 and name = $1",
        "0A000",
        &["$1"],
    ),
    (
        "select * from customers c join people p on c.email = $1 and p.email = $1",
        "0A000",
        &["$1"],
    ),
    (
        "merge into customers c using orders o on o.id = c.id when matched then delete",
        "0A000",
        &["MERGE", "customers"],
    ),
    (
        "create view v as select * from customers",
        "0A000",
        &["CREATE VIEW", "customers"],
    ),
    (
        "create or replace materialized view v as select 1 from customers",
        "0A000",
        &["CREATE OR REPLACE MATERIALIZED VIEW"],
    ),
    (
        "create table t2 as select email from customers",
        "0A000",
        &["email"],
    ),
    ("select email into t2 from customers", "0A000", &["email"]),
    (
        "prepare s as select * from customers where email = $1",
        "0A000",
        &["PREPARE"],
    ),
    (
        "explain analyze insert into customers (tenant_id, email) values ('acme', 'x')",
        "0A000",
        &["EXPLAIN ANALYZE"],
    ),
    (
        "with a as (insert into customers (email) values ('a') returning id) \
         insert into customers (ssn) values ('b')",
        "0A000",
        &["tenant column"],
    ),
    (
        "alter table customers alter column email type bytea",
        "0A000",
        &["email", "type"],
    ),
    (
        "alter table customers alter column ssn set default 'x'",
        "0A000",
        &["ssn", "default"],
    ),
    (
        "alter table customers rename column email to mail",
        "0A000",
        &["email", "renaming"],
    ),
    (
        "alter table customers rename to clients",
        "0A000",
        &["customers", "renaming"],
    ),
    (
        "select * from customers where email = 'x' % 'y'",
        "0A000",
        &["expression"],
    ),
    (
        "select * from customers where email = 'x' 'y'",
        "0A000",
        &["cannot parse"],
    ),
    (
        "delete from only customers where ssn = 'x'",
        "0A000",
        &["ssn", "randomized"],
    ),
    (
        "select * from only customers order by ssn",
        "0A000",
        &["ssn", "ordering"],
    ),
    (
        "select * from customers where (email, name) = ('a', 'b')",
        "0A000",
        &["email"],
    ),
    ("table customers", "0A000", &["cannot parse"]),
    (
        "create table customers (id int, email text default 'x')",
        "0A000",
        &["email", "default"],
    ),
    (
        "alter table customers add column notes text default 'x'",
        "0A000",
        &["notes", "default"],
    ),
    (
        "create function f() returns int language sql as $$ select count(*) from customers $$",
        "0A000",
        &["CREATE FUNCTION"],
    ),
    (
        "select json_agg(c) from customers c",
        "0A000",
        &["whole-row"],
    ),
    (
        "update customers set notes = $1 where current of cur",
        "0A000",
        &["cannot parse"],
    ),
    (
        "do $$ begin perform * from customers; end $$",
        "0A000",
        &["cannot parse", "customers"],
    ),
    ("select * from U&\"\\0063ustomers\"", "0A000", &["unicode"]),
    (
        "select * from customers where email = U&'x' UESCAPE '!'",
        "0A000",
        &["cannot parse"],
    ),
    ("copy customers from '/tmp/x'", "0A000", &["file"]),
    ("copy customers to program 'cat'", "0A000", &["program"]),
    (
        "copy customers from stdin with (format binary)",
        "0A000",
        &["binary"],
    ),
    ("copy customers from stdin binary", "0A000", &["binary"]),
    ("copy people from stdin", "0A000", &["column list"]),
    (
        "copy (select * from people) to stdout",
        "0A000",
        &["position"],
    ),
    (
        "copy (select email from customers) to '/tmp/x'",
        "0A000",
        &["file"],
    ),
    // Tenant isolation → 42501.
    (
        "insert into customers (tenant_id, email) values (NULL, 'x')",
        "42501",
        &["tenant"],
    ),
    (
        "insert into customers (tenant_id, email) values (DEFAULT, 'x')",
        "42501",
        &["tenant"],
    ),
    (
        "insert into customers (tenant_id, email) values (current_user, 'x')",
        "42501",
        &["tenant"],
    ),
    (
        "update customers set tenant_id = o.t from orders o",
        "42501",
        &["tenant"],
    ),
    ("insert into customers values (1)", "42501", &["tenant"]),
];

#[test]
fn refused_forms_name_table_column_and_reason() {
    for &(sql, code, words) in REFUSED {
        let r = refusal(sql);
        let msg = r.message();
        assert_eq!(r.sqlstate(), code, "{sql}: {msg}");
        assert!(msg.starts_with("byokpg:"), "{msg}");
        for w in words {
            assert!(
                msg.to_lowercase().contains(&w.to_lowercase()),
                "{sql}\n  message lacks {w:?}: {msg}"
            );
        }
        let (Refusal::NotSupported { table, .. }
        | Refusal::Forbidden { table, .. }
        | Refusal::NotReady { table, .. }) = &r;
        assert!(!table.is_empty(), "{sql}: {msg}");
    }
}

#[test]
fn column_refusals_name_the_column() {
    let r = refusal("select * from customers where ssn = 'x'");
    assert_eq!(
        r,
        Refusal::NotSupported {
            table: "public.customers".into(),
            column: Some("ssn".into()),
            reason: refusal::reason::EQ_RANDOMIZED.into(),
        }
    );
    assert!(
        r.message()
            .starts_with("byokpg: encrypted column ssn of protected table public.customers: equality on a randomized column")
    );
    let audit = refusal("select * from app.\"Audit Log\" order by payload");
    assert!(
        audit.message().contains("app.\"Audit Log\""),
        "{}",
        audit.message()
    );
}

#[test]
fn untouched_statements() {
    for sql in [
        "select * from orders where note = 'customers'",
        "select * from other.customers where email like 'x%' order by ssn",
        "with customers as (select 1 as email) select * from customers where email > 0",
        "set search_path = public",
        "begin",
        "commit",
        "truncate customers",
        "drop table customers",
        "create index on customers (email)",
        "alter table customers add column age int",
        "alter table customers alter column email set not null",
        "vacuum customers",
        "show server_version",
        "create table customers_old (email text default 'x')",
        "listen customers",
        "select 'customers' from orders order by 1",
    ] {
        for p in plans(sql) {
            assert!(!p.touches, "{sql}");
            assert!(p.text_unchanged(), "{sql}");
        }
    }
}

#[test]
fn reads_touch_without_encryption() {
    for sql in [
        "select * from customers",
        "select ssn, notes from customers where id = 1 order by id",
        "select c.* from customers c join orders o on o.cid = c.id",
        "copy customers (id, ssn) to stdout",
        "select * from customers where ssn is null",
    ] {
        let p = one(sql);
        assert!(p.touches, "{sql}");
        assert!(p.literals.is_empty() && p.params.is_empty(), "{sql}");
    }
}

#[test]
fn tenant_column_checks_and_fill() {
    let p = one("insert into customers (tenant_id, email) values ('acme', 'a'), ($2, $1)");
    assert_eq!(
        p.tenant_checks,
        vec![
            TenantCheck::Literal {
                table: 0,
                value: "acme".into()
            },
            TenantCheck::Param { table: 0, param: 2 },
        ]
    );
    assert!(p.tenant_fill.is_none());
    let pv = policy();
    assert!(p.check_tenant_literals("acme", &pv).is_ok());
    let other = p.check_tenant_literals("globex", &pv).unwrap_err();
    assert_eq!(other.sqlstate(), "42501");
    assert!(other.message().contains("public.customers"));

    let p = one("update customers set tenant_id = 'acme' where id = 1");
    assert_eq!(
        p.tenant_checks,
        vec![TenantCheck::Literal {
            table: 0,
            value: "acme".into()
        }]
    );
    let p = one(
        "insert into customers (tenant_id, email) values ('acme', 'x') on conflict (email) do update set tenant_id = excluded.tenant_id",
    );
    assert_eq!(p.tenant_checks.len(), 1);
    let p = one("insert into customers values (1, 'acme', 'n')");
    assert_eq!(
        p.tenant_checks,
        vec![TenantCheck::Literal {
            table: 0,
            value: "acme".into()
        }]
    );
}

#[test]
fn tenant_fill_is_spliced_into_every_row() {
    let sql =
        "INSERT INTO customers (email, /* c */ ssn) VALUES ('a', $1), ( 'b' , NULL ) RETURNING id";
    let p = one(sql);
    let fill = p.tenant_fill.clone().expect("fill");
    assert_eq!(fill.column, "tenant_id");
    assert_eq!(fill.rows_at.len(), 2);
    let out = p.splice(sql, |s| format!("'<{}>'", s.value), "ac'me");
    assert_eq!(
        out,
        "INSERT INTO customers (email, /* c */ ssn, tenant_id) VALUES ('<a>', $1, 'ac''me'), ( '<b>' , NULL , 'ac''me') RETURNING id"
    );
    let out = p.splice(sql, |s| format!("'<{}>'", s.value), "a\\b");
    assert!(out.contains(", E'a\\\\b')"), "{out}");
}

#[test]
fn splice_changes_only_literal_bytes() {
    let sql = "/* héllo — ünïcode */ SELECT 'ünï' AS \"naïve\", name -- 'email'\n\
               FROM customers\tWHERE email = E'caf\\u00e9' -- trailing 'x'\n\
               AND name = 'Zoë' /* ' */ OR email IN ('日本', $$ø$$);";
    let p = one(sql);
    let got: Vec<String> = p.literals.iter().map(|s| s.value.clone()).collect();
    assert_eq!(got, vec!["café", "日本", "ø"]);
    let out = p.splice(sql, |s| format!("'C{}'", s.range.start), "acme");
    let mut expected = sql.to_owned();
    for s in p.literals.iter().rev() {
        expected.replace_range(s.range.clone(), &format!("'C{}'", s.range.start));
    }
    assert_eq!(out, expected);
    assert!(out.starts_with("/* héllo — ünïcode */ SELECT 'ünï' AS \"naïve\", name -- 'email'\n"));
    assert!(out.contains("AND name = 'Zoë' /* ' */ OR email IN ("));
    assert!(out.ends_with(");"));
    // Identity replacement reproduces the input.
    let same = p.splice(sql, |s| sql[s.range.clone()].to_owned(), "acme");
    assert_eq!(same, sql);
}

#[test]
fn literal_encodings_are_decoded() {
    let cases = [
        ("'plain'", "plain"),
        ("'it''s'", "it's"),
        ("'back\\slash'", "back\\slash"),
        ("E'tab\\there'", "tab\there"),
        ("e'q\\'uote'", "q'uote"),
        ("E'\\x41\\101\\u00e9\\U0001F600\\\\'", "AAé😀\\"),
        ("E'multi\\nline'''", "multi\nline'"),
        ("$$dollar 'quoted' \\n$$", "dollar 'quoted' \\n"),
        ("$a$ $$ nested $a$", " $$ nested "),
        ("U&'\\0441\\043B\\043E\\043D'", "слон"),
        ("u&'a\\\\b'''", "a\\b'"),
        ("N'national'", "national"),
        ("12.5e3", "12.5e3"),
        ("'日本語'", "日本語"),
        ("''", ""),
    ];
    for (raw, value) in cases {
        let sql = format!("select 1 from customers where email = {raw}");
        let p = one(&sql);
        assert_eq!(
            slots(&sql, &p),
            vec![(raw, value.to_owned(), EMAIL)],
            "{sql}"
        );
    }
}

#[test]
fn undecodable_literals_are_refused() {
    for sql in [
        "insert into customers (tenant_id, email) values ('acme', E'\\xC3\\xA9')",
        "insert into customers (tenant_id, email) values ('acme', E'\\uD83D\\uDE00')",
        "insert into customers (tenant_id, email) values ('acme', 'unterminated)",
    ] {
        let r = refusal(sql);
        assert_eq!(r.sqlstate(), "0A000", "{sql}");
    }
}

#[test]
fn multi_statement_strings() {
    let sql = "insert into customers (tenant_id, email) values ('acme', 'a'); select 1; \
               update customers set ssn = 'b' where email = 'c';";
    let p = plans(sql);
    assert_eq!(p.len(), 3);
    assert!(p[0].touches && !p[1].touches && p[2].touches);
    assert_eq!(&sql[p[1].range.clone()], "select 1");
    let out = splice_all(&p, sql, |s| format!("'[{}]'", s.value), "acme");
    assert_eq!(
        out,
        "insert into customers (tenant_id, email) values ('acme', '[a]'); select 1; \
         update customers set ssn = '[b]' where email = '[c]';"
    );
    // Any refused statement refuses the whole string.
    let r = refusal(
        "select 1; select * from customers order by email; insert into customers (tenant_id) values ('acme')",
    );
    assert!(r.message().contains("ordering"));
    let r =
        refusal("select * from customers where email = 'a'; VACUUM ANALYZE customers; select $$");
    assert_eq!(r.sqlstate(), "0A000");
    // An unparseable statement not naming a protected table passes.
    assert_eq!(
        plans("vacuum analyze orders; select * from customers where email = 'a'").len(),
        2
    );
    // Empty statements and comments only.
    assert_eq!(plans(" ; -- nothing\n; select 1").len(), 1);
}

#[test]
fn standard_conforming_strings_off() {
    let pv = policy();
    let off = PlanOptions {
        standard_conforming_strings: false,
    };
    let sql = "select * from customers where email = 'a\\' or email = ''";
    assert!(plan_with_options(sql, &pv, off).is_err());
    assert!(plan_with_options("select * from customers where email = 'a'", &pv, off).is_ok());
    assert!(plan_with_options("select * from customers where email = E'a\\n'", &pv, off).is_ok());
}

#[test]
fn parameters_must_have_one_encrypted_use() {
    assert_eq!(
        one("update customers set email = $1 where email = $1").params,
        vec![(1, EMAIL)]
    );
    let r = refusal("select * from customers c join people p on c.email = $1 where p.email = $1");
    assert!(
        r.message().contains("two encrypted columns"),
        "{}",
        r.message()
    );
    let r = refusal("insert into customers (tenant_id, email) values ($1, $1)");
    assert!(r.message().contains("$1"), "{}", r.message());
}

#[test]
fn copy_plans() {
    let p = one(
        "copy customers (id, email, tenant_id, ssn) from stdin with (format csv, header true, delimiter ';', force_null (ssn))",
    );
    let c = p.copy.expect("copy plan");
    assert_eq!(c.direction, CopyDirection::FromStdin);
    assert_eq!(c.columns, vec![None, Some(EMAIL), None, Some(SSN)]);
    assert_eq!(
        c.format,
        CopyFormat::Csv {
            delimiter: ';',
            quote: '"',
            escape: '"',
            null: String::new(),
            header: true
        }
    );
    assert_eq!(c.force_null, vec![3]);
    assert_eq!(
        c.tenant,
        Some(CopyTenant {
            index: 2,
            fill: false
        })
    );
    assert!(p.tenant_fill.is_none());

    let sql = "COPY customers (email, notes) FROM STDIN";
    let p = one(sql);
    let c = p.copy.clone().expect("copy plan");
    assert_eq!(c.columns, vec![Some(EMAIL), Some(NOTES), None]);
    assert_eq!(
        c.tenant,
        Some(CopyTenant {
            index: 2,
            fill: true
        })
    );
    assert_eq!(
        c.format,
        CopyFormat::Text {
            delimiter: '\t',
            null: "\\N".into(),
            header: false
        }
    );
    assert_eq!(
        p.splice(sql, |_| unreachable!(), "acme"),
        "COPY customers (email, notes, tenant_id) FROM STDIN"
    );

    let c = one("copy customers to stdout with csv header")
        .copy
        .expect("copy plan");
    assert_eq!(c.direction, CopyDirection::ToStdout);
    assert_eq!(
        c.columns,
        vec![None, None, None, Some(EMAIL), Some(SSN), Some(NOTES)]
    );
    assert_eq!(c.tenant, None);

    let c = one("copy (select id, ssn from customers where email = 'x') to stdout")
        .copy
        .expect("copy");
    assert_eq!((c.table, c.columns), (None, vec![None, Some(SSN)]));
    assert!(one("copy (select 1) to stdout").copy.is_none());
    assert!(one("copy orders from stdin").copy.is_none());
}

#[test]
fn alias_and_scope_resolution() {
    // Quoted identifiers keep their case: "EMAIL" is not the column email.
    let p = one("select \"EMAIL\" from customers order by \"EMAIL\"");
    assert!(p.literals.is_empty());
    // Schema-qualified column references.
    check_slots(
        "select * from customers where public.customers.email = 'a'",
        &[lit("'a'", "a", EMAIL)],
        &[],
    );
    // Correlated subquery referencing the outer protected table explicitly.
    check_slots(
        "select * from customers c where exists (select 1 from orders o where o.e = 'z' and c.email = 'y')",
        &[lit("'y'", "y", EMAIL)],
        &[],
    );
    // Derived table column aliases rename positionally (known columns).
    let r = refusal("select * from (select id, email from customers) s(a, b) order by b");
    assert!(r.message().contains("email"), "{}", r.message());
    // Unknown column order: an alias list cannot be mapped.
    let r = refusal("select * from people p(a, b)");
    assert!(r.message().contains("position"), "{}", r.message());
    // LATERAL sees the outer relation.
    let r = refusal("select * from customers c, lateral (select c.ssn || 'x' as v) l");
    assert!(r.message().contains("ssn"), "{}", r.message());
}

#[test]
fn crlf_tabs_and_orm_style_names() {
    // Prisma / ORM style: fully qualified, quoted names.
    check_slots(
        "SELECT \"public\".\"customers\".\"id\" FROM \"public\".\"customers\"\r\n\tWHERE \"public\".\"customers\".\"email\" = $1 LIMIT $2 OFFSET $3",
        &[],
        &[(1, EMAIL)],
    );
    let sql = "insert into customers (tenant_id,\r\n\temail) values\r\n\t('acme',\t'π\r\nx')\r\n";
    let p = one(sql);
    assert_eq!(
        slots(sql, &p),
        vec![("'π\r\nx'", "π\r\nx".to_owned(), EMAIL)]
    );
    // COPY (query): a * over unprotected tables after the protected fields.
    let c =
        one("copy (select c.ssn, o.* from customers c join orders o on o.cid = c.id) to stdout")
            .copy
            .expect("copy");
    assert_eq!(c.columns, vec![Some(SSN)]);
    assert!(
        refusal(
            "copy (select o.*, c.ssn from customers c join orders o on o.cid = c.id) to stdout"
        )
        .message()
        .contains("position")
    );
}

#[test]
fn debug_output_hides_plaintext() {
    let p = one("insert into customers (tenant_id, ssn) values ('acme', 'secret-123')");
    let dbg = format!("{p:?}");
    assert!(!dbg.contains("secret-123"), "{dbg}");
}

proptest! {
    /// For generated INSERTs the plan covers exactly the protected values:
    /// every literal written to a protected column is a slot with that
    /// column, no other literal is, and parameters likewise.
    #[test]
    fn insert_plans_cover_exactly_the_protected_values(
        cols in proptest::sample::subsequence(vec!["id", "name", "email", "ssn", "notes"], 1..=5),
        rows in proptest::collection::vec(proptest::collection::vec((0u8..4, "[a-zA-Z0-9 ']{0,8}"), 5), 1..4),
    ) {
        let mut sql = format!("insert into customers (tenant_id, {}) values ", cols.join(", "));
        let mut expected_lits = Vec::new();
        let mut expected_params = Vec::new();
        let mut n = 0;
        for (r, row) in rows.iter().enumerate() {
            if r > 0 { sql.push_str(", "); }
            sql.push_str("('acme'");
            for (col, (kind, text)) in cols.iter().zip(row) {
                let protected = match *col {
                    "email" => Some(EMAIL),
                    "ssn" => Some(SSN),
                    "notes" => Some(NOTES),
                    _ => None,
                };
                sql.push_str(", ");
                match kind {
                    0 => {
                        let quoted = format!("'{}'", text.replace('\'', "''"));
                        if let Some(c) = protected { expected_lits.push((quoted.clone(), text.clone(), c)); }
                        sql.push_str(&quoted);
                    }
                    1 => {
                        n += 1;
                        if let Some(c) = protected { expected_params.push((n, c)); }
                        sql.push('$');
                        sql.push_str(&n.to_string());
                    }
                    2 => {
                        let dollar = format!("$q${text}$q$");
                        if let Some(c) = protected { expected_lits.push((dollar.clone(), text.clone(), c)); }
                        sql.push_str(&dollar);
                    }
                    _ => sql.push_str("NULL"),
                }
            }
            sql.push(')');
        }
        let p = one(&sql);
        let got: Vec<(String, String, ColumnRef)> =
            slots(&sql, &p).into_iter().map(|(r, v, c)| (r.to_owned(), v, c)).collect();
        prop_assert_eq!(got, expected_lits);
        prop_assert_eq!(p.params, expected_params);
        prop_assert_eq!(p.tenant_checks.len(), rows.len());
    }
}
