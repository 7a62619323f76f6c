//! The boot flow, from the loader's jump to "ready":
//! console and CPU tables first (so every fault is reported), then the
//! kernel's own address space, heap, ACPI and the timer.

use mantra_bootinfo::{BootInfo, MemoryKind};
use mantra_kernel::sync::Once;

use crate::arch::x86_64::{self as cpu_arch, apic, cpu, ioapic, layout, traps};
use crate::arch::{Arch, Machine};
use crate::memory;
use crate::{kerror, kinfo, kprintln, kwarn};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Facts from early boot that later stages (and the tests) read.
pub struct BootState {
    pub entry_tsc: u64,
    pub bootinfo_phys: u64,
    pub features: cpu::Features,
}

pub static STATE: Once<BootState> = Once::new();

/// The machine's TPM 2.0 as the ACPI TPM2 table describes it (`None`: no
/// TPM2 table, or an unusable one). Set once during boot, before init
/// starts; the userland TPM driver's MMIO region will be granted from it.
pub static TPM: Once<Option<mantra_kernel::acpi::Tpm2>> = Once::new();

/// Kernel entry from MantraBoot: interrupts off, the loader's page tables
/// (identity map of physical memory plus the kernel image) and boot stack.
#[no_mangle]
#[link_section = ".text.entry"]
pub extern "sysv64" fn _start(bootinfo_phys: u64) -> ! {
    let entry_tsc = Machine::timestamp();
    cpu_arch::init_console();
    kprintln!("MantraCore {VERSION} {} (board {})", Machine::NAME, mantra_config::BOARD);
    cpu_arch::init_cpu();
    let features = cpu_arch::enable_paging_features();

    // SAFETY: MantraBoot identity-maps all physical memory and passes the
    // BootInfo's physical address; from_ptr validates before trusting sizes.
    let info = match unsafe { BootInfo::from_ptr(bootinfo_phys as *const u8) } {
        Ok(info) => info,
        Err(e) => {
            kerror!("cannot read the loader's BootInfo at {bootinfo_phys:#x}: {e}");
            crate::fatal_stop();
        }
    };
    print_memory_summary(&info);
    STATE.call_once(|| BootState { entry_tsc, bootinfo_phys, features });

    let space = match memory::build_kernel_space(&info, &features) {
        Ok(space) => space,
        Err(e) => {
            kerror!("cannot build the kernel address space: {e}");
            crate::fatal_stop();
        }
    };
    // SAFETY: the new tables map the kernel image, the direct map and the
    // new stack (see memory::build_kernel_space); nothing on the old stack
    // is used after the switch.
    unsafe { cpu_arch::switch_to(space.root, space.stack_top, after_switch) }
}

/// Runs on the kernel's own page tables and guarded boot stack.
extern "C" fn after_switch() -> ! {
    let state = STATE.get().expect("boot state");
    memory::finish_after_switch();
    cpu_arch::enable_user_isolation(&state.features);
    let info = bootinfo();
    report_protections(&state.features);

    let cpus = init_acpi_and_timer(&info);
    crate::efirt::init();
    let (free, total) = memory::frame_counts();
    kprintln!(
        "free memory: {} KiB in {} free frames of {} ({} KiB heap)",
        free * 4,
        free,
        total,
        mantra_config::KERNEL_HEAP_KIB
    );
    let elapsed = Machine::timestamp().wrapping_sub(state.entry_tsc);
    kprintln!("MantraCore ready ({elapsed} tsc since kernel entry; {cpus} cpu(s))");

    #[cfg(feature = "ktest")]
    crate::ktest::run();

    #[cfg(not(feature = "ktest"))]
    {
        match crate::userboot::start_init() {
            Ok(_) => {}
            Err(crate::userboot::BootError::NoInit) => {
                kwarn!("no init in the boot filesystem: the kernel idles (build a product with services)")
            }
            Err(e) => kerror!("cannot start init: {e}"),
        }
        crate::sched::idle_loop()
    }
}

/// The BootInfo, read through the direct map (valid after the switch).
pub fn bootinfo() -> BootInfo<'static> {
    let phys = STATE.get().expect("boot state").bootinfo_phys;
    // SAFETY: BootInfo lives in BootData memory, never reclaimed, and the
    // direct map covers all physical memory; it was validated at entry.
    unsafe { BootInfo::from_ptr(memory::phys_to_virt(phys) as *const u8) }.expect("BootInfo validated at entry")
}

fn print_memory_summary(info: &BootInfo<'_>) {
    let mut usable = 0u64;
    let mut reclaimable = 0u64;
    let mut reserved = 0u64;
    let mut top = 0u64;
    for region in info.memory_map() {
        let bytes = region.pages * layout::PAGE_SIZE;
        match region.kind() {
            MemoryKind::Usable => usable += bytes,
            MemoryKind::Reclaimable => reclaimable += bytes,
            _ => reserved += bytes,
        }
        if matches!(region.kind(), MemoryKind::Usable | MemoryKind::Reclaimable | MemoryKind::Kernel | MemoryKind::BootData) {
            top = top.max(region.end());
        }
    }
    kprintln!(
        "memory: {} regions, {} MiB usable, {} MiB reclaimable after boot, {} MiB reserved/firmware, RAM up to {:#x}",
        info.memory_map().len(),
        usable >> 20,
        reclaimable >> 20,
        reserved >> 20,
        top
    );
}

