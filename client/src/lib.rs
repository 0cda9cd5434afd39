//! revcall-client: the user-mode side of revcall's service-IRP channel, once, for every caller
//! on the host — the tester (Windows and storsim backends) and revcall-sim's scripted runs.
//!
//! [`transport::Transport`] is how a request reaches an adapter (DeviceIoControl, or storsim's
//! emulated I/O manager); [`channel`] is the protocol over it: requests encoded, replies
//! decoded into [`channel::Delivery`] and friends, statuses described, and a
//! [`channel::Watcher`] that keeps WAITs outstanding and counts what it lost; [`server`] is a
//! disk server's side of the data path (FETCH work in, COMMIT answers out).

pub mod channel;
pub mod malformed;
pub mod server;
pub mod transport;
