//! revcall's channel client (crate `revcall-client`) bound to storsim's I/O manager directly:
//! a handle of an emulated process, requests sent overlapped on it, the replies decoded by the
//! client library. Scripts keep storsim's own request objects (exactly-once counts, outcomes)
//! and a status-or-nothing error, which is what their expectations compare.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use revcall_client::channel::{self as protocol, RequestError};
use revcall_protocol::{
    DiscoverReply, IOCTL_MINIPORT_PROCESS_SERVICE_IRP, LunEntry, LunSpec, Request as Wire,
    StatsReply,
};
use storsim::io::{Access, Handle, Outcome, ProcessId, Request};
use storsim::kernel::Kernel;

pub use revcall_client::channel::{Delivery, PROMPT};
use revcall_client::server::{self, Answer, Commit, FetchRoom, Work};

/// A client error as the scripts compare it: the completion status, or `u32::MAX` when there
/// was no decodable reply (a timeout or a malformed answer).
fn status_of(error: RequestError) -> u32 {
    match error {
        RequestError::Status(status) => status,
        RequestError::Timeout(_) | RequestError::BadReply(_) => u32::MAX,
    }
}

/// One open handle to the adapter.
pub struct Channel {
    kernel: Arc<Kernel>,
    pub handle: Handle,
    pub process: ProcessId,
}

impl Channel {
    pub fn open(kernel: &Arc<Kernel>, process: ProcessId) -> Self {
        Self {
            kernel: kernel.clone(),
            handle: kernel.open(process, Access::READ_WRITE),
            process,
        }
    }

    /// Sends raw bytes as the service IOCTL.
    pub fn send_raw(&self, input: &[u8], out_len: u32) -> Result<Arc<Request>, u32> {
        self.kernel.device_io_control(
            self.handle,
            IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
            input,
            out_len,
        )
    }

    pub fn send(&self, request: &Wire, out_len: u32) -> Arc<Request> {
        self.send_record(&protocol::encode(request), out_len)
    }

    /// Sends an encoded request on this read/write handle, which always takes the IOCTL.
    fn send_record(&self, record: &[u8], out_len: u32) -> Arc<Request> {
        self.send_raw(record, out_len)
            .expect("a read/write handle to the adapter accepts the service IOCTL")
    }

    /// Posts a WAIT with room for `max_events`.
    pub fn wait(&self, cursor: u64, max_events: u32) -> Arc<Request> {
        self.send(
            &Wire::Wait { cursor, max_events },
            protocol::wait_reply_size(max_events),
        )
    }

