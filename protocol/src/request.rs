//! Request records and their strict decoder.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::VERSION;
use crate::data::{AttachRequest, CommitRequest, FetchRequest, MAX_DESCRIPTORS, check_commit};
use crate::lun::{LunCreateRequest, LunRemoveRequest, LunSpec};

/// The first 8 bytes of every request and every reply.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Header {
    /// Total bytes of the record, header included. A request's must equal the input length.
    pub size: u32,
    pub version: u16,
    /// An [`Opcode`] value.
    pub opcode: u16,
}

/// What a request asks for.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// Deliver events newer than a cursor; park until one exists.
    Wait = 1,
    /// Publish a test event (can be disabled by the `EnableFireInjection` registry value).
    Fire = 2,
    /// Start a device discovery that completes later on the Storport timer.
    Discover = 3,
    /// Report the channel's counters.
    Stats = 4,
    /// Create a virtual disk.
    LunCreate = 5,
    /// Remove a virtual disk, completing everything it has outstanding.
    LunRemove = 6,
    /// List the virtual disks.
    LunList = 7,
    /// Become a server of a LUN: parks for the server's life.
    Attach = 8,
    /// Park until the session's LUN has I/O for the server.
    Fetch = 9,
    /// Answer earlier descriptors, then fetch like FETCH (variable length).
    CommitAndFetch = 10,
}

impl TryFrom<u16> for Opcode {
    type Error = u16;

    fn try_from(value: u16) -> Result<Self, u16> {
        Ok(match value {
            1 => Self::Wait,
            2 => Self::Fire,
            3 => Self::Discover,
            4 => Self::Stats,
            5 => Self::LunCreate,
            6 => Self::LunRemove,
            7 => Self::LunList,
            8 => Self::Attach,
            9 => Self::Fetch,
            10 => Self::CommitAndFetch,
            other => return Err(other),
        })
    }
}

/// A WAIT cursor meaning "only events published after this request arrives".
pub const CURSOR_NOW: u64 = u64::MAX;

/// The longest DISCOVER delay the driver accepts, in milliseconds.
pub const DISCOVER_DELAY_MS_MAX: u32 = 60_000;

/// WAIT body: deliver events with `seq > cursor`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct WaitRequest {
    /// The last sequence number the caller has seen: 0 for "everything retained", or [`CURSOR_NOW`].
    pub cursor: u64,
    /// At most this many events in one reply (at least 1).
    pub max_events: u32,
    pub reserved: u32,
}

/// FIRE body: the event's two arguments.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FireRequest {
    pub code: u32,
    pub reserved: u32,
    pub value: u64,
}

/// DISCOVER body.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DiscoverRequest {
    /// When the discovery completes, 1..=[`DISCOVER_DELAY_MS_MAX`] ms from now.
    pub delay_ms: u32,
    pub reserved: u32,
}

/// A decoded, fully validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Wait {
        cursor: u64,
        max_events: u32,
    },
    Fire {
        code: u32,
        value: u64,
    },
    Discover {
        delay_ms: u32,
    },
    Stats,
    LunCreate(LunSpec),
    LunRemove {
        lun: u32,
    },
    LunList,
    Attach {
        lun: u32,
    },
    Fetch {
        max_descriptors: u32,
    },
    /// The results and their data stay in the record: read them with
    /// [`Commit::of`](crate::Commit::of).
    CommitAndFetch {
        count: u32,
        max_descriptors: u32,
    },
}

impl Request {
    pub const fn opcode(&self) -> Opcode {
        match self {
            Self::Wait { .. } => Opcode::Wait,
            Self::Fire { .. } => Opcode::Fire,
            Self::Discover { .. } => Opcode::Discover,
            Self::Stats => Opcode::Stats,
            Self::LunCreate(_) => Opcode::LunCreate,
            Self::LunRemove { .. } => Opcode::LunRemove,
            Self::LunList => Opcode::LunList,
            Self::Attach { .. } => Opcode::Attach,
            Self::Fetch { .. } => Opcode::Fetch,
            Self::CommitAndFetch { .. } => Opcode::CommitAndFetch,
        }
    }

    /// The smallest output buffer this request's reply needs: a commit that fetches nothing
    /// needs only the reply's header and body.
    pub const fn min_reply_size(&self) -> usize {
        match self {
            Self::CommitAndFetch {
                max_descriptors: 0, ..
            } => crate::data::fetch_reply_size(0, 0),
            _ => self.opcode().min_reply_size(),
        }
    }
}

