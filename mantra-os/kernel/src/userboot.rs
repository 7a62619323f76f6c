//! Starts MantraInit, the only process the kernel creates: loads `init`
//! from the boot filesystem, hands it its root capabilities through a
//! bootstrap channel (the startup-message format of /work/contract:
//! `MANTRA-STARTUP 1` then `handle <name>` lines) and starts its thread.
//! Besides the roots every boot has, init gets `console` (the console
//! object), `eventlog` (a read-only memory object holding the TCG event log
//! MantraBoot handed over, when there is one) and `tpm` (a device-memory
//! object over a TIS/FIFO TPM's register window, when the ACPI TPM2 table
//! describes one).
//! Everything else in user space is created by init.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use mantra_abi::{map, rights, Error};
use mantra_bootinfo::bootfs::BootFs;
use mantra_kernel::cap::Capability;
use mantra_kernel::vmo::PAGE_SIZE;

use crate::interrupt::Resource;
use crate::ipc::{Endpoint, Message};
use crate::klog::Log;
use crate::memory;
use crate::object::{next_koid, Object};
use crate::space::Vmo;
use crate::task::{Process, Thread};

/// Where init's stack ends (top of the lower half, below a guard gap).
const STACK_TOP: u64 = 0x0000_7FFF_FFF0_0000;
const STACK_SIZE: u64 = 256 * 1024;

#[derive(Debug)]
pub enum BootError {
    NoBootFs,
    BadBootFs(mantra_bootinfo::bootfs::Error),
    NoInit,
    BadInit(mantra_elf::Error),
    Kernel(&'static str, Error),
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::NoBootFs => write!(f, "the loader passed no boot filesystem"),
            BootError::BadBootFs(e) => write!(f, "{e}"),
            BootError::NoInit => write!(f, "the boot filesystem has no `init` program (is the product's init built? ./mantra build)"),
            BootError::BadInit(e) => write!(f, "init is not a loadable x86_64 program: {e}"),
            BootError::Kernel(what, e) => write!(f, "{what}: {}", e.name()),
        }
    }
}

fn step<T>(what: &'static str, r: Result<T, Error>) -> Result<T, BootError> {
    r.map_err(|e| BootError::Kernel(what, e))
}

/// The boot filesystem's bytes, through the direct map.
fn bootfs_bytes() -> Result<&'static [u8], BootError> {
    let (addr, size) = crate::boot::bootinfo().bootfs().ok_or(BootError::NoBootFs)?;
    // SAFETY: the boot filesystem lives in BootData memory the kernel never
    // frees or writes; the direct map covers it.
    Ok(unsafe { core::slice::from_raw_parts(memory::phys_to_virt(addr) as *const u8, size as usize) })
}

/// Maps one ELF segment of a program into `process` (copying its bytes).
fn load_segment(process: &Process, header: &mantra_elf::ProgramHeader, data: &[u8]) -> Result<(), BootError> {
    let start = header.vaddr & !(PAGE_SIZE - 1);
    let lead = header.vaddr - start;
    let len = lead + header.memsz;
    let vmo = step("segment memory", Vmo::new(len))?;
    step("segment copy", vmo.write(lead, data))?;
    let mut flags = map::READ;
    if header.is_writable() {
        flags |= map::WRITE;
    }
    if header.is_executable() {
        flags |= map::EXECUTE;
    }
    step("segment map", process.space().map(vmo, 0, len, flags, flags, Some(start)).map(|_| ()))
}

/// The event log MantraBoot handed over, copied into a memory object that
/// init gets without WRITE (read-only for everyone it is passed to).
fn event_log_object() -> Result<Option<Arc<Vmo>>, BootError> {
    let log = crate::boot::bootinfo().event_log();
    if log.is_empty() {
        crate::kprintln!("eventlog: none (no TPM, or MantraBoot could not copy it)");
        return Ok(None);
    }
    let vmo = step("event log object", Vmo::new(log.len() as u64))?;
    step("event log copy", vmo.write(0, log))?;
    crate::kprintln!("eventlog: {} bytes", log.len());
    Ok(Some(vmo))
}

