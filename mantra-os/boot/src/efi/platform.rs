//! Facts about the machine: framebuffer, ACPI, CPU features, allocations.

use alloc::format;
use alloc::string::String;
use mantra_boot::memmap::BOOT_DATA_MEMORY_TYPE;
use mantra_bootinfo::{Framebuffer, PixelFormat};
use uefi::boot::{self, AllocateType, MemoryType, OpenProtocolAttributes, OpenProtocolParams};
use uefi::proto::console::gop::{self, GraphicsOutput};
use uefi::table::cfg::{ACPI2_GUID, ACPI_GUID};

use super::fail::Fatal;

/// Allocates `bytes` (rounded up to pages) of boot data for the kernel;
/// returns the physical address.
pub fn allocate(bytes: u64, what: &str) -> Result<u64, Fatal> {
    let pages = bytes.div_ceil(4096).max(1) as usize;
    let ptr = boot::allocate_pages(AllocateType::AnyPages, MemoryType::custom(BOOT_DATA_MEMORY_TYPE), pages).map_err(
        |e| {
            Fatal::new(
                format!("cannot allocate {pages} pages for the {what}: {}", e.status()),
                "give the machine more memory",
            )
        },
    )?;
    // SAFETY: a fresh allocation of `pages` pages, identity mapped.
    unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, pages * 4096) };
    Ok(ptr.as_ptr() as u64)
}

/// The GOP framebuffer of the current mode, or `Framebuffer::NONE`.
pub fn framebuffer() -> Framebuffer {
    let Ok(handle) = boot::get_handle_for_protocol::<GraphicsOutput>() else {
        return Framebuffer::NONE;
    };
    // Not exclusive: an exclusive open would disconnect the firmware's
    // graphics console.
    // SAFETY: the protocol is only read here and the scoped handle is
    // dropped at the end of this function, before ExitBootServices.
    let gop = unsafe {
        boot::open_protocol::<GraphicsOutput>(
            OpenProtocolParams { handle, agent: boot::image_handle(), controller: None },
            OpenProtocolAttributes::GetProtocol,
        )
    };
    let Ok(mut gop) = gop else {
        return Framebuffer::NONE;
    };
    let info = gop.current_mode_info();
    let format = match info.pixel_format() {
        gop::PixelFormat::Rgb => PixelFormat::Rgb,
        gop::PixelFormat::Bgr => PixelFormat::Bgr,
        gop::PixelFormat::Bitmask => PixelFormat::Bitmask,
        gop::PixelFormat::BltOnly => return Framebuffer::NONE,
    };
    let (width, height) = info.resolution();
    let mut fb = gop.frame_buffer();
    Framebuffer {
        base: fb.as_mut_ptr() as u64,
        size: fb.size() as u64,
        width: width as u32,
        height: height as u32,
        stride: info.stride() as u32,
        format: format as u32,
    }
}

pub fn describe_framebuffer(fb: &Framebuffer) -> String {
    if fb.format == PixelFormat::None as u32 {
        String::from("none")
    } else {
        format!("{}x{} at {:#x}", fb.width, fb.height, fb.base)
    }
}

/// Physical address of the ACPI RSDP: the ACPI 2.0 table first, then 1.0;
/// 0 when the firmware has neither.
pub fn rsdp() -> u64 {
    uefi::system::with_config_table(|tables| {
        [ACPI2_GUID, ACPI_GUID]
            .iter()
            .find_map(|guid| tables.iter().find(|t| t.guid == *guid))
            .map_or(0, |t| t.address as u64)
    })
}

/// Whether the CPU supports no-execute pages (CPUID 0x8000_0001 EDX bit 20).
pub fn nx_supported() -> bool {
    use core::arch::x86_64::__cpuid;
    // CPUID is available on every x86-64 CPU.
    let max_extended = __cpuid(0x8000_0000).eax;
    max_extended >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 20) != 0
}

static START_TSC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Remembers the TSC at MantraBoot's entry.
pub fn record_start() {
    START_TSC.store(rdtsc(), core::sync::atomic::Ordering::Relaxed);
}

/// TSC ticks since [`record_start`] (guest instructions under `-icount shift=0`).
pub fn tsc_since_start() -> u64 {
    rdtsc().wrapping_sub(START_TSC.load(core::sync::atomic::Ordering::Relaxed))
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads a counter (CR4.TSD is clear in UEFI).
    unsafe { core::arch::x86_64::_rdtsc() }
}
