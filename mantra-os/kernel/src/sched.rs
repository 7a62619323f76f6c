//! Scheduling: per-CPU run queues with priority classes behind a policy
//! trait, the idle loop, blocking and wake-ups, and the context switch.
//!
//! The kernel runs with interrupts off (SYSCALL masks IF, interrupt gates
//! clear it), so a CPU is only ever switched at the explicit points here:
//! a blocking call, a yield, an exit, or a timer tick that interrupted user
//! mode or the idle loop. All scheduler state sits behind one lock.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use mantra_abi::Priority;
use mantra_kernel::sync::SpinLock;

use crate::arch::x86_64::{context, percpu};
use crate::arch::{Arch, Machine};
use crate::task::{park, Thread, ThreadState};

/// Upper bound on CPUs the scheduler tracks (Kconfig MAX_CPUS is capped here).
pub const MAX_CPUS: usize = 64;
const CLASSES: usize = 4;
/// Timer ticks a thread runs before a same-class thread gets the CPU.
const TIME_SLICE_TICKS: u32 = 2;

/// A scheduling policy: research mode swaps this (DESIGN.md, MantraLab).
pub trait Policy: Send {
    fn name(&self) -> &'static str;
    /// Makes `thread` runnable on (preferably) `cpu`; returns the CPU whose
    /// queue took it.
    fn enqueue(&mut self, cpu: usize, thread: Arc<Thread>, front: bool) -> usize;
    /// The next thread for `cpu`, if any (may steal from other CPUs).
    fn pick(&mut self, cpu: usize) -> Option<Arc<Thread>>;
    /// Whether a runnable thread on `cpu` should preempt one of `class`.
    fn should_preempt(&self, cpu: usize, class: Priority, slice_used: u32) -> bool;
    /// Runnable threads queued on `cpu`.
    fn queued(&self, cpu: usize) -> usize;
}

/// Per CPU, bit c set while threads of class c are queued there. Every
/// policy keeps it current under the scheduler lock; the IPC fast path
/// reads it without the lock (a stale bit only makes it take the general
/// path, or hand off once before a just-queued thread).
pub static QUEUE_HINTS: [core::sync::atomic::AtomicU8; MAX_CPUS] =
    [const { core::sync::atomic::AtomicU8::new(0) }; MAX_CPUS];

/// Per-CPU queues, one per priority class; real-time preempts at once,
/// equal classes round-robin by time slice; an idle CPU steals from the
/// busiest one (load balancing).
pub struct PriorityRoundRobin {
    queues: Vec<[VecDeque<Arc<Thread>>; CLASSES]>,
}

impl PriorityRoundRobin {
    pub fn new(cpus: usize) -> Self {
        Self { queues: (0..cpus).map(|_| Default::default()).collect() }
    }

    fn best_class(&self, cpu: usize) -> Option<usize> {
        let mask = QUEUE_HINTS.get(cpu)?.load(Ordering::Relaxed);
        (mask != 0).then(|| 7 - mask.leading_zeros() as usize)
    }

    /// Keeps QUEUE_HINTS in step with one queue after a change.
    fn note(&mut self, cpu: usize, class: usize) {
        let bit = 1u8 << class;
        if self.queues[cpu][class].is_empty() {
            QUEUE_HINTS[cpu].fetch_and(!bit, Ordering::Release);
        } else {
            QUEUE_HINTS[cpu].fetch_or(bit, Ordering::Release);
        }
    }
}

impl Policy for PriorityRoundRobin {
    fn name(&self) -> &'static str {
        "priority round-robin, per-CPU queues, work stealing"
    }

    fn enqueue(&mut self, cpu: usize, thread: Arc<Thread>, front: bool) -> usize {
        let cpu = thread.affinity().or(thread.last_cpu()).unwrap_or(cpu).min(self.queues.len() - 1);
        let class = thread.priority() as usize;
        let queue = &mut self.queues[cpu][class];
        if front {
            queue.push_front(thread);
        } else {
            queue.push_back(thread);
        }
        self.note(cpu, class);
        cpu
    }

    fn pick(&mut self, cpu: usize) -> Option<Arc<Thread>> {
        if let Some(class) = self.best_class(cpu) {
            let thread = self.queues[cpu][class].pop_front();
            self.note(cpu, class);
            return thread;
        }
        // Steal from the busiest other CPU when it has a backlog (a single
        // woken thread waits for its own CPU, which an IPI wakes), highest
        // class first, skipping threads pinned elsewhere.
        let victim = (0..self.queues.len())
            .filter(|&other| other != cpu)
            .max_by_key(|&other| self.queued(other))
            .filter(|&other| self.queued(other) > 1)?;
        for class in (0..CLASSES).rev() {
            let queue = &mut self.queues[victim][class];
            if let Some(pos) = queue.iter().position(|t| t.affinity().is_none()) {
                let thread = queue.remove(pos);
                self.note(victim, class);
                return thread;
            }
        }
        None
    }

    fn should_preempt(&self, cpu: usize, class: Priority, slice_used: u32) -> bool {
        match self.best_class(cpu) {
            Some(best) if best > class as usize => true,
            Some(best) if best == class as usize => slice_used >= TIME_SLICE_TICKS && class != Priority::RealTime,
            _ => false,
        }
    }

    fn queued(&self, cpu: usize) -> usize {
        self.queues.get(cpu).map_or(0, |q| q.iter().map(VecDeque::len).sum())
    }
}

