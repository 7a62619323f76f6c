//! Signals, one-shot observers and port packet queues.
//!
//! Every waitable object keeps a [`SignalState`]: the set of its active
//! signals (`abi::signals` bits) and the observers registered on it with
//! `object_wait_async`. An [`Observer`] asks for one packet `{key,
//! observed}` on a port when any of its watched signals is active; it is
//! one-shot: it fires once and is removed. Observation is level-triggered:
//! registering an observer while a watched signal is already active fires it
//! at once. So at any moment no remaining observer watches an active
//! signal.
//!
//! A port is, for this module, a [`PacketSink`]; [`PortQueue`] is the
//! bounded packet queue a port object keeps (behind a lock), and
//! `SpinLock<PortQueue>` is a ready-made sink.
//!
//! # No lost packets: reservations
//!
//! A port queue holds at most [`PORT_CAPACITY`] packets. Instead of dropping
//! packets when it is full, a port *reserves* room for every packet it may
//! receive: registering an observer reserves one slot on the port (and fails
//! with [`Error::NoResources`] when queued packets plus reservations already
//! fill the port); firing the observer delivers into the reserved slot, and
//! removing it unfired (cancel, object destroyed) gives the slot back. A
//! delivery can therefore never overflow, and a port's memory is bounded by
//! its capacity.
//!
//! # Waking waiters and locks
//!
//! This module never blocks or wakes threads. [`PacketSink::deliver`]
//! returns whether the caller should wake the threads waiting on the sink
//! (the queue went from empty to non-empty), and the methods that may fire
//! observers take a `wake` callback that receives each such sink. The
//! callback may record the sink and wake after the object's lock is
//! released, or wake at once if the scheduler allows it under that lock.
//!
//! Lock order: an object's lock (around its `SignalState`) comes before a
//! port's lock (taken by the sink's methods). A sink must never call back
//! into an object while holding its own lock.
#![warn(missing_docs)]

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;

use mantra_abi::{Error, PortPacket};

use crate::sync::SpinLock;

/// Packets a port queue holds, counting reserved slots.
pub const PORT_CAPACITY: usize = 1024;

/// Observers one object keeps at most; `add_observer` beyond it fails with
/// [`Error::NoResources`]. Bounds the cost of a raise.
pub const MAX_OBSERVERS: usize = 1024;

/// Where fired observers deliver packets: implemented by the kernel's port
/// object (typically around a `SpinLock<PortQueue>` plus a wait queue).
///
/// Every successful [`PacketSink::reserve`] is followed by exactly one
/// [`PacketSink::deliver`] or one [`PacketSink::unreserve`].
pub trait PacketSink: Send + Sync {
    /// Reserves room for one future packet.
    ///
    /// Errors: [`Error::NoResources`] when queued packets plus reservations
    /// fill the sink; [`Error::NoMemory`] when room cannot be allocated.
    fn reserve(&self) -> Result<(), Error>;

    /// Gives back a reservation that will not be used.
    fn unreserve(&self);

    /// Queues `packet` into a reserved slot (consuming the reservation).
    /// Returns true when the caller should wake the sink's waiters.
    fn deliver(&self, packet: PortPacket) -> bool;

    /// Whether nobody can read the sink any more (its last handle is
    /// closed): observers aimed at it are discarded instead of delivering.
    fn is_closed(&self) -> bool {
        false
    }
}

/// A bounded FIFO of port packets with reservations (see the module docs).
#[derive(Debug)]
pub struct PortQueue {
    packets: VecDeque<PortPacket>,
    /// Slots promised to observers that have not fired yet.
    reserved: usize,
    capacity: usize,
}

impl Default for PortQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl PortQueue {
    /// An empty queue of [`PORT_CAPACITY`] packets; allocates lazily.
    pub const fn new() -> Self {
        Self::with_capacity(PORT_CAPACITY)
    }

    /// An empty queue of `capacity` packets (at least 1).
    pub const fn with_capacity(capacity: usize) -> Self {
        let capacity = if capacity == 0 { 1 } else { capacity };
        Self { packets: VecDeque::new(), reserved: 0, capacity }
    }

