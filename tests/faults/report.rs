//! Per-fault accounting: errors of affected and unaffected workers between
//! two snapshots, and the printed table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::workload::{Worker, Workload, lock};

pub struct Row {
    pub fault: String,
    /// Error class → count, among the clients the fault is aimed at.
    pub affected: BTreeMap<String, usize>,
    /// Error classes seen by everybody else (must stay empty).
    pub unaffected: BTreeMap<String, usize>,
    pub recovery: Option<Duration>,
    pub data: String,
}

/// New errors since `before`, split by `affected(index, worker)`.
pub fn split_errors(
    work: &Workload,
    before: &[usize],
    affected: impl Fn(usize, &Worker) -> bool,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let (mut hit, mut other) = (BTreeMap::new(), BTreeMap::new());
    for (i, w) in work.workers.iter().enumerate() {
        let log = lock(w);
        let side = if affected(i, w) { &mut hit } else { &mut other };
        for (_, class) in log.errors.iter().skip(before.get(i).copied().unwrap_or(0)) {
            *side.entry(class.clone()).or_insert(0) += 1;
        }
    }
    (hit, other)
}

fn classes(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "0".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<34} | {:<28} | {:<10} | {:>9} | data checks",
        "fault", "affected errors", "unaffected", "recovery"
    );
    let _ = writeln!(s, "{}", "-".repeat(120));
    for r in rows {
        let rec = r
            .recovery
            .map_or_else(|| "-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
        let _ = writeln!(
            s,
            "{:<34} | {:<28} | {:<10} | {:>9} | {}",
            r.fault,
            classes(&r.affected),
            classes(&r.unaffected),
            rec,
            r.data
        );
    }
    s
}