struct State {
    policy: Option<alloc::boxed::Box<dyn Policy>>,
}

static STATE: SpinLock<State> = SpinLock::new(State { policy: None });

/// A field of a CPU's slot that only that CPU touches, with interrupts
/// off (as all kernel code runs, but the idle halt, which holds no access
/// across it): no lock needed.
struct CpuCell<T>(core::cell::UnsafeCell<T>);

// SAFETY: each CpuCell is only accessed by the CPU owning its slot (see
// the type's contract), so no two CPUs ever share access.
unsafe impl<T: Send> Sync for CpuCell<T> {}

impl<T> CpuCell<T> {
    const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Runs `f` on the value. Contract: called on the owning CPU only, and
    /// `f` does not reach this cell again.
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: only the owning CPU, with interrupts off, accesses the
        // cell, and not reentrantly (contract above): the access is exclusive.
        f(unsafe { &mut *self.0.get() })
    }
}

/// What each CPU is running. `None` = the idle loop on the CPU's boot stack.
/// One cache line each (and a power-of-two size: a slot's address is one
/// shift from the CPU index).
#[repr(align(64))]
struct CpuSlot {
    current: CpuCell<Option<Arc<Thread>>>,
    /// Saved RSP of the idle context while a thread runs.
    idle_rsp: AtomicU64,
    /// Ticks the current thread has run since it was picked.
    slice: AtomicU64,
    /// A thread that exited on this CPU, freed after the switch away.
    reap: CpuCell<Option<Arc<Thread>>>,
    /// The thread this CPU is switching away from: its `on_cpu` flag drops
    /// once the switch is complete (in `finish_switch`, on the new stack).
    leaving: CpuCell<Option<Arc<Thread>>>,
    /// The thread the IPC fast path left last (its `on_cpu` flag already
    /// dropped): held until this CPU is off its stack for sure, then freed
    /// at the next hand-off or when the CPU idles.
    released: CpuCell<Option<Arc<Thread>>>,
}

const EMPTY_SLOT: CpuSlot = CpuSlot {
    current: CpuCell::new(None),
    idle_rsp: AtomicU64::new(0),
    slice: AtomicU64::new(0),
    reap: CpuCell::new(None),
    leaving: CpuCell::new(None),
    released: CpuCell::new(None),
};
static CPUS: [CpuSlot; MAX_CPUS] = [EMPTY_SLOT; MAX_CPUS];

/// Context switches performed (all CPUs), but those of the register
/// fast path (not counted). `hand_off` leaves the count to its caller.
pub static SWITCHES: AtomicU64 = AtomicU64::new(0);

pub fn init(cpus: usize) {
    STATE.lock().policy = Some(alloc::boxed::Box::new(PriorityRoundRobin::new(cpus.clamp(1, MAX_CPUS))));
}

pub fn policy_name() -> &'static str {
    STATE.lock().policy.as_ref().map_or("none", |p| p.name())
}

fn cpu() -> usize {
    percpu::current().index
}

/// This CPU's index for the IPC fast path: masked into MAX_CPUS (which it
/// always is), so the slot lookups need no bounds checks.
#[inline(always)]
pub fn this_cpu() -> usize {
    percpu::current_index() & (MAX_CPUS - 1)
}

/// The thread running on this CPU (None in the idle loop).
pub fn current() -> Option<Arc<Thread>> {
    CPUS[cpu()].current.with(|c| c.clone())
}