    /// Packets queued now.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packet is queued.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Outstanding reservations.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// The most packets plus reservations the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserves room for one packet; after success, [`Self::push_reserved`]
    /// never allocates or fails.
    ///
    /// Errors: [`Error::NoResources`] when packets plus reservations reach
    /// the capacity; [`Error::NoMemory`] when the heap cannot grow the queue.
    pub fn reserve(&mut self) -> Result<(), Error> {
        if self.packets.len() + self.reserved >= self.capacity {
            return Err(Error::NoResources);
        }
        // Room for every queued packet plus every reservation, ours included.
        self.packets.try_reserve(self.reserved + 1).map_err(|_| Error::NoMemory)?;
        self.reserved += 1;
        Ok(())
    }

    /// Gives back one reservation.
    pub fn unreserve(&mut self) {
        debug_assert!(self.reserved > 0, "unreserve without reservation");
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Queues a packet into a reserved slot. Returns whether the queue was
    /// empty before (its waiters should be woken). Without a reservation
    /// (a caller bug) it behaves like [`Self::push`] and drops the packet if
    /// the queue is full.
    pub fn push_reserved(&mut self, packet: PortPacket) -> bool {
        if self.reserved > 0 {
            self.reserved -= 1;
        } else {
            debug_assert!(false, "push_reserved without reservation");
            if self.packets.len() >= self.capacity {
                return false;
            }
        }
        let was_empty = self.packets.is_empty();
        self.packets.push_back(packet);
        was_empty
    }

    /// Queues a packet that had no reservation (e.g. a kernel-originated
    /// event). Returns whether the queue was empty before.
    ///
    /// Errors: [`Error::ShouldWait`] when packets plus reservations fill the
    /// queue (nothing is queued: the caller retries or reports).
    pub fn push(&mut self, packet: PortPacket) -> Result<bool, Error> {
        if self.packets.len() + self.reserved >= self.capacity {
            return Err(Error::ShouldWait);
        }
        let was_empty = self.packets.is_empty();
        self.packets.push_back(packet);
        Ok(was_empty)
    }

    /// Takes the oldest packet.
    pub fn pop(&mut self) -> Option<PortPacket> {
        self.packets.pop_front()
    }

    /// Moves up to `out.len()` of the oldest packets into `out`, in order;
    /// returns how many.
    pub fn pop_many(&mut self, out: &mut [PortPacket]) -> usize {
        let n = out.len().min(self.packets.len());
        for (slot, packet) in out.iter_mut().zip(self.packets.drain(..n)) {
            *slot = packet;
        }
        n
    }
}

/// The ready-made sink: deliveries go straight into the queue, and
/// `deliver` reports whether it was empty (wake the waiters).
impl PacketSink for SpinLock<PortQueue> {
    fn reserve(&self) -> Result<(), Error> {
        self.lock().reserve()
    }
    fn unreserve(&self) {
        self.lock().unreserve()
    }
    fn deliver(&self, packet: PortPacket) -> bool {
        self.lock().push_reserved(packet)
    }
}

/// One pending `object_wait_async`: deliver `{key, observed}` to `sink`
/// when any of `signals` is active. Holds one reservation on the sink,
/// given back when dropped unfired.
pub struct Observer<S: ?Sized + PacketSink = dyn PacketSink> {
    sink: Arc<S>,
    key: u64,
    signals: u32,
    /// Whether we still hold the sink reservation.
    reserved: bool,
}

impl<S: ?Sized + PacketSink> Observer<S> {
    /// The key packets carry.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The watched signals.
    pub fn signals(&self) -> u32 {
        self.signals
    }

    /// The sink packets go to.
    pub fn sink(&self) -> &Arc<S> {
        &self.sink
    }

