//! Symmetric multiprocessing: starting the application processors (APs)
//! the MADT lists, and inter-processor interrupts between online CPUs.
//!
//! # CPU numbering
//! A CPU's *index* is dense: 0 is the boot CPU, APs get 1, 2, ... in the
//! order they come online (an AP that fails to start does not use one up).
//! `percpu::PerCpu::index` holds it on each CPU. The index table below maps
//! it to the APIC id that IPIs need.
//!
//! # Bring-up ([`start_aps`], called once by the boot CPU after its timer runs)
//! 1. A trampoline (`trampoline.rs`) is copied into frames below 1 MiB that
//!    `memory` set aside at init, with temporary page tables there: a PML4
//!    (below 4 GiB, as a 32-bit CR3 load needs) that identity-maps only the
//!    trampoline page and shares the kernel's upper half. The kernel's own
//!    address space is never changed, so nothing has to be unmapped or
//!    shot down afterwards.
//! 2. INIT goes to every AP to start, then one 10 ms wait (halting, not
//!    spinning). Then, one AP at a time: its guarded kernel stack (slot
//!    [`AP_STACK_SLOT_BASE`] + index) is mapped, the parameter block is
//!    filled, STARTUP is sent; if the AP shows no sign of life after 200 µs a
//!    second STARTUP follows; then the boot CPU waits (halting) until the AP
//!    reports online, [`AP_START_TIMEOUT_MS`] at most. The AP wakes it with
//!    an IPI as soon as it is online, so the usual wait is the AP's own
//!    start-up time.
//! 3. An AP that misses the deadline is logged with the last stage it
//!    reached, sent INIT again (which stops it wherever it was), its stack is
//!    unmapped, and bring-up goes on with the next one. A late AP that
//!    reaches the kernel after the boot CPU gave up sees that in the
//!    hand-shake state and parks itself (`cli; hlt`) before touching
//!    anything shared.
//! 4. On the AP ([`ap_main`]): the IDT first (faults are reported from here
//!    on), then the boot CPU's control-register policy (NXE, WP, PGE via
//!    `enable_paging_features`, SMEP/SMAP/UMIP via `enable_user_isolation`)
//!    and the rest of its CR0/CR4/EFER, PAT, XCR0 and SYSCALL MSRs mirrored,
//!    its per-CPU area (`percpu::init_ap`: GDT, TSS, GS), its LAPIC and LAPIC
//!    timer at the boot CPU's calibrated rate; it marks itself online,
//!    flushes its TLB, wakes the boot CPU and calls [`AP_MAIN`] with
//!    interrupts still disabled.
//!
//! # Where the scheduler hooks in
//! [`set_ap_main`] replaces the function each AP runs once online (default:
//! [`ap_idle`], a `sti; hlt` loop). It receives the CPU index with
//! interrupts disabled and never returns: the scheduler's per-CPU idle
//! thread / run-queue loop goes there (e.g. `crate::sched::ap_entry`). Set it
//! before [`start_aps`]. Anything per-CPU that the boot CPU sets up *before*
//! [`start_aps`] in CR0/CR4/EFER/PAT/XCR0/STAR/LSTAR/CSTAR/SFMASK is copied
//! to the APs; later changes must be made on each CPU (e.g. in AP_MAIN).
//! The reschedule IPI handler ([`handle_ipi`], `VECTOR_RESCHEDULE`) only
//! counts today: the scheduler's "need resched" flag is set there. An idle
//! loop that calls [`run_idle_work`] before it halts lets the self-test run
//! work on that CPU (the concurrent-shootdown check).
//!
//! # Cross-CPU requests and TLB shootdown
//! Each CPU has one outgoing request slot (what to flush, what to call) and
//! an inbox bitmap: bit s = "CPU s has a request for me". A sender fills its
//! slot, sets its bit in every target's inbox, sends `VECTOR_CALL`, then
//! waits until every target acknowledged. Targets serve all pending requests
//! in the IPI handler (flush, call, acknowledge); the last one to acknowledge
//! wakes the sender with a reschedule IPI, so a waiting sender halts instead
//! of spinning (a sender called with interrupts masked, which may hold locks
//! an interrupt handler takes, polls instead). While it waits, a sender also
//! serves its own inbox, so two CPUs shooting down at the same time (or a
//! sender whose interrupts are off) never deadlock. An IPI still unanswered after 10 ms is sent again
//! (lost or stuck IPIs), and a wait beyond 1 s is reported on the console.
//! Contract for callers: not from an interrupt handler, and not while holding
//! a lock that another CPU may spin on with interrupts disabled.

// Until the scheduler and the memory code call in, the IPI API is used by
// the self-test (ktest) only.
#![allow(dead_code)]

mod trampoline;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;
use core::ptr::addr_of_mut;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use mantra_kernel::acpi::Madt;
use mantra_kernel::sync::{Once, SpinLock};

use super::apic::{self, InterruptsOff, IpiError};
use super::{cpu, layout, percpu, traps};
use crate::arch::{Arch, Machine};
use crate::{kprintln, kwarn, memory};

/// Wakes a CPU (from HLT or an idle loop) and asks it to reschedule.
pub const VECTOR_RESCHEDULE: u8 = 0x40;
/// Serve the cross-CPU request inbox (TLB shootdown, function calls).
pub const VECTOR_CALL: u8 = 0x41;

/// Whether `vector` is one of the IPI vectors [`handle_ipi`] serves.
pub fn is_ipi_vector(vector: u64) -> bool {
    vector == u64::from(VECTOR_RESCHEDULE) || vector == u64::from(VECTOR_CALL)
}

const MAX_CPUS: usize = mantra_config::MAX_CPUS as usize;
const INBOX_WORDS: usize = MAX_CPUS.div_ceil(64);

/// Kernel stack slots `AP_STACK_SLOT_BASE + index` hold the APs' boot
/// stacks (index 0, the boot CPU, runs on slot 0, so slot
/// `AP_STACK_SLOT_BASE` itself is free: the self-test uses it).
pub const AP_STACK_SLOT_BASE: u64 = 16;
const SELF_TEST_SLOT: u64 = AP_STACK_SLOT_BASE;
const _: () = assert!(AP_STACK_SLOT_BASE + MAX_CPUS as u64 <= layout::STACK_SLOTS);

/// How long the boot CPU waits for one AP to come online.
pub const AP_START_TIMEOUT_MS: u64 = 2000;
/// Ranges up to this many pages are flushed page by page, larger ones by a
/// whole-TLB flush.
const INVLPG_LIMIT: u64 = 32;

const PAGE_SIZE: u64 = layout::PAGE_SIZE;

