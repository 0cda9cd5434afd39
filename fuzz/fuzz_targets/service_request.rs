//! Coverage-guided fuzzing of revcall.sys's request handling, through storsim.
//!
//! Each input is one DeviceIoControl on a long-lived adapter (one storsim session per fuzzing
//! process): bytes 0–1 the output length (0..=4096), byte 2 picks the control code (the
//! service IOCTL, or another one Storport must refuse), the rest is the input buffer. A request
//! that parks (a valid WAIT) is cancelled. The completion must be sane: exactly once,
//! Information within the output buffer, an error with no bytes, a success whose reply decodes
//! and whose size is Information, and the status the host-side decoder predicts for those
//! bytes (a differential check of the driver's decoding against `revcall-protocol`'s). Any
//! verifier violation fails the input too.
//!
//! `cargo +nightly fuzz run service_request --sanitizer none` (see README.md, "Fuzzing").

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use revcall_protocol::status::*;
use revcall_protocol::{
    IOCTL_MINIPORT_PROCESS_SERVICE_IRP, Request, decode_reply, decode_request,
};
use storsim::io::{Access, Handle};
use storsim::machine::Config;
use storsim::harness::Harness;
use revcall_sim::client::PROMPT;

struct Rig {
    harness: Harness,
    handle: Handle,
}

thread_local! {
    // libFuzzer runs every input on one thread; the session lives until the process exits.
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fn rig() -> Rig {
    let harness = Harness::start(
        &revcall_sim::built_driver(),
        Config {
            // Few delays: throughput matters more here than widening races.
            delay_probability: 0.0,
            timeline: false,
            ..Config::default()
        },
    )
    .expect("revcall.sys loads and starts (build it with `cargo xtask build`)");
    let handle = harness.kernel.open(1, Access::READ_WRITE);
    Rig { harness, handle }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, input)) = data.split_first_chunk::<3>() else {
        return;
    };
    let out_len = u32::from(u16::from_le_bytes([head[0], head[1]])) % 4097;
    let service = head[2] & 1 == 0;
    let code = if service {
        IOCTL_MINIPORT_PROCESS_SERVICE_IRP
    } else {
        // Same device type and access, another function: Storport refuses it.
        IOCTL_MINIPORT_PROCESS_SERVICE_IRP + 4 * u32::from(head[2] >> 1).max(1)
    };
    RIG.with(|cell| {
        let mut cell = cell.borrow_mut();
        let rig = cell.get_or_insert_with(rig);
        let kernel = &rig.harness.kernel;
        let request = kernel
            .device_io_control(rig.handle, code, input, out_len)
            .expect("the I/O manager accepts a read/write handle's IOCTL");
        if request.outcome().is_none() {
            // Parked (a valid WAIT): cancel it, as its caller would.
            kernel.cancel_io(rig.handle, Some(request.id));
        }
        let outcome = request
            .wait(PROMPT)
            .expect("every request completes, a parked one once cancelled");
        assert_eq!(request.completions(), 1, "completed more than once");
        assert!(
            outcome.information <= out_len as usize,
            "Information {} beyond the {out_len}-byte output buffer",
            outcome.information
        );
        if is_error(outcome.status) {
            assert_eq!(outcome.information, 0, "an error that reports bytes");
        }
        let expected = if service {
            revcall_protocol::refusal(input, out_len as u32)
        } else {
            Some(STATUS_INVALID_DEVICE_REQUEST)
        };
        match expected {
            // A cursor from the future is refused by the adapter's state, not the decoder.
            None if outcome.status == STATUS_INVALID_PARAMETER => assert!(
                matches!(decode_request(input), Ok(Request::Wait { .. })),
                "a valid non-WAIT request refused INVALID_PARAMETER"
            ),
            None => {
                // What the adapter's state may make of a valid request.
                let allowed: &[u32] = match decode_request(input) {
                    Ok(Request::LunCreate(_)) => {
                        &[STATUS_SUCCESS, STATUS_QUOTA_EXCEEDED, STATUS_OBJECT_NAME_COLLISION]
                    }
                    Ok(Request::LunRemove { .. }) => &[STATUS_SUCCESS, STATUS_NO_SUCH_DEVICE],
                    // The data path depends on the handle's session and the tags out.
                    Ok(Request::Attach { .. }) => &[
                        STATUS_CANCELLED,
                        STATUS_NO_SUCH_DEVICE,
                        STATUS_INVALID_DEVICE_STATE,
                        STATUS_QUOTA_EXCEEDED,
                    ],
                    Ok(Request::Fetch { .. } | Request::CommitAndFetch { .. }) => &[
                        STATUS_SUCCESS,
                        STATUS_CANCELLED,
                        STATUS_QUOTA_EXCEEDED,
                        STATUS_INVALID_DEVICE_STATE,
                        STATUS_NOT_FOUND,
                        STATUS_ACCESS_DENIED,
                        STATUS_INVALID_BUFFER_SIZE,
                    ],
                    _ => &[STATUS_SUCCESS, STATUS_CANCELLED, STATUS_QUOTA_EXCEEDED],
                };
                assert!(
                    allowed.contains(&outcome.status),
                    "a valid request completed {:#x}",
                    outcome.status
                );
            }
            Some(status) => assert_eq!(
                outcome.status, status,
                "the driver and the protocol decoder disagree about {input:02x?}"
            ),
        }
        if outcome.status == STATUS_SUCCESS {
            assert!(
                decode_reply(&outcome.output).is_ok(),
                "a successful reply that does not decode"
            );
        }
        let violations = kernel.machine().verifier().violations();
        assert!(violations.is_empty(), "verifier: {violations:?}");
    });
});
