//! `revcall-tester disk`: create, list and remove virtual disks, and serve one from memory
//! (docs/DATAPATH.md): the tester becomes the LUN's server until Ctrl-C, `--seconds` or the
//! LUN's removal.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use revcall_protocol::{LunEntry, LunFlags, LunSpec};
use serde_json::json;

use crate::client::Adapter;
use crate::transport::Transport;
use revcall_client::server::{Backend, FileDisk, MemoryDisk, Session, Step};

/// The largest disk `--serve` keeps in memory.
const MAX_SERVED_MIB: u64 = 4096;

/// A size as people write it: `64MiB`, `1GiB`, `512KiB`, `4096` (bytes); `K`/`M`/`G`/`T`
/// and their `iB` forms are powers of 1024.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a size (64MiB, 1GiB, 4096)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        other => bail!("unknown size unit {other:?} (KiB, MiB, GiB, TiB)"),
    };
    number
        .checked_mul(1 << shift)
        .with_context(|| format!("{text} is too large"))
}

/// What `disk create` asks for.
pub struct Shape {
    /// Bytes.
    pub size: u64,
    /// SRBs Storport may have outstanding on the LUN (0: the driver's default, 128).
    pub queue_depth: u32,
    pub block_size: u32,
    pub serial: Option<String>,
    pub read_only: bool,
    pub write_cache: bool,
    pub unmap: bool,
}

impl Shape {
    /// The LUN_CREATE for this shape: a serial and a unique id of this run unless given.
    pub fn spec(&self) -> anyhow::Result<LunSpec> {
        if self.block_size != 512 && self.block_size != 4096 {
            bail!("--block-size must be 512 or 4096");
        }
        let bytes = self.size;
        if bytes == 0 || !bytes.is_multiple_of(u64::from(self.block_size)) {
            bail!("--size must be a non-zero multiple of the block size");
        }
        if self.queue_depth > revcall_protocol::MAX_QUEUE_DEPTH {
            bail!(
                "--queue-depth must be at most {}",
                revcall_protocol::MAX_QUEUE_DEPTH
            );
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let text = self
            .serial
            .clone()
            .unwrap_or_else(|| format!("REVCALL-{}-{:x}", std::process::id(), stamp & 0xFFFF_FFFF));
        if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
            bail!("--serial must be 1 to 32 printable ASCII characters without spaces");
        }
        let mut serial = [b' '; 32];
        serial[..text.len()].copy_from_slice(text.as_bytes());
        let mut unique_id = [0u8; 16];
        unique_id[..8].copy_from_slice(&stamp.to_le_bytes());
        unique_id[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        unique_id[12..].copy_from_slice(&(text.len() as u32).to_le_bytes());
        let flags = [
            (self.read_only, LunFlags::READ_ONLY),
            (self.write_cache, LunFlags::WRITE_CACHE),
            (self.unmap, LunFlags::UNMAP),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, bit)| flags | bit);
        Ok(LunSpec {
            block_count: bytes / u64::from(self.block_size),
            block_size: self.block_size,
            flags,
            queue_depth: self.queue_depth,
            serial,
            unique_id,
            ..LunSpec::default()
        })
    }
}

/// `disk list` as a table.
pub fn table(entries: &[LunEntry]) -> String {
    if entries.is_empty() {
        return "no virtual disks".into();
    }
    let mut out =
        String::from("LUN  size (MiB)  block  flags                      queue  outstanding");
    for e in entries {
        let flags: Vec<&str> = [
            (LunFlags::READ_ONLY, "read-only"),
            (LunFlags::WRITE_CACHE, "write-cache"),
            (LunFlags::UNMAP, "unmap"),
        ]
        .iter()
        .filter(|(bit, _)| e.flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
        let mib = e.block_count * u64::from(e.block_size) / (1024 * 1024);
        out += &format!(
            "\n{:>3}  {:>10}  {:>5}  {:<25}  {:>5}  {:>11}",
            e.lun,
            mib,
            e.block_size,
            flags.join(","),
            e.queue_depth,
            e.outstanding
        );
    }
    out
}

pub fn entry_json(e: &LunEntry) -> serde_json::Value {
    json!({
        "lun": e.lun,
        "block_count": e.block_count,
        "block_size": e.block_size,
        "read_only": e.flags & LunFlags::READ_ONLY != 0,
        "write_cache": e.flags & LunFlags::WRITE_CACHE != 0,
        "unmap": e.flags & LunFlags::UNMAP != 0,
        "queue_depth": e.queue_depth,
        "outstanding": e.outstanding,
    })
}

/// How a serving run ended.
pub struct Served {
    pub lun: u32,
    pub srbs: u64,
    pub seconds: f64,
    /// The LUN or the adapter went away (rather than Ctrl-C or `--seconds`).
    pub ended_by_driver: bool,
}

impl Served {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "lun": self.lun,
            "served": self.srbs,
            "seconds": self.seconds,
            "ended": if self.ended_by_driver { "session ended by the driver" } else { "stopped" },
        })
    }

    pub fn text(&self) -> String {
        format!(
            "LUN {}: {} SRBs served in {:.1} s; {}",
            self.lun,
            self.srbs,
            self.seconds,
            if self.ended_by_driver {
                "the driver ended the session (LUN or adapter removed)"
            } else {
                "stopped"
            }
        )
    }
}

