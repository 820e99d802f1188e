//! `segq count|members|check`: a segment's size, members and one-user
//! answers, on a running server (its HTTP API) or on a data directory read
//! directly (the query service the server calls).

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;

use segq::query::render;
use segq::query::service::{self, CountMode, Target};
use segq::segment;
use segq::{Error, UserRef};

use crate::data::{self, Access};
use crate::{io_err, Failure};

/// Where a segment command runs: on a running server (--server, --token),
/// or on a data directory read directly (--data): read-only, nothing in it
/// is created or changed, and it may be one a server is serving.
#[derive(Args)]
pub struct TargetArgs {
    /// The workspace.
    #[arg(long)]
    pub workspace: String,
    /// A running server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, conflicts_with = "data")]
    pub server: Option<String>,
    /// A workspace API key with segments:read for --server (default: the
    /// SEGQ_TOKEN environment variable). The server admin token is taken
    /// as well, and the server answers 403 to it on these routes.
    #[arg(long, requires = "server")]
    pub token: Option<String>,
    /// The data directory (default ./segq-data when --server is not given).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// `segq count`.
#[derive(Args)]
pub struct CountArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Estimate from a sample of whole chunks of users instead (5% of
    /// them unless told otherwise; with --sample-buckets or
    /// --sample-start, from a sample of the random buckets).
    #[arg(long)]
    estimate: bool,
    /// With --estimate: the fraction of chunks to sample (0 < f <= 1).
    #[arg(long, requires = "estimate", conflicts_with_all = ["max_relative_error", "budget_ms", "sample_buckets", "sample_start"])]
    sample_fraction: Option<f64>,
    /// With --estimate: sample enough chunks for about this relative
    /// error (0 < e < 1).
    #[arg(long, requires = "estimate", conflicts_with_all = ["budget_ms", "sample_buckets", "sample_start"])]
    max_relative_error: Option<f64>,
    /// With --estimate: sample as many chunks as fit this many
    /// milliseconds.
    #[arg(long, requires = "estimate", conflicts_with_all = ["sample_buckets", "sample_start"])]
    budget_ms: Option<f64>,
    /// With --estimate: the seed the chunks are drawn with (random if
    /// not given).
    #[arg(long, requires = "estimate", conflicts_with_all = ["sample_buckets", "sample_start"])]
    seed: Option<u64>,
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
}

/// `segq members`.
#[derive(Args)]
pub struct MembersArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Members per page (1 to 1,000,000).
    #[arg(long, default_value_t = service::DEFAULT_LIMIT)]
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
}

/// `segq check`.
#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The filter (text form or JSON), or a saved segment's id (seg_…).
    filter: String,
    /// `u42`, `external_id:u42`, `alias:email:u42@example.com` or
    /// `device_id:d42`.
    user: String,
}

/// `segq count`.
pub fn count(args: CountArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let CountArgs {
        target,
        estimate,
        sample_fraction,
        max_relative_error,
        budget_ms,
        seed,
        sample_buckets,
        sample_start,
        explain,
        filter,
    } = args;
    let at = Place::for_filter(&target, &filter)?;
    let tradeoff = [
        ("sample_fraction", sample_fraction),
        ("max_relative_error", max_relative_error),
        ("budget_ms", budget_ms),
    ]
    .into_iter()
    .find_map(|(name, v)| v.map(|v| segq::query::Tradeoff::parse(name, v)))
    .transpose()?;
    let mode = if estimate && sample_buckets.is_none() && sample_start.is_none() {
        service::CountMode::Sampled(service::Sampling::new(
            tradeoff.unwrap_or(segq::query::Tradeoff::Default),
            seed,
        ))
    } else if estimate {
        use rand::Rng;
        service::CountMode::Estimate {
            start: match sample_start {
                Some(s) => s,
                None => rand::thread_rng().gen_range(0..segq::ids::BUCKETS),
            },
            width: sample_buckets.unwrap_or(service::DEFAULT_SAMPLE_BUCKETS),
        }
    } else {
        service::CountMode::Exact { explain }
    };
    let answer = at.count(&filter, mode)?;
    writeln!(out, "{answer}").map_err(io_err)?;
    Ok(())
}

