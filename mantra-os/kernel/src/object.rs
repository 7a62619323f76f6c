//! Kernel objects as handles see them: one enum over every kind, plus the
//! signal plumbing they share.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use mantra_abi::ObjectKind;
use mantra_kernel::signal::SignalState;
use mantra_kernel::sync::SpinLock;

use crate::conio::Console;
use crate::interrupt::{Interrupt, Resource};
use crate::ipc::{Endpoint, Port, Timer};
use crate::klog::Log;
use crate::space::{Space, Vmo};
use crate::task::{Process, Thread};

/// Where fired observers deliver: a port.
pub type Sink = Port;

/// What a capability points at.
#[derive(Clone)]
pub enum Object {
    Process(Arc<Process>),
    Thread(Arc<Thread>),
    Space(Arc<Space>),
    Vmo(Arc<Vmo>),
    Channel(Arc<Endpoint>),
    Port(Arc<Port>),
    Timer(Arc<Timer>),
    Log(Arc<Log>),
    Interrupt(Arc<Interrupt>),
    Resource(Arc<Resource>),
    Console(Arc<Console>),
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Process(_) => ObjectKind::Process,
            Object::Thread(_) => ObjectKind::Thread,
            Object::Space(_) => ObjectKind::AddressSpace,
            Object::Vmo(_) => ObjectKind::MemoryObject,
            Object::Channel(_) => ObjectKind::Channel,
            Object::Port(_) => ObjectKind::Port,
            Object::Timer(_) => ObjectKind::Timer,
            Object::Log(_) => ObjectKind::Log,
            Object::Interrupt(_) => ObjectKind::Interrupt,
            Object::Resource(_) => ObjectKind::Resource,
            Object::Console(_) => ObjectKind::Console,
        }
    }

    pub fn koid(&self) -> u64 {
        match self {
            Object::Process(o) => o.koid,
            Object::Thread(o) => o.koid,
            Object::Space(o) => o.koid,
            Object::Vmo(o) => o.koid,
            Object::Channel(o) => o.koid,
            Object::Port(o) => o.koid,
            Object::Timer(o) => o.koid,
            Object::Log(o) => o.koid,
            Object::Interrupt(o) => o.koid,
            Object::Resource(o) => o.koid,
            Object::Console(o) => o.koid,
        }
    }

    /// The signal state of waitable objects.
    pub fn signals(&self) -> Option<&SpinLock<SignalState<Sink>>> {
        match self {
            Object::Process(o) => Some(&o.signals),
            Object::Thread(o) => Some(&o.signals),
            Object::Channel(o) => Some(&o.signals),
            Object::Timer(o) => Some(&o.signals),
            Object::Interrupt(o) => Some(&o.signals),
            Object::Console(o) => Some(&o.signals),
            _ => None,
        }
    }
}

static NEXT_KOID: AtomicU64 = AtomicU64::new(1);

/// A kernel object id, unique for the boot.
pub fn next_koid() -> u64 {
    NEXT_KOID.fetch_add(1, Ordering::Relaxed)
}

/// Raises `bits` on an object and wakes the ports that received packets
/// (after the object's lock is released).
pub fn raise(state: &SpinLock<SignalState<Sink>>, bits: u32) {
    update(state, 0, bits);
}

/// Clears then sets signal bits, waking ports as [`raise`].
pub fn update(state: &SpinLock<SignalState<Sink>>, clear: u32, set: u32) {
    let mut woken: Vec<Arc<Port>> = Vec::new();
    state.lock().update(clear, set, |port| woken.push(port.clone()));
    for port in woken {
        port.wake_waiters();
    }
}
