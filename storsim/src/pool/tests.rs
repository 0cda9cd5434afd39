//! Pool tests: layout, patterns, every error, classification, real faults (in a child process)
//! and a bounded-mapping torture run.

use std::process::Command;
use std::sync::OnceLock;

use super::*;

const TAG: u32 = u32::from_le_bytes(*b"Test");
const PAGE: usize = 4096;

/// Environment variable that turns a test binary run into a faulting child.
const CHILD_ENV: &str = "STORSIM_POOL_FAULT_CHILD";

/// Exit code of a child whose SIGSEGV handler saw the fault it expected.
const CHILD_OK: i32 = 42;

fn bytes<'a>(addr: *mut u8, len: usize) -> &'a [u8] {
    // SAFETY: tests pass a live block (or its own pattern areas) that nothing else writes.
    unsafe { std::slice::from_raw_parts(addr, len) }
}

fn poke(addr: usize, value: u8) {
    // SAFETY: tests poke read-write pages of a live block: the block, its slack or its
    // underrun area, all inside the block's mapping.
    unsafe { (addr as *mut u8).write_volatile(value) };
}

fn info(addr: *mut u8, size: usize, owner: Owner) -> BlockInfo {
    BlockInfo {
        addr: addr as usize,
        size,
        tag: TAG,
        owner,
    }
}

#[test]
fn alignment_and_size() {
    let pool = Pool::new();
    for size in [
        1,
        15,
        16,
        17,
        100,
        0xD0 + 3 * 0x48,
        4095,
        4096,
        4097,
        10_000,
    ] {
        let block = pool.allocate(size, TAG, Owner::Driver).unwrap();
        let addr = block as usize;
        assert_eq!(addr % ALIGN, 0, "size {size}");
        // The block ends within 15 bytes of the next page boundary: the guard page.
        assert_eq!(
            (addr + size).next_multiple_of(ALIGN) % PAGE,
            0,
            "size {size}"
        );
        assert_eq!(pool.block(addr), Some(info(block, size, Owner::Driver)));
        assert_eq!(
            pool.block(addr + size - 1),
            Some(info(block, size, Owner::Driver))
        );
        assert_eq!(pool.block(addr + size), None);
        assert_eq!(pool.block(addr - 1), None);
        pool.free(block, Some(TAG)).unwrap();
    }
}

#[test]
fn zero_size_is_rejected() {
    let pool = Pool::new();
    assert_eq!(
        pool.allocate(0, TAG, Owner::Driver),
        Err(PoolError::ZeroSize)
    );
    assert_eq!(
        pool.allocate_zeroed(0, TAG, Owner::Irp),
        Err(PoolError::ZeroSize)
    );
    assert_eq!(
        pool.allocate(usize::MAX - 3, TAG, Owner::Driver),
        Err(PoolError::Exhausted)
    );
}

#[test]
fn driver_blocks_are_filled_others_zeroed() {
    let pool = Pool::new();
    let driver = pool.allocate(100, TAG, Owner::Driver).unwrap();
    assert!(bytes(driver, 100).iter().all(|&b| b == FILL_BYTE));
    let zeroed = pool.allocate_zeroed(100, TAG, Owner::Driver).unwrap();
    assert!(bytes(zeroed, 100).iter().all(|&b| b == 0));
    let irp = pool.allocate(0x160, TAG, Owner::Irp).unwrap();
    assert!(bytes(irp, 0x160).iter().all(|&b| b == 0));
    let buffer = pool.allocate(33, TAG, Owner::SystemBuffer).unwrap();
    assert!(bytes(buffer, 33).iter().all(|&b| b == 0));
    // The patterns around a 17-byte block: 15 slack bytes, the rest of the page before it.
    let small = pool.allocate(17, TAG, Owner::Driver).unwrap();
    assert!(
        bytes(small.wrapping_add(17), 15)
            .iter()
            .all(|&b| b == GUARD_BYTE)
    );
    let under = (small as usize) % PAGE;
    assert_eq!(under, PAGE - 32);
    assert!(
        bytes(small.wrapping_sub(under), under)
            .iter()
            .all(|&b| b == GUARD_BYTE)
    );
    for block in [driver, zeroed, irp, buffer, small] {
        pool.free(block, None).unwrap();
    }
}

