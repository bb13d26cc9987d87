//! The crate's layering: no two top-level modules depend on each other, directly or through
//! others, so the data path reads top-down (accept → TLS → demux → http | rpc → upstream).
//!
//! How it is checked: every `crate::<module>` path in `src/` (outside comments and test
//! modules) is an edge from the file's top-level module to `<module>`; the graph must have
//! no cycle. A new `use` that closes a circle fails here with the cycle spelled out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = graph.entry(top.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for part in line.split("crate::").skip(1) {
                    let name: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// A path from `from` back to `to`, if there is one.
fn path(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_string()]);
    }
    if !seen.insert(from.to_string()) {
        return None;
    }
    for next in graph.get(from).into_iter().flatten() {
        if let Some(mut p) = path(graph, next, to, seen) {
            p.insert(0, from.to_string());
            return Some(p);
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = edges();
    assert!(graph.len() > 10, "scanned too little: {graph:?}");
    for (module, deps) in &graph {
        for dep in deps {
            if let Some(back) = path(&graph, dep, module, &mut BTreeSet::new()) {
                panic!(
                    "module cycle: {module} -> {}\nthe whole graph:\n{}",
                    back.join(" -> "),
                    graph
                        .iter()
                        .map(|(m, d)| format!("  {m} -> {d:?}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
}