impl Opcode {
    /// The exact size of this opcode's request record (COMMIT_AND_FETCH: without its results
    /// and data).
    pub const fn request_size(self) -> usize {
        size_of::<Header>()
            + match self {
                Self::Wait => size_of::<WaitRequest>(),
                Self::Fire => size_of::<FireRequest>(),
                Self::Discover => size_of::<DiscoverRequest>(),
                Self::LunCreate => size_of::<LunCreateRequest>(),
                Self::LunRemove => size_of::<LunRemoveRequest>(),
                Self::Attach => size_of::<AttachRequest>(),
                Self::Fetch => size_of::<FetchRequest>(),
                Self::CommitAndFetch => size_of::<CommitRequest>(),
                Self::Stats | Self::LunList => 0,
            }
    }
}

/// The largest request record: a buffer this size holds any request [`encode_request`] writes
/// (a COMMIT with results is written by [`encode_commit`](crate::encode_commit)).
pub const MAX_REQUEST_SIZE: usize = size_of::<Header>() + size_of::<LunCreateRequest>();

/// Why a byte string is not a valid request. Each maps to one NTSTATUS in the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a [`Header`] (this includes a missing buffer).
    Truncated {
        len: usize,
    },
    /// `version` is not [`VERSION`].
    UnsupportedVersion {
        version: u16,
    },
    /// `size` disagrees with the number of bytes sent.
    SizeMismatch {
        declared: u32,
        actual: usize,
    },
    UnknownOpcode {
        opcode: u16,
    },
    /// The record is not the size its opcode requires.
    BadLength {
        opcode: Opcode,
        expected: usize,
        actual: usize,
    },
    /// A `reserved` field is not zero.
    ReservedNotZero {
        opcode: Opcode,
    },
    /// A field is out of its documented range.
    InvalidArgument {
        opcode: Opcode,
        field: &'static str,
    },
}

/// Decodes one request, rejecting anything not exactly as documented.
///
/// # Errors
///
/// Every byte string that is not a valid request yields the first [`DecodeError`] in this
/// order: truncated, version, size field, opcode, length for the opcode, reserved fields,
/// argument ranges.
pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    let Ok((header, body)) = Header::read_from_prefix(bytes) else {
        return Err(DecodeError::Truncated { len: bytes.len() });
    };
    if header.version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version: header.version,
        });
    }
    if usize::try_from(header.size) != Ok(bytes.len()) {
        return Err(DecodeError::SizeMismatch {
            declared: header.size,
            actual: bytes.len(),
        });
    }
    let opcode =
        Opcode::try_from(header.opcode).map_err(|opcode| DecodeError::UnknownOpcode { opcode })?;
    let expected = opcode.request_size();
    let variable = opcode == Opcode::CommitAndFetch && bytes.len() > expected;
    if bytes.len() != expected && !variable {
        return Err(DecodeError::BadLength {
            opcode,
            expected,
            actual: bytes.len(),
        });
    }
    let reserved = DecodeError::ReservedNotZero { opcode };
    let invalid = |field| DecodeError::InvalidArgument { opcode, field };
    match opcode {
        Opcode::Wait => {
            let body = read_body::<WaitRequest>(body);
            if body.reserved != 0 {
                return Err(reserved);
            }
            if body.max_events == 0 {
                return Err(invalid("max_events"));
            }
            Ok(Request::Wait {
                cursor: body.cursor,
                max_events: body.max_events,
            })
        }
        Opcode::Fire => {
            let body = read_body::<FireRequest>(body);
            if body.reserved != 0 {
                return Err(reserved);
            }
            Ok(Request::Fire {
                code: body.code,
                value: body.value,
            })
        }
        Opcode::Discover => {
            let body = read_body::<DiscoverRequest>(body);
            if body.reserved != 0 {
                return Err(reserved);
            }
            if !(1..=DISCOVER_DELAY_MS_MAX).contains(&body.delay_ms) {
                return Err(invalid("delay_ms"));
            }
            Ok(Request::Discover {
                delay_ms: body.delay_ms,
            })
        }
        Opcode::Stats => Ok(Request::Stats),
        Opcode::LunCreate => {
            let body = read_body::<LunCreateRequest>(body);
            if body.reserved != 0 {
                return Err(reserved);
            }
            match body.invalid_field() {
                Some(field) => Err(invalid(field)),
                None => Ok(Request::LunCreate(body)),
            }
        }
        Opcode::LunRemove => {
            let body = read_body::<LunRemoveRequest>(body);
            if body.reserved != 0 {
                return Err(reserved);
            }
            Ok(Request::LunRemove { lun: body.lun })
        }
        Opcode::LunList => Ok(Request::LunList),
        Opcode::Attach => {
            let body = read_body::<AttachRequest>(body);
            if body.reserved != 0 {
                return Err(reserved);
            }
            Ok(Request::Attach { lun: body.lun })
        }
        Opcode::Fetch => {
            let body = read_body::<FetchRequest>(body);
            if body.reserved != 0 {
                return Err(reserved);
            }
            if !(1..=MAX_DESCRIPTORS).contains(&body.max_descriptors) {
                return Err(invalid("max_descriptors"));
            }
            Ok(Request::Fetch {
                max_descriptors: body.max_descriptors,
            })
        }
        Opcode::CommitAndFetch => match check_commit(body) {
            Ok(commit) => Ok(Request::CommitAndFetch {
                count: commit.count,
                max_descriptors: commit.max_descriptors,
            }),
            Err(Some(field)) => Err(invalid(field)),
            Err(None) => Err(DecodeError::BadLength {
                opcode,
                expected,
                actual: bytes.len(),
            }),
        },
    }
}

