//! Every seed and every regression input of the fuzz targets (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`), run as an ordinary test: what a fuzzer once crashed on
//! stays fixed. A crash the fuzzer finds goes into `fuzz/regressions/<target>/` with the
//! fix. Needs the `fuzzing` feature (`cargo test -p itc-server --features fuzzing`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut found = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            found.push((path, bytes));
        }
    }
    found.sort();
    found
}

#[test]
fn store_segment_inputs_neither_panic_nor_hang() {
    let inputs = inputs("store_segment");
    assert!(inputs.len() >= 5, "the seeds are missing: {inputs:?}");
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        itc_server::fuzzing::open_log_segment(&bytes);
    }
}

#[test]
fn request_inputs_neither_panic_nor_hang() {
    let inputs = inputs("requests");
    assert!(inputs.len() >= 20, "the seeds are missing: {}", inputs.len());
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        itc_server::fuzzing::call_services(&bytes);
    }
}
