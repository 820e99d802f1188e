//! The `segq` command line.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use segq::segment::{self, eval};
use segq::workload::{self, CohortKind, Spec};
use segq::{Error, UserRef};

#[derive(Parser)]
#[command(
    name = "segq",
    version,
    about = "Segment query engine for partner cohorts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The generated workload to run on (../shared/WORKLOAD.md).
#[derive(Args, Clone, Copy)]
struct WorkloadArgs {
    /// Number of users.
    #[arg(long, default_value_t = Spec::SMALL.users)]
    users: u32,
    /// Number of cohorts.
    #[arg(long, default_value_t = Spec::SMALL.cohorts)]
    cohorts: u32,
    /// Random seed: the same seed gives the same workload.
    #[arg(long, default_value_t = Spec::SMALL.seed)]
    seed: u64,
}

impl WorkloadArgs {
    fn spec(self) -> Spec {
        Spec {
            users: self.users,
            cohorts: self.cohorts,
            seed: self.seed,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate the small workload, replay the wire examples, and evaluate
    /// combined segment filters.
    Demo {
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// Generate a workload and print what it holds.
    Generate {
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// Count (or list) the users of a segment filter on a generated workload.
    Query {
        #[command(flatten)]
        workload: WorkloadArgs,
        /// Print the members (external ids; `user_id:N` for anonymous users).
        #[arg(long)]
        members: bool,
        /// With --members, print at most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Also answer whether this user is in the segment:
        /// `u42`, `external_id:u42`, `alias:email:u42@example.com` or
        /// `device_id:d42`.
        #[arg(long)]
        check: Option<String>,
        /// The filter, in the text form or as JSON (see the README).
        filter: String,
    },
    /// Serve the partner cohort import API and the admin API over HTTP.
    Serve(ServeArgs),
    /// Manage the users of a data directory offline.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The data directory (created if missing).
    #[arg(long, default_value = "./segq-data")]
    data: PathBuf,
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Partner requests per data import key per hour (0: no limit);
    /// overrides the configuration file.
    #[arg(long)]
    rate_limit_per_hour: Option<u64>,
    /// The largest partner request body in bytes; overrides the
    /// configuration file.
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// The largest bulk user import body in bytes (0: no limit).
    #[arg(long, default_value_t = segq::server::DEFAULT_MAX_IMPORT_BYTES)]
    max_import_bytes: u64,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Bulk-load users from a JSON Lines (.jsonl, .ndjson) or CSV (.csv)
    /// file into a workspace of a data directory. The server must not be
    /// running on that directory.
    Import {
        /// The file to load.
        file: PathBuf,
        /// The data directory.
        #[arg(long, default_value = "./segq-data")]
        data: PathBuf,
        /// The workspace to load into.
        #[arg(long)]
        workspace: String,
        /// The format, when the file's extension does not tell: jsonl or csv.
        #[arg(long)]
        format: Option<String>,
        /// Create the workspace if it does not exist.
        #[arg(long)]
        create_workspace: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                Error::FilterParse(_)
                | Error::UnknownPartner { .. }
                | Error::NoSuchCohort { .. }
                | Error::AmbiguousCohortName { .. }
                | Error::InvalidArgument(_)
                | Error::InvalidIdentifier { .. } => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn io_err(e: io::Error) -> Error {
    Error::Io {
        path: "<stdout>".into(),
        source: e,
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match cli.command {
        Command::Serve(args) => serve(args)?,
        Command::Users {
            command:
                UsersCommand::Import {
                    file,
                    data,
                    workspace,
                    format,
                    create_workspace,
                },
        } => users_import(
            &mut out,
            &file,
            &data,
            &workspace,
            format.as_deref(),
            create_workspace,
        )?,
        Command::Demo { workload } => {
            segq::demo::run(&mut out, workload.spec())?;
        }
        Command::Generate { workload } => generate(&mut out, workload.spec())?,
        Command::Query {
            workload,
            members,
            limit,
            check,
            filter,
        } => {
            // Parse before generating: a bad filter fails at once.
            let filter = segment::parse(&filter)?;
            let check = check.as_deref().map(UserRef::parse_cli).transpose()?;
            let ws = workload::generate("query", workload.spec())?.workspace;
            let filter = segment::resolve(&ws, &filter)?;
            let t = Instant::now();
            if members {
                let ids = eval::members(&ws, &filter)?;
                for id in ids.iter().take(limit.unwrap_or(usize::MAX)) {
                    writeln!(out, "{}", ws.users.display_id(*id)).map_err(io_err)?;
                }
                eprintln!("{} members in {:?}", ids.len(), t.elapsed());
            } else {
                let n = eval::count(&ws, &filter)?;
                writeln!(out, "{n}").map_err(io_err)?;
                eprintln!("counted in {:?}", t.elapsed());
            }
            if let Some(user) = check {
                let m = eval::contains(&ws, &filter, &user)?;
                let answer = match m {
                    eval::Membership::Member(_) => "yes",
                    eval::Membership::NotMember(_) => "no",
                    eval::Membership::UnknownUser => "no (unknown user)",
                };
                writeln!(out, "{user}: {answer}").map_err(io_err)?;
            }
        }
    }
    out.flush().map_err(io_err)
}

/// `segq users import`: streams a file into a workspace in batches, with a
/// progress bar on stderr (hidden when stderr is not a terminal).
fn users_import(
    out: &mut dyn Write,
    file: &std::path::Path,
    data: &std::path::Path,
    workspace: &str,
    format: Option<&str>,
    create_workspace: bool,
) -> Result<(), Error> {
    use segq::bulk::{self, Format};
    let format = match format {
        Some(name) => Format::from_name(name).ok_or_else(|| {
            Error::InvalidArgument(format!("unknown format {name:?}: expected jsonl or csv"))
        })?,
        None => Format::from_path(file).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cannot tell the format of {}: name it .jsonl, .ndjson or .csv, or pass --format",
                file.display()
            ))
        })?,
    };
    let name = file.display().to_string();
    let io_error = |e: io::Error| Error::Io {
        path: name.clone(),
        source: e,
    };
    let f = std::fs::File::open(file).map_err(io_error)?;
    let len = f.metadata().map_err(io_error)?.len();

    let (engine, _) = segq::engine::Engine::open(data)?;
    if create_workspace {
        engine.create_workspace(workspace)?;
    }
    let handle = engine.workspace(workspace).ok_or_else(|| {
        eprintln!("hint: create it with the admin API, or pass --create-workspace");
        Error::UnknownWorkspace {
            name: workspace.to_string(),
        }
    })?;

    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let t = Instant::now();
    let totals = bulk::load(
        f,
        &name,
        format,
        |batch| {
            let r = handle.upsert_users(batch.users)?;
            Ok((r.created, r.updated, r.failed))
        },
        |read, totals| {
            bar.set_position(read);
            bar.set_message(format!(
                "created {} updated {} failed {}",
                totals.created, totals.updated, totals.failed
            ));
        },
    );
    bar.finish_and_clear();
    let totals = totals?;
    engine.sync_all()?;
    // Synced: exit without freeing the in-memory state (see `serve`).
    std::mem::forget(engine);
    for e in &totals.errors {
        eprintln!("line {}: {}", e.line, e.message);
    }
    if totals.failed > totals.errors.len() as u64 {
        eprintln!(
            "... and {} more failed lines",
            totals.failed - totals.errors.len() as u64
        );
    }
    writeln!(
        out,
        "created {}, updated {}, failed {} in {:.2?}",
        totals.created,
        totals.updated,
        totals.failed,
        t.elapsed()
    )
    .map_err(io_err)
}

/// `segq serve`: opens the data directory, binds, and serves until SIGINT
/// or SIGTERM.
fn serve(args: ServeArgs) -> Result<(), Error> {
    let (engine, new_token) = segq::engine::Engine::open(&args.data)?;
    if let Some(token) = new_token {
        eprintln!("admin token: {token}");
        eprintln!("(shown once: keep it; only its hash is stored)");
    }
    let mut options = segq::server::ServerOptions::from_config(engine.config());
    if let Some(n) = args.rate_limit_per_hour {
        options.rate_limit_per_hour = n;
    }
    if let Some(n) = args.max_body_bytes {
        options.max_body_bytes = n;
    }
    options.max_import_bytes = (args.max_import_bytes > 0).then_some(args.max_import_bytes);
    let listen_err = |e: io::Error| Error::Io {
        path: args.listen.clone(),
        source: e,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            path: "<tokio runtime>".into(),
            source: e,
        })?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        eprintln!("listening on {addr}");
        // Everything is synced when `serve_with` returns: the process then
        // exits without freeing the in-memory state (seconds for millions
        // of users); the OS reclaims it and releases the directory lock.
        std::mem::forget(engine.clone());
        segq::server::serve_with(engine, options, listener, async {
            segq::server::shutdown_signal().await;
            eprintln!("shutting down: finishing in-flight requests");
        })
        .await
        .map_err(|e| Error::Io {
            path: format!("serving on {addr}"),
            source: e,
        })?;
        eprintln!("stopped");
        Ok(())
    })
}