fn report_protections(features: &cpu::Features) {
    let on = |b: bool| if b { "on" } else { "absent" };
    kinfo!(
        "protections: NX {}, SMEP {}, SMAP {}, UMIP {}, W^X kernel sections, guarded stacks",
        on(features.nx),
        on(features.smep),
        on(features.smap),
        on(features.umip)
    );
}

/// Parses the MADT, starts the LAPIC timer and waits for it to tick.
/// Returns the CPU count.
fn init_acpi_and_timer(info: &BootInfo<'_>) -> usize {
    let Some(rsdp) = info.rsdp() else {
        kerror!("the firmware gave no ACPI RSDP: cannot find CPUs or the interrupt controller");
        crate::fatal_stop();
    };
    let madt = match mantra_kernel::acpi::parse_madt(&memory::PhysReader, rsdp) {
        Ok(madt) => madt,
        Err(e) => {
            kerror!("{e}");
            crate::fatal_stop();
        }
    };
    let cpus = madt.cpus.len();
    apic::init(memory::phys_to_virt(madt.local_apic_address), traps::VECTOR_SPURIOUS, madt.has_8259);
    let apic_ids = madt.cpus.iter().map(|c| c.apic_id);
    kprintln!(
        "cpus: {} (boot cpu APIC id {}; APIC ids {:?}), {} I/O APIC(s){}",
        cpus,
        apic::id(),
        ApicIds(apic_ids),
        madt.io_apics.len(),
        madt.io_apics.first().map(|io| IoApicNote(io.address, io.gsi_base)).unwrap_or(IoApicNote(0, 0))
    );
    find_tpm(rsdp);
    ioapic::init(&madt, apic::id());
    let (chips, gsis) = ioapic::summary();
    kinfo!("interrupts: {chips} I/O APIC(s) serving {gsis} GSIs, all masked until bound");
    if cpus > mantra_config::MAX_CPUS as usize {
        kwarn!("{cpus} CPUs present, MAX_CPUS is {}: the rest stay offline", mantra_config::MAX_CPUS);
    }

    let Some((timer_rate, tsc_rate)) = apic::calibrate() else {
        kerror!("the PIT does not count: cannot calibrate the LAPIC timer");
        crate::fatal_stop();
    };
    let hz = mantra_config::TIMER_HZ as u64;
    crate::ipc::set_clock(STATE.get().map_or(0, |s| s.entry_tsc), tsc_rate);
    crate::sched::init(cpus);
    kinfo!("scheduler: {}", crate::sched::policy_name());
    cpu_arch::syscall::init();
    apic::start_periodic(traps::VECTOR_TIMER, timer_rate, hz);
    let start = cpu_arch::TICKS.load(core::sync::atomic::Ordering::Relaxed);
    while cpu_arch::TICKS.load(core::sync::atomic::Ordering::Relaxed) < start + 1 {
        Machine::wait_for_interrupt();
    }
    // Kernel code runs with interrupts masked; only halts open them.
    cpu_arch::cpu::disable_interrupts();
    kprintln!(
        "timer: LAPIC periodic at {hz} Hz ({} kHz LAPIC clock, TSC {} MHz), running: {} ticks",
        timer_rate / 1000,
        tsc_rate / 1_000_000,
        cpu_arch::TICKS.load(core::sync::atomic::Ordering::Relaxed)
    );
    cpu_arch::smp::set_ap_main(crate::sched::ap_main);
    cpu_arch::smp::start_aps(&madt);
    cpus
}

/// Records the TPM2 table's TPM in [`TPM`] and prints one `tpm:` line. A
/// corrupt table is reported and treated as no TPM: the kernel boots on.
fn find_tpm(rsdp: u64) {
    let tpm = match mantra_kernel::acpi::parse_tpm2(&memory::PhysReader, rsdp) {
        Ok(Some(tpm)) => {
            kprintln!("tpm: TPM 2.0 ({}, registers at {:#x})", tpm.interface, tpm.registers);
            Some(tpm)
        }
        Ok(None) => {
            kprintln!("tpm: none");
            None
        }
        Err(e) => {
            kwarn!("{e}");
            kprintln!("tpm: none (its ACPI table is unusable)");
            None
        }
    };
    TPM.call_once(|| tpm);
}

struct ApicIds<I>(I);

impl<I: Iterator<Item = u32> + Clone> core::fmt::Debug for ApicIds<I> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.0.clone()).finish()
    }
}

struct IoApicNote(u64, u32);

impl core::fmt::Display for IoApicNote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 != 0 {
            write!(f, " (first at {:#x}, GSI base {})", self.0, self.1)
        } else {
            Ok(())
        }
    }
}
