//! Owned handles and typed kernel objects.
//!
//! [`OwnedHandle`] closes its handle when dropped; the typed wrappers
//! ([`Channel`], [`Port`], [`Vmo`], [`Process`], [`Thread`],
//! [`AddressSpace`], [`Timer`], [`Log`], [`Interrupt`], [`Resource`]) each
//! own one and offer the syscalls of their kind. Nothing checks the kind up
//! front (the kernel does, returning `WrongType`); [`OwnedHandle::info`]
//! asks when it matters.
//!
//! Objects that need a process to charge (`Channel::create`, `Vmo::create`,
//! ...) take one explicitly; [`crate::process::current`] is the calling
//! process's own handle (`self` of the bootstrap message).

use alloc::vec;
use alloc::vec::Vec;
use core::mem::ManuallyDrop;

use mantra_abi::{map, CallArgs, Error, Handle, HandleInfo, ObjectKind, PortPacket, Priority, ReadSizes};

use crate::sys;

/// Anything that wraps a handle.
pub trait AsHandle {
    /// The raw handle value (still owned by `self`).
    fn raw(&self) -> Handle;
}

impl AsHandle for Handle {
    fn raw(&self) -> Handle {
        *self
    }
}

/// A handle that is closed when dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct OwnedHandle(Handle);

impl OwnedHandle {
    /// Takes ownership of `handle` (it will be closed on drop).
    pub const fn from_raw(handle: Handle) -> Self {
        Self(handle)
    }

    /// Gives up ownership without closing.
    pub fn into_raw(self) -> Handle {
        ManuallyDrop::new(self).0
    }

    /// A new handle to the same object with `rights` (a subset of this one's).
    pub fn duplicate(&self, rights: u32) -> Result<OwnedHandle, Error> {
        sys::handle_duplicate(self.0, rights).map(OwnedHandle)
    }

    /// Revokes every handle derived from this one.
    pub fn revoke(&self) -> Result<(), Error> {
        sys::handle_revoke(self.0)
    }

    /// Kind, rights and kernel object id.
    pub fn info(&self) -> Result<HandleInfo, Error> {
        sys::handle_info(self.0)
    }

    /// The object's kind, when the kernel reports a known one.
    pub fn kind(&self) -> Option<ObjectKind> {
        self.info().ok().and_then(|info| ObjectKind::from_raw(info.kind))
    }

    /// Asks for a packet with `key` on `port` when this object raises any of `signals`.
    pub fn wait_async(&self, port: &Port, key: u64, signals: u32) -> Result<(), Error> {
        sys::object_wait_async(self.0, port.raw(), key, signals)
    }
}

impl AsHandle for OwnedHandle {
    fn raw(&self) -> Handle {
        self.0
    }
}

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        if self.0 != Handle::INVALID {
            let _ = sys::handle_close(self.0);
        }
    }
}

macro_rules! object {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, PartialEq, Eq)]
        pub struct $name(OwnedHandle);

        impl $name {
            /// Wraps an owned handle (the kernel checks the kind on use).
            pub const fn from_handle(handle: OwnedHandle) -> Self {
                Self(handle)
            }
            /// The owned handle inside.
            pub fn into_handle(self) -> OwnedHandle {
                self.0
            }
            /// The owned handle, borrowed.
            pub fn handle(&self) -> &OwnedHandle {
                &self.0
            }
            /// A new handle to the same object with `rights`.
            pub fn duplicate(&self, rights: u32) -> Result<Self, Error> {
                self.0.duplicate(rights).map(Self)
            }
            /// Asks for a packet with `key` on `port` when the object raises any of `signals`.
            pub fn wait_async(&self, port: &Port, key: u64, signals: u32) -> Result<(), Error> {
                self.0.wait_async(port, key, signals)
            }
        }

        impl AsHandle for $name {
            fn raw(&self) -> Handle {
                self.0.raw()
            }
        }

        impl From<OwnedHandle> for $name {
            fn from(handle: OwnedHandle) -> Self {
                Self(handle)
            }
        }

        impl From<$name> for OwnedHandle {
            fn from(object: $name) -> Self {
                object.0
            }
        }
    };
}

