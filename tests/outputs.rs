//! A run writes only its own outputs (SPEC §1 `run`): a directory holding other files
//! is refused unless `--force`, and then those files survive byte for byte; `--out .`
//! works; a re-run replaces exactly what the previous run wrote.

mod common;

use common::topology_path;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn netsim_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netsim"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("netsim runs")
}

fn two_node() -> String {
    topology_path("two-node").to_string_lossy().into_owned()
}

/// Every file below `dir` (relative path, bytes), sorted.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((relative, fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn user_files(dir: &Path) {
    fs::write(dir.join("notes.txt"), b"my notes, not netsim's").unwrap();
    fs::create_dir_all(dir.join("flows")).unwrap();
    fs::write(dir.join("flows/keep.pcapng"), b"a capture of mine").unwrap();
    fs::write(dir.join("report.json.bak"), b"{}").unwrap();
}

#[test]
fn a_directory_with_other_files_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    fs::create_dir_all(&out).unwrap();
    user_files(&out);
    let before = snapshot(&out);
    let run = netsim_in(dir.path(), &["run", &two_node(), "--out", "results"]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("did not write"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(snapshot(&out), before, "nothing added, changed or removed");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no staging left"
    );
}

#[test]
fn force_writes_beside_other_files_and_reruns_replace_only_our_own() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    fs::create_dir_all(&out).unwrap();
    user_files(&out);
    let mine = snapshot(&out);
    let run = netsim_in(
        dir.path(),
        &["run", &two_node(), "--out", "results", "--force"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let after = snapshot(&out);
    for file in &mine {
        assert!(after.contains(file), "{} survives as it was", file.0);
    }
    assert!(out.join("report.json").is_file());
    assert!(out.join("capture.pcapng").is_file());
    assert!(out.join("flows/client-to-server.pcapng").is_file());
    let manifest = fs::read_to_string(out.join(".netsim-outputs")).unwrap();
    assert!(manifest.lines().any(|l| l == "report.json"), "{manifest}");
    assert!(!manifest.contains("notes.txt"), "{manifest}");

    // A second run needs no --force (the manifest says the outputs are ours) and,
    // with --capture none, removes the captures it wrote before, nothing else.
    let rerun = netsim_in(
        dir.path(),
        &["run", &two_node(), "--out", "results", "--capture", "none"],
    );
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(!out.join("capture.pcapng").exists());
    assert!(!out.join("flows/client-to-server.pcapng").exists());
    assert!(out.join("report.json").is_file());
    let last = snapshot(&out);
    for file in &mine {
        assert!(last.contains(file), "{} survives the re-run", file.0);
    }
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no staging left"
    );
}

#[test]
fn out_dot_writes_into_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = netsim_in(dir.path(), &["run", &two_node(), "--out", "."]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(dir.path().join("report.json").is_file());
    assert!(dir.path().join("capture.pcapng").is_file());
    // Again: the directory is now netsim's own.
    let again = netsim_in(dir.path(), &["run", &two_node(), "--out", "."]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A working directory with the user's files is refused, then written with --force.
    let busy = tempfile::tempdir().unwrap();
    fs::write(busy.path().join("topology.toml"), b"# mine").unwrap();
    let refused = netsim_in(busy.path(), &["run", &two_node(), "--out", "."]);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(fs::read_dir(busy.path()).unwrap().count(), 1);
    let forced = netsim_in(busy.path(), &["run", &two_node(), "--out", ".", "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(
        fs::read(busy.path().join("topology.toml")).unwrap(),
        b"# mine"
    );
    assert!(busy.path().join("report.json").is_file());
}

#[test]
fn out_naming_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("results"), b"a file").unwrap();
    let run = netsim_in(dir.path(), &["run", &two_node(), "--out", "results"]);
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(fs::read(dir.path().join("results")).unwrap(), b"a file");
}
