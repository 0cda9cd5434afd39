//! revcall-tester: the companion client of revcall's service-IRP channel. One client library
//! over one [`transport::Transport`] trait, with two backends: DeviceIoControl against the
//! installed driver on Windows, and storsim's emulated I/O manager on Linux.

pub mod cli;
pub mod client;
pub mod selftest;
#[cfg(target_os = "linux")]
pub mod sim;
pub mod transport;
#[cfg(windows)]
pub mod windows;
