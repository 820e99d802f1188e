//! `segq users import`: bulk user loads into a data directory.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;

use segq::Error;

use crate::data::{self, Access};
use crate::{io_err, Failure};

#[derive(Subcommand)]
pub enum UsersCommand {
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

/// Runs a `segq users` command.
pub fn run(cmd: UsersCommand, out: &mut dyn Write) -> Result<(), Failure> {
    match cmd {
        UsersCommand::Import {
            file,
            data,
            workspace,
            format,
            create_workspace,
        } => import(
            out,
            &file,
            &data,
            &workspace,
            format.as_deref(),
            create_workspace,
        ),
    }
}

/// `segq users import`: streams a file into a workspace in batches, with a
/// progress bar on stderr (hidden when stderr is not a terminal).
pub fn import(
    out: &mut dyn Write,
    file: &std::path::Path,
    data: &std::path::Path,
    workspace: &str,
    format: Option<&str>,
    create_workspace: bool,
) -> Result<(), Failure> {
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
    let io_error = |e: io::Error| Error::io(&name, e);
    let f = std::fs::File::open(file).map_err(io_error)?;
    let len = f.metadata().map_err(io_error)?.len();

    // Only --create-workspace may make a data directory; a new one's admin
    // token is shown here, once.
    let access = if create_workspace {
        Access::Write
    } else {
        Access::WriteExisting {
            hint: "; pass --create-workspace to make one",
        }
    };
    let engine = data::open(data, access)?;
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
            let r = handle.upsert_users_with(batch.into_users())?;
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
        return Err(failed.into_first().into());
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
    .map_err(io_err)?;
    Ok(())
}
