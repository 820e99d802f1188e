//! The one way the tests start a server: a `segq serve` child process
//! (the real binary, [`Server`]) on 127.0.0.1 with a port the OS picks, or,
//! for tests that must reach the [`Engine`](segq::engine::Engine) while it
//! serves, the same router in-process ([`InProcess`]). Both are driven
//! through a [`Conn`]: a blocking HTTP client that never goes through a
//! proxy, with short-hands for the admin and partner APIs. [`segq`] runs
//! the binary for one command.
//!
//! The servers are not spawned by the test process itself but by one
//! long-lived `sh` (the [launcher](launch)) that the test process spawns
//! once. A process being spawned holds copies of its parent's file
//! descriptors until it execs, data directory locks included: a test that
//! closes an engine and reopens it at once would find the directory still
//! locked if another test thread were spawning a server just then. The
//! launcher holds no such descriptor, so spawning there disturbs no other
//! test. The launcher writes each server's stderr, pid and exit status to
//! files of a run folder, which the test process reads.
//!
//! A [`Server`] kills its process when dropped (also on panic), and every
//! wait is bounded: the start-up waits at most [`START_TIMEOUT`] for
//! `listening on`, a clean stop at most [`STOP_TIMEOUT`], a request at most
//! [`REQUEST_TIMEOUT`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::HeaderMap;
use reqwest::Method;
use segq::engine::Engine;
use serde_json::{json, Value};

pub use super::PARTNER_API_KEY;

pub const START_TIMEOUT: Duration = Duration::from_secs(30);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a data directory lock is waited for.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Part of the error of a data directory whose lock is held.
const LOCKED: &str = "is locked by another segq process";

/// Opens a data directory in-process (its server must be stopped).
///
/// The directory lock can outlive its holder by a moment: a process that
/// another test thread is spawning shares the test process's descriptors
/// (the lock's among them) between its fork and its exec. So a held lock
/// is retried, for at most [`LOCK_TIMEOUT`].
pub fn open_engine(data: &Path) -> Arc<Engine> {
    let (engine, token) = open_engine_with_token(data);
    assert!(token.is_none(), "the admin token is kept");
    engine
}

/// [`open_engine`] of a directory that may be new: with the admin token
/// a first open generates.
pub fn open_engine_with_token(data: &Path) -> (Arc<Engine>, Option<String>) {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        match Engine::open(data) {
            Ok(opened) => return opened,
            Err(segq::Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{} does not open: {e}", data.display()),
        }
    }
}

/// Every partner segq knows, as in URLs.
pub const PARTNERS: [&str; 8] = [
    "amplitude",
    "mixpanel",
    "heap",
    "census",
    "hightouch",
    "segment",
    "kubit",
    "tinyclues",
];

/// The partner_api_key the tests configure for a partner.
pub fn partner_api_key(partner: &str) -> String {
    if partner == "amplitude" {
        PARTNER_API_KEY.to_string()
    } else {
        format!("pk-{partner}-0000-test")
    }
}

/// Writes `DATA/segq.json` with the tests' partner_api_keys (a data
/// directory's configuration is otherwise generated with random keys).
pub fn write_config(data: &Path) {
    std::fs::create_dir_all(data).expect("creates the data directory");
    let keys: serde_json::Map<String, Value> = PARTNERS
        .iter()
        .map(|p| (p.to_string(), Value::String(partner_api_key(p))))
        .collect();
    let config = json!({"partner_api_keys": keys});
    std::fs::write(
        data.join("segq.json"),
        serde_json::to_vec_pretty(&config).expect("serialises"),
    )
    .expect("writes segq.json");
}

/// Runs `segq ARGS` to its end (without a `SEGQ_TOKEN` from the
/// environment). A data directory lock held for a moment by a process
/// another test is spawning is waited out, for at most [`LOCK_TIMEOUT`].
pub fn segq(args: &[&str]) -> Output {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        let out = segq_once(args);
        let locked = String::from_utf8_lossy(&out.stderr).contains(LOCKED);
        if out.status.success() || !locked || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`segq`] without waiting for a lock.
pub fn segq_once(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segq"))
        .args(args)
        .env_remove("SEGQ_TOKEN")
        .output()
        .expect("segq runs")
}

/// `segq ARGS` once, to its end, with `env` added (and no `SEGQ_*`
/// variable of the test's own environment).
pub fn segq_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segq"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SEGQ_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("segq runs")
}

