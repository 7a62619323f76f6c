//! Locks and one-time initialisation for kernel statics.
//!
//! [`SpinLock`] is a fair ticket lock; [`Once`] runs an initialiser exactly
//! once and hands out shared references afterwards. Both only spin (with
//! [`core::hint::spin_loop`]); neither masks interrupts. A lock that an
//! interrupt handler may also take must be held with interrupts disabled,
//! which is the arch layer's job (it wraps these types); otherwise the handler
//! spins forever on the lock its own CPU holds.
//!
//! Hold spin locks for short, bounded stretches: under QEMU `-icount` a
//! spinning vCPU delays the one holding the lock (see DESIGN.md).

use core::cell::UnsafeCell;
use core::hint::spin_loop;

/// One step of a spin wait. On the host (tests) the waiter yields its time
/// slice: host threads are preempted, and a ticket lock whose next holder is
/// descheduled would otherwise convoy every waiter on a small machine.
#[inline]
fn relax() {
    #[cfg(test)]
    std::thread::yield_now();
    #[cfg(not(test))]
    spin_loop();
}
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// A mutual-exclusion lock that busy-waits, granting the lock in arrival
/// order (ticket lock), so no CPU starves under contention.
///
/// Not reentrant: locking it twice on one CPU deadlocks.
pub struct SpinLock<T: ?Sized> {
    /// Ticket the next arriving locker draws.
    next_ticket: AtomicU32,
    /// Ticket of the current holder; the holder increments it on unlock.
    now_serving: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `data` to one holder at a time, so
// sharing the lock between CPUs only ever moves `T` between them: `T: Send`
// suffices, as for `std::sync::Mutex`.
unsafe impl<T: ?Sized + Send> Sync for SpinLock<T> {}
// SAFETY: owning the lock is owning the `T`.
unsafe impl<T: ?Sized + Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock around `value`; usable in `static` initialisers.
    pub const fn new(value: T) -> Self {
        Self { next_ticket: AtomicU32::new(0), now_serving: AtomicU32::new(0), data: UnsafeCell::new(value) }
    }

    /// Consumes the lock and returns the value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> SpinLock<T> {
    /// Spins until the lock is ours; the guard unlocks on drop.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        // Acquire pairs with the Release in the previous holder's unlock, so
        // everything it wrote to `data` is visible to us.
        while self.now_serving.load(Ordering::Acquire) != ticket {
            relax();
        }
        SpinLockGuard { lock: self, _not_send: PhantomData }
    }

    /// Takes the lock if nobody holds it or waits for it; never spins.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let serving = self.now_serving.load(Ordering::Acquire);
        // Drawing ticket `serving` succeeds only if no ticket is outstanding.
        self.next_ticket
            .compare_exchange(serving, serving.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| SpinLockGuard { lock: self, _not_send: PhantomData })
    }

    /// Whether somebody holds the lock right now (a hint: it may change at once).
    pub fn is_locked(&self) -> bool {
        self.next_ticket.load(Ordering::Relaxed) != self.now_serving.load(Ordering::Relaxed)
    }

    /// Direct access through an exclusive reference: no locking needed.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// Proof of holding a [`SpinLock`]; derefs to the protected value and
/// unlocks when dropped. It cannot move to another thread (`!Send`): the
/// lock belongs to the CPU context that took it.
pub struct SpinLockGuard<'a, T: ?Sized> {
    lock: &'a SpinLock<T>,
    _not_send: PhantomData<*mut ()>,
}

impl<T: ?Sized> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while its holder owns the lock, so no
        // other reference to `data` is live.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only access.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // Release publishes our writes to `data` to the next holder.
        self.lock.now_serving.fetch_add(1, Ordering::Release);
    }
}

const INCOMPLETE: u8 = 0;
const RUNNING: u8 = 1;
const COMPLETE: u8 = 2;

