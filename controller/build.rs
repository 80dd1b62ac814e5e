//! Records what `edgemq version` and the `edgemq_build_info` metric report: the target
//! triple and the git commit the binary was built from. The commit comes from
//! `EDGEMQ_GIT_COMMIT` when set (image builds without a `.git` folder), else from
//! `git rev-parse HEAD` when git and a repository are there, else "unknown".

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=EDGEMQ_GIT_COMMIT");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=EDGEMQ_BUILD_TARGET={target}");

    let commit = std::env::var("EDGEMQ_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]));
    // Rebuild when HEAD moves: the checkout's HEAD and the refs it may point at.
    for dir in [
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ]
    .into_iter()
    .flatten()
    {
        let dir = PathBuf::from(dir);
        for f in ["HEAD", "packed-refs", "refs/heads"] {
            let p = dir.join(f);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    println!(
        "cargo:rustc-env=EDGEMQ_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
