//! The binary's memory allocator: mimalloc, in place of the C library's
//! malloc.
//!
//! A segq server allocates in many threads at once and in very different
//! sizes: the identifiers of a 1,000-id import batch one string each, the
//! bodies of requests and answers, the few megabytes of a bitmap an
//! attribute test selects, a compaction's buffers. Under the load test
//! (`segq loadtest`, 10M users, imports, queries and compactions at once)
//! glibc's malloc took 38% of all CPU time (`_int_malloc`,
//! `malloc_consolidate`, `_int_free`, `unlink_chunk`), most of it in its
//! arenas' free lists. With mimalloc the same load acknowledged 1.06–1.29x
//! as many identifier changes a second (five alternated pairs, median
//! 1.20x), and its check p99 fell from 4.0–5.4 ms to 2.9–3.9 ms.
//!
//! mimalloc also keeps freed memory for the next query: pages go back to
//! the system only after they stayed free for its purge delay (1 s in the
//! version built here), so a query that builds megabytes does not
//! page-fault through them again on every run. Its settings can be given
//! in the environment (`MIMALLOC_PURGE_DELAY` in milliseconds, and the
//! others mimalloc documents); segq sets none of them.
//!
//! The library does not choose an allocator: a program embedding it keeps
//! its own.

/// Every allocation of the binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
