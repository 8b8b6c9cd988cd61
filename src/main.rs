//! The `netsim` command line (SPEC §1). Exit codes: 0 success, 1 an expectation
//! failed, 2 the input is invalid.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use netsim::capture::CaptureMode;
use netsim::topology::{self, ConfigError, Topology};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "netsim",
    version,
    about = "Packet-path emulator for Kubernetes CNI networking on Tanzu / vSphere Kubernetes Service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum CaptureArg {
    /// Every capture point, including what a node does inside (antrea-gw0,
    /// antrea-tun0, the node's end of each pod veth)
    All,
    /// One view of each wire: pod eth0, node eth0 (Geneve as on the underlay),
    /// router and host interfaces; about half the packets of `all`
    Edges,
    /// No pcapng, report.json only (memory stays flat)
    None,
}

impl From<CaptureArg> for CaptureMode {
    fn from(value: CaptureArg) -> Self {
        match value {
            CaptureArg::All => CaptureMode::All,
            CaptureArg::Edges => CaptureMode::Edges,
            CaptureArg::None => CaptureMode::None,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
    Icmp,
}

impl ProtocolArg {
    fn name(self) -> &'static str {
        match self {
            ProtocolArg::Tcp => "tcp",
            ProtocolArg::Udp => "udp",
            ProtocolArg::Icmp => "icmp",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum MatrixProtocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Copy, ValueEnum)]
enum MatrixFormat {
    Text,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum Command {
    /// Run every [[flow]]; write report.json, capture.pcapng and flows/*.pcapng.
    Run {
        topology: PathBuf,
        /// Output directory (default: pcaps/<topology name>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write into an output directory that holds files netsim did not write
        /// (they are left untouched; only netsim's own outputs are replaced).
        #[arg(long)]
        force: bool,
        /// Which capture points are written.
        #[arg(long, value_enum, default_value = "all")]
        capture: CaptureArg,
        /// Threads that simulate the fabric's parts and write per-flow captures
        /// (outputs are byte-identical for every count).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Overrides [topology] seed.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Print nothing on success (the exit code says how it went; errors still
        /// go to stderr).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Validate the file and evaluate every [[expect]]; exit 1 if one fails.
    Check {
        topology: PathBuf,
        /// Print only the expectations that failed.
        #[arg(long, short)]
        quiet: bool,
        /// Also write the expectations as JUnit XML to this file (replaced whole, or
        /// not at all).
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Threads that simulate the fabric's parts (the verdicts do not depend on it).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Send one exchange and print every hop: device, interface, lookup, match, rewrite.
    Trace {
        topology: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
        #[arg(long)]
        port: Option<u16>,
    },
    /// Print each router's RIB (every candidate, its origin, why it lost) and FIB,
    /// and each node's routing table.
    Routes {
        topology: PathBuf,
        /// Only this router (or node).
        #[arg(long)]
        router: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The reachability truth table policy gives between pods (and named hosts)
    /// for one protocol and port: rows sources, columns destinations, `.` allowed,
    /// `X` blocked, each cell with the rules that decided it. It evaluates the
    /// compiled policy (the same rules `run` enforces: the source's egress, the
    /// destination's ingress), not a packet per cell, so routing and NAT play no
    /// part.
    Matrix {
        topology: PathBuf,
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: MatrixProtocol,
        /// Only the pods of this namespace (no hosts).
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: MatrixFormat,
    },
    /// Write a topology at the scale of the VKS maxima (150 nodes × 110 pods, 1,000
    /// NetworkPolicies, 500 Services by default) for scale measurements: pods spread
    /// over namespaces and apps, a Service per app, policies by namespace and pod
    /// selector, flows across nodes, through Services and out.
    Generate {
        #[command(flatten)]
        options: netsim::generate::ScaleOptions,
        /// Write here (whole, or not at all) instead of to stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace `--out` if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Measure the forwarding core: packets/s, bits/s and ns/packet per scenario and
    /// thread count. ns/packet is CPU time per packet: wall time × threads ÷ packets
    /// (so on N threads that scale perfectly it stays what it is on one).
    Bench {
        topology: Option<PathBuf>,
        /// Established flows per scenario, sent in turn (1,000: as many as the
        /// OVS-DPDK reference in `benches/compare.sh` replays)
        #[arg(long, default_value_t = 1000)]
        flows: usize,
        /// Packets per scenario run (default: 10,000,000 for established
        /// scenarios, long enough to time at tens of ns each — 1,000,000 with
        /// capture on, about 1.2 GB of pcapng with every hop — and 500,000 for
        /// new-flow ones, which walk every packet).
        #[arg(long)]
        packets: Option<usize>,
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Thread counts to measure, e.g. `1,2,4` (default: 1 and every count up to
        /// the cores).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Run each scenario this many times and report the median (by packets/s).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Record every hop (or the edges) and write it as pcapng, as `run` does;
        /// the scenario then reports captured packets/s and bytes/s too.
        #[arg(long, value_enum, default_value = "none")]
        capture: CaptureArg,
        /// Where the capture files go (kept; one per scenario and thread). Without
        /// it they go to a temporary directory and are removed after each scenario.
        #[arg(long)]
        capture_dir: Option<PathBuf>,
        /// Only the scenarios whose name contains this, e.g. `established` or
        /// `clusterip` (default: every scenario).
        #[arg(long)]
        scenario: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

fn load(path: &Path, seed: Option<u64>) -> Result<Topology, ConfigError> {
    let mut topology = topology::load(path)?;
    if let Some(seed) = seed {
        topology.seed = seed;
    }
    Ok(topology)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(code) => code,
        Err(error) => {
            if let Some(config) = error.downcast_ref::<ConfigError>() {
                eprintln!("{config}");
                return ExitCode::from(2);
            }
            if let Some(output) = error.downcast_ref::<netsim::output::OutputError>() {
                eprintln!("netsim: {output}");
                return ExitCode::from(2);
            }
            eprintln!("netsim: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            topology: path,
            out,
            force,
            capture,
            threads,
            seed,
            format,
            quiet,
        } => {
            let topology = load(&path, seed)?;
            let out = out.unwrap_or_else(|| PathBuf::from("pcaps").join(&topology.name));
            netsim::output::check_output_dir(&out, force)?;
            let capture: CaptureMode = capture.into();
            // Only what the capture writes and the report's paths are recorded: without
            // captures memory stays flat.
            let result = simulate(&topology, capture, usable(threads), format == Format::Text);
            let report = netsim::report::build(&topology, &result);
            netsim::output::write_run(
                &out,
                &netsim::output::RunOutputs {
                    topology: &topology,
                    result: &result,
                    report: &report,
                    capture,
                    threads,
                },
                force,
            )
            .context("writing outputs")?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Text if quiet => {}
                Format::Text => {
                    print!("{}", netsim::report::text_summary(&report));
                    println!("wrote {}", out.display());
                }
            }
            let code = exit_for(&report);
            leave_to_exit((topology, result, report));
            Ok(code)
        }
        Command::Check {
            topology: path,
            quiet,
            junit,
            threads,
        } => {
            let topology = load(&path, None)?;
            let result = simulate(&topology, CaptureMode::None, usable(threads), !quiet);
            let report = netsim::report::build(&topology, &result);
            if let Some(file) = &junit {
                write_whole(file, &netsim::report::junit(&report))
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            if quiet {
                for failed in report.expectations.iter().filter(|e| !e.ok) {
                    println!("[FAIL] {}\n        got: {}", failed.expect, failed.got);
                }
            } else {
                print!("{}", netsim::report::text_summary(&report));
            }
            let code = exit_for(&report);
            leave_to_exit((topology, result, report));
            Ok(code)
        }
        Command::Trace {
            topology: path,
            from,
            to,
            protocol,
            port,
        } => {
            let mut topology = load(&path, None)?;
            let flow = topology::endpoint::command_line_flow(
                &topology,
                &from,
                &to,
                protocol.map(ProtocolArg::name),
                port,
            )?;
            topology.flows = vec![flow];
            topology.expectations.clear();
            let result = netsim::sim::runner::run(&topology);
            print!("{}", netsim::trace::render(&topology, &result));
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            options,
            out,
            force,
        } => {
            let text = match netsim::generate::scale_topology(&options) {
                Ok(text) => text,
                Err(error) => {
                    eprintln!("netsim: {error}");
                    return Ok(ExitCode::from(2));
                }
            };
            match out {
                None => print!("{text}"),
                Some(file) if file.exists() && !force => {
                    eprintln!(
                        "netsim: {} exists; pass --force to replace it",
                        file.display()
                    );
                    return Ok(ExitCode::from(2));
                }
                Some(file) => write_whole(&file, &text)
                    .map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Routes {
            topology: path,
            router,
            format,
        } => {
            let topology = load(&path, None)?;
            if let Some(name) = &router {
                let known = topology.routers.iter().any(|r| &r.name == name)
                    || topology
                        .clusters
                        .iter()
                        .any(|c| c.nodes.iter().any(|n| &n.name == name));
                if !known {
                    eprintln!("netsim: no router or node named `{name}`");
                    return Ok(ExitCode::from(2));
                }
            }
            let network = netsim::sim::network::build(&topology);
            let routes = netsim::report::routes::build(&network, router.as_deref());
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&routes)?),
                Format::Text => print!("{}", netsim::report::routes::text(&routes)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Matrix {
            topology: path,
            port,
            protocol,
            namespace,
            format,
        } => {
            let topology = load(&path, None)?;
            let protocol = match protocol {
                MatrixProtocol::Tcp => netsim::wire::PROTOCOL_TCP,
                MatrixProtocol::Udp => netsim::wire::PROTOCOL_UDP,
                MatrixProtocol::Sctp => netsim::topology::policy::PROTOCOL_SCTP,
            };
            let matrix =
                netsim::report::matrix::build(&topology, protocol, port, namespace.as_deref());
            match format {
                MatrixFormat::Json => println!("{}", serde_json::to_string_pretty(&matrix)?),
                MatrixFormat::Csv => print!("{}", netsim::report::matrix::csv(&matrix)),
                MatrixFormat::Text => print!("{}", netsim::report::matrix::text(&matrix)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            topology: path,
            flows,
            packets,
            size,
            threads,
            repeat,
            capture,
            capture_dir,
            scenario,
            format,
        } => {
            let topology = match path {
                Some(path) => load(&path, None)?,
                None => netsim::bench::default_topology(),
            };
            let options = netsim::bench::BenchOptions {
                flows,
                packets,
                size,
                threads,
                capture: capture.into(),
                repeat,
                capture_dir,
                scenario,
            };
            let results = benchmark(&topology, &options, format == Format::Text)
                .map_err(anyhow::Error::msg)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&results)?),
                Format::Text => print!("{}", netsim::bench::text(&results)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Shards for the simulation: no more than the machine's cores, which would only
/// wait on one another at every window.
fn usable(threads: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    threads.clamp(1, cores)
}

/// Hands a run's state to the process's exit instead of dropping it: the command
/// returns next, and the kernel takes the memory back at once, where freeing a
/// 10,000-flow run's journal, sockets and devices piece by piece took a tenth of
/// its time. Nothing in it has a destructor with an effect (files are written and
/// closed by then).
fn leave_to_exit<T>(state: T) {
    std::mem::forget(state);
}

/// Runs the simulation, with a progress bar over simulated time when stderr is a
/// terminal and the output is text (SPEC §1).
fn simulate(
    topology: &Topology,
    capture: CaptureMode,
    threads: usize,
    text: bool,
) -> netsim::sim::runner::RunResult {
    use std::io::IsTerminal;
    if !text || !std::io::stderr().is_terminal() || !std::io::stdout().is_terminal() {
        return netsim::sim::runner::run_with_progress(topology, capture, threads, &mut |_, _| {});
    }
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} simulating {msg} [{bar:30}] {percent}%")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(topology.name.clone());
    let result =
        netsim::sim::runner::run_with_progress(topology, capture, threads, &mut |now, horizon| {
            bar.set_position(now.saturating_mul(1000) / horizon.max(1));
        });
    bar.finish_and_clear();
    result
}

/// Runs the benchmark, with a progress bar over scenarios on a terminal.
fn benchmark(
    topology: &Topology,
    options: &netsim::bench::BenchOptions,
    text: bool,
) -> Result<netsim::bench::BenchResults, String> {
    use std::io::IsTerminal;
    if !text || !std::io::stderr().is_terminal() || !std::io::stdout().is_terminal() {
        return netsim::bench::run(topology, options);
    }
    let bar = indicatif::ProgressBar::new(1);
    let results = netsim::bench::run_with_progress(topology, options, &mut |done, total| {
        bar.set_length(u64::try_from(total).unwrap_or(1));
        bar.set_position(u64::try_from(done).unwrap_or(0));
    });
    bar.finish_and_clear();
    results
}

fn exit_for(report: &netsim::report::Report) -> ExitCode {
    if report.expectations.iter().all(|e| e.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Writes `text` to `file` through a temporary file beside it and a rename, so the
/// file is either the old one or the whole new one.
fn write_whole(file: &Path, text: &str) -> std::io::Result<()> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "junit.xml".into());
    let temporary = file.with_file_name(format!(".{name}.netsim-tmp"));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}
