//! The port driver on its own: a fake miniport written here, no `.sys`. Its routines run on the
//! test's thread (PnP calls them synchronously), so they find the test's state in thread-locals.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

use storport_abi::{
    PORT_CONFIGURATION_INFORMATION, SCSI_REQUEST_BLOCK, SCSI_SUPPORTED_CONTROL_TYPE_LIST,
};

use super::{DIRQL, PnpState, Port};
use crate::cpu;
use crate::io::Io;
use crate::machine::{Config, Machine};
use crate::miniport::{Miniport, Routines};

std::thread_local! {
    /// The callbacks the fake miniport saw, in order, with the IRQL of each.
    static CALLS: RefCell<Vec<(&'static str, u8)>> = const { RefCell::new(Vec::new()) };
    /// The port the fake HwStartIo completes its SRB through.
    static PORT: RefCell<Option<Arc<Port>>> = const { RefCell::new(None) };
    /// Whether HwFindAdapter forgets ConfigInfo->VirtualDevice.
    static FORGET_VIRTUAL: Cell<bool> = const { Cell::new(false) };
    /// Whether HwStartIo keeps SCSI commands until HwResetBus (a server that never answers).
    static HOLD_SCSI: Cell<bool> = const { Cell::new(false) };
    static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn called(name: &'static str) {
    CALLS.with(|calls| calls.borrow_mut().push((name, cpu::irql())));
}

unsafe extern "win64" fn find_adapter(
    _ext: *mut c_void,
    _context: *mut c_void,
    _bus: *mut c_void,
    _lower: *mut c_void,
    _arguments: *mut i8,
    config: *mut PORT_CONFIGURATION_INFORMATION,
    _again: *mut u8,
) -> u32 {
    called("HwFindAdapter");
    // SAFETY: Storport passes a writable configuration for the call.
    let config = unsafe { &mut *config };
    config.VirtualDevice = u8::from(!FORGET_VIRTUAL.with(Cell::get));
    config.MaximumTransferLength = 0x10000;
    config.NumberOfPhysicalBreaks = 16;
    1
}

unsafe extern "win64" fn initialize(_ext: *mut c_void) -> u8 {
    called("HwInitialize");
    1
}

unsafe extern "win64" fn start_io(_ext: *mut c_void, srb: *mut SCSI_REQUEST_BLOCK) -> u8 {
    called("HwStartIo");
    // SAFETY: the port hands over a live SRB until it is completed.
    let function = unsafe { (*srb).Function };
    if HOLD_SCSI.with(Cell::get) && function == storport_abi::srb_function::EXECUTE_SCSI {
        HELD.with(|held| held.borrow_mut().push(srb as usize));
        return 1;
    }
    // SAFETY: as above, completed just below.
    unsafe { (*srb).SrbStatus = storport_abi::srb_status::SUCCESS };
    let port = PORT
        .with(|port| port.borrow().clone())
        .expect("the test's port");
    port.srb_complete(srb as usize);
    1
}

/// Completes every held SRB with SRB_STATUS_BUS_RESET, as HwResetBus must.
unsafe extern "win64" fn reset_bus(_ext: *mut c_void, _path: u32) -> u8 {
    called("HwResetBus");
    let port = PORT
        .with(|port| port.borrow().clone())
        .expect("the test's port");
    for srb in HELD.with(|held| std::mem::take(&mut *held.borrow_mut())) {
        // SAFETY: a held SRB is live until completed here.
        unsafe { (*(srb as *mut SCSI_REQUEST_BLOCK)).SrbStatus = 0x0E };
        port.srb_complete(srb);
    }
    1
}

unsafe extern "win64" fn adapter_control(
    _ext: *mut c_void,
    control: u32,
    list: *mut c_void,
) -> u32 {
    match control {
        0 => {
            called("HwAdapterControl(query)");
            let list = list.cast::<SCSI_SUPPORTED_CONTROL_TYPE_LIST>();
            // SAFETY: for the query Storport passes a list with MaxControlType entries.
            let max = unsafe { (*list).MaxControlType } as usize;
            // SAFETY: this only forms the address of the entries, inside the list.
            let first = unsafe { &raw mut (*list).SupportedTypeList }.cast::<u8>();
            // SAFETY: `max` entries follow the header, the callee's to write for the call.
            let entries = unsafe { std::slice::from_raw_parts_mut(first, max) };
            entries[..3].fill(1);
        }
        1 => called("ScsiStopAdapter"),
        2 => called("ScsiRestartAdapter"),
        _ => called("HwAdapterControl(other)"),
    }
    0
}

fn port() -> Arc<Port> {
    let machine = Arc::new(Machine::new(
        Config {
            timeline: false,
            delay_probability: 0.0,
            rundown_limit: Duration::from_millis(50),
            ..Config::default()
        },
        0,
    ));
    let io = Arc::new(Io::new(machine.clone(), "test"));
    let port = Arc::new(Port::new(machine, io));
    let routines = Routines {
        find_adapter,
        initialize,
        start_io,
        reset_bus,
        adapter_control: Some(adapter_control),
        free_adapter_resources: None,
        process_service_request: None,
        complete_service_irp: None,
    };
    // SAFETY: every routine above has its storport.h prototype and lives for the test.
    port.register(unsafe { Miniport::new(routines, 64, 0) });
    PORT.with(|slot| *slot.borrow_mut() = Some(port.clone()));
    CALLS.with(|calls| calls.borrow_mut().clear());
    FORGET_VIRTUAL.with(|forget| forget.set(false));
    HOLD_SCSI.with(|hold| hold.set(false));
    HELD.with(|held| held.borrow_mut().clear());
    port
}

fn calls() -> Vec<(&'static str, u8)> {
    CALLS.with(|calls| calls.borrow().clone())
}

fn violations(port: &Port) -> Vec<(u32, u64)> {
    port.machine.verifier().codes()
}

/// An SRB nobody answers times out into Storport's ladder: a LUN reset SRB through HwStartIo,
/// then HwResetBus at DISPATCH_LEVEL, which completes it; nothing is reported.
#[test]
fn a_timed_out_srb_meets_the_lun_reset_then_the_bus_reset() {
    let port = port();
    port.start_adapter().expect("starts");
    HOLD_SCSI.with(|hold| hold.set(true));
    CALLS.with(|calls| calls.borrow_mut().clear());
    let extension = port.extension().expect("started");
    let pool = port.machine.pool();
    let srb = super::Srb::inquiry(pool, 0, 0).expect("pool");
    assert!(port.execute(extension, &srb), "HwResetBus completed it");
    assert_eq!(srb.status(), 0x0E, "SRB_STATUS_BUS_RESET");
    srb.free(pool);
    assert_eq!(
        calls(),
        [
            ("HwStartIo", cpu::DISPATCH_LEVEL),
            ("HwStartIo", cpu::DISPATCH_LEVEL),
            ("HwResetBus", cpu::DISPATCH_LEVEL)
        ],
        "the INQUIRY, the LUN reset SRB, the bus reset"
    );
    assert_eq!(
        port.counters
            .resets
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(violations(&port).is_empty(), "{:?}", violations(&port));
}

#[test]
fn a_start_finds_initializes_queries_and_scans_in_that_order() {
    let port = port();
    port.start_adapter().expect("starts");
    assert_eq!(port.state(), PnpState::Started);
    let names: Vec<&str> = calls().iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "HwFindAdapter",
            "HwInitialize",
            "HwAdapterControl(query)",
            "HwStartIo"
        ]
    );
    assert!(
        calls()
            .iter()
            .filter(|(name, _)| *name != "HwStartIo")
            .all(|(_, irql)| *irql == 0)
    );
    assert!(violations(&port).is_empty(), "{:?}", violations(&port));
}

#[test]
fn stop_and_restart_come_at_dirql_and_keep_the_extension() {
    let port = port();
    port.start_adapter().expect("starts");
    let extension = port.extension();
    port.power_cycle_adapter();
    let controls: Vec<(&str, u8)> = calls()
        .into_iter()
        .filter(|(name, _)| name.starts_with("Scsi"))
        .collect();
    assert_eq!(
        controls,
        [("ScsiStopAdapter", DIRQL), ("ScsiRestartAdapter", DIRQL)]
    );
    port.stop_adapter();
    assert_eq!(port.state(), PnpState::Stopped);
    port.start_adapter().expect("starts again");
    assert_eq!(port.extension(), extension, "kept across a stop");
    assert_eq!(port.starts(), 2);
}

#[test]
fn a_virtual_adapter_must_say_it_is_virtual() {
    let port = port();
    FORGET_VIRTUAL.with(|forget| forget.set(true));
    port.start_adapter().expect("starts anyway");
    assert_eq!(violations(&port), [(0xC4, 0x5700_0007)]);
}

#[test]
fn an_srb_completed_twice_is_0xf1_2004() {
    let port = port();
    port.start_adapter().expect("starts");
    port.srb_complete(0x1234);
    assert_eq!(violations(&port), [(0xF1, 0x2004)]);
}

/// An issuer asleep on its SRB (long past its spin) is woken by the completion from another
/// CPU; completing the SRB again, and once it is freed, is 0xF1/0x2004 each time.
#[test]
fn a_completion_from_another_cpu_wakes_the_issuer_and_another_is_0xf1_2004() {
    let port = port();
    port.start_adapter().expect("starts");
    HOLD_SCSI.with(|hold| hold.set(true));
    let extension = port.extension().expect("started");
    let srb = super::Srb::inquiry(port.machine.pool(), 0, 0).expect("pool");
    assert!(port.submit(extension, &srb));
    let held = HELD.with(|held| held.borrow_mut().pop());
    let held = held.expect("HwStartIo kept it");
    assert_eq!(held, srb.addr());
    assert!(!srb.is_completed());
    let completer = {
        let port = port.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: the SRB is outstanding, so live, until completed just below.
            unsafe { (*(held as *mut SCSI_REQUEST_BLOCK)).SrbStatus = 0x01 };
            port.srb_complete(held);
        })
    };
    let started = std::time::Instant::now();
    assert_eq!(port.first_done(&[&srb], Duration::from_secs(20)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the completion, not by the limit"
    );
    completer.join().expect("the completing CPU");
    assert_eq!(srb.status(), 0x01);
    assert_eq!(violations(&port), []);
    port.srb_complete(srb.addr());
    assert_eq!(violations(&port), [(0xF1, 0x2004)]);
    let addr = srb.addr();
    port.free_srb(srb);
    port.srb_complete(addr);
    assert_eq!(violations(&port), [(0xF1, 0x2004), (0xF1, 0x2004)]);
}

#[test]
fn a_removal_with_a_reference_never_released_is_a_hang() {
    let port = port();
    port.start_adapter().expect("starts");
    assert!(port.rundown.acquire(), "the rundown is open once started");
    port.remove_adapter(|| {});
    assert_eq!(port.state(), PnpState::Removed);
    assert!(violations(&port).contains(&(0xC4, 0x5700_0003)));
    // A new instance: a fresh extension, the rundown open again after its start.
    let old = port.extension();
    port.add_adapter().expect("added");
    assert_eq!(port.state(), PnpState::Added);
    assert_eq!(port.extension(), None);
    port.start_adapter().expect("starts");
    assert_ne!(port.extension(), old);
    assert_eq!(port.io.device_instance(), 1);
}
