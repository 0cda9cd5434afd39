//! Every verifier check is proven by a deliberately broken fixture driver that trips it
//! (fixtures/examples/*.rs, built by `cargo xtask test` into target/fixtures). Each runs in
//! its own storsim process, like a bug check would end its machine.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// However broken the driver, storsim must finish a fixture run: a hang is a storsim bug.
const LIMIT: Duration = Duration::from_secs(60);

/// Waits for `child` at most `limit`, killing it (and failing the test) if it hangs.
fn within(limit: Duration, child: Child, fixture: &str) -> Output {
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(output) => output.expect("storsim's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{fixture}: storsim did not finish within {limit:?}");
        }
    }
}

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
    let image = fixtures().join(format!("{fixture}.sys"));
    storsim_json(
        fixture,
        Command::new(env!("CARGO_BIN_EXE_storsim"))
            .arg("run")
            .arg(image)
            .args(["--scenario", "fixture"]),
    )
}

/// Runs `storsim run revcall.sys --scenario kernel-client --client <fixture>.sys --json`: the
/// client fixture loaded above the real revcall.sys.
fn run_client(fixture: &str) -> (i32, Value) {
    let client = fixtures().join(format!("{fixture}.sys"));
    storsim_json(
        fixture,
        Command::new(env!("CARGO_BIN_EXE_storsim"))
            .arg("run")
            .arg(revcall_sim::built_driver())
            .args(["--scenario", "kernel-client", "--client"])
            .arg(client),
    )
}