/// What a cross-CPU request asks each target to flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    Nothing,
    /// Pages overlapping `start..end` (kernel or current user addresses).
    Pages { start: u64, end: u64 },
    /// Every TLB entry, global ones included.
    All,
}

#[derive(Clone, Copy)]
struct Work {
    flush: Flush,
    /// Runs on each target in its IPI handler (interrupts off) with the
    /// target's index; must not block, allocate, print or post requests.
    call: Option<fn(usize)>,
}

/// Per-CPU SMP state, indexed by CPU index.
struct Cpu {
    online: AtomicBool,
    apic_id: AtomicU32,
    reschedule_ipis: AtomicU64,
    call_ipis: AtomicU64,
    /// Requests from other CPUs this CPU served (flushes and calls).
    requests_served: AtomicU64,
    /// Bit s of word s / 64: CPU s has a request for this CPU.
    inbox: [AtomicU64; INBOX_WORDS],
    /// This CPU's outgoing request, valid while `acks` is non-zero.
    request: SpinLock<Work>,
    /// Targets of the outgoing request that have not acknowledged yet.
    acks: AtomicUsize,
    /// A request is being posted from this CPU (catches nesting).
    posting: AtomicBool,
    /// Work queued for this CPU's idle loop (self-test), see `run_idle_work`.
    idle_work: SpinLock<Option<fn(usize)>>,
    /// This CPU's idle loop calls `run_idle_work`.
    serves_idle_work: AtomicBool,
}

impl Cpu {
    const fn new() -> Self {
        Self {
            online: AtomicBool::new(false),
            apic_id: AtomicU32::new(0),
            reschedule_ipis: AtomicU64::new(0),
            call_ipis: AtomicU64::new(0),
            requests_served: AtomicU64::new(0),
            inbox: [const { AtomicU64::new(0) }; INBOX_WORDS],
            request: SpinLock::new(Work { flush: Flush::Nothing, call: None }),
            acks: AtomicUsize::new(0),
            posting: AtomicBool::new(false),
            idle_work: SpinLock::new(None),
            serves_idle_work: AtomicBool::new(false),
        }
    }
}

static CPUS: [Cpu; MAX_CPUS] = [const { Cpu::new() }; MAX_CPUS];
/// CPUs online (the boot CPU counts once `start_aps` ran).
static ONLINE: AtomicUsize = AtomicUsize::new(0);
/// Enabled CPUs in the MADT (whether or not MAX_CPUS lets them start).
static PRESENT: AtomicUsize = AtomicUsize::new(0);
/// CPUs that should come online: min(PRESENT, MAX_CPUS).
static EXPECTED: AtomicUsize = AtomicUsize::new(0);

/// What each AP runs once online, with interrupts disabled (see the module
/// documentation). Read by each AP as it comes online.
static AP_MAIN: SpinLock<fn(usize) -> !> = SpinLock::new(ap_idle);

/// Replaces what APs run once online (the scheduler's per-CPU loop).
/// Takes effect for APs started afterwards: call it before [`start_aps`].
pub fn set_ap_main(main: fn(usize) -> !) {
    *AP_MAIN.lock() = main;
}

/// Why a cross-CPU operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpError {
    /// No online CPU has this index.
    NotOnline(usize),
    Ipi(IpiError),
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SmpError::NotOnline(cpu) => write!(f, "cpu {cpu} is not online"),
            SmpError::Ipi(e) => write!(f, "IPI not sent: {e}"),
        }
    }
}

impl From<IpiError> for SmpError {
    fn from(e: IpiError) -> Self {
        SmpError::Ipi(e)
    }
}

/// IPIs one CPU received, for tests and statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpiCounts {
    pub reschedule: u64,
    pub call: u64,
    pub requests_served: u64,
}

/// The index of the CPU running this (0 before per-CPU areas exist).
pub fn this_cpu() -> usize {
    if ONLINE.load(Ordering::Acquire) == 0 {
        0
    } else {
        percpu::current().index
    }
}

/// CPUs online now.
pub fn online_cpus() -> usize {
    ONLINE.load(Ordering::Acquire).max(1)
}

/// Whether CPU `index` is online.
pub fn is_online(index: usize) -> bool {
    CPUS.get(index).is_some_and(|c| c.online.load(Ordering::Acquire))
}

/// The APIC id of online CPU `index`.
pub fn apic_id(index: usize) -> Option<u32> {
    is_online(index).then(|| CPUS[index].apic_id.load(Ordering::Relaxed))
}

/// The IPI counters of CPU `index` (zero for CPUs never online).
pub fn ipi_counts(index: usize) -> IpiCounts {
    CPUS.get(index).map_or(IpiCounts::default(), |c| IpiCounts {
        reschedule: c.reschedule_ipis.load(Ordering::Relaxed),
        call: c.call_ipis.load(Ordering::Relaxed),
        requests_served: c.requests_served.load(Ordering::Relaxed),
    })
}

fn online_indices() -> impl Iterator<Item = usize> {
    (0..MAX_CPUS).filter(|&i| CPUS[i].online.load(Ordering::Acquire))
}

// ---------------------------------------------------------------------------
// IPIs

/// Sends the reschedule / wake-up IPI to online CPU `index` (to itself too:
/// it is then taken as soon as interrupts are enabled).
pub fn send_reschedule(index: usize) -> Result<(), SmpError> {
    let id = apic_id(index).ok_or(SmpError::NotOnline(index))?;
    apic::send_fixed(id, VECTOR_RESCHEDULE)?;
    Ok(())
}

/// The handler of both IPI vectors (called from `trap` with interrupts off).
pub fn handle_ipi(vector: u8) {
    let me = this_cpu();
    let cpu = &CPUS[me];
    match vector {
        VECTOR_RESCHEDULE => {
            cpu.reschedule_ipis.fetch_add(1, Ordering::Relaxed);
            // The scheduler marks "need resched" for this CPU here; the
            // interrupted idle loop or thread checks it on the way out.
        }
        VECTOR_CALL => {
            cpu.call_ipis.fetch_add(1, Ordering::Relaxed);
            serve_inbox(me);
        }
        _ => {}
    }
    apic::end_of_interrupt();
}

/// Serves every request pending in CPU `me`'s inbox. Interrupts are off.
fn serve_inbox(me: usize) {
    for (word, bits) in CPUS[me].inbox.iter().enumerate() {
        let mut pending = bits.swap(0, Ordering::AcqRel);
        while pending != 0 {
            let sender = word * 64 + pending.trailing_zeros() as usize;
            pending &= pending - 1;
            serve(me, sender);
        }
    }
}

