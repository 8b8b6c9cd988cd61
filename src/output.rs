//! Writing a run's outputs (SPEC §3): `report.json`, `capture.pcapng` and
//! `flows/NAME.pcapng`. Everything is written into a fresh sibling directory first
//! and moved into place at the end, so a failed run never leaves half an output.

use crate::capture::{write_pcapng, CaptureMode};
use crate::datapath::Hop;
use crate::report::Report;
use crate::sim::network::CapturePoint;
use crate::sim::runner::RunResult;
use crate::topology::Topology;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Capture(#[from] crate::capture::CaptureError),
    #[error("report: {0}")]
    Json(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a run produced, and how to write it.
pub struct RunOutputs<'a> {
    pub topology: &'a Topology,
    pub result: &'a RunResult,
    pub report: &'a Report,
    pub capture: CaptureMode,
    /// Threads that encode per-flow captures; the bytes do not depend on the count.
    pub threads: usize,
}

/// Writes the outputs of a run to `out`, replacing what was there.
pub fn write_run(out: &Path, run: &RunOutputs) -> Result<(), OutputError> {
    let staging = staging_dir(out);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io(&staging))?;
    let written = write_into(&staging, run);
    if let Err(error) = written {
        let _ = fs::remove_dir_all(&staging);
        return Err(error);
    }
    if out.exists() {
        fs::remove_dir_all(out).map_err(io(out))?;
    }
    fs::rename(&staging, out).map_err(io(out))
}

fn staging_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    out.with_file_name(format!(".{name}.netsim-partial"))
}

fn write_into(dir: &Path, run: &RunOutputs) -> Result<(), OutputError> {
    let RunOutputs {
        topology,
        result,
        report,
        capture: mode,
        threads,
    } = *run;
    let report_path = dir.join("report.json");
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    fs::write(&report_path, json).map_err(io(&report_path))?;
    if mode == CaptureMode::None {
        return Ok(());
    }
    let points = &result.network.points;
    let all: Vec<&Hop> = result.journal.hops.iter().collect();
    write_capture_file(&dir.join("capture.pcapng"), points, &all, mode)?;

    let flows_dir = dir.join("flows");
    fs::create_dir_all(&flows_dir).map_err(io(&flows_dir))?;
    let jobs: Vec<(usize, PathBuf)> = topology
        .flows
        .iter()
        .enumerate()
        .map(|(index, flow)| (index, flows_dir.join(format!("{}.pcapng", flow.name))))
        .collect();
    let threads = threads.clamp(1, jobs.len().max(1));
    let chunk = jobs.len().div_ceil(threads).max(1);
    let results: Vec<Result<(), OutputError>> = crossbeam::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|batch| {
                scope.spawn(move |_| -> Result<(), OutputError> {
                    for (index, path) in batch {
                        let tag = u32::try_from(*index).unwrap_or(u32::MAX);
                        let hops: Vec<&Hop> = result
                            .journal
                            .hops
                            .iter()
                            .filter(|hop| hop.flow == tag)
                            .collect();
                        write_capture_file(path, points, &hops, mode)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(Ok(())))
            .collect()
    })
    .unwrap_or_default();
    results.into_iter().collect()
}

fn write_capture_file(
    path: &Path,
    points: &[CapturePoint],
    hops: &[&Hop],
    mode: CaptureMode,
) -> Result<(), OutputError> {
    let file = fs::File::create(path).map_err(io(path))?;
    write_pcapng(BufWriter::new(file), points, hops, mode)?
        .flush()
        .map_err(io(path))
}