/// Makes a thread runnable. `front`: run it next (IPI wake-ups switch
/// directly to the woken thread).
pub fn make_runnable(thread: Arc<Thread>, front: bool) {
    thread.set_state(ThreadState::Runnable);
    let here = cpu();
    let target = STATE.lock().policy.as_mut().map(|policy| policy.enqueue(here, thread, front));
    // Another CPU's queue: wake it from its halt now, not at its next tick.
    if let Some(cpu) = target.filter(|&cpu| cpu != here) {
        let _ = crate::arch::x86_64::smp::send_reschedule(cpu);
    }
}

/// Wakes a blocked thread (no-op for any other state).
pub fn wake(thread: &Arc<Thread>, front: bool) {
    if thread.state() == ThreadState::Blocked {
        make_runnable(thread.clone(), front);
    }
}

/// Entry of an application processor once it is online: SYSCALL set up,
/// then the same idle loop as the boot CPU (it runs and steals threads).
pub fn ap_main(_cpu: usize) -> ! {
    crate::arch::x86_64::syscall::init();
    idle_loop()
}

/// The idle loop of a CPU: runs threads while there are any, halts otherwise.
pub fn idle_loop() -> ! {
    // The kernel runs with interrupts off everywhere but in the halt below:
    // an interrupt handler may take the scheduler's locks.
    crate::arch::x86_64::cpu::disable_interrupts();
    loop {
        if let Some(next) = pick() {
            switch_from_idle(next);
        }
        reap();
        // The thread the IPC fast path left last, if any: freed before the
        // CPU idles (not on every switch: that path stays short).
        let released = CPUS[cpu()].released.with(Option::take);
        drop(released);
        // Cross-CPU work queued for idle CPUs (the SMP self-test's
        // concurrent shootdowns) runs here, with interrupts on.
        if crate::arch::x86_64::smp::run_idle_work(cpu()) {
            crate::arch::x86_64::cpu::disable_interrupts();
            continue;
        }
        Machine::wait_for_interrupt();
        crate::arch::x86_64::cpu::disable_interrupts();
    }
}

/// The next thread to run; threads of killed processes (Dead while queued)
/// are dropped here, once the scheduler's lock is released (a thread's
/// last Arc may wait for a CPU still leaving its stack: `Thread`'s Drop).
fn pick() -> Option<Arc<Thread>> {
    let cpu = cpu();
    loop {
        let thread = STATE.lock().policy.as_mut()?.pick(cpu)?;
        if thread.state() != ThreadState::Dead {
            return Some(thread);
        }
        abandon_receive_of(&thread);
        drop(thread);
    }
}

/// Called on every timer tick with interrupts off: preempts the current
/// thread when the policy says so. `in_idle`: the tick interrupted the idle
/// loop (which picks threads itself).
pub fn tick(from_user: bool) {
    let cpu = cpu();
    let slot = &CPUS[cpu];
    let Some(current) = slot.current.with(|c| c.clone()) else { return };
    let used = slot.slice.fetch_add(1, Ordering::Relaxed) as u32 + 1;
    if !from_user {
        return;
    }
    // Its process was killed from another CPU while it ran in user mode.
    if current.process().is_dead() {
        drop(current);
        exit_current();
    }
    let preempt = STATE.lock().policy.as_ref().is_some_and(|p| p.should_preempt(cpu, current.priority(), used));
    if preempt {
        yield_now();
    }
}

/// Puts the current thread at the back of its queue and runs another.
pub fn yield_now() {
    let Some(current) = current() else { return };
    make_runnable(current, false);
    reschedule();
}

/// Blocks the current thread until `wake`. The caller has registered it
/// on a wait list and set its state to Blocked under that list's lock.
pub fn block() {
    reschedule();
}

/// Parks the current thread: it registered as a receiver (state Blocked)
/// and holds nothing on its kernel stack but its TrapFrame, so it is never
/// switched back into this call: the scheduler resumes it through
/// `syscall::resume_parked`, or the IPC fast path completes its receive.
/// Returns only when the thread was woken before it could leave the CPU;
/// the caller then completes the receive itself.
pub fn park_current() {
    if let Some(current) = current() {
        // SAFETY: `current` is the running thread (its own wait).
        let registers = unsafe { current.wait() }.as_ref().is_some_and(|w| w.buffers.is_none());
        // Ordered before the on_cpu flag drops (Release, finish_switch).
        current.park.store(if registers { park::registers_on(this_cpu()) } else { park::BUFFERS }, Ordering::Release);
    }
    reschedule();
}

/// IPC fast path: whether this CPU may switch from the current thread
/// straight to `target` (a woken receiver) instead of queueing it: the
/// target is pinned to or last ran on this CPU (a direct switch never
/// migrates a thread: a call to a server on another CPU wakes it there) and
/// no queued thread outranks it.
#[inline]
pub fn may_hand_off(current: &Thread, target: &Thread) -> bool {
    may_hand_off_class(this_cpu(), current.priority_class(), target)
}

