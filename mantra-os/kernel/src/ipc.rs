//! Channels, ports, timers and deadlines.
//!
//! Channels copy messages (bytes plus moved capabilities) into a bounded
//! queue on the peer endpoint; receivers block on the endpoint. A reply to a
//! thread blocked in `channel_call` puts it at the front of the run queue,
//! so the scheduler switches straight to it (seL4-style direct switch).

use alloc::collections::VecDeque;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mantra_abi::{signals, Error, PortPacket, CHANNEL_QUEUE_LIMIT};
use mantra_kernel::cap::Capability;
use mantra_kernel::signal::{PacketSink, PortQueue, SignalState};
use mantra_kernel::sync::SpinLock;

use crate::object::{self, next_koid, Object, Sink};
use crate::sched;
use crate::task::{park, Thread, ThreadState};

/// A receive a parked thread waits to complete (`Thread::wait`): the
/// endpoint and the caller's buffers, as CHANNEL_RECEIVE took them.
pub struct ReceiveWait {
    pub endpoint: Arc<Endpoint>,
    /// Where the message goes: the caller's buffers, or (None: a
    /// short-message receive) its registers, at most SHORT_MESSAGE_BYTES
    /// and no handles.
    pub buffers: Option<ReceiveBuffers>,
    /// ns of CLOCK_GET; u64::MAX: none.
    pub deadline: u64,
}

/// The caller's buffers of a receive.
pub struct ReceiveBuffers {
    pub bytes: u64,
    pub capacity: usize,
    pub handles: u64,
    pub handle_capacity: usize,
    /// User address of the ReadSizes to fill.
    pub sizes: u64,
}

impl ReceiveBuffers {
    /// The read half of a CHANNEL_CALL / CHANNEL_REPLY_RECEIVE, with the
    /// ReadSizes at `sizes`.
    pub fn of_call(args: &mantra_abi::CallArgs, sizes: u64) -> Self {
        Self {
            bytes: args.read_bytes,
            capacity: args.read_capacity as usize,
            handles: args.read_handles,
            handle_capacity: args.read_handle_capacity as usize,
            sizes,
        }
    }
}

impl ReceiveWait {
    /// The receive of CHANNEL_CALL_SHORT / CHANNEL_REPLY_RECEIVE_SHORT.
    #[inline(always)]
    pub fn registers(endpoint: Arc<Endpoint>) -> Self {
        Self { endpoint, buffers: None, deadline: u64::MAX }
    }

    /// Bytes the receive takes at most.
    pub fn capacity(&self) -> usize {
        self.buffers.as_ref().map_or(mantra_abi::SHORT_MESSAGE_BYTES, |b| b.capacity)
    }
}

/// A message in flight.
pub struct Message {
    pub bytes: Vec<u8>,
    pub handles: Vec<Capability<Object>>,
}

struct EndpointState {
    queue: VecDeque<Message>,
    peer_closed: bool,
    /// Threads blocked receiving on this endpoint (CHANNEL_RECEIVE/CALL).
    receivers: Receivers,
}

/// The receivers of an endpoint, oldest first. A call/reply endpoint has
/// one receiver at a time (the server, or the caller waiting for its
/// answer): the first sits in its own slot, so the IPC fast path's
/// push and pop are a few instructions, not a ring-buffer update.
#[derive(Default)]
struct Receivers {
    first: Option<Arc<Thread>>,
    /// The others, in order; empty while `first` is None.
    rest: VecDeque<Arc<Thread>>,
}

impl Receivers {
    #[inline(always)]
    fn front(&self) -> Option<&Arc<Thread>> {
        self.first.as_ref()
    }

    #[inline(always)]
    fn pop_front(&mut self) -> Option<Arc<Thread>> {
        let first = self.first.take();
        if !self.rest.is_empty() {
            self.first = self.rest.pop_front();
        }
        first
    }

    /// `pop_front` when `front` was just seen Some (under the same lock):
    /// no second test of it.
    #[inline(always)]
    fn pop_known_front(&mut self) -> Arc<Thread> {
        let first = self.first.take();
        if !self.rest.is_empty() {
            self.first = self.rest.pop_front();
        }
        // SAFETY: the caller saw `first` Some, under the lock it still
        // holds (the `&mut self`), and nothing took it since.
        unsafe { first.unwrap_unchecked() }
    }

