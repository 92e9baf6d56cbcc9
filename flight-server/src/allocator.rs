//! The process allocator of the `lakegate` binary and the benchmark binaries.
//!
//! mimalloc: DataFusion's and Cedar's many short-lived allocations are cheaper than with the
//! system allocator (benches/RESULTS.md §2), which is also what datafusion-cli ships. mimalloc 3
//! keeps freed pages for 1,000 ms before returning them to the OS; at SF 10 under a 4 GiB pool
//! that raised the peak resident set by a quarter over the system allocator's (RESULTS.md §4).
//! lakegate sets 10 ms (mimalloc 2's default): peaks near the system allocator's, decisions as
//! fast as at 1,000 ms (0 ms cost them 10–70% at p50). `MIMALLOC_PURGE_DELAY` overrides it.

pub use mimalloc::MiMalloc;

/// lakegate's purge delay, in milliseconds.
pub const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// mimalloc's `mi_option_purge_delay`: the same index in mimalloc 2 and 3 (`mimalloc.h`);
/// libmimalloc-sys does not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets lakegate's allocator options; the environment (`MIMALLOC_*`) still wins. Call first in
/// `main`, before any other thread starts: mimalloc's option setters are not thread-safe.
pub fn configure() {
    // SAFETY: writes one option value (an index below `_mi_option_last`); no other thread runs.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

/// mimalloc's current purge delay in milliseconds (0: freed pages go back to the OS at once).
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reads one option value.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_sets_the_purge_delay_unless_the_environment_does() {
        if let Some(v) = std::env::var_os("MIMALLOC_PURGE_DELAY") {
            configure();
            assert_eq!(purge_delay_ms().to_string(), v.to_string_lossy());
            return;
        }
        // mimalloc 3's default purge delay: fails if the index names another option.
        assert_eq!(purge_delay_ms(), 1_000);
        configure();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
