//! Invariants ARCHITECTURE.md states, checked here so that breaking one fails a test: the
//! dependency direction between our crates, Burn out of the data crates and Polars only in
//! ingest (all read from `cargo metadata`), and only the CLI prints (read from the sources).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `cargo metadata` of our own packages (no dependencies resolved, so nothing to download).
fn metadata() -> serde_json::Value {
    cargo_metadata(&["--no-deps", "--offline"])
}

/// `cargo metadata` with the dependency graph resolved from `Cargo.lock` for this machine's
/// platform only. The whole graph also holds other platforms' crates (`anstyle-wincon`,
/// `windows-sys`, …) that no build here downloads, so on a machine that never fetched them an
/// unfiltered or `--offline` call fails; cargo may fetch the few this needs that a build did not.
fn resolved_metadata() -> serde_json::Value {
    cargo_metadata(&["--filter-platform", "host-tuple"])
}

fn cargo_metadata(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1"])
        .args(extra)
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata is JSON")
}

/// `(package, dependency)` for every normal and build dependency of our packages.
fn non_dev_dependencies(meta: &serde_json::Value) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default();
        for dep in package["dependencies"].as_array().expect("dependencies") {
            if dep["kind"].as_str() != Some("dev") {
                let dep_name = dep["name"].as_str().unwrap_or_default();
                pairs.push((name.to_string(), dep_name.to_string()));
            }
        }
    }
    pairs
}

/// The crate graph of ARCHITECTURE.md ("Crate graph"): each crate and the crates of ours it
/// depends on, one table row each.
fn documented_graph() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let table = text
        .split("### Crate graph")
        .nth(1)
        .expect("ARCHITECTURE.md has a `### Crate graph` section");
    let mut graph = BTreeMap::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(name), Some(deps)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let name = name.trim_matches('`');
        if name == "crate" || name.starts_with("---") {
            continue;
        }
        let deps = deps
            .split_whitespace()
            .map(|d| d.trim_matches('`').to_string())
            .collect();
        graph.insert(name.to_string(), deps);
    }
    graph
}

/// The graph `cargo metadata` shows is exactly the one ARCHITECTURE.md documents.
#[test]
fn the_crate_graph_is_the_documented_one() {
    let meta = metadata();
    let ours: BTreeSet<String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut actual: BTreeMap<String, BTreeSet<String>> =
        ours.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
    for (name, dep) in non_dev_dependencies(&meta) {
        if ours.contains(&dep) {
            actual.entry(name).or_default().insert(dep);
        }
    }
    let documented = documented_graph();
    assert!(
        documented.contains_key("chatpainter-formats") && documented.len() > 5,
        "the crate graph table was not read: {documented:?}"
    );
    for (name, deps) in &actual {
        let doc = documented.get(name).unwrap_or_else(|| {
            panic!("crate {name} is not in ARCHITECTURE.md's crate graph (add its row)")
        });
        assert_eq!(
            deps, doc,
            "{name}: cargo metadata says it depends on {deps:?}, ARCHITECTURE.md says {doc:?}"
        );
    }
    for name in documented.keys() {
        assert!(
            actual.contains_key(name),
            "ARCHITECTURE.md's crate graph lists {name}, which is not a package"
        );
    }
}

/// Burn stays out of the data crates.
#[test]
fn burn_stays_out_of_the_data_crates() {
    for (name, dep) in non_dev_dependencies(&metadata()) {
        if [
            "chatpainter-artifacts",
            "chatpainter-formats",
            "chatpainter-ingest",
            "chatpainter-report",
        ]
        .contains(&name.as_str())
        {
            assert_ne!(dep, "burn", "{name} must not depend on burn");
        }
    }
}

/// Polars is ingest's join engine and nothing else's: the other crates read the ingested Parquet
/// with arrow/parquet, so the artifact contract never depends on a Polars version.
#[test]
fn only_ingest_depends_on_polars() {
    const POLARS_USERS: [&str; 1] = ["chatpainter-ingest"];
    for (name, dep) in non_dev_dependencies(&metadata()) {
        if dep == "polars" || dep.starts_with("polars-") {
            assert!(
                POLARS_USERS.contains(&name.as_str()),
                "{name} depends on {dep}; only {POLARS_USERS:?} may use Polars (ARCHITECTURE.md)"
            );
        }
    }
}

