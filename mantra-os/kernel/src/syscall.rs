//! System calls: one dispatcher, every handler with the same shape
//! (`fn(&Ctx, [u64; 6]) -> Result<u64, Error>`), one error type mapped to the
//! user-visible code. The ABI (numbers, rights, errors) is mantra_abi's; each
//! syscall's contract is documented there.
//!
//! Nothing user mode passes can panic the kernel: every handle is looked up
//! with kind and rights checks, every pointer goes through `uaccess`, every
//! size is bounded before allocation.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use mantra_abi::{
    encode, fwvar, interrupt, map, nr, rights, CallArgs, Error, Handle, HandleInfo, PortPacket, Priority, ReadSizes, MAX_MESSAGE_BYTES,
    MAX_MESSAGE_HANDLES, SHORT_MESSAGE_BYTES, SHORT_NO_REPLY,
};
use mantra_kernel::cap::Capability;
use mantra_kernel::efivar;
use mantra_kernel::irq::LineMode;

use crate::arch::x86_64::TrapFrame;
use crate::interrupt::{Interrupt, ResourceKind};
use crate::ipc::{self, Endpoint, Message, Port, ReceiveBuffers, ReceiveWait, Timer};
use crate::klog::{Log, MAX_RECORD};
use crate::object::Object;
use crate::sched;
use crate::space::Vmo;
use crate::task::{Process, Thread};
use crate::uaccess::{UserPtr, UserSlice};

/// Syscalls handled (all CPUs), for statistics, but the register calls the
/// fast path completed (it counts nothing: every instruction there shows).
pub static COUNT: AtomicU64 = AtomicU64::new(0);

/// The calling thread and its process.
pub(crate) struct Ctx {
    thread: Arc<Thread>,
    process: Arc<Process>,
    /// The call registered the thread as a receiver: it parks on the way out.
    parked: core::cell::Cell<bool>,
    /// A short message received, for RDX, R10, R8, R9 on the way out.
    words: core::cell::Cell<Option<[u64; 4]>>,
}

impl Ctx {
    fn new(thread: Arc<Thread>) -> Self {
        let process = thread.process().clone();
        Self { thread, process, parked: core::cell::Cell::new(false), words: core::cell::Cell::new(None) }
    }
}

type Args = [u64; 6];

/// Entry from the SYSCALL shim: RAX number, args RDI RSI RDX R10 R8 R9.
pub fn dispatch(frame: &mut TrapFrame) {
    COUNT.fetch_add(1, Ordering::Relaxed);
    dispatch_counted(frame);
}

/// `dispatch` of a syscall already counted in COUNT. The register calls
/// come here from `fastpath::syscall_short` when the fast path did not
/// apply: they take the general path at once.
#[inline(always)]
pub fn dispatch_counted(frame: &mut TrapFrame) {
    if matches!(frame.rax, nr::CHANNEL_CALL | nr::CHANNEL_REPLY_RECEIVE) {
        // Returns only when the fast path does not apply.
        crate::fastpath::try_ipc(frame);
    }
    let Some(thread) = sched::current() else {
        frame.rax = encode(Err(Error::BadState));
        return;
    };
    let ctx = Ctx::new(thread);
    let args = [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9];
    let result = handle(&ctx, frame.rax, args);
    frame.rax = encode(result);
    if finish(ctx, frame) {
        park(frame);
    }
}

/// The end of every syscall: releases capabilities found revoked during
/// the call (outside the table's lock: dropping one may close a channel
/// end); a thread whose process was killed meanwhile (by itself or
/// another) leaves instead of returning to user mode. True when the thread
/// registered as a receiver and must park.
fn finish(ctx: Ctx, frame: &mut TrapFrame) -> bool {
    if let Some(words) = ctx.words.take() {
        [frame.rdx, frame.r10, frame.r8, frame.r9] = words;
    }
    let reaped = ctx.process.handles.lock().take_reaped();
    drop(reaped);
    if ctx.process.is_dead() {
        drop(ctx);
        sched::exit_current();
    }
    ctx.parked.get()
}

/// Parks the current thread (registered as a receiver, holding nothing)
/// and, if it was woken before it could leave the CPU, completes the
/// receive at once.
fn park(frame: &mut TrapFrame) {
    sched::park_current();
    resume_parked(frame);
}

/// Completes the receive a parked thread waited for, once it runs again:
/// called by the scheduler's resume path (context.rs) on the thread's own
/// stack and address space, with its TrapFrame; sets the syscall result.
/// Parks again when there is still nothing to receive (a spurious wake-up).
pub fn resume_parked(frame: &mut TrapFrame) {
    let Some(thread) = sched::current() else { return };
    // SAFETY: `thread` is the running thread.
    let wait = unsafe { thread.wait() }.take();
    let Some(wait) = wait else { return };
    wait.endpoint.remove_receiver(&thread);
    let ctx = Ctx::new(thread);
    let result = if ctx.process.is_dead() {
        // (Dropped here: `finish` does not return for a killed process.)
        drop(wait);
        Err(Error::BadState)
    } else {
        receive(&ctx, wait, true)
    };
    frame.rax = encode(result);
    if finish(ctx, frame) {
        park(frame);
    }
}

