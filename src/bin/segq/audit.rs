//! `segq audit`: a workspace's audit log (who changed what through the
//! admin API), a page at a time, on a running server or a data directory
//! read directly.

use std::io::Write;

use clap::Args;

use segq::server::admin::{audit_entry_json, AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT};

use crate::segments::{Place, TargetArgs};
use crate::{io_err, Failure};

/// `segq audit`.
#[derive(Args)]
pub struct AuditArgs {
    /// Where: --workspace with --server (and --token or SEGQ_TOKEN: the
    /// server admin token, or a workspace API key with workspace:admin),
    /// or --data.
    #[command(flatten)]
    target: TargetArgs,
    /// Entries per page (1 to 1,000).
    #[arg(long, default_value_t = AUDIT_DEFAULT_LIMIT)]
    limit: usize,
    /// Only entries before this seq (the next page, newest first).
    #[arg(long)]
    before: Option<u64>,
    /// Only entries after this seq (the next page, oldest first).
    #[arg(long)]
    after: Option<u64>,
    /// Oldest first instead of newest first.
    #[arg(long)]
    oldest_first: bool,
}

/// `segq audit`: one JSON object a line; the next page's option on
/// stderr.
pub fn run(args: AuditArgs, out: &mut dyn Write) -> Result<(), Failure> {
    if !(1..=AUDIT_MAX_LIMIT).contains(&args.limit) {
        return Err(Failure::Other(format!(
            "--limit must be 1 to {AUDIT_MAX_LIMIT}"
        )));
    }
    if args.target.server.is_some()
        && args.target.token.is_none()
        && std::env::var_os("SEGQ_TOKEN").is_none()
    {
        return Err(Failure::Other(
            "--server needs --token TOKEN (or SEGQ_TOKEN in the environment): the server \
             admin token, or a workspace API key with workspace:admin"
                .into(),
        ));
    }
    let order = if args.oldest_first { "asc" } else { "desc" };
    let (entries, next) = match Place::open(&args.target)? {
        Place::Server {
            client,
            base,
            token,
            workspace,
        } => {
            let url = format!("{base}/admin/workspaces/{workspace}/audit");
            let mut query = vec![
                ("limit", args.limit.to_string()),
                ("order", order.to_string()),
            ];
            if let Some(b) = args.before {
                query.push(("before", b.to_string()));
            }
            if let Some(a) = args.after {
                query.push(("after", a.to_string()));
            }
            let resp = client
                .get(&url)
                .bearer_auth(&token)
                .query(&query)
                .send()
                .map_err(|e| Failure::Other(format!("{url}: {e}")))?;
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if status >= 400 {
                let message = body
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map_or(text, String::from);
                return Err(Failure::Server { status, message });
            }
            let entries = body["entries"].as_array().cloned().unwrap_or_default();
            (entries, body["next"].clone())
        }
        Place::Data { handle } => {
            let ws = handle.read();
            let (page, more) =
                ws.audit
                    .page(args.after, args.before, !args.oldest_first, args.limit);
            let next = match page.last() {
                Some(last) if more && !args.oldest_first => serde_json::json!({"before": last.seq}),
                Some(last) if more => serde_json::json!({"after": last.seq}),
                _ => serde_json::Value::Null,
            };
            (page.into_iter().map(audit_entry_json).collect(), next)
        }
    };
    for e in &entries {
        writeln!(out, "{e}").map_err(io_err)?;
    }
    out.flush().map_err(io_err)?;
    if let Some(o) = next.as_object() {
        for (k, v) in o {
            eprintln!("more entries: pass --{k} {v} for the next page");
        }
    }
    Ok(())
}