    #[inline(always)]
    fn push_back(&mut self, thread: Arc<Thread>) {
        if self.first.is_none() {
            self.first = Some(thread);
        } else {
            self.push_back_rest(thread);
        }
    }

    /// `push_back` behind others: out of the fast path's line.
    #[cold]
    #[inline(never)]
    fn push_back_rest(&mut self, thread: Arc<Thread>) {
        self.rest.push_back(thread);
    }

    fn push_front(&mut self, thread: Arc<Thread>) {
        if let Some(old) = self.first.replace(thread) {
            self.rest.push_front(old);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Arc<Thread>) -> bool) {
        self.rest.retain(|t| keep(t));
        if self.first.as_ref().is_some_and(|t| !keep(t)) {
            self.first = self.rest.pop_front();
        }
    }

    /// Takes every receiver, oldest first.
    #[allow(clippy::type_complexity)]
    fn take_all(
        &mut self,
    ) -> core::iter::Chain<core::option::IntoIter<Arc<Thread>>, alloc::collections::vec_deque::IntoIter<Arc<Thread>>> {
        self.first.take().into_iter().chain(core::mem::take(&mut self.rest))
    }
}

/// One end of a channel.
pub struct Endpoint {
    pub koid: u64,
    /// The other end; set once, when the pair is made.
    peer: Weak<Endpoint>,
    /// The address of the other end (where `peer` points, never dangling:
    /// the pair is made together), for the IPC fast path, which reaches
    /// the peer under this end's lock without upgrading `peer`.
    peer_addr: usize,
    state: SpinLock<EndpointState>,
    pub signals: SpinLock<SignalState<Sink>>,
    /// Someone asked for port packets on this end's signals
    /// (OBJECT_WAIT_ASYNC): messages must go through the queue, which
    /// raises them, so the fast path stays off (for good: a cheap check).
    pub observed: AtomicBool,
}

impl Endpoint {
    pub fn pair() -> (Arc<Endpoint>, Arc<Endpoint>) {
        let make = |peer: Weak<Endpoint>| Endpoint {
            koid: next_koid(),
            peer_addr: peer.as_ptr().expose_provenance(),
            peer,
            state: SpinLock::new(EndpointState { queue: VecDeque::new(), peer_closed: false, receivers: Receivers::default() }),
            signals: SpinLock::new(SignalState::new(signals::WRITABLE)),
            observed: AtomicBool::new(false),
        };
        // Each end points at the other from the start: `b` is made inside
        // the construction of `a`, from `a`'s weak reference.
        let mut second = None;
        let first = Arc::new_cyclic(|weak_first| {
            let b = Arc::new(make(weak_first.clone()));
            let a = make(Arc::downgrade(&b));
            second = Some(b);
            a
        });
        (first, second.expect("made with the first end"))
    }

    pub fn peer(&self) -> Option<Arc<Endpoint>> {
        self.peer.upgrade()
    }

    /// Queues `message` on the peer. On error the message comes back so its
    /// capabilities can be returned to the sender.
    pub fn write(&self, message: Message) -> Result<(), (Error, Message)> {
        let Some(peer) = self.peer() else {
            return Err((Error::PeerClosed, message));
        };
        peer.enqueue(message)
    }

    fn enqueue(&self, message: Message) -> Result<(), (Error, Message)> {
        let receiver = {
            let mut state = self.state.lock();
            if state.queue.len() >= CHANNEL_QUEUE_LIMIT {
                return Err((Error::ShouldWait, message));
            }
            state.queue.push_back(message);
            state.receivers.pop_front()
        };
        let receiver = match receiver {
            Some(thread) if thread.state() == ThreadState::Dead => self.next_live_receiver(thread),
            other => other,
        };
        object::raise(&self.signals, signals::READABLE);
        if let Some(thread) = receiver {
            sched::wake(&thread, true);
        }
        Ok(())
    }

    /// Receivers of killed processes never read: drops the receive of
    /// `dead`, taken off the list (outside the lock: it holds an endpoint),
    /// and of every other dead one first in line; returns the first live
    /// receiver, taken off the list too.
    #[cold]
    #[inline(never)]
    fn next_live_receiver(&self, mut dead: Arc<Thread>) -> Option<Arc<Thread>> {
        loop {
            dead.abandon_receive();
            match self.state.lock().receivers.pop_front() {
                Some(thread) if thread.state() == ThreadState::Dead => dead = thread,
                other => return other,
            }
        }
    }