fn handle(ctx: &Ctx, number: u64, a: Args) -> Result<u64, Error> {
    match number {
        nr::HANDLE_CLOSE => handle_close(ctx, a),
        nr::HANDLE_DUPLICATE => handle_duplicate(ctx, a),
        nr::HANDLE_REVOKE => handle_revoke(ctx, a),
        nr::HANDLE_INFO => handle_info(ctx, a),
        nr::PROCESS_CREATE => process_create(ctx, a),
        nr::PROCESS_EXIT => process_exit(ctx, a),
        nr::PROCESS_KILL => process_kill(ctx, a),
        nr::PROCESS_EXIT_CODE => process_exit_code(ctx, a),
        nr::PROCESS_GIVE_HANDLE => process_give_handle(ctx, a),
        nr::THREAD_CREATE => thread_create(ctx, a),
        nr::THREAD_START => thread_start(ctx, a),
        nr::THREAD_EXIT => thread_exit(ctx),
        nr::THREAD_YIELD => {
            sched::yield_now();
            Ok(0)
        }
        nr::THREAD_SET_PRIORITY => thread_set_priority(ctx, a),
        nr::VMO_CREATE => vmo_create(ctx, a),
        nr::VMO_READ => vmo_read(ctx, a),
        nr::VMO_WRITE => vmo_write(ctx, a),
        nr::VMAR_MAP => vmar_map(ctx, a),
        nr::VMAR_UNMAP => vmar_unmap(ctx, a),
        nr::VMAR_PROTECT => vmar_protect(ctx, a),
        nr::CHANNEL_CREATE => channel_create(ctx, a),
        nr::CHANNEL_WRITE => channel_write(ctx, a),
        nr::CHANNEL_READ => channel_read(ctx, a, false),
        nr::CHANNEL_CALL => channel_call(ctx, a),
        nr::CHANNEL_RECEIVE => channel_read(ctx, a, true),
        nr::CHANNEL_REPLY_RECEIVE => channel_reply_receive(ctx, a),
        nr::CHANNEL_CALL_SHORT => channel_call_short(ctx, a, false),
        nr::CHANNEL_REPLY_RECEIVE_SHORT => channel_call_short(ctx, a, true),
        nr::PORT_CREATE => port_create(ctx, a),
        nr::PORT_WAIT => port_wait(ctx, a),
        nr::OBJECT_WAIT_ASYNC => object_wait_async(ctx, a),
        nr::TIMER_CREATE => timer_create(ctx, a),
        nr::TIMER_SET => timer_set(ctx, a),
        nr::INTERRUPT_ACK => interrupt_ack(ctx, a),
        nr::LOG_WRITE => log_write(ctx, a),
        nr::LOG_READ => log_read(ctx, a),
        nr::CLOCK_GET => Ok(ipc::clock_ns()),
        nr::INTERRUPT_CREATE => interrupt_create(ctx, a),
        nr::INTERRUPT_BIND => interrupt_bind(ctx, a),
        nr::INTERRUPT_TRIGGER => interrupt_trigger(ctx, a),
        nr::CONSOLE_READ => console_read(ctx, a),
        nr::CONSOLE_WRITE => console_write(ctx, a),
        nr::FIRMWARE_VARIABLE_GET => firmware_variable_get(ctx, a),
        nr::FIRMWARE_VARIABLE_SET => firmware_variable_set(ctx, a),
        _ => Err(Error::BadSyscall),
    }
}

pub(crate) fn handle_arg(raw: u64) -> Handle {
    // Values above u32 cannot name a handle; map them to the invalid one.
    Handle(u32::try_from(raw).unwrap_or(0))
}

macro_rules! extract {
    ($variant:ident) => {
        |object: &Object| match object {
            Object::$variant(inner) => Some(inner.clone()),
            _ => None,
        }
    };
}

impl Ctx {
    fn get<T>(&self, raw: u64, required: u32, extract: impl FnOnce(&Object) -> Option<T>) -> Result<T, Error> {
        self.process.handles.lock().get_checked(handle_arg(raw), required, extract)
    }

    fn give(&self, object: Object, rights: u32) -> Result<Handle, Error> {
        self.process.give(object, rights)
    }

    /// The process a creation is charged to (needs CREATE).
    fn creator(&self, raw: u64) -> Result<Arc<Process>, Error> {
        self.get(raw, rights::CREATE, extract!(Process))
    }
}