    /// Delivers the packet for `active`, using the reservation. Returns
    /// whether the sink's waiters should be woken.
    fn fire(&mut self, active: u32) -> bool {
        let packet = PortPacket { key: self.key, observed: active & self.signals, _reserved: 0 };
        self.reserved = false;
        self.sink.deliver(packet)
    }
}

impl<S: ?Sized + PacketSink> Drop for Observer<S> {
    fn drop(&mut self) {
        if self.reserved {
            self.sink.unreserve();
        }
    }
}

/// Whether two sink `Arc`s are the same sink (data pointer only: vtables of
/// the same type may differ between codegen units).
fn same_sink<S: ?Sized>(a: &Arc<S>, b: &Arc<S>) -> bool {
    core::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}

/// An object's signals and observers. Keep it under the object's lock.
pub struct SignalState<S: ?Sized + PacketSink = dyn PacketSink> {
    active: u32,
    observers: Vec<Observer<S>>,
}

impl<S: ?Sized + PacketSink> Default for SignalState<S> {
    fn default() -> Self {
        Self::new(0)
    }
}

impl<S: ?Sized + PacketSink> SignalState<S> {
    /// No observers; `active` signals set (e.g. a fresh channel endpoint is
    /// `WRITABLE`).
    pub const fn new(active: u32) -> Self {
        Self { active, observers: Vec::new() }
    }

    /// The active signals.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Registered (unfired) observers.
    pub fn observer_count(&self) -> usize {
        self.observers.len()
    }

    /// The registered observers.
    pub fn observers(&self) -> &[Observer<S>] {
        &self.observers
    }

    /// Sets `bits` and fires (and removes) every observer that watches an
    /// active signal; `wake` gets each sink whose waiters should be woken.
    /// Observers on closed sinks are discarded. Returns the packets
    /// delivered.
    pub fn raise(&mut self, bits: u32, wake: impl FnMut(&Arc<S>)) -> usize {
        self.update(0, bits, wake)
    }

    /// Clears `bits`; never fires anything.
    pub fn clear(&mut self, bits: u32) {
        self.active &= !bits;
    }

    /// Clears `clear`, then sets `set`, then fires as [`Self::raise`].
    pub fn update(&mut self, clear: u32, set: u32, mut wake: impl FnMut(&Arc<S>)) -> usize {
        self.active = (self.active & !clear) | set;
        let active = self.active;
        if set == 0 {
            return 0;
        }
        let mut delivered = 0;
        // Walk by index: fired observers are swapped out (order among
        // observers is not part of the contract).
        let mut i = 0;
        while i < self.observers.len() {
            let observer = &mut self.observers[i];
            if observer.signals & active != 0 {
                let mut observer = self.observers.swap_remove(i);
                if observer.sink.is_closed() {
                    continue; // dropped: gives the reservation back
                }
                if observer.fire(active) {
                    wake(&observer.sink);
                }
                delivered += 1;
            } else {
                i += 1;
            }
        }
        delivered
    }

    /// `object_wait_async`: one packet `{key, observed}` on `sink` as soon as
    /// any of `signals` is active. If one is active now, the packet is
    /// delivered at once (and `wake` may be called) and `Ok(true)` returned;
    /// otherwise the observer is kept and `Ok(false)` returned.
    ///
    /// Errors, in this order: [`Error::InvalidArgs`] (`signals` is 0);
    /// [`Error::NoResources`] (this object has [`MAX_OBSERVERS`]
    /// observers after discarding those of closed sinks, or the sink has no
    /// room: see [`PacketSink::reserve`]); [`Error::NoMemory`].
    pub fn add_observer(
        &mut self,
        sink: Arc<S>,
        key: u64,
        signals: u32,
        mut wake: impl FnMut(&Arc<S>),
    ) -> Result<bool, Error> {
        if signals == 0 {
            return Err(Error::InvalidArgs);
        }
        let fires_now = self.active & signals != 0;
        if !fires_now && self.observers.len() >= MAX_OBSERVERS {
            self.prune_closed();
            if self.observers.len() >= MAX_OBSERVERS {
                return Err(Error::NoResources);
            }
        }
        if !fires_now {
            self.observers.try_reserve(1).map_err(|_| Error::NoMemory)?;
        }
        sink.reserve()?;
        let mut observer = Observer { sink, key, signals, reserved: true };
        if fires_now {
            if observer.fire(self.active) {
                wake(&observer.sink);
            }
            Ok(true)
        } else {
            self.observers.push(observer);
            Ok(false)
        }
    }

