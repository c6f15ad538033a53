//! CI tests the checkout it runs in. A copy of this checkout's tracked files with one deliberate
//! difference (the words `cargo xtask where` prints) is built in a target folder of its own:
//! the copy's code is what runs there. Then this checkout runs `cargo xtask` with the copy's
//! target folder, the shared-folder trap: cargo may call the copy's build fresh (its
//! fingerprints ignore where a checkout lies), and xtask must then refuse rather than run the
//! other checkout's code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use xtask::util::root;

/// The words the copy prints instead of `workspace`.
const MARK: &str = "second-checkout-workspace";

fn cargo_xtask_where(checkout: &Path, target: &Path) -> Output {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "--package", "xtask", "--", "where"])
        .current_dir(checkout)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("cargo runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies the files git tracks (uncommitted edits included) into `to`.
fn copy_tracked(from: &Path, to: &Path) {
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--cached"])
        .current_dir(from)
        .output()
        .expect("git runs");
    assert!(listed.status.success(), "git ls-files: {}", text(&listed));
    for name in listed.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let rel = PathBuf::from(String::from_utf8_lossy(name).into_owned());
        let src = from.join(&rel);
        if !src.is_file() {
            continue; // deleted in the working tree
        }
        let dst = to.join(&rel);
        std::fs::create_dir_all(dst.parent().expect("a file has a parent")).expect("mkdir");
        std::fs::copy(&src, &dst).expect("copy");
    }
}

#[test]
fn a_second_checkout_runs_its_own_code_and_a_shared_target_is_refused() {
    let here = root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let second = tmp.path().join("second");
    copy_tracked(&here, &second);
    let main_rs = second.join("xtask/src/main.rs");
    let code = std::fs::read_to_string(&main_rs).expect("xtask/src/main.rs");
    let changed = code.replace("\"workspace {}\"", &format!("\"{MARK} {{}}\""));
    assert_ne!(code, changed, "the `where` line to change was not found");
    std::fs::write(&main_rs, changed).expect("write");

    // The copy, in a target folder of its own: its code runs, on itself.
    let own_target = tmp.path().join("second-target");
    let out = cargo_xtask_where(&second, &own_target);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let second = second.canonicalize().expect("canonical");
    assert!(
        said.contains(&format!("{MARK} {}", second.display())),
        "the copy did not run its own code on itself: {said}"
    );

    // This checkout with the copy's target folder: whatever cargo decides, the copy's code
    // never runs here silently: either cargo rebuilds from this checkout, or xtask refuses.
    let out = cargo_xtask_where(&here, &own_target);
    let said = text(&out);
    assert!(
        !said.contains(MARK),
        "this checkout ran the copy's build: {said}"
    );
    if out.status.success() {
        assert!(
            said.contains(&format!("workspace {}", here.display())),
            "{said}"
        );
    } else {
        assert!(
            said.contains("was built from the checkout") && said.contains("share a"),
            "refused without saying why: {said}"
        );
    }
}
