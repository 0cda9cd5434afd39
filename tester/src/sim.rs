//! The storsim backend: revcall.sys loaded into this process, its adapter started, requests
//! through storsim's emulated I/O manager with every verifier check on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
use storsim::harness::Harness;
use storsim::io::{Access, Request};
use storsim::kernel::Kernel;
use storsim::machine::Config;

use crate::transport::{Completion, Lab, Transport, TransportError};

/// An emulated machine running the driver.
pub struct Sim {
    driver: PathBuf,
    config: Config,
    machine: Mutex<Option<Harness>>,
    /// Violations of machines already shut down by [`Lab::restart`].
    earlier: Mutex<Vec<String>>,
}

impl Sim {
    /// Boots a machine, loads `driver` and starts its adapter.
    pub fn start(driver: &Path) -> anyhow::Result<Self> {
        let config = Config {
            timeline: false,
            ..Config::default()
        };
        let harness = Harness::start(driver, config.clone())?;
        Ok(Self {
            driver: driver.to_owned(),
            config,
            machine: Mutex::new(Some(harness)),
            earlier: Mutex::new(Vec::new()),
        })
    }

    /// The running machine's kernel; the calling thread becomes an emulated CPU (the driver
    /// runs on the thread that sends it a request).
    pub fn kernel(&self) -> Arc<Kernel> {
        storsim::cpu::enter_thread();
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|h| h.kernel.clone())
            .expect("a Sim always has a machine between restarts")
    }

    /// The driver image this machine runs.
    pub fn driver(&self) -> &Path {
        &self.driver
    }

    /// Unloads the driver: the verifier's final checks (leaks, queued DPCs) run.
    pub fn finish(&self) -> Vec<String> {
        self.shut_down();
        self.earlier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn shut_down(&self) {
        let harness = self
            .machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(harness) = harness {
            let summary = harness.finish();
            let mut earlier = self.earlier.lock().unwrap_or_else(|p| p.into_inner());
            earlier.extend(
                summary
                    .violations
                    .iter()
                    .map(|v| format!("0x{:X}/{:#x}: {}", v.code, v.params[0], v.what)),
            );
            if summary.irps.outstanding != Some(0) {
                earlier.push(format!(
                    "{:?} IRPs outstanding at unload",
                    summary.irps.outstanding
                ));
            }
        }
    }
}

impl Transport for Sim {
    type Handle = u64;
    type Pending = Arc<Request>;

    fn name(&self) -> &'static str {
        "storsim"
    }

    fn open(&self, process: u32) -> Result<u64, TransportError> {
        Ok(self.kernel().open(process, Access::READ_WRITE))
    }

    fn submit(&self, handle: u64, input: &[u8], out_len: u32) -> Result<Arc<Request>, u32> {
        self.kernel()
            .device_io_control(handle, IOCTL_MINIPORT_PROCESS_SERVICE_IRP, input, out_len)
    }

    fn wait(&self, pending: &Arc<Request>, limit: Duration) -> Option<Completion> {
        pending.wait(limit).map(|outcome| Completion {
            status: outcome.status,
            output: outcome.output,
        })
    }

    fn cancel(&self, handle: u64, pending: &Arc<Request>) {
        self.kernel().cancel_io(handle, Some(pending.id));
    }

    fn cancel_all(&self, handle: u64) {
        self.kernel().cancel_io(handle, None);
    }

    fn close(&self, handle: u64) {
        self.kernel().close(handle);
    }

    fn lab(&self) -> Option<&dyn Lab> {
        Some(self)
    }
}

impl Lab for Sim {
    fn exit_process(&self, process: u32) {
        self.kernel().exit_process(process);
    }

    fn remove(&self) {
        self.kernel().remove_adapter(|| {});
    }

    fn surprise_remove(&self) {
        self.kernel().surprise_remove_adapter();
    }

    fn restart(&self) -> anyhow::Result<()> {
        self.shut_down();
        let harness = Harness::start(&self.driver, self.config.clone())?;
        *self.machine.lock().unwrap_or_else(|p| p.into_inner()) = Some(harness);
        Ok(())
    }

    fn disk_write_read(&self, lun: u8, lba: u64, data: &[u8]) -> Result<Vec<u8>, String> {
        let class = self
            .kernel()
            .disk_class()
            .ok_or("the adapter is not started")?;
        let blocks = data.len() as u32 / 512;
        let transfer = revcall_scsi::Transfer {
            lba,
            blocks,
            fua: false,
        };
        let wrote = class
            .command(
                lun,
                &revcall_scsi::Command::Write(transfer),
                data.len() as u32,
                Some(data),
            )
            .ok_or("the WRITE never completed")?;
        if wrote.srb_status != 1 {
            return Err(format!("the WRITE ended {wrote:?}"));
        }
        let read = class
            .command(
                lun,
                &revcall_scsi::Command::Read(transfer),
                data.len() as u32,
                None,
            )
            .ok_or("the READ never completed")?;
        if read.srb_status != 1 {
            return Err(format!("the READ ended {read:?}"));
        }
        Ok(read.data)
    }

    fn violations(&self) -> Vec<String> {
        let mut all = self
            .earlier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        all.extend(
            self.kernel()
                .machine()
                .verifier()
                .violations()
                .iter()
                .map(|v| format!("0x{:X}/{:#x}: {}", v.code, v.params[0], v.what)),
        );
        all
    }
}