#[test]
fn recycled_mappings_are_refilled() {
    // No quarantine: each freed mapping becomes a spare and the next allocation reuses it.
    let pool = Pool::with_limits(
        Limits {
            quarantine_blocks: 0,
            quarantine_bytes: 0,
        },
        SpecialPool::Everything,
    );
    let first = pool.allocate(200, TAG, Owner::Irp).unwrap();
    for offset in 0..200 {
        poke(first as usize + offset, 0xEE);
    }
    pool.free(first, None).unwrap();
    assert_eq!(pool.table().spares(), 1);
    let irp = pool.allocate(200, TAG, Owner::Irp).unwrap();
    assert_eq!(irp, first, "the spare mapping is reused");
    assert_eq!(pool.table().spares(), 0);
    assert!(bytes(irp, 200).iter().all(|&b| b == 0));
    poke(irp as usize + 199, 0xEE);
    pool.free(irp, None).unwrap();
    let driver = pool.allocate(180, TAG, Owner::Driver).unwrap();
    assert!(bytes(driver, 180).iter().all(|&b| b == FILL_BYTE));
    pool.check(driver).unwrap();
    pool.free(driver, None).unwrap();
}

#[test]
fn driver_only_special_pool_recycles_storsims_blocks_at_once_and_traps_the_drivers() {
    let pool = Pool::with_limits(Limits::default(), SpecialPool::DriverOnly);
    let first = pool.allocate(200, TAG, Owner::Irp).unwrap();
    poke(first as usize + 199, 0xEE);
    pool.free(first, None).unwrap();
    let kept = {
        let table = pool.table();
        (table.quarantined(), table.spares())
    };
    assert_eq!(kept, (0, 1), "an IRP is recycled, not quarantined");
    assert_eq!(pool.classify(first as usize), None, "and stays read-write");
    let again = pool.allocate(200, TAG, Owner::SystemBuffer).unwrap();
    assert_eq!(
        again, first,
        "the next block of its size reuses the mapping"
    );
    assert!(bytes(again, 200).iter().all(|&b| b == 0), "zeroed again");
    poke(again as usize + 200, 0xEE);
    assert!(
        matches!(
            pool.free(again, None),
            Err(PoolError::Overrun { offset: 200, .. })
        ),
        "the pattern checks stay"
    );
    poke(again as usize + 200, GUARD_BYTE);
    pool.free(again, None).unwrap();
    let driver = pool.allocate(200, TAG, Owner::Driver).unwrap();
    pool.free(driver, None).unwrap();
    assert_eq!(
        pool.table().quarantined(),
        1,
        "the driver's block is quarantined"
    );
    assert!(matches!(
        pool.classify(driver as usize),
        Some(FaultClass::AfterFree { offset: 0, .. })
    ));
}

#[test]
fn a_block_recycled_at_once_checks_a_band_below_it_and_a_trapped_one_the_whole_page() {
    let pool = Pool::with_limits(Limits::default(), SpecialPool::DriverOnly);
    let irp = pool.allocate(64, TAG, Owner::Irp).unwrap();
    let edge = irp as usize - UNDERRUN_BAND;
    poke(edge, 0x11);
    assert_eq!(
        pool.check(irp),
        Err(PoolError::Underrun {
            block: info(irp, 64, Owner::Irp),
            offset: -(UNDERRUN_BAND as isize)
        }),
        "the band's far end is checked"
    );
    poke(edge, GUARD_BYTE);
    poke(edge - 1, 0x11);
    assert_eq!(pool.check(irp), Ok(()), "below the band is not the pool's");
    pool.free(irp, None).unwrap();
    let driver = pool.allocate(64, TAG, Owner::Driver).unwrap();
    let page_start = driver as usize & !(PAGE - 1);
    poke(page_start, 0x11);
    assert!(
        matches!(pool.free(driver, None), Err(PoolError::Underrun { .. })),
        "a trapped block's whole page is"
    );
    poke(page_start, GUARD_BYTE);
    pool.free(driver, None).unwrap();
}

#[test]
fn a_long_access_runs_pinned_and_leaves_no_pin_behind() {
    let pool = Pool::new();
    let block = pool.allocate(4096, TAG, Owner::SystemBuffer).unwrap() as usize;
    let payload: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    pool.write_bytes(block, &payload).unwrap();
    assert_eq!(pool.read_bytes(block, 4096).unwrap(), payload);
    assert_eq!(
        pool.read_bytes(block + 1, 4096),
        Err(PoolError::OutOfBlock {
            start: block + 1,
            end: block + 4097
        }),
        "checked before it is pinned"
    );
    // A pin left behind would make this free wait for ever.
    pool.free(block as *mut u8, None).unwrap();
}

