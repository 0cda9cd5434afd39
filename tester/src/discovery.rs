//! Finding revcall's adapters without talking to anyone else's. A machine has other Storport
//! adapters (storahci, stornvme, storvsc, vioscsi): revcall's are told apart by their
//! devnode's hardware id (`root\revcall`, from the INF), never by sending revcall's wire
//! format to another vendor's miniport. Each one found is then asked for its STATS once.
//!
//! The Windows enumeration itself (SetupAPI) is in `crate::windows`; what it decides with, and
//! the probe, are here so that they are tested on every host.

use serde::Serialize;

use crate::client::{Adapter, RequestError};
use crate::transport::{Transport, TransportError};

/// The hardware id of revcall's root-enumerated devnode (`inf/revcall.inf`).
pub const HARDWARE_ID: &str = r"root\revcall";

/// Whether a devnode's hardware ids, as `SPDRP_HARDWAREID` returns them (REG_MULTI_SZ in
/// UTF-16: strings each ended by a NUL, an empty one last), include revcall's. PnP compares
/// hardware ids without regard to case.
pub fn is_revcall(hardware_ids: &[u16]) -> bool {
    hardware_ids
        .split(|&unit| unit == 0)
        .take_while(|id| !id.is_empty())
        .any(|id| String::from_utf16_lossy(id).eq_ignore_ascii_case(HARDWARE_ID))
}

/// A revcall adapter: the path that opens it and what it answered.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    pub path: String,
    /// Its STATS in a line, or why it did not answer as revcall does.
    pub note: String,
}

/// Probes every candidate (a path, and the transport that opens it) with one STATS each.
///
/// # Errors
///
/// [`TransportError::AccessDenied`]: the tester is not elevated, and no other adapter would
/// open either. Every other failure is told in the adapter's note.
pub fn survey<T: Transport>(
    candidates: impl IntoIterator<Item = (String, T)>,
) -> Result<Vec<Found>, TransportError> {
    candidates
        .into_iter()
        .map(|(path, transport)| {
            Ok(Found {
                note: probe(&transport)?,
                path,
            })
        })
        .collect()
}

/// Opens the adapter, sends it one STATS, closes it: a line on its state.
///
/// # Errors
///
/// [`TransportError::AccessDenied`]; any other failure to open is described in the line.
pub fn probe<T: Transport>(transport: &T) -> Result<String, TransportError> {
    let adapter = match Adapter::open(transport, std::process::id()) {
        Ok(adapter) => adapter,
        Err(denied @ TransportError::AccessDenied(_)) => return Err(denied),
        Err(other) => return Ok(format!("cannot open it: {other}")),
    };
    let note = match adapter.stats() {
        Ok(stats) => format!(
            "revcall: {} parked (cap {}), newest event {}",
            stats.parked_now, stats.parked_cap, stats.head_seq
        ),
        Err(RequestError::Status(revcall_protocol::status::STATUS_REVISION_MISMATCH)) => {
            "revcall, but another protocol version: update the tester or the driver".into()
        }
        Err(error) => format!("does not answer as revcall: {error}"),
    };
    adapter.close();
    Ok(note)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use revcall_protocol::status::{STATUS_INVALID_DEVICE_REQUEST, STATUS_SUCCESS};
    use revcall_protocol::{StatsReply, encode_stats_reply};

    use super::*;
    use crate::overlapped::fake::{Answer, FakeIo};
    use crate::overlapped::{self, Request, win32};
    use crate::transport::Completion;

    fn wide(text: &str) -> Vec<u16> {
        text.encode_utf16().chain(Some(0)).collect()
    }

    #[test]
    fn revcall_is_told_by_its_hardware_id() {
        let multi_sz = |ids: &[&str]| -> Vec<u16> {
            ids.iter().flat_map(|id| wide(id)).chain(Some(0)).collect()
        };
        assert!(is_revcall(&multi_sz(&[r"root\revcall"])));
        assert!(is_revcall(&multi_sz(&[r"ROOT\REVCALL"])));
        assert!(is_revcall(&multi_sz(&[r"root\other", r"root\revcall"])));
        assert!(!is_revcall(&multi_sz(&[
            r"PCI\VEN_8086&DEV_2922",
            r"PCI\CC_010601"
        ])));
        assert!(!is_revcall(&multi_sz(&[r"root\revcall2"])));
        // Ids after the empty string that ends the list are not the devnode's.
        assert!(!is_revcall(&multi_sz(&["", r"root\revcall"])));
        assert!(!is_revcall(&[]));
    }

    /// An adapter as the Windows backend reaches it, on top of the same submit path
    /// ([`overlapped::issue`], [`Request`]) with a fake DeviceIoControl.
    struct FakeAdapter {
        answer: fn(&[u8]) -> Answer,
        requests: Mutex<Vec<Arc<FakeIo>>>,
    }

    impl FakeAdapter {
        fn new(answer: fn(&[u8]) -> Answer) -> Self {
            Self {
                answer,
                requests: Mutex::new(Vec::new()),
            }
        }
    }

    impl Transport for &FakeAdapter {
        type Handle = u32;
        type Pending = Request<Arc<FakeIo>>;

        fn name(&self) -> &'static str {
            "fake"
        }
        fn open(&self, _: u32) -> Result<u32, TransportError> {
            Ok(1)
        }
        fn submit(&self, _: u32, input: &[u8], out_len: u32) -> Result<Self::Pending, u32> {
            let io = Arc::new(FakeIo::new((self.answer)(input), out_len as usize));
            self.requests.lock().unwrap().push(io.clone());
            overlapped::issue(io, |io| io.device_io_control())
        }
        fn wait(&self, pending: &Self::Pending, limit: Duration) -> Option<Completion> {
            pending.wait(limit)
        }
        fn cancel(&self, _: u32, pending: &Self::Pending) {
            pending.cancel();
        }
        fn cancel_all(&self, _: u32) {}
        fn close(&self, _: u32) {}
    }

    /// storahci, stornvme…: Storport fails the service IOCTL during the call, and the event of
    /// the OVERLAPPED is never set.
    fn foreign(_: &[u8]) -> Answer {
        Answer::FailNow(win32::ERROR_INVALID_FUNCTION)
    }

    fn revcall(_: &[u8]) -> Answer {
        let mut reply = [0u8; 256];
        let stats = StatsReply {
            parked_cap: 1024,
            head_seq: 3,
            ..StatsReply::default()
        };
        let len = encode_stats_reply(&mut reply, &stats).unwrap();
        Answer::CompleteNow(STATUS_SUCCESS, reply[..len].to_vec())
    }

    /// With the old submit path this test does not return: the foreign adapter's failed STATS
    /// was cancelled and then waited on for ever (the fake fails the test there instead).
    #[test]
    fn discovery_returns_when_an_adapter_fails_the_ioctl_during_the_call() {
        let (storahci, ours) = (FakeAdapter::new(foreign), FakeAdapter::new(revcall));
        let found = survey([
            (r"\\.\Scsi0:".to_owned(), &storahci),
            (r"\\.\Scsi1:".to_owned(), &ours),
        ])
        .unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0].note,
            format!(
                "does not answer as revcall: {}",
                RequestError::Status(STATUS_INVALID_DEVICE_REQUEST)
            )
        );
        assert!(found[0].note.contains("STATUS_INVALID_DEVICE_REQUEST"));
        assert_eq!(
            found[1].note,
            "revcall: 0 parked (cap 1024), newest event 3"
        );
        // One STATS each; the failed one was neither cancelled nor waited on.
        let failed = storahci.requests.lock().unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].calls(), []);
    }
}
