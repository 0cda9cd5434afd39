//! The byte patterns around and inside a block, and the check that finds them damaged.

use super::region::Region;
use super::{ALIGN, BlockInfo, PoolError, SpecialPool};

/// Initial contents of driver blocks from [`Pool::allocate`](super::Pool::allocate): as a
/// pointer it is non-canonical, as an integer negative, so reliance on zeroed pool shows.
pub const FILL_BYTE: u8 = 0xCD;

/// Contents of the underrun area and the slack; any other value there is corruption.
pub const GUARD_BYTE: u8 = 0xFD;

/// Checks the slack (first) and the underrun area of the block `info` in `region`, as `special`
/// laid them out ([`SpecialPool::underrun_area`]).
///
/// # Safety
///
/// The block's data pages must stay mapped and readable during the call: the caller holds the
/// table lock, has pinned the block or has moved it to `Freeing`.
pub(super) unsafe fn verify(
    info: &BlockInfo,
    region: Region,
    special: SpecialPool,
) -> Result<(), PoolError> {
    let under = special.underrun_area(info.owner, region, info.addr);
    let end = info.addr + info.size;
    let slack_end = info.addr + info.size.next_multiple_of(ALIGN);
    // SAFETY: the slack lies in the data pages, readable per this function's requirements.
    let slack = unsafe { region.bytes(end..slack_end) };
    if let Some(index) = slack.iter().position(|&byte| byte != GUARD_BYTE) {
        let offset = info.size + index;
        return Err(PoolError::Overrun {
            block: info.clone(),
            offset,
        });
    }
    // SAFETY: the underrun area lies in the data pages below the block, readable per this
    // function's requirements.
    let under = unsafe { region.bytes(under) };
    if damaged(under)
        && let Some(index) = under.iter().rposition(|&byte| byte != GUARD_BYTE)
    {
        // `under` is shorter than a page, so the cast is exact.
        let offset = -((under.len() - index) as isize);
        return Err(PoolError::Underrun {
            block: info.clone(),
            offset,
        });
    }
    Ok(())
}

/// Whether any byte differs from [`GUARD_BYTE`]. A branch-free reduction the compiler
/// vectorizes: a trapped block's underrun area is most of a page for small blocks and is
/// scanned on every free, and damage is rare.
fn damaged(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(0, |damage, &byte| damage | (byte ^ GUARD_BYTE))
        != 0
}