/// Reads a body whose length the caller has already checked.
fn read_body<T: FromBytes>(body: &[u8]) -> T {
    match T::read_from_bytes(body) {
        Ok(value) => value,
        // decode_request checked the total length against Opcode::request_size before this.
        Err(_) => unreachable!("body length checked against the opcode"),
    }
}

/// Encodes `request` into `out` and returns the number of bytes written, or `None` if `out`
/// is too small. Used by clients (the tester, storsim's scenarios).
pub fn encode_request(request: &Request, out: &mut [u8]) -> Option<usize> {
    let opcode = request.opcode();
    let size = opcode.request_size();
    let out = out.get_mut(..size)?;
    let header = Header {
        size: size as u32,
        version: VERSION,
        opcode: opcode as u16,
    };
    let (head, body) = out.split_at_mut(size_of::<Header>());
    head.copy_from_slice(header.as_bytes());
    match *request {
        Request::Wait { cursor, max_events } => {
            body.copy_from_slice(
                WaitRequest {
                    cursor,
                    max_events,
                    reserved: 0,
                }
                .as_bytes(),
            );
        }
        Request::Fire { code, value } => {
            body.copy_from_slice(
                FireRequest {
                    code,
                    reserved: 0,
                    value,
                }
                .as_bytes(),
            );
        }
        Request::Discover { delay_ms } => {
            body.copy_from_slice(
                DiscoverRequest {
                    delay_ms,
                    reserved: 0,
                }
                .as_bytes(),
            );
        }
        Request::LunCreate(spec) => body.copy_from_slice(spec.as_bytes()),
        Request::LunRemove { lun } => {
            body.copy_from_slice(LunRemoveRequest { lun, reserved: 0 }.as_bytes());
        }
        Request::Attach { lun } => {
            body.copy_from_slice(AttachRequest { lun, reserved: 0 }.as_bytes());
        }
        Request::Fetch { max_descriptors } => {
            body.copy_from_slice(
                FetchRequest {
                    max_descriptors,
                    reserved: 0,
                }
                .as_bytes(),
            );
        }
        // Results need their data: encode_commit writes those.
        Request::CommitAndFetch {
            count: 0,
            max_descriptors,
        } => {
            body.copy_from_slice(
                CommitRequest {
                    count: 0,
                    max_descriptors,
                }
                .as_bytes(),
            );
        }
        Request::CommitAndFetch { .. } => return None,
        Request::Stats | Request::LunList => {}
    }
    Some(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn encoded(request: Request) -> Vec<u8> {
        let mut buf = [0u8; MAX_REQUEST_SIZE];
        let n = encode_request(&request, &mut buf).expect("MAX_REQUEST_SIZE holds every request");
        buf[..n].to_vec()
    }

    #[test]
    fn record_sizes_are_the_documented_abi() {
        assert_eq!(size_of::<Header>(), 8);
        assert_eq!(Opcode::Wait.request_size(), 24);
        assert_eq!(Opcode::Fire.request_size(), 24);
        assert_eq!(Opcode::Discover.request_size(), 16);
        assert_eq!(Opcode::Stats.request_size(), 8);
        assert_eq!(Opcode::LunCreate.request_size(), 80);
        assert_eq!(Opcode::LunRemove.request_size(), 16);
        assert_eq!(Opcode::LunList.request_size(), 8);
        assert_eq!(MAX_REQUEST_SIZE, 80);
    }

    #[test]
    fn wait_wire_bytes_are_little_endian_and_exact() {
        let bytes = encoded(Request::Wait {
            cursor: 0x0102_0304_0506_0708,
            max_events: 9,
        });
        assert_eq!(
            bytes,
            [
                24, 0, 0, 0, 2, 0, 1, 0, // size, version, opcode
                8, 7, 6, 5, 4, 3, 2, 1, // cursor
                9, 0, 0, 0, 0, 0, 0, 0, // max_events, reserved
            ]
        );
    }

    #[test]
    fn each_error_is_specific() {
        assert_eq!(decode_request(&[]), Err(DecodeError::Truncated { len: 0 }));
        assert_eq!(
            decode_request(&[8, 0, 0, 0, 1, 0, 4]),
            Err(DecodeError::Truncated { len: 7 })
        );

        // A version-1 client (before the LUN opcodes) is refused.
        let mut bytes = encoded(Request::Stats);
        bytes[4] = 1;
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::UnsupportedVersion { version: 1 })
        );

        let mut bytes = encoded(Request::Stats);
        bytes.push(0);
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::SizeMismatch {
                declared: 8,
                actual: 9
            })
        );

        let mut bytes = encoded(Request::Stats);
        bytes[6] = 99;
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::UnknownOpcode { opcode: 99 })
        );

        // A well-formed header announcing a WAIT with a STATS-sized record.
        let bytes = [8, 0, 0, 0, 2, 0, 1, 0];
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::BadLength {
                opcode: Opcode::Wait,
                expected: 24,
                actual: 8
            })
        );

        let mut bytes = encoded(Request::Fire { code: 1, value: 2 });
        bytes[12] = 1;
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::ReservedNotZero {
                opcode: Opcode::Fire
            })
        );

        let bytes = encoded(Request::Wait {
            cursor: 0,
            max_events: 0,
        });
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::InvalidArgument {
                opcode: Opcode::Wait,
                field: "max_events"
            })
        );
        for delay_ms in [0, DISCOVER_DELAY_MS_MAX + 1] {
            let bytes = encoded(Request::Discover { delay_ms });
            assert_eq!(
                decode_request(&bytes),
                Err(DecodeError::InvalidArgument {
                    opcode: Opcode::Discover,
                    field: "delay_ms"
                })
            );
        }
    }

    #[test]
    fn encode_refuses_a_short_buffer() {
        let mut buf = [0u8; 23];
        assert_eq!(
            encode_request(
                &Request::Wait {
                    cursor: 1,
                    max_events: 1
                },
                &mut buf
            ),
            None
        );
        assert_eq!(encode_request(&Request::Stats, &mut buf), Some(8));
    }

    fn any_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u64>(), 1..=u32::MAX)
                .prop_map(|(cursor, max_events)| Request::Wait { cursor, max_events }),
            (any::<u32>(), any::<u64>()).prop_map(|(code, value)| Request::Fire { code, value }),
            (1..=DISCOVER_DELAY_MS_MAX).prop_map(|delay_ms| Request::Discover { delay_ms }),
            Just(Request::Stats),
            any_lun_spec().prop_map(Request::LunCreate),
            any::<u32>().prop_map(|lun| Request::LunRemove { lun }),
            Just(Request::LunList),
        ]
    }

    fn any_lun_spec() -> impl Strategy<Value = LunSpec> {
        (
            1..=(1u64 << 40),
            prop_oneof![Just(512u32), Just(4096u32)],
            0..=crate::LunFlags::ALL,
            0..=crate::lun::MAX_QUEUE_DEPTH,
            proptest::array::uniform32(0x21u8..=0x7E),
            proptest::array::uniform16(1u8..),
        )
            .prop_map(
                |(block_count, block_size, flags, queue_depth, serial, unique_id)| LunSpec {
                    block_count,
                    block_size,
                    flags,
                    queue_depth,
                    reserved: 0,
                    serial,
                    unique_id,
                },
            )
    }

    /// LUN_CREATE's body (bytes 8..80) read straight from the spec (docs/DATAPATH.md §1).
    fn lun_create_is_valid(bytes: &[u8]) -> bool {
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let blocks = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        let block_size = word(16);
        let serial = &bytes[32..64];
        (block_size == 512 || block_size == 4096)
            && blocks != 0
            && u128::from(blocks) * u128::from(block_size) <= u128::from(u64::MAX)
            && word(20) < 8
            && word(24) <= 250
            && word(28) == 0
            && serial.iter().all(|b| (0x20..=0x7E).contains(b))
            && serial.iter().any(|&b| b != b' ')
            && bytes[64..80].iter().any(|&b| b != 0)
    }

    /// Re-derives, independently of the decoder, whether `bytes` is well-formed.
    fn expected_validity(bytes: &[u8]) -> bool {
        if bytes.len() < 8 {
            return false;
        }
        let size = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        let version = u16::from_le_bytes(bytes[4..6].try_into().unwrap());
        let opcode = u16::from_le_bytes(bytes[6..8].try_into().unwrap());
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        version == 2
            && size == bytes.len()
            && match (opcode, bytes.len()) {
                (1, 24) => word(16) != 0 && word(20) == 0,
                (2, 24) => word(12) == 0,
                (3, 16) => (1..=60_000).contains(&word(8)) && word(12) == 0,
                (4 | 7, 8) => true,
                (5, 80) => lun_create_is_valid(bytes),
                (6 | 8, 16) => word(12) == 0,
                (9, 16) => (1..=32).contains(&word(8)) && word(12) == 0,
                (10, len) if len >= 16 => commit_is_valid(bytes),
                _ => false,
            }
    }

    /// COMMIT_AND_FETCH as DATAPATH.md §1–§2 reads: at most 64 results of 16 bytes and at
    /// most 32 descriptors; each result GOOD with no sense or CHECK CONDITION with a sense key
    /// 1..=15 and no data; no tag twice; the data exactly the sum of `data_len`.
    fn commit_is_valid(bytes: &[u8]) -> bool {
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let (count, max) = (word(8) as usize, word(12));
        if count > 64 || max > 32 || bytes.len() < 16 + count * 16 {
            return false;
        }
        let results: Vec<&[u8]> = (0..count)
            .map(|i| &bytes[16 + i * 16..32 + i * 16])
            .collect();
        let mut data = 0usize;
        for (i, r) in results.iter().enumerate() {
            let ok = match r[8] {
                0 => r[9..12] == [0, 0, 0],
                2 => (1..=15).contains(&r[9]) && r[12..16] == [0; 4],
                _ => false,
            };
            if !ok || results[..i].iter().any(|o| o[..8] == r[..8]) {
                return false;
            }
            data += u32::from_le_bytes(r[12..16].try_into().unwrap()) as usize;
        }
        bytes.len() == 16 + count * 16 + data
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100_000))]

        /// Every byte string of every length decodes to a valid request or a specific error,
        /// and validity agrees with an independent reading of the spec.
        #[test]
        fn arbitrary_bytes_decode_or_fail_specifically(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let result = decode_request(&bytes);
            prop_assert_eq!(result.is_ok(), expected_validity(&bytes));
            match result {
                Ok(Request::CommitAndFetch { count, max_descriptors }) if count > 0 => {
                    let commit = crate::Commit::of(&bytes).expect("an accepted commit");
                    let (results, data): (Vec<_>, Vec<&[u8]>) = commit.results().unzip();
                    let mut out = std::vec![0u8; bytes.len()];
                    let n = crate::encode_commit(&mut out, max_descriptors, &results, &data.concat());
                    prop_assert_eq!(n, Some(bytes.len()));
                    prop_assert_eq!(out, bytes);
                }
                Ok(request) => prop_assert_eq!(encoded(request), bytes),
                Err(_) => {}
            }
        }

        /// Headers that look right get past the header checks, so the body checks are reached.
        #[test]
        fn plausible_headers_reach_the_body_checks(opcode in 0u16..12, len in 8usize..96, fill in any::<u8>()) {
            let mut bytes = std::vec![fill; len];
            bytes[0..4].copy_from_slice(&(len as u32).to_le_bytes());
            bytes[4..6].copy_from_slice(&VERSION.to_le_bytes());
            bytes[6..8].copy_from_slice(&opcode.to_le_bytes());
            let result = decode_request(&bytes);
            prop_assert_eq!(result.is_ok(), expected_validity(&bytes));
            match Opcode::try_from(opcode) {
                Err(_) => prop_assert_eq!(result, Err(DecodeError::UnknownOpcode { opcode })),
                Ok(op) if op.request_size() != len && op != Opcode::CommitAndFetch => prop_assert_eq!(
                    result,
                    Err(DecodeError::BadLength { opcode: op, expected: op.request_size(), actual: len })
                ),
                Ok(_) => {}
            }
        }

        #[test]
        fn encode_then_decode_round_trips(request in any_request()) {
            prop_assert_eq!(decode_request(&encoded(request)), Ok(request));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        /// Long inputs (up to a page) are refused by their size, never read past or accepted.
        #[test]
        fn long_inputs_are_refused(bytes in proptest::collection::vec(any::<u8>(), MAX_REQUEST_SIZE + 1..4096)) {
            prop_assert!(decode_request(&bytes).is_err());
        }
    }
}
