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
