//! `segq snapshot …`: write, inspect, verify, bench, restore and compact
//! snapshots.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;

use segq::snapshot::Snapshot;
use segq::workload;
use segq::Error;

use crate::args::WorkloadArgs;
use crate::data::{self, Access};
use crate::Failure;

mod bench;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Generate a workload straight into a snapshot file (no workspace is
    /// held in memory, so the large size fits).
    Write {
        #[command(flatten)]
        workload: WorkloadArgs,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a snapshot's sections, sizes, cohorts and container kinds.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum, that every bitmap decodes, and that the
    /// identifier dictionaries are consistent.
    Verify {
        file: PathBuf,
        /// Only the start-up check a server runs before serving from the
        /// file: every section's checksum, the file read front to back
        /// while other threads compute the checksums. Prints its time and
        /// read rate.
        #[arg(long)]
        checksums: bool,
    },
    /// Open a snapshot and measure: open time, resident memory after open
    /// and after a five-cohort query, and external-id look-ups.
    Bench {
        file: PathBuf,
        /// How many external ids to look up.
        #[arg(long, default_value_t = 1_000_000)]
        lookups: usize,
    },
    /// Create a workspace of a data directory from a snapshot file (a
    /// backup, or a generated workload), checked whole first (the server
    /// must not be running on it).
    Restore {
        file: PathBuf,
        #[arg(long, default_value = "segq-data")]
        data: PathBuf,
        /// The workspace to create.
        #[arg(long)]
        workspace: String,
    },
    /// Fold the logs of a data directory's workspaces into new snapshot
    /// generations now (the server must not be running on it).
    Compact {
        #[arg(long, default_value = "segq-data")]
        data: PathBuf,
        /// Only this workspace (default: all).
        #[arg(long)]
        workspace: Option<String>,
    },
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

pub fn run(cmd: SnapshotCommand, out: &mut dyn Write) -> Result<(), Failure> {
    match cmd {
        SnapshotCommand::Write {
            workload,
            out: path,
        } => {
            let spec = workload.spec();
            let workload::Spec {
                users,
                cohorts,
                seed,
            } = spec;
            let t = Instant::now();
            let tmp = path.with_extension("tmp");
            let file = std::fs::File::create(&tmp).map_err(Error::io_at(&tmp))?;
            let (w, _) = workload::write_snapshot("generated", spec, BufWriter::new(file))?;
            let file = w
                .into_inner()
                .map_err(|e| Error::io_at(&tmp)(e.into_error()))?;
            file.sync_all().map_err(Error::io_at(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(Error::io_at(&path))?;
            let len = std::fs::metadata(&path).map_err(Error::io_at(&path))?.len();
            writeln!(
                out,
                "wrote {} ({}) for {users} users, {cohorts} cohorts, seed {seed} in {:.1?}",
                path.display(),
                mib(len),
                t.elapsed()
            )
            .map_err(crate::io_err)?;
        }
        SnapshotCommand::Inspect { file, json } => {
            let snap = Snapshot::open(&file)?;
            let i = snap.inspect()?;
            if json {
                let text = serde_json::to_string_pretty(&i)
                    .map_err(|e| Error::Internal(format!("encoding the inspection: {e}")))?;
                writeln!(out, "{text}").map_err(crate::io_err)?;
                return Ok(());
            }
            writeln!(
                out,
                "{}: {} ({} bytes), workspace {:?}, log seq {}, {} users, {} cohorts",
                i.file,
                mib(i.bytes),
                i.bytes,
                i.workspace,
                i.seq,
                i.users,
                i.cohorts.len()
            )
            .map_err(crate::io_err)?;
            writeln!(out, "sections:").map_err(crate::io_err)?;
            for s in &i.sections {
                writeln!(
                    out,
                    "  {:<13} offset {:>12}  {:>12} bytes ({})  crc {}",
                    s.kind,
                    s.offset,
                    s.len,
                    mib(s.len),
                    s.crc
                )
                .map_err(crate::io_err)?;
            }
            writeln!(out, "identifier dictionaries:").map_err(crate::io_err)?;
            let total: u64 = i.dictionaries.iter().map(|d| d.bytes).sum();
            for d in &i.dictionaries {
                let parts = match (d.fst, d.offsets, d.blocks) {
                    (Some(f), Some(o), Some(b)) => {
                        format!("  (FST {}, offsets {}, groups {})", mib(f), mib(o), mib(b))
                    }
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "  {:<16} {:<7} {:>11} ids {:>12} bytes ({}), {:.2} bytes/user{parts}",
                    d.kind,
                    d.format,
                    d.entries,
                    d.bytes,
                    mib(d.bytes),
                    d.bytes_per_user
                )
                .map_err(crate::io_err)?;
            }
            writeln!(
                out,
                "  total {} ({:.2} bytes/user)",
                mib(total),
                total as f64 / f64::from(i.users.max(1))
            )
            .map_err(crate::io_err)?;
            writeln!(out, "containers: {:?}", i.containers).map_err(crate::io_err)?;
            writeln!(out, "cohorts:").map_err(crate::io_err)?;
            for c in &i.cohorts {
                writeln!(
                    out,
                    "  {}/{:<10} {:>10} members {:>12} bytes  array {:>5} bitmap {:>5} run {:>5}  {:?}",
                    c.partner, c.cohort_id, c.members, c.bytes, c.arrays, c.bitmaps, c.runs, c.name
                )
                .map_err(crate::io_err)?;
            }
        }
        SnapshotCommand::Verify { file, checksums } => {
            let t = Instant::now();
            let snap = Snapshot::open(&file)?;
            if checksums {
                snap.verify_streaming(&file)?;
                let secs = t.elapsed().as_secs_f64();
                let bytes = std::fs::metadata(&file).map_err(crate::io_err)?.len();
                writeln!(
                    out,
                    "{}: checksums ok ({:.2} s, {} at {:.0} MiB/s)",
                    file.display(),
                    secs,
                    mib(bytes),
                    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
                )
                .map_err(crate::io_err)?;
            } else {
                snap.verify()?;
                segq::engine::persist::verify_attributes(&snap)?;
                writeln!(out, "{}: ok ({:.1?})", file.display(), t.elapsed())
                    .map_err(crate::io_err)?;
            }
        }
        SnapshotCommand::Bench { file, lookups } => {
            let r = bench::run(&file, lookups)?;
            let opt = |x: Option<u64>| x.map_or("unknown".to_string(), mib);
            writeln!(
                out,
                "snapshot {}: {} on disk; cohort bitmaps {} + identifier dictionaries {} => ratio {:.3}",
                file.display(),
                mib(r.file_bytes),
                mib(r.bitmap_bytes),
                mib(r.dictionary_bytes),
                r.size_ratio
            )
            .map_err(crate::io_err)?;
            writeln!(out, "users {}, cohorts {}", r.users, r.cohorts).map_err(crate::io_err)?;
            writeln!(
                out,
                "open: {:.1} µs; resident memory before open {}, after open {}",
                r.open_us,
                opt(r.rss_before_open),
                opt(r.rss_after_open)
            )
            .map_err(crate::io_err)?;
            writeln!(
                out,
                "query {} -> {} users in {:.2} ms; resident memory after {}",
                r.query,
                r.query_count,
                r.query_ms,
                opt(r.rss_after_query)
            )
            .map_err(crate::io_err)?;
            writeln!(
                out,
                "{} external-id look-ups ({} found) in {:.1} ms ({:.0} ns each); resident memory after {}",
                r.lookups,
                r.lookup_hits,
                r.lookups_ms,
                r.lookups_ms * 1e6 / r.lookups.max(1) as f64,
                opt(r.rss_after_lookups)
            )
            .map_err(crate::io_err)?;
            writeln!(
                out,
                "median ns per call (batches of 100): known external id -> user {:.0}, unknown external id {:.0}, user -> external id {:.0}",
                r.known_median_ns, r.unknown_median_ns, r.user_to_external_median_ns
            )
            .map_err(crate::io_err)?;
            writeln!(
                out,
                "workspace open: {:.2} ms (median of {}); its {} custom attributes' indexes, read on first use: {:.0} ms in all",
                r.workspace_open_ms,
                bench::OPENS,
                r.attributes,
                r.attributes_read_ms
            )
            .map_err(crate::io_err)?;
        }
        SnapshotCommand::Restore {
            file,
            data,
            workspace,
        } => {
            let engine = data::open(&data, Access::Write)?;
            let t = Instant::now();
            let h = engine.restore_workspace(&workspace, &file)?;
            let ws = h.read();
            writeln!(
                out,
                "restored workspace {workspace} from {} ({} users, {} cohorts) in {:.1} s",
                file.display(),
                ws.users.len(),
                ws.cohorts.len(),
                t.elapsed().as_secs_f64()
            )
            .map_err(crate::io_err)?;
        }
        SnapshotCommand::Compact { data, workspace } => {
            // Nothing to compact in a directory that is not one: refused
            // rather than initialised.
            let engine = data::open(&data, Access::WriteExisting { hint: "" })?;
            let names = match workspace {
                Some(w) => vec![w],
                None => engine.workspace_names(),
            };
            for name in names {
                let c = engine.compact(&name)?;
                writeln!(
                    out,
                    "{name}: generation {} up to log seq {} ({}, {} ms)",
                    c.generation,
                    c.seq,
                    mib(c.snapshot_bytes),
                    c.took_ms
                )
                .map_err(crate::io_err)?;
            }
        }
    }
    Ok(())
}
