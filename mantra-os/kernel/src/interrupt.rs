//! Interrupt objects (INTERRUPT_CREATE / BIND / ACK / TRIGGER) and the
//! interrupt resource that authorises physical ones.
//!
//! An interrupt is idle or pending. A firing (its device's line, or
//! INTERRUPT_TRIGGER for a virtual one) makes an idle interrupt pending:
//! it raises INTERRUPT and, when bound, delivers one packet `{key,
//! INTERRUPT}` into the slot reserved on the port; firings while pending
//! merge into it. INTERRUPT_ACK makes it idle again: it clears INTERRUPT,
//! reserves the slot for the next packet (so a packet can never be lost)
//! and unmasks a physical line. A physical line is masked from each firing
//! until that ACK, so a level-triggered line cannot storm.
//!
//! Physical interrupts own one I/O APIC pin (GSI) and one vector of
//! [`VECTOR_BASE`]..+[`VECTOR_COUNT`] (IDT stubs in arch traps.rs), routed
//! to the boot CPU. [`on_vector`] runs from the trap handler.
//!
//! Lock order: `ROUTES` → the I/O APIC lock; an interrupt's `state` → its
//! `signals` → port locks.

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;

use mantra_abi::{signals, Error, PortPacket};
use mantra_kernel::irq::{LineMode, VectorPool};
use mantra_kernel::signal::{PacketSink, SignalState};
use mantra_kernel::sync::SpinLock;

use crate::arch::x86_64::{apic, ioapic};
use crate::ipc::Port;
use crate::object::{next_koid, Sink};

/// First vector for device interrupts, and how many there are.
pub const VECTOR_BASE: u8 = 0x50;
pub const VECTOR_COUNT: u8 = 16;
// traps.rs has stubs for exactly these vectors (80..=95).
const _: () = assert!(VECTOR_BASE == 0x50 && VECTOR_COUNT == 16);

/// What a resource grants. Device regions (MMIO, I/O ports) will be
/// further kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// Creating physical interrupt objects for any GSI.
    Interrupts,
    /// Reading (READ) and writing (WRITE) the firmware's UEFI variables of
    /// the MantraOS vendor GUID (FIRMWARE_VARIABLE_GET/_SET).
    FirmwareVariables,
}

/// Authority over hardware. The kernel mints one interrupt resource and
/// one firmware-variable resource, for MantraInit's startup message (`irq`,
/// `fwvar`); nothing else creates them.
pub struct Resource {
    pub koid: u64,
    pub kind: ResourceKind,
}

impl Resource {
    pub fn interrupts() -> Self {
        Self { koid: next_koid(), kind: ResourceKind::Interrupts }
    }

    pub fn firmware_variables() -> Self {
        Self { koid: next_koid(), kind: ResourceKind::FirmwareVariables }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Virtual,
    Physical { gsi: u32, vector: u8 },
}

struct Binding {
    port: Arc<Port>,
    key: u64,
    /// Whether we hold a slot on `port` for the next packet. Invariant:
    /// bound and idle implies reserved.
    reserved: bool,
}

struct State {
    pending: bool,
    binding: Option<Binding>,
}

pub struct Interrupt {
    pub koid: u64,
    source: Source,
    state: SpinLock<State>,
    pub signals: SpinLock<SignalState<Sink>>,
}

/// Routed physical interrupts by vector; they are held weakly, so closing
/// the last handle frees the route (see `Drop`).
struct Routes {
    pool: VectorPool,
    slots: [Option<(u32, Weak<Interrupt>)>; VECTOR_COUNT as usize],
}

static ROUTES: SpinLock<Routes> =
    SpinLock::new(Routes { pool: VectorPool::new(VECTOR_BASE, VECTOR_COUNT), slots: [const { None }; VECTOR_COUNT as usize] });

impl Interrupt {
    fn new(source: Source) -> Self {
        Self {
            koid: next_koid(),
            source,
            state: SpinLock::new(State { pending: false, binding: None }),
            signals: SpinLock::new(SignalState::new(0)),
        }
    }

    /// A virtual interrupt: fired by [`Self::trigger`] only.
    pub fn new_virtual() -> Arc<Self> {
        Arc::new(Self::new(Source::Virtual))
    }

    /// A physical interrupt for `gsi`, routed (masked) to a free vector with
    /// `mode` or the firmware's mode.
    ///
    /// Errors: OutOfRange (no I/O APIC serves `gsi`), BadState (another
    /// interrupt object holds `gsi`), NoResources (no free vector).
    pub fn new_physical(gsi: u32, mode: Option<LineMode>) -> Result<Arc<Self>, Error> {
        let mut routes = ROUTES.lock();
        if !ioapic::serves(gsi) {
            return Err(Error::OutOfRange);
        }
        if routes.slots.iter().flatten().any(|(held, _)| *held == gsi) {
            return Err(Error::BadState);
        }
        let vector = routes.pool.allocate().ok_or(Error::NoResources)?;
        let interrupt = Arc::new(Self::new(Source::Physical { gsi, vector }));
        let index = routes.pool.index(vector).expect("allocated from the pool");
        routes.slots[index] = Some((gsi, Arc::downgrade(&interrupt)));
        // Under ROUTES: a late mask from a previous holder of the GSI
        // cannot land after this route.
        ioapic::route(gsi, vector, mode);
        Ok(interrupt)
    }

