//! Threads and processes.
//!
//! A process owns an address space, a handle table and its threads; it
//! starts with zero handles and holds only what its creator gives it. A
//! thread owns a guarded kernel stack; its user registers live in the
//! TrapFrame at the top of that stack while it is in the kernel.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use mantra_abi::{signals, Error, Priority};
use mantra_kernel::cap::Capability;
use mantra_kernel::handle::HandleTable;
use mantra_kernel::signal::SignalState;
use mantra_kernel::sync::SpinLock;

use crate::arch::x86_64::{context, layout};
use crate::memory;
use crate::object::{next_koid, Object};
use crate::space::Space;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ThreadState {
    Created = 0,
    Runnable = 1,
    Running = 2,
    Blocked = 3,
    Dead = 4,
}

pub struct Thread {
    pub koid: u64,
    process: Arc<Process>,
    state: AtomicU8,
    priority: AtomicU32,
    /// The QUEUE_HINTS bits of the classes above `priority` (set with
    /// it): a queued thread of one of them outranks this thread.
    classes_above: AtomicU8,
    /// u64::MAX: any CPU.
    affinity: AtomicU64,
    /// The CPU it last ran on: wake-ups queue it there (warm caches, and a
    /// thread keeps to its CPU unless the scheduler steals it).
    last_cpu: AtomicU64,
    kstack_slot: u64,
    /// `layout::stack_top(kstack_slot)`, computed once (the IPC fast path
    /// reads it on every hand-off).
    kstack_top: u64,
    /// The root table of its process's address space (`Space::root`, fixed
    /// for the space's life, which the process, and so the thread, keeps):
    /// what a switch to it loads into CR3, one load away.
    space_root: u64,
    /// Saved kernel RSP while switched out.
    context: UnsafeCell<u64>,
    pub signals: SpinLock<SignalState<crate::object::Sink>>,
    started: AtomicBool,
    /// A CPU runs on (or is still leaving) this thread's kernel stack: no
    /// other CPU may switch to it until the flag drops (see sched).
    pub on_cpu: AtomicBool,
    /// Whether the thread is parked, and how ([`park`]): switched out at
    /// the user boundary, its kernel stack holds nothing but its TrapFrame,
    /// and `wait` says what it waits for. The scheduler resumes it through
    /// `syscall::resume_parked`; the IPC fast paths may instead complete
    /// its receive and return straight to user mode. Set (Release) before
    /// its on_cpu flag drops by whoever parks it (the fast paths,
    /// `sched::park_current`) and cleared whenever it is switched to again
    /// (`sched::hand_off`, `switch_to`, `reschedule`), so while it reads
    /// `park::REGISTERS_ON + c` the thread is parked, Blocked (or its process
    /// was killed), waits in a register receive and last ran on CPU `c`:
    /// the register fast path's one check of all four (made holding its
    /// on_cpu flag, whose Acquire orders it). One word, so parking and
    /// resuming is one store.
    pub park: AtomicU64,
    /// The receive a parked thread waits to complete (see `wait`).
    wait: UnsafeCell<Option<crate::ipc::ReceiveWait>>,
}

// SAFETY: `context` is only written by the CPU switching the thread out and
// read by the CPU switching it in, which the scheduler lock orders.
unsafe impl Sync for Thread {}
// SAFETY: as above; every other field is atomic or locked.
unsafe impl Send for Thread {}

/// The values of [`Thread::park`].
pub mod park {
    /// Not parked: running, runnable, or switched out inside the kernel.
    pub const NONE: u64 = 0;
    /// Parked in a receive into buffers.
    pub const BUFFERS: u64 = 1;
    /// `REGISTERS_ON + c`: parked in a register receive, last ran on CPU `c`.
    pub const REGISTERS_ON: u64 = 2;

    /// The value of a thread parked in a register receive on CPU `cpu`.
    #[inline(always)]
    pub const fn registers_on(cpu: usize) -> u64 {
        REGISTERS_ON + cpu as u64
    }
}

/// Kernel stack slots for threads: slot 0 is the boot stack, 1 the ktest
/// stack, 2..32 the application processors'.
const FIRST_THREAD_SLOT: u64 = 32;
static STACK_SLOTS: SpinLock<Vec<u64>> = SpinLock::new(Vec::new());
static NEXT_SLOT: AtomicU64 = AtomicU64::new(FIRST_THREAD_SLOT);

fn alloc_stack_slot() -> Result<u64, Error> {
    if let Some(slot) = STACK_SLOTS.lock().pop() {
        return Ok(slot);
    }
    let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    if slot >= layout::STACK_SLOTS {
        return Err(Error::NoResources);
    }
    Ok(slot)
}