/// Polars compiles into ingest and into what links ingest (the CLI) only: every other crate reads
/// the ingested Parquet through `chatpainter-formats`, so no other stage builds Polars.
#[test]
fn polars_reaches_only_ingest_and_the_cli() {
    const MAY_LINK_POLARS: [&str; 2] = ["chatpainter-ingest", "chatpainter-cli"];
    let meta = resolved_metadata();
    let nodes = meta["resolve"]["nodes"].as_array().expect("resolve.nodes");
    let name_of = |id: &str| id_name(&meta, id);
    let normal_deps = |id: &str| -> Vec<String> {
        let node = nodes.iter().find(|n| n["id"] == id).expect("node");
        node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k["kind"].is_null()))
            })
            .map(|d| d["pkg"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let links_polars = |root: &str| -> Option<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![root.to_string()];
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let dep_name = name_of(&id);
            if dep_name == "polars" || dep_name.starts_with("polars-") {
                return Some(dep_name);
            }
            todo.extend(normal_deps(&id));
        }
        None
    };
    for member in meta["workspace_members"].as_array().expect("members") {
        let member = member.as_str().unwrap_or_default();
        let name = name_of(member);
        let found = links_polars(member);
        if name == "chatpainter-ingest" {
            // The walk itself works: the crate that uses Polars is seen to link it.
            assert!(
                found.is_some(),
                "the dependency walk misses ingest's Polars"
            );
        } else if !MAY_LINK_POLARS.contains(&name.as_str()) && name != "xtask" {
            assert!(
                found.is_none(),
                "{name} links {}; only {MAY_LINK_POLARS:?} may (read Parquet with \
                 chatpainter-formats instead)",
                found.unwrap_or_default()
            );
        }
    }
}

