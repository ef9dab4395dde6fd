//! The SQL planner, which every statement naming a protected table goes
//! through: any text gets a plan or a refusal, and a plan's byte ranges
//! (where the session splices ciphertext in) lie inside the text, on
//! character boundaries, in order. A stack overflow here aborts the whole
//! proxy, so libFuzzer reporting one (`-max_len` large enough for deep
//! expressions, e.g. 100000) is a finding too.
#![no_main]

use std::ops::Range;
use std::sync::LazyLock;

use byokpg::config::ColumnMode;
use byokpg::rewrite::plan::{PlanOptions, PolicyTable, PolicyView, plan_with_options};
use libfuzzer_sys::fuzz_target;

static POLICY: LazyLock<PolicyView> = LazyLock::new(|| {
    PolicyView::new(vec![PolicyTable {
        schema: "public".into(),
        table: "customers".into(),
        tenant_column: Some("tenant_id".into()),
        columns: vec![
            ("email".into(), ColumnMode::Deterministic),
            ("ssn".into(), ColumnMode::Randomized),
        ],
        append_only: false,
        all_columns: Some(vec![
            "id".into(),
            "tenant_id".into(),
            "email".into(),
            "ssn".into(),
        ]),
    }])
});

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    for standard_conforming_strings in [true, false] {
        let options = PlanOptions {
            standard_conforming_strings,
        };
        if let Ok(plans) = plan_with_options(sql, &POLICY, options) {
            for p in &plans {
                assert!(sound(sql, &p.range), "statement range {:?}", p.range);
                let mut last = p.range.start;
                for l in &p.literals {
                    assert!(sound(sql, &l.range), "literal range {:?}", l.range);
                    assert!(l.range.start >= last && l.range.end <= p.range.end);
                    last = l.range.end;
                }
                let _ = p.check_tenant_literals("acme", &POLICY);
            }
        }
    }
});

fn sound(sql: &str, r: &Range<usize>) -> bool {
    r.start <= r.end
        && r.end <= sql.len()
        && sql.is_char_boundary(r.start)
        && sql.is_char_boundary(r.end)
}
