//! The library's top-level modules form a graph without cycles: each `crate::X` a module names
//! is an edge, and no module may reach itself. A cycle means something lives in the wrong place
//! (the layering pass of issue 17); this test keeps it from coming back.
//!
//! Run `cargo test --test module_graph -- --nocapture` to print the edges, bottom-up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of a file under `src/` (`src/daemon/http.rs` -> `daemon`), if it is part of
/// the library.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
    let first = parts.next()?;
    if first == "bin" || first == "main.rs" || first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// `crate::NAME` references outside comments.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
        // `use crate::{a, b}` groups.
        if let Some(i) = code.find("crate::{") {
            let group = &code[i + "crate::{".len()..];
            for item in group.split([',', '}']) {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = entry.path().strip_prefix(&src).unwrap();
        let Some(module) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let deps = g.entry(module.clone()).or_default();
        for r in references(&text) {
            if r != module {
                deps.insert(r);
            }
        }
    }
    let known: BTreeSet<String> = g.keys().cloned().collect();
    for deps in g.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    g
}

/// Modules in dependency order (each after everything it uses), or a cycle.
fn order(g: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<String>, Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match state.get(n) {
            Some(2) => return Ok(()),
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(n.to_string());
                return Err(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in &g[n] {
            visit(d, g, state, stack, out)?;
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        out.push(n.to_string());
        Ok(())
    }
    let mut state = BTreeMap::new();
    let mut out = Vec::new();
    for n in g.keys() {
        visit(n, g, &mut state, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

#[test]
fn the_module_graph_has_no_cycles() {
    let g = graph();
    assert!(g.len() > 10, "found only {} modules under src/", g.len());
    match order(&g) {
        Ok(bottom_up) => {
            for m in &bottom_up {
                let deps: Vec<&str> = g[m].iter().map(String::as_str).collect();
                println!("{m:<12} -> {}", deps.join(", "));
            }
        }
        Err(cycle) => panic!("module cycle: {}", cycle.join(" -> ")),
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(order(&g).unwrap_err(), ["a", "b", "a"]);
    assert_eq!(
        references("use crate::{alpha, beta::x};\n// crate::gamma\nlet _ = crate::delta::f();"),
        BTreeSet::from(["alpha".into(), "beta".into(), "delta".into()])
    );
}