    /// Takes the oldest message if it fits. `Err(BufferTooSmall)` leaves it
    /// queued and reports its sizes through `needed`.
    pub fn read(&self, byte_capacity: usize, handle_capacity: usize, needed: &mut (usize, usize)) -> Result<Message, Error> {
        let mut state = self.state.lock();
        let Some(front) = state.queue.front() else {
            return Err(if state.peer_closed { Error::PeerClosed } else { Error::ShouldWait });
        };
        *needed = (front.bytes.len(), front.handles.len());
        if front.bytes.len() > byte_capacity || front.handles.len() > handle_capacity {
            return Err(Error::BufferTooSmall);
        }
        let message = state.queue.pop_front().expect("checked non-empty");
        let empty = state.queue.is_empty();
        drop(state);
        if empty {
            object::update(&self.signals, signals::READABLE, 0);
        }
        Ok(message)
    }

    /// Sizes (bytes, handles) of the oldest message, without taking it.
    pub fn peek_sizes(&self) -> Result<(usize, usize), Error> {
        let state = self.state.lock();
        match state.queue.front() {
            Some(m) => Ok((m.bytes.len(), m.handles.len())),
            None if state.peer_closed => Err(Error::PeerClosed),
            None => Err(Error::ShouldWait),
        }
    }

    /// Registers `thread` (the caller, about to park) as a receiver unless
    /// a message is already there or the peer is gone (then false: retry
    /// the read). Sets the thread Blocked under the endpoint's lock, so a
    /// writer that finds it here always wakes it.
    pub fn park_receiver(&self, thread: &Arc<Thread>) -> bool {
        let mut state = self.state.lock();
        if !state.queue.is_empty() || state.peer_closed {
            return false;
        }
        thread.set_state(ThreadState::Blocked);
        state.receivers.push_back(thread.clone());
        true
    }

    /// Forgets a receiver that woke for another reason (its deadline).
    pub fn remove_receiver(&self, thread: &Arc<Thread>) {
        self.state.lock().receivers.retain(|t| !Arc::ptr_eq(t, thread));
    }

    /// IPC fast path: takes the receiver a message of `len` bytes (no
    /// handles) can be handed to directly: the queue is empty, nobody
    /// observes this end's signals, and the first receiver is parked with
    /// room for it. The caller then owns the receiver's wake-up, and its
    /// kernel stack (`on_cpu` is set for the caller).
    pub fn claim_parked_receiver(&self, len: usize) -> Option<Arc<Thread>> {
        let mut state = self.state.lock();
        if !state.queue.is_empty() {
            return None;
        }
        let receiver = state.receivers.front()?;
        if receiver.on_cpu.swap(true, Ordering::Acquire) {
            return None; // running, or its CPU is still switching away from it
        }
        // SAFETY: we hold its on_cpu flag, and it is Blocked (checked first).
        let fits = receiver.state() == ThreadState::Blocked
            && receiver.park.load(Ordering::Acquire) != park::NONE
            && unsafe { receiver.wait() }.as_ref().is_some_and(|w| w.capacity() >= len)
            && !self.observed.load(Ordering::Acquire);
        if !fits {
            receiver.on_cpu.store(false, Ordering::Release);
            return None;
        }
        state.receivers.pop_front()
    }