/// Finishes `command` with `--json` and a short rundown limit; returns (exit code, report).
fn storsim_json(fixture: &str, command: &mut Command) -> (i32, Value) {
    let child = command
        .args(["--json", "--rundown-limit-ms", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storsim runs");
    let output = within(LIMIT, child, fixture);
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
    trips_all(fixture, &[(code, p1, None)]);
}

/// Asserts the run failed with, for each `(code, P1, P2)` (P1 and P2 checked when given), a
/// violation that matches it; returns the report.
fn trips_all(fixture: &str, expected: &[(u64, Option<u64>, Option<u64>)]) -> Value {
    found_all(fixture, run(fixture), expected)
}

/// [`trips_all`] for the outcome of a run already made.
fn found_all(
    fixture: &str,
    (exit, report): (i32, Value),
    expected: &[(u64, Option<u64>, Option<u64>)],
) -> Value {
    assert_ne!(exit, 0, "{fixture}: a violation must fail the run");
    let violations = report["violations"].as_array().expect("violations array");
    let param = |v: &Value, i: usize, want: Option<u64>| {
        want.is_none_or(|want| v["params"][i].as_u64() == Some(want))
    };
    for &(code, p1, p2) in expected {
        let found = violations
            .iter()
            .any(|v| v["code"].as_u64() == Some(code) && param(v, 0, p1) && param(v, 1, p2));
        assert!(
            found,
            "{fixture}: expected bug check {code:#x}/{p1:x?}/{p2:x?}, got {}",
            serde_json::to_string_pretty(violations).unwrap_or_default()
        );
    }
    report
}

/// Asserts the run of a correct fixture passed: no violation, no failure, nothing left.
fn passes(fixture: &str) {
    let (exit, report) = run(fixture);
    assert_eq!(report["violations"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["irps"]["outstanding"], 0);
    assert_eq!(exit, 0);
}

/// Asserts the run ended with a bug check whose code is `code` and P1 `p1` (when given).
fn bug_checks(fixture: &str, code: u64, p1: Option<u64>) {
    let report = trips_all(fixture, &[(code, p1, None)]);
    assert_eq!(
        report["error"], "the run ended with a bug check",
        "{report:#}"
    );
}

#[test]
fn clean_fixture_passes_every_check() {
    passes("clean");
}

#[test]
fn the_disk_floor_passes_every_check() {
    passes("nulldisk");
}

/// A miniport without HwProcessServiceRequest (storahci's kind): Storport refuses every
/// service IOCTL at once with STATUS_NOT_SUPPORTED, nothing is pended, nothing is violated. The
/// same image is `cargo xtask wine`'s foreign adapter.
#[test]
fn an_adapter_without_service_requests_refuses_them_at_once() {
    let (exit, report) = run("foreign");
    assert_eq!(report["violations"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["irps"]["outstanding"], 0, "{report:#}");
    let failures = report["failures"].as_array().expect("failures array");
    assert!(!failures.is_empty(), "{report:#}");
    let not_supported = format!("status: {}", 0xC000_00BB_u32);
    for failure in failures {
        let text = failure.as_str().unwrap_or_default();
        assert!(
            text.contains(&not_supported) || text == "PARK requests to stay pending",
            "{text}"
        );
    }
    assert_ne!(
        exit, 0,
        "the fixture scenario expects a service-IRP miniport"
    );
}

#[test]
fn cancel_safe_queue_passes_every_check() {
    passes("clean_csq");
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
    trips_all(
        "removal_leaks_irp",
        &[
            // The removal rundown never drains: Windows would hang the PnP thread.
            (0xC4, Some(0x5700_0003), None),
            // The parked IRPs are still the miniport's after HwFreeAdapterResources.
            (0xC4, Some(0x5700_0008), None),
        ],
    );
}

#[test]
fn cancelled_irp_never_completed_is_0xc4_135() {
    trips("no_cancel_routine", 0xC4, Some(0x135));
}

#[test]
fn a_spin_lock_taken_in_scsi_stop_adapter_is_taken_above_dispatch() {
    trips("stop_takes_lock", 0xC4, Some(0x42));
}

#[test]
fn a_timer_requested_under_a_lock_its_hw_timer_takes_is_a_lock_order_cycle() {
    trips("timer_under_lock", 0xC4, Some(0x1001));
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
    // P2: the offset of VirtualDevice in PORT_CONFIGURATION_INFORMATION.
    trips_all("not_virtual", &[(0xC4, Some(0x5700_0007), Some(0xC4))]);
}

#[test]
fn raising_irql_to_lower_it_is_0xc4_30() {
    trips("raise_to_lower", 0xC4, Some(0x30));
}

#[test]
fn lowering_irql_to_raise_it_is_0xc4_31() {
    trips("lower_to_raise", 0xC4, Some(0x31));
}

#[test]
fn paged_pool_at_dispatch_breaks_irqlexallocatepool() {
    trips("paged_pool_at_dispatch", 0xC4, Some(0x0002_0004));
}

#[test]
fn zero_byte_allocation_is_0xc4_0() {
    trips("zero_size_allocation", 0xC4, Some(0x00));
}

#[test]
fn free_with_the_wrong_tag_is_bad_pool_caller_0xa() {
    trips("tag_mismatch", 0xC2, Some(0x0A));
}

#[test]
fn releasing_locks_out_of_order_is_0xc4_1003() {
    trips("out_of_order_release", 0xC4, Some(0x1003));
}

#[test]
fn one_lock_through_two_apis_is_0xc4_1008() {
    trips("mixed_lock_apis", 0xC4, Some(0x1008));
}

#[test]
fn spin_lock_released_below_dispatch_is_0xc4_32() {
    trips("release_below_dispatch", 0xC4, Some(0x32));
}

#[test]
fn cancel_routine_keeping_the_cancel_lock() {
    trips("cancel_lock_kept", 0xC4, Some(0x5700_000A));
}

#[test]
fn srb_completed_under_a_lock() {
    trips("srb_completed_under_lock", 0xC4, Some(0x5700_000F));
}

#[test]
fn srb_transfer_raised_above_the_request() {
    trips("srb_transfer_raised", 0xC4, Some(0x5700_000D));
}

#[test]
fn srb_completed_twice_is_0xf1_2004() {
    trips("srb_completed_twice", 0xF1, Some(0x2004));
}

#[test]
fn stall_beyond_a_tenth_of_a_second_is_0xf1_2001() {
    trips("stall_too_long", 0xF1, Some(0x2001));
}

#[test]
fn find_adapter_leaving_transfer_limits_uninitialized() {
    // P2: the offset of MaximumTransferLength in PORT_CONFIGURATION_INFORMATION.
    trips_all(
        "limits_uninitialized",
        &[(0xC4, Some(0x5700_0007), Some(0x18))],
    );
}

#[test]
fn find_adapter_returning_no_sp_return_value() {
    // P2: what HwFindAdapter returned.
    trips_all(
        "bad_find_adapter_return",
        &[(0xC4, Some(0x5700_0007), Some(7))],
    );
}

#[test]
fn dpc_still_queued_at_unload_is_0xc7_1() {
    trips("dpc_left_at_unload", 0xC7, Some(1));
}

#[test]
fn undocumented_notification_type() {
    trips("undocumented_notification", 0xC4, Some(0x5700_0009));
}

#[test]
fn driver_bug_check_ends_the_run() {
    trips("bug_check", 0xDEAD, Some(1));
}

#[test]
fn srb_never_completed_meets_the_reset_ladder() {
    // The INQUIRY times out; the LUN reset SRB is never completed either (0x5700000B), and
    // HwResetBus completes nothing, so the INQUIRY is still pending after it (0x5700000E),
    // and both still are when the adapter is removed (0x57000010).
    trips_all(
        "srb_never_completed",
        &[
            (0xC4, Some(0x5700_000B), None),
            (0xC4, Some(0x5700_000E), None),
            (0xC4, Some(0x5700_0010), None),
        ],
    );
}

#[test]
fn srb_data_past_its_buffer_hits_the_guard_page() {
    trips("srb_data_overrun", 0xCD, None);
}

#[test]
fn a_lun_report_luns_leaves_out_but_that_answers_is_0xc4_57000012() {
    trips("lun_ghost", 0xC4, Some(0x5700_0012));
}

#[test]
fn a_timer_never_freed_is_0xc4_57000011() {
    trips("timer_not_freed", 0xC4, Some(0x5700_0011));
}

#[test]
fn acquire_at_dpc_level_below_dispatch_is_0xc4_40() {
    trips("acquire_at_dpc_level_below_dispatch", 0xC4, Some(0x40));
}

#[test]
fn spin_lock_acquired_above_dispatch_is_0xc4_42() {
    trips("acquire_above_dispatch", 0xC4, Some(0x42));
}

#[test]
fn freeing_what_pool_never_allocated_is_0xc4_10() {
    trips("free_unallocated", 0xC4, Some(0x10));
}

#[test]
fn illegal_instruction_is_0x1e_c000001d() {
    bug_checks("illegal_instruction", 0x1E, Some(0xC000_001D));
}

#[test]
fn null_dereference_is_0x50() {
    bug_checks("null_dereference", 0x50, None);
}

#[test]
fn dpc_that_keeps_requeuing_hangs_removal() {
    // P2 0: no rundown reference is held, the DPCs alone keep removal from finishing.
    trips_all("dpc_storm", &[(0xC4, Some(0x5700_0003), Some(0))]);
}

#[test]
fn cancel_routine_keeping_a_spin_lock() {
    trips("cancel_keeps_queue_lock", 0xC4, Some(0x0004_0006));
}

#[test]
fn registry_read_into_a_buffer_not_from_storport() {
    trips("registry_bad_buffer", 0xC4, Some(0x5700_000C));
}

#[test]
fn timer_requested_above_dispatch_breaks_storportirql() {
    trips("timer_at_high_irql", 0xC4, Some(0x0002_0003));
}

#[test]
fn null_argument_to_storport_initialize_fails_driver_entry() {
    let report = trips_all("initialize_null_argument", &[(0xF1, Some(0x1000), None)]);
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("STATUS_INVALID_PARAMETER"), "{report:#}");
}

#[test]
fn bad_init_data_size_fails_driver_entry() {
    let (exit, report) = run("bad_init_size");
    assert_ne!(exit, 0);
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("STATUS_REVISION_MISMATCH"), "{report:#}");
}

#[test]
fn missing_import_refuses_the_load_naming_it() {
    let (exit, report) = run("missing_import");
    assert_ne!(exit, 0);
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("ntoskrnl.exe!ZwCreateFile"), "{report:#}");
}

// ---- Kernel-mode clients: each client fixture loaded above the real revcall.sys.

/// Asserts the client fixture's run failed with a violation `code` / P1 `p1`; with `fatal`,
/// that it ended in that bug check.
fn client_trips(fixture: &str, code: u64, p1: u64, fatal: bool) {
    let report = found_all(fixture, run_client(fixture), &[(code, Some(p1), None)]);
    if fatal {
        assert_eq!(
            report["error"], "the run ended with a bug check",
            "{report:#}"
        );
    }
}

#[test]
fn a_correct_client_passes_every_check() {
    let (exit, report) = run_client("client_clean");
    assert_eq!(report["violations"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["pool_outstanding"], 0, "{report:#}");
    assert_eq!(exit, 0);
}

#[test]
fn a_client_freeing_its_irp_at_the_adapter() {
    client_trips("client_frees_pending", 0xC4, 0x5700_0013, false);
}

#[test]
fn a_client_reusing_its_irp_at_the_adapter_is_0xc9_311() {
    client_trips("client_reuses_pending", 0xC9, 0x311, false);
}

#[test]
fn a_client_unloading_with_its_wait_parked_is_0xce() {
    client_trips("client_unloads_pending", 0xCE, 1, true);
}

#[test]
fn a_client_keeping_the_adapter_reference_leaks_it_at_unload() {
    client_trips("client_keeps_reference", 0xC4, 0x5700_0016, false);
}

#[test]
fn a_client_blocking_in_its_completion_routine() {
    client_trips("client_blocks_in_completion", 0xC4, 0x5700_0014, true);
}

#[test]
fn a_client_calling_passive_only_routines_in_its_completion_routine() {
    client_trips("client_opens_in_completion", 0xC4, 0x5700_0015, false);
}

#[test]
fn a_client_re_arming_inside_its_completion_recurses_past_the_bound() {
    client_trips("client_sends_in_completion", 0xC4, 0x5700_0017, true);
}
