//! The `segq` command line.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use segq::query::render;
use segq::query::service as segments;
use segq::segment::{self, eval};
use segq::workload::{self, CohortKind, Spec};
use segq::{Error, UserRef};

mod bench_cmd;
mod snapshot_cmd;

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
    /// Serve the partner cohort import API, the admin API and the segment
    /// API over HTTP.
    Serve(ServeArgs),
    /// Write, inspect, verify, bench and compact snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: snapshot_cmd::SnapshotCommand,
    },
    /// Measure the segment evaluators on generated workloads.
    ///
    /// Count latency of the six query shapes (the fast evaluator over a
    /// mapped snapshot, and the reference), a single cohort's count,
    /// one-user checks, a member list, thread and size scaling.
    Bench(bench_cmd::BenchArgs),
    /// Manage the users of a data directory offline.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Count the users of a segment (or estimate it from a sample), on a
    /// running server or a data directory.
    Count {
        #[command(flatten)]
        target: TargetArgs,
        /// Estimate from a sample of the random buckets instead.
        #[arg(long)]
        estimate: bool,
        /// With --estimate: how many of the 10,000 buckets to sample.
        #[arg(long, requires = "estimate")]
        sample_buckets: Option<u16>,
        /// With --estimate: the first sampled bucket (random if not given).
        #[arg(long, requires = "estimate")]
        sample_start: Option<u16>,
        /// Also show the plan: the normalised tree, each leaf's
        /// cardinality, the evaluation order, chunks touched and skipped.
        #[arg(long, conflicts_with = "estimate")]
        explain: bool,
        /// The filter (text form or JSON), or a saved segment's id (seg_…).
        filter: String,
    },
    /// Print one page of a segment's members (JSON Lines or CSV); the next
    /// page's cursor goes to stderr.
    Members {
        #[command(flatten)]
        target: TargetArgs,
        /// Members per page (1 to 1,000,000).
        #[arg(long, default_value_t = segq::query::service::DEFAULT_LIMIT)]
        limit: u64,
        /// Where to start: the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Extra fields, comma-separated: aliases, bucket.
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
        /// The filter (text form or JSON), or a saved segment's id (seg_…).
        filter: String,
    },
    /// Whether a user is in a segment.
    Check {
        #[command(flatten)]
        target: TargetArgs,
        /// The filter (text form or JSON), or a saved segment's id (seg_…).
        filter: String,
        /// `u42`, `external_id:u42`, `alias:email:u42@example.com` or
        /// `device_id:d42`.
        user: String,
    },
}