fn id_name(meta: &serde_json::Value, id: &str) -> String {
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["id"] == id)
        .and_then(|p| p["name"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The stages talk through files only: a stage crate reads its inputs with `chatpainter-formats`
/// (and runs text encoders and networks with `chatpainter-model`), never through the crate of
/// the stage that wrote them.
#[test]
fn stages_depend_on_formats_not_on_each_other() {
    const STAGES: [&str; 4] = [
        "chatpainter-ingest",
        "chatpainter-embed",
        "chatpainter-train",
        "chatpainter-eval",
    ];
    for (name, dep) in non_dev_dependencies(&metadata()) {
        if STAGES.contains(&name.as_str()) {
            assert!(
                !STAGES.contains(&dep.as_str()),
                "{name} depends on the stage crate {dep}: read its artifacts with \
                 chatpainter-formats (ARCHITECTURE.md)"
            );
        }
    }
}

// ------------------------------------------------------------------------- only the CLI prints

/// Macros and handles that write to the terminal. Library code logs with `tracing`; the CLI
/// installs the subscriber that puts events on stderr and in the stage's log.
const PRINTING: [&str; 7] = [
    "print!",
    "println!",
    "eprint!",
    "eprintln!",
    "dbg!",
    "stdout()",
    "stderr()",
];

/// Every `.rs` file below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable source folder") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The source with comments and the contents of string and character literals replaced by
/// spaces (newlines kept, so line numbers still hold): what is left is code.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let rest = |k: usize| c.get(i + k).copied();
        if c[i] == '/' && rest(1) == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && rest(1) == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (rest(1) == Some('"') || rest(1) == Some('#'))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // Raw string r"…" or r#"…"#: ends at a quote followed by as many hashes.
            let mut hashes = 0;
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            out.push('"');
            out.extend(std::iter::repeat_n(' ', j - i));
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.push('"');
                    out.extend(std::iter::repeat_n(' ', hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(c[i]));
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only literals close.
            let end = if rest(1) == Some('\\') {
                (i + 3..c.len()).find(|&k| c[k] == '\'')
            } else if rest(2) == Some('\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push('\'');
                    out.extend(std::iter::repeat_n(' ', e - i - 1));
                    out.push('\'');
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// `code` with every item or statement under `#[cfg(test)]` (or `#[cfg(all(test, …))]`) blanked.
/// The item runs from the attribute to the `;` or the closing brace that ends it at its own
/// nesting level (a `;` right after that brace included).
fn without_test_code(code: &str) -> String {
    let mut c: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i] != '#' || c.get(i + 1) != Some(&'[') {
            i += 1;
            continue;
        }
        let Some(close) = (i..c.len()).find(|&k| c[k] == ']') else {
            break;
        };
        let attribute: String = c[i..=close]
            .iter()
            .filter(|ch| !ch.is_whitespace())
            .collect();
        let is_test = attribute == "#[cfg(test)]"
            || attribute
                .strip_prefix("#[cfg(all(")
                .and_then(|a| a.strip_suffix("))]"))
                .is_some_and(|args| args.split(',').any(|p| p == "test"));
        if !is_test {
            i = close + 1;
            continue;
        }
        let mut depth = 0i32;
        let mut end = c.len();
        let mut k = close + 1;
        while k < c.len() {
            match c[k] {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' => depth -= 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        let next = (end..c.len()).find(|&n| !c[n].is_whitespace());
                        if next.is_some_and(|n| c[n] == ';') {
                            end = next.map_or(end, |n| n + 1);
                        }
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
            k += 1;
        }
        for ch in &mut c[i..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = end;
    }
    c.into_iter().collect()
}

/// `(line, what)` for every printing macro or handle in `src`, outside test code.
fn printing_in(src: &str) -> Vec<(usize, &'static str)> {
    let code = without_test_code(&code_only(src));
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for what in PRINTING {
            for (at, _) in line.match_indices(what) {
                // A whole name: `eprintln!` is not also a `println!`, nor `my_print!` a `print!`.
                let before = line[..at].chars().next_back();
                if !before.is_some_and(|b| b.is_alphanumeric() || b == '_') {
                    found.push((n + 1, what));
                }
            }
        }
    }
    found
}

/// Only `chatpainter-cli` (and xtask, the developer tool) print: no library crate's `src`
/// writes to stdout or stderr outside `#[cfg(test)]` code.
#[test]
fn only_the_cli_prints() {
    let root = root();
    let mut seen: BTreeMap<(String, &str), Vec<usize>> = BTreeMap::new();
    let crates = std::fs::read_dir(root.join("crates")).expect("crates/");
    for krate in crates {
        let krate = krate.expect("crate folder").path();
        if krate.file_name().is_some_and(|n| n == "chatpainter-cli") {
            continue;
        }
        for file in rust_files(&krate.join("src")) {
            let src = std::fs::read_to_string(&file).expect("readable source");
            let rel = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('\\', "/");
            for (line, what) in printing_in(&src) {
                seen.entry((rel.clone(), what)).or_default().push(line);
            }
        }
    }
    let errors: Vec<String> = seen
        .iter()
        .map(|((file, what), lines)| {
            format!(
                "{file}: {what} on line(s) {lines:?}; log with tracing instead (only the CLI prints)"
            )
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_print_scanner_sees_code_only() {
    let src = r##"
        fn a() { println!("x"); }
        // println!("comment")
        /* eprintln!("block /* nested */ comment") */
        fn b() -> &'static str { "println!(\"in a string\")" }
        fn c() -> &'static str { r#"eprintln!("raw")"# }
        fn d() { let _ = ('{', '\'', '\\'); my_print!("not ours"); }
        #[cfg(test)]
        mod tests { fn t() { println!("test"); let _ = "}"; } }
        #[cfg(all(test, feature = "mpi"))]
        fn mpi() { eprintln!("test too"); }
        #[cfg(not(test))]
        fn e() { eprint!("counted"); }
        fn f() { dbg!(1); let _ = std::io::stderr(); }
    "##;
    assert_eq!(
        printing_in(src),
        vec![
            (2, "println!"),
            (13, "eprint!"),
            (14, "dbg!"),
            (14, "stderr()")
        ]
    );
}

/// This test binary was compiled from the checkout it runs in (cargo runs tests in their
/// package's folder). With a target folder shared between checkouts, cargo can call another
/// checkout's build fresh and run it here; then this fails.
#[test]
fn the_tests_run_are_built_from_this_checkout() {
    let here = std::env::current_dir()
        .and_then(|d| d.canonicalize())
        .expect("the current directory");
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .expect("the compile-time package folder exists");
    assert_eq!(
        here, built,
        "this test binary was built from {built:?} but runs in {here:?}: a shared target folder"
    );
}