/// A blocking client for loopback: no proxy, bounded requests.
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("a client")
}

/// The secrets the harness saw created ([`Conn::workspace_key`],
/// [`Conn::create_key`]) or configured (every partner API key): no log
/// line of a [`Server`] may hold one (checked when it stops or is
/// dropped), nor may any response the harness reads, but for the one
/// answer that shows a created key its own `"key"`.
fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(PARTNERS.iter().map(|p| partner_api_key(p)).collect()))
}

/// Notes a secret a test created (see [`secrets`]).
pub fn note_secret(secret: &str) {
    secrets()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(secret.to_string());
}

/// The noted secrets `text` holds.
pub fn secrets_in(text: &str) -> Vec<String> {
    secrets()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .cloned()
        .collect()
}

/// Panics if a line of a server's log holds a noted secret.
fn check_log(stderr: &str) {
    for line in stderr.lines() {
        let found = secrets_in(line);
        assert!(found.is_empty(), "a server log line holds a secret: {line}");
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    fn read(r: reqwest::blocking::Response) -> Resp {
        Resp::try_read(r).expect("a response body")
    }

    fn try_read(r: reqwest::blocking::Response) -> Result<Resp, reqwest::Error> {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text()?;
        let found = secrets_in(&text);
        if !found.is_empty() {
            // A key's creation answer shows that key, and nothing else.
            let own = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("key").and_then(Value::as_str).map(str::to_string));
            assert!(
                status == 201 && found.iter().all(|s| Some(s) == own.as_ref()),
                "a response holds a secret (status {status}): {text}"
            );
        }
        for (name, value) in &headers {
            let found = secrets_in(value.to_str().unwrap_or_default());
            assert!(found.is_empty(), "a response header holds a secret: {name}");
        }
        Ok(Resp {
            status,
            headers,
            text,
        })
    }

    /// The body as JSON; panics (with the body) if it is not, or if the
    /// content type does not say JSON.
    pub fn json(&self) -> Value {
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "status {} content-type {ct:?}: {}",
            self.status,
            self.text
        );
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("status {}: not JSON ({e}): {}", self.status, self.text))
    }

    /// The `message` of a JSON body.
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message in {}", self.text))
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Panics unless the status is `status`.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(self.status, status, "{}", self.text);
        self
    }

    /// Panics unless the status is `status`; the JSON body.
    #[track_caller]
    pub fn expect_json(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        self.json()
    }
}

/// The one `sh` that spawns servers and sends them signals, fed commands
/// on its stdin. It ends when the test process does (its stdin closes).
struct Launcher {
    stdin: ChildStdin,
    _sh: Child,
}

/// Runs a shell command line in the launcher (not waiting for it).
fn launch(command: &str) {
    static LAUNCHER: OnceLock<Mutex<Launcher>> = OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let mut sh = Command::new("sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let stdin = sh.stdin.take().expect("a stdin pipe");
        Mutex::new(Launcher { stdin, _sh: sh })
    });
    let mut l = launcher.lock().unwrap_or_else(|p| p.into_inner());
    l.stdin
        .write_all(format!("{command}\n").as_bytes())
        .and_then(|()| l.stdin.flush())
        .expect("the launcher takes a command");
}

/// A word for `sh`, quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Polls until `f` gives a value or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The client side of a running server: its address, its admin token and
/// a client.
pub struct Conn {
    pub base: String,
    /// The admin token (printed at the first start of a data directory).
    pub token: String,
    pub client: Client,
    /// The workspace API keys with every scope the admin short-hands use,
    /// by workspace: shared by every server of the data directory.
    keys: Arc<Mutex<std::collections::HashMap<String, String>>>,
}

/// Every scope a workspace API key may have.
pub const ALL_SCOPES: [&str; 3] = ["workspace:admin", "segments:read", "users:write"];

/// The all-scope workspace keys of a data directory, by workspace, kept
/// across restarts of its server (so that a restart creates no new key).
fn keys_of(data: &Path) -> Arc<Mutex<std::collections::HashMap<String, String>>> {
    type Keys = Arc<Mutex<std::collections::HashMap<String, String>>>;
    static BY_DIR: OnceLock<Mutex<std::collections::HashMap<PathBuf, Keys>>> = OnceLock::new();
    let mut by_dir = BY_DIR
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    by_dir.entry(data.to_path_buf()).or_default().clone()
}

