//! The documentation holds together: every relative link between README.md, ARCHITECTURE.md
//! and docs/ reaches an existing file (and heading, for `#anchor` links), docs/README.md lists
//! every page, and README.md stays the short newcomer's page it is meant to be.
//!
//! That every config key and metric family is documented is checked next to the code that
//! defines them (`src/config/doc_sync.rs`, `src/metrics.rs`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, ARCHITECTURE.md and every page in docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("docs/ is readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines outside fenced code blocks, numbered from 1.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// `line` without its inline code spans, where `](` is not a link.
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// The targets of inline links `[text](target)` in `text`, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose(text) {
        let line = without_code(line);
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push((n, rest[..end].to_string()));
                rest = &rest[end..];
            }
        }
    }
    out
}

/// GitHub's anchors for the headings of a page: lowercase, punctuation dropped, spaces to
/// `-`, `-1`, `-2`, … for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let Some(title) = line
            .strip_prefix('#')
            .map(|t| t.trim_start_matches('#'))
            .filter(|t| t.starts_with(' '))
        else {
            continue;
        };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// Every broken relative link in `pages`, as `file:line: target (why)`.
fn broken_links(pages: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for page in pages {
        let text = read(page);
        let dir = page.parent().expect("a page is in a folder");
        let name = page.strip_prefix(root()).unwrap_or(page).display();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !path.exists() {
                broken.push(format!("{name}:{line}: {target} (no such file)"));
                continue;
            }
            if let Some(anchor) = anchor {
                if path.extension().is_none_or(|e| e != "md") {
                    broken.push(format!("{name}:{line}: {target} (anchor into a non-page)"));
                } else if !anchors(&read(&path)).contains(anchor) {
                    broken.push(format!("{name}:{line}: {target} (no such heading)"));
                }
            }
        }
    }
    broken
}

#[test]
fn relative_links_resolve() {
    let broken = broken_links(&pages());
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_docs_index_lists_every_page() {
    let index = read(&root().join("docs/README.md"));
    let listed: BTreeSet<String> = links(&index).into_iter().map(|(_, t)| t).collect();
    let missing: Vec<String> = pages()
        .iter()
        .filter(|p| p.parent() == Some(&root().join("docs")))
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .filter(|f| f != "README.md" && !listed.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/README.md does not link {missing:?}"
    );
}

/// Every suite in `tests/` has its entry in docs/testing.md (a new suite fails here until
/// it is described).
#[test]
fn every_suite_is_described_in_testing_md() {
    let testing = read(&root().join("docs/testing.md"));
    let mut missing: Vec<String> = std::fs::read_dir(root().join("tests"))
        .expect("tests/ is readable")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".rs") && !testing.contains(&format!("`{f}`")))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "docs/testing.md does not describe {missing:?}"
    );
}

#[test]
fn the_readme_stays_under_15_kb() {
    let size = read(&root().join("README.md")).len();
    assert!(
        size < 15_000,
        "README.md is {size} bytes; the reference belongs in docs/"
    );
}

#[test]
fn the_checker_catches_broken_files_and_anchors() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let page = dir.path().join("a.md");
    std::fs::write(
        &page,
        "# A page\n\n## `cluster.limits` — caps\n\n[ok](#a-page) [ok](#clusterlimits--caps) \
         [ok](a.md) [gone](b.md) [bad](#nope)\n```\n[fenced](c.md)\n```\n`[code](d.md)`\n",
    )
    .expect("the page is written");
    let found = broken_links(std::slice::from_ref(&page));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].ends_with("b.md (no such file)"), "{found:?}");
    assert!(found[1].ends_with("#nope (no such heading)"), "{found:?}");
}