/// FETCHes a server keeps outstanding: one being answered while the driver fills the next.
const FETCH_DEPTH: usize = 4;

/// Serves `lun` from memory, or from the file `file`, on a handle of its own until `stop`,
/// `seconds` or the session's end; shows progress on stderr once a second unless `quiet`.
pub fn serve<T: Transport>(
    transport: &T,
    lun: u32,
    file: Option<&std::path::Path>,
    seconds: Option<u64>,
    stop: &Arc<AtomicBool>,
    quiet: bool,
) -> anyhow::Result<Served> {
    let admin = Adapter::open(transport, std::process::id())?;
    let entry = admin
        .list_luns()?
        .into_iter()
        .find(|e| e.lun == lun)
        .with_context(|| format!("there is no LUN {lun}"))?;
    admin.close();
    match file {
        Some(path) => {
            let disk = FileDisk::open(path, entry.block_size, entry.block_count)
                .with_context(|| format!("cannot open {}", path.display()))?;
            serve_from(transport, &entry, disk, seconds, stop, quiet)
        }
        None => {
            let mib = entry.block_count * u64::from(entry.block_size) / (1024 * 1024);
            if mib > MAX_SERVED_MIB {
                bail!(
                    "LUN {lun} has {mib} MiB: serving from memory stops at {MAX_SERVED_MIB} MiB \
                     (use --file)"
                );
            }
            let disk = MemoryDisk::new(entry.block_size, entry.block_count);
            serve_from(transport, &entry, disk, seconds, stop, quiet)
        }
    }
}

fn serve_from<T: Transport>(
    transport: &T,
    entry: &LunEntry,
    mut disk: impl Backend,
    seconds: Option<u64>,
    stop: &Arc<AtomicBool>,
    quiet: bool,
) -> anyhow::Result<Served> {
    let lun = entry.lun;
    let handle = Adapter::open(transport, std::process::id())?;
    let mut session = Session::attach(&handle, lun, 8, FETCH_DEPTH)
        .with_context(|| format!("cannot serve LUN {lun}"))?;
    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs(s));
    let (mut srbs, mut shown, mut ended_by_driver) = (0u64, Instant::now(), false);
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        match session.step(entry.block_size, &mut disk, Duration::from_millis(100))? {
            Step::Served(n) => srbs += n as u64,
            Step::Idle => {}
            Step::Ended => {
                ended_by_driver = true;
                break;
            }
        }
        if !quiet && shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            eprint!(
                "\rserving LUN {lun}: {srbs} SRBs in {:.0} s ",
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    if !quiet {
        eprintln!();
    }
    session.stop();
    handle.close();
    Ok(Served {
        lun,
        srbs,
        seconds: started.elapsed().as_secs_f64(),
        ended_by_driver,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            size: 8 << 20,
            queue_depth: 32,
            block_size: 4096,
            serial: Some("SN-1".into()),
            read_only: false,
            write_cache: true,
            unmap: false,
        }
    }

    #[test]
    fn a_shape_becomes_a_valid_lun_create() {
        let spec = shape().spec().expect("valid");
        assert_eq!(spec.invalid_field(), None);
        assert_eq!(
            (spec.block_count, spec.flags),
            (2048, LunFlags::WRITE_CACHE)
        );
        assert_eq!(&spec.serial[..5], b"SN-1 ");
        let bad = |change: fn(&mut Shape)| {
            let mut s = shape();
            change(&mut s);
            s.spec().is_err()
        };
        assert!(bad(|s| s.block_size = 1024));
        assert!(bad(|s| s.size = 0));
        assert!(bad(|s| s.size = 4097));
        assert!(bad(|s| s.queue_depth = 251));
        assert_eq!(spec.queue_depth, 32);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(bad(|s| s.serial = Some("has space".into())));
        assert!(bad(|s| s.serial = Some("X".repeat(33))));
    }
}
