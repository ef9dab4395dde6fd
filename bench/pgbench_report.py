#!/usr/bin/env python3
"""Turn the raw rows written by bench/pgbench-compare into a markdown report.

Usage: pgbench_report.py FACTS_TSV RESULTS_TSV "TARGETS" DURATION ROUNDS

RESULTS_TSV rows: workload, clients, round, target, tps, latency_ms,
transactions, proxy_cpu_seconds, status ("-" where a value is unknown).
Medians are taken over the successful rounds of each cell; a cell with any
failed round is still reported, with the failure count, so nothing is hidden.
"""

import statistics
import sys
from collections import defaultdict

WORKLOAD_TITLES = {
    "select-simple": "`-S -M simple` (select-only)",
    "select-prepared": "`-S -M prepared` (select-only)",
    "tpcb-simple": "`-M simple` (tpcb-like)",
}
PROXIES = ("byokpg", "pgbouncer")
DASH = "—"


def num(text):
    return None if text in ("-", "") else float(text)


def load(path):
    cells = defaultdict(list)  # (workload, clients, target) -> [run dict]
    order = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 9:
                continue
            workload, clients, rnd, target, tps, lat, tx, cpu, status = parts
            key = (workload, int(clients))
            if key not in order:
                order.append(key)
            cells[(workload, int(clients), target)].append(
                {
                    "round": int(rnd),
                    "tps": num(tps),
                    "lat": num(lat),
                    "tx": num(tx),
                    "cpu": num(cpu),
                    "ok": status == "ok",
                }
            )
    return cells, order


def median_of(runs, field):
    values = [r[field] for r in runs if r["ok"] and r[field] is not None]
    return statistics.median(values) if values else None


def cpu_per_1k(runs):
    """Median over rounds of proxy CPU milliseconds per 1,000 transactions."""
    values = [
        r["cpu"] * 1e6 / r["tx"]
        for r in runs
        if r["ok"] and r["cpu"] is not None and r["tx"]
    ]
    return statistics.median(values) if values else None


def fmt(value, digits=0, suffix=""):
    if value is None:
        return DASH
    return f"{value:,.{digits}f}{suffix}"


def ratio(a, b):
    return None if a is None or not b else a / b


def failures(runs):
    bad = sum(1 for r in runs if not r["ok"])
    return f" ({bad} failed)" if bad else ""


def throughput_table(cells, order, targets):
    out = [
        "| workload | clients | direct TPS | byokpg TPS | pgbouncer TPS "
        "| byokpg / direct | byokpg / pgbouncer "
        "| byokpg CPU ms / 1k tx | pgbouncer CPU ms / 1k tx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, clients in order:
        if workload == "latency-c1":
            continue
        tps = {}
        shown = {}
        for t in ("direct",) + PROXIES:
            runs = cells.get((workload, clients, t), [])
            tps[t] = median_of(runs, "tps") if t in targets else None
            shown[t] = fmt(tps[t]) + failures(runs)
        cpu = {t: cpu_per_1k(cells.get((workload, clients, t), [])) for t in PROXIES}
        out.append(
            f"| {WORKLOAD_TITLES.get(workload, workload)} | {clients} "
            f"| {shown['direct']} | {shown['byokpg']} | {shown['pgbouncer']} "
            f"| {fmt(ratio(tps['byokpg'], tps['direct']), 2)} "
            f"| {fmt(ratio(tps['byokpg'], tps['pgbouncer']), 2)} "
            f"| {fmt(cpu['byokpg'], 1)} | {fmt(cpu['pgbouncer'], 1)} |"
        )
    return out


def latency_table(cells, targets):
    direct = median_of(cells.get(("latency-c1", 1, "direct"), []), "lat")
    out = [
        "| target | avg latency (ms) | added vs direct (ms) | TPS | proxy CPU ms / 1k tx |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in ("direct",) + PROXIES:
        if t not in targets:
            continue
        runs = cells.get(("latency-c1", 1, t), [])
        lat = median_of(runs, "lat")
        added = None if t == "direct" or lat is None or direct is None else lat - direct
        added_txt = DASH if added is None else f"{added:+.3f}"
        cpu = fmt(cpu_per_1k(runs), 1) if t != "direct" else DASH
        out.append(
            f"| {t}{failures(runs)} | {fmt(lat, 3)} | {added_txt} "
            f"| {fmt(median_of(runs, 'tps'))} | {cpu} |"
        )
    return out


def rounds_table(cells, order, targets, rounds):
    head = " | ".join(f"round {i}" for i in range(1, rounds + 1))
    out = [
        f"| workload | clients | target | {head} | spread (max−min)/median |",
        "|---|---:|---|" + "---:|" * (rounds + 1),
    ]
    for workload, clients in order:
        for t in ("direct",) + PROXIES:
            if t not in targets:
                continue
            runs = sorted(cells.get((workload, clients, t), []), key=lambda r: r["round"])
            vals = [fmt(r["tps"]) if r["ok"] else "FAIL" for r in runs]
            vals += [DASH] * (rounds - len(vals))
            good = [r["tps"] for r in runs if r["ok"] and r["tps"] is not None]
            spread = (
                f"{(max(good) - min(good)) / statistics.median(good):.1%}"
                if len(good) > 1 and statistics.median(good)
                else DASH
            )
            out.append(f"| {workload} | {clients} | {t} | " + " | ".join(vals) + f" | {spread} |")
    return out


def main(argv):
    if len(argv) != 6:
        sys.exit(__doc__)
    facts_path, results_path, targets_arg, duration, rounds = argv[1:]
    targets = targets_arg.split()
    rounds = int(rounds)
    facts = []
    with open(facts_path, encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.rstrip("\n").partition("\t")
            facts.append((key, value))
    cells, order = load(results_path)
    fact = dict(facts)

    lines = [f"# pgbench-compare — {fact.get('date', '')}", ""]
    lines += [f"Command: `{fact.get('command', '')}`", ""]
    lines += ["| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts if k not in ("date", "command")]
    lines += [
        "",
        f"## Throughput — median TPS of {rounds} interleaved rounds, {duration} s each",
        "",
        "pgbench scale 10, `-j` 2, TCP to 127.0.0.1, `sslmode=disable` everywhere. "
        "CPU = utime+stime of the proxy process over each run (median per-run value).",
        "",
    ]
    lines += throughput_table(cells, order, targets)
    lines += [
        "",
        "## Added latency — `-S -M simple -c 1 -j 1`, median of per-round averages",
        "",
    ]
    lines += latency_table(cells, targets)
    lines += ["", "## Per-round TPS", ""]
    lines += rounds_table(cells, order, targets, rounds)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv)
