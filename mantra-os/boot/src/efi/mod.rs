//! The UEFI application: entry point and the order of the boot steps.

#[macro_use]
mod console;
mod ab;
mod fail;
mod files;
mod flash;
mod handoff;
mod kernel;
mod measure;
mod platform;
mod uart;
mod verify;

use alloc::vec::Vec;
use fail::Fatal;
use mantra_boot::{layout, memmap};
use mantra_bootinfo::bootfs::BootFs;
use mantra_bootinfo::{KernelSegment, MemoryKind};
use uefi::boot::MemoryType;
use uefi::mem::memory_map::MemoryMap;
use uefi::prelude::*;

/// What the slot paths are called in messages.
const KERNEL_PATH: &str = "\\MANTRA\\KERNEL.ELF";
const BOOTFS_PATH: &str = "\\MANTRA\\BOOTFS.IMG";
const CMDLINE_PATH: &str = "\\MANTRA\\CMDLINE.TXT";
/// Hint for anything wrong with what `./mantra build` put on the ESP.
const REBUILD: &str = "rebuild with ./mantra build";
/// Extra memory-map entries the BootInfo buffer leaves room for: the map
/// grows between our sizing and ExitBootServices (our own allocations, the
/// final map's buffer, firmware splits).
const MAP_HEADROOM: usize = 64;

#[entry]
fn main() -> Status {
    platform::record_start();
    say!("MantraBoot {} (board {})", env!("CARGO_PKG_VERSION"), mantra_config::BOARD);
    match run() {
        Ok(never) => match never {},
        Err(fatal) => fail::halt_with(&fatal),
    }
}

fn run() -> Result<core::convert::Infallible, Fatal> {
    // 1. A/B: every slot's signed manifest, then its files, each checked
    //    against it (size, SHA-256) as soon as it is read, before any byte
    //    of it is parsed; the state machine picks the slot to boot and
    //    records it (UEFI variables, TPM NV index) before anything of it runs.
    //    The file system handles are closed before ExitBootServices.
    //    Flash mode first when asked for (MantraFlashMode, or MANTRA-FLASH
    //    on the console), and whenever no slot can boot.
    let clock = uart::Clock::calibrate();
    let mut request = flash::requested(&clock)?;
    let chosen = loop {
        if let Some(why) = request.take() {
            flash::run(why, uart::Clock::calibrate())?;
        }
        match ab::choose()? {
            ab::Choice::Boot(image) => break image,
            ab::Choice::Nothing(fatal) => {
                say!("MantraBoot: error: {}; {}", fatal.what, fatal.hint);
                request = Some(flash::Why::NothingBootable);
            }
        }
    };
    let (kernel_file, bootfs, cmdline, event_log) = {
        let ab::SlotImage { image, kernel: kernel_file, bootfs, cmdline: cmdline_file } = chosen;
        image.report();

        // 1b. Measured boot: the verified manifest and files into the TPM
        //     (PCR 8 and 9), if the firmware offers EFI_TCG2_PROTOCOL.
        let mut loaded = alloc::vec![
            measure::Loaded { path: "MANTRA/KERNEL.ELF", bytes: &kernel_file },
            measure::Loaded { path: "MANTRA/BOOTFS.IMG", bytes: bootfs.bytes() },
        ];
        if let Some(bytes) = cmdline_file.as_deref() {
            loaded.push(measure::Loaded { path: "MANTRA/CMDLINE.TXT", bytes });
        }
        //     The event log (the firmware's and these events) goes to the kernel.
        let event_log = measure::measure(image.verified.manifest_body, &image.verified.manifest, &loaded)?;
        drop(loaded);

        let cmdline = match cmdline_file {
            Some(bytes) => {
                let text = core::str::from_utf8(&bytes).map_err(|e| {
                    Fatal::new(alloc::format!("{CMDLINE_PATH} is not UTF-8 ({e})"), "save it as UTF-8 or delete it")
                })?;
                // A BOM or a trailing newline from an editor is not part of it.
                Vec::from(text.trim_start_matches('\u{feff}').trim().as_bytes())
            }
            None => Vec::from(mantra_config::BOOT_CMDLINE.as_bytes()),
        };
        (kernel_file, bootfs, cmdline, event_log)
    };

    // 2. Everything is checked before anything is loaded.
    let elf = kernel::check(&kernel_file)?;
    let bootfs_files = BootFs::parse(bootfs.bytes())
        .map_err(|e| Fatal::new(alloc::format!("boot filesystem {BOOTFS_PATH} is invalid: {e}"), REBUILD))?
        .len();

    // 3. Kernel segments, boot stack, platform facts.
    let loaded = kernel::load(&elf)?;
    let stack_size = mantra_config::BOOT_STACK_KIB.max(16) as u64 * 1024;
    let stack = platform::allocate(stack_size, "boot stack")?;
    let framebuffer = platform::framebuffer();
    let rsdp = platform::rsdp();
    let nx = platform::nx_supported();

    // 4. Page tables: identity map of all physical memory plus the kernel.
    let map = uefi::boot::memory_map(MemoryType::LOADER_DATA).map_err(|e| {
        Fatal::new(alloc::format!("cannot read the UEFI memory map: {e}"), "report this firmware problem")
    })?;
    let mut highest = framebuffer.base.saturating_add(framebuffer.size);
    let (mut ram_pages, mut free_pages) = (0u64, 0u64);
    for d in map.entries() {
        highest = highest.max(d.phys_start.saturating_add(d.page_count.saturating_mul(4096)));
        let kind = memmap::kind_of(d.ty.0);
        if !matches!(kind, MemoryKind::Mmio | MemoryKind::Reserved | MemoryKind::Unusable) {
            ram_pages += d.page_count;
        }
        if kind == MemoryKind::Usable {
            free_pages += d.page_count;
        }
    }
    let map_entries = map.len();
    drop(map);
    let identity_end =
        layout::identity_end(highest).map_err(|e| Fatal::new(alloc::format!("{e}"), "boot with less memory"))?;
    let segments: Vec<KernelSegment> = loaded.segments.iter().map(|s| s.bootinfo()).collect();
    let page_table = handoff::build_page_tables(identity_end, &loaded, nx)?;

    // 5. Buffers the hand-over fills after ExitBootServices.
    let capacity = map_entries + MAP_HEADROOM;
    let event_log_room = event_log.as_ref().map_or(0, measure::EventLog::capacity);
    let buffers = handoff::Buffers::allocate(capacity, segments.len(), cmdline.len(), event_log_room)?;

    say!(
        "MantraBoot: kernel {} segments, entry {:#x}, {} KiB; BootInfo version {}",
        loaded.segments.len(),
        loaded.entry,
        loaded.segments.iter().map(|s| s.pages).sum::<u64>() * 4,
        mantra_bootinfo::VERSION
    );
    say!(
        "MantraBoot: memory {} MiB, {} MiB free; identity map {} GiB ({} table frames, NX {}); bootfs {} files ({} bytes); framebuffer {}; ACPI RSDP {:#x}",
        ram_pages / 256,
        free_pages / 256,
        identity_end >> 30,
        page_table.frames_used,
        if nx { "on" } else { "off" },
        bootfs_files,
        bootfs.len,
        platform::describe_framebuffer(&framebuffer),
        rsdp
    );

    handoff::enter_kernel(handoff::Handoff {
        entry: loaded.entry,
        page_table: page_table.root,
        nx,
        stack_base: stack,
        stack_size,
        bootfs_addr: bootfs.addr,
        bootfs_size: bootfs.len as u64,
        framebuffer,
        rsdp,
        segments,
        cmdline,
        event_log,
        buffers,
    })
}