fn generate(out: &mut dyn Write, spec: Spec) -> Result<(), Error> {
    let t = Instant::now();
    let w = workload::generate("generated", spec)?;
    let took = t.elapsed();
    let ws = &w.workspace;
    let (mut anonymous, mut aliased) = (0u64, 0u64);
    for id in 0..ws.users.len() {
        if let Some(u) = ws.users.get(segq::UserId(id)) {
            anonymous += u64::from(u.is_anonymous());
            aliased += u64::from(!u.aliases.is_empty());
        }
    }
    let e = io_err;
    writeln!(
        out,
        "{} users ({} anonymous, {} with an email alias), {} cohorts, seed {}, generated in {:.2?}",
        ws.users.len(),
        anonymous,
        aliased,
        ws.cohorts.len(),
        spec.seed,
        took
    )
    .map_err(e)?;
    writeln!(
        out,
        "{:<8} {:<7} {:<22} {:>9} {:>9} {:>12}",
        "cohort", "band", "kind", "target", "actual", "members"
    )
    .map_err(e)?;
    let mut fingerprint: u64 = 0xcbf2_9ce4_8422_2325;
    for c in &w.cohorts {
        let kind = match c.kind {
            CohortKind::Behavioural { k } => format!("behavioural k={k}"),
            CohortKind::Clustered { start, len } => format!("clustered {start}+{len}"),
        };
        let actual = c.members as f64 / f64::from(ws.users.len());
        writeln!(
            out,
            "{:<8} {:<7} {:<22} {:>8.4}% {:>8.4}% {:>12}",
            c.cohort_id,
            c.band,
            kind,
            c.target_density * 100.0,
            actual * 100.0,
            c.members
        )
        .map_err(e)?;
        if let Ok(cohort) = ws.cohorts.resolve(workload::PARTNER, &c.cohort_id) {
            for m in cohort.members.iter() {
                fingerprint = (fingerprint ^ u64::from(m)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    for b in ws.users.buckets() {
        fingerprint = (fingerprint ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    writeln!(
        out,
        "fingerprint {fingerprint:016x} (equal runs give equal fingerprints)"
    )
    .map_err(e)?;
    Ok(())
}
