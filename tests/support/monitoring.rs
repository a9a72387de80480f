//! Reading what monitoring is made of: YAML files (through the venv's PyYAML, as
//! tests/packaging.rs does), Prometheus text expositions, and the metric names and labels a
//! PromQL expression uses.

use jwtguard_demo::repo_root;
use regex_lite::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Every YAML document in `path` (relative to the repository), as JSON.
pub fn yaml_documents(path: &str) -> Vec<Value> {
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .args(["-c", script])
        .arg(repo_root().join(path))
        .output()
        .expect("the venv's python (make deps)");
    assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

/// The series of a Prometheus text exposition: each metric name with the label names seen on
/// any of its samples.
pub fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            labels.extend(label_names(&line[end + 1..]));
        }
    }
    series
}

/// The label names of `a="x",b="y\"z"}…`, up to the closing brace.
fn label_names(mut rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((name, after)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(',').trim().to_string());
        let mut escaped = false;
        let close = after.char_indices().find(|&(_, c)| {
            let end = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            end
        });
        let Some((i, _)) = close else { break };
        rest = &after[i + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

/// What a PromQL expression asks of the data: the jwtguard metrics it names, the labels it
/// matches on each (`name{label=…}`), and the labels it groups by (`by (…)`/`without (…)`), each
/// with the metrics of the aggregation it applies to.
pub struct Query {
    pub metrics: BTreeSet<String>,
    pub matched: Vec<(String, String)>,
    pub grouped: Vec<(String, BTreeSet<String>)>,
}

pub fn query(expr: &str) -> Query {
    let name = Regex::new(r"\bjwtguard_[a-zA-Z0-9_]+").unwrap();
    let selector = Regex::new(r"(jwtguard_[a-zA-Z0-9_]+)\{([^}]*)\}").unwrap();
    let matcher = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*""#).unwrap();
    let grouping = Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)\s*(\()?").unwrap();
    let names = |text: &str| name.find_iter(text).map(|m| m.as_str().to_string()).collect::<BTreeSet<_>>();
    let mut matched = Vec::new();
    for s in selector.captures_iter(expr) {
        for m in matcher.captures_iter(&s[2]) {
            matched.push((s[1].to_string(), m[1].to_string()));
        }
    }
    let mut grouped = Vec::new();
    for g in grouping.captures_iter(expr) {
        // `sum by (l) (…)`: the parenthesised argument; `sum(…) by (l)`: the whole expression.
        let scope = match g.get(2) {
            Some(open) => names(&expr[open.end()..closing(expr, open.end())]),
            None => names(expr),
        };
        for label in g[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
            grouped.push((label.to_string(), scope.clone()));
        }
    }
    Query { metrics: names(expr), matched, grouped }
}

/// Where the parenthesis opened just before `from` closes (the end of `text` if it does not).
fn closing(text: &str, from: usize) -> usize {
    let mut depth = 1;
    for (i, c) in text[from..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 1 => return from + i,
            ')' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}
