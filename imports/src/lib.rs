//! The kernel routines a Storport miniport calls, hand-written: the `raw-dylib` imports of
//! `ntoskrnl.exe` ([`ntoskrnl`]) and `storport.sys` ([`storport`]), and the `FORCEINLINE`
//! helpers of wdm.h and storport.h written out over them ([`inline`]:
//! `StorPortCompleteServiceIrp` = `StorPortExtendedFunction(7, ext, irp)`, `IoSetCancelRoutine`,
//! `RequestTimerCall`, …). revcall.sys and storsim's fixture drivers both use this one crate.
//!
//! The structures and constants these take come from `storport-abi` (shared with storsim); the
//! few that only the cancel-safe queue needs are in [`csq`]. Names keep their exact NT spelling
//! so they can be looked up in the DDI docs.
//!
//! The extern blocks are the union of what the drivers call, and that costs nothing: an import
//! lands in an image's import table only if the image calls it (`tests/pe_image.rs` checks
//! revcall.sys's, `fixtures/tests/imports.rs` the fixtures'). The imports and helpers exist only
//! for the driver target; on the host this crate is just the [`csq`] layouts.
#![no_std]

pub mod csq;
#[cfg(target_os = "windows")]
pub mod inline;
#[cfg(target_os = "windows")]
pub mod ntoskrnl;
#[cfg(target_os = "windows")]
pub mod storport;

/// What a driver's `#[panic_handler]` ends with: KeBugCheckEx(`code`, file name address, its
/// length, line, column), so `!analyze -v` and `da <P1> L<P2>` name the place. revcall.sys, the
/// stand-in storport.sys, revcall-client.sys and the fixtures each have their own code.
#[cfg(target_os = "windows")]
pub fn bug_check_on_panic(code: u32, info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line, column) = info
        .location()
        .map_or(("", 0, 0), |l| (l.file(), l.line(), l.column()));
    // SAFETY: KeBugCheckEx takes plain values and does not return.
    unsafe {
        ntoskrnl::KeBugCheckEx(
            code,
            file.as_ptr() as usize,
            file.len(),
            line as usize,
            column as usize,
        )
    }
}