    /// The short-message fast path's one step (fastpath.rs): under this
    /// end's lock and the peer's (each taken only if free: never a wait, so
    /// no lock order; a busy one sends the call down the general path), takes the first receiver parked on the peer and parks
    /// `me` (the running thread, of class `my_class`, its `wait` already in
    /// place) as a receiver here (on CPU `cpu`, this one). Applies only when nothing is queued
    /// either way, the peer is open and unobserved, and the peer's first
    /// receiver is parked in a register receive, of a live process, and
    /// may take this CPU from `me` (`sched::may_take_cpu`). Returns
    /// the receiver, its `on_cpu` flag now held by the caller, who owns its
    /// wake-up; or gives `me` back, having changed nothing.
    #[inline(always)]
    pub fn exchange_with_peer(&self, me: Arc<Thread>, cpu: usize, my_class: u32) -> Result<Arc<Thread>, Arc<Thread>> {
        let Some(mut mine) = self.state.try_lock() else { return Err(me) };
        if !mine.queue.is_empty() || mine.peer_closed {
            return Err(me);
        }
        // SAFETY: `peer_addr` is where our Weak `peer` points (set with
        // it at construction, never dangling). The peer's allocation lives
        // as long as that Weak (self is alive: the caller holds it). Its
        // value is alive too: the peer's Drop first marks this end
        // peer_closed under this end's lock, which we hold and under which
        // peer_closed is false, so its fields are dropped only after we
        // unlock.
        let peer = unsafe { &*core::ptr::with_exposed_provenance::<Endpoint>(self.peer_addr) };
        let Some(mut theirs) = peer.state.try_lock() else { return Err(me) };
        if !theirs.queue.is_empty() || peer.observed.load(Ordering::Acquire) {
            return Err(me);
        }
        let Some(receiver) = theirs.receivers.front() else { return Err(me) };
        if receiver.on_cpu.swap(true, Ordering::Acquire) {
            return Err(me); // running, or its CPU is still switching away from it
        }
        // Parked in a register receive on this CPU (Blocked, or killed:
        // then its process is dead), which stays so: only the holder of its
        // on_cpu flag runs it (Thread::park).
        let fits = receiver.park.load(Ordering::Acquire) == park::registers_on(cpu)
            && !receiver.process().is_dead()
            && sched::may_take_cpu(cpu, my_class, receiver);
        if !fits {
            receiver.on_cpu.store(false, Ordering::Release);
            return Err(me);
        }
        let receiver = theirs.receivers.pop_known_front();
        drop(theirs);
        me.set_state(ThreadState::Blocked);
        // Its register receive is in place (the caller's), and it runs on
        // `cpu`; seen by others only once its on_cpu flag drops (Release).
        me.park.store(park::registers_on(cpu), Ordering::Release);
        mine.receivers.push_back(me);
        Ok(receiver)
    }

    /// Gives back a receiver taken by `claim_parked_receiver` and not used:
    /// first in line again, or woken when a message came in meanwhile.
    pub fn return_receiver(&self, thread: Arc<Thread>) {
        thread.on_cpu.store(false, Ordering::Release);
        let mut state = self.state.lock();
        if state.queue.is_empty() && !state.peer_closed {
            state.receivers.push_front(thread);
        } else {
            drop(state);
            sched::wake(&thread, true);
        }
    }

    /// Queues a message the fast path could not deliver (the receiver's
    /// buffer was bad) at the front, over the queue limit if need be: it was
    /// sent while the queue was empty, and is never lost.
    pub fn requeue_front(&self, message: Message) {
        self.state.lock().queue.push_front(message);
        object::raise(&self.signals, signals::READABLE);
    }

    fn peer_gone(&self) {
        let receivers = {
            let mut state = self.state.lock();
            state.peer_closed = true;
            state.receivers.take_all()
        };
        object::update(&self.signals, signals::WRITABLE, signals::PEER_CLOSED);
        for thread in receivers {
            sched::wake(&thread, false);
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(peer) = self.peer() {
            peer.peer_gone();
        }
    }
}

/// A port: a queue of packets and the threads waiting for them.
pub struct Port {
    pub koid: u64,
    queue: SpinLock<PortQueue>,
    waiters: SpinLock<VecDeque<Arc<Thread>>>,
}

impl Port {
    pub fn new() -> Self {
        Self { koid: next_koid(), queue: SpinLock::new(PortQueue::new()), waiters: SpinLock::new(VecDeque::new()) }
    }

    pub fn wake_waiters(&self) {
        let waiters = core::mem::take(&mut *self.waiters.lock());
        for thread in waiters {
            sched::wake(&thread, true);
        }
    }

    /// Takes queued packets without blocking (kernel tests: no thread).
    #[cfg(feature = "ktest")]
    pub fn take_packets(&self, out: &mut [PortPacket]) -> usize {
        self.queue.lock().pop_many(out)
    }