#[test]
fn overrun_into_slack_is_reported() {
    let pool = Pool::new();
    let block = pool.allocate(17, TAG, Owner::Driver).unwrap();
    pool.check(block).unwrap();
    poke(block as usize + 17, 0);
    let expected = PoolError::Overrun {
        block: info(block, 17, Owner::Driver),
        offset: 17,
    };
    assert_eq!(pool.check(block), Err(expected.clone()));
    assert_eq!(pool.free(block, Some(TAG)), Err(expected.clone()));
    // The failed free left the block allocated.
    assert_eq!(
        pool.outstanding(Owner::Driver),
        vec![info(block, 17, Owner::Driver)]
    );
    // The first damaged byte is reported.
    poke(block as usize + 17, GUARD_BYTE);
    poke(block as usize + 30, 1);
    let last = PoolError::Overrun {
        block: info(block, 17, Owner::Driver),
        offset: 30,
    };
    assert_eq!(pool.free(block, None), Err(last));
    poke(block as usize + 30, GUARD_BYTE);
    pool.free(block, None).unwrap();
}

#[test]
fn underrun_is_reported() {
    let pool = Pool::new();
    let block = pool.allocate(64, TAG, Owner::Irp).unwrap();
    poke(block as usize - 1, 0x11);
    let near = PoolError::Underrun {
        block: info(block, 64, Owner::Irp),
        offset: -1,
    };
    assert_eq!(pool.check(block), Err(near.clone()));
    assert_eq!(pool.free(block, None), Err(near));
    poke(block as usize - 1, GUARD_BYTE);
    // Damage at the very start of the page is found too.
    let page_start = block as usize & !(PAGE - 1);
    poke(page_start, 0);
    let far = PoolError::Underrun {
        block: info(block, 64, Owner::Irp),
        offset: page_start as isize - block as isize,
    };
    assert_eq!(pool.check(block), Err(far.clone()));
    assert_eq!(
        far,
        PoolError::Underrun {
            block: info(block, 64, Owner::Irp),
            offset: -4032
        }
    );
    poke(page_start, GUARD_BYTE);
    pool.free(block, None).unwrap();
}

#[test]
fn double_free_is_reported() {
    let pool = Pool::new();
    let block = pool.allocate(40, TAG, Owner::Driver).unwrap();
    assert_eq!(
        pool.free(block, Some(TAG)),
        Ok(info(block, 40, Owner::Driver))
    );
    let addr = block as usize;
    assert_eq!(
        pool.free(block, Some(TAG)),
        Err(PoolError::DoubleFree { addr })
    );
    assert_eq!(pool.free(block, None), Err(PoolError::DoubleFree { addr }));
    assert_eq!(pool.check(block), Err(PoolError::NotAllocated { addr }));
}

#[test]
fn bad_addresses_are_not_allocated() {
    let pool = Pool::new();
    let block = pool.allocate(48, TAG, Owner::Driver).unwrap();
    let interior = block.wrapping_add(16);
    let addr = interior as usize;
    assert_eq!(
        pool.free(interior, None),
        Err(PoolError::NotAllocated { addr })
    );
    let mut local = 0u8;
    let stack = &raw mut local;
    let addr = stack as usize;
    assert_eq!(
        pool.free(stack, None),
        Err(PoolError::NotAllocated { addr })
    );
    assert_eq!(
        pool.free(std::ptr::null_mut(), None),
        Err(PoolError::NotAllocated { addr: 0 })
    );
    assert_eq!(
        pool.check(interior),
        Err(PoolError::NotAllocated {
            addr: interior as usize
        })
    );
    pool.free(block, None).unwrap();
}

#[test]
fn tag_mismatch_is_reported() {
    let pool = Pool::new();
    let block = pool.allocate(24, TAG, Owner::Driver).unwrap();
    let wrong = u32::from_le_bytes(*b"Oops");
    let error = PoolError::TagMismatch {
        addr: block as usize,
        expected: TAG,
        actual: wrong,
    };
    assert_eq!(pool.free(block, Some(wrong)), Err(error));
    assert_eq!(
        pool.free(block, Some(TAG)),
        Ok(info(block, 24, Owner::Driver))
    );
}

