//! HTTP load generator: request latency and rate of `segq serve` on
//! loopback, with a fixed request per case and N keep-alive connections.
//!
//! ```sh
//! cargo bench --bench http_load                       # 1 and 8 connections
//! cargo bench --bench http_load -- --conns 1,8,16 --secs 5 --users 10000000
//! cargo bench --bench http_load -- --bin OLD/segq --bin NEW/segq --rounds 5
//! cargo bench --bench http_load -- --url http://127.0.0.1:8080 --token T --workspace WS
//! (T: a workspace API key with workspace:admin and segments:read)
//! ```
//!
//! Without `--url` it writes a generated workload (`--users`, default
//! 1,000,000; `--cohorts`, 200) as a snapshot, restores it into a
//! temporary data directory per server binary (`--bin`, repeatable;
//! default the `segq` this bench was built with), starts `segq serve` on
//! a free port, saves one segment, and times each case at each connection
//! count. With several `--bin`, the binaries take turns (`--rounds`
//! rounds, a fresh server each round) and the table shows each case's
//! median over the rounds and its ratio to the first binary.
//!
//! The client is a minimal HTTP/1.1 keep-alive client over
//! `std::net::TcpStream` with one thread per connection: each thread sends
//! a request, reads the whole response (checking its status), and only
//! then sends the next, so a connection has one request in flight. Every
//! request's latency (write to last byte read) is recorded; the rate is
//! requests over wall time; a server started by the run also shows its CPU
//! time (user and system, from `/proc`) per request, the figure least
//! moved by other load on the machine. The cases:
//!
//! - `count`: `POST /segments/count` of one cohort;
//! - `check`: `POST /segments/check` of one cohort for one user named by
//!   external id (users drawn at random, some anonymous: "no user holds");
//! - `check_saved`: the same for a saved segment of three cohorts
//!   (`"segment_id"`);
//! - `redis_getbit`: with `redis-server` on the `PATH` (and not
//!   `--no-redis`), `GETBIT` on a 1,000,000-bit string of a
//!   `redis-server` started for the run, over the same kind of client:
//!   a peer for request rates.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

struct Opts {
    url: Option<String>,
    token: Option<String>,
    workspace: String,
    bins: Vec<PathBuf>,
    users: u64,
    cohorts: u64,
    conns: Vec<usize>,
    secs: f64,
    warmup: f64,
    rounds: usize,
    redis: bool,
    cases: Option<Vec<String>>,
}

const USAGE: &str = "http_load [--bin SEGQ]... [--rounds N] [--users N] [--cohorts N] \
[--conns 1,8] [--secs S] [--warmup S] [--cases count,check,check_saved] [--no-redis] \
[--url URL --token T --workspace WS]";

