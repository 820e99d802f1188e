//! The `segq` command line: one module per command family, over the
//! library. Commands that open a data directory go through [`data`]; the
//! generated workload's arguments are [`args::WorkloadArgs`].
//!
//! Unsafe code is denied here as in the library.

#![deny(unsafe_code)]

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use segq::Error;

mod args;
mod audit;
mod bench;
mod data;
mod demo;
mod generate;
mod heap;
mod loadtest;
mod logging;
mod peers;
mod segments;
mod serve;
mod snapshot;
mod sync;
mod users;

use args::WorkloadArgs;

#[derive(Parser)]
#[command(
    name = "segq",
    version,
    about = "Segment query engine for partner cohorts"
)]
struct Cli {
    /// How diagnostics are written to stderr: `text` lines for people, or
    /// `json`, one object a line (default: $SEGQ_LOG_FORMAT, else text).
    /// Levels come from $SEGQ_LOG, else $RUST_LOG (such as `warn` or
    /// `info,segq::server=debug`); default `info`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<logging::Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the small workload, replay the wire examples, and evaluate
    /// combined segment filters; with --serve, serve it with the web
    /// console on loopback instead.
    Demo {
        #[command(flatten)]
        workload: WorkloadArgs,
        #[command(flatten)]
        serve: demo::ServeDemoArgs,
    },
    /// Generate a workload and print what it holds.
    Generate {
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// Count (or list) the users of a segment filter on a generated workload.
    Query(generate::QueryArgs),
    /// Serve the partner cohort import API, the admin API and the segment
    /// API over HTTP.
    Serve(serve::ServeArgs),
    /// Print the configuration `segq serve` would run with, as JSON:
    /// `segq.json`, overridden by `SEGQ_*` environment variables, then by
    /// the flags; secrets masked.
    Config(serve::ConfigArgs),
    /// Write, inspect, verify, bench and compact snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Measure the segment evaluators on generated workloads.
    ///
    /// Count latency of the six query shapes (the fast evaluator over a
    /// mapped snapshot, and the reference), a single cohort's count,
    /// one-user checks, a member list, thread and size scaling.
    Bench(bench::BenchArgs),
    /// A workspace's audit log (who changed what through the admin API),
    /// on a running server or a data directory.
    Audit(audit::AuditArgs),
    /// Manage the users of a data directory offline.
    Users {
        #[command(subcommand)]
        command: users::UsersCommand,
    },
    /// Count the users of a segment (or estimate it from a sample), on a
    /// running server or a data directory.
    Count(segments::CountArgs),
    /// Print one page of a segment's members (JSON Lines or CSV); the next
    /// page's cursor goes to stderr.
    Members(segments::MembersArgs),
    /// Whether a user is in a segment.
    Check(segments::CheckArgs),
    /// Keep a partner cohort on a server equal to a file of identifiers:
    /// creates or renames the cohort, then sends only who entered and
    /// who left since the last sync (kept in a local state file), once or
    /// every period.
    Sync(Box<sync::SyncArgs>),
    /// Load a server on loopback: sync clients whose cohorts evolve, query
    /// clients counting and checking, a compaction in the middle; then the
    /// figures and a check that every cohort holds what its client last
    /// had acknowledged.
    Loadtest(loadtest::LoadtestArgs),
}

/// Why a command failed.
pub enum Failure {
    Lib(Error),
    /// A server's error answer.
    Server {
        status: u16,
        message: String,
    },
    /// Anything else, said in full.
    Other(String),
    /// Exit with this status, having said why already.
    Exit(u8),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Lib(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = logging::init(cli.log_format, &serve::env_var) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let ran = run(cli);
    // The held access lines, before anything said below.
    logging::flush();
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Lib(e)) => {
            eprintln!("error: {e}");
            match e {
                Error::FilterParse(_)
                | Error::UnknownPartner { .. }
                | Error::NoSuchCohort { .. }
                | Error::AmbiguousCohortName { .. }
                | Error::InvalidArgument(_)
                | Error::InvalidCursor(_)
                | Error::InvalidIdentifier { .. }
                | Error::ConfigEnv { .. } => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
        Err(Failure::Server { status, message }) => {
            eprintln!("error: the server answered {status}: {message}");
            if (400..500).contains(&status) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
        Err(Failure::Other(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

/// A write to stdout that failed.
pub fn io_err(e: io::Error) -> Error {
    Error::io("<stdout>", e)
}

fn run(cli: Cli) -> Result<(), Failure> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match cli.command {
        Command::Count(args) => segments::count(args, &mut out)?,
        Command::Members(args) => segments::members(args, &mut out)?,
        Command::Check(args) => segments::check(args, &mut out)?,
        Command::Sync(args) => sync::run(*args, &mut out)?,
        Command::Loadtest(args) => loadtest::run(args, &mut out)?,
        Command::Serve(args) => serve::run(args)?,
        Command::Config(args) => serve::show_config(args, &mut out)?,
        Command::Snapshot { command } => snapshot::run(command, &mut out)?,
        Command::Bench(args) => bench::run(args, &mut out)?,
        Command::Users { command } => users::run(command, &mut out)?,
        Command::Audit(args) => audit::run(args, &mut out)?,
        Command::Demo { workload, serve } => {
            if serve.serve {
                drop(out);
                demo::serve(serve, workload.spec())?;
                return Ok(());
            }
            demo::run(&mut out, workload.spec())?;
        }
        Command::Generate { workload } => generate::generate(&mut out, workload.spec())?,
        Command::Query(args) => generate::query(args, &mut out)?,
    }
    out.flush().map_err(io_err)?;
    Ok(())
}
