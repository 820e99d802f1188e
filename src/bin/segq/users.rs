//! `segq users import|delete|merge|rename`: bulk user loads and the user
//! lifecycle on a data directory (the server must not be running on it;
//! a running server takes the same requests on its admin API).

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
    /// Delete users, durably: out of every cohort, attribute and saved
    /// segment, their identifiers free for reuse. Prints how many were
    /// deleted and not found, and the time taken.
    Delete {
        /// Users: external_id:ID, device_id:ID, alias:LABEL:NAME, or a
        /// bare external id.
        users: Vec<String>,
        /// A file of users in the same form, one a line (empty lines
        /// skipped).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The data directory.
        #[arg(long, default_value = "./segq-data")]
        data: PathBuf,
        /// The workspace.
        #[arg(long)]
        workspace: String,
    },
    /// Merge a user into another (the platform's merge): the target
    /// keeps its identifiers and gains the source's device ids, aliases,
    /// cohorts and the attribute values it lacks; the source is deleted.
    Merge {
        /// The user merged away, in the form `delete` takes.
        source: String,
        /// The user that stays.
        target: String,
        /// The data directory.
        #[arg(long, default_value = "./segq-data")]
        data: PathBuf,
        /// The workspace.
        #[arg(long)]
        workspace: String,
    },
    /// Rename a user's external id; the old one is free from then on.
    Rename {
        /// The external id now.
        external_id: String,
        /// The external id from now on.
        new_external_id: String,
        /// The data directory.
        #[arg(long, default_value = "./segq-data")]
        data: PathBuf,
        /// The workspace.
        #[arg(long)]
        workspace: String,
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
        UsersCommand::Delete {
            users,
            file,
            data,
            workspace,
        } => delete(out, users, file.as_deref(), &data, &workspace),
        UsersCommand::Merge {
            source,
            target,
            data,
            workspace,
        } => {
            let (source, target) = (parse_ref(&source)?, parse_ref(&target)?);
            lifecycle(&data, &workspace, |h| {
                let m = h.merge_users(&source, &target)?;
                Ok(format!(
                    "merged user {} into {}: cohorts joined {}, attribute values taken {}, device ids moved {}, aliases moved {}",
                    m.source_user_id,
                    m.target_user_id,
                    m.cohorts_joined,
                    m.attributes_taken,
                    m.devices_moved,
                    m.aliases_moved
                ))
            })
            .and_then(|line| Ok(writeln!(out, "{line}").map_err(io_err)?))
        }
        UsersCommand::Rename {
            external_id,
            new_external_id,
            data,
            workspace,
        } => lifecycle(&data, &workspace, |h| {
            let id = h.rename_external_id(&external_id, &new_external_id)?;
            Ok(format!("user {id}: external id {new_external_id}"))
        })
        .and_then(|line| Ok(writeln!(out, "{line}").map_err(io_err)?)),
    }
}

fn parse_ref(s: &str) -> Result<segq::UserRef, Failure> {
    Ok(segq::UserRef::parse_cli(s).map_err(Error::from)?)
}

/// Opens the workspace of an existing data directory, runs `f` on it and
/// syncs; returns what `f` says.
fn lifecycle(
    data: &std::path::Path,
    workspace: &str,
    f: impl FnOnce(&segq::engine::WorkspaceHandle) -> segq::Result<String>,
) -> Result<String, Failure> {
    let engine = data::open(data, Access::WriteExisting { hint: "" })?;
    let handle = engine
        .workspace(workspace)
        .ok_or_else(|| Error::UnknownWorkspace {
            name: workspace.to_string(),
        })?;
    let said = f(&handle)?;
    if let Err(failed) = engine.sync_all() {
        eprintln!("segq: {failed}");
        return Err(failed.into_first().into());
    }
    // Synced: exit without freeing the in-memory state (see `serve`).
    std::mem::forget(engine);
    Ok(said)
}

/// `segq users delete`: one request of every user named, timed.
fn delete(
    out: &mut dyn Write,
    users: Vec<String>,
    file: Option<&std::path::Path>,
    data: &std::path::Path,
    workspace: &str,
) -> Result<(), Failure> {
    let mut refs = users
        .iter()
        .map(|u| parse_ref(u))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = file {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(&name, e))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            refs.push(parse_ref(line)?);
        }
    }
    if refs.is_empty() {
        return Err(Error::InvalidArgument("name at least one user, or --file".into()).into());
    }
    lifecycle(data, workspace, |h| {
        let t = Instant::now();
        let d = h.delete_users(&refs)?;
        Ok(format!(
            "deleted {}, not found {}, memberships removed {}, attribute values removed {} in {:.2?}",
            d.deleted,
            d.not_found.len(),
            d.memberships_removed,
            d.values_removed,
            t.elapsed()
        ))
    })
    .and_then(|line| Ok(writeln!(out, "{line}").map_err(io_err)?))
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
