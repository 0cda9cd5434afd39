//! What the integration tests that run revcall.sys under storsim share.

use std::path::PathBuf;

/// The built driver: `$REVCALL_SYS` (set by `cargo xtask test`) or the release build.
pub fn revcall_sys() -> PathBuf {
    let path = std::env::var_os("REVCALL_SYS").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-pc-windows-msvc/release/revcall.sys")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask test`",
        path.display()
    );
    path
}

/// revcall.sys loaded and its adapter started, with `config` (no timeline).
#[allow(
    dead_code,
    reason = "each test crate compiles this module; not all of them boot"
)]
pub fn start_with(config: storsim::machine::Config) -> storsim::harness::Harness {
    storsim::harness::Harness::start(
        &revcall_sys(),
        storsim::machine::Config {
            timeline: false,
            ..config
        },
    )
    .expect("revcall.sys loads and starts")
}

/// Removal, unload and the verdict: no violation, nothing outstanding, no pool left.
#[allow(
    dead_code,
    reason = "each test crate compiles this module; not all of them boot"
)]
pub fn finish(harness: storsim::harness::Harness) {
    let summary = harness.finish();
    assert!(summary.violations.is_empty(), "{}", summary.text(false));
    assert_eq!(summary.irps.outstanding, Some(0));
    assert_eq!(summary.pool_outstanding, 0);
}