#[test]
fn outstanding_lists_live_blocks_by_owner() {
    let pool = Pool::new();
    let d1 = pool.allocate(10, TAG, Owner::Driver).unwrap();
    let d2 = pool.allocate(20, TAG, Owner::Driver).unwrap();
    let d3 = pool.allocate(30, TAG, Owner::Driver).unwrap();
    let irp = pool.allocate(0xD0, TAG, Owner::Irp).unwrap();
    let buffer = pool.allocate(8, TAG, Owner::SystemBuffer).unwrap();
    pool.free(d2, None).unwrap();
    let mut drivers = vec![info(d1, 10, Owner::Driver), info(d3, 30, Owner::Driver)];
    drivers.sort_by_key(|block| block.addr);
    assert_eq!(pool.outstanding(Owner::Driver), drivers);
    assert_eq!(
        pool.outstanding(Owner::Irp),
        vec![info(irp, 0xD0, Owner::Irp)]
    );
    assert_eq!(
        pool.outstanding(Owner::SystemBuffer),
        vec![info(buffer, 8, Owner::SystemBuffer)]
    );
    for block in [d1, d3, irp, buffer] {
        pool.free(block, None).unwrap();
    }
    for owner in [Owner::Driver, Owner::Irp, Owner::SystemBuffer] {
        assert_eq!(pool.outstanding(owner), vec![]);
    }
}

#[test]
fn classify_explains_pool_faults() {
    let pool = Pool::new();
    let block = pool.allocate(100, TAG, Owner::Driver).unwrap();
    let addr = block as usize;
    let guard = (addr + 100).next_multiple_of(PAGE);
    let blk = info(block, 100, Owner::Driver);
    assert_eq!(guard - addr, 112);
    assert_eq!(
        pool.classify(guard),
        Some(FaultClass::Overrun {
            block: blk.clone(),
            offset: 112
        })
    );
    assert_eq!(
        pool.classify(guard + PAGE - 1),
        Some(FaultClass::Overrun {
            block: blk.clone(),
            offset: 112 + PAGE - 1
        })
    );
    // Read-write pages of a live block and unrelated memory are not the pool's faults.
    assert_eq!(pool.classify(addr), None);
    assert_eq!(pool.classify(&raw const pool as usize), None);
    pool.free(block, None).unwrap();
    assert_eq!(
        pool.classify(addr + 8),
        Some(FaultClass::AfterFree {
            block: blk.clone(),
            offset: 8
        })
    );
    let below = addr - 1;
    assert_eq!(
        pool.classify(below),
        Some(FaultClass::AfterFree {
            block: blk.clone(),
            offset: usize::MAX
        })
    );
    assert_eq!(
        pool.classify(guard),
        Some(FaultClass::AfterFree {
            block: blk,
            offset: 112
        })
    );
}

#[test]
fn classify_reports_underrun_below_a_mapping() {
    let pool = Pool::new();
    let block = pool.allocate(PAGE, TAG, Owner::Irp).unwrap();
    let addr = block as usize;
    assert_eq!(addr % PAGE, 0, "a page-sized block has no underrun area");
    // The page below belongs to no pool block (unless another one sits there).
    if pool.table().containing(addr - 1).is_none() {
        let expected = FaultClass::Underrun {
            block: info(block, PAGE, Owner::Irp),
            offset: -1,
        };
        assert_eq!(pool.classify(addr - 1), Some(expected));
    }
    pool.free(block, None).unwrap();
}

