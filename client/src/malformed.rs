//! Malformed service requests, one class per defect the driver must refuse, each with the one
//! status that defect must produce (README, "Statuses"): the catalogue the torture draws from,
//! the selftest walks, and the malformed-input tests sweep.

use revcall_protocol::status::{
    STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER,
    STATUS_REVISION_MISMATCH,
};
use revcall_protocol::{
    DISCOVER_DELAY_MS_MAX, IOCTL_MINIPORT_PROCESS_SERVICE_IRP, LunFlags, LunSpec, Opcode, Request,
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

/// The defects, one class each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Shorter than a header (including no buffer at all).
    Truncated,
    /// Another protocol version.
    Version,
    /// A size field that is not the input length.
    SizeField,
    /// An opcode the driver does not know.
    Opcode,
    /// A known opcode with the wrong body length (size field consistent).
    BodyLength,
    /// Reserved bits set.
    Reserved,
    /// Arguments out of range: max_events 0, a DISCOVER delay of 0 or over the maximum.
    Argument,
    /// A WAIT cursor from the future.
    FutureCursor,
    /// An output buffer too small for the reply.
    ShortOutput,
    /// Another I/O control code: Storport refuses it itself.
    OtherIoctl,
}

impl Class {
    pub const ALL: [Class; 10] = [
        Class::Truncated,
        Class::Version,
        Class::SizeField,
        Class::Opcode,
        Class::BodyLength,
        Class::Reserved,
        Class::Argument,
        Class::FutureCursor,
        Class::ShortOutput,
        Class::OtherIoctl,
    ];
}

fn encoded(request: &Request) -> Vec<u8> {
    crate::channel::encode(request)
}

/// A LUN_CREATE the decoder accepts (its serial and id drawn from `rng`).
fn lun_spec(rng: &mut fastrand::Rng) -> LunSpec {
    let mut serial = [b' '; 32];
    serial[..8].fill_with(|| rng.u8(b'A'..=b'Z'));
    LunSpec {
        block_count: rng.u64(1..1 << 30),
        block_size: if rng.bool() { 512 } else { 4096 },
        flags: rng.u32(0..=LunFlags::ALL),
        serial,
        unique_id: std::array::from_fn(|_| rng.u8(1..)),
        ..LunSpec::default()
    }
}

/// A well-formed request of any opcode, for the classes that spoil one part of it.
fn any_request(rng: &mut fastrand::Rng) -> Request {
    match rng.u8(0..7) {
        4 => Request::LunCreate(lun_spec(rng)),
        5 => Request::LunRemove { lun: rng.u32(..) },
        6 => Request::LunList,
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

/// One malformed request of a random class. `head_hint` is the newest event's seq, for a WAIT
/// cursor from the future.
pub fn generate(rng: &mut fastrand::Rng, head_hint: u64) -> Malformed {
    let class = Class::ALL[rng.usize(..Class::ALL.len())];
    sample(class, rng, head_hint)
}

/// One request of `class`, its variable parts drawn from `rng`.
pub fn sample(class: Class, rng: &mut fastrand::Rng, head_hint: u64) -> Malformed {
    let service = IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
    let refused = |input: Vec<u8>, expected| Malformed {
        code: service,
        input,
        out_len: 256,
        expected,
    };
    match class {
        Class::Truncated => {
            let len = rng.usize(0..8);
            Malformed {
                out_len: if len == 0 { rng.u32(0..2) * 64 } else { 64 },
                ..refused(
                    std::iter::repeat_with(|| rng.u8(..)).take(len).collect(),
                    STATUS_INVALID_PARAMETER,
                )
            }
        }
        Class::Version => {
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
        Class::SizeField => {
            let mut bytes = encoded(&any_request(rng));
            let size = bytes.len() as u32 + rng.u32(1..100);
            bytes[0..4].copy_from_slice(&size.to_le_bytes());
            refused(bytes, STATUS_INVALID_PARAMETER)
        }
        Class::Opcode => {
            let mut bytes = encoded(&Request::Stats);
            let opcode = loop {
                let opcode = rng.u16(..);
                if Opcode::try_from(opcode).is_err() {
                    break opcode;
                }
            };
            bytes[6..8].copy_from_slice(&opcode.to_le_bytes());
            refused(bytes, STATUS_INVALID_DEVICE_REQUEST)
        }
        Class::BodyLength => {
            let mut bytes = encoded(&Request::Fire { code: 1, value: 2 });
            bytes.truncate(Opcode::Fire.request_size() - rng.usize(1..=8));
            let size = bytes.len() as u32;
            bytes[0..4].copy_from_slice(&size.to_le_bytes());
            refused(bytes, STATUS_INVALID_PARAMETER)
        }
        // Reserved bits set: WAIT's reserved word follows cursor and max_events, LUN_REMOVE's
        // follows the LUN.
        Class::Reserved => {
            let (mut bytes, at) = if rng.bool() {
                let wait = Request::Wait {
                    cursor: 0,
                    max_events: 1,
                };
                (encoded(&wait), 20)
            } else {
                (encoded(&Request::LunRemove { lun: 0 }), 12)
            };
            bytes[at..at + 4].copy_from_slice(&rng.u32(1..).to_le_bytes());
            refused(bytes, STATUS_INVALID_PARAMETER)
        }
        Class::Argument => {
            let request = match rng.u8(0..4) {
                0 => Request::Wait {
                    cursor: 0,
                    max_events: 0,
                },
                1 => Request::Discover { delay_ms: 0 },
                2 => Request::Discover {
                    delay_ms: rng.u32(DISCOVER_DELAY_MS_MAX + 1..),
                },
                // A LUN nobody could create: a block size Windows has no disk for.
                _ => Request::LunCreate(LunSpec {
                    block_size: rng.u32(..).max(4097),
                    ..lun_spec(rng)
                }),
            };
            refused(encoded(&request), STATUS_INVALID_PARAMETER)
        }
        Class::FutureCursor => refused(
            encoded(&Request::Wait {
                cursor: head_hint + (1 << 40) + rng.u64(0..1 << 20),
                max_events: 4,
            }),
            STATUS_INVALID_PARAMETER,
        ),
        Class::ShortOutput => {
            let request = any_request(rng);
            let min = request.opcode().min_reply_size() as u32;
            Malformed {
                out_len: rng.u32(0..min),
                ..refused(encoded(&request), STATUS_BUFFER_TOO_SMALL)
            }
        }
        Class::OtherIoctl => Malformed {
            code: OTHER_IOCTL,
            ..refused(encoded(&any_request(rng)), STATUS_INVALID_DEVICE_REQUEST)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every class's sample is refused by the protocol's own oracle with the class's status
    /// (the other control code never reaches the decoder: Storport refuses it).
    #[test]
    fn each_class_is_what_the_oracle_refuses() {
        let mut rng = fastrand::Rng::with_seed(7);
        for class in Class::ALL {
            for _ in 0..2000 {
                let bad = sample(class, &mut rng, 1000);
                if class == Class::OtherIoctl {
                    assert_ne!(bad.code, IOCTL_MINIPORT_PROCESS_SERVICE_IRP);
                    continue;
                }
                let oracle = revcall_protocol::refusal(&bad.input, bad.out_len);
                if class == Class::FutureCursor {
                    // Only the adapter knows its newest event: the bytes themselves are valid.
                    assert_eq!(oracle, None, "{class:?}");
                } else {
                    assert_eq!(oracle, Some(bad.expected), "{class:?}: {:02x?}", bad.input);
                }
            }
        }
    }
}
