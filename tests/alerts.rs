//! The Prometheus alerting rules and the Grafana dashboard in `packaging/prometheus/` (issue 14,
//! item 2): promtool accepts the rules and their unit tests pass; every threshold the rules
//! document is pinned by those tests (moving it makes them fail); every alert is tested firing and
//! not firing; the dashboard is a well-formed Grafana dashboard whose queries parse as PromQL; and
//! every query in both names only metrics the daemon exports. Those names are read at test time
//! from the source that renders them (`src/metrics.rs`, `src/scrub.rs`), not from a running
//! daemon, so renaming a metric there fails this test until the rules and dashboard follow.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RULES: &str = "juju-brd-alerts.yml";
const RULE_TESTS: &str = "juju-brd-alerts.test.yml";
const DASHBOARD: &str = "juju-brd-dashboard.json";

/// Where the rules, their tests and the dashboard live.
fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(name: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&read(&dir().join(name))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(&dir().join(DASHBOARD)))
        .unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn promtool() -> PathBuf {
    common::require_debian("promtool", "prometheus")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_promtool(args: &[&str], cwd: &Path) -> Output {
    Command::new(promtool())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run promtool")
}

// ------------------------------------------------------------------ what the daemon exports

/// The metric families the daemon exports, with their type, read from the source that renders
/// them: every `"juju_brd_..."` string literal in `src/metrics.rs` and `src/scrub.rs`. The type is
/// the first `counter`/`gauge`/`histogram` named after the literal (as `"gauge"` or in
/// `# TYPE {name} histogram`); only histograms matter, for their `_bucket`, `_sum`, `_count`.
fn exported() -> BTreeMap<String, &'static str> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = BTreeMap::new();
    for file in ["src/metrics.rs", "src/scrub.rs"] {
        let src = read(&root.join(file));
        let starts: Vec<usize> = src.match_indices("\"juju_brd_").map(|(i, _)| i).collect();
        for (k, &i) in starts.iter().enumerate() {
            let name: String = src[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !src[i + 1 + name.len()..].starts_with('"') {
                continue; // part of a longer string, not a name
            }
            let until = starts.get(k + 1).copied().unwrap_or(src.len());
            let after = &src[i..until];
            let kind = ["counter", "gauge", "histogram"]
                .into_iter()
                .filter_map(|kind| {
                    [format!("\"{kind}\""), format!("}} {kind}")]
                        .iter()
                        .filter_map(|p| after.find(p.as_str()))
                        .min()
                        .map(|at| (at, kind))
                })
                .min()
                .map_or("untyped", |(_, kind)| kind);
            out.entry(name).or_insert(kind);
        }
    }
    assert!(
        out.len() >= 10 && out.values().any(|k| *k == "histogram"),
        "found too few metric names (or no histogram) in src/metrics.rs and src/scrub.rs: {out:?}"
    );
    out
}

/// Series names a query may select: the families, a histogram's `_bucket`/`_sum`/`_count`, and
/// Prometheus's own `up`.
fn selectable() -> BTreeSet<String> {
    let mut names = BTreeSet::from(["up".to_string()]);
    for (name, kind) in exported() {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name);
        }
    }
    names
}

/// Label names a query may use: the target labels `job` and `instance`, and those the daemon
/// writes (`{{remote=\"...` in the source: `remote`, `listener`, `le`).
fn known_labels() -> BTreeSet<String> {
    let src = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"));
    let mut labels = BTreeSet::from(["job".to_string(), "instance".to_string()]);
    for (i, _) in src.match_indices("{{") {
        let name: String = src[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() && src[i + 2 + name.len()..].starts_with("=\\\"") {
            labels.insert(name);
        }
    }
    assert!(
        labels.contains("remote"),
        "no `remote` label found in src/metrics.rs"
    );
    labels
}

// ------------------------------------------------------------------ a small PromQL scanner

/// Aggregations and functions a query here may call (PromQL's, as of Prometheus 2.42).
const FUNCTIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
];

/// Keywords followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "offset", "bool", "atan2", "inf", "nan",
];

