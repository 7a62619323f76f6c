//! Per-process handle tables.
//!
//! A process names capabilities by [`Handle`]: a 16-bit slot index plus the
//! slot's generation (the upper 16 bits, `abi::Handle`). A slot's generation
//! changes every time the slot is freed, so a stale handle (closed, moved
//! away, or from before a process restart) and a forged one fail with
//! [`Error::BadHandle`]. Generation 0 is never issued, so `Handle(0)` and
//! every zeroed value are invalid; generations count 1..=0xFFFF and wrap
//! back to 1.
//!
//! Freed slots are reused first-in first-out, so a given handle value comes
//! back only after every other free slot was reused and the slot itself was
//! freed 65,535 more times.
//!
//! # Revoked capabilities
//!
//! Revocation ([`crate::cap`]) is lazy: a revoked capability stays in its
//! slot until the table notices it. Every lookup reports it as
//! [`Error::BadHandle`] (exactly like a closed handle). Operations that
//! take `&mut self` and address the slot ([`HandleTable::remove`],
//! [`HandleTable::duplicate`], [`HandleTable::take_for_transfer`]) also
//! *reap* it: the slot is freed and the capability moves to a holding list;
//! a full table reaps every revoked entry ([`HandleTable::sweep_revoked`])
//! before it reports [`Error::NoResources`]. So closing a revoked handle
//! returns `BadHandle` and frees its slot.
//!
//! # Dropping capabilities
//!
//! The table never drops a capability it held: dropping the last reference
//! to an object can run its destructor (a channel endpoint signals its peer,
//! taking the peer's lock), and doing that under the table's lock invites
//! lock-order deadlocks. Removed capabilities are returned, and reaped ones
//! wait in the holding list until [`HandleTable::take_reaped`] (or
//! [`HandleTable::drain`]) hands them out. The intended pattern:
//!
//! ```ignore
//! let (result, dead) = {
//!     let mut table = process.handles.lock();
//!     let result = table.remove(h);
//!     (result, table.take_reaped())
//! };
//! drop(dead); // after the lock is released
//! ```
//!
//! The one exception is [`HandleTable::insert`], which drops the capability
//! it could not insert; use [`HandleTable::insert_all`] to get it back.
//!
//! # Concurrency
//!
//! The table is plain data: the process keeps it behind a
//! [`crate::sync::SpinLock`]. Revocation itself needs no table lock (it is an
//! atomic on the capability's node), so revoking from one process kills
//! handles in other processes' tables without touching their locks.
#![warn(missing_docs)]

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use mantra_abi::{rights, Error, Handle};

use crate::cap::Capability;

/// Default number of handles a process may hold.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Most slots a table can have: every 16-bit index.
pub const MAX_CAPACITY: usize = 1 << Handle::INDEX_BITS;

/// Highest generation; the one after it is 1 (0 is never issued).
pub const MAX_GENERATION: u32 = u32::MAX >> Handle::INDEX_BITS;

/// The generation a slot gets after `generation`: +1, wrapping to 1.
const fn next_generation(generation: u32) -> u32 {
    if generation >= MAX_GENERATION {
        1
    } else {
        generation + 1
    }
}

enum SlotState<O> {
    Free,
    Used(Capability<O>),
    /// Taken by [`HandleTable::take_for_transfer`], not yet committed or
    /// aborted: looks up as `BadHandle`, is neither free nor reusable.
    InTransfer,
}

struct Slot<O> {
    /// Generation of the handle that names (or will name) this slot; never 0.
    generation: u32,
    state: SlotState<O>,
}

/// Proof that [`HandleTable::take_for_transfer`] took some handles: the
/// caller must pass it to [`HandleTable::commit_transfer`] (the move
/// happened: the slots are freed) or [`HandleTable::abort_transfer`] (the
/// move failed: the capabilities return under the same handle values).
/// Dropping it instead leaves the slots unusable until
/// [`HandleTable::drain`].
#[must_use = "commit or abort the transfer, or the handle slots leak"]
#[derive(Debug)]
pub struct TransferTicket {
    handles: Vec<Handle>,
}

impl TransferTicket {
    /// The handles taken, in the order given to `take_for_transfer`.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// A process's handle table: slots holding [`Capability`]s, named by
/// [`Handle`]s. See the module documentation for the rules.
pub struct HandleTable<O> {
    slots: Vec<Slot<O>>,
    /// Indices of free slots, reused oldest first.
    free: VecDeque<u32>,
    /// Limit on `slots.len()`.
    capacity: usize,
    /// Slots that are `Used` or `InTransfer`.
    used: usize,
    /// Reaped (revoked) capabilities waiting to be dropped by the caller.
    reaped: Vec<Capability<O>>,
}

impl<O> Default for HandleTable<O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<O> HandleTable<O> {
    /// An empty table holding at most [`DEFAULT_CAPACITY`] handles. Does not
    /// allocate until the first insertion.
    pub const fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// An empty table holding at most `capacity` handles (clamped to
    /// `1..=MAX_CAPACITY`).
    pub const fn with_capacity(capacity: usize) -> Self {
        let capacity = if capacity == 0 {
            1
        } else if capacity > MAX_CAPACITY {
            MAX_CAPACITY
        } else {
            capacity
        };
        Self { slots: Vec::new(), free: VecDeque::new(), capacity, used: 0, reaped: Vec::new() }
    }

    /// The most handles the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Occupied slots: live handles, revoked ones not reaped yet, and
    /// handles taken for a transfer not yet committed.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Slots free for insertion now (without reaping revoked entries).
    pub fn available(&self) -> usize {
        self.capacity - self.used
    }

    /// The live capability `h` names.
    ///
    /// Errors: [`Error::BadHandle`] when the index is out of range, the
    /// slot is free or in transfer, the generation differs, or the
    /// capability was revoked (the entry stays until reaped).
    #[inline]
    pub fn get(&self, h: Handle) -> Result<&Capability<O>, Error> {
        match self.slots.get(h.index() as usize) {
            Some(Slot { generation, state: SlotState::Used(cap) }) if *generation == h.generation() && cap.is_valid() => {
                Ok(cap)
            }
            _ => Err(Error::BadHandle),
        }
    }