fn parse_opts() -> Res<Opts> {
    let mut o = Opts {
        url: None,
        token: None,
        workspace: "bench".into(),
        bins: Vec::new(),
        users: 1_000_000,
        cohorts: 200,
        conns: vec![1, 8],
        secs: 3.0,
        warmup: 0.5,
        rounds: 1,
        redis: true,
        cases: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            // What `cargo bench` passes.
            "--bench" => {}
            "--url" => o.url = Some(val("--url")?.trim_end_matches('/').to_string()),
            "--token" => o.token = Some(val("--token")?),
            "--workspace" => o.workspace = val("--workspace")?,
            "--bin" => o.bins.push(PathBuf::from(val("--bin")?)),
            "--users" => o.users = num(val("--users")?)? as u64,
            "--cohorts" => o.cohorts = num(val("--cohorts")?)? as u64,
            "--secs" => o.secs = num(val("--secs")?)?,
            "--warmup" => o.warmup = num(val("--warmup")?)?,
            "--rounds" => o.rounds = (num(val("--rounds")?)? as usize).max(1),
            "--no-redis" => o.redis = false,
            "--cases" => o.cases = Some(val("--cases")?.split(',').map(String::from).collect()),
            "--conns" => {
                o.conns = val("--conns")?
                    .split(',')
                    .map(|c| c.trim().parse::<usize>().map_err(|e| format!("{c}: {e}")))
                    .collect::<Res<Vec<_>>>()?;
                if o.conns.contains(&0) {
                    return Err("--conns: at least 1".into());
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.users < 10 || o.cohorts < 3 {
        return Err("--users at least 10 and --cohorts at least 3".into());
    }
    if o.url.is_some() && o.token.is_none() {
        return Err(
            "--url needs --token (a workspace API key with workspace:admin and segments:read)"
                .into(),
        );
    }
    if o.bins.is_empty() {
        o.bins.push(PathBuf::from(env!("CARGO_BIN_EXE_segq")));
    }
    Ok(o)
}

// ----- the client -----

/// A keep-alive connection with one request in flight.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Res<Conn> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 << 10),
        })
    }

    /// Reads at least one more byte into `buf`.
    fn fill(&mut self) -> Res<()> {
        let mut tmp = [0u8; 16 << 10];
        let n = self.stream.read(&mut tmp).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Sends `req` and reads one HTTP/1.1 response: (status, body).
    fn http(&mut self, req: &[u8]) -> Res<(u16, Vec<u8>)> {
        self.stream.write_all(req).map_err(|e| e.to_string())?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|e| e.to_string())?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head:?}"))?;
        let mut length = None;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        self.buf.drain(..head_end);
        let body = if let Some(n) = length {
            while self.buf.len() < n {
                self.fill()?;
            }
            self.buf.drain(..n).collect()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill()?;
                };
                let size_text = std::str::from_utf8(&self.buf[..line_end])
                    .map_err(|e| e.to_string())?
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let size = usize::from_str_radix(&size_text, 16)
                    .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
                while self.buf.len() < line_end + 2 + size + 2 {
                    self.fill()?;
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            return Err("response without Content-Length or chunked body".into());
        };
        Ok((status, body))
    }

    /// Sends a RESP command and reads an integer reply.
    fn redis_int(&mut self, req: &[u8]) -> Res<i64> {
        self.stream.write_all(req).map_err(|e| e.to_string())?;
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            self.fill()?;
        };
        let line = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 2);
        line.strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("redis: unexpected reply {line:?}"))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request of the HTTP API.
fn http_request(method: &str, path: &str, host: &str, token: &str, body: &str) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n");
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

/// A RESP command.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut r = format!("*{}\r\n", args.len());
    for a in args {
        r.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    r.into_bytes()
}

/// A small deterministic generator (xorshift), so that runs send the same
/// requests.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ----- a case -----

/// What one case sends: a pool of requests (cycled per connection) and
/// the protocol.
struct Case {
    name: String,
    requests: Arc<Vec<Vec<u8>>>,
    redis: bool,
}

/// The figures of one case at one connection count.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    requests: u64,
    errors: u64,
    rate: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    /// Server CPU time (user + system, all threads) per request, when the
    /// server is a child of this run.
    cpu_us: f64,
}

/// A process's CPU time so far (user + system, all its threads), in
/// microseconds; `None` where `/proc` does not say.
fn cpu_us(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 1e6 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn run_case(
    addr: SocketAddr,
    pid: Option<u32>,
    case: &Case,
    conns: usize,
    opts: &Opts,
) -> Res<Figures> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut threads = Vec::new();
    for t in 0..conns {
        let (stop, measuring, barrier) = (stop.clone(), measuring.clone(), barrier.clone());
        let requests = case.requests.clone();
        let redis = case.redis;
        threads.push(std::thread::spawn(move || -> Res<(Vec<u32>, u64)> {
            let mut conn = Conn::open(addr);
            barrier.wait();
            let conn = conn.as_mut().map_err(|e| e.clone())?;
            let mut lat = Vec::with_capacity(1 << 20);
            let mut errors = 0u64;
            let mut i = t * 7919;
            while !stop.load(Ordering::Relaxed) {
                let req = &requests[i % requests.len()];
                i += 1;
                let t0 = Instant::now();
                let ok = if redis {
                    conn.redis_int(req).is_ok()
                } else {
                    matches!(conn.http(req), Ok((200, _)))
                };
                let ns = t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32;
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        lat.push(ns);
                    } else {
                        errors += 1;
                    }
                }
                if !ok {
                    // Reconnect: the server may have closed the connection.
                    *conn = Conn::open(addr)?;
                }
            }
            Ok((lat, errors))
        }));
    }
    barrier.wait();
    std::thread::sleep(Duration::from_secs_f64(opts.warmup));
    let cpu0 = cpu_us(pid);
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(opts.secs));
    measuring.store(false, Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_us(pid);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (lat, e) = t.join().map_err(|_| "client thread panicked")??;
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p) as usize).min(all.len() - 1);
        f64::from(all[i]) / 1000.0
    };
    Ok(Figures {
        requests: all.len() as u64,
        errors,
        rate: all.len() as f64 / wall,
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        cpu_us: match (cpu0, cpu1) {
            (Some(a), Some(b)) if !all.is_empty() => (b - a) / all.len() as f64,
            _ => f64::NAN,
        },
    })
}