object!(
    /// A channel endpoint: messages of bytes plus handles.
    Channel
);
object!(
    /// A port: gathers signal packets from many objects.
    Port
);
object!(
    /// A memory object.
    Vmo
);
object!(
    /// A process.
    Process
);
object!(
    /// A thread.
    Thread
);
object!(
    /// An address space.
    AddressSpace
);
object!(
    /// A timer.
    Timer
);
object!(
    /// A log object (the kernel log / console sink).
    Log
);
object!(
    /// An interrupt: a device line (GSI) or a virtual one.
    Interrupt
);
object!(
    /// Authority over hardware (the interrupt resource: `irq`).
    Resource
);

/// A message read from a channel.
#[derive(Debug, Default)]
pub struct Message {
    pub bytes: Vec<u8>,
    pub handles: Vec<OwnedHandle>,
}

impl Message {
    /// Takes the first handle of the message, if any.
    pub fn take_handle(&mut self) -> Option<OwnedHandle> {
        (!self.handles.is_empty()).then(|| self.handles.remove(0))
    }
}

/// How a channel read waits.
#[derive(Clone, Copy)]
enum ReadMode {
    NonBlocking,
    Blocking,
}

impl Channel {
    /// A connected pair of endpoints, charged to `process`.
    pub fn create(process: &impl AsHandle) -> Result<(Channel, Channel), Error> {
        let (a, b) = sys::channel_create(process.raw())?;
        Ok((Channel(OwnedHandle(a)), Channel(OwnedHandle(b))))
    }

    /// Sends `bytes` and moves `handles` to the peer. On failure the handles
    /// are closed (they are dropped with the vector).
    pub fn write(&self, bytes: &[u8], handles: Vec<OwnedHandle>) -> Result<(), Error> {
        let raw: Vec<Handle> = handles.iter().map(AsHandle::raw).collect();
        sys::channel_write(self.raw(), bytes, &raw)?;
        // The kernel moved them: they are no longer ours to close.
        handles.into_iter().for_each(|handle| {
            handle.into_raw();
        });
        Ok(())
    }

