//! Every verifier check is proven by a deliberately broken fixture driver that trips it
//! (fixtures/examples/*.rs, built by `cargo xtask test` into target/fixtures). Each runs in
//! its own storsim process, like a bug check would end its machine.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    let dir = std::env::var_os("STORSIM_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"),
        PathBuf::from,
    );
    assert!(
        dir.join("clean.sys").exists(),
        "fixture drivers missing in {}: run `cargo xtask test`",
        dir.display()
    );
    dir
}

/// Runs `storsim run <fixture>.sys --scenario fixture --json`; returns (exit code, report).
fn run(fixture: &str) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_storsim"))
        .arg("run")
        .arg(fixtures().join(format!("{fixture}.sys")))
        .args([
            "--scenario",
            "fixture",
            "--json",
            "--rundown-limit-ms",
            "300",
        ])
        .output()
        .expect("storsim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout
        .find('{')
        .and_then(|start| serde_json::from_str(stdout[start..].trim()).ok())
        .unwrap_or_else(|| {
            panic!(
                "{fixture}: no JSON report in {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    (output.status.code().unwrap_or(-1), json)
}

/// Asserts the run failed with a violation `code` whose P1 is `p1` (when given).
fn trips(fixture: &str, code: u64, p1: Option<u64>) {
    let (exit, report) = run(fixture);
    assert_ne!(exit, 0, "{fixture}: a violation must fail the run");
    let violations = report["violations"].as_array().expect("violations array");
    let found = violations.iter().any(|v| {
        v["code"].as_u64() == Some(code) && p1.is_none_or(|p1| v["params"][0].as_u64() == Some(p1))
    });
    assert!(
        found,
        "{fixture}: expected bug check {code:#x}/{p1:x?}, got {}",
        serde_json::to_string_pretty(violations).unwrap_or_default()
    );
}

#[test]
fn clean_fixture_passes_every_check() {
    let (exit, report) = run("clean");
    assert_eq!(report["violations"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["irps"]["outstanding"], 0);
    assert_eq!(exit, 0);
}

#[test]
fn double_completion_is_0x44() {
    trips("double_completion", 0x44, None);
}

#[test]
fn completion_with_status_pending_is_0xc9_6() {
    trips("complete_pending", 0xC9, Some(0x06));
}

#[test]
fn completion_with_cancel_routine_set_is_0xc9_7() {
    trips("cancel_routine_left_set", 0xC9, Some(0x07));
}

#[test]
fn information_beyond_output_buffer_is_0xc9_312() {
    trips("information_too_large", 0xC9, Some(0x312));
}

#[test]
fn unwritten_output_bytes_are_a_disclosure() {
    trips("output_not_written", 0xC4, Some(0x5700_0004));
}

#[test]
fn system_buffer_overrun_hits_the_guard_page() {
    trips("overrun", 0xCD, None);
}

#[test]
fn system_buffer_underrun_is_found_at_completion() {
    trips("underrun", 0xC1, None);
}

#[test]
fn touching_a_completed_irp_faults_in_freed_pool() {
    trips("use_after_completion", 0xCC, None);
}

#[test]
fn pool_leak_at_unload_is_0xc4_62() {
    trips("pool_leak", 0xC4, Some(0x62));
}

#[test]
fn double_free_is_0xc4_13() {
    trips("double_free", 0xC4, Some(0x13));
}

#[test]
fn removal_that_cannot_finish_is_reported() {
    trips("removal_leaks_irp", 0xC4, Some(0x5700_0003));
}

#[test]
fn cancelled_irp_never_completed_is_0xc4_135() {
    trips("no_cancel_routine", 0xC4, Some(0x135));
}

#[test]
fn spin_lock_held_when_a_callback_returns() {
    trips("lock_held_on_return", 0xC4, Some(0x0004_0006));
}

#[test]
fn release_without_acquire_is_0xc4_1007() {
    trips("release_unacquired", 0xC4, Some(0x1007));
}

#[test]
fn recursive_acquire_is_0xc4_1000() {
    trips("recursive_lock", 0xC4, Some(0x1000));
}

#[test]
fn lock_order_cycle_is_0xc4_1001() {
    trips("lock_order", 0xC4, Some(0x1001));
}

#[test]
fn completion_under_a_spin_lock_breaks_spinlocksafe() {
    trips("complete_under_lock", 0xC4, Some(0x5700_0001));
}

#[test]
fn service_irp_completed_with_iocompleterequest() {
    trips("io_complete_request", 0xC4, Some(0x5700_0002));
}

#[test]
fn completion_above_dispatch_is_0xc9_e() {
    trips("complete_at_high_irql", 0xC9, Some(0x0E));
}

#[test]
fn irql_changed_across_a_callback_is_0xc9_5() {
    trips("irql_not_restored", 0xC9, Some(0x05));
}

#[test]
fn srb_completed_pending() {
    trips("srb_status_pending", 0xC4, Some(0x5700_0006));
}

#[test]
fn find_adapter_without_virtual_device() {
    trips("not_virtual", 0xC4, Some(0x5700_0007));
}

#[test]
fn driver_bug_check_ends_the_run() {
    trips("bug_check", 0xDEAD, Some(1));
}

#[test]
fn bad_init_data_size_fails_driver_entry() {
    let (exit, report) = run("bad_init_size");
    assert_ne!(exit, 0);
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("0xc0000059"), "{report:#}");
}

#[test]
fn missing_import_refuses_the_load_naming_it() {
    let (exit, report) = run("missing_import");
    assert_ne!(exit, 0);
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("ntoskrnl.exe!ZwCreateFile"), "{report:#}");
}
