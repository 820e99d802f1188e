//! The medium workload's snapshot for the benches that read it (10M
//! users, 200 cohorts, seed 42 of ../shared/WORKLOAD.md): the file named
//! by `SEGQ_BENCH_SNAPSHOT`, else `target/bench-data/medium-42.segqsnap`,
//! written once (through a temporary name, so an interrupted write is
//! never taken for a whole file).

use segq::workload;

pub fn medium_snapshot() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SEGQ_BENCH_SNAPSHOT") {
        return p.into();
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let path = dir.join("medium-42.segqsnap");
    if !path.exists() {
        std::fs::create_dir_all(&dir).expect("creates target/bench-data");
        let tmp = dir.join("medium-42.segqsnap.tmp");
        let spec = workload::Spec {
            users: 10_000_000,
            cohorts: 200,
            seed: 42,
        };
        let file = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("creates"));
        let (mut file, _) = workload::write_snapshot("bench", spec, file).expect("writes");
        std::io::Write::flush(&mut file).expect("flushes");
        std::fs::rename(&tmp, &path).expect("renames");
    }
    path
}
