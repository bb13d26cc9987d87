//! The crate's layering: no two top-level modules depend on each other, directly or through
//! others, so the data path reads top-down (accept → TLS → demux → http | rpc → upstream).
//!
//! How it is checked, twice: every `crate::<module>` path in `src/` (outside comments and test
//! modules) is an edge between top-level modules, and that graph must have no cycle; then
//! every module at every depth, with `super::`, `self::` and child paths resolved, must form
//! no cycle either. A new `use` that closes a circle fails here with the cycle spelled out.

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
            let code = without_test_modules(&std::fs::read_to_string(&path).unwrap());
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

/// Every module at every depth (`http`, `http::kea`, `http::kea::dispatch`, …; a file is a
/// module, `mod.rs` its folder's) and the modules it uses: `crate::…`, `super::…` (chains
/// included), `self::…` and, in a parent, `<child>::…` paths, `{…}` groups expanded, each
/// resolved to the longest module prefix that exists. Whole files are read, less their
/// `#[cfg(test)] mod … { … }` blocks and comment lines. A parent's `pub use child::…` is a
/// re-export (the facade), not a use; the parent's own code naming a re-exported item is.
fn module_edges() -> BTreeMap<String, BTreeSet<String>> {
    let files = module_files();
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, path) in &files {
        let text = without_test_modules(&std::fs::read_to_string(path).unwrap());
        let children = child_modules(&text);
        let reexported = reexports(module, &text, &children);
        let deps = module_deps(module, &text, &children, &reexported, &modules);
        graph.insert(module.clone(), deps);
    }
    graph
}

/// Every module under `src/` (`http::kea` for `http/kea.rs` or `http/kea/mod.rs`) and its
/// file; the crate roots are left out.
fn module_files() -> BTreeMap<String, std::path::PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
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
            let mut parts: Vec<String> = path
                .strip_prefix(&src)
                .unwrap()
                .components()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_string()
                })
                .collect();
            if parts.last().map(String::as_str) == Some("mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            files.insert(parts.join("::"), path);
        }
    }
    files
}

/// The child modules a module's `text` declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn child_modules(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(|n| n.trim().to_string())
        })
        .collect()
}

/// What the parent re-exports from its children, as (item name, child module): the facade
/// is no use, but the parent's own code naming a re-exported item is a use of that child.
fn reexports(module: &str, text: &str, children: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut reexported: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        for p in ["pub use ", "pub(crate) use "] {
            let Some(r) = t.strip_prefix(p) else { continue };
            let Some(child) = children.iter().find(|c| r.starts_with(&format!("{c}::"))) else {
                continue;
            };
            let r = &r[child.len() + 2..];
            let names = r
                .strip_prefix('{')
                .map_or(r, |g| g.split('}').next().unwrap_or(""));
            for n in names.split(',') {
                let n = n.trim().trim_end_matches(';');
                let n = n.rsplit("::").next().unwrap_or(n).trim();
                if !n.is_empty() {
                    reexported.push((n.to_string(), format!("{module}::{child}")));
                }
            }
        }
    }
    reexported
}

/// The modules `module`'s `text` uses, by path or by naming an item it re-exports.
fn module_deps(
    module: &str,
    text: &str,
    children: &BTreeSet<String>,
    reexported: &[(String, String)],
    modules: &BTreeSet<String>,
) -> BTreeSet<String> {
    let here: Vec<String> = module.split("::").map(String::from).collect();
    let mut deps = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        let reexport = ["pub use ", "pub(crate) use "].iter().any(|p| {
            t.starts_with(p)
                && children
                    .iter()
                    .any(|c| t[p.len()..].starts_with(&format!("{c}::")))
        });
        if reexport {
            continue;
        }
        for (name, child) in reexported {
            let named = line.match_indices(name.as_str()).any(|(i, _)| {
                let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
                !line[..i].ends_with(|c: char| word(c) || c == ':')
                    && !line[i + name.len()..].starts_with(word)
            });
            if named && modules.contains(child) {
                deps.insert(child.clone());
            }
        }
        for m in path_uses(line, &here, children, modules) {
            if m != module {
                deps.insert(m);
            }
        }
    }
    deps
}

/// The modules the paths on `line` (`crate::…`, `self::…`, `super::…`, `<child>::…`) name,
/// seen from the module `here`, each resolved to the longest module prefix that exists.
fn path_uses(
    line: &str,
    here: &[String],
    children: &BTreeSet<String>,
    modules: &BTreeSet<String>,
) -> Vec<String> {
    let resolve = |parts: &[String]| -> Option<String> {
        (1..=parts.len())
            .rev()
            .map(|i| parts[..i].join("::"))
            .find(|m| modules.contains(m))
    };
    let mut found = Vec::new();
    for (at, _) in line.match_indices("::") {
        // The path's first segment ends here; find where it starts.
        let head_start = line[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let path = &line[head_start..];
        if line[head_start..at].contains("::") {
            continue; // not the first `::` of this path
        }
        let first = &line[head_start..at];
        let base: Vec<String> = match first {
            "crate" => Vec::new(),
            "self" => here.to_vec(),
            "super" => here[..here.len() - 1].to_vec(),
            c if children.contains(c) => {
                let mut b = here.to_vec();
                b.push(c.to_string());
                b
            }
            _ => continue,
        };
        let rest = &path[first.len() + 2..];
        found.extend(expand(base, rest).iter().filter_map(|t| resolve(t)));
    }
    found
}

/// The module paths `rest` names after `base`: `super::a::b`, `{a, b::c}`, chains of
/// `super::`.
fn expand(mut base: Vec<String>, rest: &str) -> Vec<Vec<String>> {
    let mut rest = rest;
    loop {
        if let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        } else if let Some(inner) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut items = Vec::new();
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        items.push(&inner[start..i]);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return items
                .into_iter()
                .flat_map(|item| expand(base.clone(), item.trim()))
                .collect();
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() || name == "self" {
                return vec![base];
            }
            base.push(name.clone());
            match rest[name.len()..].strip_prefix("::") {
                Some(r) => rest = r,
                None => return vec![base],
            }
        }
    }
}

/// `text` without its `#[cfg(test)] mod … { … }` blocks (braces matched).
fn without_test_modules(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let is_mod = ["mod ", "pub mod ", "pub(crate) mod ", "pub(super) mod "]
            .iter()
            .any(|p| item.starts_with(p));
        if !is_mod {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let Some(open) = item.find('{') else {
            rest = after;
            continue;
        };
        let mut depth = 0;
        let mut end = item.len();
        for (i, c) in item[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// No circle between any two modules at any depth: a parent uses its parts, no part reaches
/// back into its parent or around to itself. (The Kea flow once lived in `impl HttpGateway`
/// beside the gateway, fan-out called back into the flow, `kea` and `filter` used each other.)
#[test]
fn modules_at_every_depth_form_no_cycle() {
    let graph = module_edges();
    assert!(
        graph
            .get("http")
            .is_some_and(|d| d.contains("http::kea") && d.contains("http::route")),
        "scanned too little: {:?}",
        graph.get("http")
    );
    assert!(
        graph
            .get("http::kea::send")
            .is_some_and(|d| d.contains("http::kea::dispatch")),
        "a `super::dispatch` path not read: {:?}",
        graph.get("http::kea::send")
    );
    assert_acyclic(&graph, "module");
}