fn handle_close(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let cap = ctx.process.handles.lock().remove(handle_arg(a[0]))?;
    drop(cap); // outside the table lock: may signal a channel peer
    Ok(0)
}

fn handle_duplicate(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let rights = u32::try_from(a[1]).map_err(|_| Error::InvalidArgs)?;
    ctx.process.handles.lock().duplicate(handle_arg(a[0]), rights).map(|h| u64::from(h.0))
}

fn handle_revoke(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.process.handles.lock().revoke(handle_arg(a[0]))?;
    Ok(0)
}

fn handle_info(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let info = {
        let table = ctx.process.handles.lock();
        let cap = table.get(handle_arg(a[0]))?;
        HandleInfo { kind: cap.object.kind() as u32, rights: cap.rights, koid: cap.object.koid() }
    };
    UserPtr::<HandleInfo>::new(a[1]).write(&info)?;
    Ok(0)
}

/// Longest process name.
const MAX_NAME: usize = 32;

fn process_create(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.get(a[0], rights::SPAWN, extract!(Process))?;
    let name_len = usize::try_from(a[2]).map_err(|_| Error::InvalidArgs)?;
    if name_len > MAX_NAME {
        return Err(Error::InvalidArgs);
    }
    let name = UserSlice::<u8>::new(a[1], name_len).read_vec()?;
    let name = String::from_utf8(name).map_err(|_| Error::InvalidArgs)?;
    let out = UserSlice::<Handle>::new(a[3], 2);
    // Check the output before creating anything.
    out.write_from(&[Handle::INVALID; 2])?;
    let child = Process::new(&name)?;
    let space = child.space().clone();
    let mut table = ctx.process.handles.lock();
    let process_handle = table.insert(Capability::new(Object::Process(child), rights::ALL))?;
    let space_handle = match table.insert(Capability::new(Object::Space(space), rights::BASIC | rights::MAP | rights::EXECUTE)) {
        Ok(h) => h,
        Err(e) => {
            let _ = table.remove(process_handle);
            return Err(e);
        }
    };
    drop(table);
    out.write_from(&[process_handle, space_handle])?;
    Ok(0)
}

fn process_exit(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.process.terminate(a[0] as i64);
    Ok(0) // dispatch sees the dead process and leaves
}

fn process_kill(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let target = ctx.get(a[0], rights::MANAGE, extract!(Process))?;
    target.terminate(-1);
    Ok(0)
}

fn process_exit_code(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let target = ctx.get(a[0], rights::READ, extract!(Process))?;
    let code = target.exit_code().ok_or(Error::BadState)?;
    UserPtr::<i64>::new(a[1]).write(&code)?;
    Ok(0)
}

fn process_give_handle(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let target = ctx.get(a[0], rights::MANAGE, extract!(Process))?;
    if Arc::ptr_eq(&target, &ctx.process) {
        return Err(Error::InvalidArgs);
    }
    let (mut caps, ticket) = ctx.process.handles.lock().take_for_transfer(&[handle_arg(a[1])])?;
    let cap = caps.pop().expect("one handle taken");
    let inserted = target.handles.lock().insert_all(alloc::vec![cap]);
    match inserted {
        Ok(handles) => {
            ctx.process.handles.lock().commit_transfer(ticket);
            Ok(u64::from(handles[0].0))
        }
        Err((e, caps)) => {
            let leftover = ctx.process.handles.lock().abort_transfer(ticket, caps);
            drop(leftover);
            Err(e)
        }
    }
}

fn thread_create(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let process = ctx.get(a[0], rights::MANAGE, extract!(Process))?;
    if process.is_dead() {
        return Err(Error::BadState);
    }
    let thread = Thread::new(&process)?;
    ctx.give(Object::Thread(thread), rights::BASIC | rights::MANAGE).map(|h| u64::from(h.0))
}

fn user_address(addr: u64) -> Result<u64, Error> {
    if (mantra_abi::USER_BASE..mantra_abi::USER_END).contains(&addr) {
        Ok(addr)
    } else {
        Err(Error::InvalidArgs)
    }
}

fn thread_start(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let thread = ctx.get(a[0], rights::MANAGE, extract!(Thread))?;
    let entry = user_address(a[1])?;
    let stack = user_address(a[2]).or_else(|e| if a[2] == mantra_abi::USER_END { Ok(a[2]) } else { Err(e) })?;
    thread.start(entry, stack, a[3], a[4])?;
    Ok(0)
}

fn thread_exit(ctx: &Ctx) -> Result<u64, Error> {
    let last = ctx.process.remove_thread(&ctx.thread);
    if last {
        ctx.process.terminate(0);
    }
    sched::exit_current();
}