/// `segq members`: the page on stdout, the next page's cursor on stderr.
pub fn members(args: MembersArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let MembersArgs {
        target,
        limit,
        cursor,
        format,
        fields,
        filter,
    } = args;
    let at = Place::for_filter(&target, &filter)?;
    let next = at.members(out, &filter, limit, cursor.as_deref(), &format, &fields)?;
    out.flush().map_err(io_err)?;
    if let Some(c) = next {
        eprintln!("next cursor: {c} (pass --cursor {c} for the next page)");
    }
    Ok(())
}

/// `segq check`.
pub fn check(args: CheckArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let CheckArgs {
        target,
        filter,
        user,
    } = args;
    // Bad input fails before the data directory is opened.
    let user = UserRef::parse_cli(&user).map_err(Error::from)?;
    let at = Place::for_filter(&target, &filter)?;
    let answer = at.check(&filter, &user)?;
    writeln!(out, "{answer}").map_err(io_err)?;
    Ok(())
}

/// A saved segment's id, as a segment command's FILTER may give it.
fn is_segment_id(s: &str) -> bool {
    s.strip_prefix("seg_")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Where a segment command runs.
pub enum Place {
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
    /// Where `filter` runs, once it is known to parse: bad input fails
    /// before the data directory is opened.
    fn for_filter(t: &TargetArgs, filter: &str) -> Result<Place, Failure> {
        Self::target(filter)?;
        Self::open(t)
    }

    pub(crate) fn open(t: &TargetArgs) -> Result<Place, Failure> {
        if let Some(server) = &t.server {
            let token = match &t.token {
                Some(t) => t.clone(),
                None => std::env::var("SEGQ_TOKEN").map_err(|_| {
                    Failure::Other("--server needs --token TOKEN (or SEGQ_TOKEN in the environment): a workspace API key with segments:read".into())
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
        // Read-only: nothing in the directory changes, and a server may be
        // serving it (what its logs held when they were read is answered).
        let engine = data::open(&data, Access::Read)?;
        let handle = engine
            .workspace(&t.workspace)
            .ok_or_else(|| Error::UnknownWorkspace {
                name: t.workspace.clone(),
            })?;
        // Read-only: exit without freeing the in-memory state.
        std::mem::forget(engine);
        Ok(Place::Data { handle })
    }

    fn target(filter: &str) -> Result<Target, Failure> {
        Ok(if is_segment_id(filter) {
            Target::Segment(filter.to_string())
        } else {
            Target::Filter(segment::parse(filter)?)
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

    fn count(&self, filter: &str, mode: CountMode) -> Result<serde_json::Value, Failure> {
        match self {
            Place::Data { handle } => Ok(service::count(handle, &Self::target(filter)?, mode)?),
            Place::Server {
                client,
                base,
                token,
                workspace,
            } => {
                let mut body = Self::target_json(filter);
                let mut url = format!("{base}/workspaces/{workspace}/segments/count");
                match mode {
                    CountMode::Exact { explain } => {
                        if explain {
                            url.push_str("?explain=true");
                        }
                    }
                    CountMode::Estimate { start, width } => {
                        body["estimate"] = true.into();
                        body["sample_start"] = start.into();
                        body["sample_buckets"] = width.into();
                    }
                    CountMode::Sampled(s) => {
                        let mut o = serde_json::json!({ "seed": s.seed });
                        if s.tradeoff != segq::query::Tradeoff::Default {
                            o[s.tradeoff.name()] = s.tradeoff.value().into();
                        }
                        body["estimate"] = o;
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
                let limit = service::page_limit(Some(limit))?;
                let page = service::member_page(handle, &Self::target(filter)?, cursor, limit)?;
                if fmt == render::Format::Csv {
                    out.write_all(render::csv_header(extras).as_bytes())
                        .map_err(io_err)?;
                }
                let mut buf = Vec::new();
                for block in page.members.chunks(service::STREAM_BLOCK) {
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
                Ok(service::check_user(handle, &Self::target(filter)?, user)?)
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
