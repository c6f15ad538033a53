//! The dependency direction written in ARCHITECTURE.md, checked against `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Which of our crates each crate may depend on (normal and build dependencies).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("chatpainter-artifacts", &[][..]),
        ("chatpainter-ingest", &["chatpainter-artifacts"][..]),
        ("chatpainter-nn", &[][..]),
        (
            "chatpainter-embed",
            &["chatpainter-artifacts", "chatpainter-ingest"][..],
        ),
        (
            "chatpainter-eval",
            &[
                "chatpainter-artifacts",
                "chatpainter-nn",
                "chatpainter-embed",
                "chatpainter-ingest",
                "chatpainter-train",
            ][..],
        ),
        (
            "chatpainter-train",
            &[
                "chatpainter-artifacts",
                "chatpainter-ingest",
                "chatpainter-embed",
                "chatpainter-nn",
            ][..],
        ),
        (
            "chatpainter-cli",
            &[
                "chatpainter-artifacts",
                "chatpainter-ingest",
                "chatpainter-embed",
                "chatpainter-train",
                "chatpainter-nn",
                "chatpainter-eval",
                "chatpainter-report",
            ][..],
        ),
        // The report reads files, never models: no Burn, nothing but the contracts.
        ("chatpainter-report", &["chatpainter-artifacts"][..]),
        ("chatpainter-tests", &[][..]),
        ("xtask", &["chatpainter-artifacts"][..]),
    ])
}

#[test]
fn crates_depend_only_in_the_documented_direction() {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let ours: BTreeSet<String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let allowed = allowed();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default();
        let permitted = allowed.get(name).unwrap_or_else(|| {
            panic!("crate {name} is not in ARCHITECTURE.md's code map (update this test too)")
        });
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            let is_dev = dep["kind"].as_str() == Some("dev");
            if ours.contains(dep_name) && !is_dev {
                assert!(
                    permitted.contains(&dep_name),
                    "{name} must not depend on {dep_name}"
                );
            }
        }
    }
    // Burn stays out of the data crates.
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default();
        if [
            "chatpainter-artifacts",
            "chatpainter-ingest",
            "chatpainter-report",
        ]
        .contains(&name)
        {
            for dep in package["dependencies"].as_array().expect("dependencies") {
                assert_ne!(
                    dep["name"].as_str(),
                    Some("burn"),
                    "{name} must not depend on burn"
                );
            }
        }
    }
}