fn serve(me: usize, sender: usize) {
    let source = &CPUS[sender];
    let work = *source.request.lock();
    flush_local(work.flush);
    if let Some(call) = work.call {
        call(me);
    }
    CPUS[me].requests_served.fetch_add(1, Ordering::Relaxed);
    if source.acks.fetch_sub(1, Ordering::AcqRel) == 1 {
        // The sender may be halted waiting for this: wake it. A failed wake
        // only delays it to its next timer tick.
        let _ = apic::send_fixed(source.apic_id.load(Ordering::Relaxed), VECTOR_RESCHEDULE);
    }
}

/// Which CPUs a request goes to.
#[derive(Clone, Copy)]
enum Targets {
    AllOthers,
    One(usize),
}

/// Posts `work` to `targets` and waits until each one has done it; returns
/// how many CPUs did. See the module documentation for the protocol.
fn post(targets: Targets, work: Work) -> Result<usize, SmpError> {
    let me = this_cpu();
    let cpu = &CPUS[me];
    let masked = InterruptsOff::new();
    assert!(
        !cpu.posting.swap(true, Ordering::Acquire),
        "cpu {me}: nested cross-CPU request (posted from an interrupt handler?)"
    );
    let mut mask = [0u64; INBOX_WORDS];
    let mut count = 0;
    let mut add = |t: usize| {
        mask[t / 64] |= 1 << (t % 64);
        count += 1;
    };
    match targets {
        Targets::AllOthers => online_indices().filter(|&t| t != me).for_each(&mut add),
        Targets::One(t) if t != me && is_online(t) => add(t),
        Targets::One(t) => {
            cpu.posting.store(false, Ordering::Release);
            return Err(SmpError::NotOnline(t));
        }
    }
    if count == 0 {
        cpu.posting.store(false, Ordering::Release);
        return Ok(0);
    }
    *cpu.request.lock() = work;
    cpu.acks.store(count, Ordering::Release);
    let my_bit = 1u64 << (me % 64);
    for (t, target) in CPUS.iter().enumerate() {
        if mask[t / 64] & (1 << (t % 64)) != 0 {
            target.inbox[me / 64].fetch_or(my_bit, Ordering::AcqRel);
        }
    }
    fence(Ordering::SeqCst);
    let broadcast = matches!(targets, Targets::AllOthers) && ONLINE.load(Ordering::Acquire) == PRESENT.load(Ordering::Relaxed);
    let mut send_failed = None;
    if broadcast {
        if let Err(e) = apic::broadcast_fixed_others(VECTOR_CALL) {
            send_failed = Some(e);
        }
    } else {
        send_failed = kick(&mask, me, false).err();
    }
    if let Some(e) = send_failed {
        kwarn!("smp: cpu {me}: cross-CPU IPI failed ({e}); retrying while waiting");
    }

    let tsc_rate = tsc_rate();
    let start = cpu::rdtsc();
    let mut last_kick = start;
    let mut warned = false;
    while cpu.acks.load(Ordering::Acquire) != 0 {
        // Serving our own inbox while we wait is what keeps two CPUs that
        // post at the same time (or a sender with interrupts off) going.
        serve_inbox(me);
        if cpu.acks.load(Ordering::Acquire) == 0 {
            break;
        }
        if masked.were_enabled() {
            // STI;HLT: the last target's wake-up IPI (or a timer tick) ends
            // the halt; one that arrived since the check is taken at STI.
            Machine::wait_for_interrupt();
            cpu::disable_interrupts();
        } else {
            core::hint::spin_loop();
        }
        let now = cpu::rdtsc();
        if now.wrapping_sub(last_kick) > tsc_rate / 100 {
            // Re-send to targets that have not even picked the request up.
            let _ = kick(&mask, me, true);
            last_kick = now;
        }
        if !warned && now.wrapping_sub(start) > tsc_rate {
            warned = true;
            kwarn!(
                "smp: cpu {me} has waited over 1 s for {} cpu(s) to acknowledge a cross-CPU request",
                cpu.acks.load(Ordering::Acquire)
            );
        }
    }
    cpu.posting.store(false, Ordering::Release);
    drop(masked);
    Ok(count)
}

/// Sends `VECTOR_CALL` to each CPU in `mask`; with `only_pending`, only to
/// those whose inbox still holds `sender`'s bit.
fn kick(mask: &[u64; INBOX_WORDS], sender: usize, only_pending: bool) -> Result<(), IpiError> {
    let mut result = Ok(());
    for (t, target) in CPUS.iter().enumerate() {
        if mask[t / 64] & (1 << (t % 64)) == 0 {
            continue;
        }
        if only_pending && target.inbox[sender / 64].load(Ordering::Acquire) & (1 << (sender % 64)) == 0 {
            continue;
        }
        if let Err(e) = apic::send_fixed(target.apic_id.load(Ordering::Relaxed), VECTOR_CALL) {
            result = Err(e);
        }
    }
    result
}

/// Invalidates the TLB entries of the pages overlapping `range` on this CPU
/// and on every other online CPU, and returns once all have done so.
///
/// Call it after changing or removing present mappings of memory other CPUs
/// may have cached (kernel mappings, or a user address space that runs on
/// several CPUs) and before reusing what the old mapping pointed to. Large
/// ranges (over 32 pages) flush whole TLBs instead. Not from an interrupt
/// handler; see the module documentation for the locking contract.
pub fn shootdown(range: Range<u64>) {
    let flush = flush_for(range);
    flush_local(flush);
    // Only fails for a single target; AllOthers cannot.
    let _ = post(Targets::AllOthers, Work { flush, call: None });
}

/// Flushes every TLB entry (global ones included) on every online CPU.
pub fn shootdown_all() {
    flush_local(Flush::All);
    let _ = post(Targets::AllOthers, Work { flush: Flush::All, call: None });
}

/// Runs `f(index)` on every other online CPU, in its IPI handler, and waits
/// until all have run it; returns how many did. `f` runs with interrupts
/// off and must not block, allocate, print or post cross-CPU requests.
pub fn call_on_others(f: fn(usize)) -> usize {
    post(Targets::AllOthers, Work { flush: Flush::Nothing, call: Some(f) }).unwrap_or(0)
}

/// Runs `f(index)` on CPU `index` (as [`call_on_others`]; directly, with
/// interrupts off, when `index` is this CPU) and waits for it.
pub fn call_on(index: usize, f: fn(usize)) -> Result<(), SmpError> {
    if index == this_cpu() {
        let _masked = InterruptsOff::new();
        f(index);
        return Ok(());
    }
    post(Targets::One(index), Work { flush: Flush::Nothing, call: Some(f) }).map(|_| ())
}

