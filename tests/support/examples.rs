//! The crate's examples as programs for the tests that run them.
//!
//! Every example is built once per test binary, with the features of the
//! test itself: under `cargo test --all-features` all of them share one
//! build of the crate, instead of one build per feature set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Builds example `name` (at most once per test binary) and returns the
/// path of its program.
pub(crate) fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    built
        .get_or_insert_with(HashMap::new)
        .entry(name.to_owned())
        .or_insert_with(|| build(name))
        .clone()
}

/// The features this test binary was built with, as cargo spells them.
fn features() -> String {
    [
        ("server", cfg!(feature = "server")),
        ("serve", cfg!(feature = "serve")),
        ("client", cfg!(feature = "client")),
        ("hyper-client", cfg!(feature = "hyper-client")),
        ("rustls", cfg!(feature = "rustls")),
        ("postgres", cfg!(feature = "postgres")),
        ("sqlite", cfg!(feature = "sqlite")),
    ]
    .into_iter()
    .filter_map(|(feature, enabled)| enabled.then_some(feature))
    .collect::<Vec<_>>()
    .join(",")
}

fn build(name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // `cargo test` sets these for the test; a dependency's build script
    // (ring's) watches some of them, and would rebuild for them here and
    // again for the next plain `cargo build`.
    for (variable, _) in std::env::vars_os() {
        let variable = variable.to_string_lossy();
        let set_for_the_test = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| variable.starts_with(prefix))
            || variable == "CARGO_TARGET_TMPDIR";
        if set_for_the_test {
            command.env_remove(&*variable);
        }
    }
    let status = command
        .args(["build", "--quiet", "--example", name])
        .args(["--no-default-features", "--features", &features()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the {name} example builds");
    // Examples sit next to the `deps` folder this test runs from.
    let mut path = std::env::current_exe().expect("the test's path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}
