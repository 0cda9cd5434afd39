//! A user-mode client of revcall's channel, over storsim's I/O manager: the requests of
//! `revcall-protocol`, sent overlapped on a handle, and their replies decoded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use revcall_protocol::{
    DiscoverReply, EventRecord, IOCTL_MINIPORT_PROCESS_SERVICE_IRP, Reply, Request as Wire,
    StatsReply, WaitReply, decode_reply, encode_request,
};

use storsim::io::{Access, Handle, Outcome, ProcessId, Request};
use storsim::kernel::Kernel;

/// How long a client waits for a reply it expects promptly.
pub const PROMPT: Duration = Duration::from_secs(5);

/// A WAIT's outcome, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub reply: WaitReply,
    pub events: Vec<EventRecord>,
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
        let mut bytes = [0u8; 64];
        let len = encode_request(request, &mut bytes).expect("requests fit 64 bytes");
        self.send_raw(&bytes[..len], out_len)
            .expect("a read/write handle to the adapter accepts the service IOCTL")
    }

    /// Posts a WAIT with room for `max_events`.
    pub fn wait(&self, cursor: u64, max_events: u32) -> Arc<Request> {
        let out = 64 + 32 * max_events.max(1);
        self.send(&Wire::Wait { cursor, max_events }, out)
    }

    /// FIRE and its reply: the event's sequence number, or the status.
    pub fn fire(&self, code: u32, value: u64) -> Result<u64, u32> {
        match decode_reply(&self.call(&Wire::Fire { code, value }, 64)?) {
            Ok(Reply::Fire(reply)) => {
                self.kernel.events().fired.fetch_add(1, Ordering::Relaxed);
                Ok(reply.seq)
            }
            _ => Err(u32::MAX),
        }
    }

    pub fn discover(&self, delay_ms: u32) -> Result<DiscoverReply, u32> {
        match decode_reply(&self.call(&Wire::Discover { delay_ms }, 64)?) {
            Ok(Reply::Discover(reply)) => Ok(reply),
            _ => Err(u32::MAX),
        }
    }

    pub fn stats(&self) -> Result<StatsReply, u32> {
        match decode_reply(&self.call(&Wire::Stats, 256)?) {
            Ok(Reply::Stats(reply)) => Ok(reply),
            _ => Err(u32::MAX),
        }
    }

    /// Sends and waits: the reply bytes, or the completion status (`u32::MAX`: no reply).
    fn call(&self, request: &Wire, out_len: u32) -> Result<Vec<u8>, u32> {
        let outcome = self.send(request, out_len).wait(PROMPT).ok_or(u32::MAX)?;
        if outcome.status != 0 {
            return Err(outcome.status);
        }
        Ok(outcome.output)
    }

    /// Decodes a completed WAIT, counting delivered events.
    pub fn delivery(&self, outcome: &Outcome) -> Result<Delivery, u32> {
        if outcome.status != 0 {
            return Err(outcome.status);
        }
        match decode_reply(&outcome.output) {
            Ok(Reply::Wait { reply, events }) => {
                let events: Vec<EventRecord> = events.collect();
                self.kernel
                    .events()
                    .delivered
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                Ok(Delivery { reply, events })
            }
            _ => Err(u32::MAX),
        }
    }

    pub fn cancel(&self, request: &Request) -> usize {
        self.kernel.cancel_io(self.handle, Some(request.id))
    }

    pub fn close(self) {
        self.kernel.close(self.handle);
    }
}