impl Thread {
    /// A thread of `process`, not yet started.
    pub fn new(process: &Arc<Process>) -> Result<Arc<Self>, Error> {
        let slot = alloc_stack_slot()?;
        if memory::map_kernel_stack(slot).is_err() {
            STACK_SLOTS.lock().push(slot);
            return Err(Error::NoMemory);
        }
        let thread = Arc::new(Self {
            koid: next_koid(),
            process: process.clone(),
            state: AtomicU8::new(ThreadState::Created as u8),
            priority: AtomicU32::new(Priority::Normal as u32),
            classes_above: AtomicU8::new(classes_above(Priority::Normal as u32)),
            affinity: AtomicU64::new(u64::MAX),
            last_cpu: AtomicU64::new(u64::MAX),
            kstack_slot: slot,
            kstack_top: layout::stack_top(slot),
            space_root: process.space().root(),
            context: UnsafeCell::new(0),
            signals: SpinLock::new(SignalState::new(0)),
            started: AtomicBool::new(false),
            on_cpu: AtomicBool::new(false),
            park: AtomicU64::new(park::NONE),
            wait: UnsafeCell::new(None),
        });
        process.threads.lock().push(thread.clone());
        Ok(thread)
    }

    /// Prepares the first entry into user mode and makes it runnable.
    pub fn start(self: &Arc<Self>, entry: u64, stack_top: u64, arg0: u64, arg1: u64) -> Result<(), Error> {
        if self.started.swap(true, Ordering::AcqRel) {
            return Err(Error::BadState);
        }
        // SAFETY: the thread's kernel stack was mapped in `new` and nothing
        // runs on it yet.
        let rsp = unsafe { context::prepare_user_entry(self.kernel_stack_top(), entry, stack_top, arg0, arg1) };
        // SAFETY: not running, so nobody else reads the context.
        unsafe { *self.context.get() = rsp };
        crate::sched::make_runnable(self.clone(), false);
        Ok(())
    }

    /// The receive the thread waits to complete while parked.
    ///
    /// # Safety
    /// Only the thread itself (running, in the kernel) or a CPU that holds
    /// its `on_cpu` flag while it is Blocked (the IPC fast path, after
    /// claiming it from a wait list) may call this: they exclude each other.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn wait(&self) -> &mut Option<crate::ipc::ReceiveWait> {
        // SAFETY: exclusive by the caller's contract.
        unsafe { &mut *self.wait.get() }
    }

    /// Drops the receive a thread of a killed process (Dead) waits to
    /// complete, and takes it off the endpoint's list: the wait holds the
    /// endpoint, which must close with its last handle (the peer sees
    /// PEER_CLOSED) even while something else (a thread handle) keeps the
    /// dead thread. Does nothing while a CPU runs the thread or is still
    /// leaving it (its `on_cpu` flag): that CPU's next switch away from a
    /// Dead thread calls this again (`sched::finish_switch`), and so does a
    /// writer that finds it on an endpoint's list.
    ///
    /// Contract: takes the endpoint's lock; call with no lock held.
    pub fn abandon_receive(self: &Arc<Self>) {
        if self.state() != ThreadState::Dead || self.on_cpu.swap(true, Ordering::Acquire) {
            return;
        }
        // SAFETY: we hold its on_cpu flag and it is Dead: never run again,
        // nobody else touches its wait.
        let wait = unsafe { self.wait() }.take();
        self.on_cpu.store(false, Ordering::Release);
        if let Some(wait) = wait {
            wait.endpoint.remove_receiver(self);
        }
    }

    pub fn process(&self) -> &Arc<Process> {
        &self.process
    }
    #[inline]
    pub fn kernel_stack_top(&self) -> u64 {
        self.kstack_top
    }
    /// The root table of its address space (see `space::activate_root`).
    #[inline]
    pub fn space_root(&self) -> u64 {
        self.space_root
    }
    /// Where the thread's user registers are saved while it is in the kernel.
    #[inline]
    pub fn trap_frame(&self) -> *mut crate::arch::x86_64::TrapFrame {
        (self.kernel_stack_top() - core::mem::size_of::<crate::arch::x86_64::TrapFrame>() as u64) as *mut _
    }
    pub fn context(&self) -> u64 {
        // SAFETY: read by the scheduler while the thread is switched out.
        unsafe { *self.context.get() }
    }
    pub fn context_slot(&self) -> *mut u64 {
        self.context.get()
    }
    pub fn state(&self) -> ThreadState {
        match self.state.load(Ordering::Acquire) {
            0 => ThreadState::Created,
            1 => ThreadState::Runnable,
            2 => ThreadState::Running,
            3 => ThreadState::Blocked,
            _ => ThreadState::Dead,
        }
    }
    pub fn set_state(&self, state: ThreadState) {
        self.state.store(state as u8, Ordering::Release);
    }
    pub fn priority(&self) -> Priority {
        match self.priority.load(Ordering::Relaxed) {
            0 => Priority::Idle,
            2 => Priority::Interactive,
            3 => Priority::RealTime,
            _ => Priority::Normal,
        }
    }
    /// The priority as its class number (Priority as u32), without the
    /// enum conversion: for comparisons on the IPC fast path.
    #[inline]
    pub fn priority_class(&self) -> u32 {
        self.priority.load(Ordering::Relaxed)
    }
    /// The QUEUE_HINTS bits of the classes above its priority (for the
    /// IPC fast path's "no queued thread outranks it": one AND). Read
    /// without the priority: a concurrent `set_priority` may pair it with
    /// the old class for a moment, which, as with a stale hint bit, only
    /// sends one call down the general path or hands off once before a
    /// just-raised thread.
    #[inline]
    pub fn classes_above(&self) -> u8 {
        self.classes_above.load(Ordering::Relaxed)
    }
    pub fn set_priority(&self, priority: Priority, cpu: Option<usize>) {
        self.priority.store(priority as u32, Ordering::Relaxed);
        self.classes_above.store(classes_above(priority as u32), Ordering::Relaxed);
        self.affinity.store(cpu.map_or(u64::MAX, |c| c as u64), Ordering::Relaxed);
    }
    pub fn last_cpu(&self) -> Option<usize> {
        let c = self.last_cpu.load(Ordering::Relaxed);
        (c != u64::MAX).then_some(c as usize)
    }
    pub fn set_last_cpu(&self, cpu: usize) {
        self.last_cpu.store(cpu as u64, Ordering::Relaxed);
    }
    /// The affinity as stored: the CPU, or u64::MAX for any.
    #[inline]
    pub fn affinity_raw(&self) -> u64 {
        self.affinity.load(Ordering::Relaxed)
    }
    pub fn affinity(&self) -> Option<usize> {
        let a = self.affinity.load(Ordering::Relaxed);
        (a != u64::MAX).then_some(a as usize)
    }
}