    /// [`Self::get_checked`] of a raw syscall argument, the way the IPC
    /// fast path reads it: the low [`Handle::INDEX_BITS`] bits are the
    /// index, all the bits above them the generation, so a value above
    /// `u32::MAX` (which names no handle) fails the generation compare
    /// (slots' generations are at most [`MAX_GENERATION`]) without a test of
    /// its own. Same results as `get_checked(Handle(raw as u32), ..)` for
    /// values up to `u32::MAX`, and `BadHandle` above.
    #[inline]
    pub fn get_checked_raw<T>(&self, raw: u64, required: u32, extract: impl FnOnce(&O) -> Option<T>) -> Result<T, Error> {
        let index = (raw & ((1 << Handle::INDEX_BITS) - 1)) as usize;
        let cap = match self.slots.get(index) {
            Some(Slot { generation, state: SlotState::Used(cap) })
                if u64::from(*generation) == raw >> Handle::INDEX_BITS && cap.is_valid() =>
            {
                cap
            }
            _ => return Err(Error::BadHandle),
        };
        let object = extract(&cap.object).ok_or(Error::WrongType)?;
        if !cap.has_rights(required) {
            return Err(Error::AccessDenied);
        }
        Ok(object)
    }

    /// The IPC fast path's lookup: `Some` exactly when
    /// [`Self::get_checked_raw`] is `Ok`, with the object `extract` borrows
    /// (the caller clones what it keeps, under the table's lock). Which
    /// check failed does not matter there (the general path then runs the
    /// call), so the kind comes first: its test is the slot's "in use" test.
    #[inline]
    pub fn find_raw<'a, T>(&'a self, raw: u64, required: u32, extract: impl FnOnce(&'a O) -> Option<T>) -> Option<T> {
        let index = (raw & ((1 << Handle::INDEX_BITS) - 1)) as usize;
        let Slot { generation, state: SlotState::Used(cap) } = self.slots.get(index)? else { return None };
        let object = extract(&cap.object)?;
        (u64::from(*generation) == raw >> Handle::INDEX_BITS && cap.has_rights(required) && cap.is_valid()).then_some(object)
    }

    /// Looks `h` up for a syscall that needs a particular kind of object and
    /// `required` rights. `extract` returns the typed object (e.g. clones
    /// the `Arc<Channel>` out of the object enum) or `None` for another kind.
    ///
    /// Errors, in this precedence: [`Error::BadHandle`] (as [`Self::get`]),
    /// [`Error::WrongType`] (`extract` returned `None`),
    /// [`Error::AccessDenied`] (a right in `required` is missing).
    #[inline]
    pub fn get_checked<T>(&self, h: Handle, required: u32, extract: impl FnOnce(&O) -> Option<T>) -> Result<T, Error> {
        let cap = self.get(h)?;
        let object = extract(&cap.object).ok_or(Error::WrongType)?;
        if !cap.has_rights(required) {
            return Err(Error::AccessDenied);
        }
        Ok(object)
    }