fn flush_for(range: Range<u64>) -> Flush {
    if range.end <= range.start {
        return Flush::Nothing;
    }
    let start = range.start & !(PAGE_SIZE - 1);
    let canonical = |a: u64| ((a as i64) << 16 >> 16) as u64 == a;
    let last = range.end - 1;
    let same_half = (start ^ last) >> 63 == 0;
    if !canonical(start) || !canonical(last) || !same_half || (last - start) / PAGE_SIZE >= INVLPG_LIMIT {
        return Flush::All;
    }
    Flush::Pages { start, end: range.end }
}

fn flush_local(flush: Flush) {
    match flush {
        Flush::Nothing => {}
        Flush::Pages { start, end } => {
            let mut page = start;
            while page < end {
                cpu::invlpg(page);
                page += PAGE_SIZE;
            }
        }
        Flush::All => flush_all_local(),
    }
}

/// Drops every TLB entry of this CPU, global ones included.
fn flush_all_local() {
    let cr4 = cpu::read_cr4();
    if cr4 & cpu::CR4_PGE != 0 {
        // SAFETY: clearing and restoring PGE only flushes the TLB (global
        // entries included); paging and the tables stay as they are.
        unsafe {
            cpu::write_cr4(cr4 & !cpu::CR4_PGE);
            cpu::write_cr4(cr4);
        }
    } else {
        // SAFETY: writing CR3 back with its own value keeps the same tables
        // and drops the (all non-global) TLB entries.
        unsafe { core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
    }
}

// ---------------------------------------------------------------------------
// Waiting

fn tsc_rate() -> u64 {
    apic::calibrated_rates().map_or(1_000_000_000, |(_, tsc)| tsc.max(1_000_000))
}

/// Waits until `done()` or until `timeout_tsc` TSC ticks passed, halting
/// between checks (the timer or an IPI wakes us), so a waiting CPU never
/// spins. Returns whether `done()` held.
///
/// Like the idle loop, it opens interrupts inside each halt (STI;HLT) and
/// masks them again to check, whatever the caller's state (restored on
/// return): only for callers that hold no lock an interrupt handler takes
/// (boot, the self-test). The CPU's LAPIC timer must run.
fn wait_until(timeout_tsc: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = cpu::rdtsc();
    let _masked = InterruptsOff::new();
    loop {
        if done() {
            return true;
        }
        if cpu::rdtsc().wrapping_sub(start) >= timeout_tsc {
            return done();
        }
        // STI;HLT, then check again with interrupts off.
        Machine::wait_for_interrupt();
        cpu::disable_interrupts();
    }
}

// ---------------------------------------------------------------------------
// AP bring-up

/// Boot-CPU state every AP copies (captured by `start_aps`).
struct Mirror {
    cr0: u64,
    cr4: u64,
    efer: u64,
    pat: Option<u64>,
    xcr0: Option<u64>,
    syscall_msrs: [(u32, u64); 4],
    timer_rate: u64,
    timer_hz: u64,
    bsp_apic_id: u32,
}

static MIRROR: Once<Mirror> = Once::new();

const MSR_PAT: u32 = 0x277;
const SYSCALL_MSRS: [u32; 4] = [0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084]; // STAR, LSTAR, CSTAR, SFMASK
const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSXSAVE: u64 = 1 << 18;
const CR4_LA57: u64 = 1 << 12;
const EFER_LME: u64 = 1 << 8;

/// Hand-shake with the AP being started (one at a time).
static START_STATE: AtomicU8 = AtomicU8::new(IDLE);
const IDLE: u8 = 0;
/// STARTUP sent; the AP has not reached Rust yet.
const WAITING: u8 = 1;
/// The AP runs its Rust set-up.
const RUNNING: u8 = 2;
/// The AP is online.
const ONLINE_STATE: u8 = 3;
/// The boot CPU gave up on this AP.
const ABANDONED: u8 = 4;
/// TSC when the AP came online (for the start-up cost figure).
static START_ONLINE_TSC: AtomicU64 = AtomicU64::new(0);
/// `start_aps` ran (it runs once).
static STARTED: AtomicBool = AtomicBool::new(false);

/// Fault injection for the kernel test build, from the command line:
/// `ktest.smp-stall=ID` stops the AP with APIC id ID at the end of the
/// trampoline (it never reaches the kernel), `ktest.smp-stall-kernel=ID`
/// right after it entered the kernel. Either way the boot CPU must give up
/// on it after the timeout, say so, and bring up the others.
#[cfg(feature = "ktest")]
mod stall {
    use core::sync::atomic::{AtomicU32, Ordering};

    static IN_TRAMPOLINE: AtomicU32 = AtomicU32::new(u32::MAX);
    static IN_KERNEL: AtomicU32 = AtomicU32::new(u32::MAX);

    pub fn configure() {
        let cmdline = crate::boot::bootinfo().cmdline();
        for arg in cmdline.split_whitespace() {
            let parse = |v: &str| v.parse::<u32>().unwrap_or(u32::MAX);
            if let Some(id) = arg.strip_prefix("ktest.smp-stall=") {
                IN_TRAMPOLINE.store(parse(id), Ordering::Relaxed);
            } else if let Some(id) = arg.strip_prefix("ktest.smp-stall-kernel=") {
                IN_KERNEL.store(parse(id), Ordering::Relaxed);
            }
        }
    }

    pub fn in_trampoline(apic_id: u32) -> bool {
        IN_TRAMPOLINE.load(Ordering::Relaxed) == apic_id
    }

    pub fn in_kernel(apic_id: u32) -> bool {
        IN_KERNEL.load(Ordering::Relaxed) == apic_id
    }

    extern "C" {
        fn mantra_ap_stall();
    }

    // Where a stalled AP goes instead of mantra_ap_entry: halts for good.
    core::arch::global_asm!(".global mantra_ap_stall", "mantra_ap_stall:", "cli", "hlt", "jmp mantra_ap_stall");

    pub fn stall_entry() -> u64 {
        mantra_ap_stall as *const () as u64
    }
}

/// Where the trampoline lives (physical) and what the boot CPU fills in.
struct Trampoline {
    /// The trampoline page; the four temporary page tables follow it.
    page: u64,
}

impl Trampoline {
    fn params(&self) -> *mut trampoline::Params {
        (memory::phys_to_virt(self.page) + trampoline::PARAMS_OFFSET as u64) as *mut trampoline::Params
    }

    fn stage(&self) -> u8 {
        // SAFETY: the parameter block lies in the trampoline page, which
        // this module owns and the direct map maps; the AP writes the field
        // concurrently, hence the volatile read.
        unsafe { addr_of_mut!((*self.params()).stage).read_volatile() as u8 }
    }
}

/// Frames the trampoline needs below 1 MiB: its page, then the temporary
/// PML4, PDPT, PD and PT.
const TRAMPOLINE_FRAMES: u64 = 5;
const _: () = assert!(TRAMPOLINE_FRAMES <= memory::LOW_RESERVED_FRAMES);

/// Copies the trampoline into the low frames at `base` and builds its
/// temporary page tables.
///
/// Page tables: writes only the four fresh frames after the trampoline page
/// (never the kernel's tables). The temporary PML4 copies the kernel's
/// upper-half entries 256..512 (so it shares the kernel's lower-level
/// tables and sees later mappings below existing top-level entries, e.g.
/// new AP stacks) and maps the trampoline page at its physical address
/// through its own PDPT/PD/PT. Only APs in the trampoline ever load it.
fn prepare_trampoline(base: u64, mirror: &Mirror) -> Result<Trampoline, String> {
    let code = trampoline::code();
    if code.len() > trampoline::PARAMS_OFFSET {
        return Err(format!("the trampoline code ({} bytes) overlaps its parameters", code.len()));
    }
    let frame = |n: u64| base + n * PAGE_SIZE;
    let (pml4, pdpt, pd, pt) = (frame(1), frame(2), frame(3), frame(4));
    let table = |phys: u64| memory::phys_to_virt(phys) as *mut u64;
    const PRESENT_WRITABLE: u64 = 0b11;
    let kernel_root = memory::kernel_root();
    // SAFETY: the five frames below 1 MiB were handed to this module by
    // memory::alloc_low_frames and nothing else uses them; the direct map
    // covers them. The kernel's PML4 is only read (its upper half changes
    // only when a new top-level kernel region is created, not at boot).
    unsafe {
        let page = memory::phys_to_virt(base) as *mut u8;
        page.write_bytes(0, PAGE_SIZE as usize);
        core::ptr::copy_nonoverlapping(code.as_ptr(), page, code.len());
        for t in [pml4, pdpt, pd, pt] {
            table(t).write_bytes(0, 512);
        }
        let kernel = table(kernel_root);
        for i in 256..512 {
            table(pml4).add(i).write_volatile(kernel.add(i).read_volatile());
        }
        let index = |level: u32| ((base >> (12 + 9 * level)) & 511) as usize;
        table(pml4).add(index(3)).write_volatile(pdpt | PRESENT_WRITABLE);
        table(pdpt).add(index(2)).write_volatile(pd | PRESENT_WRITABLE);
        table(pd).add(index(1)).write_volatile(pt | PRESENT_WRITABLE);
        table(pt).add(index(0)).write_volatile(base | PRESENT_WRITABLE);
    }

    let (pm32, lm64) = trampoline::part_offsets();
    let gdt_base = base + trampoline::PARAMS_OFFSET as u64 + core::mem::offset_of!(trampoline::Params, gdt) as u64;
    let gdt_limit = (core::mem::size_of_val(&trampoline::GDT) - 1) as u64;
    let mut kernel_gdtr = [0u8; 16];
    kernel_gdtr[..2].copy_from_slice(&(gdt_limit as u16).to_le_bytes());
    kernel_gdtr[2..10].copy_from_slice(&(trampoline::KERNEL_GDT.as_ptr() as u64).to_le_bytes());
    let nxe = mirror.efer & cpu::EFER_NXE;
    let params = trampoline::Params {
        gdt: trampoline::GDT,
        gdtr: gdt_limit | (gdt_base << 16),
        far32: (base + pm32) | (u64::from(trampoline::CODE32) << 32),
        far64: (base + lm64) | (u64::from(trampoline::CODE64) << 32),
        cr0: mirror.cr0 | CR0_PE | CR0_PG,
        cr4: CR4_PAE,
        efer: EFER_LME | nxe,
        temp_cr3: pml4,
        kernel_cr3: kernel_root,
        stack_top: 0,
        entry: trampoline::entry_address(),
        arg: 0,
        claim: 0,
        stage: 0,
        kernel_gdtr,
    };
    let trampoline = Trampoline { page: base };
    // SAFETY: the parameter block lies inside the trampoline page (checked
    // above: the code ends before PARAMS_OFFSET, and Params fits in the
    // rest of the page, see the assertion below).
    unsafe { trampoline.params().write_volatile(params) };
    Ok(trampoline)
}

const _: () = assert!(trampoline::PARAMS_OFFSET + core::mem::size_of::<trampoline::Params>() <= PAGE_SIZE as usize);

/// Starts every enabled CPU of the MADT (up to MAX_CPUS), prints the
/// `smp: ` summary line and returns the number of CPUs online. Runs once, on
/// the boot CPU, after `apic::init`, `apic::calibrate` and the timer started
/// (interrupts enabled: the waits halt until the timer or an AP wakes us).
pub fn start_aps(madt: &Madt) -> usize {
    if STARTED.swap(true, Ordering::AcqRel) {
        kwarn!("smp: start_aps called twice; the application processors are already started");
        return online_cpus();
    }
    let began = cpu::rdtsc();
    #[cfg(feature = "ktest")]
    stall::configure();
    let bsp_apic = apic::id();
    CPUS[0].apic_id.store(bsp_apic, Ordering::Relaxed);
    CPUS[0].online.store(true, Ordering::Release);
    ONLINE.store(1, Ordering::Release);

    let mut present: Vec<u32> = madt.cpus.iter().filter(|c| c.enabled).map(|c| c.apic_id).collect();
    if !present.contains(&bsp_apic) {
        present.insert(0, bsp_apic);
    }
    PRESENT.store(present.len(), Ordering::Relaxed);
    EXPECTED.store(present.len().min(MAX_CPUS), Ordering::Relaxed);
    let mut aps: Vec<u32> = present.iter().copied().filter(|&id| id != bsp_apic).collect();
    // Beyond MAX_CPUS (boot.rs says so on the console) CPUs stay where the
    // firmware parked them.
    aps.truncate(MAX_CPUS - 1);
    let offline = |why: &str| {
        kprintln!("smp: 1 of {} cpus online ({why})", present.len());
        1
    };
    if aps.is_empty() {
        return offline("no application processors");
    }
    let Some((timer_rate, tsc_rate)) = apic::calibrated_rates() else {
        return offline("the timer is not calibrated: application processors not started");
    };
    let Some(low) = memory::alloc_low_frames(TRAMPOLINE_FRAMES) else {
        return offline("no free memory below 1 MiB for the start-up trampoline: application processors not started");
    };
    let mirror = MIRROR.call_once(|| capture_mirror(timer_rate, bsp_apic));
    let trampoline = match prepare_trampoline(low.as_u64(), mirror) {
        Ok(t) => t,
        Err(e) => return offline(&format!("{e}: application processors not started")),
    };
    let sipi_page = (trampoline.page >> 12) as u8;

    // INIT every AP, then one 10 ms wait for all (MP specification). Linux
    // skips this wait on modern CPUs; QEMU's TCG, measured here, drops a
    // STARTUP that follows INIT that closely (the AP then needs the second
    // STARTUP and a timer tick more), so the wait stays.
    aps.retain(|&id| match apic::send_init(id) {
        Ok(()) => true,
        Err(e) => {
            kwarn!("smp: cpu with APIC id {id} stays offline: INIT failed: {e}");
            false
        }
    });
    wait_until(tsc_rate / 100, || false);

    let mut startup_tsc = 0u64;
    let mut started = 0u64;
    for &id in &aps {
        let index = ONLINE.load(Ordering::Acquire);
        match start_one(&trampoline, sipi_page, index, id, tsc_rate) {
            Ok(cost) => {
                startup_tsc += cost;
                started += 1;
            }
            Err(why) => kwarn!("smp: cpu with APIC id {id} stays offline: {why}"),
        }
    }
    let online = ONLINE.load(Ordering::Acquire);
    let ids: Vec<u32> = online_indices().map(|i| CPUS[i].apic_id.load(Ordering::Relaxed)).collect();
    kprintln!(
        "smp: {online} of {} cpus online (APIC ids {ids:?}; bring-up {} tsc, STARTUP to online {} tsc per AP)",
        present.len(),
        cpu::rdtsc().wrapping_sub(began),
        startup_tsc.checked_div(started).unwrap_or(0)
    );
    online
}

fn capture_mirror(timer_rate: u64, bsp_apic_id: u32) -> Mirror {
    let cr4 = cpu::read_cr4();
    let has_pat = cpu::cpuid(1, 0).edx & (1 << 16) != 0;
    // SAFETY: EFER and the SYSCALL MSRs exist on every x86_64 CPU; PAT is
    // read only when CPUID lists it; XGETBV only with CR4.OSXSAVE set.
    unsafe {
        Mirror {
            cr0: cpu::read_cr0(),
            cr4,
            efer: cpu::rdmsr(cpu::MSR_EFER),
            pat: has_pat.then(|| cpu::rdmsr(MSR_PAT)),
            xcr0: (cr4 & CR4_OSXSAVE != 0).then(|| xgetbv0()),
            syscall_msrs: SYSCALL_MSRS.map(|msr| (msr, cpu::rdmsr(msr))),
            timer_rate,
            timer_hz: mantra_config::TIMER_HZ as u64,
            bsp_apic_id,
        }
    }
}

/// # Safety
/// CR4.OSXSAVE must be set.
unsafe fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: guaranteed by the caller; XGETBV only reads XCR0.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// CR4.OSXSAVE must be set and `value` valid for this CPU (x87 bit set,
/// only supported components).
unsafe fn xsetbv0(value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::arch::asm!(
            "xsetbv",
            in("ecx") 0,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// Starts one AP as CPU `index`; returns the TSC ticks from STARTUP to
/// online, or why it failed (the AP is stopped with INIT again then).
fn start_one(trampoline: &Trampoline, sipi_page: u8, index: usize, apic_id: u32, tsc_rate: u64) -> Result<u64, String> {
    if index >= MAX_CPUS {
        return Err(format!("MAX_CPUS ({MAX_CPUS}) reached"));
    }
    let slot = AP_STACK_SLOT_BASE + index as u64;
    let stack_top = memory::map_kernel_stack(slot).map_err(|e| format!("cannot map its kernel stack: {e}"))?;
    let params = trampoline.params();
    // SAFETY: the parameter block lies in the trampoline page (see
    // prepare_trampoline); no AP uses it now: the previous one is online
    // or was stopped with INIT.
    unsafe {
        #[cfg(feature = "ktest")]
        addr_of_mut!((*params).entry).write_volatile(if stall::in_trampoline(apic_id) {
            stall::stall_entry()
        } else {
            trampoline::entry_address()
        });
        addr_of_mut!((*params).stack_top).write_volatile(stack_top);
        addr_of_mut!((*params).arg).write_volatile(index as u64);
        addr_of_mut!((*params).stage).write_volatile(0);
        addr_of_mut!((*params).claim).write_volatile(0);
    }
    START_STATE.store(WAITING, Ordering::SeqCst);
    fence(Ordering::SeqCst);

    let sent = cpu::rdtsc();
    let result = (|| {
        apic::send_startup(apic_id, sipi_page).map_err(|e| format!("STARTUP failed: {e}"))?;
        let alive = || trampoline.stage() != 0 || START_STATE.load(Ordering::Acquire) != WAITING;
        if !wait_until(tsc_rate / 5000, alive) {
            apic::send_startup(apic_id, sipi_page).map_err(|e| format!("second STARTUP failed: {e}"))?;
        }
        let online = wait_until(tsc_rate / 1000 * AP_START_TIMEOUT_MS, || START_STATE.load(Ordering::Acquire) == ONLINE_STATE);
        if online {
            return Ok(START_ONLINE_TSC.load(Ordering::Acquire).wrapping_sub(sent));
        }
        // Give up, unless it came online just now.
        let gave_up = START_STATE.compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
        let gave_up = gave_up.or_else(|_| START_STATE.compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire));
        match gave_up {
            Err(ONLINE_STATE) => Ok(START_ONLINE_TSC.load(Ordering::Acquire).wrapping_sub(sent)),
            Err(_) | Ok(_) => Err(describe_stall(trampoline.stage(), gave_up == Ok(RUNNING))),
        }
    })();
    if result.is_err() {
        // Stop it wherever it is, so it cannot use the stack or the
        // trampoline later; then the stack slot can go.
        if let Err(e) = apic::send_init(apic_id) {
            kwarn!("smp: cannot stop the cpu with APIC id {apic_id} with INIT: {e}; its stack stays mapped");
        } else {
            wait_until(tsc_rate / 1000, || false);
            memory::unmap_kernel_stack(slot);
        }
    }
    START_STATE.store(IDLE, Ordering::SeqCst);
    result
}

fn describe_stall(stage: u8, in_kernel: bool) -> String {
    let timeout = AP_START_TIMEOUT_MS;
    match (in_kernel, stage) {
        (true, _) => format!("it entered the kernel but did not finish its set-up within {timeout} ms"),
        (false, 0) => format!("no answer to STARTUP within {timeout} ms"),
        (false, trampoline::STAGE_REAL) => format!("stopped in real mode (trampoline stage 1) within {timeout} ms"),
        (false, trampoline::STAGE_PROTECTED) => format!("stopped in protected mode (trampoline stage 2) within {timeout} ms"),
        (false, _) => format!("reached long mode but not the kernel within {timeout} ms"),
    }
}

/// The Rust entry of an AP (from `mantra_ap_entry`): kernel tables, its own
/// stack, interrupts off, no IDT/GDT/per-CPU area of its own yet.
extern "C" fn ap_main(index: u64) -> ! {
    let index = index as usize;
    if START_STATE.compare_exchange(WAITING, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // The boot CPU gave up on us (or a stray CPU ran the trampoline).
        Machine::halt();
    }
    super::load_idt();
    #[cfg(feature = "ktest")]
    if stall::in_kernel(apic::id()) {
        Machine::halt();
    }
    let Some(mirror) = MIRROR.get() else { Machine::halt() };
    let features = super::enable_paging_features();
    super::enable_user_isolation(&features);
    mirror_boot_cpu(mirror);

    let apic_id = apic::id();
    percpu::init_ap(index, apic_id);
    apic::init_ap(traps::VECTOR_SPURIOUS);
    apic::start_periodic(traps::VECTOR_TIMER, mirror.timer_rate, mirror.timer_hz);

    let me = &CPUS[index];
    me.apic_id.store(apic_id, Ordering::Relaxed);
    me.online.store(true, Ordering::SeqCst);
    ONLINE.fetch_add(1, Ordering::SeqCst);
    // A shootdown computed its targets before we were online did not reach
    // us: drop whatever the TLB picked up since CR3 was loaded.
    flush_all_local();
    START_ONLINE_TSC.store(cpu::rdtsc(), Ordering::Release);
    if START_STATE.compare_exchange(RUNNING, ONLINE_STATE, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Abandoned while setting up: the boot CPU stops us with INIT.
        me.online.store(false, Ordering::SeqCst);
        ONLINE.fetch_sub(1, Ordering::SeqCst);
        Machine::halt();
    }
    let _ = apic::send_fixed(mirror.bsp_apic_id, VECTOR_RESCHEDULE);
    let main = *AP_MAIN.lock();
    main(index)
}

/// Copies the boot CPU's control registers and MSRs (beyond what
/// `enable_paging_features`/`enable_user_isolation` set) to this AP, and
/// warns if CR4 still differs.
fn mirror_boot_cpu(mirror: &Mirror) {
    // SAFETY: the APs are the same CPU model as the boot CPU (CPUID is
    // checked where it matters: PAT), so every bit set there is valid here;
    // paging stays on with the same tables. LA57 cannot change in long mode
    // and is left alone.
    unsafe {
        cpu::write_cr0(mirror.cr0);
        let cr4 = (mirror.cr4 & !CR4_LA57) | (cpu::read_cr4() & CR4_LA57);
        cpu::write_cr4(cr4);
        if let Some(xcr0) = mirror.xcr0 {
            xsetbv0(xcr0);
        }
        cpu::wrmsr(cpu::MSR_EFER, mirror.efer);
        if let Some(pat) = mirror.pat {
            cpu::wrmsr(MSR_PAT, pat);
        }
        for (msr, value) in mirror.syscall_msrs {
            cpu::wrmsr(msr, value);
        }
    }
    let cr4 = cpu::read_cr4();
    if cr4 != mirror.cr4 {
        kwarn!("smp: cpu with APIC id {}: CR4 {cr4:#x} differs from the boot CPU's {:#x}", apic::id(), mirror.cr4);
    }
}

/// The default [`AP_MAIN`]: halt until an interrupt, forever; between
/// halts run work queued for this CPU (`run_idle_work`).
pub fn ap_idle(index: usize) -> ! {
    loop {
        cpu::disable_interrupts();
        if !run_idle_work(index) {
            // STI;HLT: a wake-up IPI arriving after the check is taken
            // right after STI and ends the halt.
            Machine::wait_for_interrupt();
        }
    }
}

/// Runs the work queued for CPU `index`'s idle loop, if any; returns
/// whether there was some. Idle loops call it before they halt, holding no
/// lock (the scheduler's idle loop too, so the self-test's
/// concurrent-shootdown part can run on every CPU); the work runs in thread
/// context with interrupts enabled, as in the halt that would follow.
pub fn run_idle_work(index: usize) -> bool {
    let cpu = &CPUS[index];
    cpu.serves_idle_work.store(true, Ordering::Relaxed);
    let work = cpu.idle_work.lock().take();
    if let Some(f) = work {
        with_interrupts(|| f(index));
    }
    work.is_some()
}

/// Runs `f` with interrupts enabled, then restores the previous state. Only
/// for callers that hold no lock an interrupt handler takes (idle loops,
/// the self-test), as around a halt.
fn with_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let masked = InterruptsOff::new();
    // SAFETY: the CPU is online (IDT and LAPIC set up) and the caller holds
    // no lock an interrupt handler takes (this function's contract).
    unsafe { cpu::enable_interrupts() };
    let result = f();
    cpu::disable_interrupts();
    drop(masked);
    result
}

/// Queues `f` for the idle loop of AP `index` and wakes it.
fn run_on_idle(index: usize, f: fn(usize)) -> Result<(), SmpError> {
    if index == 0 || !is_online(index) || !CPUS[index].serves_idle_work.load(Ordering::Relaxed) {
        return Err(SmpError::NotOnline(index));
    }
    *CPUS[index].idle_work.lock() = Some(f);
    send_reschedule(index)
}

// ---------------------------------------------------------------------------
// In-guest self-test (called by the kernel test build)

static PROBE_ADDR: AtomicU64 = AtomicU64::new(0);
static PROBE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static RAN_ON: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
static STORM_DONE: AtomicUsize = AtomicUsize::new(0);
const STORM_ROUNDS: usize = 50;

fn probe(index: usize) {
    let addr = PROBE_ADDR.load(Ordering::Acquire);
    // SAFETY: the self-test keeps the page at `addr` mapped (kernel stack
    // slot SELF_TEST_SLOT) while it calls this; it is plain RAM.
    let value = unsafe { (addr as *const u64).read_volatile() };
    PROBE[index].store(value, Ordering::Release);
}

fn record_apic_id(index: usize) {
    RAN_ON[index].store(apic::id(), Ordering::Release);
}

fn storm(index: usize) {
    let addr = PROBE_ADDR.load(Ordering::Acquire);
    for round in 0..STORM_ROUNDS {
        if round % 2 == 0 {
            shootdown(addr..addr + PAGE_SIZE);
        } else {
            shootdown(addr..addr + 64 * PAGE_SIZE);
        }
    }
    STORM_DONE.fetch_add(1, Ordering::AcqRel);
    if index != 0 {
        // The boot CPU halts until everybody is done: wake it.
        let _ = send_reschedule(0);
    }
}

/// Checks SMP on the running machine: every enabled CPU of the MADT is
/// online (up to MAX_CPUS), reschedule IPIs reach each CPU, cross-CPU calls
/// run on the CPU asked for, a TLB shootdown after a real remapping makes
/// every CPU see the new page, and all CPUs shooting down at once finish.
/// For the kernel test build (`ktest`); prints detail lines `ktest:   ...`.
pub fn self_test() -> Result<(), String> {
    exchange_test()?;
    let online = online_cpus();
    let expected = EXPECTED.load(Ordering::Relaxed).max(1);
    if online != expected {
        return Err(format!("{online} cpus online, the MADT lists {expected} (MAX_CPUS {MAX_CPUS})"));
    }
    Ok(())
}

/// The IPI, call and shootdown part of the self-test, on the CPUs online.
fn exchange_test() -> Result<(), String> {
    let second = tsc_rate();
    let cpus: Vec<usize> = online_indices().collect();
    let me = this_cpu();

    // Reschedule IPIs reach every CPU, this one included.
    for &c in &cpus {
        let before = ipi_counts(c).reschedule;
        send_reschedule(c).map_err(|e| format!("reschedule IPI to cpu {c}: {e}"))?;
        if !wait_until(second, || ipi_counts(c).reschedule > before) {
            return Err(format!("cpu {c} did not take a reschedule IPI within 1 s"));
        }
    }

    // Cross-CPU calls run on the CPU asked for.
    for &c in &cpus {
        RAN_ON[c].store(u32::MAX, Ordering::Release);
        call_on(c, record_apic_id).map_err(|e| format!("call on cpu {c}: {e}"))?;
        let want = CPUS[c].apic_id.load(Ordering::Relaxed);
        let got = RAN_ON[c].load(Ordering::Acquire);
        if got != want {
            return Err(format!("call on cpu {c} ran on APIC id {got:#x}, expected {want:#x}"));
        }
    }

    // Shootdown after a real remapping: every CPU caches the old page, the
    // page is remapped to other frames, and after the shootdown all see the
    // new contents.
    let top = memory::map_kernel_stack(SELF_TEST_SLOT).map_err(|e| format!("cannot map a test page: {e}"))?;
    let addr = top - PAGE_SIZE;
    PROBE_ADDR.store(addr, Ordering::Release);
    const OLD: u64 = 0x01D0_01D0_01D0_01D0;
    const NEW: u64 = 0x0E30_0E30_0E30_0E30;
    // SAFETY: `addr` is the top page of the stack slot just mapped RW.
    unsafe { (addr as *mut u64).write_volatile(OLD) };
    let others = call_on_others(probe);
    let all_old = cpus.iter().filter(|&&c| c != me).all(|&c| PROBE[c].load(Ordering::Acquire) == OLD);
    if others != cpus.len() - 1 || !all_old {
        release_test_page();
        return Err(format!("probe of the old page reached {others} cpus or read wrong values"));
    }
    memory::unmap_kernel_stack(SELF_TEST_SLOT);
    let top2 = memory::map_kernel_stack(SELF_TEST_SLOT).map_err(|e| format!("cannot remap the test page: {e}"))?;
    debug_assert_eq!(top, top2);
    // SAFETY: as above, the fresh mapping of the same page.
    unsafe { (addr as *mut u64).write_volatile(NEW) };
    // How many CPUs still see the old frame through a stale TLB entry:
    // shows that the check below can fail.
    call_on_others(probe);
    let stale = cpus.iter().filter(|&&c| c != me && PROBE[c].load(Ordering::Acquire) == OLD).count();
    let served: Vec<u64> = cpus.iter().map(|&c| ipi_counts(c).requests_served).collect();
    let start = cpu::rdtsc();
    shootdown(addr..addr + PAGE_SIZE);
    let shootdown_tsc = cpu::rdtsc().wrapping_sub(start);
    for (&c, before) in cpus.iter().zip(&served) {
        if c != me && ipi_counts(c).requests_served <= *before {
            release_test_page();
            return Err(format!("cpu {c} did not serve the shootdown"));
        }
    }
    call_on_others(probe);
    let wrong: Vec<usize> = cpus.iter().copied().filter(|&c| c != me && PROBE[c].load(Ordering::Acquire) != NEW).collect();
    if !wrong.is_empty() {
        release_test_page();
        return Err(format!("after the shootdown cpus {wrong:?} still read the old page"));
    }
    kprintln!(
        "ktest:   {} cpus: IPIs and calls delivered; shootdown of a remapped page {shootdown_tsc} tsc, \
         {stale} cpu(s) saw the stale page before it",
        cpus.len()
    );

    // Every CPU shoots down at the same time, STORM_ROUNDS times each.
    let idle_loops_serve = cpus.iter().filter(|&&c| c != me).all(|&c| CPUS[c].serves_idle_work.load(Ordering::Relaxed));
    if cpus.len() > 1 && !idle_loops_serve {
        kprintln!("ktest:   concurrent shootdowns skipped: the APs' idle loops do not call smp::run_idle_work");
    }
    if cpus.len() > 1 && idle_loops_serve {
        STORM_DONE.store(0, Ordering::Release);
        let before: u64 = cpus.iter().map(|&c| ipi_counts(c).requests_served).sum();
        for &c in cpus.iter().filter(|&&c| c != me) {
            run_on_idle(c, storm).map_err(|e| format!("cannot start the storm on cpu {c}: {e}"))?;
        }
        let start = cpu::rdtsc();
        with_interrupts(|| storm(me));
        let all = cpus.len();
        let finished = wait_until(5 * second, || STORM_DONE.load(Ordering::Acquire) == all);
        let served: u64 = cpus.iter().map(|&c| ipi_counts(c).requests_served).sum::<u64>() - before;
        if !finished {
            release_test_page();
            return Err(format!(
                "concurrent shootdowns: only {} of {all} cpus finished within 5 s (deadlock?)",
                STORM_DONE.load(Ordering::Acquire)
            ));
        }
        let want = (all * (all - 1) * STORM_ROUNDS) as u64;
        if served < want {
            release_test_page();
            return Err(format!("concurrent shootdowns: {served} requests served, expected {want}"));
        }
        kprintln!(
            "ktest:   {all} cpus x {STORM_ROUNDS} concurrent shootdowns: {served} requests served in {} tsc",
            cpu::rdtsc().wrapping_sub(start)
        );
    }
    release_test_page();
    Ok(())
}

/// Unmaps the self-test page (frees its frames) and drops every CPU's
/// translation of it.
fn release_test_page() {
    memory::unmap_kernel_stack(SELF_TEST_SLOT);
    let top = layout::stack_top(SELF_TEST_SLOT);
    shootdown(top - layout::stack_size()..top);
}
