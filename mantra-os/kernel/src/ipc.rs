//! Channels, ports, timers and deadlines.
//!
//! Channels copy messages (bytes plus moved capabilities) into a bounded
//! queue on the peer endpoint; receivers block on the endpoint. A reply to a
//! thread blocked in `channel_call` puts it at the front of the run queue,
//! so the scheduler switches straight to it (seL4-style direct switch).

use alloc::collections::VecDeque;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use mantra_abi::{signals, Error, PortPacket, CHANNEL_QUEUE_LIMIT};
use mantra_kernel::cap::Capability;
use mantra_kernel::signal::{PacketSink, PortQueue, SignalState};
use mantra_kernel::sync::SpinLock;

use crate::object::{self, next_koid, Object, Sink};
use crate::sched;
use crate::task::{Thread, ThreadState};

/// A message in flight.
pub struct Message {
    pub bytes: Vec<u8>,
    pub handles: Vec<Capability<Object>>,
}

struct EndpointState {
    queue: VecDeque<Message>,
    peer_closed: bool,
    /// Threads blocked receiving on this endpoint (CHANNEL_RECEIVE/CALL).
    receivers: VecDeque<Arc<Thread>>,
}

/// One end of a channel.
pub struct Endpoint {
    pub koid: u64,
    peer: SpinLock<Weak<Endpoint>>,
    state: SpinLock<EndpointState>,
    pub signals: SpinLock<SignalState<Sink>>,
}

impl Endpoint {
    pub fn pair() -> (Arc<Endpoint>, Arc<Endpoint>) {
        let make = || {
            Arc::new(Endpoint {
                koid: next_koid(),
                peer: SpinLock::new(Weak::new()),
                state: SpinLock::new(EndpointState { queue: VecDeque::new(), peer_closed: false, receivers: VecDeque::new() }),
                signals: SpinLock::new(SignalState::new(signals::WRITABLE)),
            })
        };
        let (a, b) = (make(), make());
        *a.peer.lock() = Arc::downgrade(&b);
        *b.peer.lock() = Arc::downgrade(&a);
        (a, b)
    }

    pub fn peer(&self) -> Option<Arc<Endpoint>> {
        self.peer.lock().upgrade()
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
        object::raise(&self.signals, signals::READABLE);
        if let Some(thread) = receiver {
            sched::wake(&thread, true);
        }
        Ok(())
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

    /// Registers the current thread as a receiver and blocks until a
    /// message arrives, the peer goes away or `deadline` (ns) passes, unless
    /// a message is already there or the peer is gone.
    pub fn wait_readable(&self, thread: &Arc<Thread>, deadline: u64) {
        {
            let mut state = self.state.lock();
            if !state.queue.is_empty() || state.peer_closed {
                return;
            }
            thread.set_state(ThreadState::Blocked);
            state.receivers.push_back(thread.clone());
        }
        add_timeout(deadline, thread);
        sched::block();
        // Woken by the deadline (or spuriously): leave the receiver list.
        self.state.lock().receivers.retain(|t| !Arc::ptr_eq(t, thread));
    }

    fn peer_gone(&self) {
        let receivers = {
            let mut state = self.state.lock();
            state.peer_closed = true;
            core::mem::take(&mut state.receivers)
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

fn add_timeout(deadline: u64, thread: &Arc<Thread>) {
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