/// `may_hand_off` on CPU `cpu` (this one, `this_cpu`) for a current thread
/// of class `current_class`.
#[inline(always)]
pub fn may_hand_off_class(cpu: usize, current_class: u32, target: &Thread) -> bool {
    // Homed here: it last ran here (a thread pinned here that last ran
    // elsewhere takes the general path).
    target.last_cpu() == Some(cpu) && may_take_cpu(cpu, current_class, target)
}

/// `may_hand_off_class` of a target known to have last run on CPU `cpu`
/// (a register-parked one: `Thread::park`): it is pinned there or
/// not at all, not of a lower class than the current thread's, and no
/// queued class outranks it.
#[inline(always)]
pub fn may_take_cpu(cpu: usize, current_class: u32, target: &Thread) -> bool {
    let pinned = target.affinity_raw();
    target.priority_class() >= current_class
        && (pinned == cpu as u64 || pinned == u64::MAX)
        && QUEUE_HINTS[cpu].load(Ordering::Acquire) & target.classes_above() == 0
}

/// IPC fast path: makes `target` (claimed from a wait list, `on_cpu` set,
/// last run on this CPU: `may_hand_off` or its `park` said so, so
/// its `last_cpu` needs no update) the current thread of this CPU (`cpu`,
/// from `this_cpu`), in place of
/// the current one, which the caller has parked. The caller drops the
/// `on_cpu` flag of the thread left once off its stack
/// (`context::enter_frame`); the thread itself is kept alive until this
/// CPU's next hand-off or idle (`released`).
///
/// Contract: interrupts off, called from a thread; touches CR3 (loads the
/// target's space).
#[inline(always)]
pub fn hand_off(cpu: usize, target: Arc<Thread>) {
    let slot = &CPUS[cpu];
    let target = install(cpu, target);
    let left = slot.current.with(|c| c.replace(target));
    // Dropping the thread released before is fine: this CPU left its
    // stack then.
    let released = slot.released.with(|r| core::mem::replace(r, left));
    if let Some(thread) = released {
        drop(thread);
    }
}

/// The register fast path's `hand_off`: the same, for a CPU whose current
/// thread the caller took out of its slot (`take_current`) and parked,
/// giving its Arc away (onto a wait list). Nothing is released: the
/// thread left stays alive until this CPU is off its stack because a
/// thread's last Arc waits for its `on_cpu` flag to drop (`Thread`'s Drop).
///
/// Contract: as `hand_off`; the current slot is empty (`take_current`).
#[inline(always)]
pub fn hand_off_taken(cpu: usize, target: Arc<Thread>) {
    let target = install(cpu, target);
    CPUS[cpu].current.with(|c| {
        debug_assert!(c.is_none(), "hand_off_taken with a current thread");
        // SAFETY: `c` is a valid, exclusive reference, and holds None (the
        // caller took the thread out): there is nothing to drop.
        unsafe { core::ptr::write(c, Some(target)) }
    });
}

/// Makes `target` ready to run as this CPU's current thread (for the
/// hand-offs): not parked, Running, its kernel stack and space loaded.
/// The time slice goes on: the hand-offs pass the CPU along a call chain,
/// which the tick preempts as one once it has used the slice (were it
/// restarted on every hand-off, two threads calling each other would keep
/// the CPU from every other thread of their class).
#[inline(always)]
fn install(cpu: usize, target: Arc<Thread>) -> Arc<Thread> {
    // It resumes here, from its TrapFrame: no longer parked.
    target.park.store(park::NONE, Ordering::Relaxed);
    target.set_state(ThreadState::Running);
    debug_assert_eq!(target.last_cpu(), Some(cpu));
    percpu::current().set_kernel_stack(target.kernel_stack_top());
    // SAFETY: the root of the target's space, which its process keeps
    // alive, and the target (this CPU's current thread from here on) keeps
    // its process.
    unsafe { crate::space::activate_root(target.space_root()) };
    target
}

/// Takes the running thread's Arc out of CPU `cpu`'s slot (this CPU,
/// `this_cpu`) for the register fast path, which either gives it away
/// with `hand_off_taken` or puts it back with `put_back_current` before
/// anything else looks at the slot. None in the idle loop.
///
/// Contract: interrupts off; no `current()` until it is given back or
/// replaced.
#[inline(always)]
pub fn take_current(cpu: usize) -> Option<Arc<Thread>> {
    CPUS[cpu].current.with(Option::take)
}

