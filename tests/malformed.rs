//! Every malformed request revcall.sys can be sent under storsim gets the documented status,
//! with nothing parked, leaked or disclosed: each length 0..=4096 for every opcode (header size
//! field both honest and stale), a NULL buffer, wrong version and opcode, output too small.

mod common;

use common::revcall_sys;
use revcall_client::malformed::{self, Class};
use revcall_protocol::status::*;
use revcall_protocol::{
    Header, IOCTL_MINIPORT_PROCESS_SERVICE_IRP, Request, encode_request, refusal,
};
use revcall_sim::client::PROMPT;
use storsim::harness::Harness;
use storsim::io::{Access, Handle};
use storsim::kernel::Kernel;
use storsim::machine::Config;

fn send(kernel: &Kernel, handle: Handle, input: &[u8], out_len: u32) -> (u32, usize) {
    let request = kernel
        .device_io_control(handle, IOCTL_MINIPORT_PROCESS_SERVICE_IRP, input, out_len)
        .expect("the handle has read/write access");
    let outcome = request
        .wait(PROMPT)
        .expect("a malformed request completes at once");
    (outcome.status, outcome.information)
}

#[test]
fn every_length_of_every_request_gets_its_documented_status() {
    let harness = Harness::start(
        &revcall_sys(),
        Config {
            timeline: false,
            delay_probability: 0.0,
            ..Config::default()
        },
    )
    .expect("starts");
    let kernel = harness.kernel.clone();
    let handle = kernel.open(1, Access::READ_WRITE);
    let requests = [
        Request::Wait {
            cursor: 0,
            max_events: 4,
        },
        Request::Fire { code: 1, value: 2 },
        Request::Discover { delay_ms: 1 },
        Request::Stats,
    ];
    // One event retained, so a valid WAIT from cursor 0 completes at once.
    let mut fire = [0u8; 64];
    let fire_len = encode_request(&Request::Fire { code: 0, value: 0 }, &mut fire).expect("fits");
    assert_eq!(
        send(&kernel, handle, &fire[..fire_len], 64).0,
        STATUS_SUCCESS
    );
    let mut checked = 0;
    for request in requests {
        let mut valid = vec![0u8; 4096];
        let exact = encode_request(&request, &mut valid).expect("fits");
        for len in 0..=4096usize {
            for honest_size in [true, false] {
                let mut input = valid[..len].to_vec();
                if honest_size && len >= size_of::<Header>() {
                    input[..4].copy_from_slice(&(len as u32).to_le_bytes());
                }
                // The protocol crate's oracle; its mapping is pinned to the README's table
                // by protocol/src/status.rs's tests.
                let expected = refusal(&input, 256).unwrap_or(STATUS_SUCCESS);
                let (status, information) = send(&kernel, handle, &input, 256);
                assert_eq!(
                    status,
                    expected,
                    "{:?}, {len} bytes (exact {exact}), honest size field {honest_size}",
                    request.opcode()
                );
                if status != STATUS_SUCCESS {
                    assert_eq!(information, 0, "errors carry no bytes");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 4097 * 2);
    kernel.close(handle);
    let summary = harness.finish();
    assert!(summary.violations.is_empty(), "{}", summary.text(false));
    assert_eq!(summary.irps.outstanding, Some(0));
}

#[test]
fn null_buffers_and_every_malformed_class_are_refused() {
    let harness = Harness::start(
        &revcall_sys(),
        Config {
            timeline: false,
            ..Config::default()
        },
    )
    .expect("starts");
    let kernel = harness.kernel.clone();
    let handle = kernel.open(1, Access::READ_WRITE);
    assert_eq!(
        send(&kernel, handle, &[], 0),
        (STATUS_INVALID_PARAMETER, 0),
        "NULL SystemBuffer"
    );
    assert_eq!(
        send(&kernel, handle, &[], 64).0,
        STATUS_INVALID_PARAMETER,
        "no input"
    );

    // Every class of the catalogue the torture draws from, 50 samples each.
    let mut rng = fastrand::Rng::with_seed(12);
    for class in Class::ALL {
        for _ in 0..50 {
            let bad = malformed::sample(class, &mut rng, 0);
            let request = kernel
                .device_io_control(handle, bad.code, &bad.input, bad.out_len)
                .expect("sent");
            let outcome = request.wait(PROMPT).expect("answered at once");
            assert_eq!(
                (outcome.status, outcome.information),
                (bad.expected, 0),
                "{class:?}: {:02x?}, {} output bytes",
                bad.input,
                bad.out_len
            );
        }
    }
    kernel.close(handle);
    let summary = harness.finish();
    assert!(summary.violations.is_empty(), "{}", summary.text(false));
}