/// The workspace a path of a workspace route names, and whether the
/// route is one of its API keys routes (the admin token's).
fn workspace_of(path: &str) -> Option<(&str, bool)> {
    let path = path.split('?').next().unwrap_or(path);
    let rest = path
        .strip_prefix("/admin/workspaces/")
        .or_else(|| path.strip_prefix("/workspaces/"))?;
    let (ws, tail) = rest.split_once('/').unwrap_or((rest, ""));
    (!ws.is_empty()).then_some((ws, tail == "api_keys" || tail.starts_with("api_keys/")))
}

/// A `segq serve` process.
pub struct Server {
    /// The folder of this process's stderr, pid and exit status files.
    run: PathBuf,
    pid: u32,
    /// Whether its exit status was seen.
    ended: bool,
    conn: Conn,
}

impl std::ops::Deref for Server {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl Server {
    /// Starts a server on a new data directory with the tests'
    /// configuration; `args` are extra `segq serve` flags.
    pub fn start(data: &Path, args: &[&str]) -> Server {
        write_config(data);
        Server::spawn(data, None, args)
    }

    /// [`Server::start`] with environment variables set for the process.
    pub fn start_with_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        write_config(data);
        Server::spawn_with_env(data, None, args, env)
    }

    /// [`Server::restart`] with environment variables set for the process.
    pub fn restart_with_env(
        data: &Path,
        token: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Server::spawn_with_env(data, Some(token), args, env)
    }

    /// Starts a server on an existing data directory whose admin token is
    /// `token`.
    pub fn restart(data: &Path, token: &str, args: &[&str]) -> Server {
        Server::spawn(data, Some(token), args)
    }

    /// Spawns the server and waits for `listening on`. A data directory
    /// lock still held is waited out, for a bounded time (see
    /// [`open_engine`]).
    fn spawn(data: &Path, token: Option<&str>, args: &[&str]) -> Server {
        Server::spawn_with_env(data, token, args, &[])
    }

