//! Writing a run's outputs (SPEC §3): `report.json`, `capture.pcapng` and
//! `flows/NAME.pcapng`, and nothing else.
//!
//! A run never harms what it did not write. The output directory holds a manifest,
//! `.netsim-outputs`, listing the files netsim put there; a directory that is not
//! empty and has no manifest is refused ([`OutputError::NotOurs`]) unless the user
//! passes `--force`, and even then only netsim's own file names are written. A new
//! run first writes every file into a staging directory inside the output directory,
//! then removes the previous run's files (those its manifest lists, no others) and
//! renames the new ones into place, so a failed run leaves the previous outputs as
//! they were and never half a new set.

use crate::capture::{write_pcapng, CaptureMode};
use crate::datapath::Hop;
use crate::report::Report;
use crate::sim::network::CapturePoint;
use crate::sim::runner::RunResult;
use crate::topology::Topology;
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The manifest of the files a run wrote, one relative path a line.
pub const MANIFEST: &str = ".netsim-outputs";
/// Where a run stages its files before moving them into place.
const STAGING: &str = ".netsim-staging";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the directory holds files netsim did not write (such as {example}); \
         nothing was written. Choose an empty or new directory with --out, or pass --force \
         to write netsim's outputs beside them (netsim never removes files it did not write)"
    )]
    NotOurs { path: PathBuf, example: String },
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },
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

/// The files a previous run listed in `out`'s manifest (relative paths), if it has one.
fn previous_outputs(out: &Path) -> Option<BTreeSet<PathBuf>> {
    let text = fs::read_to_string(out.join(MANIFEST)).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(PathBuf::from)
            // Only plain relative paths below `out`: a manifest never points elsewhere.
            .filter(|path| {
                path.components()
                    .all(|part| matches!(part, std::path::Component::Normal(_)))
            })
            .collect(),
    )
}

/// Says whether a run may write into `out`: it does not exist, is empty, was written
/// by netsim (it has a manifest), or `force` is given. Call it before the run, so a
/// refusal costs nothing.
pub fn check_output_dir(out: &Path, force: bool) -> Result<(), OutputError> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(OutputError::NotADirectory {
            path: out.to_path_buf(),
        });
    }
    if force || out.join(MANIFEST).is_file() {
        return Ok(());
    }
    let mut names: Vec<String> = fs::read_dir(out)
        .map_err(io(out))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != STAGING)
        .collect();
    names.sort();
    match names.first() {
        None => Ok(()),
        Some(example) => Err(OutputError::NotOurs {
            path: out.to_path_buf(),
            example: example.clone(),
        }),
    }
}

/// Writes the outputs of a run into `out`, replacing the previous run's outputs there
/// and touching nothing else. `force` allows a directory netsim did not write.
pub fn write_run(out: &Path, run: &RunOutputs, force: bool) -> Result<(), OutputError> {
    check_output_dir(out, force)?;
    fs::create_dir_all(out).map_err(io(out))?;
    let staging = out.join(STAGING);
    if staging.exists() {
        // Only a crashed run of ours leaves this behind; its name is netsim's.
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io(&staging))?;
    let written = write_into(&staging, run);
    let files = match written {
        Ok(files) => files,
        Err(error) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    let moved = replace_outputs(out, &staging, &files);
    let _ = fs::remove_dir_all(&staging);
    moved
}

/// Removes the previous run's files (as its manifest lists them) and moves the staged
/// `files` into place, then writes the new manifest.
fn replace_outputs(out: &Path, staging: &Path, files: &[PathBuf]) -> Result<(), OutputError> {
    let new: BTreeSet<&PathBuf> = files.iter().collect();
    for old in previous_outputs(out).unwrap_or_default() {
        if !new.contains(&old) {
            let path = out.join(&old);
            if path.is_file() {
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
    }
    for file in files {
        let target = out.join(file);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::rename(staging.join(file), &target).map_err(io(&target))?;
    }
    // A `flows/` directory that the old run made and that is now empty goes too.
    let flows = out.join("flows");
    if flows.is_dir()
        && fs::read_dir(&flows)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    {
        let _ = fs::remove_dir(&flows);
    }
    let mut manifest = String::new();
    for file in files {
        manifest.push_str(&file.to_string_lossy());
        manifest.push('\n');
    }
    let path = out.join(MANIFEST);
    fs::write(&path, manifest).map_err(io(&path))
}

/// Writes every output into `dir`; returns their paths relative to it.
fn write_into(dir: &Path, run: &RunOutputs) -> Result<Vec<PathBuf>, OutputError> {
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
    let mut files = vec![PathBuf::from("report.json")];
    if mode == CaptureMode::None {
        return Ok(files);
    }
    let points = &result.network.points;
    let all: Vec<&Hop> = result.journal.hops.iter().collect();
    write_capture_file(&dir.join("capture.pcapng"), points, &all, mode)?;
    files.push(PathBuf::from("capture.pcapng"));

    let flows_dir = dir.join("flows");
    fs::create_dir_all(&flows_dir).map_err(io(&flows_dir))?;
    let jobs: Vec<(usize, PathBuf)> = topology
        .flows
        .iter()
        .enumerate()
        .map(|(index, flow)| (index, flows_dir.join(flow_file_name(&flow.name))))
        .collect();
    files.extend(
        topology
            .flows
            .iter()
            .map(|flow| Path::new("flows").join(flow_file_name(&flow.name))),
    );
    // Each flow's hops, grouped once (in time order, as the journal holds them).
    let mut hops_by_flow: Vec<Vec<&Hop>> = vec![Vec::new(); topology.flows.len()];
    for hop in &result.journal.hops {
        if let Some(list) = hops_by_flow.get_mut(hop.flow as usize) {
            list.push(hop);
        }
    }
    let hops_by_flow = &hops_by_flow;
    let threads = threads.clamp(1, jobs.len().max(1));
    let chunk = jobs.len().div_ceil(threads).max(1);
    let results: Vec<Result<(), OutputError>> = crossbeam::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|batch| {
                scope.spawn(move |_| -> Result<(), OutputError> {
                    for (index, path) in batch {
                        write_capture_file(path, points, &hops_by_flow[*index], mode)?;
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
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(files)
}

/// `flows/NAME.pcapng`: the flow's name, with anything that is not a plain file-name
/// character replaced, so a name never reaches outside `flows/`.
fn flow_file_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = if safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    };
    format!("{safe}.pcapng")
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
