//! The process allocator of the `lakegate` binary and the benchmark binaries.
//!
//! mimalloc: DataFusion's and Cedar's many short-lived allocations are cheaper than with the
//! system allocator (benches/HISTORY.md §2), which is also what datafusion-cli ships. It keeps
//! freed pages for `MIMALLOC_PURGE_DELAY` ms (1,000 by default) before returning them to the OS:
//! a shorter delay lowers the peak resident set under a memory pool but makes queries slower
//! (HISTORY.md §4), so lakegate keeps mimalloc's default and operators choose.

pub use mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: the same index in mimalloc 2 and 3 (`mimalloc.h`);
/// libmimalloc-sys does not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's purge delay in milliseconds (`MIMALLOC_PURGE_DELAY`, else 1,000), for reports.
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reads one option value; mimalloc initialised its options when the process loaded.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_read_from_the_option_the_environment_sets() {
        match std::env::var_os("MIMALLOC_PURGE_DELAY") {
            Some(v) => assert_eq!(purge_delay_ms().to_string(), v.to_string_lossy()),
            // mimalloc 3's default: fails if the index names another option.
            None => assert_eq!(purge_delay_ms(), 1_000),
        }
    }
}