    pub fn is_physical(&self) -> bool {
        matches!(self.source, Source::Physical { .. })
    }

    fn packet(key: u64) -> PortPacket {
        PortPacket { key, observed: signals::INTERRUPT, _reserved: 0 }
    }

    /// Binds to `port` with `key`; a pending interrupt delivers at once, a
    /// physical line is unmasked.
    ///
    /// Errors: BadState (already bound), NoResources / NoMemory (the port
    /// has no room for the packet).
    pub fn bind(&self, port: Arc<Port>, key: u64) -> Result<(), Error> {
        let mut wake = None;
        let pending = {
            let mut state = self.state.lock();
            if state.binding.is_some() {
                return Err(Error::BadState);
            }
            port.reserve()?;
            let mut binding = Binding { port, key, reserved: true };
            if state.pending {
                binding.reserved = false;
                if binding.port.deliver(Self::packet(key)) {
                    wake = Some(binding.port.clone());
                }
            }
            state.binding = Some(binding);
            state.pending
        };
        if let Some(port) = wake {
            port.wake_waiters();
        }
        if let (Source::Physical { gsi, .. }, false) = (self.source, pending) {
            ioapic::set_masked(gsi, false);
        }
        Ok(())
    }

    /// Fires a virtual interrupt.
    ///
    /// Errors: NotSupported (a physical one: only its device fires it).
    pub fn trigger(&self) -> Result<(), Error> {
        if self.is_physical() {
            return Err(Error::NotSupported);
        }
        self.fire();
        Ok(())
    }

    /// Idle → pending: raises INTERRUPT and delivers the bound port's
    /// packet; a pending interrupt stays as it is.
    fn fire(&self) {
        let mut woken: Vec<Arc<Port>> = Vec::new();
        {
            let mut state = self.state.lock();
            if state.pending {
                return;
            }
            state.pending = true;
            if let Some(binding) = state.binding.as_mut().filter(|b| b.reserved) {
                binding.reserved = false;
                if binding.port.deliver(Self::packet(binding.key)) {
                    woken.push(binding.port.clone());
                }
            }
            self.signals.lock().raise(signals::INTERRUPT, |port| woken.push(port.clone()));
        }
        for port in woken {
            port.wake_waiters();
        }
    }

    /// Pending → idle: clears INTERRUPT, reserves the next packet's slot and
    /// unmasks a physical line.
    ///
    /// Errors: BadState (not pending), NoResources / NoMemory (the bound
    /// port is full; the interrupt stays pending).
    pub fn ack(&self) -> Result<(), Error> {
        {
            let mut state = self.state.lock();
            if !state.pending {
                return Err(Error::BadState);
            }
            if let Some(binding) = state.binding.as_mut().filter(|b| !b.reserved) {
                binding.port.reserve()?;
                binding.reserved = true;
            }
            state.pending = false;
            self.signals.lock().clear(signals::INTERRUPT);
        }
        // Nothing fires in between: the line is still masked.
        if let Source::Physical { gsi, .. } = self.source {
            ioapic::set_masked(gsi, false);
        }
        Ok(())
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        if let Some(binding) = self.state.get_mut().binding.take() {
            if binding.reserved {
                binding.port.unreserve();
            }
        }
        if let Source::Physical { gsi, vector } = self.source {
            let mut routes = ROUTES.lock();
            ioapic::set_masked(gsi, true);
            if let Some(index) = routes.pool.index(vector) {
                routes.slots[index] = None;
            }
            routes.pool.release(vector);
        }
    }
}

/// Whether `vector` belongs to device interrupts.
pub fn is_device_vector(vector: u64) -> bool {
    (u64::from(VECTOR_BASE)..u64::from(VECTOR_BASE) + u64::from(VECTOR_COUNT)).contains(&vector)
}

/// A device interrupt arrived on `vector` (trap handler, interrupts off):
/// masks its line until INTERRUPT_ACK, acknowledges the LAPIC and fires
/// the interrupt object routed there.
pub fn on_vector(vector: u8) {
    let target = {
        let routes = ROUTES.lock();
        let route = routes.pool.index(vector).and_then(|index| routes.slots[index].as_ref());
        route.map(|(gsi, target)| {
            // Masked before the EOI: a level-triggered line still asserted
            // must not come straight back.
            ioapic::set_masked(*gsi, true);
            target.clone()
        })
    };
    apic::end_of_interrupt();
    // Dropped outside ROUTES: this may be the last reference.
    if let Some(interrupt) = target.and_then(|weak| weak.upgrade()) {
        interrupt.fire();
    }
}
