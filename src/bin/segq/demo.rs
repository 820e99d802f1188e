//! `segq demo`: the main job on embedded data, in seconds.
//!
//! Generates the small workload and serves it from memory
//! ([`WorkspaceHandle::in_memory`]: the same handle a server serves, its
//! log on a memory file), adds the users that the wire examples name,
//! replays the wire examples through the server's partner path
//! ([`segq::examples`]), then counts combined filters and answers
//! one-user checks with the query service the server's segment API calls,
//! so it shows what a server answers.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use segq::engine::WorkspaceHandle;
use segq::examples::{self, WIRE};
use segq::ids::Partner;
use segq::query::service::{self, CountMode, Target};
use segq::segment;
use segq::workload::{self, Spec};
use segq::{Error, UserRef};

use crate::io_err;

fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// The filters the demo evaluates, in text or JSON form.
fn demo_filters(cohorts: u32) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = workload::query_shapes(cohorts)
        .into_iter()
        .map(|(name, f)| (name.to_string(), f.to_string()))
        .collect();
    v.push((
        "a partner cohort by name, OR another partner's".into(),
        r#"amplitude_cohorts includes "Power users (90d)" or mixpanel_cohorts includes churn-risk"#
            .into(),
    ));
    v.push((
        "builder groups with an exclusion group (JSON)".into(),
        r#"{"groups": [{"combinator": "or", "filters": [
              {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c0"},
              {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-9f1e"}]},
            {"filters": [{"filter": "random_bucket", "comparison": "less_than", "value": 5000}]}],
  "groups_combinator": "and",
  "exclusions": [{"filters": [{"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c1"}]}]}"#
            .into(),
    ));
    v
}

/// Runs the demo on a workload of `spec`, writing its report to `out`.
pub fn run(out: &mut dyn Write, spec: Spec) -> Result<(), Error> {
    let io = io_err;
    let t = Instant::now();
    let ws = workload::generate("demo", spec)?.workspace;
    writeln!(
        out,
        "generated workspace: {} users, {} cohorts (seed {}) in {}",
        ws.users.len(),
        ws.cohorts.len(),
        spec.seed,
        fmt_duration(t.elapsed())
    )
    .map_err(io)?;
    let handle = Arc::new(WorkspaceHandle::in_memory(ws)?);
    let added = examples::add_users(&handle)?;
    writeln!(
        out,
        "added the {added} users the wire examples name: {} users",
        handle.read().users.len()
    )
    .map_err(io)?;

    writeln!(
        out,
        "\nreplaying the wire examples through the server's partner path:"
    )
    .map_err(io)?;
    let now = examples::demo_now();
    for (name, text) in WIRE {
        let r = examples::replay(&handle, name, text, now)?;
        writeln!(
            out,
            "  {name:<32} POST {} -> {} {}",
            r.path, r.status, r.body
        )
        .map_err(io)?;
    }
    {
        let ws = handle.read();
        for (partner, day, n) in ws.data_points_by_day() {
            writeln!(out, "  billable data points: {partner} on {day}: {n}").map_err(io)?;
        }
        if let Ok(c) = ws.cohorts.resolve(Partner::Amplitude, "c-9f1e") {
            let sample: Vec<&str> = c.sync.recent_unmatched.iter().map(String::as_str).collect();
            writeln!(
                out,
                "  cohort {} \"{}\": {} members; unmatched so far {}, e.g. {:?}",
                c.key,
                c.name,
                c.len(),
                c.sync.unmatched_total,
                sample
            )
            .map_err(io)?;
        }
    }

    writeln!(
        out,
        "\nsegment sizes (exact, as the segment API counts them):"
    )
    .map_err(io)?;
    for (name, input) in demo_filters(spec.cohorts) {
        let filter = segment::parse(&input)?;
        let t = Instant::now();
        let answer = service::count(
            &handle,
            &Target::Filter(filter.clone()),
            CountMode::Exact { explain: false },
        )?;
        let took = t.elapsed();
        let n = answer["count"].as_u64().unwrap_or_default();
        writeln!(out, "  {n:>8} users  {:>9}  {name}", fmt_duration(took)).map_err(io)?;
        writeln!(out, "           {}", filter).map_err(io)?;
    }

    writeln!(out, "\none-user checks:").map_err(io)?;
    let check_filter = r#"amplitude_cohorts includes_value "c-9f1e" and not mixpanel_cohorts includes "churn-risk""#;
    let target = Target::Filter(segment::parse(check_filter)?);
    writeln!(out, "  filter: {check_filter}").map_err(io)?;
    for who in [
        "u-1",
        "u-2",
        "alias:email:ann@example.com",
        "device_id:web-anon-42",
        "nobody-1",
    ] {
        let user = UserRef::parse_cli(who)?;
        let t = Instant::now();
        let a = service::check_user(&handle, &target, &user)?;
        let took = t.elapsed();
        let answer = match (a["member"].as_bool(), a["user_id"].as_u64()) {
            (Some(true), Some(id)) => format!("yes (user {id})"),
            (_, Some(id)) => format!("no (user {id})"),
            _ => "no: no user holds this identifier".to_string(),
        };
        writeln!(out, "  {who:<30} {answer}  ({})", fmt_duration(took)).map_err(io)?;
    }
    Ok(())
}

