//! A driver loaded and its adapter started, for tests and tools that script their own steps
//! (the tester's storsim backend, the fuzz target, the scripted runs).

use std::sync::Arc;

use crate::driver::{self, Driver, RunError};
use crate::kernel::{Kernel, Session};
use crate::machine::Config;
use crate::port::PnpState;
use crate::report::Summary;

/// A driver loaded and its adapter started, for tests and tools that script their own steps.
pub struct Harness {
    pub kernel: Arc<Kernel>,
    session: Option<Session>,
    driver: Driver,
}

impl Harness {
    /// Boots a kernel, loads `driver` and starts its adapter.
    pub fn start(driver: &std::path::Path, config: Config) -> Result<Self, RunError> {
        let session = Kernel::boot(config);
        let kernel = session.kernel().clone();
        let loaded = driver::load(&kernel, driver)?;
        kernel.start_adapter()?;
        Ok(Self {
            kernel,
            session: Some(session),
            driver: loaded,
        })
    }

    /// The loaded image: where the driver's own code lies.
    pub fn image(&self) -> &crate::loader::Image {
        self.driver.image()
    }

    /// Removes the adapter if the script has not, unloads, and summarises the run.
    pub fn finish(mut self) -> Summary {
        if self.kernel.adapter_state() != PnpState::Removed {
            self.kernel.remove_adapter(|| {});
        }
        self.kernel.unload();
        let summary = self.kernel.summary(None, Vec::new());
        self.session.take();
        summary
    }
}