#[derive(Debug, Default)]
struct Names {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// The metric and label names `expr` uses. Strings, range brackets (`[5m]`, `[$__interval]`)
/// and Grafana variables are skipped; an identifier followed by `(` that is no PromQL function is
/// an error, as is an unbalanced bracket or string.
fn scan(expr: &str) -> Result<Names, String> {
    let c: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let ident_at = |j: usize| -> (String, usize) {
        let mut k = j;
        while k < c.len() && is_ident(c[k]) {
            k += 1;
        }
        (c[j..k].iter().collect(), k)
    };
    let string_end = |j: usize| -> Result<usize, String> {
        let q = c[j];
        let mut k = j + 1;
        while k < c.len() && c[k] != q {
            k += if c[k] == '\\' && q != '`' { 2 } else { 1 };
        }
        if k >= c.len() {
            return Err(format!("unterminated string in `{expr}`"));
        }
        Ok(k + 1)
    };
    // A `(label, label)` list at `j` (after a grouping keyword); returns the index after `)`.
    let label_list = |j: usize, labels: &mut BTreeSet<String>| -> Result<usize, String> {
        let mut k = j + 1;
        loop {
            k = skip_ws(k);
            match c.get(k).copied() {
                Some(')') => return Ok(k + 1),
                Some(',') => k += 1,
                Some(ch) if is_ident_start(ch) => {
                    let (name, end) = ident_at(k);
                    labels.insert(name);
                    k = end;
                }
                _ => return Err(format!("bad label list in `{expr}`")),
            }
        }
    };
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '"' || ch == '\'' || ch == '`' {
            i = string_end(i)?;
        } else if ch == '[' {
            let close = c[i..]
                .iter()
                .position(|&x| x == ']')
                .ok_or_else(|| format!("unclosed `[` in `{expr}`"))?;
            i += close + 1;
        } else if ch == '{' {
            // Label matchers: `name op "value"`, comma-separated.
            i += 1;
            loop {
                i = skip_ws(i);
                match c.get(i).copied() {
                    None => return Err(format!("unclosed `{{` in `{expr}`")),
                    Some('}') => {
                        i += 1;
                        break;
                    }
                    Some('"' | '\'' | '`') => i = string_end(i)?,
                    Some(x) if is_ident_start(x) => {
                        let (name, end) = ident_at(i);
                        names.labels.insert(name);
                        i = end;
                    }
                    Some(_) => i += 1,
                }
            }
        } else if ch == '$' {
            // A Grafana variable outside brackets: `$name` or `${name}`.
            i += 1;
            if c.get(i) == Some(&'{') {
                while i < c.len() && c[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() || ch == '.' {
            // A number or a duration (`offset 5m`).
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
        } else if is_ident_start(ch) {
            let (word, end) = ident_at(i);
            i = end;
            let next = skip_ws(i);
            if GROUPING.contains(&word.as_str()) {
                if c.get(next) == Some(&'(') {
                    i = label_list(next, &mut names.labels)?;
                }
            } else if KEYWORDS.contains(&word.as_str()) || FUNCTIONS.contains(&word.as_str()) {
            } else if c.get(next) == Some(&'(') {
                return Err(format!("`{word}` is no PromQL function, in `{expr}`"));
            } else {
                names.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

/// Checks the names in `expr` (from `place`) against what the daemon exports; returns problems.
fn check_names(
    place: &str,
    expr: &str,
    metrics: &BTreeSet<String>,
    labels: &BTreeSet<String>,
) -> Vec<String> {
    let names = match scan(expr) {
        Ok(n) => n,
        Err(e) => return vec![format!("{place}: {e}")],
    };
    let mut problems = Vec::new();
    if names.metrics.is_empty() {
        problems.push(format!("{place}: names no metric: `{expr}`"));
    }
    for m in names.metrics.difference(metrics) {
        problems.push(format!(
            "{place}: `{m}` is not a metric juju-brd exports (src/metrics.rs), in `{expr}`"
        ));
    }
    for l in names.labels.difference(labels) {
        problems.push(format!("{place}: unknown label `{l}` in `{expr}`"));
    }
    problems
}

// ------------------------------------------------------------------ the rules

/// (alert name, rule) for every alerting rule.
fn alerts() -> Vec<(String, serde_yaml_ng::Value)> {
    let rules = yaml(RULES);
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                out.push((name.to_string(), rule.clone()));
            }
        }
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets, and the selectors inside the
/// template variables' `label_values(SELECTOR, label)`, with where each was found.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                let here = m
                    .get("title")
                    .and_then(|t| t.as_str())
                    .map_or(at.to_string(), |t| format!("panel `{t}`"));
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => {
                            out.push((here.clone(), e.clone()))
                        }
                        _ => walk(v, &here, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], "dashboard", &mut out);
    for var in d["templating"]["list"].as_array().expect("templating.list") {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?");
        let q = var["query"]
            .as_str()
            .or_else(|| var["query"]["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name}: no query"));
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(SELECTOR, label): {q}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("variable {name}: {q}"));
        // The label it lists is checked like a grouping label.
        out.push((
            format!("variable `{name}`"),
            format!("max by ({}) ({})", label.trim(), selector.trim()),
        ));
    }
    out
}

#[test]
fn rules_and_dashboard_name_only_exported_metrics() {
    let metrics = selectable();
    let labels = known_labels();
    let mut problems = Vec::new();
    let mut count = 0;
    for (name, rule) in alerts() {
        let expr = rule["expr"].as_str().expect("expr");
        problems.extend(check_names(
            &format!("alert {name}"),
            expr,
            &metrics,
            &labels,
        ));
        count += 1;
    }
    for (place, expr) in dashboard_exprs(&dashboard()) {
        problems.extend(check_names(&place, &expr, &metrics, &labels));
        count += 1;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(count > 20, "only {count} expressions found");
}

/// The scanner itself: it must catch what the test above relies on it to catch.
#[test]
fn the_scanner_finds_metrics_labels_and_typos() {
    let n = scan(
        r#"histogram_quantile(0.95, sum by (job, le) (increase(a_bucket{job="$job", x=~"y"}[$__interval] offset 5m))) / on(instance) group_left b > 2^30 and absent(up{job="juju-brd"})"#,
    )
    .unwrap();
    assert_eq!(
        n.metrics,
        BTreeSet::from(["a_bucket".into(), "b".into(), "up".into()])
    );
    assert_eq!(
        n.labels,
        BTreeSet::from(["instance".into(), "job".into(), "le".into(), "x".into()])
    );
    assert!(scan("rat(x[5m])")
        .unwrap_err()
        .contains("`rat` is no PromQL function"));
    assert!(scan("x{a=\"b}").is_err());
    let (m, l) = (selectable(), known_labels());
    assert!(check_names("t", "juju_brd_backups_total", &m, &l)[0].contains("not a metric"));
    assert!(
        check_names("t", "juju_brd_archives{remot=\"a\"}", &m, &l)[0].contains("unknown label")
    );
    assert!(check_names("t", "juju_brd_archives_bucket", &m, &l)[0].contains("not a metric"));
    assert!(check_names(
        "t",
        "juju_brd_backup_duration_seconds_bucket{le=\"5\"}",
        &m,
        &l
    )
    .is_empty());
}

/// Every alert has `for`, a severity and annotations that say what to do, and the promtool tests
/// have, for each, a case where it fires and one where it must not.
#[test]
fn every_alert_is_complete_and_tested_firing_and_not_firing() {
    let mut problems = Vec::new();
    let names: BTreeSet<String> = alerts().into_iter().map(|(n, _)| n).collect();
    for (name, rule) in alerts() {
        let for_ = rule["for"].as_str().unwrap_or("");
        if for_.is_empty() || for_.starts_with('0') {
            problems.push(format!("{name}: no `for:`"));
        }
        if !matches!(
            rule["labels"]["severity"].as_str(),
            Some("critical" | "warning")
        ) {
            problems.push(format!("{name}: severity must be critical or warning"));
        }
        for a in ["summary", "description"] {
            if rule["annotations"][a]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{name}: no {a} annotation"));
            }
        }
    }
    let tests = yaml(RULE_TESTS);
    assert_eq!(
        tests["rule_files"].as_sequence().map(|s| s.len()),
        Some(1),
        "{RULE_TESTS}: rule_files"
    );
    assert_eq!(tests["rule_files"][0].as_str(), Some(RULES));
    let mut fires: BTreeMap<String, usize> = BTreeMap::new();
    let mut quiet: BTreeMap<String, usize> = BTreeMap::new();
    for group in tests["tests"].as_sequence().expect("tests") {
        for case in group["alert_rule_test"]
            .as_sequence()
            .expect("alert_rule_test")
        {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            if !names.contains(&name) {
                problems.push(format!("{RULE_TESTS}: tests unknown alert {name}"));
            }
            let expected = case["exp_alerts"].as_sequence().map_or(0, |s| s.len());
            let tally = if expected > 0 { &mut fires } else { &mut quiet };
            *tally.entry(name).or_default() += 1;
        }
    }
    for name in &names {
        if !fires.contains_key(name) {
            problems.push(format!("{name}: no test case where it fires"));
        }
        if !quiet.contains_key(name) {
            problems.push(format!("{name}: no test case where it must not fire"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "{} alerts; promtool cases: {} firing, {} not firing",
        names.len(),
        fires.values().sum::<usize>(),
        quiet.values().sum::<usize>()
    );
}

// ------------------------------------------------------------------ promtool

#[test]
#[ignore = "needs promtool: Debian package prometheus"]
fn promtool_accepts_the_rules_and_their_tests_pass() {
    let out = run_promtool(&["check", "rules", RULES], &dir());
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
    let rules = alerts().len();
    assert!(
        text(&out).contains(&format!("SUCCESS: {rules} rules found")),
        "{}",
        text(&out)
    );
    let out = run_promtool(&["test", "rules", RULE_TESTS], &dir());
    assert!(out.status.success(), "promtool test rules: {}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));
}

/// Each documented threshold, moved a little, makes `promtool test rules` fail on the alert it
/// belongs to: the tests pin it from both sides, so a careless edit cannot pass unnoticed.
#[test]
#[ignore = "needs promtool: Debian package prometheus"]
fn every_threshold_is_pinned_by_the_rule_tests() {
    let mutations = [
        (
            "JujuBrdBackupTooOld",
            "[26h]) < time() - 26 * 3600",
            "[26h]) < time() - 27 * 3600",
        ),
        (
            "JujuBrdBackupTooOld",
            "[26h]) < time() - 26 * 3600",
            "[26h]) < time() - 25 * 3600",
        ),
        (
            "JujuBrdRemoteCopyTooOld",
            "< time() - 30 * 3600",
            "< time() - 31 * 3600",
        ),
        (
            "JujuBrdRemoteCopyTooOld",
            "< time() - 30 * 3600",
            "< time() - 29 * 3600",
        ),
        (
            "JujuBrdFreeSpaceLow",
            "< 12 * max_over_time",
            "< 11 * max_over_time",
        ),
        (
            "JujuBrdFreeSpaceLow",
            "< 12 * max_over_time",
            "< 13 * max_over_time",
        ),
        ("JujuBrdFreeSpaceLow", "+ 10 * 2^30", "+ 9 * 2^30"),
        ("JujuBrdFreeSpaceLow", "+ 10 * 2^30", "+ 12 * 2^30"),
        (
            "JujuBrdFreeSpaceCritical",
            "< 6 * max_over_time",
            "< 5 * max_over_time",
        ),
        (
            "JujuBrdFreeSpaceCritical",
            "< 6 * max_over_time",
            "< 7 * max_over_time",
        ),
        ("JujuBrdFreeSpaceCritical", "+ 5 * 2^30", "+ 4 * 2^30"),
        ("JujuBrdFreeSpaceCritical", "+ 5 * 2^30", "+ 6 * 2^30"),
        ("JujuBrdScrubOverdue", "> 8 * 86400", "> 9 * 86400"),
        ("JujuBrdScrubOverdue", "> 8 * 86400", "> 7 * 86400"),
        ("JujuBrdDrillFailing", "> 8 * 24 * 3600", "> 9 * 24 * 3600"),
        ("JujuBrdDrillFailing", "> 8 * 24 * 3600", "> 7 * 24 * 3600"),
    ];
    let rules = read(&dir().join(RULES));
    let tests = read(&dir().join(RULE_TESTS));
    let mut unnoticed = Vec::new();
    for (alert, from, to) in mutations {
        assert_eq!(
            rules.matches(from).count(),
            1,
            "{RULES} must hold `{from}` exactly once (update this test with the rules)"
        );
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(RULES), rules.replacen(from, to, 1)).unwrap();
        std::fs::write(tmp.path().join(RULE_TESTS), &tests).unwrap();
        let out = run_promtool(&["test", "rules", RULE_TESTS], tmp.path());
        let said = text(&out);
        if out.status.success() || !said.contains(&format!("alertname: {alert},")) {
            unnoticed.push(format!("{alert}: `{from}` -> `{to}` passed the tests"));
        }
    }
    assert!(unnoticed.is_empty(), "{}", unnoticed.join("\n"));
}

/// Every dashboard query, with its Grafana variables filled in, is PromQL that Prometheus
/// parses: they go through `promtool check rules` as recording rules.
#[test]
#[ignore = "needs promtool: Debian package prometheus"]
fn dashboard_queries_parse_as_promql() {
    let vars = [
        ("$__rate_interval", "5m"),
        ("$__interval", "1h"),
        ("$__range", "1d"),
        ("$job", "juju-brd"),
        ("$instance", ".*"),
    ];
    let rules: Vec<serde_json::Value> = dashboard_exprs(&dashboard())
        .into_iter()
        .enumerate()
        .map(|(i, (place, expr))| {
            let expr = vars.iter().fold(expr, |e, (v, val)| e.replace(v, val));
            assert!(!expr.contains('$'), "{place}: unknown variable in `{expr}`");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let tmp = tempfile::tempdir().unwrap();
    // JSON is YAML.
    std::fs::write(tmp.path().join("dashboard.yml"), file.to_string()).unwrap();
    let out = run_promtool(&["check", "rules", "dashboard.yml"], tmp.path());
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
}

// ------------------------------------------------------------------ the dashboard

/// The dashboard is one Grafana can import: a uid, a title, a schema version; every panel has a
/// unique id, a type, a place on the 24-column grid that overlaps no other, and (but rows)
/// queries with unique refIds on the `${datasource}` variable, which the templating declares with
/// every other variable the queries use; and it shows what operators look at.
#[test]
fn dashboard_is_a_grafana_dashboard_on_the_daemons_metrics() {
    let d = dashboard();
    let mut problems = Vec::new();
    for key in ["uid", "title"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {key}"));
        }
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push("schemaVersion missing or below 36".into());
    }
    let vars: BTreeMap<&str, &str> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or(""),
                v["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    if vars.get("datasource") != Some(&"datasource") {
        problems.push("no `datasource` variable of type datasource".into());
    }
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
    let panels = d["panels"].as_array().expect("panels");
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        if !p["id"].as_u64().is_some_and(|id| ids.insert(id)) {
            problems.push(format!("panel `{title}`: missing or duplicate id"));
        }
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64());
        match (x, y, w, h) {
            (Some(x), Some(y), Some(w), Some(h)) if w > 0 && h > 0 && x + w <= 24 => {
                for (other, ox, oy, ow, oh) in &boxes {
                    if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                        problems.push(format!("panel `{title}` overlaps `{other}`"));
                    }
                }
                boxes.push((title.clone(), x, y, w, h));
            }
            _ => problems.push(format!("panel `{title}`: bad gridPos {g}")),
        }
        let kind = p["type"].as_str().unwrap_or("");
        if kind == "row" {
            continue;
        }
        if !["stat", "timeseries"].contains(&kind) {
            problems.push(format!("panel `{title}`: unexpected type `{kind}`"));
        }
        let targets = p["targets"].as_array().map_or(&[][..], |t| t.as_slice());
        if targets.is_empty() {
            problems.push(format!("panel `{title}`: no queries"));
        }
        let mut refs = BTreeSet::new();
        for t in targets.iter().chain([p]) {
            if t["datasource"]["uid"] != "${datasource}" || t["datasource"]["type"] != "prometheus"
            {
                problems.push(format!(
                    "panel `{title}`: datasource is not ${{datasource}}"
                ));
            }
        }
        for t in targets {
            if !t["refId"]
                .as_str()
                .is_some_and(|r| refs.insert(r.to_string()))
            {
                problems.push(format!("panel `{title}`: missing or duplicate refId"));
            }
            let expr = t["expr"].as_str().unwrap_or("");
            for (i, _) in expr.match_indices('$') {
                let var: String = expr[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !var.starts_with("__") && !vars.contains_key(var.as_str()) {
                    problems.push(format!("panel `{title}`: undeclared variable ${var}"));
                }
            }
        }
    }
    // What the operator looks at, by the metric behind it.
    let used: BTreeSet<String> = dashboard_exprs(&d)
        .iter()
        .flat_map(|(_, e)| scan(e).map(|n| n.metrics).unwrap_or_default())
        .collect();
    for (what, metric) in [
        (
            "last success age",
            "juju_brd_backup_last_success_timestamp_seconds",
        ),
        ("backup duration", "juju_brd_backup_duration_seconds_bucket"),
        ("archive size", "juju_brd_backup_archive_size_bytes"),
        ("archives count", "juju_brd_archives"),
        ("free space", "juju_brd_free_space_bytes"),
        (
            "remote lag",
            "juju_brd_remote_last_success_timestamp_seconds",
        ),
        (
            "scrub status",
            "juju_brd_scrub_last_success_timestamp_seconds",
        ),
        ("scrub damage", "juju_brd_scrub_failures_total"),
        ("API connections", "juju_brd_api_connections"),
    ] {
        if !used.contains(metric) {
            problems.push(format!("no panel shows {what} ({metric})"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
