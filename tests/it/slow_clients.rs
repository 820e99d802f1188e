//! Clients that connect and stall, before any credentials are checked:
//! the server's connections and memory stay bounded, stalled connections
//! are closed after the (short, here) timeouts, and normal requests are
//! answered meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::support::server::{users_body, Fixture};

const STALLED: usize = 1000;
const MAX_CONNECTIONS: usize = 600;
/// What 1,000 stalled bodies of 1 MiB would hold if buffered as announced.
const ANNOUNCED: u64 = STALLED as u64 / 2 * (1 << 20);

/// The open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Reads until the server closes the connection; false if it stays open
/// past the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            // Reset: closed too.
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn stalled_clients_are_bounded_and_closed_and_others_are_served() {
    let max = MAX_CONNECTIONS.to_string();
    let f = Fixture::new(&[
        "--header-read-timeout-secs",
        "1",
        "--body-read-timeout-secs",
        "1",
        "--max-connections",
        &max,
        "--max-buffered-body-bytes",
        "4194304",
    ]);
    let s = &f.server;
    let pid = s.pid();
    // On a client of its own, dropped after: no kept-alive connection of
    // the server's client idles past the 1 s header timeout while the
    // stalled ones connect, to be closed by the server as it is reused.
    let first = crate::support::server::client()
        .post(s.url("/partners/amplitude/cohorts/users"))
        .json(&users_body(&f.secret, "c1", json!([{"user_ids": ["u1"]}])))
        .send()
        .expect("the server answers");
    assert_eq!(first.status().as_u16(), 201);
    drop(first);
    let fds_before = fds(pid);
    let rss_before = rss(pid);

    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let mut c = TcpStream::connect(&addr).expect("connects");
        c.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("sets a read timeout");
        let head = if i % 2 == 0 {
            // Half-sent headers.
            "POST /partners/amplitude/cohorts/users HTTP/1.1\r\nHost: x\r\nContent-Ty".to_string()
        } else {
            // Whole headers announcing 1 MiB, then nothing.
            format!(
                "POST /partners/amplitude/cohorts/users HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                1 << 20
            )
        };
        // The server may already have closed an early one to make room.
        let _ = c.write_all(head.as_bytes());
        stalled.push(c);
    }

    // Meanwhile: normal partner and segment requests are answered.
    s.post(
        "/partners/amplitude/cohorts/users",
        &users_body(&f.secret, "c1", json!([{"user_ids": ["u2"]}])),
    )
    .expect(200);
    let count = s
        .request(
            Method::POST,
            "/workspaces/acme/segments/count",
            Some("application/json"),
            serde_json::to_vec(&json!({"filter": "amplitude_cohorts includes_value c1"}))
                .expect("serialises"),
            true,
        )
        .expect(200);
    assert_eq!(count.json()["count"], 0, "{}", count.text);

    // Bounded: connections (the server's own gauge and its descriptors)
    // and memory (buffered bodies, and resident memory far below what
    // buffering the announced bodies would take).
    let open = s.metric("segq_http_open_connections");
    assert!(open <= MAX_CONNECTIONS as f64, "{open} connections open");
    let fds_now = fds(pid);
    assert!(
        fds_now <= fds_before + MAX_CONNECTIONS + 16,
        "{fds_before} descriptors before, {fds_now} with {STALLED} stalled clients"
    );
    let buffered = s.metric("segq_http_buffered_body_bytes");
    assert!(buffered <= 4194304.0, "{buffered} body bytes buffered");
    let grown = rss(pid).saturating_sub(rss_before);
    assert!(
        grown < ANNOUNCED / 4,
        "resident memory grew by {grown} bytes"
    );

    // Every stalled connection is closed by the server: the header ones
    // by the header timeout (or to make room), the body ones by the body
    // timeout (a 408) or to make room.
    let still_open = stalled
        .iter_mut()
        .map(closed_by_server)
        .filter(|closed| !closed)
        .count();
    assert_eq!(still_open, 0, "stalled connections left open");
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.metric("segq_http_open_connections") > 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = s.metrics();
    let closed = |reason: &str| {
        crate::support::server::metric_in(
            &metrics,
            &format!("segq_http_connections_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(s.metric("segq_http_open_connections") <= 1.0, "{metrics}");
    assert!(closed("header_timeout") > 0.0, "{metrics}");
    assert!(closed("body_timeout") > 0.0, "{metrics}");
    // Whether some were evicted to make room depends on how fast the
    // clients connected against the 1 s timeouts: see the test below.
    assert!(
        closed("header_timeout") + closed("body_timeout") + closed("evicted") >= STALLED as f64,
        "{metrics}"
    );

    // And the server still serves.
    s.post(
        "/partners/amplitude/cohorts/users",
        &users_body(&f.secret, "c1", json!([{"user_ids": ["u3"]}])),
    )
    .expect(200);
}

#[test]
fn past_the_connection_limit_stalled_connections_are_evicted_for_new_ones() {
    const LIMIT: usize = 8;
    let max = LIMIT.to_string();
    // Timeouts far longer than the test: only eviction can make room.
    let f = Fixture::new(&[
        "--header-read-timeout-secs",
        "600",
        "--body-read-timeout-secs",
        "600",
        "--max-connections",
        &max,
    ]);
    let s = &f.server;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for _ in 0..4 * LIMIT {
        let mut c = TcpStream::connect(&addr).expect("connects");
        c.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("sets a read timeout");
        let _ = c.write_all(b"POST /partners/amplitude/cohorts/users HTTP/1.1\r\nHost: x\r\nCont");
        stalled.push(c);
    }
    // A normal request gets through, making room by eviction. A fresh
    // client: a pooled keep-alive connection is itself an idle one, the
    // first to be evicted.
    let client = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client");
    let resp = s
        .try_post(
            &client,
            "/partners/amplitude/cohorts/users",
            Some("application/json"),
            serde_json::to_vec(&users_body(&f.secret, "c1", json!([{"user_ids": ["u1"]}])))
                .expect("serialises"),
        )
        .expect("answered");
    assert_eq!(resp.status, 201, "{}", resp.text);
    // Evicted connections are counted as their tasks end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("segq_http_connections_closed_total{reason=\"evicted\"}") < (3 * LIMIT) as f64
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = s.metrics();
    let evicted = crate::support::server::metric_in(
        &metrics,
        "segq_http_connections_closed_total{reason=\"evicted\"}",
    );
    assert!(evicted >= (3 * LIMIT) as f64, "{metrics}");
    assert!(
        s.metric("segq_http_open_connections") <= LIMIT as f64,
        "{metrics}"
    );
    assert!(
        crate::support::server::metric_in(
            &metrics,
            "segq_http_connections_closed_total{reason=\"header_timeout\"}"
        ) == 0.0,
        "{metrics}"
    );
    // The longest waiting were evicted first, and closed by the server
    // (the newest may still be open: not read, or each would wait out its
    // read timeout).
    let oldest = &mut stalled[..3 * LIMIT];
    let closed = oldest
        .iter_mut()
        .map(closed_by_server)
        .filter(|c| *c)
        .count();
    assert_eq!(closed, 3 * LIMIT, "of the {} oldest", 3 * LIMIT);
}

/// Sends `GET /metrics` on `s` and reads the whole response; its status
/// (0 if the connection failed).
fn get_metrics(s: &mut TcpStream) -> u16 {
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return 0;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    // Bounded: a response is far smaller than 64 reads.
    for _ in 0..64 {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return 0,
            Ok(n) => n,
        };
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if got.len() >= end + 4 + len {
            return head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
    0
}

#[test]
fn a_kept_alive_connection_stays_open_while_used_and_closes_once_idle() {
    let f = Fixture::new(&[
        "--idle-timeout-secs",
        "1",
        "--header-read-timeout-secs",
        "1",
    ]);
    let addr = f.server.base.trim_start_matches("http://").to_string();
    let mut c = TcpStream::connect(&addr).expect("connects");
    c.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("sets a read timeout");
    // Requests 100 ms apart for three idle timeouts: the connection's
    // deadline moves on with each, and it is never closed.
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(3) && served < 100 {
        assert_eq!(get_metrics(&mut c), 200, "request {served} answered");
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served >= 10, "{served}");
    // Then idle: closed by the server.
    assert!(closed_by_server(&mut c), "closed once idle");
    let text = f.server.get("/metrics").expect(200).text;
    assert!(
        text.lines().any(|l| l
            .starts_with("segq_http_connections_closed_total{reason=\"idle_timeout\"}")
            && !l.ends_with(" 0")),
        "{text}"
    );
}