#[test]
fn quarantine_is_bounded() {
    let limits = Limits {
        quarantine_blocks: 100,
        quarantine_bytes: 64 << 20,
    };
    let pool = Pool::with_limits(limits, SpecialPool::Everything);
    // Enough that the quarantine evicts more than the spare list keeps.
    let count = limits.quarantine_blocks + SPARE_BLOCKS + 100;
    let blocks: Vec<_> = (0..count)
        .map(|_| pool.allocate(50, TAG, Owner::Driver).unwrap())
        .collect();
    for &block in &blocks {
        pool.free(block, None).unwrap();
    }
    assert_eq!(pool.table().quarantined(), 100);
    assert_eq!(pool.table().spares(), SPARE_BLOCKS);
    // The newest 100 are still caught; the oldest are forgotten.
    let newest = blocks[count - 1];
    let addr = newest as usize;
    assert_eq!(pool.free(newest, None), Err(PoolError::DoubleFree { addr }));
    assert!(matches!(
        pool.classify(addr),
        Some(FaultClass::AfterFree { .. })
    ));
    // A byte budget bounds big blocks as well: 3 × 4 MiB exceed 10 MiB.
    let pool = Pool::with_limits(
        Limits {
            quarantine_blocks: 100,
            quarantine_bytes: 10 << 20,
        },
        SpecialPool::Everything,
    );
    for _ in 0..3 {
        let big = pool.allocate(4 << 20, TAG, Owner::SystemBuffer).unwrap();
        pool.free(big, None).unwrap();
    }
    assert_eq!(pool.table().quarantined(), 2);
    assert_eq!(pool.table().spares(), 0, "big mappings are not kept");
}

#[test]
fn check_racing_free_is_safe() {
    let pool = Pool::new();
    for _ in 0..200 {
        let block = pool.allocate(0x160, TAG, Owner::Irp).unwrap();
        let addr = block as usize;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // `free` waits for a running `check`, which never reads a no-access page.
                while let Ok(()) = pool.check(addr as *mut u8) {}
                assert_eq!(
                    pool.check(addr as *mut u8),
                    Err(PoolError::NotAllocated { addr })
                );
            });
            pool.free(addr as *mut u8, Some(TAG)).unwrap();
        });
    }
}

#[test]
fn pool_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
}

/// The `/proc/self/maps` entries that overlap `range`.
fn maps_within(range: std::ops::Range<usize>) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| {
            let (start, end) = line.split_once(' ').unwrap().0.split_once('-').unwrap();
            let start = usize::from_str_radix(start, 16).unwrap();
            let end = usize::from_str_radix(end, 16).unwrap();
            start < range.end && range.start < end
        })
        .count()
}

#[test]
fn a_block_is_two_mappings_whether_live_or_quarantined() {
    // A block's data and guard pages never merge, with each other or with a neighbour's: each
    // allocate and free then flips one whole VMA, at a cost no other block's layout changes.
    let pool = Pool::new();
    let page = page_size();
    let blocks: Vec<*mut u8> = (0..8)
        .map(|_| pool.allocate(100, TAG, Owner::Irp).unwrap())
        .collect();
    let span = |block: *mut u8| {
        let base = block as usize & !(page - 1);
        base..base + 2 * page
    };
    for &block in &blocks {
        assert_eq!(maps_within(span(block)), 2, "a live block");
    }
    for &block in &blocks {
        pool.free(block, None).unwrap();
    }
    for &block in &blocks {
        assert_eq!(maps_within(span(block)), 2, "a quarantined block");
    }
}

fn maps_lines() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Set in a child that runs one test alone.
const ALONE_ENV: &str = "STORSIM_POOL_ALONE";