    /// Takes queued packets, blocking until there are some or `deadline`
    /// (ns) passes.
    pub fn wait(&self, deadline: u64, out: &mut [PortPacket]) -> Result<usize, Error> {
        let thread = sched::current().ok_or(Error::BadState)?;
        loop {
            let taken = self.queue.lock().pop_many(out);
            if taken > 0 {
                return Ok(taken);
            }
            if clock_ns() >= deadline {
                return Err(Error::TimedOut);
            }
            thread.set_state(ThreadState::Blocked);
            self.waiters.lock().push_back(thread.clone());
            add_timeout(deadline, &thread);
            sched::block();
            self.waiters.lock().retain(|t| !Arc::ptr_eq(t, &thread));
        }
    }
}

impl PacketSink for Port {
    fn reserve(&self) -> Result<(), Error> {
        self.queue.lock().reserve()
    }
    fn unreserve(&self) {
        self.queue.lock().unreserve()
    }
    fn deliver(&self, packet: PortPacket) -> bool {
        self.queue.lock().push_reserved(packet)
    }
}

/// A one-shot timer raising TIMER_FIRED at its deadline.
pub struct Timer {
    pub koid: u64,
    deadline: AtomicU64,
    pub signals: SpinLock<SignalState<Sink>>,
}

static ARMED_TIMERS: SpinLock<Vec<Weak<Timer>>> = SpinLock::new(Vec::new());

impl Timer {
    pub fn new() -> Self {
        Self { koid: next_koid(), deadline: AtomicU64::new(0), signals: SpinLock::new(SignalState::new(0)) }
    }

    /// Arms (deadline > 0) or cancels (0) the timer; clears TIMER_FIRED.
    pub fn set(self: &Arc<Self>, deadline: u64) {
        self.deadline.store(deadline, Ordering::Relaxed);
        object::update(&self.signals, signals::TIMER_FIRED, 0);
        if deadline != 0 {
            let mut armed = ARMED_TIMERS.lock();
            if !armed.iter().any(|t| t.as_ptr() == Arc::as_ptr(self)) {
                armed.push(Arc::downgrade(self));
            }
        }
    }
}

/// Threads sleeping until a deadline (port_wait, channel_call).
static TIMEOUTS: SpinLock<Vec<(u64, Weak<Thread>)>> = SpinLock::new(Vec::new());

pub fn add_timeout(deadline: u64, thread: &Arc<Thread>) {
    if deadline != u64::MAX {
        TIMEOUTS.lock().push((deadline, Arc::downgrade(thread)));
    }
}

/// Held by the CPU running the deadlines; another CPU ticking meanwhile
/// skips them (they are not due twice).
static DEADLINES_RUNNING: SpinLock<()> = SpinLock::new(());

/// Called on every CPU's timer tick (interrupts off): fires due timers and
/// wakes threads whose deadline passed, unless another CPU is doing so.
pub fn on_tick() {
    let Some(_running) = DEADLINES_RUNNING.try_lock() else { return };
    crate::conio::poll();
    let now = clock_ns();
    let mut due: Vec<Arc<Timer>> = Vec::new();
    ARMED_TIMERS.lock().retain(|weak| {
        let Some(timer) = weak.upgrade() else { return false };
        let deadline = timer.deadline.load(Ordering::Relaxed);
        if deadline == 0 {
            return false;
        }
        if deadline <= now {
            timer.deadline.store(0, Ordering::Relaxed);
            due.push(timer);
            return false;
        }
        true
    });
    for timer in due {
        object::raise(&timer.signals, signals::TIMER_FIRED);
    }
    let mut woken: Vec<Arc<Thread>> = Vec::new();
    TIMEOUTS.lock().retain(|(deadline, weak)| {
        let Some(thread) = weak.upgrade() else { return false };
        if *deadline <= now {
            woken.push(thread);
            false
        } else {
            thread.state() == ThreadState::Blocked
        }
    });
    for thread in woken {
        sched::wake(&thread, false);
    }
}

/// TSC ticks per second, set at timer calibration.
pub static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

pub fn set_clock(boot_tsc: u64, tsc_hz: u64) {
    BOOT_TSC.store(boot_tsc, Ordering::Relaxed);
    TSC_HZ.store(tsc_hz.max(1), Ordering::Relaxed);
}

/// Nanoseconds since boot (monotonic).
pub fn clock_ns() -> u64 {
    use crate::arch::{Arch, Machine};
    let ticks = Machine::timestamp().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((ticks as u128 * 1_000_000_000) / TSC_HZ.load(Ordering::Relaxed) as u128) as u64
}