    fn spawn_with_env(
        data: &Path,
        token: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            match Server::try_spawn(data, token, args, env) {
                Ok(server) => return server,
                Err(stderr) if stderr.contains(LOCKED) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(stderr) => {
                    panic!("segq serve did not print `listening on`; stderr:\n{stderr}")
                }
            }
        }
    }

    /// Spawns the server with `env` added to its environment.
    pub fn try_spawn(
        data: &Path,
        token: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let parent = data.parent().expect("the data directory has a parent");
        let run = parent.join(format!("run-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&run).expect("creates a run folder");
        let file = |name: &str| quote(&run.join(name).display().to_string());
        let mut command: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        command.extend([
            quote(env!("CARGO_BIN_EXE_segq")),
            "serve".into(),
            "--data".into(),
            quote(&data.display().to_string()),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ]);
        command.extend(args.iter().map(|a| quote(a)));
        // The pid and the status are written whole (renamed into place).
        launch(&format!(
            "( {} </dev/null >/dev/null 2>{} & echo $! >{} && mv {} {}; wait $!; echo $? >{} && mv {} {} ) &",
            command.join(" "),
            file("stderr"),
            file("pid.tmp"),
            file("pid.tmp"),
            file("pid"),
            file("status.tmp"),
            file("status.tmp"),
            file("status"),
        ));
        let pid: u32 = poll(START_TIMEOUT, || {
            std::fs::read_to_string(run.join("pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
        })
        .expect("the launcher starts segq serve");
        let mut server = Server {
            run,
            pid,
            ended: false,
            conn: Conn {
                base: String::new(),
                token: token.unwrap_or_default().to_string(),
                client: client(),
                keys: keys_of(data),
            },
        };
        let listening = poll(START_TIMEOUT, || {
            let text = server.stderr_text();
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            // As a text or a JSON log line.
            let addr = complete
                .lines()
                .find_map(|l| l.split_once("listening on "))
                .and_then(|(_, a)| a.split([' ', '"']).next())
                .map(str::to_string);
            match addr {
                Some(a) => Some(Ok(a)),
                None if server.exit_status().is_some() => Some(Err(())),
                None => None,
            }
        });
        let addr = match listening {
            Some(Ok(addr)) => addr,
            _ => {
                server.kill_process();
                return Err(server.stderr_text());
            }
        };
        let addr: std::net::SocketAddr = addr.parse().expect("an address after `listening on`");
        assert!(addr.ip().is_loopback(), "{addr}");
        server.conn.base = format!("http://{addr}");
        if let Some(t) = server
            .stderr_text()
            .lines()
            .find_map(|l| l.strip_prefix("admin token: "))
        {
            server.conn.token = t.trim().to_string();
        }
        assert!(
            !server.token.is_empty(),
            "no admin token printed and none given"
        );
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.run.join("stderr")).unwrap_or_default()
    }

    /// The exit status, once the process ended.
    fn exit_status(&self) -> Option<i32> {
        std::fs::read_to_string(self.run.join("status"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Sends a signal and waits up to `timeout` for the exit status.
    fn signal(&mut self, signal: &str, timeout: Duration) -> Option<i32> {
        if self.ended {
            return self.exit_status();
        }
        if self.exit_status().is_none() {
            launch(&format!("kill -s {signal} {}", self.pid));
        }
        let status = poll(timeout, || self.exit_status());
        self.ended = status.is_some();
        status
    }

    /// Sends SIGTERM without waiting for the process to end.
    pub fn terminate(&self) {
        launch(&format!("kill -s TERM {}", self.pid));
    }

    /// Waits up to `timeout` for the process to end; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = poll(timeout, || self.exit_status());
        self.ended |= status.is_some();
        status
    }

    /// Stops the server cleanly with SIGTERM and waits for it to exit;
    /// panics unless it exits with success within [`STOP_TIMEOUT`].
    /// Returns its stderr.
    pub fn stop(mut self) -> String {
        let status = self.signal("TERM", STOP_TIMEOUT);
        let text = self.stderr_text();
        assert_eq!(status, Some(0), "segq serve did not stop cleanly:\n{text}");
        check_log(&text);
        text
    }

    /// Kills the server with SIGKILL (no chance to flush or sync anything)
    /// and waits until it is gone.
    pub fn kill(mut self) {
        let status = self.signal("KILL", STOP_TIMEOUT);
        assert!(status.is_some(), "segq serve survived SIGKILL");
    }

    fn kill_process(&mut self) {
        let _ = self.signal("KILL", STOP_TIMEOUT);
    }
}

impl Conn {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Any request; `content_type` `None` sends no content type. With
    /// `admin`, the credential the route needs: the admin token for
    /// `/admin/workspaces` and a workspace's API keys, otherwise the
    /// workspace's all-scope API key ([`Conn::workspace_key`]).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        admin: bool,
    ) -> Resp {
        let send = |token: Option<&str>| {
            let mut req = self
                .client
                .request(method.clone(), self.url(path))
                .body(body.clone());
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            Resp::read(req.send().expect("the server answers"))
        };
        match workspace_of(path).filter(|_| admin) {
            None => send(admin.then_some(self.token.as_str())),
            Some((_, true)) => send(Some(&self.token)),
            Some((ws, false)) => {
                let Some(key) = self.workspace_key(ws) else {
                    // No such workspace: the 404 a key of another one
                    // gets (the admin token would get a 403).
                    let other = self
                        .keys
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                        .next()
                        .cloned();
                    return send(Some(other.as_deref().unwrap_or(&self.token)));
                };
                let r = send(Some(&key));
                if r.status != 401 {
                    return r;
                }
                // A key of a workspace since restored or made anew.
                self.keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(ws);
                match self.workspace_key(ws) {
                    Some(key) => send(Some(&key)),
                    None => r,
                }
            }
        }
    }

    /// The workspace's API key with every scope, created with the admin
    /// token the first time it is needed; `None` if there is no such
    /// workspace.
    pub fn workspace_key(&self, ws: &str) -> Option<String> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get(ws) {
            return Some(k.clone());
        }
        let r = self
            .client
            .post(self.url(&format!("/admin/workspaces/{ws}/api_keys")))
            .bearer_auth(&self.token)
            .json(&json!({"name": "tests", "scopes": ALL_SCOPES}))
            .send()
            .expect("the server answers");
        let r = Resp::read(r);
        if r.status == 404 {
            return None;
        }
        let key = r.expect_json(201)["key"]
            .as_str()
            .expect("a key")
            .to_string();
        note_secret(&key);
        keys.insert(ws.to_string(), key.clone());
        Some(key)
    }

    /// A POST with `client` that returns a transport error (a reset
    /// connection, say) instead of panicking.
    pub fn try_post(
        &self,
        client: &Client,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Resp, reqwest::Error> {
        let mut req = client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().and_then(Resp::try_read)
    }

    /// POSTs a JSON value.
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.request(
            Method::POST,
            path,
            Some("application/json"),
            serde_json::to_vec(body).expect("serialises"),
            false,
        )
    }

    /// POSTs raw bytes with a content type.
    pub fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
        self.request(Method::POST, path, content_type, body, false)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, None, Vec::new(), false)
    }

    /// An admin GET with the admin token.
    pub fn admin_get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, None, Vec::new(), true)
    }

    /// An admin POST of a JSON value with the admin token.
    pub fn admin_post(&self, path: &str, body: &Value) -> Resp {
        self.request(
            Method::POST,
            path,
            Some("application/json"),
            serde_json::to_vec(body).expect("serialises"),
            true,
        )
    }

    /// An admin PUT of a JSON value with the admin token.
    pub fn admin_put(&self, path: &str, body: &Value) -> Resp {
        self.request(
            Method::PUT,
            path,
            Some("application/json"),
            serde_json::to_vec(body).expect("serialises"),
            true,
        )
    }

    pub fn admin_delete(&self, path: &str) -> Resp {
        self.request(Method::DELETE, path, None, Vec::new(), true)
    }

    /// Creates a workspace (201).
    pub fn create_workspace(&self, name: &str) {
        self.admin_post("/admin/workspaces", &json!({"name": name}))
            .expect(201);
    }

    /// Generates a data import key: `(id, key)`.
    pub fn create_key(&self, ws: &str, partner: &str) -> (String, String) {
        let body = self
            .admin_post(
                &format!("/admin/workspaces/{ws}/partners/{partner}/keys"),
                &json!({}),
            )
            .expect(201)
            .json();
        let key = body["key"].as_str().expect("a key").to_string();
        note_secret(&key);
        (body["id"].as_str().expect("an id").to_string(), key)
    }

    /// Creates or updates a user (`{"external_id", "devices", "aliases"}`);
    /// returns its user id.
    pub fn upsert_user(&self, ws: &str, user: &Value) -> u64 {
        let r = self.admin_post(&format!("/admin/workspaces/{ws}/users"), user);
        assert!(r.status == 200 || r.status == 201, "{}", r.text);
        r.json()["user_id"].as_u64().expect("a user_id")
    }

    /// `GET /admin/workspaces/{ws}/cohorts`.
    pub fn cohorts(&self, ws: &str) -> Vec<Value> {
        let v = self
            .admin_get(&format!("/admin/workspaces/{ws}/cohorts"))
            .expect(200)
            .json();
        v.as_array().expect("an array").clone()
    }

    /// One cohort of the listing, if it is there.
    pub fn cohort(&self, ws: &str, partner: &str, cohort_id: &str) -> Option<Value> {
        self.cohorts(ws)
            .into_iter()
            .find(|c| c["partner"] == partner && c["cohort_id"] == cohort_id)
    }

    /// A cohort's size (panics if the listing does not have it).
    pub fn size(&self, ws: &str, partner: &str, cohort_id: &str) -> u64 {
        self.cohort(ws, partner, cohort_id)
            .unwrap_or_else(|| panic!("no cohort {partner}/{cohort_id}"))["size"]
            .as_u64()
            .expect("a size")
    }

    /// `GET /admin/workspaces`.
    pub fn workspaces(&self) -> Value {
        self.admin_get("/admin/workspaces").expect(200).json()
    }

    /// POSTs to `/partners/{partner}/cohorts/users`.
    pub fn users(&self, partner: &str, body: &Value) -> Resp {
        self.post(&format!("/partners/{partner}/cohorts/users"), body)
    }

    /// POSTs to `/partners/{partner}/cohorts`.
    pub fn create_cohort(&self, partner: &str, body: &Value) -> Resp {
        self.post(&format!("/partners/{partner}/cohorts"), body)
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").expect(200).text
    }

    /// One sample of `/metrics` (its name with labels, as printed), or 0
    /// when it is not printed.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_in(&self.metrics(), sample)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_process();
        if !std::thread::panicking() {
            check_log(&self.stderr_text());
        }
    }
}