    /// Live handles and their capabilities, in slot order (revoked entries
    /// not reaped yet are included; check [`Capability::is_valid`]).
    pub fn iter(&self) -> impl Iterator<Item = (Handle, &Capability<O>)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, slot)| match &slot.state {
            SlotState::Used(cap) => Some((Handle::new(i as u32, slot.generation), cap)),
            _ => None,
        })
    }

    /// Adds a capability (any capability, even a revoked one: it will look
    /// up as `BadHandle`) and returns its new handle.
    ///
    /// Errors: [`Error::NoResources`] when the table is full after reaping
    /// revoked entries; `cap` is then dropped here (see the module docs:
    /// use [`Self::insert_all`] to get it back instead).
    pub fn insert(&mut self, cap: Capability<O>) -> Result<Handle, Error> {
        let index = self.alloc_slot().ok_or(Error::NoResources)?;
        Ok(self.fill(index, cap))
    }

    /// Adds every capability or none, returning the new handles in order.
    ///
    /// Errors: [`Error::NoResources`] when fewer than `caps.len()` slots are
    /// free after reaping revoked entries; nothing was inserted and the
    /// capabilities come back (e.g. to restore a transfer's source).
    #[allow(clippy::type_complexity)]
    pub fn insert_all(&mut self, caps: Vec<Capability<O>>) -> Result<Vec<Handle>, (Error, Vec<Capability<O>>)> {
        if self.available() < caps.len() {
            self.sweep_revoked();
            if self.available() < caps.len() {
                return Err((Error::NoResources, caps));
            }
        }
        let mut handles = Vec::with_capacity(caps.len());
        for cap in caps {
            // Cannot fail: `available()` counted a slot for each.
            let index = self.alloc_slot().expect("slot counted as available");
            handles.push(self.fill(index, cap));
        }
        Ok(handles)
    }

    /// Removes `h` and returns its capability (`handle_close`: the caller
    /// drops it, after releasing the table's lock).
    ///
    /// Errors: [`Error::BadHandle`] as [`Self::get`]; a revoked entry is
    /// reaped (its slot freed) and reported as `BadHandle`.
    pub fn remove(&mut self, h: Handle) -> Result<Capability<O>, Error> {
        let index = self.lookup_reap(h)?;
        let slot = &mut self.slots[index];
        let SlotState::Used(cap) = core::mem::replace(&mut slot.state, SlotState::Free) else {
            unreachable!("lookup_reap returns used slots")
        };
        self.release(index);
        Ok(cap)
    }

    /// `handle_duplicate`: a new handle to the same object with `rights`,
    /// derived from `h` (revoking `h` kills it).
    ///
    /// Errors, in this precedence: [`Error::BadHandle`] (as [`Self::remove`],
    /// reaping a revoked entry); [`Error::AccessDenied`] (`h` lacks
    /// `DUPLICATE`, or `rights` is not a subset of `h`'s rights, unknown
    /// bits included); [`Error::NoResources`] (derivation depth limit, or
    /// the table is full after reaping).
    pub fn duplicate(&mut self, h: Handle, rights: u32) -> Result<Handle, Error>
    where
        O: Clone,
    {
        let index = self.lookup_reap(h)?;
        let SlotState::Used(cap) = &self.slots[index].state else { unreachable!("lookup_reap returns used slots") };
        if !cap.has_rights(rights::DUPLICATE) {
            return Err(Error::AccessDenied);
        }
        let child = cap.derive(rights)?;
        // The rejected child is dropped here, but it cannot be the last
        // reference to its object: `h` still holds one.
        self.insert(child)
    }

    /// `handle_revoke`: kills every capability derived from `h`, in every
    /// table and message; `h` stays valid.
    ///
    /// Errors, in this precedence: [`Error::BadHandle`] (as [`Self::get`]);
    /// [`Error::AccessDenied`] (no `REVOKE` right).
    pub fn revoke(&self, h: Handle) -> Result<(), Error> {
        let cap = self.get(h)?;
        if !cap.has_rights(rights::REVOKE) {
            return Err(Error::AccessDenied);
        }
        cap.revoke_descendants();
        Ok(())
    }

    /// First half of moving handles out of this table (a channel message,
    /// `process_give_handle`): validates every handle, then takes them all
    /// or none. The returned capabilities are in `handles` order; their
    /// slots stay reserved (looking up as `BadHandle`) until the caller
    /// commits ([`Self::commit_transfer`]) or aborts
    /// ([`Self::abort_transfer`]) with the ticket.
    ///
    /// Errors, in this precedence over the whole list: [`Error::BadHandle`]
    /// (some handle is invalid, the first one found in list order being
    /// reaped if revoked; or a handle appears twice); [`Error::AccessDenied`]
    /// (some handle lacks `TRANSFER`). On error nothing was taken. A channel
    /// sending its own handle is the caller's check (`InvalidArgs`).
    #[allow(clippy::type_complexity)]
    pub fn take_for_transfer(&mut self, handles: &[Handle]) -> Result<(Vec<Capability<O>>, TransferTicket), Error> {
        let mut indices = Vec::with_capacity(handles.len());
        for &h in handles {
            indices.push(self.lookup_reap(h)?);
        }
        let mut sorted = indices.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::BadHandle);
        }
        for &index in &indices {
            let SlotState::Used(cap) = &self.slots[index].state else { unreachable!("validated") };
            if !cap.has_rights(rights::TRANSFER) {
                return Err(Error::AccessDenied);
            }
        }
        let mut caps = Vec::with_capacity(indices.len());
        for &index in &indices {
            let SlotState::Used(cap) = core::mem::replace(&mut self.slots[index].state, SlotState::InTransfer) else {
                unreachable!("validated")
            };
            caps.push(cap);
        }
        Ok((caps, TransferTicket { handles: handles.to_vec() }))
    }

    /// The transfer happened: frees the ticket's slots (their handles are
    /// now stale). Entries that no longer match (the table was drained
    /// meanwhile) are skipped.
    pub fn commit_transfer(&mut self, ticket: TransferTicket) {
        for h in ticket.handles {
            let index = h.index() as usize;
            if let Some(slot) = self.slots.get_mut(index) {
                if slot.generation == h.generation() && matches!(slot.state, SlotState::InTransfer) {
                    slot.state = SlotState::Free;
                    self.release(index);
                }
            }
        }
    }

    /// The transfer failed: puts `caps` (as returned by
    /// [`Self::take_for_transfer`], same order) back under their original
    /// handle values. Returns what could not be restored (extra caps, or
    /// slots that no longer match because the table was drained) for the
    /// caller to drop; ticket slots without a cap are freed.
    pub fn abort_transfer(&mut self, ticket: TransferTicket, caps: Vec<Capability<O>>) -> Vec<Capability<O>> {
        let mut leftover = Vec::new();
        let mut caps = caps.into_iter();
        for h in ticket.handles {
            let index = h.index() as usize;
            let cap = caps.next();
            match self.slots.get_mut(index) {
                Some(slot) if slot.generation == h.generation() && matches!(slot.state, SlotState::InTransfer) => {
                    match cap {
                        Some(cap) => slot.state = SlotState::Used(cap),
                        None => {
                            slot.state = SlotState::Free;
                            self.release(index);
                        }
                    }
                }
                _ => leftover.extend(cap),
            }
        }
        leftover.extend(caps);
        leftover
    }

    /// Moves every revoked capability into the holding list (freeing its
    /// slot) and returns how many. O(slots × depth).
    pub fn sweep_revoked(&mut self) -> usize {
        let mut count = 0;
        for index in 0..self.slots.len() {
            if matches!(&self.slots[index].state, SlotState::Used(cap) if !cap.is_valid()) {
                self.reap(index);
                count += 1;
            }
        }
        count
    }

    /// Hands out the reaped (revoked) capabilities for the caller to drop
    /// outside the table's lock. Does not allocate when there are none.
    pub fn take_reaped(&mut self) -> Vec<Capability<O>> {
        core::mem::take(&mut self.reaped)
    }

    /// Empties the table (process exit): returns every capability it held,
    /// reaped ones included. All handles become stale (generations move
    /// on); slots taken for a transfer are freed too, and committing or
    /// aborting their ticket later changes nothing. The table stays usable.
    pub fn drain(&mut self) -> Vec<Capability<O>> {
        let mut caps = core::mem::take(&mut self.reaped);
        self.free.clear();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let SlotState::Used(cap) = core::mem::replace(&mut slot.state, SlotState::Free) {
                caps.push(cap);
                slot.generation = next_generation(slot.generation);
            } else {
                // Free slots keep their generation; in-transfer ones move on
                // so their tickets no longer match.
                slot.generation = next_generation(slot.generation);
            }
            self.free.push_back(index as u32);
        }
        self.used = 0;
        caps
    }

    /// The index of the slot `h` names, if it holds a live capability; a
    /// revoked one is reaped.
    fn lookup_reap(&mut self, h: Handle) -> Result<usize, Error> {
        let index = h.index() as usize;
        match self.slots.get(index) {
            Some(Slot { generation, state: SlotState::Used(cap) }) if *generation == h.generation() => {
                if cap.is_valid() {
                    Ok(index)
                } else {
                    self.reap(index);
                    Err(Error::BadHandle)
                }
            }
            _ => Err(Error::BadHandle),
        }
    }

    /// Moves the (revoked) capability in slot `index` to the holding list.
    fn reap(&mut self, index: usize) {
        if let SlotState::Used(cap) = core::mem::replace(&mut self.slots[index].state, SlotState::Free) {
            self.reaped.push(cap);
            self.release(index);
        }
    }

    /// Marks slot `index` (already set to `Free`) free: new generation, back
    /// of the free queue.
    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.generation = next_generation(slot.generation);
        self.free.push_back(index as u32);
        self.used -= 1;
    }

    /// A free slot's index (counted as used from now), reaping revoked
    /// entries if the table is full; `None` when it stays full.
    fn alloc_slot(&mut self) -> Option<usize> {
        if self.available() == 0 && self.sweep_revoked() == 0 {
            return None;
        }
        let index = match self.free.pop_front() {
            Some(index) => index as usize,
            None => {
                debug_assert!(self.slots.len() < self.capacity);
                self.slots.push(Slot { generation: 1, state: SlotState::Free });
                self.slots.len() - 1
            }
        };
        self.used += 1;
        Some(index)
    }

    /// Puts `cap` into the slot `alloc_slot` returned; returns its handle.
    fn fill(&mut self, index: usize, cap: Capability<O>) -> Handle {
        let slot = &mut self.slots[index];
        debug_assert!(matches!(slot.state, SlotState::Free));
        slot.state = SlotState::Used(cap);
        Handle::new(index as u32, slot.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cap::test_rng::Rng;
    use crate::cap::{CapNode, MAX_DERIVATION_DEPTH};
    use mantra_abi::rights::*;
    use std::collections::{BTreeSet, HashMap, HashSet};
    use std::sync::Arc;

    type Table = HandleTable<u32>;

    fn cap(obj: u32, rights: u32) -> Capability<u32> {
        Capability::new(obj, rights)
    }

    #[test]
    fn handles_are_never_zero_and_start_at_generation_one() {
        let mut t = Table::new();
        let h = t.insert(cap(1, ALL)).unwrap();
        assert_ne!(h, Handle::INVALID);
        assert_eq!((h.index(), h.generation()), (0, 1));
        assert_eq!(t.get(Handle::INVALID).unwrap_err(), Error::BadHandle);
        // Index 0 with generation 0 is Handle(0); other zero-generation values fail too.
        assert_eq!(t.get(Handle::new(0, 0)).unwrap_err(), Error::BadHandle);
        assert_eq!(t.get(h).unwrap().object, 1);
    }

    #[test]
    fn stale_forged_and_out_of_range_handles_fail() {
        let mut t = Table::new();
        let h = t.insert(cap(1, ALL)).unwrap();
        let closed = t.remove(h).unwrap();
        assert_eq!(closed.object, 1);
        assert_eq!(t.get(h).unwrap_err(), Error::BadHandle);
        assert_eq!(t.remove(h).unwrap_err(), Error::BadHandle);
        let h2 = t.insert(cap(2, ALL)).unwrap();
        assert_eq!(h2.index(), h.index());
        assert_ne!(h2, h);
        assert_eq!(t.get(h).unwrap_err(), Error::BadHandle);
        assert_eq!(t.get(Handle::new(h2.index(), h2.generation() + 1)).unwrap_err(), Error::BadHandle);
        assert_eq!(t.get(Handle::new(5, 1)).unwrap_err(), Error::BadHandle);
        assert_eq!(t.get(Handle(u32::MAX)).unwrap_err(), Error::BadHandle);
        assert_eq!(t.revoke(h).unwrap_err(), Error::BadHandle);
        assert_eq!(t.duplicate(h, 0).unwrap_err(), Error::BadHandle);
    }

    #[test]
    fn free_slots_are_reused_oldest_first() {
        let mut t = Table::new();
        let hs: Vec<_> = (0..4).map(|i| t.insert(cap(i, ALL)).unwrap()).collect();
        t.remove(hs[2]).unwrap();
        t.remove(hs[0]).unwrap();
        assert_eq!(t.insert(cap(9, ALL)).unwrap().index(), 2);
        assert_eq!(t.insert(cap(9, ALL)).unwrap().index(), 0);
        assert_eq!(t.insert(cap(9, ALL)).unwrap().index(), 4);
    }

    #[test]
    fn generations_wrap_skipping_zero() {
        let mut t = Table::with_capacity(1);
        let mut seen = HashSet::new();
        let mut last = 0;
        for round in 0..(MAX_GENERATION as usize + 5) {
            let h = t.insert(cap(round as u32, ALL)).unwrap();
            assert_ne!(h.generation(), 0);
            assert_eq!(h.index(), 0);
            if round < MAX_GENERATION as usize {
                assert!(seen.insert(h), "a handle value came back before the wrap");
            } else if round == MAX_GENERATION as usize {
                assert_eq!((last, h.generation()), (MAX_GENERATION, 1));
            }
            last = h.generation();
            t.remove(h).unwrap();
        }
    }

    #[test]
    fn capacity_limit_reports_no_resources() {
        let mut t = Table::with_capacity(3);
        let hs: Vec<_> = (0..3).map(|i| t.insert(cap(i, ALL)).unwrap()).collect();
        assert_eq!(t.insert(cap(3, ALL)).unwrap_err(), Error::NoResources);
        assert_eq!(t.duplicate(hs[0], READ).unwrap_err(), Error::NoResources);
        // Rights problems come before fullness.
        assert_eq!(t.duplicate(hs[0], 1 << 20).unwrap_err(), Error::AccessDenied);
        assert_eq!(t.len(), 3);
        assert_eq!(t.available(), 0);
        t.remove(hs[1]).unwrap();
        assert!(t.insert(cap(3, ALL)).is_ok());
        assert_eq!(Table::with_capacity(0).capacity(), 1);
        assert_eq!(Table::with_capacity(1 << 20).capacity(), MAX_CAPACITY);
    }

    #[test]
    fn full_table_of_max_capacity_uses_every_index() {
        let mut t = Table::with_capacity(MAX_CAPACITY);
        let mut indices = HashSet::new();
        for i in 0..MAX_CAPACITY {
            let h = t.insert(cap(i as u32, 0)).unwrap();
            assert_ne!(h, Handle::INVALID);
            indices.insert(h.index());
        }
        assert_eq!(indices.len(), MAX_CAPACITY);
        assert_eq!(t.insert(cap(0, 0)).unwrap_err(), Error::NoResources);
    }

    #[derive(Clone, Debug, PartialEq)]
    enum Obj {
        Channel(u32),
        Port(u32),
    }

    #[test]
    fn get_checked_raw_matches_get_checked() {
        let mut t = HandleTable::<Obj>::new();
        let ch = t.insert(Capability::new(Obj::Channel(1), READ | WRITE)).unwrap();
        let ro = t.insert(Capability::new(Obj::Channel(2), READ)).unwrap();
        let p = t.insert(Capability::new(Obj::Port(3), ALL)).unwrap();
        let closed = t.insert(Capability::new(Obj::Channel(4), ALL)).unwrap();
        t.remove(closed).unwrap();
        let as_channel = |o: &Obj| match o {
            Obj::Channel(c) => Some(*c),
            _ => None,
        };
        let stale = Handle::new(ch.index(), ch.generation() + 1);
        let as_channel_ref = |o: &Obj| match o {
            Obj::Channel(c) => Some(*c),
            _ => None,
        };
        for h in [ch, ro, p, closed, stale, Handle::INVALID, Handle(0x1234_5678), Handle(u32::MAX)] {
            assert_eq!(t.get_checked_raw(u64::from(h.0), READ | WRITE, as_channel), t.get_checked(h, READ | WRITE, as_channel));
            for required in [0, READ, READ | WRITE] {
                assert_eq!(
                    t.find_raw(u64::from(h.0), required, as_channel_ref),
                    t.get_checked(h, required, as_channel).ok()
                );
            }
        }
        // A revoked capability: found by neither.
        let parent = t.insert(Capability::new(Obj::Channel(5), ALL)).unwrap();
        let child = t.duplicate(parent, READ | WRITE).unwrap();
        assert_eq!(t.find_raw(u64::from(child.0), READ, as_channel_ref), Some(5));
        t.get(parent).unwrap().revoke_descendants();
        assert_eq!(t.find_raw(u64::from(child.0), READ, as_channel_ref), None);
        assert_eq!(t.get_checked_raw(u64::from(child.0), READ, as_channel), Err(Error::BadHandle));
        // Above u32: no handle, even when the low bits name a live one.
        for high in [1u64 << 32, 1 << 48, u64::MAX << 32] {
            assert_eq!(t.get_checked_raw(high | u64::from(ch.0), READ | WRITE, as_channel), Err(Error::BadHandle));
            assert_eq!(t.find_raw(high | u64::from(ch.0), READ | WRITE, as_channel_ref), None);
        }
        assert_eq!(t.get_checked_raw(u64::MAX, READ, as_channel), Err(Error::BadHandle));
    }

    #[test]
    fn get_checked_precedence() {
        let mut t = HandleTable::<Obj>::new();
        let ch = t.insert(Capability::new(Obj::Channel(1), READ)).unwrap();
        let as_port = |o: &Obj| match o {
            Obj::Port(p) => Some(*p),
            _ => None,
        };
        let as_channel = |o: &Obj| match o {
            Obj::Channel(c) => Some(*c),
            _ => None,
        };
        assert_eq!(t.get_checked(ch, READ, as_channel), Ok(1));
        assert_eq!(t.get_checked(ch, 0, as_channel), Ok(1));
        assert_eq!(t.get_checked(ch, READ | WRITE, as_channel), Err(Error::AccessDenied));
        // Wrong type beats missing rights; bad handle beats both.
        assert_eq!(t.get_checked(ch, READ | WRITE, as_port), Err(Error::WrongType));
        assert_eq!(t.get_checked(Handle(0x1234_5678), READ | WRITE, as_port), Err(Error::BadHandle));
        let p = t.insert(Capability::new(Obj::Port(2), ALL)).unwrap();
        assert_eq!(t.get_checked(p, WRITE, as_port), Ok(2));
    }

    #[test]
    fn duplicate_needs_duplicate_right_and_shrinks() {
        let mut t = Table::new();
        let h = t.insert(cap(1, READ | WRITE | DUPLICATE)).unwrap();
        let d = t.duplicate(h, READ).unwrap();
        assert_eq!((t.get(d).unwrap().object, t.get(d).unwrap().rights), (1, READ));
        assert!(t.get(d).unwrap().node.descends_from(&t.get(h).unwrap().node));
        // The duplicate lacks DUPLICATE: it cannot be duplicated further.
        assert_eq!(t.duplicate(d, READ).unwrap_err(), Error::AccessDenied);
        assert_eq!(t.duplicate(d, 0).unwrap_err(), Error::AccessDenied);
        // Growing rights: denied.
        assert_eq!(t.duplicate(h, READ | EXECUTE).unwrap_err(), Error::AccessDenied);
        let no_dup = t.insert(cap(2, READ | WRITE)).unwrap();
        assert_eq!(t.duplicate(no_dup, READ).unwrap_err(), Error::AccessDenied);
        // Same rights allowed.
        assert!(t.duplicate(h, READ | WRITE | DUPLICATE).is_ok());
    }

    #[test]
    fn duplicate_depth_limit() {
        let mut t = Table::new();
        let mut h = t.insert(cap(1, DUPLICATE)).unwrap();
        for _ in 0..MAX_DERIVATION_DEPTH {
            h = t.duplicate(h, DUPLICATE).unwrap();
        }
        assert_eq!(t.duplicate(h, DUPLICATE).unwrap_err(), Error::NoResources);
    }

    #[test]
    fn revoke_kills_descendants_here_and_elsewhere_and_close_reaps() {
        let mut a = Table::new();
        let mut b = Table::new();
        let root = a.insert(cap(7, ALL)).unwrap();
        let child = a.duplicate(root, ALL).unwrap();
        let grandchild = a.duplicate(child, READ | TRANSFER).unwrap();
        // Move the grandchild to table b.
        let (caps, ticket) = a.take_for_transfer(&[grandchild]).unwrap();
        let in_b = b.insert_all(caps).map_err(|(e, _)| e).unwrap();
        a.commit_transfer(ticket);
        assert!(b.get(in_b[0]).is_ok());

        // Revoke needs REVOKE.
        let weak = a.duplicate(root, READ | DUPLICATE).unwrap();
        assert_eq!(a.revoke(weak).unwrap_err(), Error::AccessDenied);

        a.revoke(child).unwrap();
        assert!(a.get(child).is_ok());
        assert_eq!(b.get(in_b[0]).unwrap_err(), Error::BadHandle);
        assert_eq!(b.get_checked(in_b[0], 0, |o| Some(*o)).unwrap_err(), Error::BadHandle);
        assert_eq!(b.revoke(in_b[0]).unwrap_err(), Error::BadHandle);
        assert_eq!(b.len(), 1, "revoked entry not reaped by lookups");
        // Closing the revoked handle: BadHandle, slot freed, cap held for the caller.
        assert_eq!(b.remove(in_b[0]).unwrap_err(), Error::BadHandle);
        assert_eq!(b.len(), 0);
        let dead = b.take_reaped();
        assert_eq!(dead.len(), 1);
        assert!(!dead[0].is_valid());
        assert!(b.take_reaped().is_empty());

        // Revoking the root kills child and weak; root lives.
        a.revoke(root).unwrap();
        assert!(a.get(root).is_ok());
        assert_eq!(a.get(child).unwrap_err(), Error::BadHandle);
        assert_eq!(a.duplicate(weak, READ).unwrap_err(), Error::BadHandle);
        assert_eq!(a.sweep_revoked(), 1); // child (weak was reaped by duplicate)
        assert_eq!(a.take_reaped().len(), 2);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn full_table_reaps_revoked_entries_before_failing() {
        let mut t = Table::with_capacity(2);
        let root = t.insert(cap(1, ALL)).unwrap();
        let child = t.duplicate(root, ALL).unwrap();
        assert_eq!(t.insert(cap(2, ALL)).unwrap_err(), Error::NoResources);
        t.revoke(root).unwrap();
        let h = t.insert(cap(3, ALL)).unwrap();
        assert_eq!(h.index(), child.index());
        assert_ne!(h, child);
        assert_eq!(t.take_reaped().len(), 1);
        // insert_all sweeps too.
        t.revoke(root).unwrap();
        let d = t.duplicate(root, READ).unwrap_err();
        assert_eq!(d, Error::NoResources);
    }

    #[test]
    fn transfer_is_all_or_nothing() {
        let mut a = Table::new();
        let t1 = a.insert(cap(1, TRANSFER | READ)).unwrap();
        let t2 = a.insert(cap(2, TRANSFER)).unwrap();
        let no_transfer = a.insert(cap(3, READ)).unwrap();
        let stale = {
            let h = a.insert(cap(4, ALL)).unwrap();
            a.remove(h).unwrap();
            h
        };
        // BadHandle beats AccessDenied wherever they are in the list.
        assert_eq!(a.take_for_transfer(&[no_transfer, stale]).unwrap_err(), Error::BadHandle);
        assert_eq!(a.take_for_transfer(&[t1, no_transfer]).unwrap_err(), Error::AccessDenied);
        assert_eq!(a.take_for_transfer(&[t1, t2, t1]).unwrap_err(), Error::BadHandle);
        assert_eq!(a.len(), 3);
        assert!(a.get(t1).is_ok() && a.get(t2).is_ok());

        let (caps, ticket) = a.take_for_transfer(&[t2, t1]).unwrap();
        assert_eq!(caps.iter().map(|c| c.object).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(ticket.handles(), &[t2, t1]);
        // In flight: the handles look up as BadHandle, the slots are not reusable.
        assert_eq!(a.get(t1).unwrap_err(), Error::BadHandle);
        assert_eq!(a.len(), 3);
        let other = a.insert(cap(5, 0)).unwrap();
        assert!(other.index() != t1.index() && other.index() != t2.index());

        // The destination is full: nothing inserted, caps back, source restored.
        let mut b = Table::with_capacity(1);
        let (e, caps) = b.insert_all(caps).unwrap_err();
        assert_eq!((e, caps.len(), b.len()), (Error::NoResources, 2, 0));
        assert!(a.abort_transfer(ticket, caps).is_empty());
        assert_eq!(a.get(t1).unwrap().object, 1);
        assert_eq!(a.get(t2).unwrap().object, 2);

        // Now for real.
        let mut b = Table::new();
        let (caps, ticket) = a.take_for_transfer(&[t1, t2]).unwrap();
        let hs = b.insert_all(caps).map_err(|(e, _)| e).unwrap();
        a.commit_transfer(ticket);
        assert_eq!(a.get(t1).unwrap_err(), Error::BadHandle);
        assert_eq!(b.get(hs[0]).unwrap().object, 1);
        assert_eq!(b.get(hs[1]).unwrap().object, 2);
        assert_eq!(a.len(), 2);
        // The freed slots are reusable with new generations.
        let n1 = a.insert(cap(6, 0)).unwrap();
        assert_ne!(n1, t1);
        // Empty transfers are fine.
        let (caps, ticket) = a.take_for_transfer(&[]).unwrap();
        assert!(caps.is_empty());
        a.commit_transfer(ticket);
    }

    #[test]
    fn transfer_keeps_the_derivation_node() {
        let mut a = Table::new();
        let mut b = Table::new();
        let root = a.insert(cap(1, ALL)).unwrap();
        let d = a.duplicate(root, TRANSFER | READ).unwrap();
        let (caps, ticket) = a.take_for_transfer(&[d]).unwrap();
        let moved = b.insert_all(caps).map_err(|(e, _)| e).unwrap()[0];
        a.commit_transfer(ticket);
        assert_eq!(b.get(moved).unwrap().rights, TRANSFER | READ);
        a.revoke(root).unwrap();
        assert_eq!(b.get(moved).unwrap_err(), Error::BadHandle);
    }

    #[test]
    fn revoked_handles_in_transfer_lists_are_bad_and_reaped() {
        let mut a = Table::new();
        let root = a.insert(cap(1, ALL)).unwrap();
        let d = a.duplicate(root, ALL).unwrap();
        let ok = a.insert(cap(2, ALL)).unwrap();
        a.revoke(root).unwrap();
        assert_eq!(a.take_for_transfer(&[ok, d]).unwrap_err(), Error::BadHandle);
        assert_eq!(a.take_reaped().len(), 1);
        assert!(a.get(ok).is_ok());
    }

    #[test]
    fn drain_returns_everything_and_invalidates() {
        let mut t = Table::new();
        let root = t.insert(cap(1, ALL)).unwrap();
        let d = t.duplicate(root, ALL).unwrap();
        let x = t.insert(cap(2, ALL)).unwrap();
        let y = t.insert(cap(3, ALL)).unwrap();
        t.revoke(root).unwrap();
        assert!(t.remove(d).is_err()); // reaped
        let (caps, ticket) = t.take_for_transfer(&[y]).unwrap();
        let all = t.drain();
        assert_eq!(all.len(), 3); // root, x, reaped d (y is in flight)
        assert!(t.is_empty());
        for h in [root, d, x, y] {
            assert_eq!(t.get(h).unwrap_err(), Error::BadHandle);
        }
        // A late abort cannot resurrect y: the cap comes back to the caller.
        let left = t.abort_transfer(ticket, caps);
        assert_eq!(left.len(), 1);
        assert_eq!(t.get(y).unwrap_err(), Error::BadHandle);
        // Still usable, and old values stay dead.
        let n = t.insert(cap(4, ALL)).unwrap();
        assert!(![root, d, x, y].contains(&n));
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn abort_with_missing_or_extra_caps() {
        let mut t = Table::new();
        let a = t.insert(cap(1, ALL)).unwrap();
        let b = t.insert(cap(2, ALL)).unwrap();
        let (mut caps, ticket) = t.take_for_transfer(&[a, b]).unwrap();
        let second = caps.pop().unwrap();
        assert!(t.abort_transfer(ticket, caps).is_empty());
        assert_eq!(t.get(a).unwrap().object, 1);
        assert_eq!(t.get(b).unwrap_err(), Error::BadHandle);
        assert_eq!(t.len(), 1);
        let (caps, ticket) = t.take_for_transfer(&[a]).unwrap();
        let mut caps = caps;
        caps.push(second);
        assert_eq!(t.abort_transfer(ticket, caps).len(), 1);
        assert_eq!(t.get(a).unwrap().object, 1);
    }

    #[test]
    fn removed_capabilities_are_not_dropped_by_the_table() {
        let marker = Arc::new(());
        let mut t = HandleTable::<Arc<()>>::new();
        let root = t.insert(Capability::new(Arc::clone(&marker), ALL)).unwrap();
        let d = t.duplicate(root, ALL).unwrap();
        let root_cap = t.remove(root).unwrap();
        root_cap.revoke_descendants();
        assert_eq!(t.remove(d).unwrap_err(), Error::BadHandle);
        assert_eq!(Arc::strong_count(&marker), 3);
        drop(t.take_reaped());
        drop(root_cap);
        assert_eq!(Arc::strong_count(&marker), 1);
    }

    // ---- Model-based stress -------------------------------------------

    /// Model of the derivation forest (same as cap.rs's test model).
    #[derive(Default)]
    struct Tree {
        parent: Vec<Option<usize>>,
        link_alive: Vec<bool>,
        children: Vec<Vec<usize>>,
        depth: Vec<u32>,
    }

    impl Tree {
        fn add(&mut self, parent: Option<usize>) -> usize {
            let id = self.parent.len();
            self.parent.push(parent);
            self.link_alive.push(true);
            self.children.push(Vec::new());
            self.depth.push(parent.map_or(0, |p| self.depth[p] + 1));
            if let Some(p) = parent {
                self.children[p].push(id);
            }
            id
        }
        fn valid(&self, mut n: usize) -> bool {
            while let Some(p) = self.parent[n] {
                if !self.link_alive[n] {
                    return false;
                }
                n = p;
            }
            true
        }
        fn revoke(&mut self, n: usize) {
            for c in std::mem::take(&mut self.children[n]) {
                self.link_alive[c] = false;
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    struct Entry {
        obj: u32,
        rights: u32,
        node: usize,
    }

    /// Model of one table: live entries (revoked-not-reaped included).
    struct ModelTable {
        live: HashMap<Handle, Entry>,
        capacity: usize,
    }

    impl ModelTable {
        fn sweep(&mut self, tree: &Tree) {
            self.live.retain(|_, e| tree.valid(e.node));
        }
        /// `get`'s expected result.
        fn get(&self, tree: &Tree, h: Handle) -> Option<Entry> {
            self.live.get(&h).copied().filter(|e| tree.valid(e.node))
        }
        /// `lookup_reap`'s: reaps a revoked entry.
        fn lookup_reap(&mut self, tree: &Tree, h: Handle) -> Option<Entry> {
            let e = *self.live.get(&h)?;
            if tree.valid(e.node) {
                Some(e)
            } else {
                self.live.remove(&h);
                None
            }
        }
        fn room_for(&mut self, tree: &Tree, n: usize) -> bool {
            if self.capacity - self.live.len() < n {
                self.sweep(tree);
            }
            self.capacity - self.live.len() >= n
        }
    }

    struct World {
        tree: Tree,
        tables: [Table; 2],
        models: [ModelTable; 2],
        node_ids: HashMap<*const CapNode, usize>,
        issued: BTreeSet<(usize, Handle)>,
        next_obj: u32,
    }

    impl World {
        fn node_of(&self, t: usize, h: Handle) -> usize {
            let cap = self.tables[t].get(h).unwrap();
            self.node_ids[&Arc::as_ptr(&cap.node)]
        }

        /// A handle to use: mostly live ones, sometimes stale or forged.
        fn pick(&self, rng: &mut Rng, t: usize) -> Handle {
            let live: Vec<_> = self.models[t].live.keys().copied().collect();
            match rng.below(10) {
                0 => Handle(rng.next() as u32),
                1 => {
                    let stale: Vec<_> = self.issued.iter().filter(|(tt, _)| *tt == t).map(|(_, h)| *h).collect();
                    if stale.is_empty() {
                        Handle(0)
                    } else {
                        stale[rng.index(stale.len())]
                    }
                }
                _ if !live.is_empty() => {
                    let mut live = live;
                    live.sort();
                    live[rng.index(live.len())]
                }
                _ => Handle(rng.next() as u32 & 0x3_00FF),
            }
        }

        fn random_rights(rng: &mut Rng) -> u32 {
            let mut r = rng.next() as u32 & ALL;
            if rng.chance(1, 2) {
                r |= DUPLICATE | TRANSFER | REVOKE;
            }
            if rng.chance(1, 20) {
                r |= 1 << 30;
            }
            r
        }

        fn check_new_handle(&mut self, t: usize, h: Handle) {
            assert_ne!(h.generation(), 0);
            assert!((h.index() as usize) < self.models[t].capacity);
            assert!(self.issued.insert((t, h)), "handle value {h:?} reissued");
        }

        fn step(&mut self, rng: &mut Rng) {
            let t = rng.index(2);
            match rng.below(100) {
                0..=19 => {
                    // insert a fresh root
                    let obj = self.next_obj;
                    self.next_obj += 1;
                    let rights = Self::random_rights(rng);
                    let expect_ok = self.models[t].room_for(&self.tree, 1);
                    let c = cap(obj, rights);
                    let ptr = Arc::as_ptr(&c.node);
                    match self.tables[t].insert(c) {
                        Ok(h) => {
                            assert!(expect_ok);
                            self.check_new_handle(t, h);
                            let node = self.tree.add(None);
                            self.node_ids.insert(ptr, node);
                            self.models[t].live.insert(h, Entry { obj, rights, node });
                        }
                        Err(e) => {
                            assert!(!expect_ok);
                            assert_eq!(e, Error::NoResources);
                        }
                    }
                }
                20..=34 => {
                    // remove
                    let h = self.pick(rng, t);
                    let expect = self.models[t].lookup_reap(&self.tree, h);
                    match (self.tables[t].remove(h), expect) {
                        (Ok(c), Some(e)) => {
                            assert_eq!((c.object, c.rights), (e.obj, e.rights));
                            self.models[t].live.remove(&h);
                        }
                        (Err(Error::BadHandle), None) => {}
                        (got, want) => panic!("remove {h:?}: got {:?}, want {want:?}", got.map(|c| c.object)),
                    }
                }
                35..=59 => {
                    // duplicate
                    let h = self.pick(rng, t);
                    let rights = if rng.chance(3, 4) {
                        self.models[t].live.get(&h).map_or(0, |e| e.rights) & (rng.next() as u32)
                    } else {
                        Self::random_rights(rng)
                    };
                    let want = match self.models[t].lookup_reap(&self.tree, h) {
                        None => Err(Error::BadHandle),
                        Some(e) if e.rights & DUPLICATE == 0 || rights & !e.rights != 0 => Err(Error::AccessDenied),
                        Some(e) if self.tree.depth[e.node] >= MAX_DERIVATION_DEPTH => Err(Error::NoResources),
                        Some(e) if !self.models[t].room_for(&self.tree, 1) => {
                            let _ = e;
                            Err(Error::NoResources)
                        }
                        Some(e) => Ok(e),
                    };
                    match (self.tables[t].duplicate(h, rights), want) {
                        (Ok(nh), Ok(e)) => {
                            self.check_new_handle(t, nh);
                            let node = self.tree.add(Some(e.node));
                            let ptr = Arc::as_ptr(&self.tables[t].get(nh).unwrap().node);
                            self.node_ids.insert(ptr, node);
                            self.models[t].live.insert(nh, Entry { obj: e.obj, rights, node });
                            assert_eq!(self.node_of(t, nh), node);
                        }
                        (Err(got), Err(want)) => assert_eq!(got, want, "duplicate {h:?} {rights:#x}"),
                        (got, want) => panic!("duplicate {h:?}: got {got:?}, want {want:?}"),
                    }
                }
                60..=69 => {
                    // revoke
                    let h = self.pick(rng, t);
                    let want = match self.models[t].get(&self.tree, h) {
                        None => Err(Error::BadHandle),
                        Some(e) if e.rights & REVOKE == 0 => Err(Error::AccessDenied),
                        Some(e) => Ok(e.node),
                    };
                    let got = self.tables[t].revoke(h);
                    assert_eq!(got, want.map(|_| ()));
                    if let Ok(node) = want {
                        self.tree.revoke(node);
                    }
                }
                70..=79 => {
                    // get / get_checked
                    let h = self.pick(rng, t);
                    let required = rng.next() as u32 & (READ | WRITE | MAP);
                    let want = match self.models[t].get(&self.tree, h) {
                        None => Err(Error::BadHandle),
                        Some(e) if e.obj % 3 == 0 => Err(Error::WrongType),
                        Some(e) if e.rights & required != required => Err(Error::AccessDenied),
                        Some(e) => Ok(e.obj),
                    };
                    let got = self.tables[t].get_checked(h, required, |o| (o % 3 != 0).then_some(*o));
                    assert_eq!(got, want);
                    let plain = self.tables[t].get(h).map(|c| (c.object, c.rights));
                    let plain_want = self.models[t].get(&self.tree, h).map(|e| (e.obj, e.rights)).ok_or(Error::BadHandle);
                    assert_eq!(plain, plain_want);
                }
                80..=94 => self.transfer(rng, t),
                95..=97 => {
                    let n = self.tables[t].sweep_revoked();
                    let before = self.models[t].live.len();
                    self.models[t].sweep(&self.tree);
                    assert_eq!(n, before - self.models[t].live.len());
                    for c in self.tables[t].take_reaped() {
                        assert!(!c.is_valid());
                    }
                }
                _ => {
                    if rng.chance(1, 4) {
                        let caps = self.tables[t].drain();
                        assert!(caps.len() >= self.models[t].live.len());
                        self.models[t].live.clear();
                    }
                }
            }
            assert_eq!(self.tables[t].len(), self.models[t].live.len());
            assert_eq!(self.tables[t].iter().count(), self.models[t].live.len());
        }

        fn transfer(&mut self, rng: &mut Rng, src: usize) {
            let dst = 1 - src;
            let n = rng.below(4) as usize;
            let handles: Vec<Handle> = (0..n).map(|_| self.pick(rng, src)).collect();
            // Expected: pass 1 in order (reaping until the first failure), duplicates, then TRANSFER.
            let mut want: Result<Vec<Entry>, Error> = Ok(Vec::new());
            let mut entries = Vec::new();
            for &h in &handles {
                match self.models[src].lookup_reap(&self.tree, h) {
                    Some(e) => entries.push(e),
                    None => {
                        want = Err(Error::BadHandle);
                        break;
                    }
                }
            }
            if want.is_ok() {
                let set: HashSet<_> = handles.iter().collect();
                if set.len() != handles.len() {
                    want = Err(Error::BadHandle);
                } else if entries.iter().any(|e| e.rights & TRANSFER == 0) {
                    want = Err(Error::AccessDenied);
                } else {
                    want = Ok(entries);
                }
            }
            let got = self.tables[src].take_for_transfer(&handles);
            let (caps, ticket) = match (got, want) {
                (Err(g), Err(w)) => {
                    assert_eq!(g, w, "take_for_transfer {handles:?}");
                    return;
                }
                (Ok(x), Ok(entries)) => {
                    for (c, e) in x.0.iter().zip(&entries) {
                        assert_eq!((c.object, c.rights), (e.obj, e.rights));
                    }
                    x
                }
                (g, w) => panic!("take_for_transfer {handles:?}: got {:?}, want {w:?}", g.map(|x| x.0.len())),
            };
            for h in &handles {
                assert_eq!(self.tables[src].get(*h).unwrap_err(), Error::BadHandle);
            }
            let fail_anyway = rng.chance(1, 5); // e.g. the channel was full
            if fail_anyway {
                let left = self.tables[src].abort_transfer(ticket, caps);
                assert!(left.is_empty());
            } else {
                let room = self.models[dst].room_for(&self.tree, caps.len());
                match self.tables[dst].insert_all(caps) {
                    Ok(new) => {
                        assert!(room);
                        self.tables[src].commit_transfer(ticket);
                        for (old, new) in handles.iter().zip(new) {
                            let e = self.models[src].live.remove(old).unwrap();
                            self.check_new_handle(dst, new);
                            self.models[dst].live.insert(new, e);
                            assert_eq!(self.node_of(dst, new), e.node);
                        }
                    }
                    Err((e, caps)) => {
                        assert!(!room);
                        assert_eq!(e, Error::NoResources);
                        let left = self.tables[src].abort_transfer(ticket, caps);
                        assert!(left.is_empty());
                    }
                }
            }
            // Restored (or moved) entries look up as the model says.
            for h in &handles {
                let want = self.models[src].get(&self.tree, *h).map(|e| e.obj);
                assert_eq!(self.tables[src].get(*h).ok().map(|c| c.object), want);
            }
        }
    }

    #[test]
    fn random_operations_match_the_model() {
        for seed in 0..12 {
            let mut rng = Rng::new(seed + 100);
            let cap_a = 2 + rng.index(30);
            let cap_b = 2 + rng.index(30);
            let mut w = World {
                tree: Tree::default(),
                tables: [Table::with_capacity(cap_a), Table::with_capacity(cap_b)],
                models: [
                    ModelTable { live: HashMap::new(), capacity: cap_a },
                    ModelTable { live: HashMap::new(), capacity: cap_b },
                ],
                node_ids: HashMap::new(),
                issued: BTreeSet::new(),
                next_obj: 1,
            };
            for _ in 0..6000 {
                w.step(&mut rng);
            }
            // Every handle the model does not hold is dead in the table.
            for &(t, h) in &w.issued {
                if !w.models[t].live.contains_key(&h) {
                    assert_eq!(w.tables[t].get(h).unwrap_err(), Error::BadHandle);
                }
            }
        }
    }
}