/// Gives back the thread `take_current` took (the fast path did not apply).
#[inline(always)]
pub fn put_back_current(cpu: usize, thread: Arc<Thread>) {
    CPUS[cpu].current.with(|c| {
        debug_assert!(c.is_none(), "put_back_current over a current thread");
        // SAFETY: as in hand_off_taken: the slot holds None.
        unsafe { core::ptr::write(c, Some(thread)) }
    });
}

/// Ends the current thread: never returns.
pub fn exit_current() -> ! {
    let current = current().expect("exit from a thread");
    current.set_state(ThreadState::Dead);
    CPUS[cpu()].reap.with(|r| *r = Some(current));
    reschedule();
    unreachable!("a dead thread was scheduled");
}

/// Leaves the current thread (whose state the caller set) for the next
/// runnable one, or for the idle loop.
fn reschedule() {
    let cpu = cpu();
    let slot = &CPUS[cpu];
    let prev = slot.current.with(|c| c.clone()).expect("reschedule from a thread");
    match pick() {
        Some(next) if Arc::ptr_eq(&next, &prev) => {
            next.park.store(park::NONE, Ordering::Relaxed);
            next.set_state(ThreadState::Running);
        }
        Some(next) => {
            let save = prev.context_slot();
            switch_to(next, save, Some(prev));
        }
        None => {
            let save = prev.context_slot();
            slot.leaving.with(|l| *l = Some(prev));
            slot.current.with(|c| *c = None);
            // The idle loop runs on the kernel's own tables: the space just
            // left may be freed (its process ended) while this CPU idles.
            crate::memory::activate_kernel_space();
            SWITCHES.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the idle context was saved by switch_from_idle on this
            // CPU's boot stack, which stays mapped.
            unsafe { context::switch(save, slot.idle_rsp.load(Ordering::Relaxed)) };
            finish_switch();
        }
    }
    reap();
}

fn switch_from_idle(next: Arc<Thread>) {
    let slot = &CPUS[cpu()];
    let save = slot.idle_rsp.as_ptr();
    switch_to(next, save, None);
    reap();
}

/// Installs `next` as current (kernel stack, address space) and switches;
/// `prev` is the thread being left (None: the idle loop).
///
/// Contract: interrupts off. Waits while another CPU is still leaving
/// `next`'s stack (a thread woken before its old CPU finished switching).
fn switch_to(next: Arc<Thread>, save: *mut u64, prev: Option<Arc<Thread>>) {
    while next.on_cpu.swap(true, Ordering::Acquire) {
        core::hint::spin_loop();
    }
    let slot = &CPUS[cpu()];
    slot.leaving.with(|l| *l = prev);
    next.set_state(ThreadState::Running);
    next.set_last_cpu(cpu());
    slot.slice.store(0, Ordering::Relaxed);
    percpu::current().set_kernel_stack(next.kernel_stack_top());
    next.process().space().activate();
    let load = if next.park.swap(park::NONE, Ordering::Acquire) != park::NONE {
        // SAFETY: a parked thread's stack holds only its TrapFrame, and no
        // CPU runs on it (we hold its on_cpu flag).
        unsafe { context::prepare_parked_resume(next.kernel_stack_top()) }
    } else {
        next.context()
    };
    slot.current.with(|c| *c = Some(next));
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `load` is a context saved by a previous switch or prepared for
    // a new thread; its kernel stack is mapped while the thread lives, and
    // `save` points into the previous thread (kept alive by the `leaving`
    // slot until finish_switch) or this CPU's idle slot.
    unsafe { context::switch(save, load) };
    finish_switch();
}

/// Completes a switch on the new stack: the thread this CPU left may now
/// be run elsewhere. Called after every switch, and first thing by a new
/// thread (context.rs).
pub fn finish_switch() {
    let left = CPUS[cpu()].leaving.with(Option::take);
    if let Some(thread) = left {
        thread.on_cpu.store(false, Ordering::Release);
        // Killed while it registered a receive (Thread::abandon_receive
        // could not have it then).
        if thread.state() == ThreadState::Dead {
            abandon_receive_of(&thread);
        }
    }
}

/// `Thread::abandon_receive`, out of the switch's line.
#[cold]
#[inline(never)]
fn abandon_receive_of(thread: &Arc<Thread>) {
    thread.abandon_receive();
}

/// Frees a thread that exited on this CPU, now that we are off its stack.
fn reap() {
    let dead = CPUS[cpu()].reap.with(Option::take);
    drop(dead);
}