/// Where a segment command runs: on a running server (--server, --token),
/// or on a data directory read directly (--data): read-only, nothing in it
/// is created or changed, and it may be one a server is serving.
#[derive(Args)]
struct TargetArgs {
    /// The workspace.
    #[arg(long)]
    workspace: String,
    /// A running server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, conflicts_with = "data")]
    server: Option<String>,
    /// The admin token for --server (default: the SEGQ_TOKEN environment
    /// variable).
    #[arg(long, requires = "server")]
    token: Option<String>,
    /// The data directory (default ./segq-data when --server is not given).
    #[arg(long)]
    data: Option<PathBuf>,
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
    /// Threads that evaluate segment queries chunk by chunk (default: one
    /// per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    query_threads: Option<u16>,
    /// Seconds a connection has to send a request's headers; overrides
    /// the configuration file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_secs: Option<u64>,
    /// Seconds to wait for the next part of a request body; overrides the
    /// configuration file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    body_read_timeout_secs: Option<u64>,
    /// The slowest average request body rate after the body timeout's
    /// grace, in bytes per second (0: none); overrides the configuration
    /// file.
    #[arg(long)]
    min_body_bytes_per_sec: Option<u64>,
    /// Seconds a kept-alive connection may wait idle for its next request;
    /// overrides the configuration file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: Option<u64>,
    /// Open connections at most; overrides the configuration file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Partner request body bytes held in memory at once, all requests
    /// together; overrides the configuration file.
    #[arg(long)]
    max_buffered_body_bytes: Option<usize>,
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

/// Why a command failed.
enum Failure {
    Lib(Error),
    /// A server's error answer.
    Server {
        status: u16,
        message: String,
    },
    /// Anything else, said in full.
    Other(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Lib(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
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
                | Error::InvalidIdentifier { .. } => ExitCode::from(2),
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
    }
}

fn io_err(e: io::Error) -> Error {
    Error::Io {
        path: "<stdout>".into(),
        source: e,
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match cli.command {
        Command::Count {
            target,
            estimate,
            sample_buckets,
            sample_start,
            explain,
            filter,
        } => {
            // Bad input fails before the data directory is opened.
            Place::target(&filter)?;
            let at = Place::open(&target)?;
            let mode = if estimate {
                use rand::Rng;
                segments::CountMode::Estimate {
                    start: match sample_start {
                        Some(s) => s,
                        None => rand::thread_rng().gen_range(0..segq::ids::BUCKETS),
                    },
                    width: sample_buckets.unwrap_or(segments::DEFAULT_SAMPLE_BUCKETS),
                }
            } else {
                segments::CountMode::Exact { explain }
            };
            let answer = at.count(&filter, mode)?;
            writeln!(out, "{answer}").map_err(io_err)?;
        }
        Command::Members {
            target,
            limit,
            cursor,
            format,
            fields,
            filter,
        } => {
            // Bad input fails before the data directory is opened.
            Place::target(&filter)?;
            let at = Place::open(&target)?;
            let next = at.members(
                &mut out,
                &filter,
                limit,
                cursor.as_deref(),
                &format,
                &fields,
            )?;
            out.flush().map_err(io_err)?;
            if let Some(c) = next {
                eprintln!("next cursor: {c} (pass --cursor {c} for the next page)");
            }
        }
        Command::Check {
            target,
            filter,
            user,
        } => {
            // Bad input fails before the data directory is opened.
            Place::target(&filter)?;
            let user = UserRef::parse_cli(&user)?;
            let at = Place::open(&target)?;
            let answer = at.check(&filter, &user)?;
            writeln!(out, "{answer}").map_err(io_err)?;
        }
        Command::Serve(args) => serve(args)?,
        Command::Snapshot { command } => snapshot_cmd::run(command, &mut out)?,
        Command::Bench(args) => bench_cmd::run(args, &mut out)?,
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
    out.flush().map_err(io_err)?;
    Ok(())
}

/// A saved segment's id, as a segment command's FILTER may give it.
fn is_segment_id(s: &str) -> bool {
    s.strip_prefix("seg_")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Where a segment command runs.
enum Place {
    Server {
        client: reqwest::blocking::Client,
        base: String,
        token: String,
        workspace: String,
    },
    Data {
        handle: std::sync::Arc<segq::engine::WorkspaceHandle>,
    },
}

impl Place {
    fn open(t: &TargetArgs) -> Result<Place, Failure> {
        if let Some(server) = &t.server {
            let token = match &t.token {
                Some(t) => t.clone(),
                None => std::env::var("SEGQ_TOKEN").map_err(|_| {
                    Failure::Other("--server needs --token TOKEN (or SEGQ_TOKEN in the environment): the admin token".into())
                })?,
            };
            let client = reqwest::blocking::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .timeout(None)
                .build()
                .map_err(|e| Failure::Other(format!("cannot make an HTTP client: {e}")))?;
            return Ok(Place::Server {
                client,
                base: server.trim_end_matches('/').to_string(),
                token,
                workspace: t.workspace.clone(),
            });
        }
        let data = t
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from("./segq-data"));
        if !data.join("workspaces").is_dir() {
            return Err(Failure::Other(format!(
                "{} is not a segq data directory (no workspaces folder)",
                data.display()
            )));
        }
        // Read-only: nothing in the directory changes, and a server may be
        // serving it (what its logs held when they were read is answered).
        let engine = segq::engine::Engine::open_read_only(&data)?;
        let handle = engine
            .workspace(&t.workspace)
            .ok_or_else(|| Error::UnknownWorkspace {
                name: t.workspace.clone(),
            })?;
        // Read-only: exit without freeing the in-memory state.
        std::mem::forget(engine);
        Ok(Place::Data { handle })
    }

    fn target(filter: &str) -> Result<segments::Target, Failure> {
        Ok(if is_segment_id(filter) {
            segments::Target::Segment(filter.to_string())
        } else {
            segments::Target::Filter(segment::parse(filter)?)
        })
    }

    /// The request body's `filter` or `segment_id`.
    fn target_json(filter: &str) -> serde_json::Value {
        if is_segment_id(filter) {
            serde_json::json!({"segment_id": filter})
        } else {
            serde_json::json!({"filter": filter})
        }
    }

    /// POSTs a JSON body; an error answer becomes a [`Failure::Server`].
    fn post(
        client: &reqwest::blocking::Client,
        url: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::blocking::Response, Failure> {
        let resp = client
            .post(url)
            .bearer_auth(token)
            .json(body)
            .send()
            .map_err(|e| Failure::Other(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let text = resp.text().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                .unwrap_or(text);
            return Err(Failure::Server { status, message });
        }
        Ok(resp)
    }

    fn post_json(
        client: &reqwest::blocking::Client,
        url: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Failure> {
        Self::post(client, url, token, body)?
            .json()
            .map_err(|e| Failure::Other(format!("{url}: not a JSON answer: {e}")))
    }

    fn count(&self, filter: &str, mode: segments::CountMode) -> Result<serde_json::Value, Failure> {
        match self {
            Place::Data { handle } => Ok(segments::count(handle, &Self::target(filter)?, mode)?),
            Place::Server {
                client,
                base,
                token,
                workspace,
            } => {
                let mut body = Self::target_json(filter);
                let mut url = format!("{base}/workspaces/{workspace}/segments/count");
                match mode {
                    segments::CountMode::Exact { explain } => {
                        if explain {
                            url.push_str("?explain=true");
                        }
                    }
                    segments::CountMode::Estimate { start, width } => {
                        body["estimate"] = true.into();
                        body["sample_start"] = start.into();
                        body["sample_buckets"] = width.into();
                    }
                }
                Self::post_json(client, &url, token, &body)
            }
        }
    }

    /// Writes one page; returns the next page's cursor.
    fn members(
        &self,
        out: &mut dyn Write,
        filter: &str,
        limit: u64,
        cursor: Option<&str>,
        format: &str,
        fields: &[String],
    ) -> Result<Option<String>, Failure> {
        let fmt = render::Format::parse(format)?;
        let extras = render::Extras::parse(fields)?;
        match self {
            Place::Data { handle } => {
                let limit = segments::page_limit(Some(limit))?;
                let page = segments::member_page(handle, &Self::target(filter)?, cursor, limit)?;
                if fmt == render::Format::Csv {
                    out.write_all(render::csv_header(extras).as_bytes())
                        .map_err(io_err)?;
                }
                let mut buf = Vec::new();
                for block in page.members.chunks(segments::STREAM_BLOCK) {
                    buf.clear();
                    render::render_members(&handle.read(), block, fmt, extras, &mut buf);
                    out.write_all(&buf).map_err(io_err)?;
                }
                Ok(page.next)
            }
            Place::Server {
                client,
                base,
                token,
                workspace,
            } => {
                let mut body = Self::target_json(filter);
                body["limit"] = limit.into();
                body["format"] = format.into();
                body["fields"] = fields.into();
                if let Some(c) = cursor {
                    body["cursor"] = c.into();
                }
                let url = format!("{base}/workspaces/{workspace}/segments/members");
                let mut resp = Self::post(client, &url, token, &body)?;
                let next = resp
                    .headers()
                    .get(segq::server::segments::NEXT_CURSOR)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                resp.copy_to(&mut WriteAdapter(out))
                    .map_err(|e| Failure::Other(format!("{url}: the page was cut: {e}")))?;
                Ok(next)
            }
        }
    }

    fn check(&self, filter: &str, user: &UserRef) -> Result<serde_json::Value, Failure> {
        match self {
            Place::Data { handle } => {
                Ok(segments::check_user(handle, &Self::target(filter)?, user)?)
            }
            Place::Server {
                client,
                base,
                token,
                workspace,
            } => {
                let mut body = Self::target_json(filter);
                body["user"] = match user {
                    UserRef::ExternalId(e) => serde_json::json!({"external_id": e}),
                    UserRef::DeviceId(d) => serde_json::json!({"device_id": d}),
                    UserRef::Alias { label, name } => {
                        serde_json::json!({"alias_label": label, "alias_name": name})
                    }
                };
                let url = format!("{base}/workspaces/{workspace}/segments/check");
                Self::post_json(client, &url, token, &body)
            }
        }
    }
}

/// `&mut dyn Write` as a sized writer.
struct WriteAdapter<'a>(&'a mut dyn Write);

impl Write for WriteAdapter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
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

    // Only --create-workspace may make a data directory; a new one's admin
    // token is shown here, once.
    if !create_workspace && !data.join("workspaces").is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a segq data directory (no workspaces folder); pass --create-workspace \
             to make one",
            data.display()
        )));
    }
    let (engine, new_token) = segq::engine::Engine::open(data)?;
    show_new_token(new_token.as_deref());
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
    if let Err(failed) = engine.sync_all() {
        eprintln!("segq: {failed}");
        return Err(failed.into_first());
    }
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

/// Prints an admin token generated by opening a data directory (on
/// stderr): the only time it is seen, since only its digest is stored.
/// Every command that may initialise a data directory calls this.
pub(crate) fn show_new_token(token: Option<&str>) {
    if let Some(token) = token {
        eprintln!("admin token: {token}");
        eprintln!("(shown once: keep it; only its hash is stored)");
    }
}

/// `segq serve`: opens the data directory, binds, and serves until SIGINT
/// or SIGTERM.
fn serve(args: ServeArgs) -> Result<(), Error> {
    if let Some(n) = args.query_threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(n))
            .build_global()
            .map_err(|e| Error::Internal(format!("sizing the query threads: {e}")))?;
    }
    let (engine, new_token) = segq::engine::Engine::open(&args.data)?;
    show_new_token(new_token.as_deref());
    for r in engine.recoveries() {
        eprintln!("segq: recovered a damaged log: {r}");
    }
    // Fold logs into snapshots when they pass the configured thresholds; a
    // compaction cut short by the process exiting is safe by construction.
    engine.start_compactor(std::time::Duration::from_secs(30));
    let mut options = segq::server::ServerOptions::from_config(engine.config());
    if let Some(n) = args.rate_limit_per_hour {
        options.rate_limit_per_hour = n;
    }
    if let Some(n) = args.max_body_bytes {
        options.max_body_bytes = n;
    }
    options.max_import_bytes = (args.max_import_bytes > 0).then_some(args.max_import_bytes);
    let limits = &mut options.limits;
    if let Some(s) = args.header_read_timeout_secs {
        limits.header_read_timeout = std::time::Duration::from_secs(s);
    }
    if let Some(s) = args.body_read_timeout_secs {
        limits.body_read_timeout = std::time::Duration::from_secs(s);
    }
    if let Some(n) = args.min_body_bytes_per_sec {
        limits.min_body_bytes_per_sec = n;
    }
    if let Some(s) = args.idle_timeout_secs {
        limits.idle_timeout = std::time::Duration::from_secs(s);
    }
    if let Some(n) = args.max_connections {
        limits.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = args.max_buffered_body_bytes {
        limits.max_buffered_body_bytes = n;
    }
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
            for m in cohort.members.bitmap()?.iter() {
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
