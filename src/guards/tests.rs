use super::report::{
    Guard, GuardKind, GuardState, GuardsReport, RegionGuards, RegionReport, TableReport, TableState,
};
use super::sql::{self, Storage};

#[test]
fn short_names_keep_the_column() {
    assert_eq!(sql::constraint_name("email"), "byokpg_ct_email");
    let exact = "c".repeat(63 - sql::CONSTRAINT_PREFIX.len());
    assert_eq!(sql::constraint_name(&exact), format!("byokpg_ct_{exact}"));
}

#[test]
fn long_names_are_cut_and_hashed_within_63_bytes() {
    let a = format!("{}_a", "x".repeat(60));
    let b = format!("{}_b", "x".repeat(60));
    let (na, nb) = (sql::constraint_name(&a), sql::constraint_name(&b));
    assert_eq!(na.len(), 63, "{na}");
    assert_ne!(na, nb, "a common prefix must not collide");
    assert!(na.starts_with("byokpg_ct_xxxx"), "{na}");
    // Multi-byte characters are never split.
    let wide = "é".repeat(40);
    let n = sql::constraint_name(&wide);
    assert!(n.len() <= 63, "{n}");
    assert_eq!(sql::constraint_name(&wide), n, "stable");
}

#[test]
fn identifiers_are_always_quoted() {
    assert_eq!(sql::quote_ident("user"), "\"user\"");
    assert_eq!(sql::quote_ident("My \"Col\""), "\"My \"\"Col\"\"\"");
    assert_eq!(sql::quote_qualified("public", "T"), "\"public\".\"T\"");
}

#[test]
fn conditions_use_the_format_helpers() {
    let text = sql::check_condition("E-mail", Storage::Text);
    assert_eq!(
        text,
        format!(
            "(\"E-mail\" IS NULL OR {})",
            crate::crypto::text_check_sql("(\"E-mail\" COLLATE \"C\")")
        )
    );
    let bytea = sql::check_condition("doc", Storage::Bytea);
    assert!(bytea.contains("octet_length(\"doc\") >= 22"), "{bytea}");
    assert_ne!(sql::fingerprint(&text), sql::fingerprint(&bytea));
    assert_eq!(Storage::of("varchar", -1), Some(Storage::Text));
    assert_eq!(Storage::of("varchar", 14), None);
    assert_eq!(Storage::of("bpchar", -1), None);
    assert_eq!(Storage::of("int4", -1), None);
}

fn guard(state: GuardState) -> Guard {
    Guard {
        kind: GuardKind::Ciphertext {
            column: "email".to_owned(),
        },
        name: "byokpg_ct_email".to_owned(),
        relation: "public.t".to_owned(),
        state,
        relation_sql: String::new(),
        condition: None,
        on_partition: false,
    }
}

fn report(tables: Vec<TableReport>) -> GuardsReport {
    GuardsReport {
        regions: vec![RegionReport {
            region: "us".to_owned(),
            target: "postgres://u:***@h/db".to_owned(),
            outcome: Ok(RegionGuards {
                function: None,
                tables,
            }),
        }],
    }
}

fn table(guards: Vec<Guard>) -> TableReport {
    TableReport {
        table: "public.t".to_owned(),
        state: TableState::Present(guards),
    }
}

#[test]
fn ok_counts_not_valid_as_present_but_says_so() {
    let r = report(vec![table(vec![
        guard(GuardState::InPlace),
        guard(GuardState::NotValid),
    ])]);
    assert!(r.ok());
    let shown = r.to_string();
    assert!(shown.contains("NOT VALID"), "{shown}");
    assert!(
        shown
            .lines()
            .last()
            .unwrap()
            .starts_with("byokpg: every guard"),
        "{shown}"
    );
}

#[test]
fn anything_missing_is_not_ok() {
    for state in [
        GuardState::Missing,
        GuardState::Outdated,
        GuardState::Disabled,
        GuardState::NoColumn,
        GuardState::WrongType("integer".to_owned()),
    ] {
        let r = report(vec![table(vec![
            guard(GuardState::InPlace),
            guard(state.clone()),
        ])]);
        assert!(!r.ok(), "{state:?}");
        assert!(r.to_string().contains("1 of 2 in place"), "{r}");
    }
    let missing = report(vec![TableReport {
        table: "public.t".to_owned(),
        state: TableState::Missing,
    }]);
    assert!(!missing.ok());
    assert!(
        missing
            .to_string()
            .contains("public.t: table does not exist")
    );
    let mut down = report(vec![]);
    down.regions[0].outcome = Err("cannot connect".to_owned());
    assert!(!down.ok());
    assert!(
        down.to_string().contains("1 region(s) unreachable"),
        "{down}"
    );
}
