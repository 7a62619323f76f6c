//! The calling process's own handles, kept by the runtime for the process's
//! lifetime: `self` (its process, used to charge new objects) and `space`
//! (its address space, used by the allocator to map memory). The runtime
//! takes them from the bootstrap message before `main` runs; programs
//! borrow them through [`current`] and [`space`].

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use mantra_abi::Handle;

static SELF: AtomicU32 = AtomicU32::new(0);
static SPACE: AtomicU32 = AtomicU32::new(0);
static KOID: AtomicU64 = AtomicU64::new(0);

/// The process's own handle (`self`); `Handle::INVALID` if it got none.
pub fn current() -> Handle {
    Handle(SELF.load(Ordering::Relaxed))
}

/// The process's address space (`space`); `Handle::INVALID` if it got none.
pub fn space() -> Handle {
    Handle(SPACE.load(Ordering::Relaxed))
}

/// The process's kernel object id (0 if unknown).
pub fn koid() -> u64 {
    KOID.load(Ordering::Relaxed)
}

#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn set(process: Handle, space: Handle, koid: u64) {
    SELF.store(process.0, Ordering::Relaxed);
    SPACE.store(space.0, Ordering::Relaxed);
    KOID.store(koid, Ordering::Relaxed);
}

/// Ends the process with `code`.
pub fn exit(code: i64) -> ! {
    crate::sys::process_exit(code)
}

/// A child process running a blob of position-independent machine code,
/// with nothing but what the caller gives it: the test and benchmark
/// programs use it for zero-capability and server processes.
pub struct RawChild {
    pub process: Handle,
    pub space: Handle,
    pub thread: Handle,
    /// The memory objects backing the code and the stack (kept so the
    /// caller can close them with the rest).
    pub code: Handle,
    pub stack: Handle,
}

/// Where [`spawn_raw`] maps the code and the stack in the child.
pub const RAW_CODE_ADDR: u64 = 0x0100_0000;
pub const RAW_STACK_ADDR: u64 = 0x0200_0000;
pub const RAW_STACK_SIZE: u64 = 16 * 1024;

/// Creates process `name` (needs SPAWN on our own process handle), maps
/// `code` (at most 4 KiB, position-independent) read-execute and a 16 KiB
/// stack read-write, moves `give` (if any) into its handle table and starts
/// its thread at the code with RDI = that handle's value in the child.
pub fn spawn_raw(name: &[u8], code: &[u8], give: Option<Handle>) -> Result<RawChild, mantra_abi::Error> {
    use crate::sys;
    use mantra_abi::map;
    if code.len() > 4096 {
        return Err(mantra_abi::Error::InvalidArgs);
    }
    let (process, space) = sys::process_create(current(), name)?;
    let text = sys::vmo_create(current(), 4096)?;
    sys::vmo_write(text, 0, code)?;
    sys::vmar_map(space, text, 0, 4096, map::READ | map::EXECUTE | map::FIXED, RAW_CODE_ADDR)?;
    let stack = sys::vmo_create(current(), RAW_STACK_SIZE)?;
    sys::vmar_map(space, stack, 0, RAW_STACK_SIZE, map::READ | map::WRITE | map::FIXED, RAW_STACK_ADDR)?;
    let arg = match give {
        Some(handle) => u64::from(sys::process_give_handle(process, handle)?.0),
        None => 0,
    };
    let thread = sys::thread_create(process)?;
    sys::thread_start(thread, RAW_CODE_ADDR, RAW_STACK_ADDR + RAW_STACK_SIZE, arg, 0)?;
    Ok(RawChild { process, space, thread, code: text, stack })
}