fn thread_set_priority(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let thread = ctx.get(a[0], rights::MANAGE, extract!(Thread))?;
    let priority = match a[1] {
        0 => Priority::Idle,
        1 => Priority::Normal,
        2 => Priority::Interactive,
        3 => Priority::RealTime,
        _ => return Err(Error::InvalidArgs),
    };
    let cpu = match a[2] {
        u64::MAX => None,
        c if (c as usize) < crate::arch::x86_64::percpu::online() => Some(c as usize),
        _ => return Err(Error::InvalidArgs),
    };
    thread.set_priority(priority, cpu);
    Ok(0)
}

fn vmo_create(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.creator(a[0])?;
    let vmo = Vmo::new(a[1])?;
    ctx.give(Object::Vmo(vmo), rights::BASIC | rights::MAP | rights::EXECUTE).map(|h| u64::from(h.0))
}

/// Largest single VMO read/write: bounds the kernel buffer.
const MAX_VMO_IO: usize = 1 << 20;

fn vmo_read(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let vmo = ctx.get(a[0], rights::READ, extract!(Vmo))?;
    let len = usize::try_from(a[3]).map_err(|_| Error::InvalidArgs)?;
    if len > MAX_VMO_IO {
        return Err(Error::InvalidArgs);
    }
    let mut buffer = Vec::new();
    buffer.try_reserve_exact(len).map_err(|_| Error::NoMemory)?;
    buffer.resize(len, 0);
    vmo.read(a[1], &mut buffer)?;
    UserSlice::<u8>::new(a[2], len).write_from(&buffer)?;
    Ok(0)
}

fn vmo_write(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let vmo = ctx.get(a[0], rights::WRITE, extract!(Vmo))?;
    let len = usize::try_from(a[3]).map_err(|_| Error::InvalidArgs)?;
    if len > MAX_VMO_IO {
        return Err(Error::InvalidArgs);
    }
    let data = UserSlice::<u8>::new(a[2], len).read_vec()?;
    vmo.write(a[1], &data)?;
    Ok(0)
}

/// Rights a mapping with `flags` needs on the memory object.
fn rights_for_map(flags: u32) -> u32 {
    let mut needed = rights::MAP;
    if flags & map::READ != 0 {
        needed |= rights::READ;
    }
    if flags & map::WRITE != 0 {
        needed |= rights::WRITE;
    }
    if flags & map::EXECUTE != 0 {
        needed |= rights::EXECUTE;
    }
    needed
}

fn vmar_map(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let space = ctx.get(a[0], rights::MAP, extract!(Space))?;
    let flags = u32::try_from(a[4]).map_err(|_| Error::InvalidArgs)?;
    let vmo = ctx.get(a[1], rights_for_map(flags), extract!(Vmo))?;
    // The mapping may later be raised (vmar_protect) only as far as the
    // memory-object handle's rights allow.
    let vmo_rights = ctx.process.handles.lock().get(handle_arg(a[1]))?.rights;
    let mut max_flags = 0;
    for (right, flag) in [(rights::READ, map::READ), (rights::WRITE, map::WRITE), (rights::EXECUTE, map::EXECUTE)] {
        if vmo_rights & right != 0 {
            max_flags |= flag;
        }
    }
    let fixed = (flags & map::FIXED != 0).then_some(a[5]);
    space.map(vmo, a[2], a[3], flags, max_flags, fixed)
}

fn vmar_unmap(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let space = ctx.get(a[0], rights::MAP, extract!(Space))?;
    space.unmap(a[1], a[2])?;
    Ok(0)
}

fn vmar_protect(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let space = ctx.get(a[0], rights::MAP, extract!(Space))?;
    let flags = u32::try_from(a[3]).map_err(|_| Error::InvalidArgs)?;
    space.protect(a[1], a[2], flags)?;
    Ok(0)
}

fn channel_create(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.creator(a[0])?;
    let out = UserSlice::<Handle>::new(a[1], 2);
    out.write_from(&[Handle::INVALID; 2])?;
    let (left, right) = Endpoint::pair();
    let channel_rights = rights::BASIC;
    let mut table = ctx.process.handles.lock();
    let first = table.insert(Capability::new(Object::Channel(left), channel_rights))?;
    let second = match table.insert(Capability::new(Object::Channel(right), channel_rights)) {
        Ok(h) => h,
        Err(e) => {
            let _ = table.remove(first);
            return Err(e);
        }
    };
    drop(table);
    out.write_from(&[first, second])?;
    Ok(0)
}

