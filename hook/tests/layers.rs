//! The engine's layers point one way. Reads every source file of the
//! library, collects the `crate::...` modules each one names outside its
//! `#[cfg(test)]` section, and checks that (1) no module names one in a
//! higher layer, (2) the module graph has no circle, (3) production code
//! never names the test fakes.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module is `layer::file` or a top-level file.
const LAYERS: &[(&str, u32)] = &[
    ("pci", 0),
    ("guestnet", 0),
    ("ifconf", 0),
    ("rtnl", 0),
    ("error", 0),
    ("file", 0),
    ("json", 0),
    ("log", 0),
    ("kernel", 1),
    ("state", 2),
    ("policy", 3),
    ("engine", 4),
    ("oci", 5),
    ("integrations", 6),
    ("admin", 6),
    ("testing", 7),
];

fn layer_of(top: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(n, _)| *n == top)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module {top} has no layer in tests/layers.rs"))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `kernel::sysfs` for `src/kernel/sysfs.rs`, `kernel` for its mod.rs,
/// `pci` for `src/pci.rs`.
fn module_name(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|c| c != "mod")
        .collect();
    parts.join("::")
}

/// A file's production code: before its `#[cfg(test)]` section, without
/// comments.
fn code_of(text: &str) -> String {
    text.split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file names: `crate::a::b` becomes `a::b` when `a` is a
/// folder (a layer with submodules), else `a`.
fn imports(text: &str, folders: &BTreeSet<String>) -> BTreeSet<String> {
    let code = code_of(text);
    let prod = code.as_str();
    let mut out = BTreeSet::new();
    for (i, _) in prod.match_indices("crate::") {
        let rest = &prod[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut segs = path.split("::").filter(|s| !s.is_empty());
        let Some(first) = segs.next() else { continue };
        if folders.contains(first) {
            match segs.next() {
                Some(second) if second.chars().next().is_some_and(char::is_lowercase) => {
                    out.insert(format!("{first}::{second}"));
                }
                _ => {
                    out.insert(first.to_owned());
                }
            }
        } else {
            out.insert(first.to_owned());
        }
    }
    out
}

#[test]
fn layers_point_one_way_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let folders: BTreeSet<String> = fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.is_dir()
                .then(|| p.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let name = module_name(&src, f);
        if name == "lib" || name == "main" {
            continue;
        }
        let text = fs::read_to_string(f).unwrap();
        let mut deps = imports(&text, &folders);
        deps.remove(&name);
        graph.insert(name, deps);
    }
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    let mut upward = Vec::new();
    for (m, deps) in &graph {
        for d in deps {
            if layer_of(&top(d)) > layer_of(&top(m)) {
                upward.push(format!("{m} -> {d}"));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports: {upward:#?}");

    // Circles: depth-first search over the module graph.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| s == m) {
            circles.push(format!("{} -> {m}", stack[at..].join(" -> ")));
            return;
        }
        stack.push(m.to_owned());
        for d in graph.get(m).into_iter().flatten() {
            visit(d, graph, stack, done, circles);
        }
        stack.pop();
        done.insert(m.to_owned());
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
    assert!(graph.len() > 20, "read only {} modules", graph.len());
}

/// The engine is the one writer of leases: nothing above it locks or
/// writes the ledger, and the integrations (and the shim) never touch it.
#[test]
fn only_the_engine_writes_leases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("../shim/src"), &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel.starts_with("src/engine/")
            || rel.starts_with("src/state/")
            || rel == "src/testing.rs"
        {
            continue;
        }
        let text = fs::read_to_string(f).unwrap();
        let prod = code_of(&text);
        let mut words = vec![
            ".lock_vf(",
            ".lock_global(",
            "ledger.update(",
            "ledger.create(",
            "ledger.remove(",
        ];
        if rel.starts_with("src/integrations/") || rel.contains("shim/") {
            words.extend(["ledger.", "Ledger::"]);
        }
        for w in words {
            if prod.contains(w) {
                bad.push(format!("{rel}: {w}"));
            }
        }
    }
    assert!(bad.is_empty(), "ledger access outside the engine: {bad:#?}");
    assert!(files.len() > 20);
}