// An echo server for raw child processes, written as a server loop of
// seL4 shape: one CHANNEL_RECEIVE, then CHANNEL_REPLY_RECEIVE (the first 8
// bytes of each request back as the reply, and the next request) forever.
// Exits when the client's end is closed. Buffers live below the stack
// pointer: request at rsp-64, sizes at rsp-128, CallArgs at rsp-192.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".global mantra_rt_echo_start",
    ".global mantra_rt_echo_end",
    "mantra_rt_echo_start:",
    "mov r12, rdi",
    "lea rax, [rsp - 64]",
    "mov [rsp - 192], rax",             // write_bytes
    "mov qword ptr [rsp - 184], 8",     // write_len 8, write_handle_count 0
    "mov qword ptr [rsp - 176], 0",     // write_handles
    "mov [rsp - 168], rax",             // read_bytes
    "mov qword ptr [rsp - 160], 64",    // read_capacity 64, read_handle_capacity 0
    "mov qword ptr [rsp - 152], 0",     // read_handles
    "1:",
    "mov eax, {receive}",
    "mov rdi, r12",
    "lea rsi, [rsp - 64]",
    "mov edx, 64",
    "xor r10d, r10d",
    "xor r8d, r8d",
    "lea r9, [rsp - 128]",
    "syscall",
    "test rax, rax",
    "js 3f",
    "2:",
    "mov eax, {reply_receive}",
    "mov rdi, r12",
    "lea rsi, [rsp - 192]",
    "lea rdx, [rsp - 128]",
    "syscall",
    "test rax, rax",
    "jns 2b",
    "3:",
    "cmp rax, -{peer_closed}",
    "jne 1b",
    "xor edi, edi",
    "mov eax, {exit}",
    "syscall",
    "ud2",
    "mantra_rt_echo_end:",
    receive = const mantra_abi::nr::CHANNEL_RECEIVE,
    reply_receive = const mantra_abi::nr::CHANNEL_REPLY_RECEIVE,
    exit = const mantra_abi::nr::PROCESS_EXIT,
    peer_closed = const mantra_abi::Error::PeerClosed as i64,
);

// A short-message echo server: every message (at most 32 bytes, in
// registers) comes back as the reply, one CHANNEL_REPLY_RECEIVE_SHORT per
// request. Exits 0 when the client's end is closed, 1 on any other error.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".global mantra_rt_short_echo_start",
    ".global mantra_rt_short_echo_end",
    "mantra_rt_short_echo_start:",
    "mov r12, rdi",
    "mov rsi, -1",                      // first: receive only (SHORT_NO_REPLY)
    "2:",
    "mov eax, {reply_receive}",
    "mov rdi, r12",
    "syscall",
    "mov rsi, rax",                     // the reply: the request, all of it
    "test rax, rax",
    "jns 2b",
    "xor edi, edi",
    "cmp rax, -{peer_closed}",
    "setne dil",
    "mov eax, {exit}",
    "syscall",
    "ud2",
    "mantra_rt_short_echo_end:",
    reply_receive = const mantra_abi::nr::CHANNEL_REPLY_RECEIVE_SHORT,
    exit = const mantra_abi::nr::PROCESS_EXIT,
    peer_closed = const mantra_abi::Error::PeerClosed as i64,
);

/// The bytes of this program's text between two labels (code for
/// [`spawn_raw`], written in `global_asm!` between a start and an end label).
///
/// # Safety
/// `start` and `end` must be labels of this program's text, `start` first.
pub unsafe fn code_between(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: guaranteed by the caller: one mapped, immutable range.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Position-independent code of the short-message echo server, for
/// [`spawn_raw`]: give it a channel end; every message comes back.
#[cfg(target_os = "none")]
pub fn short_echo_server_code() -> &'static [u8] {
    extern "C" {
        static mantra_rt_short_echo_start: u8;
        static mantra_rt_short_echo_end: u8;
    }
    // SAFETY: both labels delimit the server's code in this program's text.
    unsafe { code_between(core::ptr::addr_of!(mantra_rt_short_echo_start), core::ptr::addr_of!(mantra_rt_short_echo_end)) }
}

/// Position-independent code of an echo server, for [`spawn_raw`]: give it
/// a channel end; every message gets its first 8 bytes back.
#[cfg(target_os = "none")]
pub fn echo_server_code() -> &'static [u8] {
    extern "C" {
        static mantra_rt_echo_start: u8;
        static mantra_rt_echo_end: u8;
    }
    // SAFETY: both labels delimit the server's code in this program's text.
    unsafe { code_between(core::ptr::addr_of!(mantra_rt_echo_start), core::ptr::addr_of!(mantra_rt_echo_end)) }
}
