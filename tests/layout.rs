//! The module layout keeps its promises: the delivery agents import nothing of the queue
//! manager, the queue and the token manager nothing of delivery, and no two modules of
//! `src/` import each other, directly or around a loop. Read from the source: every
//! `crate::…`, `super::…` and `self::…` path outside comments and test modules is an edge
//! from the file's module to the longest module that path names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// `src/delivery/agent/worker.rs` → `delivery::agent::worker`; `mod.rs` names its folder.
fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::a::b`, `super::super::c`, `self::d` paths in `code`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut at = 0;
    while at < bytes.len() {
        if !code.is_char_boundary(at) {
            at += 1;
            continue;
        }
        let starts_word = at == 0 || !ident(bytes[at - 1]);
        let rest = &code[at..];
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|h| rest.starts_with(h));
        match head.filter(|_| starts_word) {
            Some(_) => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                let segments: Vec<String> = rest[..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                found.push(segments);
                at += end.max(1);
            }
            None => at += 1,
        }
    }
    found
}

fn resolve(from: &Module, path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let mut base: Module = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("self") => {
            base = from.clone();
            rest = &path[1..];
        }
        Some("super") => {
            base = from.clone();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let full: Module = base.into_iter().chain(rest.iter().cloned()).collect();
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|m| modules.contains(m))
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        for path in paths(&code(&text)) {
            let Some(to) = resolve(&from, &path, &modules) else {
                continue;
            };
            // A module's own submodules are not edges (its parent's items are).
            if to.starts_with(&from) {
                continue;
            }
            edges.entry(from.clone()).or_default().insert(to);
        }
    }
    edges
}

fn name(module: &Module) -> String {
    module.join("::")
}

fn imports_from(
    edges: &BTreeMap<Module, BTreeSet<Module>>,
    lower: &str,
    upper: &str,
) -> Vec<String> {
    let (lower, upper): (Module, Module) = (
        lower.split("::").map(str::to_owned).collect(),
        upper.split("::").map(str::to_owned).collect(),
    );
    edges
        .iter()
        .filter(|(from, _)| from.starts_with(&lower))
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from, to)))
        .filter(|(_, to)| to.starts_with(&upper))
        .map(|(from, to)| format!("{} -> {}", name(from), name(to)))
        .collect()
}

#[test]
fn the_delivery_agents_import_nothing_of_the_queue_manager() {
    let edges = graph();
    assert!(
        edges.contains_key(&vec!["delivery".into(), "agent".into(), "worker".into()]),
        "the layout this test reads has moved"
    );
    let upward = imports_from(&edges, "delivery::agent", "delivery::manager");
    assert!(upward.is_empty(), "{upward:#?}");
}

#[test]
fn the_queue_and_the_token_manager_import_nothing_of_delivery() {
    let edges = graph();
    for lower in ["queue", "oauth"] {
        let upward = imports_from(&edges, lower, "delivery");
        assert!(upward.is_empty(), "{upward:#?}");
    }
}

#[test]
fn no_modules_import_each_other_around_a_loop() {
    let edges = graph();
    // Tarjan's strongly connected components: any with more than one module is a loop.
    struct Walk<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        loops: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    component.push(name(w));
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.loops.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        loops: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    assert!(
        walk.loops.is_empty(),
        "modules in a loop: {:#?}",
        walk.loops
    );
}

#[test]
fn the_reader_sees_imports_in_code_not_in_comments() {
    // The checks above read what this reads: a path in code counts, one in a comment does
    // not, and `super` climbs from the file's module.
    let code = code(
        "use super::lane::Lane;\n// crate::admin::x\nfn f() { crate::queue::Spool::open(); }\n",
    );
    let found = paths(&code);
    assert_eq!(found.len(), 2, "{found:?}");
    let modules: BTreeSet<Module> = [
        vec!["delivery".into(), "manager".into()],
        vec!["delivery".into(), "manager".into(), "lane".into()],
        vec!["queue".into()],
    ]
    .into();
    let from = vec!["delivery".into(), "manager".into(), "scheduler".into()];
    assert_eq!(
        resolve(&from, &found[0], &modules),
        Some(vec!["delivery".into(), "manager".into(), "lane".into()])
    );
    assert_eq!(
        resolve(&from, &found[1], &modules),
        Some(vec!["queue".into()])
    );
}