/// The router of `segq serve` run in-process on loopback, for tests that
/// must reach the engine while it serves. It stops (and syncs) when
/// dropped, unless the test is panicking.
pub struct InProcess {
    rt: tokio::runtime::Runtime,
    engine: Option<Arc<Engine>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    conn: Conn,
}

impl std::ops::Deref for InProcess {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl InProcess {
    /// Serves the data directory `data`; `token` is the admin token of a
    /// directory opened before (a new one makes its own).
    pub fn start(data: &Path, token: Option<String>) -> InProcess {
        let (engine, new_token) = open_engine_with_token(data);
        let token = token.or(new_token).expect("an admin token");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binds");
        let base = format!("http://{}", listener.local_addr().expect("an address"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(segq::server::serve(engine.clone(), listener, async {
            let _ = rx.await;
        }));
        InProcess {
            rt,
            engine: Some(engine),
            stop: Some(tx),
            task: Some(task),
            conn: Conn {
                base,
                token,
                client: client(),
                keys: keys_of(data),
            },
        }
    }

    /// The engine it serves.
    pub fn engine(&self) -> &Arc<Engine> {
        self.engine.as_ref().expect("running")
    }

    /// Stops serving and closes the data directory; returns the admin
    /// token.
    pub fn stop(mut self) -> String {
        self.shutdown();
        self.conn.token.clone()
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let served = self.rt.block_on(task).expect("the server task ends");
            served.expect("serves and syncs cleanly");
        }
        self.engine = None;
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.shutdown();
        }
    }
}

/// One sample of a metrics text, or 0 when it is not there.
pub fn metric_in(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse::<f64>().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// A users request body of amplitude with the tests' partner_api_key.
pub fn users_body(secret: &str, cohort_id: &str, changes: Value) -> Value {
    json!({
        "partner_api_key": PARTNER_API_KEY,
        "client_secret": secret,
        "cohort_id": cohort_id,
        "cohort_changes": changes,
    })
}

/// A create-or-rename body of amplitude with the tests' partner_api_key.
pub fn cohort_body(secret: &str, cohort_id: &str, name: &str) -> Value {
    json!({
        "partner_api_key": PARTNER_API_KEY,
        "client_secret": secret,
        "cohort_id": cohort_id,
        "name": name,
        "created_at": "2021-01-21T19:20:30+05:00",
    })
}

/// A server on a fresh temporary directory with one workspace and one
/// amplitude key.
pub struct Fixture {
    pub server: Server,
    pub ws: String,
    pub key_id: String,
    pub secret: String,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(args: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("a temp dir");
        let server = Server::start(&dir.path().join("data"), args);
        let ws = "acme".to_string();
        server.create_workspace(&ws);
        let (key_id, secret) = server.create_key(&ws, "amplitude");
        Fixture {
            server,
            ws,
            key_id,
            secret,
            dir,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What a client of the running server can observe: the workspaces
    /// listing, the cohorts listing, and the workspace's files with their
    /// sizes (the in-memory [`fingerprint`](super::fingerprint) needs the
    /// server stopped).
    pub fn observed(&self) -> (Value, Vec<Value>, Vec<(String, u64)>) {
        let s = &self.server;
        (s.workspaces(), s.cohorts(&self.ws), self.workspace_files())
    }

    /// The files of the workspace's folder (its log,
    /// `DATA/workspaces/NAME/changes.segqlog`, and whatever a compaction
    /// left) with their sizes, by name.
    pub fn workspace_files(&self) -> Vec<(String, u64)> {
        let folder = self.data().join("workspaces").join(&self.ws);
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&folder)
            .expect("the workspace folder")
            .map(|e| {
                let e = e.expect("a folder entry");
                let len = e.metadata().expect("metadata").len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        files.sort();
        assert!(
            files.iter().any(|(name, _)| name.ends_with(".segqlog")),
            "no log in {files:?}"
        );
        files
    }
}

/// A cohort's members by external id (anonymous users as `#<user id>`),
/// read by opening a data directory in-process: the server on it must be
/// stopped (the engine locks the directory).
pub fn members_on_disk(
    data: &Path,
    ws: &str,
    partner: segq::Partner,
    cohort_id: &str,
) -> std::collections::BTreeSet<String> {
    let engine = open_engine(data);
    let handle = engine.workspace(ws).expect("the workspace is there");
    let w = handle.read();
    let Some(cohort) = w.cohorts.get(&segq::CohortKey::new(partner, cohort_id)) else {
        return Default::default();
    };
    cohort
        .members
        .iter()
        .expect("the cohort's bitmap reads")
        .map(|u| {
            w.users
                .get(segq::UserId(u))
                .and_then(|r| r.external_id.as_deref().map(str::to_string))
                .unwrap_or_else(|| format!("#{u}"))
        })
        .collect()
}