/// Builds a message from user buffers, taking the handles (all or none).
fn take_message(
    ctx: &Ctx,
    channel: &Arc<Endpoint>,
    bytes: u64,
    len: u64,
    handles: u64,
    count: u64,
) -> Result<(Message, mantra_kernel::handle::TransferTicket), Error> {
    let len = usize::try_from(len).map_err(|_| Error::InvalidArgs)?;
    let count = usize::try_from(count).map_err(|_| Error::InvalidArgs)?;
    if len > MAX_MESSAGE_BYTES || count > MAX_MESSAGE_HANDLES {
        return Err(Error::InvalidArgs);
    }
    let data = UserSlice::<u8>::new(bytes, len).read_vec()?;
    let sent = UserSlice::<Handle>::new(handles, count).read_vec()?;
    let mut table = ctx.process.handles.lock();
    // A channel may not carry either of its own ends (a queue holding its
    // own endpoint would never be freed).
    let peer = channel.peer();
    for &h in &sent {
        if let Ok(cap) = table.get(h) {
            if let Object::Channel(ep) = &cap.object {
                if Arc::ptr_eq(ep, channel) || peer.as_ref().is_some_and(|p| Arc::ptr_eq(ep, p)) {
                    return Err(Error::InvalidArgs);
                }
            }
        }
    }
    let (caps, ticket) = table.take_for_transfer(&sent)?;
    Ok((Message { bytes: data, handles: caps }, ticket))
}

fn send(ctx: &Ctx, channel: &Arc<Endpoint>, message: Message, ticket: mantra_kernel::handle::TransferTicket) -> Result<(), Error> {
    match channel.write(message) {
        Ok(()) => {
            ctx.process.handles.lock().commit_transfer(ticket);
            Ok(())
        }
        Err((e, message)) => {
            let leftover = ctx.process.handles.lock().abort_transfer(ticket, message.handles);
            drop(leftover);
            Err(e)
        }
    }
}

fn channel_write(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let channel = ctx.get(a[0], rights::WRITE, extract!(Channel))?;
    let (message, ticket) = take_message(ctx, &channel, a[1], a[2], a[3], a[4])?;
    send(ctx, &channel, message, ticket)?;
    Ok(0)
}

