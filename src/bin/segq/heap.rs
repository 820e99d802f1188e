//! The C allocator's settings for a long-running engine (glibc only).
//!
//! By default glibc's malloc returns memory to the system as soon as more
//! than 128 KiB is free at the top of a heap, and serves large
//! allocations from mappings of their own that are unmapped when freed. A
//! query that builds a few megabytes (the users an attribute test
//! selects, a page of members, a bitmap serialized for the evaluator)
//! then pays a page fault for every 4 KiB it touches, on every run. On
//! the medium workload, selecting `country equals "BR"` (about a million
//! users) took 0.6 ms that way, and 0.05 ms with the settings below.
//!
//! So segq keeps up to [`TRIM`] bytes free at the top of each heap, and
//! serves every allocation below [`MMAP`] from the heaps. Memory freed
//! after a large query stays with the process for the next one (resident
//! memory does not fall back at once), up to [`TRIM`] a heap. Settings
//! given in the environment (`MALLOC_TRIM_THRESHOLD_`,
//! `MALLOC_MMAP_THRESHOLD_`, or `GLIBC_TUNABLES`) are left as they are.
//!
//! Contract: the binary's only `unsafe` is the two `mallopt` calls in
//! [`tune`], which change the allocator's parameters and touch no memory
//! of the program's.

/// Bytes kept free at the top of a heap before any goes back.
pub const TRIM: i32 = 256 << 20;

/// Allocations of at least this many bytes get a mapping of their own
/// (glibc's largest allowed threshold on 64-bit systems).
pub const MMAP: i32 = 32 << 20;

/// Applies [`TRIM`] and [`MMAP`] unless the environment sets the
/// allocator; whether they were applied.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() -> bool {
    if set_by_env() {
        return false;
    }
    // SAFETY: `mallopt` only changes the allocator's parameters, under
    // the allocator's own lock (glibc documents it MT-safe); `main` calls
    // it before any other thread exists anyway.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM) == 1
    }
}

/// Whether the environment gives glibc's malloc settings of its own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_by_env() -> bool {
    ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."))
}

/// Other allocators are left as they are.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// glibc accepts both settings (a threshold past its limits is
    /// refused, and `tune` says so) unless the environment set its own.
    #[test]
    fn glibc_takes_the_settings() {
        if !super::set_by_env() {
            assert!(
                super::tune(),
                "mallopt refused {} / {}",
                super::MMAP,
                super::TRIM
            );
        }
    }
}