/// `segq demo --serve`: the demo workspace behind the API and the web
/// console.
#[derive(clap::Args)]
pub struct ServeDemoArgs {
    /// Serve the demo workspace (the API and the web console at `/`) on
    /// 127.0.0.1 until Ctrl-C, and print the console's URL and an API key
    /// to sign in with.
    #[arg(long)]
    pub serve: bool,
    /// With --serve: the port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8088, requires = "serve")]
    pub port: u16,
    /// With --serve: the data directory (created if missing; it must not
    /// hold a workspace named demo). Default: a new directory under the
    /// system's temporary directory, removed on exit.
    #[arg(long, requires = "serve")]
    pub data: Option<std::path::PathBuf>,
    /// With --serve: serve this snapshot file (a `segq generate`d or
    /// backed-up workspace, for instance the medium workload's) instead of
    /// generating the workload.
    #[arg(long, requires = "serve")]
    pub snapshot: Option<std::path::PathBuf>,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// A new, private, empty directory under the system's temporary one.
fn temp_dir() -> Result<TempDir, Error> {
    let base = std::env::temp_dir();
    for attempt in 0u32..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!(
            "segq-demo-{}-{nanos:x}{attempt}",
            std::process::id()
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&dir) {
            Ok(()) => return Ok(TempDir(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::Internal(format!(
        "no free directory name under {}",
        base.display()
    )))
}

/// The workspace `segq demo --serve` serves.
pub const DEMO_WORKSPACE: &str = "demo";

/// `segq demo --serve`: opens a data directory, restores the demo
/// workspace into it (the generated workload, or `--snapshot`), adds the
/// wire examples' users and replays the examples, creates an API key with
/// every scope the console uses, and serves on loopback until SIGINT or
/// SIGTERM. The URL and the key go to stdout, once.
pub fn serve(args: ServeDemoArgs, spec: Spec) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let temp = match &args.data {
        Some(_) => None,
        None => Some(temp_dir()?),
    };
    let dir = match (&args.data, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.0.clone(),
        (None, None) => unreachable!("a temporary directory is made without --data"),
    };
    let (engine, _admin_token) = segq::engine::Engine::open(&dir)?;
    let t = Instant::now();
    let handle = match &args.snapshot {
        Some(file) => engine.restore_workspace(DEMO_WORKSPACE, file)?,
        None => {
            let file = dir.join("demo-workload.segqsnap.tmp");
            let f = std::fs::File::create(&file).map_err(Error::io_at(&file))?;
            let w = std::io::BufWriter::new(f);
            let (w, _) = workload::write_snapshot(DEMO_WORKSPACE, spec, w)?;
            w.into_inner()
                .map_err(|e| Error::io(&file, e.into_error()))?
                .sync_all()
                .map_err(Error::io_at(&file))?;
            let restored = engine.restore_workspace(DEMO_WORKSPACE, &file);
            let _ = std::fs::remove_file(&file);
            restored?
        }
    };
    examples::add_users(&handle)?;
    let now = examples::demo_now();
    for (name, text) in WIRE {
        examples::replay(&handle, name, text, now)?;
    }
    let users = handle.read().users.len();
    writeln!(
        out,
        "workspace {DEMO_WORKSPACE}: {users} users, loaded in {}",
        fmt_duration(t.elapsed())
    )
    .map_err(io_err)?;
    let key = engine.create_api_key(
        DEMO_WORKSPACE,
        "console",
        vec![
            segq::access::Scope::WorkspaceAdmin,
            segq::access::Scope::SegmentsRead,
            segq::access::Scope::UsersWrite,
        ],
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::io_at("<tokio runtime>"))?;
    let listen = format!("127.0.0.1:{}", args.port);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| Error::io(&listen, e))?;
        let addr = listener.local_addr().map_err(|e| Error::io(&listen, e))?;
        let signal = segq::server::shutdown_signal();
        writeln!(out, "console:   http://{addr}/").map_err(io_err)?;
        writeln!(out, "workspace: {DEMO_WORKSPACE}").map_err(io_err)?;
        writeln!(out, "API key:   {}", key.key).map_err(io_err)?;
        writeln!(
            out,
            "(sign in with the workspace and the API key; Ctrl-C stops the server{})",
            if temp.is_some() {
                " and removes its data"
            } else {
                ""
            }
        )
        .map_err(io_err)?;
        out.flush().map_err(io_err)?;
        let mut options = segq::server::ServerOptions::from_config(engine.config());
        options.shutdown_delay = Duration::ZERO;
        segq::server::serve_with(engine.clone(), options, listener, signal)
            .await
            .map_err(Error::io_at(format!("serving on {addr}")))
    })?;
    drop(handle);
    drop(engine);
    drop(temp);
    Ok(())
}
