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

/// Panics with the first cycle of `graph`, spelled out, and the whole graph.
fn assert_acyclic(graph: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    for (module, deps) in graph {
        for dep in deps {
            if let Some(back) = path(graph, dep, module, &mut BTreeSet::new()) {
                panic!(
                    "{what} cycle: {module} -> {}\nthe whole graph:\n{}",
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

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = edges();
    assert!(graph.len() > 10, "scanned too little: {graph:?}");
    assert_acyclic(&graph, "module");
}

/// The `http` module's own parts, one level down: `http` (its `mod.rs`) and each child module
/// (`kea`, `kea_flow`, `filter`, `route`, …, a folder counting as one). An edge is a
/// `super::…`, `crate::http::…` or (in `mod.rs`) `<child>::…` path from one to another.
fn http_edges() -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let children: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p
                .file_name()?
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            (name != "mod").then_some(name)
        })
        .collect();
    let target = |name: &str| {
        if children.contains(name) {
            name.to_string()
        } else {
            "http".to_string()
        }
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&dir).unwrap();
            let parts: Vec<String> = rel
                .components()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_string()
                })
                .collect();
            let node = if parts == ["mod"] {
                "http".to_string()
            } else {
                parts[0].clone()
            };
            // How `super::` reads from this file: the http level, or the child itself.
            let depth = parts.len() - usize::from(parts.last().map(String::as_str) == Some("mod"));
            let http_super = match depth {
                1 => "super::",
                _ => "super::super::",
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = graph.entry(node.clone()).or_default();
            let names = |rest: &str| -> Vec<String> {
                let rest = rest.trim_start();
                // `super::{a, b::c}` names a and b; `super::a::{x, y}` names a alone.
                let list = match rest.strip_prefix('{') {
                    Some(inner) => inner.split('}').next().unwrap_or(""),
                    None => rest
                        .split([',', ';', ':', ' ', '(', ')'])
                        .next()
                        .unwrap_or(""),
                };
                list.split(',')
                    .map(|n| {
                        n.trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect::<String>()
                    })
                    .filter(|n| !n.is_empty() && n != "self")
                    .collect()
            };
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                let mut found = Vec::new();
                for part in line.split("crate::http::").skip(1) {
                    found.extend(names(part));
                }
                if node != "http" && depth <= 2 {
                    for part in line.split(http_super).skip(1) {
                        // One `super::` more leaves `http`: not an edge inside it.
                        if !part.starts_with("super::") {
                            found.extend(names(part));
                        }
                    }
                }
                if node == "http" {
                    for child in &children {
                        let pat = format!("{child}::");
                        let mut rest = line;
                        while let Some(at) = rest.find(&pat) {
                            let before = rest[..at].chars().last();
                            if !before
                                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                            {
                                found.push(child.clone());
                            }
                            rest = &rest[at + pat.len()..];
                        }
                    }
                }
                for f in found {
                    let t = target(&f);
                    if t != node {
                        deps.insert(t);
                    }
                }
            }
        }
    }
    graph
}

/// No circle inside `http` either: `mod.rs` (the gateway) uses its parts, and no part reaches
/// back into the gateway or around to itself. (The Kea flow once lived in `impl HttpGateway`
/// beside it, fan-out called back into the flow, and `kea` and `filter` used each other.)
#[test]
fn http_modules_form_no_cycle() {
    let graph = http_edges();
    assert!(
        graph
            .get("http")
            .is_some_and(|d| d.contains("kea_flow") && d.contains("route")),
        "scanned too little: {graph:?}"
    );
    assert_acyclic(&graph, "http module");
}