    /// FIRE and its reply: the event's sequence number, or the status.
    pub fn fire(&self, code: u32, value: u64) -> Result<u64, u32> {
        let outcome = self.call(&Wire::Fire { code, value }, 64)?;
        let seq = protocol::fired(outcome.status, &outcome.output).map_err(status_of)?;
        self.kernel.events().fired.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    pub fn discover(&self, delay_ms: u32) -> Result<DiscoverReply, u32> {
        let outcome = self.call(&Wire::Discover { delay_ms }, 64)?;
        protocol::discovery(outcome.status, &outcome.output).map_err(status_of)
    }

    pub fn stats(&self) -> Result<StatsReply, u32> {
        let outcome = self.call(&Wire::Stats, 256)?;
        protocol::stats(outcome.status, &outcome.output).map_err(status_of)
    }

    /// LUN_CREATE: the LUN's number, or the status.
    pub fn create_lun(&self, spec: LunSpec) -> Result<u32, u32> {
        let outcome = self.call(&Wire::LunCreate(spec), 64)?;
        protocol::lun_created(outcome.status, &outcome.output).map_err(status_of)
    }

    pub fn remove_lun(&self, lun: u32) -> Result<(), u32> {
        let outcome = self.call(&Wire::LunRemove { lun }, 64)?;
        protocol::lun_removed(outcome.status, &outcome.output).map_err(status_of)
    }

    pub fn list_luns(&self) -> Result<Vec<LunEntry>, u32> {
        let room = revcall_protocol::Opcode::LunList.min_reply_size() as u32;
        let outcome = self.call(&Wire::LunList, room)?;
        protocol::luns_listed(outcome.status, &outcome.output).map_err(status_of)
    }

    /// Posts an ATTACH: it stays pending for the session's life.
    pub fn attach(&self, lun: u32) -> Arc<Request> {
        self.send(&Wire::Attach { lun }, 16)
    }

    /// Posts a FETCH for up to `max_descriptors`, with the most payload room.
    pub fn fetch(&self, max_descriptors: u32) -> Arc<Request> {
        self.fetch_into(max_descriptors, FetchRoom::MOST)
    }

    /// Posts a FETCH for up to `max_descriptors`, with `room`'s output buffer.
    pub fn fetch_into(&self, max_descriptors: u32, room: FetchRoom) -> Arc<Request> {
        self.send(&Wire::Fetch { max_descriptors }, room.size(max_descriptors))
    }

    /// Posts a COMMIT_AND_FETCH with `answer`, fetching up to `max_descriptors` more, with
    /// the most payload room.
    pub fn commit(&self, answer: &Answer, max_descriptors: u32) -> Arc<Request> {
        self.commit_into(answer, max_descriptors, FetchRoom::MOST)
    }

    /// [`commit`](Self::commit) into `room`'s output buffer.
    pub fn commit_into(
        &self,
        answer: &Answer,
        max_descriptors: u32,
        room: FetchRoom,
    ) -> Arc<Request> {
        self.send_record(&answer.encode(max_descriptors), room.size(max_descriptors))
    }

    /// A server's loop: serves the session `attach` made this handle a server of, answering
    /// each FETCH's work with what `answer` puts in a COMMIT_AND_FETCH (fetching up to
    /// `max_descriptors` more), until the session ends (FINAL, or a FETCH failing: the adapter
    /// went away); then waits for the ATTACH. How many SRBs it answered, or `None` if a
    /// request did not complete within `patience` or a reply did not decode.
    pub fn serve(
        &self,
        attach: &Request,
        max_descriptors: u32,
        patience: std::time::Duration,
        mut answer: impl FnMut(&Work, &mut Commit),
    ) -> Option<usize> {
        let mut room = FetchRoom::default();
        let mut pending = self.fetch_into(max_descriptors, room);
        let (mut served, mut commit) = (0, Commit::default());
        loop {
            let work = match self.work(&pending.wait(patience)?) {
                Ok(work) if !work.last => work,
                Ok(_) => break,
                Err(u32::MAX) => return None,
                Err(_) => break,
            };
            answer(&work, &mut commit);
            served += commit.answered();
            room.follow(&work, max_descriptors);
            pending = self.send_record(commit.record(max_descriptors), room.size(max_descriptors));
        }
        attach.wait(patience)?;
        Some(served)
    }

    /// Decodes a completed FETCH or COMMIT_AND_FETCH.
    pub fn work(&self, outcome: &Outcome) -> Result<Work, u32> {
        server::work(outcome.status, &outcome.output).map_err(status_of)
    }

    /// Sends and waits for the outcome (`Err(u32::MAX)`: none within [`PROMPT`]).
    fn call(&self, request: &Wire, out_len: u32) -> Result<Outcome, u32> {
        self.send(request, out_len).wait(PROMPT).ok_or(u32::MAX)
    }

    /// Decodes a completed WAIT, counting delivered events.
    pub fn delivery(&self, outcome: &Outcome) -> Result<Delivery, u32> {
        let delivery =
            protocol::wait_delivery(outcome.status, &outcome.output).map_err(status_of)?;
        self.kernel
            .events()
            .delivered
            .fetch_add(delivery.events.len() as u64, Ordering::Relaxed);
        Ok(delivery)
    }

    pub fn cancel(&self, request: &Request) -> usize {
        self.kernel.cancel_io(self.handle, Some(request.id))
    }

    pub fn close(self) {
        self.kernel.close(self.handle);
    }
}
