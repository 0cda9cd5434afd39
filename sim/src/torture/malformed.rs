//! Malformed service requests, one class per defect the driver must refuse, each with the one
//! status that defect must produce (README, "Statuses").

use revcall_protocol::status::{
    STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER,
    STATUS_REVISION_MISMATCH,
};
use revcall_protocol::{
    DISCOVER_DELAY_MS_MAX, IOCTL_MINIPORT_PROCESS_SERVICE_IRP, Opcode, Request, encode_request,
};

/// A request the driver must refuse.
pub struct Malformed {
    pub code: u32,
    pub input: Vec<u8>,
    pub out_len: u32,
    pub expected: u32,
}

/// A device-control code other than the service IOCTL, with the same access bits (so the
/// I/O manager lets it through and Storport refuses it).
const OTHER_IOCTL: u32 = IOCTL_MINIPORT_PROCESS_SERVICE_IRP + 4;

fn encoded(request: &Request) -> Vec<u8> {
    let mut bytes = [0u8; 64];
    let len = encode_request(request, &mut bytes).expect("requests fit 64 bytes");
    bytes[..len].to_vec()
}

fn any_request(rng: &mut fastrand::Rng) -> Request {
    match rng.u8(0..4) {
        0 => Request::Wait {
            cursor: 0,
            max_events: 1,
        },
        1 => Request::Fire {
            code: rng.u32(..),
            value: rng.u64(..),
        },
        2 => Request::Discover { delay_ms: 1 },
        _ => Request::Stats,
    }
}

/// One malformed request of a random class. `head` is the newest event's seq, for a WAIT
/// cursor from the future.
pub fn generate(rng: &mut fastrand::Rng, head_hint: u64) -> Malformed {
    let service = IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
    let refused = |input: Vec<u8>, expected| Malformed {
        code: service,
        input,
        out_len: 256,
        expected,
    };
    match rng.u8(0..10) {
        // Shorter than a header (including no buffer at all).
        0 => {
            let len = rng.usize(0..8);
            Malformed {
                out_len: if len == 0 { rng.u32(0..2) * 64 } else { 64 },
                ..refused(
                    std::iter::repeat_with(|| rng.u8(..)).take(len).collect(),
                    STATUS_INVALID_PARAMETER,
                )
            }
        }
        // Another protocol version.
        1 => {
            let mut bytes = encoded(&any_request(rng));
            let version = loop {
                let v = rng.u16(..);
                if v != revcall_protocol::VERSION {
                    break v;
                }
            };
            bytes[4..6].copy_from_slice(&version.to_le_bytes());
            refused(bytes, STATUS_REVISION_MISMATCH)
        }
        // A size field that is not the input length.
        2 => {
            let mut bytes = encoded(&any_request(rng));
            let size = bytes.len() as u32 + rng.u32(1..100);
            bytes[0..4].copy_from_slice(&size.to_le_bytes());
            refused(bytes, STATUS_INVALID_PARAMETER)
        }
        // An opcode the driver does not know.
        3 => {
            let mut bytes = encoded(&Request::Stats);
            let opcode = if rng.bool() { 0 } else { rng.u16(5..) };
            bytes[6..8].copy_from_slice(&opcode.to_le_bytes());
            refused(bytes, STATUS_INVALID_DEVICE_REQUEST)
        }
        // A known opcode with the wrong body length (size field consistent).
        4 => {
            let mut bytes = encoded(&Request::Fire { code: 1, value: 2 });
            bytes.truncate(Opcode::Fire.request_size() - rng.usize(1..=8));
            let size = bytes.len() as u32;
            bytes[0..4].copy_from_slice(&size.to_le_bytes());
            refused(bytes, STATUS_INVALID_PARAMETER)
        }
        // Reserved bits set (WAIT's reserved word follows cursor and max_events).
        5 => {
            let mut bytes = encoded(&Request::Wait {
                cursor: 0,
                max_events: 1,
            });
            bytes[20..24].copy_from_slice(&rng.u32(1..).to_le_bytes());
            refused(bytes, STATUS_INVALID_PARAMETER)
        }
        // Arguments out of range: max_events 0, a DISCOVER delay of 0 or over the maximum.
        6 => {
            let request = match rng.u8(0..3) {
                0 => Request::Wait {
                    cursor: 0,
                    max_events: 0,
                },
                1 => Request::Discover { delay_ms: 0 },
                _ => Request::Discover {
                    delay_ms: rng.u32(DISCOVER_DELAY_MS_MAX + 1..),
                },
            };
            refused(encoded(&request), STATUS_INVALID_PARAMETER)
        }
        // A cursor from the future.
        7 => refused(
            encoded(&Request::Wait {
                cursor: head_hint + (1 << 40) + rng.u64(0..1 << 20),
                max_events: 4,
            }),
            STATUS_INVALID_PARAMETER,
        ),
        // An output buffer too small for the reply.
        8 => {
            let request = any_request(rng);
            let min = request.opcode().min_reply_size() as u32;
            Malformed {
                out_len: rng.u32(0..min),
                ..refused(encoded(&request), STATUS_BUFFER_TOO_SMALL)
            }
        }
        // Another I/O control code: Storport refuses it itself.
        _ => Malformed {
            code: OTHER_IOCTL,
            ..refused(encoded(&any_request(rng)), STATUS_INVALID_DEVICE_REQUEST)
        },
    }
}