/// Runs `body` in a process of its own (the test binary again, with only `test`): what it
/// measures of the process — its mappings — is then not moved by tests running beside it.
fn alone(test: &str, body: impl FnOnce()) {
    if std::env::var_os(ALONE_ENV).is_some() {
        return body();
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ALONE_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test} did not pass in its own process: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn concurrent_churn_keeps_mappings_bounded() {
    alone(
        "pool::tests::concurrent_churn_keeps_mappings_bounded",
        churn_keeps_mappings_bounded,
    );
}

fn churn_keeps_mappings_bounded() {
    const THREADS: usize = 8;
    const CYCLES: usize = 10_000;
    // Slack for the runtime's own mappings (the test runs alone in its process).
    const OTHERS: usize = 2048;
    let pool = Pool::new();
    let before = maps_lines();
    let peak = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (pool, peak) = (&pool, &peak);
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(thread as u64);
                let owners = [Owner::Driver, Owner::Irp, Owner::SystemBuffer];
                for cycle in 0..CYCLES {
                    // Mostly one-page blocks, some up to three pages (mixed spare sizes).
                    let size = if rng.u8(..) < 16 {
                        rng.usize(1..12_000)
                    } else {
                        rng.usize(1..4000)
                    };
                    let owner = owners[rng.usize(..3)];
                    let tag = thread as u32;
                    let block = pool.allocate(size, tag, owner).unwrap();
                    poke(block as usize, 1);
                    poke(block as usize + size - 1, 2);
                    pool.check(block).unwrap();
                    assert_eq!(pool.free(block, Some(tag)).unwrap().size, size);
                    if thread == 0 && cycle % 2500 == 2499 {
                        peak.fetch_max(maps_lines(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    for owner in [Owner::Driver, Owner::Irp, Owner::SystemBuffer] {
        assert_eq!(pool.outstanding(owner), vec![]);
    }
    let limits = Limits::default();
    assert_eq!(pool.table().quarantined(), limits.quarantine_blocks);
    // Two VMAs per live, quarantined or spare mapping, plus slack for the thread stacks.
    let bound = before + 2 * (THREADS + limits.quarantine_blocks + SPARE_BLOCKS) + OTHERS;
    let peak = peak.into_inner().max(maps_lines());
    assert!(
        peak < bound,
        "{peak} lines in /proc/self/maps, bound {bound}"
    );
    // Without the bound the 80,000 freed blocks would need at least that many mappings.
    assert!(bound < THREADS * CYCLES);
    drop(pool);
    assert!(maps_lines() < before + OTHERS);
}

// --- Real faults, in a child process (a SIGSEGV would kill the test harness) ---

/// The pool the child's SIGSEGV handler asks.
static CHILD_POOL: OnceLock<Pool> = OnceLock::new();

/// What the child's handler expects `classify` to say: 0 overrun, 1 after free; and the offset.
static EXPECT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static EXPECT_OFFSET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_segv(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    // SAFETY: for SIGSEGV the kernel fills in the fault address `si_addr` reads.
    let addr = unsafe { info.si_addr() } as usize;
    let offset = EXPECT_OFFSET.load(std::sync::atomic::Ordering::Relaxed);
    let class = CHILD_POOL.get().and_then(|pool| pool.classify(addr));
    let ok = match (EXPECT.load(std::sync::atomic::Ordering::Relaxed), class) {
        (0, Some(FaultClass::Overrun { offset: got, .. })) => got == offset,
        (1, Some(FaultClass::AfterFree { offset: got, .. })) => got == offset,
        _ => false,
    };
    let marker: &[u8] = if ok {
        b"pool-fault-classified\n"
    } else {
        b"pool-fault-misclassified\n"
    };
    // SAFETY: `write` is async-signal-safe and reads `marker.len()` bytes of a live slice.
    unsafe { libc::write(2, marker.as_ptr().cast(), marker.len()) };
    // SAFETY: `_exit` is async-signal-safe and ends the process without unwinding.
    unsafe { libc::_exit(if ok { CHILD_OK } else { 1 }) };
}

fn install_child_handler() {
    // SAFETY: an all-zero `sigaction` is a valid "no flags, empty mask" value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_segv as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler that only calls async-signal-safe code and never returns.
    let rc = unsafe { libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
}

/// In the child: touches pool memory it must not; the handler exits with [`CHILD_OK`].
fn fault_child(mode: &str) {
    install_child_handler();
    let pool = CHILD_POOL.get_or_init(Pool::new);
    let block = pool.allocate(100, TAG, Owner::Irp).unwrap();
    let target = match mode {
        "guard" => {
            EXPECT_OFFSET.store(112, std::sync::atomic::Ordering::Relaxed);
            block as usize + 112
        }
        _ => {
            EXPECT.store(1, std::sync::atomic::Ordering::Relaxed);
            EXPECT_OFFSET.store(8, std::sync::atomic::Ordering::Relaxed);
            pool.free(block, None).unwrap();
            block as usize + 8
        }
    };
    poke(target, 7);
    // Not reached when the page is no-access.
    std::process::exit(3);
}

/// Runs `test` again in a child with [`CHILD_ENV`] set to `mode` and expects [`CHILD_OK`].
fn expect_child_fault(test: &str, mode: &str) {
    if let Ok(child_mode) = std::env::var(CHILD_ENV) {
        fault_child(&child_mode);
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(CHILD_OK),
        "child stderr: {stderr}"
    );
    assert!(
        stderr.contains("pool-fault-classified"),
        "child stderr: {stderr}"
    );
}

#[test]
fn touching_the_guard_page_faults() {
    expect_child_fault("pool::tests::touching_the_guard_page_faults", "guard");
}

#[test]
fn touching_a_freed_block_faults() {
    expect_child_fault("pool::tests::touching_a_freed_block_faults", "freed");
}
