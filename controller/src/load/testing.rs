//! Test helpers shared by the loader, plan and render tests.

use std::path::{Path, PathBuf};

/// The crate's directory.
pub(crate) fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder under `controller/tests/fixtures`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    crate_dir().join("tests").join("fixtures").join(name)
}

/// The repository's `examples/standalone` folder.
pub(crate) fn standalone_example() -> PathBuf {
    crate_dir().join("..").join("examples").join("standalone")
}

/// Compares `actual` with the golden file at `path`; with `UPDATE_GOLDEN=1` in the
/// environment, rewrites the file instead.
pub(crate) fn assert_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("golden files live in a folder"))
            .expect("create the golden folder");
        std::fs::write(path, actual).expect("write the golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run the test with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the output (run with UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}