// ----- the server under test -----

/// A `segq serve` child, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_ok(cmd: &mut Command) -> Res<String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stderr).to_string())
}

/// Restores `snap` into `data` with `bin` and returns the admin token.
fn restore(bin: &Path, snap: &Path, data: &Path, workspace: &str) -> Res<String> {
    let err = run_ok(
        Command::new(bin)
            .args(["snapshot", "restore"])
            .arg(snap)
            .arg("--data")
            .arg(data)
            .args(["--workspace", workspace]),
    )?;
    err.lines()
        .find_map(|l| l.strip_prefix("admin token: "))
        .map(|t| t.trim().to_string())
        .ok_or_else(|| format!("no admin token printed by restore: {err}"))
}

fn start_server(bin: &Path, data: &Path) -> Res<Server> {
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(l)) => {
                // A log line: "<time>  INFO segq: listening on ADDR".
                if let Some((_, a)) = l.split_once("listening on ") {
                    break a.trim().parse::<SocketAddr>().map_err(|e| e.to_string())?;
                }
            }
            _ => {
                let _ = child.kill();
                return Err("the server exited before listening".into());
            }
        }
    };
    // Keep draining its stderr.
    std::thread::spawn(move || for _ in lines {});
    Ok(Server { child, addr })
}

fn resolve(url: &str) -> Res<(SocketAddr, String)> {
    let hostport = url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?
        .split('/')
        .next()
        .unwrap_or("");
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    Ok((addr, hostport.to_string()))
}

