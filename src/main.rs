fn main() -> std::process::ExitCode {
    // Blocks of a megabyte and more (Graph's upload chunks are 3.2 MB) are mapped on their own
    // and given back to the kernel when freed. glibc's default threshold rises to the largest
    // block freed so far; past that, such blocks come from the malloc arenas (one per thread
    // that allocates) and stay there once freed: four 30 MB scans through Graph left 52 MB of
    // heap instead of 26 (benchmarks/large.sh).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc setting; nothing has allocated from another thread yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    smtprelay::cli::run()
}