    /// Removes the observers aimed at `sink` with `key` (a cancelled wait);
    /// their reservations are given back. Returns how many.
    pub fn cancel(&mut self, sink: &Arc<S>, key: u64) -> usize {
        self.remove_where(|o| o.key == key && same_sink(&o.sink, sink))
    }

    /// Removes every observer aimed at `sink` (the port is going away).
    pub fn cancel_sink(&mut self, sink: &Arc<S>) -> usize {
        self.remove_where(|o| same_sink(&o.sink, sink))
    }

    /// Removes the observers whose sink [`PacketSink::is_closed`].
    pub fn prune_closed(&mut self) -> usize {
        self.remove_where(|o| o.sink.is_closed())
    }

    /// Removes and returns every observer (e.g. to drop them after the
    /// object's lock is released; dropping gives the reservations back).
    pub fn take_observers(&mut self) -> Vec<Observer<S>> {
        core::mem::take(&mut self.observers)
    }

    fn remove_where(&mut self, mut pred: impl FnMut(&Observer<S>) -> bool) -> usize {
        let before = self.observers.len();
        self.observers.retain(|o| !pred(o));
        before - self.observers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cap::test_rng::Rng;
    use mantra_abi::signals::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    type Port = SpinLock<PortQueue>;

    fn port(capacity: usize) -> Arc<Port> {
        Arc::new(SpinLock::new(PortQueue::with_capacity(capacity)))
    }

    fn drain(p: &Port) -> Vec<PortPacket> {
        let mut out = vec![PortPacket::default(); 4096];
        let n = p.lock().pop_many(&mut out);
        out.truncate(n);
        out
    }

    fn pkt(key: u64, observed: u32) -> PortPacket {
        PortPacket { key, observed, _reserved: 0 }
    }

    #[test]
    fn observer_fires_once_with_the_watched_subset() {
        let p = port(8);
        let mut s: SignalState<Port> = SignalState::new(WRITABLE);
        assert_eq!(s.add_observer(Arc::clone(&p), 42, READABLE | PEER_CLOSED, |_| {}), Ok(false));
        assert_eq!(p.lock().reserved(), 1);
        // Unwatched signal: nothing.
        assert_eq!(s.raise(TIMER_FIRED, |_| panic!("no wake")), 0);
        assert!(p.lock().is_empty());
        let mut woken = 0;
        assert_eq!(s.raise(READABLE, |_| woken += 1), 1);
        assert_eq!(woken, 1);
        // Observed = active & watched (not WRITABLE or TIMER_FIRED).
        assert_eq!(drain(&p), [pkt(42, READABLE)]);
        assert_eq!(p.lock().reserved(), 0);
        assert_eq!(s.observer_count(), 0);
        // One-shot: raising again delivers nothing.
        assert_eq!(s.raise(READABLE | PEER_CLOSED, |_| {}), 0);
        assert!(drain(&p).is_empty());
        assert_eq!(s.active(), WRITABLE | TIMER_FIRED | READABLE | PEER_CLOSED);
    }

    #[test]
    fn adding_while_active_fires_at_once() {
        let p = port(8);
        let mut s: SignalState<Port> = SignalState::new(READABLE | WRITABLE);
        let mut woken = 0;
        assert_eq!(s.add_observer(Arc::clone(&p), 1, WRITABLE | PEER_CLOSED, |_| woken += 1), Ok(true));
        assert_eq!(woken, 1);
        assert_eq!(s.observer_count(), 0);
        assert_eq!(drain(&p), [pkt(1, WRITABLE)]);
        assert_eq!(p.lock().reserved(), 0);
    }

    #[test]
    fn clear_never_fires_and_level_semantics() {
        let p = port(8);
        let mut s: SignalState<Port> = SignalState::new(READABLE);
        s.clear(READABLE);
        assert_eq!(s.active(), 0);
        s.add_observer(Arc::clone(&p), 5, READABLE, |_| {}).unwrap();
        s.clear(READABLE);
        assert!(p.lock().is_empty());
        // update: clear and set at once.
        assert_eq!(s.update(READABLE, WRITABLE, |_| {}), 0);
        assert_eq!(s.active(), WRITABLE);
        assert_eq!(s.update(WRITABLE, READABLE, |_| {}), 1);
        assert_eq!(s.active(), READABLE);
        assert_eq!(drain(&p), [pkt(5, READABLE)]);
    }

    #[test]
    fn wake_only_when_queue_was_empty() {
        let p = port(8);
        let mut s: SignalState<Port> = SignalState::new(0);
        for key in 0..3 {
            s.add_observer(Arc::clone(&p), key, READABLE, |_| {}).unwrap();
        }
        let mut woken = 0;
        assert_eq!(s.raise(READABLE, |_| woken += 1), 3);
        assert_eq!(woken, 1, "only the first delivery finds the queue empty");
        let mut keys: Vec<u64> = drain(&p).iter().map(|p| p.key).collect();
        keys.sort();
        assert_eq!(keys, [0, 1, 2]);
    }

    #[test]
    fn several_ports_and_selective_firing() {
        let (p1, p2) = (port(8), port(8));
        let mut s: SignalState<Port> = SignalState::new(0);
        s.add_observer(Arc::clone(&p1), 1, READABLE, |_| {}).unwrap();
        s.add_observer(Arc::clone(&p2), 2, PEER_CLOSED, |_| {}).unwrap();
        s.add_observer(Arc::clone(&p2), 3, READABLE | PEER_CLOSED, |_| {}).unwrap();
        let mut woken = Vec::new();
        s.raise(READABLE, |sink| woken.push(Arc::as_ptr(sink)));
        assert_eq!(woken.len(), 2);
        assert_eq!(drain(&p1), [pkt(1, READABLE)]);
        assert_eq!(drain(&p2), [pkt(3, READABLE)]);
        assert_eq!(s.observer_count(), 1);
        s.raise(PEER_CLOSED, |_| {});
        assert_eq!(drain(&p2), [pkt(2, PEER_CLOSED)]);
    }

    #[test]
    fn errors_and_reservation_limits() {
        let p = port(2);
        let mut s: SignalState<Port> = SignalState::new(0);
        assert_eq!(s.add_observer(Arc::clone(&p), 0, 0, |_| {}), Err(Error::InvalidArgs));
        s.add_observer(Arc::clone(&p), 1, READABLE, |_| {}).unwrap();
        s.add_observer(Arc::clone(&p), 2, READABLE, |_| {}).unwrap();
        // Port full of reservations: even an immediately firing one fails.
        assert_eq!(s.add_observer(Arc::clone(&p), 3, READABLE, |_| {}), Err(Error::NoResources));
        let mut other: SignalState<Port> = SignalState::new(READABLE);
        assert_eq!(other.add_observer(Arc::clone(&p), 3, READABLE, |_| {}), Err(Error::NoResources));
        assert_eq!(s.observer_count(), 2);
        s.raise(READABLE, |_| {});
        // Two packets queued, still full until read.
        assert_eq!(s.add_observer(Arc::clone(&p), 4, READABLE, |_| {}), Err(Error::NoResources));
        assert_eq!(p.lock().push(pkt(9, 1)), Err(Error::ShouldWait));
        assert!(p.lock().pop().is_some());
        assert_eq!(s.add_observer(Arc::clone(&p), 4, READABLE, |_| {}), Ok(true));
        assert_eq!(p.lock().len(), 2);
    }

    #[test]
    fn observer_count_is_bounded_per_object() {
        let p = port(MAX_OBSERVERS + 10);
        let mut s: SignalState<Port> = SignalState::new(0);
        for k in 0..MAX_OBSERVERS as u64 {
            s.add_observer(Arc::clone(&p), k, READABLE, |_| {}).unwrap();
        }
        assert_eq!(s.add_observer(Arc::clone(&p), 0, READABLE, |_| {}), Err(Error::NoResources));
        // An observer that fires at once needs no room.
        s.raise(WRITABLE, |_| {});
        assert_eq!(s.add_observer(Arc::clone(&p), 0, WRITABLE, |_| {}), Ok(true));
        assert_eq!(p.lock().reserved(), MAX_OBSERVERS);
    }

    #[test]
    fn cancel_and_drop_give_reservations_back() {
        let p = port(8);
        let q = port(8);
        let mut s: SignalState<Port> = SignalState::new(0);
        s.add_observer(Arc::clone(&p), 1, READABLE, |_| {}).unwrap();
        s.add_observer(Arc::clone(&p), 2, READABLE, |_| {}).unwrap();
        s.add_observer(Arc::clone(&q), 1, READABLE, |_| {}).unwrap();
        assert_eq!(s.cancel(&p, 1), 1);
        assert_eq!(p.lock().reserved(), 1);
        assert_eq!(s.cancel(&p, 7), 0);
        assert_eq!(s.cancel_sink(&q), 1);
        assert_eq!(q.lock().reserved(), 0);
        let taken = s.take_observers();
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].key(), taken[0].signals()), (2, READABLE));
        assert!(same_sink(taken[0].sink(), &p));
        drop(taken);
        assert_eq!(p.lock().reserved(), 0);
        // Dropping the whole state (object destroyed) releases too.
        let mut s: SignalState<Port> = SignalState::new(0);
        s.add_observer(Arc::clone(&p), 1, READABLE, |_| {}).unwrap();
        drop(s);
        assert_eq!(p.lock().reserved(), 0);
        assert_eq!(Arc::strong_count(&p), 1);
    }

    /// A sink that can be closed, counting deliveries.
    struct Closable {
        closed: AtomicBool,
        reserved: AtomicUsize,
        delivered: AtomicUsize,
    }

    impl PacketSink for Closable {
        fn reserve(&self) -> Result<(), Error> {
            self.reserved.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn unreserve(&self) {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
        }
        fn deliver(&self, _: PortPacket) -> bool {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
            self.delivered.fetch_add(1, Ordering::SeqCst);
            true
        }
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn closed_sinks_are_discarded_and_dyn_sinks_work() {
        let c = Arc::new(Closable { closed: AtomicBool::new(false), reserved: 0.into(), delivered: 0.into() });
        let p = port(4);
        let mut s: SignalState = SignalState::new(0); // dyn PacketSink
        s.add_observer(c.clone(), 1, READABLE, |_| {}).unwrap();
        s.add_observer(c.clone(), 2, WRITABLE, |_| {}).unwrap();
        s.add_observer(p.clone(), 3, READABLE, |_| {}).unwrap();
        c.closed.store(true, Ordering::SeqCst);
        assert_eq!(s.raise(READABLE, |_| {}), 1);
        assert_eq!(c.delivered.load(Ordering::SeqCst), 0);
        assert_eq!(s.prune_closed(), 1);
        assert_eq!(c.reserved.load(Ordering::SeqCst), 0);
        assert_eq!(drain(&p), [pkt(3, READABLE)]);
        let as_dyn: Arc<dyn PacketSink> = p.clone();
        s.add_observer(Arc::clone(&as_dyn), 4, PEER_CLOSED, |_| {}).unwrap();
        assert_eq!(s.cancel(&as_dyn, 4), 1);
    }

    #[test]
    fn pop_many_is_fifo_and_partial() {
        let mut q = PortQueue::with_capacity(10);
        for k in 0..5 {
            assert_eq!(q.push(pkt(k, 1)), Ok(k == 0));
        }
        let mut out = [PortPacket::default(); 3];
        assert_eq!(q.pop_many(&mut out), 3);
        assert_eq!(out.map(|p| p.key), [0, 1, 2]);
        assert_eq!(q.pop_many(&mut out), 2);
        assert_eq!([out[0].key, out[1].key], [3, 4]);
        assert_eq!(q.pop_many(&mut out), 0);
        assert_eq!(q.pop_many(&mut []), 0);
        assert_eq!(PortQueue::new().capacity(), PORT_CAPACITY);
        assert_eq!(PortQueue::with_capacity(0).capacity(), 1);
    }

    #[test]
    fn random_stress_conserves_packets() {
        // Several objects, several ports; every successful add_observer
        // ends as exactly one packet or one cancellation, and ports never
        // exceed their capacity.
        for seed in 0..10 {
            let mut rng = Rng::new(seed + 7);
            let ports: Vec<Arc<Port>> = (0..3).map(|_| port(1 + rng.index(20))).collect();
            let mut objects: Vec<SignalState<Port>> = (0..4).map(|_| SignalState::new(0)).collect();
            let mut outstanding = vec![0usize; ports.len()]; // model: observers per port
            let mut queued = vec![0usize; ports.len()];
            let mut received = 0usize;
            let mut added = 0usize;
            let mut cancelled = 0usize;
            for _ in 0..5000 {
                let o = rng.index(objects.len());
                let pi = rng.index(ports.len());
                match rng.below(6) {
                    0 | 1 => {
                        let signals = (rng.next() as u32) & 0x3F;
                        let active = objects[o].active();
                        let full = queued[pi] + outstanding[pi] >= ports[pi].lock().capacity();
                        let r = objects[o].add_observer(Arc::clone(&ports[pi]), pi as u64, signals, |_| {});
                        match r {
                            Err(Error::InvalidArgs) => assert_eq!(signals, 0),
                            Err(Error::NoResources) => assert!(full),
                            Ok(now) => {
                                assert!(!full);
                                added += 1;
                                assert_eq!(now, active & signals != 0);
                                if now {
                                    queued[pi] += 1;
                                } else {
                                    outstanding[pi] += 1;
                                }
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    2 => {
                        let bits = 1 << rng.below(6);
                        objects[o].raise(bits, |_| {});
                    }
                    3 => objects[o].clear(1 << rng.below(6)),
                    4 => {
                        let n = objects[o].cancel_sink(&ports[pi]);
                        cancelled += n;
                    }
                    _ => {
                        let got = drain(&ports[pi]);
                        assert!(got.iter().all(|p| p.key == pi as u64 && p.observed != 0));
                        received += got.len();
                    }
                }
                // Re-derive the per-port model from the objects.
                for (i, p) in ports.iter().enumerate() {
                    let watching: usize = objects
                        .iter()
                        .map(|s| s.observers().iter().filter(|ob| same_sink(ob.sink(), p)).count())
                        .sum();
                    let q = p.lock();
                    assert_eq!(q.reserved(), watching);
                    assert!(q.len() + q.reserved() <= q.capacity());
                    outstanding[i] = watching;
                    queued[i] = q.len();
                }
                // Invariant: no observer watches an active signal.
                for s in &objects {
                    assert!(s.observers().iter().all(|ob| ob.signals() & s.active() == 0));
                }
            }
            let still: usize = objects.iter().map(|s| s.observer_count()).sum();
            let in_queues: usize = ports.iter().map(|p| p.lock().len()).sum();
            assert_eq!(added, received + in_queues + still + cancelled);
        }
    }

    #[test]
    fn concurrent_raisers_and_one_reader() {
        // Objects behind their own locks fire into one port from many
        // threads; the reader sees every packet exactly once.
        let p = port(PORT_CAPACITY);
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 2000;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    let obj = SpinLock::new(SignalState::<Port>::new(0));
                    let mut round = 0;
                    while round < ROUNDS {
                        let key = t * ROUNDS + round;
                        let mut s = obj.lock();
                        match s.add_observer(Arc::clone(&p), key, READABLE, |_| {}) {
                            Ok(_) => {
                                s.raise(READABLE, |_| {});
                                s.clear(READABLE);
                                round += 1;
                            }
                            Err(Error::NoResources) => std::thread::yield_now(),
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                })
            })
            .collect();
        let mut seen = vec![false; (THREADS * ROUNDS) as usize];
        let mut count = 0;
        let mut buf = [PortPacket::default(); 64];
        while count < seen.len() {
            let n = p.lock().pop_many(&mut buf);
            for packet in &buf[..n] {
                assert!(!seen[packet.key as usize], "duplicate packet");
                seen[packet.key as usize] = true;
                count += 1;
            }
            if n == 0 {
                std::thread::yield_now();
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(p.lock().is_empty() && p.lock().reserved() == 0);
    }
}
