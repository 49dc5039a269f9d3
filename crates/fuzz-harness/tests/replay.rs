//! Replays the fuzz corpus and every crash ever found: each file of `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/` through the same function the libFuzzer target calls.
//! A file that panics fails its target's test, named in the message.
//!
//! The `ebpf` target loads the data plane and runs BPF_PROG_TEST_RUN: it needs root, like the
//! fixture table (`cargo xtask test` runs as root).

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

/// The `fuzz/` directory of the repository.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Visible files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let body = fuzz_harness::target(target).expect("a harness function for the target");
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty: every target keeps a seed corpus"
    );
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    let mut failed = Vec::new();
    for file in corpus.iter().chain(&regressions) {
        let data = fs::read(file).expect("readable corpus file");
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs panic: {failed:#?}",
        failed.len(),
        corpus.len() + regressions.len()
    );
}

#[test]
fn rtmp_handshake() {
    replay("rtmp_handshake");
}

#[test]
fn rtmp_chunk() {
    replay("rtmp_chunk");
}

#[test]
fn amf0() {
    replay("amf0");
}

#[test]
fn flv() {
    replay("flv");
}

#[test]
fn playlist() {
    replay("playlist");
}

#[test]
fn origin_path() {
    replay("origin_path");
}

#[test]
fn origin_range() {
    replay("origin_range");
}

#[test]
fn ebpf() {
    replay("ebpf");
}

/// Every libFuzzer target has a harness function (and so a replay test above), and back.
#[test]
fn fuzz_targets_and_harness_functions_match() {
    let mut on_disk: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut harness: Vec<String> = fuzz_harness::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    harness.sort();
    assert_eq!(on_disk, harness);
}