/// The receive of CHANNEL_READ/RECEIVE/CALL/REPLY_RECEIVE: delivers the
/// oldest message into the caller's buffers and table. With `block` and
/// nothing queued, registers the thread as a parked receiver (the wait is
/// kept in the thread; `ctx.parked` tells the dispatcher) and returns 0.
fn receive(ctx: &Ctx, wait: ReceiveWait, block: bool) -> Result<u64, Error> {
    let Some(buffers) = &wait.buffers else {
        return receive_words(ctx, wait, block);
    };
    let sizes = UserPtr::<ReadSizes>::new(buffers.sizes);
    let out_bytes = UserSlice::<u8>::new(buffers.bytes, buffers.capacity);
    let out_handles = UserSlice::<Handle>::new(buffers.handles, buffers.handle_capacity);
    sizes.write(&ReadSizes::default())?;
    let channel = wait.endpoint.clone();
    let mut wait = Some(wait);
    loop {
        // Prove the buffers writable for this message before taking it, so
        // a bad pointer never loses a message (the kernel is not preempted
        // between this check and the read below).
        if let Ok((bytes, count)) = channel.peek_sizes() {
            if bytes <= out_bytes.len() && count <= out_handles.len() {
                out_bytes.write_from(&alloc::vec![0u8; bytes])?;
                out_handles.write_from(&alloc::vec![Handle::INVALID; count])?;
            }
        }
        let mut needed = (0, 0);
        match channel.read(out_bytes.len(), out_handles.len(), &mut needed) {
            Ok(message) => {
                let Message { bytes, handles: caps } = message;
                let count = caps.len();
                let handle_values = match ctx.process.handles.lock().insert_all(caps) {
                    Ok(values) => values,
                    Err((e, caps)) => {
                        drop(caps); // the message is consumed; its handles close
                        return Err(e);
                    }
                };
                out_bytes.write_from(&bytes)?;
                out_handles.write_from(&handle_values)?;
                sizes.write(&ReadSizes { bytes: bytes.len() as u32, handles: count as u32 })?;
                return Ok(0);
            }
            Err(Error::BufferTooSmall) => {
                sizes.write(&ReadSizes { bytes: needed.0 as u32, handles: needed.1 as u32 })?;
                return Err(Error::BufferTooSmall);
            }
            Err(Error::ShouldWait) if block => {
                if let Some(result) = park_receiver(ctx, &channel, &mut wait) {
                    return result;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The receive of the short-message calls: the message goes into the
/// caller's registers (ctx.words), its length is the result.
fn receive_words(ctx: &Ctx, wait: ReceiveWait, block: bool) -> Result<u64, Error> {
    let channel = wait.endpoint.clone();
    let mut wait = Some(wait);
    loop {
        let mut needed = (0, 0);
        match channel.read(SHORT_MESSAGE_BYTES, 0, &mut needed) {
            Ok(message) => {
                let mut words = [0u64; 4];
                for (i, chunk) in message.bytes.chunks(8).enumerate() {
                    let mut word = [0u8; 8];
                    word[..chunk.len()].copy_from_slice(chunk);
                    words[i] = u64::from_le_bytes(word);
                }
                ctx.words.set(Some(words));
                return Ok(message.bytes.len() as u64);
            }
            Err(Error::ShouldWait) if block => {
                if let Some(result) = park_receiver(ctx, &channel, &mut wait) {
                    return result;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Nothing to read: registers the caller as a parked receiver of `channel`
/// (`Some(Ok(0))`, ctx.parked set), or fails at the deadline, or gives the
/// wait back (`None`) when a message came in meanwhile: read it.
fn park_receiver(ctx: &Ctx, channel: &Arc<Endpoint>, wait: &mut Option<ReceiveWait>) -> Option<Result<u64, Error>> {
    let deadline = wait.as_ref().map_or(u64::MAX, |w| w.deadline);
    if ipc::clock_ns() >= deadline {
        return Some(Err(Error::TimedOut));
    }
    // The wait is in place before the thread is on the list: a fast-path
    // sender reads it as soon as it finds the thread.
    // SAFETY: ctx.thread is the running thread.
    *unsafe { ctx.thread.wait() } = wait.take();
    if channel.park_receiver(&ctx.thread) {
        ipc::add_timeout(deadline, &ctx.thread);
        ctx.parked.set(true);
        return Some(Ok(0));
    }
    // SAFETY: as above.
    *wait = unsafe { ctx.thread.wait() }.take();
    None
}

fn read_wait(channel: Arc<Endpoint>, a: Args, deadline: u64) -> Result<ReceiveWait, Error> {
    Ok(ReceiveWait {
        endpoint: channel,
        buffers: Some(ReceiveBuffers {
            bytes: a[1],
            capacity: usize::try_from(a[2]).map_err(|_| Error::InvalidArgs)?,
            handles: a[3],
            handle_capacity: usize::try_from(a[4]).map_err(|_| Error::InvalidArgs)?,
            sizes: a[5],
        }),
        deadline,
    })
}

fn channel_read(ctx: &Ctx, a: Args, block: bool) -> Result<u64, Error> {
    let channel = ctx.get(a[0], rights::READ, extract!(Channel))?;
    receive(ctx, read_wait(channel, a, u64::MAX)?, block)
}

/// The receive half of CHANNEL_CALL and CHANNEL_REPLY_RECEIVE.
fn call_wait(channel: Arc<Endpoint>, args: &CallArgs, sizes: u64, deadline: u64) -> ReceiveWait {
    ReceiveWait { endpoint: channel, buffers: Some(ipc::ReceiveBuffers::of_call(args, sizes)), deadline }
}

/// Sends the write half of `args` on `channel`.
fn send_call_message(ctx: &Ctx, channel: &Arc<Endpoint>, args: &CallArgs) -> Result<(), Error> {
    let (message, ticket) = take_message(
        ctx,
        channel,
        args.write_bytes,
        u64::from(args.write_len),
        args.write_handles,
        u64::from(args.write_handle_count),
    )?;
    send(ctx, channel, message, ticket)
}

fn channel_call(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let channel = ctx.get(a[0], rights::READ | rights::WRITE, extract!(Channel))?;
    let args: CallArgs = UserPtr::<CallArgs>::new(a[1]).read()?;
    send_call_message(ctx, &channel, &args)?;
    receive(ctx, call_wait(channel, &args, a[2], a[3]), true)
}

fn channel_reply_receive(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let channel = ctx.get(a[0], rights::READ | rights::WRITE, extract!(Channel))?;
    let args: CallArgs = UserPtr::<CallArgs>::new(a[1]).read()?;
    send_call_message(ctx, &channel, &args)?;
    receive(ctx, call_wait(channel, &args, a[2], u64::MAX), true)
}

/// CHANNEL_CALL_SHORT, and CHANNEL_REPLY_RECEIVE_SHORT (`reply_receive`,
/// where SHORT_NO_REPLY sends nothing).
fn channel_call_short(ctx: &Ctx, a: Args, reply_receive: bool) -> Result<u64, Error> {
    let channel = ctx.get(a[0], rights::READ | rights::WRITE, extract!(Channel))?;
    if !(reply_receive && a[1] == SHORT_NO_REPLY) {
        let len = usize::try_from(a[1]).ok().filter(|&len| len <= SHORT_MESSAGE_BYTES).ok_or(Error::InvalidArgs)?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).map_err(|_| Error::NoMemory)?;
        for word in &a[2..6] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.truncate(len);
        channel.write(Message { bytes, handles: Vec::new() }).map_err(|(e, _)| e)?;
    }
    receive(ctx, ReceiveWait::registers(channel), true)
}

fn port_create(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.creator(a[0])?;
    ctx.give(Object::Port(Arc::new(Port::new())), rights::BASIC).map(|h| u64::from(h.0))
}

/// Most packets one port_wait returns.
const MAX_PACKETS: usize = 64;

fn port_wait(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let port = ctx.get(a[0], rights::READ, extract!(Port))?;
    let capacity = usize::try_from(a[3]).map_err(|_| Error::InvalidArgs)?;
    if capacity == 0 {
        return Err(Error::InvalidArgs);
    }
    let capacity = capacity.min(MAX_PACKETS);
    let out = UserSlice::<PortPacket>::new(a[2], capacity);
    out.write_from(&[])?; // validate the buffer before blocking
    let mut packets = [PortPacket::default(); MAX_PACKETS];
    let taken = port.wait(a[1], &mut packets[..capacity])?;
    out.write_from(&packets[..taken])?;
    Ok(taken as u64)
}

fn object_wait_async(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let object = ctx.get(a[0], rights::WAIT, |o: &Object| Some(o.clone()))?;
    let port = ctx.get(a[1], rights::WRITE, extract!(Port))?;
    if let Object::Channel(endpoint) = &object {
        // Before the observer exists: no fast-path delivery may skip it.
        endpoint.observed.store(true, Ordering::Release);
    }
    let signals = u32::try_from(a[3]).map_err(|_| Error::InvalidArgs)?;
    let state = object.signals().ok_or(Error::WrongType)?;
    let mut woken = false;
    state.lock().add_observer(port.clone(), a[2], signals, |_| woken = true)?;
    if woken {
        port.wake_waiters();
    }
    Ok(0)
}

fn timer_create(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.creator(a[0])?;
    ctx.give(Object::Timer(Arc::new(Timer::new())), rights::BASIC).map(|h| u64::from(h.0))
}

fn timer_set(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let timer = ctx.get(a[0], rights::WRITE, extract!(Timer))?;
    timer.set(a[1]);
    Ok(0)
}

fn interrupt_create(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let interrupt = if a[1] == interrupt::VIRTUAL {
        ctx.creator(a[0])?;
        if a[2] != 0 {
            return Err(Error::InvalidArgs);
        }
        Interrupt::new_virtual()
    } else {
        let resource = ctx.get(a[0], rights::CREATE, extract!(Resource))?;
        if resource.kind != ResourceKind::Interrupts {
            return Err(Error::WrongType);
        }
        let flags = u32::try_from(a[2]).map_err(|_| Error::InvalidArgs)?;
        let mode = LineMode::from_flags(flags).map_err(|()| Error::InvalidArgs)?;
        let gsi = u32::try_from(a[1]).map_err(|_| Error::OutOfRange)?;
        Interrupt::new_physical(gsi, mode)?
    };
    // On failure the object drops here, which frees a physical route.
    ctx.give(Object::Interrupt(interrupt), rights::BASIC).map(|h| u64::from(h.0))
}

fn interrupt_bind(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let interrupt = ctx.get(a[0], rights::READ, extract!(Interrupt))?;
    let port = ctx.get(a[1], rights::WRITE, extract!(Port))?;
    interrupt.bind(port, a[2])?;
    Ok(0)
}

fn interrupt_ack(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.get(a[0], rights::WRITE, extract!(Interrupt))?.ack()?;
    Ok(0)
}

fn interrupt_trigger(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.get(a[0], rights::WRITE, extract!(Interrupt))?.trigger()?;
    Ok(0)
}

fn log_write(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let log = ctx.get(a[0], rights::WRITE, extract!(Log))?;
    let level = u8::try_from(a[1]).ok().filter(|l| (1..=5).contains(l)).ok_or(Error::InvalidArgs)?;
    let len = usize::try_from(a[3]).map_err(|_| Error::InvalidArgs)?;
    if len > MAX_RECORD {
        return Err(Error::InvalidArgs);
    }
    let text = UserSlice::<u8>::new(a[2], len).read_vec()?;
    log.write(level, &text);
    Ok(0)
}

fn log_read(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let log: Arc<Log> = ctx.get(a[0], rights::READ, extract!(Log))?;
    let capacity = usize::try_from(a[2]).map_err(|_| Error::InvalidArgs)?;
    let out = UserSlice::<u8>::new(a[1], capacity);
    out.write_from(&[])?;
    let record = log.read().ok_or(Error::ShouldWait)?;
    let n = record.len().min(capacity);
    out.write_from(&record[..n])?;
    Ok(n as u64)
}

fn console_read(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    let console = ctx.get(a[0], rights::READ, extract!(Console))?;
    let capacity = usize::try_from(a[2]).map_err(|_| Error::InvalidArgs)?;
    if capacity == 0 {
        return Err(Error::InvalidArgs);
    }
    let capacity = capacity.min(mantra_abi::console::INPUT_BUFFER);
    let _reader = console.reader.lock();
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(capacity).map_err(|_| Error::NoMemory)?;
    bytes.resize(capacity, 0);
    let n = console.peek(&mut bytes);
    if n == 0 {
        return Err(Error::ShouldWait);
    }
    // Taken only once the caller has them: a bad buffer loses nothing.
    UserSlice::<u8>::new(a[1], capacity).write_from(&bytes[..n])?;
    console.consume(n);
    Ok(n as u64)
}

fn console_write(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    ctx.get(a[0], rights::WRITE, extract!(Console))?;
    let len = usize::try_from(a[2]).map_err(|_| Error::InvalidArgs)?;
    if len == 0 || len > mantra_abi::console::MAX_WRITE {
        return Err(Error::InvalidArgs);
    }
    let bytes = UserSlice::<u8>::new(a[1], len).read_vec()?;
    if !crate::conio::valid_lines(&bytes) {
        return Err(Error::InvalidArgs);
    }
    crate::console::write_lines(&bytes);
    Ok(0)
}

/// The firmware-variable resource behind `raw`, with `required` rights.
fn fwvar_resource(ctx: &Ctx, raw: u64, required: u32) -> Result<(), Error> {
    let resource = ctx.get(raw, required, extract!(Resource))?;
    if resource.kind != ResourceKind::FirmwareVariables {
        return Err(Error::WrongType);
    }
    Ok(())
}

/// A variable name from user memory: checked, then converted to UCS-2.
fn variable_name(addr: u64, len: u64) -> Result<(efivar::Ucs2Name, [u8; fwvar::MAX_NAME_LEN], usize), Error> {
    let len = usize::try_from(len).ok().filter(|n| (1..=fwvar::MAX_NAME_LEN).contains(n)).ok_or(Error::InvalidArgs)?;
    let mut ascii = [0u8; fwvar::MAX_NAME_LEN];
    UserSlice::<u8>::new(addr, len).read_into(&mut ascii[..len])?;
    Ok((efivar::name_to_ucs2(&ascii[..len])?, ascii, len))
}

/// Largest value FIRMWARE_VARIABLE_GET reads in one call (the kernel's
/// buffer); a bigger variable reads as BUFFER_TOO_SMALL.
const MAX_VARIABLE_READ: usize = 64 * 1024;

fn firmware_variable_get(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    fwvar_resource(ctx, a[0], rights::READ)?;
    let (name, _, _) = variable_name(a[1], a[2])?;
    let capacity = usize::try_from(a[4]).map_err(|_| Error::InvalidArgs)?;
    let out = UserSlice::<u8>::new(a[3], capacity);
    out.write_from(&[])?; // validate the buffer before calling the firmware
    let info = (a[5] != 0).then(|| UserPtr::<fwvar::VariableInfo>::new(a[5]));
    if let Some(info) = &info {
        info.write(&fwvar::VariableInfo::default())?;
    }
    let mut buffer = Vec::new();
    let size = capacity.min(MAX_VARIABLE_READ);
    buffer.try_reserve_exact(size).map_err(|_| Error::NoMemory)?;
    buffer.resize(size, 0u8);
    let got = crate::efirt::get_variable(&name, &mut buffer).ok_or(Error::NotSupported)?;
    let report = |size: usize, attributes: u32| -> Result<(), Error> {
        let value = fwvar::VariableInfo { size: u32::try_from(size).unwrap_or(u32::MAX), attributes };
        info.map_or(Ok(()), |info| info.write(&value))
    };
    match got.status {
        efivar::status::SUCCESS if got.size <= buffer.len() => {
            out.write_from(&buffer[..got.size])?;
            report(got.size, got.attributes)?;
            Ok(got.size as u64)
        }
        efivar::status::SUCCESS => Err(Error::IoError), // the firmware overran its own report
        efivar::status::BUFFER_TOO_SMALL => {
            report(got.size, 0)?;
            Err(Error::BufferTooSmall)
        }
        other => Err(efivar::status_to_error(other)),
    }
}

fn firmware_variable_set(ctx: &Ctx, a: Args) -> Result<u64, Error> {
    fwvar_resource(ctx, a[0], rights::WRITE)?;
    let (name, ascii, len) = variable_name(a[1], a[2])?;
    let attributes = efivar::check_set_attributes(a[3])?;
    let data_len = efivar::check_data_len(a[5])?;
    if !efivar::user_may_write(&ascii[..len]) {
        return Err(Error::AccessDenied);
    }
    let data = UserSlice::<u8>::new(a[4], data_len).read_vec()?;
    match crate::efirt::set_variable(&name, attributes, &data).ok_or(Error::NotSupported)? {
        efivar::status::SUCCESS => Ok(0),
        other => Err(efivar::status_to_error(other)),
    }
}