    /// Sends bytes only.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<(), Error> {
        sys::channel_write(self.raw(), bytes, &[])
    }

    /// Takes the oldest message without blocking (`ShouldWait` when none).
    pub fn read(&self) -> Result<Message, Error> {
        self.read_with(ReadMode::NonBlocking)
    }

    /// Takes the oldest message, blocking until one arrives.
    pub fn receive(&self) -> Result<Message, Error> {
        self.read_with(ReadMode::Blocking)
    }

    fn read_with(&self, mode: ReadMode) -> Result<Message, Error> {
        let mut bytes = vec![0u8; 1024];
        let mut handles = vec![Handle::INVALID; 8];
        loop {
            let mut sizes = ReadSizes::default();
            let result = match mode {
                ReadMode::NonBlocking => sys::channel_read(self.raw(), &mut bytes, &mut handles, &mut sizes),
                ReadMode::Blocking => sys::channel_receive(self.raw(), &mut bytes, &mut handles, &mut sizes),
            };
            match result {
                Ok(()) => {
                    bytes.truncate(sizes.bytes as usize);
                    handles.truncate(sizes.handles as usize);
                    return Ok(Message { bytes, handles: handles.into_iter().map(OwnedHandle).collect() });
                }
                Err(Error::BufferTooSmall) => {
                    let want_bytes = (sizes.bytes as usize).min(mantra_abi::MAX_MESSAGE_BYTES);
                    let want_handles = (sizes.handles as usize).min(mantra_abi::MAX_MESSAGE_HANDLES);
                    if want_bytes <= bytes.len() && want_handles <= handles.len() {
                        // The kernel asks for no more than we have: do not spin.
                        return Err(Error::BufferTooSmall);
                    }
                    bytes.resize(want_bytes.max(bytes.len()), 0);
                    handles.resize(want_handles.max(handles.len()), Handle::INVALID);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `request` (bytes and handles) and blocks until the reply arrives
    /// or `deadline` passes; the reply must fit `capacity` bytes and
    /// `handle_capacity` handles.
    pub fn call(
        &self,
        request: &[u8],
        handles: Vec<OwnedHandle>,
        capacity: usize,
        handle_capacity: usize,
        deadline: u64,
    ) -> Result<Message, Error> {
        let raw: Vec<Handle> = handles.iter().map(AsHandle::raw).collect();
        let mut reply = vec![0u8; capacity];
        let mut reply_handles = vec![Handle::INVALID; handle_capacity];
        let args = CallArgs {
            write_bytes: request.as_ptr() as u64,
            write_len: request.len() as u32,
            write_handle_count: raw.len() as u32,
            write_handles: raw.as_ptr() as u64,
            read_bytes: reply.as_mut_ptr() as u64,
            read_capacity: reply.len() as u32,
            read_handle_capacity: reply_handles.len() as u32,
            read_handles: reply_handles.as_mut_ptr() as u64,
        };
        // SAFETY: `args` describes `request`, `raw`, `reply` and
        // `reply_handles`, all alive until the call returns.
        let sizes = unsafe { sys::channel_call(self.raw(), &args, deadline) }?;
        handles.into_iter().for_each(|handle| {
            handle.into_raw();
        });
        reply.truncate(sizes.bytes as usize);
        reply_handles.truncate(sizes.handles as usize);
        Ok(Message { bytes: reply, handles: reply_handles.into_iter().map(OwnedHandle).collect() })
    }
}

impl Port {
    /// A port charged to `process`.
    pub fn create(process: &impl AsHandle) -> Result<Port, Error> {
        sys::port_create(process.raw()).map(|h| Port(OwnedHandle(h)))
    }

    /// Waits for packets until `deadline` (ns of the monotonic clock,
    /// [`sys::NO_DEADLINE`]: forever); returns the packets received.
    pub fn wait<'a>(&self, deadline: u64, packets: &'a mut [PortPacket]) -> Result<&'a [PortPacket], Error> {
        let n = sys::port_wait(self.raw(), deadline, packets)?;
        Ok(&packets[..n.min(packets.len())])
    }

    /// Asks for a packet with `key` when `object` raises any of `signals`.
    pub fn watch(&self, object: &impl AsHandle, key: u64, signals: u32) -> Result<(), Error> {
        sys::object_wait_async(object.raw(), self.raw(), key, signals)
    }
}

impl Vmo {
    /// A memory object of `size` bytes, charged to `process`.
    pub fn create(process: &impl AsHandle, size: u64) -> Result<Vmo, Error> {
        sys::vmo_create(process.raw(), size).map(|h| Vmo(OwnedHandle(h)))
    }

    pub fn read(&self, offset: u64, buffer: &mut [u8]) -> Result<(), Error> {
        sys::vmo_read(self.raw(), offset, buffer)
    }

    pub fn write(&self, offset: u64, buffer: &[u8]) -> Result<(), Error> {
        sys::vmo_write(self.raw(), offset, buffer)
    }
}

impl AddressSpace {
    /// Maps `len` bytes of `vmo` from `vmo_offset` with `flags`; at exactly
    /// `addr` when `flags` has [`map::FIXED`]. Returns the address.
    pub fn map(&self, vmo: &Vmo, vmo_offset: u64, len: u64, flags: u32, addr: u64) -> Result<u64, Error> {
        sys::vmar_map(self.raw(), vmo.raw(), vmo_offset, len, flags, addr)
    }

    /// Maps at exactly `addr`.
    pub fn map_fixed(&self, vmo: &Vmo, vmo_offset: u64, len: u64, flags: u32, addr: u64) -> Result<u64, Error> {
        self.map(vmo, vmo_offset, len, flags | map::FIXED, addr)
    }

    pub fn unmap(&self, addr: u64, len: u64) -> Result<(), Error> {
        sys::vmar_unmap(self.raw(), addr, len)
    }

    pub fn protect(&self, addr: u64, len: u64, flags: u32) -> Result<(), Error> {
        sys::vmar_protect(self.raw(), addr, len, flags)
    }
}

impl Process {
    /// An empty process named `name` (<= 32 bytes) created by `parent`
    /// (which needs SPAWN), with its address space.
    pub fn create(parent: &impl AsHandle, name: &str) -> Result<(Process, AddressSpace), Error> {
        let (process, space) = sys::process_create(parent.raw(), name.as_bytes())?;
        Ok((Process(OwnedHandle(process)), AddressSpace(OwnedHandle(space))))
    }

    pub fn kill(&self) -> Result<(), Error> {
        sys::process_kill(self.raw())
    }

    /// The exit code once terminated (`BadState` while it runs).
    pub fn exit_code(&self) -> Result<i64, Error> {
        sys::process_exit_code(self.raw())
    }

    /// Moves `handle` into this process; returns its value there. On failure
    /// the handle is closed.
    pub fn give_handle(&self, handle: OwnedHandle) -> Result<Handle, Error> {
        let value = sys::process_give_handle(self.raw(), handle.raw())?;
        handle.into_raw();
        Ok(value)
    }

    /// The kernel object id (for log lines).
    pub fn koid(&self) -> Option<u64> {
        self.0.info().ok().map(|info| info.koid)
    }
}

impl Thread {
    /// A new, not yet running thread of `process`.
    pub fn create(process: &Process) -> Result<Thread, Error> {
        sys::thread_create(process.raw()).map(|h| Thread(OwnedHandle(h)))
    }

    pub fn start(&self, entry: u64, stack_top: u64, arg0: u64, arg1: u64) -> Result<(), Error> {
        sys::thread_start(self.raw(), entry, stack_top, arg0, arg1)
    }

    pub fn set_priority(&self, priority: Priority, cpu: Option<u64>) -> Result<(), Error> {
        sys::thread_set_priority(self.raw(), priority, cpu)
    }
}

impl Timer {
    /// A timer charged to `process`.
    pub fn create(process: &impl AsHandle) -> Result<Timer, Error> {
        sys::timer_create(process.raw()).map(|h| Timer(OwnedHandle(h)))
    }

    /// Fires (raises TIMER_FIRED) at `deadline`, ns of the monotonic clock.
    pub fn set(&self, deadline: u64) -> Result<(), Error> {
        sys::timer_set(self.raw(), deadline)
    }

    pub fn cancel(&self) -> Result<(), Error> {
        sys::timer_set(self.raw(), 0)
    }
}

impl Interrupt {
    /// A physical interrupt for `gsi` (`flags`: an `abi::interrupt::MODE_*`),
    /// authorised by the interrupt resource.
    pub fn create_physical(resource: &Resource, gsi: u32, flags: u32) -> Result<Interrupt, Error> {
        sys::interrupt_create_physical(resource.raw(), gsi, flags).map(|h| Interrupt(OwnedHandle(h)))
    }

    /// A virtual interrupt charged to `process`.
    pub fn create_virtual(process: &impl AsHandle) -> Result<Interrupt, Error> {
        sys::interrupt_create_virtual(process.raw()).map(|h| Interrupt(OwnedHandle(h)))
    }

    /// Each firing queues one packet with `key` on `port`.
    pub fn bind(&self, port: &Port, key: u64) -> Result<(), Error> {
        sys::interrupt_bind(self.raw(), port.raw(), key)
    }

    /// Lets the interrupt fire again (unmasks a physical line).
    pub fn ack(&self) -> Result<(), Error> {
        sys::interrupt_ack(self.raw())
    }

    /// Fires a virtual interrupt.
    pub fn trigger(&self) -> Result<(), Error> {
        sys::interrupt_trigger(self.raw())
    }
}

impl Log {
    /// Appends a record (text truncated to 512 bytes by the caller's choice;
    /// the kernel refuses longer ones).
    pub fn write(&self, level: u8, text: &[u8]) -> Result<(), Error> {
        sys::log_write(self.raw(), level, text)
    }

    /// The oldest unread kernel record into `buffer` (`ShouldWait`: none).
    pub fn read(&self, buffer: &mut [u8]) -> Result<usize, Error> {
        sys::log_read(self.raw(), buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_raw_does_not_close_and_round_trips() {
        let owned = OwnedHandle::from_raw(Handle(0x0001_0002));
        let raw = owned.into_raw();
        assert_eq!(raw, Handle(0x0001_0002));
        let channel = Channel::from_handle(OwnedHandle::from_raw(raw));
        assert_eq!(channel.raw(), raw);
        assert_eq!(channel.into_handle().into_raw(), raw);
    }

    #[test]
    fn message_take_handle_takes_the_first() {
        let mut message = Message {
            bytes: Vec::new(),
            handles: vec![OwnedHandle::from_raw(Handle(5)), OwnedHandle::from_raw(Handle(6))],
        };
        assert_eq!(message.take_handle().map(OwnedHandle::into_raw), Some(Handle(5)));
        assert_eq!(message.take_handle().map(OwnedHandle::into_raw), Some(Handle(6)));
        assert!(message.take_handle().is_none());
    }
}
