//! Criterion microbenchmarks of the encryption hot paths (issue 3):
//! field encrypt / decrypt at 64 B and 1 KiB in both modes, and the
//! rewrite of a typical INSERT (parse + plan + encrypt the literals +
//! splice) — with and without the plan cache a prepared statement hits.
//!
//! Run: `cargo bench --bench crypto` (figures in bench/README.md).
use std::hint::black_box;

use byokpg::crypto::{ColumnId, Dek, FieldCipher, Mode};
use byokpg::rewrite::plan::{self, ColumnMode, ColumnRef, PolicyTable, PolicyView};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn cipher(mode: Mode, column: &str) -> FieldCipher {
    let col = ColumnId {
        tenant: "acme",
        schema: "public",
        table: "customers",
        column,
    };
    FieldCipher::new(&Dek::from_bytes([7; 32]), 1, &col, mode)
}

fn field(c: &mut Criterion) {
    let mut group = c.benchmark_group("field");
    for (mode, name) in [
        (Mode::Randomized, "randomized"),
        (Mode::Deterministic, "deterministic"),
    ] {
        let fc = cipher(mode, "email");
        for size in [64usize, 1024] {
            let pt = vec![0x5a_u8; size];
            let env = fc.encrypt(&pt);
            let text = fc.encrypt_text(&pt);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/encrypt"), size),
                &pt,
                |b, pt| {
                    b.iter(|| fc.encrypt(black_box(pt)));
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/decrypt"), size),
                &env,
                |b, env| {
                    b.iter(|| fc.decrypt(black_box(env)).ok());
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/encrypt+decrypt"), size),
                &pt,
                |b, pt| {
                    b.iter(|| {
                        let e = fc.encrypt(black_box(pt));
                        fc.decrypt(&e).ok()
                    });
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/text-decrypt"), size),
                &text,
                |b, t| {
                    b.iter(|| fc.decrypt_text(black_box(t.as_bytes())).ok());
                },
            );
        }
    }
    group.finish();
}

fn policy() -> PolicyView {
    let cols = [
        ("email".to_owned(), ColumnMode::Deterministic),
        ("ssn".to_owned(), ColumnMode::Randomized),
    ];
    PolicyView::new(vec![PolicyTable {
        schema: "public".into(),
        table: "customers".into(),
        tenant_column: Some("tenant_id".into()),
        columns: cols.into_iter().collect(),
        append_only: false,
        all_columns: Some(
            ["id", "tenant_id", "name", "email", "ssn"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        ),
    }])
}

const INSERT: &str = "INSERT INTO customers (id, name, email, ssn) \
                      VALUES (42, 'Ada Lovelace', 'ada@example.com', '123-45-6789') RETURNING id";

fn rewrite(c: &mut Criterion) {
    let view = policy();
    let email = cipher(Mode::Deterministic, "email");
    let ssn = cipher(Mode::Randomized, "ssn");
    let encrypt = |col: ColumnRef, v: &str| {
        let fc = if col.column == 0 { &email } else { &ssn };
        format!("'{}'", fc.encrypt_text(v.as_bytes()))
    };
    let mut group = c.benchmark_group("rewrite");
    group.bench_function("insert/plan", |b| {
        b.iter(|| plan::plan(black_box(INSERT), &view).ok());
    });
    group.bench_function("insert/plan+encrypt+splice", |b| {
        b.iter(|| {
            let plans = plan::plan(black_box(INSERT), &view).expect("plannable");
            plan::splice_all(&plans, INSERT, |s| encrypt(s.column, &s.value), "acme")
        });
    });
    // A prepared statement or a repeated simple query hits the plan cache:
    // only the encryption and the splice remain.
    let cached = plan::plan(INSERT, &view).expect("plannable");
    group.bench_function("insert/encrypt+splice (cached plan)", |b| {
        b.iter(|| {
            plan::splice_all(
                black_box(&cached),
                INSERT,
                |s| encrypt(s.column, &s.value),
                "acme",
            )
        });
    });
    group.finish();
}

criterion_group!(benches, field, rewrite);
criterion_main!(benches);
