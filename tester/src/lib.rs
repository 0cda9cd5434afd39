//! revcall-tester: the companion client of revcall's service-IRP channel: the channel's client
//! library (crate `revcall-client`) with two backends — DeviceIoControl against the installed
//! driver on Windows, and storsim's emulated I/O manager on Linux — a selftest and a CLI.

pub use revcall_client::channel as client;
pub use revcall_client::transport;

pub mod cli;
pub mod discovery;
pub mod disk;
pub mod overlapped;
pub mod selftest;
#[cfg(target_os = "linux")]
pub mod sim;
#[cfg(windows)]
pub mod windows;
#[cfg(windows)]
pub mod wine_lab;