/// A device-memory object over the TPM's registers: a TIS/FIFO TPM's five
/// localities, when that window is not RAM by the memory map.
fn tpm_object() -> Option<Arc<Vmo>> {
    use mantra_bootinfo::MemoryKind;
    use mantra_kernel::acpi::{TpmInterface, TPM_FIFO_WINDOW};
    let tpm = (*crate::boot::TPM.get()?)?;
    if tpm.interface != TpmInterface::Fifo {
        crate::kprintln!("tpm: no userland driver for the {} interface: no `tpm` handle", tpm.interface);
        return None;
    }
    let (start, end) = (tpm.registers, tpm.registers.checked_add(TPM_FIFO_WINDOW)?);
    let ram = crate::boot::bootinfo().memory_map().iter().any(|r| {
        r.start < end && start < r.end() && !matches!(r.kind(), MemoryKind::Mmio | MemoryKind::Reserved)
    });
    if ram || start % PAGE_SIZE != 0 {
        crate::kwarn!("tpm: registers at {start:#x} overlap RAM or are misaligned: no `tpm` handle");
        return None;
    }
    Vmo::new_device(start, TPM_FIFO_WINDOW).ok()
}

/// Loads and starts init. Returns its process.
pub fn start_init() -> Result<Arc<Process>, BootError> {
    let image = bootfs_bytes()?;
    let fs = BootFs::parse(image).map_err(BootError::BadBootFs)?;
    let program = fs.find("init").ok_or(BootError::NoInit)?;
    let elf = mantra_elf::Elf::parse(program.data, mantra_elf::EM_X86_64).map_err(BootError::BadInit)?;
    if elf.loads().any(|s| s.header.vaddr_end() > mantra_abi::USER_END || s.header.vaddr < mantra_abi::USER_BASE) {
        return Err(BootError::BadInit(mantra_elf::Error::NoLoadableSegments));
    }

    let process = step("init process", Process::new("init"))?;
    for segment in elf.loads() {
        load_segment(&process, &segment.header, segment.data)?;
    }
    let stack = step("init stack", Vmo::new(STACK_SIZE))?;
    step(
        "init stack map",
        process.space().map(stack, 0, STACK_SIZE, map::READ | map::WRITE, map::READ | map::WRITE, Some(STACK_TOP - STACK_SIZE)),
    )?;

    // The root capabilities, in startup-message order.
    let bootfs = step("bootfs object", Vmo::new(image.len() as u64))?;
    step("bootfs copy", bootfs.write(0, image))?;
    let log = Arc::new(Log::new(next_koid()));
    let mut roots: Vec<(&str, Object, u32)> = alloc::vec![
        ("self", Object::Process(process.clone()), rights::ALL),
        ("space", Object::Space(process.space().clone()), rights::ALL),
        ("bootfs", Object::Vmo(bootfs), rights::READ | rights::MAP | rights::DUPLICATE | rights::TRANSFER),
        ("log", Object::Log(log.clone()), rights::WRITE | rights::DUPLICATE | rights::TRANSFER),
        ("klog", Object::Log(log), rights::READ | rights::DUPLICATE | rights::TRANSFER),
        ("irq", Object::Resource(Arc::new(Resource::interrupts())), rights::CREATE | rights::DUPLICATE | rights::TRANSFER),
        (
            "console",
            Object::Console(crate::conio::object()),
            rights::READ | rights::WRITE | rights::WAIT | rights::DUPLICATE | rights::TRANSFER,
        ),
        (
            "fwvar",
            Object::Resource(Arc::new(Resource::firmware_variables())),
            rights::READ | rights::WRITE | rights::DUPLICATE | rights::TRANSFER,
        ),
    ];
    if let Some(eventlog) = event_log_object()? {
        roots.push(("eventlog", Object::Vmo(eventlog), rights::READ | rights::MAP | rights::DUPLICATE | rights::TRANSFER));
    }
    if let Some(tpm) = tpm_object() {
        let rw = rights::READ | rights::WRITE | rights::MAP | rights::DUPLICATE | rights::TRANSFER;
        roots.push(("tpm", Object::Vmo(tpm), rw));
    }
    let mut text = String::from("MANTRA-STARTUP 1\n");
    let mut caps = Vec::new();
    for (name, object, rights) in roots {
        text.push_str(&format!("handle {name}\n"));
        caps.push(Capability::new(object, rights));
    }
    let (kernel_end, init_end) = Endpoint::pair();
    let bootstrap = step("bootstrap handle", process.give(Object::Channel(init_end), rights::BASIC))?;
    kernel_end
        .write(Message { bytes: text.into_bytes(), handles: caps })
        .map_err(|(e, _)| BootError::Kernel("startup message", e))?;
    drop(kernel_end); // init sees PEER_CLOSED after reading the message

    let thread = step("init thread", Thread::new(&process))?;
    step("init start", thread.start(elf.entry(), STACK_TOP, u64::from(bootstrap.0), 0))?;
    crate::kprintln!("init: started (koid {}), {} segments, entry {:#x}", process.koid, elf.loads().count(), elf.entry());
    Ok(process)
}
