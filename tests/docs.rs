//! The README and the guide in docs/ link only to files and headings that exist.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// GitHub's anchor of a heading: lower case, spaces as `-`, punctuation other than `-`
/// and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a Markdown file outside fenced code blocks, with their numbers.
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

/// The anchors of a Markdown file's headings.
fn anchors(text: &str) -> HashSet<String> {
    prose(text)
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#').replace('`', "").as_str()))
        .collect()
}

/// Every `](target)` of a line, inline code spans left out.
fn links(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let code_free: String =
        line.split('`').enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, s)| s).collect();
    let mut rest = code_free.as_str();
    while let Some(at) = rest.find("](") {
        let tail = &rest[at + 2..];
        let Some(end) = tail.find(')') else { break };
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_relative_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    for file in markdown_files(root) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in prose(&text) {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, fragment) = match target.split_once('#') {
                    Some((p, f)) => (p, Some(f)),
                    None => (target.as_str(), None),
                };
                let dest =
                    if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
                let name =
                    format!("{}:{n}: ({target})", file.strip_prefix(root).unwrap().display());
                if !dest.exists() {
                    broken.push(format!("{name}: no file {}", dest.display()));
                    continue;
                }
                if let Some(f) = fragment {
                    let is_md = dest.extension().is_some_and(|e| e == "md");
                    if is_md && !anchors(&std::fs::read_to_string(&dest).unwrap()).contains(f) {
                        broken.push(format!("{name}: no heading #{f}"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The checker itself: it finds a missing file and a missing heading.
#[test]
fn the_checker_sees_what_is_wrong() {
    assert_eq!(anchor("The CIM backward, on AVX2 (`stat:S`)"), "the-cim-backward-on-avx2-stats");
    assert_eq!(links("see [a](docs/x.md#y) and `[b](c)` or [d](e)"), vec!["docs/x.md#y", "e"]);
    let text = "# Title\n```\n# not a heading\n```\n## Sub part\n";
    assert_eq!(anchors(text), HashSet::from(["title".to_string(), "sub-part".to_string()]));
}