/// The token the cases send to a server restored with admin token
/// `admin`: a new workspace API key with the scopes they need, or the
/// admin token itself on a segq from before workspace API keys (which
/// has no such route).
fn workspace_key(addr: SocketAddr, host: &str, admin: &str, ws: &str) -> Res<String> {
    let mut conn = Conn::open(addr)?;
    let (status, body) = conn.http(&http_request(
        "POST",
        &format!("/admin/workspaces/{ws}/api_keys"),
        host,
        admin,
        "{\"name\":\"http_load\",\"scopes\":[\"workspace:admin\",\"segments:read\"]}",
    ))?;
    let body = String::from_utf8_lossy(&body);
    match status {
        201 => body
            .split("\"key\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(str::to_string)
            .ok_or_else(|| format!("no key in {body}")),
        404 if body.contains("no route") => Ok(admin.to_string()),
        _ => Err(format!("creating a workspace API key: {status} {body}")),
    }
}

/// The HTTP cases on a server at `addr`; saves the segment `check_saved`
/// checks.
fn http_cases(addr: SocketAddr, host: &str, token: &str, opts: &Opts) -> Res<Vec<Case>> {
    let ws = &opts.workspace;
    let cohort = |i: u64| format!("amplitude_cohorts includes_value \\\"c{i}\\\"");
    let mut conn = Conn::open(addr)?;
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let saved = format!(
        "{{\"name\":\"http_load_{unique}\",\"filter\":\"{} and {} and not {}\"}}",
        cohort(0),
        cohort(1),
        cohort(2)
    );
    let (status, body) = conn.http(&http_request(
        "POST",
        &format!("/workspaces/{ws}/segments"),
        host,
        token,
        &saved,
    ))?;
    let body = String::from_utf8_lossy(&body);
    if status != 201 {
        return Err(format!("saving a segment: {status} {body}"));
    }
    let id = body
        .split("\"id\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .ok_or_else(|| format!("no id in {body}"))?
        .to_string();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let pool = 4096;
    let single = cohort(1);
    let count = vec![http_request(
        "POST",
        &format!("/workspaces/{ws}/segments/count"),
        host,
        token,
        &format!("{{\"filter\":\"{single}\"}}"),
    )];
    let check_path = format!("/workspaces/{ws}/segments/check");
    let mut check = Vec::new();
    let mut check_saved = Vec::new();
    for _ in 0..pool {
        let user = format!("{{\"external_id\":\"u{}\"}}", rng.below(opts.users));
        check.push(http_request(
            "POST",
            &check_path,
            host,
            token,
            &format!("{{\"filter\":\"{single}\",\"user\":{user}}}"),
        ));
        check_saved.push(http_request(
            "POST",
            &check_path,
            host,
            token,
            &format!("{{\"segment_id\":\"{id}\",\"user\":{user}}}"),
        ));
    }
    // Each answers 200 before it is timed.
    for (name, reqs) in [
        ("count", &count),
        ("check", &check),
        ("check_saved", &check_saved),
    ] {
        let (status, body) = conn.http(&reqs[0])?;
        if status != 200 {
            return Err(format!(
                "{name}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    let case = |name: &str, requests: Vec<Vec<u8>>| Case {
        name: name.into(),
        requests: Arc::new(requests),
        redis: false,
    };
    Ok(vec![
        case("count", count),
        case("check", check),
        case("check_saved", check_saved),
    ])
}

/// A `redis-server` child, killed on drop.
struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Res<(Redis, SocketAddr)> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let redis = Redis(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..200 {
        if let Ok(mut c) = Conn::open(addr) {
            let mut rng = Rng(42);
            for _ in 0..10_000 {
                let bit = rng.below(1_000_000).to_string();
                c.redis_int(&resp(&["SETBIT", "cohort", &bit, "1"]))?;
            }
            return Ok((redis, addr));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err("redis-server did not start listening".into())
}

fn redis_case() -> Case {
    let mut rng = Rng(7);
    let requests = (0..4096)
        .map(|_| resp(&["GETBIT", "cohort", &rng.below(1_000_000).to_string()]))
        .collect();
    Case {
        name: "redis_getbit".into(),
        requests: Arc::new(requests),
        redis: true,
    }
}

// ----- the run -----

/// Figures by (target, case, conns), one per round.
type Table = Vec<(String, String, usize, Vec<Figures>)>;

fn record(table: &mut Table, target: &str, case: &str, conns: usize, f: Figures) {
    match table
        .iter_mut()
        .find(|(t, c, n, _)| t == target && c == case && *n == conns)
    {
        Some(row) => row.3.push(f),
        None => table.push((target.into(), case.into(), conns, vec![f])),
    }
}

fn wanted(opts: &Opts, name: &str) -> bool {
    opts.cases
        .as_ref()
        .is_none_or(|c| c.iter().any(|x| x == name))
}

fn time_cases(
    target: &str,
    addr: SocketAddr,
    pid: Option<u32>,
    cases: &[Case],
    opts: &Opts,
    table: &mut Table,
) -> Res<()> {
    for case in cases.iter().filter(|c| wanted(opts, &c.name)) {
        for &n in &opts.conns {
            let f = run_case(addr, pid, case, n, opts)?;
            eprintln!(
                "  {target} {:<12} conns {n:>2}: {:>9.0} req/s, p50 {:>7.1} µs{}",
                case.name,
                f.rate,
                f.p50_us,
                if f.errors > 0 {
                    format!(", {} errors", f.errors)
                } else {
                    String::new()
                }
            );
            record(table, target, &case.name, n, f);
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_table(table: &Table, first: Option<&str>) {
    println!(
        "{:<14} {:<12} {:>5} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6}{}",
        "target",
        "case",
        "conns",
        "requests",
        "req/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "cpu µs/r",
        "errors",
        if first.is_some() {
            "  p50 ratio req/s ratio cpu ratio"
        } else {
            ""
        }
    );
    let med = |runs: &[Figures], f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    for (target, case, conns, runs) in table {
        let (p50, rate) = (med(runs, |f| f.p50_us), med(runs, |f| f.rate));
        let cpu = med(runs, |f| f.cpu_us);
        let mut ratios = String::new();
        if let Some(base) = first.and_then(|b| {
            table
                .iter()
                .find(|(t, c, n, _)| t == b && c == case && n == conns)
        }) {
            let (bp50, brate) = (med(&base.3, |f| f.p50_us), med(&base.3, |f| f.rate));
            let bcpu = med(&base.3, |f| f.cpu_us);
            ratios = format!(
                "  {:>9.2} {:>11.2} {:>9.2}",
                p50 / bp50,
                rate / brate,
                cpu / bcpu
            );
        }
        println!(
            "{:<14} {:<12} {:>5} {:>9} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6}{}",
            target,
            case,
            conns,
            runs.iter().map(|f| f.requests).sum::<u64>() / runs.len() as u64,
            rate,
            p50,
            med(runs, |f| f.p90_us),
            med(runs, |f| f.p99_us),
            cpu,
            runs.iter().map(|f| f.errors).sum::<u64>(),
            ratios
        );
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("http_load: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let opts = parse_opts()?;
    let mut table: Table = Vec::new();
    if let Some(url) = &opts.url {
        let (addr, host) = resolve(url)?;
        let token = opts.token.clone().unwrap_or_default();
        let cases = http_cases(addr, &host, &token, &opts)?;
        for _ in 0..opts.rounds {
            time_cases("server", addr, None, &cases, &opts, &mut table)?;
        }
    } else {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let snap = dir.path().join("workload.segqsnap");
        eprintln!(
            "writing a workload of {} users, {} cohorts",
            opts.users, opts.cohorts
        );
        run_ok(
            Command::new(&opts.bins[0])
                .args(["snapshot", "write"])
                .args(["--users", &opts.users.to_string()])
                .args(["--cohorts", &opts.cohorts.to_string()])
                .arg("--out")
                .arg(&snap),
        )?;
        // One data directory per binary, restored by it.
        let mut targets = Vec::new();
        for (i, bin) in opts.bins.iter().enumerate() {
            let data = dir.path().join(format!("data-{i}"));
            let token = restore(bin, &snap, &data, &opts.workspace)?;
            let name = if opts.bins.len() == 1 {
                "segq".to_string()
            } else {
                format!("segq#{i}")
            };
            eprintln!("{name} = {}", bin.display());
            targets.push((name, bin.clone(), data, token));
        }
        for round in 0..opts.rounds {
            for (name, bin, data, token) in &targets {
                eprintln!("round {}/{}: {name}", round + 1, opts.rounds);
                let server = start_server(bin, data)?;
                let host = server.addr.to_string();
                let key = workspace_key(server.addr, &host, token, &opts.workspace)?;
                let cases = http_cases(server.addr, &host, &key, &opts)?;
                let pid = Some(server.child.id());
                time_cases(name, server.addr, pid, &cases, &opts, &mut table)?;
                drop(server);
            }
        }
    }
    if opts.redis && wanted(&opts, "redis_getbit") {
        match start_redis() {
            Ok((redis, addr)) => {
                let case = redis_case();
                let pid = Some(redis.0.id());
                for _ in 0..opts.rounds {
                    let cases = std::slice::from_ref(&case);
                    time_cases("redis-server", addr, pid, cases, &opts, &mut table)?;
                }
            }
            Err(e) => eprintln!("redis peer skipped: {e}"),
        }
    }
    let first = (opts.bins.len() > 1 && opts.url.is_none()).then_some("segq#0");
    print_table(&table, first);
    Ok(())
}