/// The QUEUE_HINTS bits (bit c: class c queued) of the classes above `class`.
const fn classes_above(class: u32) -> u8 {
    if class >= 7 {
        0
    } else {
        (0xFFu8 << (class + 1)) as u8
    }
}

impl Drop for Thread {
    /// Waits until no CPU runs on the thread's kernel stack any more: the
    /// register fast path gives a thread's Arc away while still on its
    /// stack (`sched::hand_off_taken`), so its last Arc may go (its process
    /// killed, the wait list it is on emptied) on another CPU a moment
    /// before that CPU leaves. No CPU drops a thread whose stack it runs on
    /// or whose `on_cpu` flag it holds: the flag is always dropped first.
    fn drop(&mut self) {
        while self.on_cpu.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        memory::unmap_kernel_stack(self.kstack_slot);
        STACK_SLOTS.lock().push(self.kstack_slot);
    }
}

pub struct Process {
    pub koid: u64,
    pub name: String,
    space: Arc<Space>,
    pub handles: SpinLock<HandleTable<Object>>,
    threads: SpinLock<Vec<Arc<Thread>>>,
    /// Set once: the exit code (faults: -(1000 + vector)).
    exit_code: SpinLock<Option<i64>>,
    /// `exit_code` is set (read without the lock on hot paths).
    dead: AtomicBool,
    pub signals: SpinLock<SignalState<crate::object::Sink>>,
}

impl Process {
    pub fn new(name: &str) -> Result<Arc<Self>, Error> {
        let space = Space::new()?;
        Ok(Arc::new(Self {
            koid: next_koid(),
            name: String::from(name),
            space,
            handles: SpinLock::new(HandleTable::new()),
            threads: SpinLock::new(Vec::new()),
            exit_code: SpinLock::new(None),
            dead: AtomicBool::new(false),
            signals: SpinLock::new(SignalState::new(0)),
        }))
    }

    pub fn space(&self) -> &Arc<Space> {
        &self.space
    }

    pub fn exit_code(&self) -> Option<i64> {
        *self.exit_code.lock()
    }

    /// Inserts a root capability for `object` into this process's table.
    pub fn give(&self, object: Object, rights: u32) -> Result<mantra_abi::Handle, Error> {
        self.handles.lock().insert(Capability::new(object, rights))
    }

    /// Ends the process: records the code, stops its threads, closes its
    /// handles and raises TERMINATED. Idempotent. The caller's thread (if it
    /// belongs to this process) must then leave through `sched::exit_current`.
    pub fn terminate(self: &Arc<Self>, code: i64) {
        {
            let mut exit = self.exit_code.lock();
            if exit.is_some() {
                return;
            }
            *exit = Some(code);
            self.dead.store(true, Ordering::Release);
        }
        let threads: Vec<Arc<Thread>> = core::mem::take(&mut *self.threads.lock());
        for thread in &threads {
            if thread.state() != ThreadState::Running {
                thread.set_state(ThreadState::Dead);
                thread.abandon_receive();
            }
        }
        // Drop the capabilities outside the table's lock: closing a channel
        // end signals its peer, which may take other locks.
        let caps = self.handles.lock().drain();
        drop(caps);
        crate::object::raise(&self.signals, signals::TERMINATED);
        drop(threads);
    }

    /// Forgets an exiting thread; true when it was the last one.
    pub fn remove_thread(&self, thread: &Arc<Thread>) -> bool {
        let mut threads = self.threads.lock();
        threads.retain(|t| !Arc::ptr_eq(t, thread));
        threads.is_empty()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}
