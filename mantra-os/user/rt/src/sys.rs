//! Raw syscalls: one typed wrapper per number of [`abi::nr`], in its order.
//!
//! Every wrapper passes its arguments in the registers of the ABI
//! (RAX = number; RDI, RSI, RDX, R10, R8, R9) and decodes RAX with
//! [`abi::decode`]. Buffers are Rust slices, so the kernel always gets a
//! pointer and length that describe memory this process owns; the kernel
//! still checks them. Handles are plain [`Handle`] values here: ownership
//! (closing on drop) is the business of [`crate::handle`].
//!
//! On any target other than bare-metal x86_64 no syscall is issued: every
//! wrapper fails with [`Error::NotSupported`] (so the runtime's pure parts can
//! be unit-tested on the host).

use mantra_abi::{self as abi, nr, CallArgs, Error, Handle, HandleInfo, PortPacket, Priority, ReadSizes};

/// A deadline that never passes (`u64::MAX`).
pub const NO_DEADLINE: u64 = u64::MAX;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod raw {
    use core::arch::asm;

    /// Issues `syscall` with up to six arguments; returns RAX.
    ///
    /// # Safety
    ///
    /// Every pointer argument must describe memory valid for the access the
    /// syscall `nr` makes (the safe wrappers pass slices and references).
    #[inline(always)]
    pub unsafe fn syscall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64 {
        let ret: u64;
        // SAFETY: the caller vouches for the pointer arguments. `syscall`
        // clobbers RCX (return RIP) and R11 (saved RFLAGS); the kernel
        // preserves every other register and does not touch our stack.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") nr => ret,
                in("rdi") a0,
                in("rsi") a1,
                in("rdx") a2,
                in("r10") a3,
                in("r8") a4,
                in("r9") a5,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod raw_short {
    use core::arch::asm;

    /// Issues a short-message syscall (CHANNEL_CALL_SHORT,
    /// CHANNEL_REPLY_RECEIVE_SHORT): `len` and the four message words go
    /// out in RSI, RDX, R10, R8, R9; RAX comes back, and the answer's words
    /// replace `words` (unchanged on error).
    #[inline(always)]
    pub fn syscall(nr: u64, channel: u64, len: u64, words: &mut [u64; 4]) -> u64 {
        let ret: u64;
        // SAFETY: no pointer arguments; the kernel writes only RAX and the
        // four message registers (declared as outputs) and clobbers RCX, R11.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") nr => ret,
                in("rdi") channel,
                in("rsi") len,
                inlateout("rdx") words[0],
                inlateout("r10") words[1],
                inlateout("r8") words[2],
                inlateout("r9") words[3],
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
pub mod raw_short {
    /// Host stand-in: no kernel here.
    pub fn syscall(_nr: u64, _channel: u64, _len: u64, _words: &mut [u64; 4]) -> u64 {
        mantra_abi::encode(Err(mantra_abi::Error::NotSupported))
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
pub mod raw {
    /// Host stand-in: no kernel here.
    ///
    /// # Safety
    ///
    /// Always safe; `unsafe` only to match the real signature.
    pub unsafe fn syscall(_nr: u64, _a0: u64, _a1: u64, _a2: u64, _a3: u64, _a4: u64, _a5: u64) -> u64 {
        mantra_abi::encode(Err(mantra_abi::Error::NotSupported))
    }
}

#[inline(always)]
fn call(nr: u64, args: [u64; 6]) -> Result<u64, Error> {
    // SAFETY: every caller below derives pointer arguments from live Rust
    // references or slices of the length it passes.
    abi::decode(unsafe { raw::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) })
}

fn h(handle: Handle) -> u64 {
    u64::from(handle.0)
}

fn handle_from(value: u64) -> Handle {
    Handle(value as u32)
}

fn unit(result: Result<u64, Error>) -> Result<(), Error> {
    result.map(|_| ())
}

/// `HANDLE_CLOSE`: closes `handle`.
pub fn handle_close(handle: Handle) -> Result<(), Error> {
    unit(call(nr::HANDLE_CLOSE, [h(handle), 0, 0, 0, 0, 0]))
}

/// `HANDLE_DUPLICATE`: a new handle to the same object with `rights` (a subset).
pub fn handle_duplicate(handle: Handle, rights: u32) -> Result<Handle, Error> {
    call(nr::HANDLE_DUPLICATE, [h(handle), u64::from(rights), 0, 0, 0, 0]).map(handle_from)
}

/// `HANDLE_REVOKE`: kills every handle derived from `handle`.
pub fn handle_revoke(handle: Handle) -> Result<(), Error> {
    unit(call(nr::HANDLE_REVOKE, [h(handle), 0, 0, 0, 0, 0]))
}

/// `HANDLE_INFO`: kind, rights and object id of `handle`.
pub fn handle_info(handle: Handle) -> Result<HandleInfo, Error> {
    let mut info = HandleInfo::default();
    call(nr::HANDLE_INFO, [h(handle), &mut info as *mut HandleInfo as u64, 0, 0, 0, 0])?;
    Ok(info)
}

/// `PROCESS_CREATE`: an empty process named `name` (<= 32 bytes); returns
/// (process, address space).
pub fn process_create(parent: Handle, name: &[u8]) -> Result<(Handle, Handle), Error> {
    let mut out = [Handle::INVALID; 2];
    call(nr::PROCESS_CREATE, [h(parent), name.as_ptr() as u64, name.len() as u64, out.as_mut_ptr() as u64, 0, 0])?;
    Ok((out[0], out[1]))
}

/// `PROCESS_EXIT`: ends the calling process with `code`.
pub fn process_exit(code: i64) -> ! {
    let _ = call(nr::PROCESS_EXIT, [code as u64, 0, 0, 0, 0, 0]);
    // Only reached on the host, or if the kernel broke its contract.
    loop {
        let _ = call(nr::THREAD_EXIT, [0; 6]);
        core::hint::spin_loop();
    }
}

/// `PROCESS_KILL`: stops every thread of `process`.
pub fn process_kill(process: Handle) -> Result<(), Error> {
    unit(call(nr::PROCESS_KILL, [h(process), 0, 0, 0, 0, 0]))
}

/// `PROCESS_EXIT_CODE`: the exit code of a terminated process (faults are
/// `-1000 - vector`, see [`crate::exit`]).
pub fn process_exit_code(process: Handle) -> Result<i64, Error> {
    let mut code: i64 = 0;
    call(nr::PROCESS_EXIT_CODE, [h(process), &mut code as *mut i64 as u64, 0, 0, 0, 0])?;
    Ok(code)
}

/// `PROCESS_GIVE_HANDLE`: moves `handle` into `process`; returns its value there.
pub fn process_give_handle(process: Handle, handle: Handle) -> Result<Handle, Error> {
    call(nr::PROCESS_GIVE_HANDLE, [h(process), h(handle), 0, 0, 0, 0]).map(handle_from)
}

/// `THREAD_CREATE`: a thread of `process`, not yet running.
pub fn thread_create(process: Handle) -> Result<Handle, Error> {
    call(nr::THREAD_CREATE, [h(process), 0, 0, 0, 0, 0]).map(handle_from)
}

/// `THREAD_START`: runs `thread` at `entry` on the stack `stack_top` with
/// `arg0` in RDI and `arg1` in RSI.
pub fn thread_start(thread: Handle, entry: u64, stack_top: u64, arg0: u64, arg1: u64) -> Result<(), Error> {
    unit(call(nr::THREAD_START, [h(thread), entry, stack_top, arg0, arg1, 0]))
}

/// `THREAD_EXIT`: ends the calling thread.
pub fn thread_exit() -> ! {
    loop {
        let _ = call(nr::THREAD_EXIT, [0; 6]);
        core::hint::spin_loop();
    }
}

/// `THREAD_YIELD`: lets the next runnable thread run.
pub fn thread_yield() {
    let _ = call(nr::THREAD_YIELD, [0; 6]);
}

/// `THREAD_SET_PRIORITY`: scheduling class and CPU affinity (`None`: any CPU).
pub fn thread_set_priority(thread: Handle, priority: Priority, cpu: Option<u64>) -> Result<(), Error> {
    unit(call(nr::THREAD_SET_PRIORITY, [h(thread), priority as u64, cpu.unwrap_or(u64::MAX), 0, 0, 0]))
}

/// `VMO_CREATE`: a memory object of `size` bytes charged to `process`.
pub fn vmo_create(process: Handle, size: u64) -> Result<Handle, Error> {
    call(nr::VMO_CREATE, [h(process), size, 0, 0, 0, 0]).map(handle_from)
}

/// `VMO_READ`: fills `buffer` from `vmo` at `offset`.
pub fn vmo_read(vmo: Handle, offset: u64, buffer: &mut [u8]) -> Result<(), Error> {
    unit(call(nr::VMO_READ, [h(vmo), offset, buffer.as_mut_ptr() as u64, buffer.len() as u64, 0, 0]))
}

/// `VMO_WRITE`: copies `buffer` into `vmo` at `offset`.
pub fn vmo_write(vmo: Handle, offset: u64, buffer: &[u8]) -> Result<(), Error> {
    unit(call(nr::VMO_WRITE, [h(vmo), offset, buffer.as_ptr() as u64, buffer.len() as u64, 0, 0]))
}

/// `VMAR_MAP`: maps `len` bytes of `vmo` from `vmo_offset` into `space` with
/// `flags` ([`abi::map`]); at `addr` with `map::FIXED`. Returns the address.
pub fn vmar_map(space: Handle, vmo: Handle, vmo_offset: u64, len: u64, flags: u32, addr: u64) -> Result<u64, Error> {
    call(nr::VMAR_MAP, [h(space), h(vmo), vmo_offset, len, u64::from(flags), addr])
}

/// `VMAR_UNMAP`: removes the whole mappings inside `[addr, addr + len)`.
pub fn vmar_unmap(space: Handle, addr: u64, len: u64) -> Result<(), Error> {
    unit(call(nr::VMAR_UNMAP, [h(space), addr, len, 0, 0, 0]))
}

/// `VMAR_PROTECT`: new protection `flags` for the mappings inside `[addr, addr + len)`.
pub fn vmar_protect(space: Handle, addr: u64, len: u64, flags: u32) -> Result<(), Error> {
    unit(call(nr::VMAR_PROTECT, [h(space), addr, len, u64::from(flags), 0, 0]))
}

/// `CHANNEL_CREATE`: two connected endpoints, charged to `process`.
pub fn channel_create(process: Handle) -> Result<(Handle, Handle), Error> {
    let mut out = [Handle::INVALID; 2];
    call(nr::CHANNEL_CREATE, [h(process), out.as_mut_ptr() as u64, 0, 0, 0, 0])?;
    Ok((out[0], out[1]))
}

/// `CHANNEL_WRITE`: queues `bytes` and moves `handles` to the peer.
pub fn channel_write(channel: Handle, bytes: &[u8], handles: &[Handle]) -> Result<(), Error> {
    unit(call(
        nr::CHANNEL_WRITE,
        [h(channel), bytes.as_ptr() as u64, bytes.len() as u64, handles.as_ptr() as u64, handles.len() as u64, 0],
    ))
}

/// `CHANNEL_READ`: takes the oldest message into `bytes` and `handles`
/// without blocking. `sizes` receives what the message holds, also when the
/// call fails with `BufferTooSmall` (the message then stays queued).
pub fn channel_read(
    channel: Handle,
    bytes: &mut [u8],
    handles: &mut [Handle],
    sizes: &mut ReadSizes,
) -> Result<(), Error> {
    unit(call(
        nr::CHANNEL_READ,
        [
            h(channel),
            bytes.as_mut_ptr() as u64,
            bytes.len() as u64,
            handles.as_mut_ptr() as u64,
            handles.len() as u64,
            sizes as *mut ReadSizes as u64,
        ],
    ))
}

/// The CallArgs of a call that sends `request` (no handles) and takes a
/// reply of up to `reply.len()` bytes (no handles) into `reply`.
pub fn call_args(request: &[u8], reply: &mut [u8]) -> CallArgs {
    CallArgs {
        write_bytes: request.as_ptr() as u64,
        write_len: request.len() as u32,
        read_bytes: reply.as_mut_ptr() as u64,
        read_capacity: reply.len() as u32,
        ..CallArgs::default()
    }
}

/// `CHANNEL_CALL`: writes the request `args` describes and blocks for the
/// reply (until `deadline`, ns of [`clock_get`]).
///
/// # Safety
///
/// The pointers in `args` must describe buffers valid for the call: the
/// request bytes and handles readable, the reply buffers writable, with the
/// lengths and capacities `args` gives. [`Channel::call`](crate::Channel::call)
/// builds them from slices.
pub unsafe fn channel_call(channel: Handle, args: &CallArgs, deadline: u64) -> Result<ReadSizes, Error> {
    let mut sizes = ReadSizes::default();
    unit(call(
        nr::CHANNEL_CALL,
        [h(channel), args as *const CallArgs as u64, &mut sizes as *mut ReadSizes as u64, deadline, 0, 0],
    ))?;
    Ok(sizes)
}

/// `CHANNEL_REPLY_RECEIVE`: sends the reply the write half of `args`
/// describes, then blocks for the next request (the read half): a server
/// loop's one syscall per request.
///
/// # Safety
///
/// As [`channel_call`]: the pointers in `args` must describe valid buffers.
pub unsafe fn channel_reply_receive(channel: Handle, args: &CallArgs) -> Result<ReadSizes, Error> {
    let mut sizes = ReadSizes::default();
    unit(call(
        nr::CHANNEL_REPLY_RECEIVE,
        [h(channel), args as *const CallArgs as u64, &mut sizes as *mut ReadSizes as u64, 0, 0, 0],
    ))?;
    Ok(sizes)
}

/// A message of the short-message calls: up to
/// [`SHORT_MESSAGE_BYTES`](mantra_abi::SHORT_MESSAGE_BYTES) bytes in four
/// little-endian words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShortMessage {
    pub len: usize,
    pub words: [u64; 4],
}

impl ShortMessage {
    /// The message holding `bytes` (None if longer than 32 bytes).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > mantra_abi::SHORT_MESSAGE_BYTES {
            return None;
        }
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut le = [0u8; 8];
            le[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
        }
        Some(Self { len: bytes.len(), words })
    }

    /// Copies the message's bytes to the front of `out`; returns how many.
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        let n = self.len.min(out.len()).min(mantra_abi::SHORT_MESSAGE_BYTES);
        for (i, byte) in out[..n].iter_mut().enumerate() {
            *byte = self.words[i / 8].to_le_bytes()[i % 8];
        }
        n
    }
}

/// `CHANNEL_CALL_SHORT`: sends `message` and blocks for the reply, both in
/// registers (the fastest call: no memory is copied).
#[inline(always)]
pub fn channel_call_short(channel: Handle, message: &ShortMessage) -> Result<ShortMessage, Error> {
    let mut words = message.words;
    let len = abi::decode(raw_short::syscall(nr::CHANNEL_CALL_SHORT, h(channel), message.len as u64, &mut words))?;
    Ok(ShortMessage { len: len as usize, words })
}

/// `CHANNEL_REPLY_RECEIVE_SHORT`: sends `reply` (None: nothing, only
/// receive) and blocks for the next message, both in registers.
#[inline(always)]
pub fn channel_reply_receive_short(channel: Handle, reply: Option<&ShortMessage>) -> Result<ShortMessage, Error> {
    let (len, mut words) = match reply {
        Some(reply) => (reply.len as u64, reply.words),
        None => (mantra_abi::SHORT_NO_REPLY, [0; 4]),
    };
    let len = abi::decode(raw_short::syscall(nr::CHANNEL_REPLY_RECEIVE_SHORT, h(channel), len, &mut words))?;
    Ok(ShortMessage { len: len as usize, words })
}

/// `CHANNEL_RECEIVE`: as [`channel_read`], but blocks until a message arrives.
pub fn channel_receive(
    channel: Handle,
    bytes: &mut [u8],
    handles: &mut [Handle],
    sizes: &mut ReadSizes,
) -> Result<(), Error> {
    unit(call(
        nr::CHANNEL_RECEIVE,
        [
            h(channel),
            bytes.as_mut_ptr() as u64,
            bytes.len() as u64,
            handles.as_mut_ptr() as u64,
            handles.len() as u64,
            sizes as *mut ReadSizes as u64,
        ],
    ))
}

/// `PORT_CREATE`: a port charged to `process`.
pub fn port_create(process: Handle) -> Result<Handle, Error> {
    call(nr::PORT_CREATE, [h(process), 0, 0, 0, 0, 0]).map(handle_from)
}

/// `PORT_WAIT`: waits for packets until `deadline`; returns how many were
/// written to the front of `packets`.
pub fn port_wait(port: Handle, deadline: u64, packets: &mut [PortPacket]) -> Result<usize, Error> {
    call(nr::PORT_WAIT, [h(port), deadline, packets.as_mut_ptr() as u64, packets.len() as u64, 0, 0])
        .map(|n| n as usize)
}

/// `OBJECT_WAIT_ASYNC`: one packet with `key` on `port` when `object` raises
/// any of `signals`.
pub fn object_wait_async(object: Handle, port: Handle, key: u64, signals: u32) -> Result<(), Error> {
    unit(call(nr::OBJECT_WAIT_ASYNC, [h(object), h(port), key, u64::from(signals), 0, 0]))
}

/// `TIMER_CREATE`: a timer charged to `process`.
pub fn timer_create(process: Handle) -> Result<Handle, Error> {
    call(nr::TIMER_CREATE, [h(process), 0, 0, 0, 0, 0]).map(handle_from)
}

/// `TIMER_SET`: arms `timer` for `deadline` (ns of [`clock_get`]; 0 cancels).
pub fn timer_set(timer: Handle, deadline: u64) -> Result<(), Error> {
    unit(call(nr::TIMER_SET, [h(timer), deadline, 0, 0, 0, 0]))
}

/// `INTERRUPT_ACK`: lets `interrupt` fire again.
pub fn interrupt_ack(interrupt: Handle) -> Result<(), Error> {
    unit(call(nr::INTERRUPT_ACK, [h(interrupt), 0, 0, 0, 0, 0]))
}

/// `LOG_WRITE`: appends `text` (<= 512 bytes) at `level` (1 error .. 5 trace) to `log`.
pub fn log_write(log: Handle, level: u8, text: &[u8]) -> Result<(), Error> {
    unit(call(nr::LOG_WRITE, [h(log), u64::from(level), text.as_ptr() as u64, text.len() as u64, 0, 0]))
}

/// `LOG_READ`: the oldest kernel record not yet read through `log`, into
/// `buffer`; returns its length.
pub fn log_read(log: Handle, buffer: &mut [u8]) -> Result<usize, Error> {
    call(nr::LOG_READ, [h(log), buffer.as_mut_ptr() as u64, buffer.len() as u64, 0, 0, 0]).map(|n| n as usize)
}

/// `CLOCK_GET`: monotonic nanoseconds since boot (0 on the host).
pub fn clock_get() -> u64 {
    call(nr::CLOCK_GET, [0; 6]).unwrap_or(0)
}

/// `INTERRUPT_CREATE` for GSI `gsi`: a physical interrupt, authorised by the
/// interrupt `resource`; `flags` is one of [`abi::interrupt`]'s `MODE_*`.
pub fn interrupt_create_physical(resource: Handle, gsi: u32, flags: u32) -> Result<Handle, Error> {
    call(nr::INTERRUPT_CREATE, [h(resource), u64::from(gsi), u64::from(flags), 0, 0, 0]).map(handle_from)
}

/// `INTERRUPT_CREATE` with [`abi::interrupt::VIRTUAL`]: a virtual
/// interrupt charged to `process`, fired by [`interrupt_trigger`].
pub fn interrupt_create_virtual(process: Handle) -> Result<Handle, Error> {
    call(nr::INTERRUPT_CREATE, [h(process), abi::interrupt::VIRTUAL, 0, 0, 0, 0]).map(handle_from)
}

/// `INTERRUPT_BIND`: each firing of `interrupt` queues one packet with `key` on `port`.
pub fn interrupt_bind(interrupt: Handle, port: Handle, key: u64) -> Result<(), Error> {
    unit(call(nr::INTERRUPT_BIND, [h(interrupt), h(port), key, 0, 0, 0]))
}

/// `INTERRUPT_TRIGGER`: fires a virtual interrupt.
pub fn interrupt_trigger(interrupt: Handle) -> Result<(), Error> {
    unit(call(nr::INTERRUPT_TRIGGER, [h(interrupt), 0, 0, 0, 0, 0]))
}

/// `FIRMWARE_VARIABLE_GET`: reads the firmware variable `name` (printable
/// ASCII, MantraOS vendor GUID) into `buffer` through the firmware-variable
/// resource `fwvar`; returns its size and attributes. On
/// `BufferTooSmall`, `info.size` (when given) holds the size needed.
pub fn firmware_variable_get(
    fwvar: Handle,
    name: &str,
    buffer: &mut [u8],
    info: Option<&mut mantra_abi::fwvar::VariableInfo>,
) -> Result<usize, Error> {
    let info = info.map_or(0, |i| i as *mut mantra_abi::fwvar::VariableInfo as u64);
    call(
        nr::FIRMWARE_VARIABLE_GET,
        [h(fwvar), name.as_ptr() as u64, name.len() as u64, buffer.as_mut_ptr() as u64, buffer.len() as u64, info],
    )
    .map(|n| n as usize)
}

/// `FIRMWARE_VARIABLE_SET`: writes the firmware variable `name` with
/// `attributes` (`fwvar::ATTRS_NV` or `fwvar::ATTRS_VOLATILE`); empty
/// `data` deletes it.
pub fn firmware_variable_set(fwvar: Handle, name: &str, attributes: u32, data: &[u8]) -> Result<(), Error> {
    unit(call(
        nr::FIRMWARE_VARIABLE_SET,
        [h(fwvar), name.as_ptr() as u64, name.len() as u64, u64::from(attributes), data.as_ptr() as u64, data.len() as u64],
    ))
}

/// `CONSOLE_READ`: takes buffered console input into `buffer`; returns
/// how many bytes (`ShouldWait` when none: wait for READABLE).
pub fn console_read(console: Handle, buffer: &mut [u8]) -> Result<usize, Error> {
    call(nr::CONSOLE_READ, [h(console), buffer.as_mut_ptr() as u64, buffer.len() as u64, 0, 0, 0]).map(|n| n as usize)
}

/// `CONSOLE_WRITE`: writes whole lines (printable ASCII, ending with a
/// line end, at most [`abi::console::MAX_WRITE`] bytes) in one piece.
pub fn console_write(console: Handle, lines: &[u8]) -> Result<(), Error> {
    unit(call(nr::CONSOLE_WRITE, [h(console), lines.as_ptr() as u64, lines.len() as u64, 0, 0, 0]))
}

/// Every syscall number this module wraps, for the completeness test.
#[cfg(test)]
const WRAPPED: &[u64] = &[
    nr::HANDLE_CLOSE,
    nr::HANDLE_DUPLICATE,
    nr::HANDLE_REVOKE,
    nr::HANDLE_INFO,
    nr::PROCESS_CREATE,
    nr::PROCESS_EXIT,
    nr::PROCESS_KILL,
    nr::PROCESS_EXIT_CODE,
    nr::PROCESS_GIVE_HANDLE,
    nr::THREAD_CREATE,
    nr::THREAD_START,
    nr::THREAD_EXIT,
    nr::THREAD_YIELD,
    nr::THREAD_SET_PRIORITY,
    nr::VMO_CREATE,
    nr::VMO_READ,
    nr::VMO_WRITE,
    nr::VMAR_MAP,
    nr::VMAR_UNMAP,
    nr::VMAR_PROTECT,
    nr::CHANNEL_CREATE,
    nr::CHANNEL_WRITE,
    nr::CHANNEL_READ,
    nr::CHANNEL_CALL,
    nr::CHANNEL_RECEIVE,
    nr::PORT_CREATE,
    nr::PORT_WAIT,
    nr::OBJECT_WAIT_ASYNC,
    nr::TIMER_CREATE,
    nr::TIMER_SET,
    nr::INTERRUPT_ACK,
    nr::LOG_WRITE,
    nr::LOG_READ,
    nr::CLOCK_GET,
    nr::CHANNEL_REPLY_RECEIVE,
    nr::INTERRUPT_CREATE,
    nr::INTERRUPT_BIND,
    nr::INTERRUPT_TRIGGER,
    nr::CHANNEL_CALL_SHORT,
    nr::CHANNEL_REPLY_RECEIVE_SHORT,
    nr::FIRMWARE_VARIABLE_GET,
    nr::FIRMWARE_VARIABLE_SET,
    nr::CONSOLE_READ,
    nr::CONSOLE_WRITE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syscall_number_is_wrapped_once() {
        let mut seen = [false; nr::COUNT as usize];
        for &number in WRAPPED.iter().chain(nr::RESERVED) {
            assert!(!seen[number as usize], "syscall {number} listed twice");
            seen[number as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn short_messages_pack_little_endian_words() {
        let message = ShortMessage::from_bytes(b"0123456789").unwrap();
        assert_eq!(message.len, 10);
        assert_eq!(message.words[0], u64::from_le_bytes(*b"01234567"));
        assert_eq!(message.words[1], u64::from(b'8') | u64::from(b'9') << 8);
        let mut out = [0u8; 16];
        assert_eq!(message.copy_to(&mut out), 10);
        assert_eq!(&out[..10], b"0123456789");
        assert!(ShortMessage::from_bytes(&[0; 33]).is_none());
        assert_eq!(channel_call_short(Handle(1), &message), Err(Error::NotSupported));
    }

    #[test]
    fn host_stand_in_reports_not_supported() {
        assert_eq!(handle_close(Handle(1)), Err(Error::NotSupported));
        assert_eq!(clock_get(), 0);
    }
}