/// A value initialised at most once, at run time, then shared read-only:
/// `static FOO: Once<Foo> = Once::new();` then `FOO.call_once(|| ...)`.
///
/// If the initialiser panics, the cell stays "running" and later callers of
/// [`Once::call_once`] spin forever; the kernel aborts on panic, so this only
/// matters in host tests.
pub struct Once<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: after initialisation every CPU gets `&T` (needs `T: Sync`), and the
// value may be created on one CPU and dropped on another (needs `T: Send`).
// The state machine guarantees a single writer, before any reader.
unsafe impl<T: Send + Sync> Sync for Once<T> {}
// SAFETY: owning the cell is owning the `T`.
unsafe impl<T: Send> Send for Once<T> {}

impl<T> Once<T> {
    /// An uninitialised cell; usable in `static` initialisers.
    pub const fn new() -> Self {
        Self { state: AtomicU8::new(INCOMPLETE), value: UnsafeCell::new(MaybeUninit::uninit()) }
    }

    /// Returns the value, running `init` first if nobody has yet. If another
    /// CPU is running its initialiser, spins until that one finishes and
    /// returns its value (our `init` is then dropped unused). Calling it from
    /// inside `init` on the same cell deadlocks.
    pub fn call_once(&self, init: impl FnOnce() -> T) -> &T {
        match self.state.compare_exchange(INCOMPLETE, RUNNING, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                // SAFETY: winning the INCOMPLETE -> RUNNING transition makes us
                // the only writer, and no reader looks before COMPLETE.
                unsafe { (*self.value.get()).write(init()) };
                self.state.store(COMPLETE, Ordering::Release);
            }
            Err(_) => {
                while self.state.load(Ordering::Acquire) != COMPLETE {
                    relax();
                }
            }
        }
        // SAFETY: the state is COMPLETE (set by us, or observed with Acquire
        // after the writer's Release), so the value is initialised and is
        // never written again.
        unsafe { (*self.value.get()).assume_init_ref() }
    }

    /// The value if initialisation has completed, without waiting.
    pub fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) == COMPLETE {
            // SAFETY: COMPLETE observed with Acquire: initialised, never written again.
            Some(unsafe { (*self.value.get()).assume_init_ref() })
        } else {
            None
        }
    }
}

impl<T> Default for Once<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for Once<T> {
    fn drop(&mut self) {
        if *self.state.get_mut() == COMPLETE {
            // SAFETY: COMPLETE means initialised; `&mut self` means no reader.
            unsafe { self.value.get_mut().assume_init_drop() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn lock_excludes_and_counts() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    for _ in 0..10_000 {
                        // A non-atomic read-modify-write: lost updates would show.
                        let mut guard = lock.lock();
                        let v = *guard;
                        *guard = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 80_000);
        assert!(!lock.is_locked());
    }

    #[test]
    fn try_lock_fails_while_held() {
        let lock = SpinLock::new([1u8, 2, 3]);
        let guard = lock.try_lock().expect("free lock");
        assert!(lock.is_locked());
        assert!(lock.try_lock().is_none());
        drop(guard);
        assert_eq!(lock.try_lock().expect("released").len(), 3);
        let mut lock = lock;
        lock.get_mut()[0] = 9;
        assert_eq!(lock.into_inner(), [9, 2, 3]);
    }

    #[test]
    fn once_runs_one_initialiser() {
        static CELL: Once<u32> = Once::new();
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        assert!(CELL.get().is_none());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                thread::spawn(move || {
                    *CELL.call_once(|| {
                        RUNS.fetch_add(1, Ordering::SeqCst);
                        i
                    })
                })
            })
            .collect();
        let seen: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
        assert!(seen.iter().all(|&v| v == seen[0]));
        assert_eq!(CELL.get(), Some(&seen[0]));
    }

    #[test]
    fn once_drops_its_value() {
        let marker = Arc::new(());
        let cell = Once::new();
        cell.call_once(|| Arc::clone(&marker));
        assert_eq!(Arc::strong_count(&marker), 2);
        drop(cell);
        assert_eq!(Arc::strong_count(&marker), 1);
    }
}
