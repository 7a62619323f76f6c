//! The MantraOS system-call ABI: the single source of truth shared by the
//! kernel and userland — syscall numbers, status codes, rights, handle
//! encoding, object kinds, signals and message layout.
//!
//! Every syscall constant in [`nr`] carries a doc comment in one fixed form
//! (summary; `Arguments:`, `Rights:`, `Returns:`, `Errors:` paragraphs) that
//! `./mantra docs` renders into the syscall reference. Keep that form.
//!
//! Calling convention (x86_64): `syscall` with the number in RAX and up to
//! six arguments in RDI, RSI, RDX, R10, R8, R9. RAX returns a [`Status`]-coded
//! result: `>= 0` is success (a value or 0), `< 0` is `-(error code)`.
//! RCX and R11 are clobbered (by the instruction); all other registers are
//! preserved.
#![no_std]

/// Version of the syscall ABI. Bumped on every incompatible change.
pub const ABI_VERSION: u32 = 2;

/// A capability: an index into the calling process's handle table plus the
/// slot's generation, so a stale or forged value fails with `BadHandle`.
/// `0` is never a valid handle.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(pub u32);

impl Handle {
    pub const INVALID: Self = Self(0);
    /// Bits of the index; the rest is the generation.
    pub const INDEX_BITS: u32 = 16;

    pub const fn new(index: u32, generation: u32) -> Self {
        Self((generation << Self::INDEX_BITS) | (index & ((1 << Self::INDEX_BITS) - 1)))
    }
    pub const fn index(self) -> u32 {
        self.0 & ((1 << Self::INDEX_BITS) - 1)
    }
    pub const fn generation(self) -> u32 {
        self.0 >> Self::INDEX_BITS
    }
}

/// Error codes. A syscall returns `-(code as i64)` in RAX.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The handle does not name a live capability of the caller (never
    /// issued, closed, stale generation, or revoked).
    BadHandle = 1,
    /// The handle names an object of another kind than the call needs.
    WrongType = 2,
    /// The capability lacks a right the call needs, or the call would grow rights.
    AccessDenied = 3,
    /// An argument is out of its domain (flags, sizes, alignment, counts).
    InvalidArgs = 4,
    /// A user pointer is null, misaligned, in kernel space, overflowing or unmapped.
    BadPointer = 5,
    /// The kernel is out of memory for the request.
    NoMemory = 6,
    /// An offset or range lies outside the object.
    OutOfRange = 7,
    /// Nothing to read / no room to write now; wait for a signal and retry.
    ShouldWait = 8,
    /// The other end of the channel is closed.
    PeerClosed = 9,
    /// The deadline passed first.
    TimedOut = 10,
    /// The caller's buffer is too small; the needed sizes were written back.
    BufferTooSmall = 11,
    /// The object is not in a state that allows the call (e.g. thread started twice).
    BadState = 12,
    /// The handle table or another bounded kernel resource is full.
    NoResources = 13,
    /// No such syscall number.
    BadSyscall = 14,
    /// The operation is not supported by this object or build.
    NotSupported = 15,
    /// The named thing (e.g. a firmware variable) does not exist.
    NotFound = 16,
    /// The device (e.g. the firmware's variable store) reported an error.
    IoError = 17,
}

impl Error {
    pub const ALL: [Error; 17] = [
        Error::BadHandle,
        Error::WrongType,
        Error::AccessDenied,
        Error::InvalidArgs,
        Error::BadPointer,
        Error::NoMemory,
        Error::OutOfRange,
        Error::ShouldWait,
        Error::PeerClosed,
        Error::TimedOut,
        Error::BufferTooSmall,
        Error::BadState,
        Error::NoResources,
        Error::BadSyscall,
        Error::NotSupported,
        Error::NotFound,
        Error::IoError,
    ];

    pub const fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.code() == code)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Error::BadHandle => "BAD_HANDLE",
            Error::WrongType => "WRONG_TYPE",
            Error::AccessDenied => "ACCESS_DENIED",
            Error::InvalidArgs => "INVALID_ARGS",
            Error::BadPointer => "BAD_POINTER",
            Error::NoMemory => "NO_MEMORY",
            Error::OutOfRange => "OUT_OF_RANGE",
            Error::ShouldWait => "SHOULD_WAIT",
            Error::PeerClosed => "PEER_CLOSED",
            Error::TimedOut => "TIMED_OUT",
            Error::BufferTooSmall => "BUFFER_TOO_SMALL",
            Error::BadState => "BAD_STATE",
            Error::NoResources => "NO_RESOURCES",
            Error::BadSyscall => "BAD_SYSCALL",
            Error::NotSupported => "NOT_SUPPORTED",
            Error::NotFound => "NOT_FOUND",
            Error::IoError => "IO_ERROR",
        }
    }
}

/// Encodes a syscall result for RAX.
pub const fn encode(result: Result<u64, Error>) -> u64 {
    match result {
        Ok(value) => value,
        Err(e) => (-e.code()) as u64,
    }
}

/// Decodes RAX after a syscall.
pub fn decode(rax: u64) -> Result<u64, Error> {
    let signed = rax as i64;
    if signed < 0 {
        Err(Error::from_code(-signed).unwrap_or(Error::NotSupported))
    } else {
        Ok(rax)
    }
}

/// Rights a capability carries. Duplication and transfer can only remove rights.
pub mod rights {
    /// May be duplicated (`handle_duplicate`).
    pub const DUPLICATE: u32 = 1 << 0;
    /// May be sent in a channel message.
    pub const TRANSFER: u32 = 1 << 1;
    /// Read data / receive messages / wait on a port.
    pub const READ: u32 = 1 << 2;
    /// Write data / send messages / queue packets.
    pub const WRITE: u32 = 1 << 3;
    /// Map executable.
    pub const EXECUTE: u32 = 1 << 4;
    /// Map (memory objects) or change mappings (address spaces).
    pub const MAP: u32 = 1 << 5;
    /// Register waits on the object's signals (`object_wait_async`).
    pub const WAIT: u32 = 1 << 6;
    /// Control the object: start/kill threads and processes, set timers.
    pub const MANAGE: u32 = 1 << 7;
    /// Create objects charged to this process (process handles), or
    /// physical interrupts (the interrupt resource).
    pub const CREATE: u32 = 1 << 8;
    /// Create child processes (process handles only).
    pub const SPAWN: u32 = 1 << 9;
    /// Revoke every handle derived from this one (`handle_revoke`).
    pub const REVOKE: u32 = 1 << 10;

    pub const ALL: u32 = (1 << 11) - 1;
    /// Usual rights of a fresh handle to a data object.
    pub const BASIC: u32 = DUPLICATE | TRANSFER | READ | WRITE | WAIT | REVOKE;
}

/// Severity of a log record (LOG_WRITE's `level`), most severe first.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl LogLevel {
    pub const fn from_u8(value: u8) -> Option<LogLevel> {
        Some(match value {
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            4 => LogLevel::Debug,
            5 => LogLevel::Trace,
            _ => return None,
        })
    }

    /// The name MantraLogd prints: `error`, `warn`, `info`, `debug`, `trace`.
    pub const fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Kinds of kernel objects.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Process = 1,
    Thread = 2,
    AddressSpace = 3,
    MemoryObject = 4,
    Channel = 5,
    Port = 6,
    Timer = 7,
    Interrupt = 8,
    Log = 9,
    /// Authority over hardware: the interrupt resource (INTERRUPT_CREATE).
    Resource = 10,
    /// The system console (serial): CONSOLE_READ / CONSOLE_WRITE.
    Console = 11,
}

impl ObjectKind {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Process,
            2 => Self::Thread,
            3 => Self::AddressSpace,
            4 => Self::MemoryObject,
            5 => Self::Channel,
            6 => Self::Port,
            7 => Self::Timer,
            8 => Self::Interrupt,
            9 => Self::Log,
            10 => Self::Resource,
            11 => Self::Console,
            _ => return None,
        })
    }
}

/// Signals objects raise; ports deliver them as packets.
pub mod signals {
    pub const READABLE: u32 = 1 << 0;
    pub const WRITABLE: u32 = 1 << 1;
    pub const PEER_CLOSED: u32 = 1 << 2;
    /// Process or thread terminated.
    pub const TERMINATED: u32 = 1 << 3;
    pub const TIMER_FIRED: u32 = 1 << 4;
    /// An interrupt fired and was not acknowledged yet (INTERRUPT_ACK).
    pub const INTERRUPT: u32 = 1 << 5;
}

/// Arguments of `interrupt_create`.
pub mod interrupt {
    /// The `gsi` of a virtual interrupt (no hardware; INTERRUPT_TRIGGER fires it).
    pub const VIRTUAL: u64 = u64::MAX;

    /// `flags`: a physical line's trigger mode and polarity. The default is
    /// what the firmware says: an ACPI interrupt source override naming the
    /// GSI, else ISA's edge/active-high below GSI 16 and PCI's
    /// level/active-low from 16 on.
    pub const MODE_DEFAULT: u32 = 0;
    pub const MODE_EDGE_HIGH: u32 = 1;
    pub const MODE_EDGE_LOW: u32 = 2;
    pub const MODE_LEVEL_HIGH: u32 = 3;
    pub const MODE_LEVEL_LOW: u32 = 4;
}

/// The console object (CONSOLE_READ / CONSOLE_WRITE).
pub mod console {
    /// Longest CONSOLE_WRITE: whole lines, at most this many bytes.
    pub const MAX_WRITE: usize = 4096;
    /// Input bytes the kernel buffers for CONSOLE_READ; further input is
    /// dropped until it is read.
    pub const INPUT_BUFFER: usize = 4096;
}

/// Firmware (UEFI) variables: FIRMWARE_VARIABLE_GET / _SET through the
/// firmware-variable resource (`fwvar`). User mode reaches only variables
/// of [`fwvar::VENDOR_GUID`] (docs/boot-state.md).
pub mod fwvar {
    /// The MantraOS vendor GUID every variable user mode can touch lives under.
    pub const VENDOR_GUID: &str = "b1237644-3bb1-4cbd-a419-51a543783796";
    /// Longest variable name, in characters (printable ASCII, 0x20..=0x7e).
    pub const MAX_NAME_LEN: usize = 64;
    /// Largest variable value FIRMWARE_VARIABLE_SET accepts, in bytes.
    pub const MAX_DATA_LEN: usize = 2048;
    /// UEFI attribute bits (EFI_VARIABLE_*).
    pub const NON_VOLATILE: u32 = 1 << 0;
    pub const BOOTSERVICE_ACCESS: u32 = 1 << 1;
    pub const RUNTIME_ACCESS: u32 = 1 << 2;
    /// The two attribute sets FIRMWARE_VARIABLE_SET accepts: kept across
    /// power cycles, or volatile (gone at the next boot). UEFI makes
    /// volatile variables read-only after ExitBootServices, so firmware
    /// following the specification refuses volatile writes from the OS
    /// (INVALID_ARGS); MantraBoot's volatile `MantraBootCurrent` is read-only.
    pub const ATTRS_NV: u32 = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS;
    pub const ATTRS_VOLATILE: u32 = BOOTSERVICE_ACCESS | RUNTIME_ACCESS;
    /// Names only MantraBoot writes: FIRMWARE_VARIABLE_SET refuses them
    /// (ACCESS_DENIED), so the OS cannot forge the boot record or a
    /// rollback minimum.
    pub const BOOT_OWNED: &[&str] = &["MantraBootCurrent", "MantraRollback"];

    /// What FIRMWARE_VARIABLE_GET reports besides the data.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VariableInfo {
        /// The value's size in bytes (also on BUFFER_TOO_SMALL: the size needed).
        pub size: u32,
        /// Its UEFI attribute bits.
        pub attributes: u32,
    }
}

/// Mapping flags for `vmar_map` / `vmar_protect`.
pub mod map {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const EXECUTE: u32 = 1 << 2;
    /// Map at exactly the given address (else the kernel picks one).
    pub const FIXED: u32 = 1 << 3;
}

/// Scheduling classes, lowest first.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Idle = 0,
    Normal = 1,
    Interactive = 2,
    RealTime = 3,
}

/// Message limits.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest message of CHANNEL_CALL_SHORT / CHANNEL_REPLY_RECEIVE_SHORT: four
/// registers of eight bytes.
pub const SHORT_MESSAGE_BYTES: usize = 32;
/// CHANNEL_REPLY_RECEIVE_SHORT's `len` that sends no reply (receive only).
pub const SHORT_NO_REPLY: u64 = u64::MAX;
pub const MAX_MESSAGE_HANDLES: usize = 64;
/// Messages a channel endpoint queues before writes return `ShouldWait`.
pub const CHANNEL_QUEUE_LIMIT: usize = 64;

/// Lowest and highest user address (exclusive end): the lower canonical half
/// minus the null page and the last page before the hole.
pub const USER_BASE: u64 = 0x1000;
pub const USER_END: u64 = 0x0000_7FFF_FFFF_F000;

/// A packet `port_wait` delivers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPacket {
    /// The key given to `object_wait_async`.
    pub key: u64,
    /// Signals that were observed (a subset of those waited for).
    pub observed: u32,
    pub _reserved: u32,
}

/// Arguments of `channel_call` (too many for registers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CallArgs {
    pub write_bytes: u64,
    pub write_len: u32,
    pub write_handle_count: u32,
    pub write_handles: u64,
    pub read_bytes: u64,
    pub read_capacity: u32,
    pub read_handle_capacity: u32,
    pub read_handles: u64,
}

/// What `channel_read` / `channel_call` received, written back to the caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadSizes {
    pub bytes: u32,
    pub handles: u32,
}

/// What `handle_info` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandleInfo {
    pub kind: u32,
    pub rights: u32,
    /// Kernel object id (unique for the boot).
    pub koid: u64,
}

/// Syscall numbers.
pub mod nr {
    // The register calls come first: the SYSCALL entry tells them from the
    // rest with one compare (arch/x86_64/syscall.rs).

    /// CHANNEL_CALL with a short message in registers: writes `len` bytes
    /// (at most SHORT_MESSAGE_BYTES, no handles) taken from the words
    /// `w0`..`w3` (little-endian), blocks for the reply and returns it in
    /// RDX, R10, R8, R9 (bytes past its length are zero). No user memory is
    /// touched: the seL4-style fast path hands the words straight to a
    /// receiver parked on the peer and switches to it.
    ///
    /// Arguments: `channel`, `len` (bytes, <= SHORT_MESSAGE_BYTES), `w0`, `w1`, `w2`, `w3`.
    /// Rights: READ and WRITE.
    /// Returns: the reply's length in bytes (its words in RDX, R10, R8, R9).
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS (`len` too big), SHOULD_WAIT (peer queue full), PEER_CLOSED, NO_MEMORY, BUFFER_TOO_SMALL (the reply is longer than SHORT_MESSAGE_BYTES or carries handles: it stays queued for CHANNEL_READ).
    pub const CHANNEL_CALL_SHORT: u64 = 0;

    /// CHANNEL_REPLY_RECEIVE with short messages in registers: sends the
    /// reply of `len` bytes in `w0`..`w3` (`len` = SHORT_NO_REPLY: send
    /// nothing, only receive), then blocks for the next message and returns
    /// it in RDX, R10, R8, R9. When the reply cannot be sent, nothing is
    /// received.
    ///
    /// Arguments: `channel`, `len` (bytes, <= SHORT_MESSAGE_BYTES, or SHORT_NO_REPLY), `w0`, `w1`, `w2`, `w3`.
    /// Rights: READ and WRITE.
    /// Returns: the received message's length in bytes (its words in RDX, R10, R8, R9).
    /// Errors: as CHANNEL_CALL_SHORT.
    pub const CHANNEL_REPLY_RECEIVE_SHORT: u64 = 1;

    /// Closes a handle; the object dies with its last handle.
    ///
    /// Arguments: `handle`.
    /// Rights: none.
    /// Returns: 0.
    /// Errors: BAD_HANDLE.
    pub const HANDLE_CLOSE: u64 = 2;

    /// Creates a new handle to the same object with a subset of the rights.
    /// The new handle is derived from the old one: revoking the old one kills it.
    ///
    /// Arguments: `handle`, `rights` (must be a subset of the handle's).
    /// Rights: DUPLICATE.
    /// Returns: the new handle.
    /// Errors: BAD_HANDLE, ACCESS_DENIED (no DUPLICATE, or rights not a subset), NO_RESOURCES.
    pub const HANDLE_DUPLICATE: u64 = 3;

    /// Revokes every handle derived from `handle` (by duplication, in any
    /// process, transitively); `handle` itself stays valid.
    ///
    /// Arguments: `handle`.
    /// Rights: REVOKE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, ACCESS_DENIED.
    pub const HANDLE_REVOKE: u64 = 4;

    /// Reports a handle's object kind, rights and object id.
    ///
    /// Arguments: `handle`, `info` (out: HandleInfo).
    /// Rights: none.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, BAD_POINTER.
    pub const HANDLE_INFO: u64 = 5;

    /// Creates an empty process (no threads, no handles) with its address space.
    ///
    /// Arguments: `parent` (process), `name`, `name_len` (<= 32), `out` (out: [process, address space]).
    /// Rights: SPAWN on `parent`.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS, BAD_POINTER, NO_MEMORY, NO_RESOURCES.
    pub const PROCESS_CREATE: u64 = 6;

    /// Ends the calling process with an exit code; raises TERMINATED on it.
    ///
    /// Arguments: `code`.
    /// Rights: none (every process may end itself).
    /// Returns: does not return.
    /// Errors: none.
    pub const PROCESS_EXIT: u64 = 7;

    /// Kills a process: all its threads stop, its handles close.
    ///
    /// Arguments: `process`.
    /// Rights: MANAGE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED.
    pub const PROCESS_KILL: u64 = 8;

    /// Reads a terminated process's exit code (or fault description).
    ///
    /// Arguments: `process`, `out` (out: i64 exit code; faults are negative vector numbers - 1000).
    /// Rights: READ.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_STATE (still running), BAD_POINTER.
    pub const PROCESS_EXIT_CODE: u64 = 9;

    /// Moves a handle of the caller into another process's handle table.
    ///
    /// Arguments: `process`, `handle` (consumed on success).
    /// Rights: MANAGE on `process`; TRANSFER on `handle`.
    /// Returns: the handle's value in the target process.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, NO_RESOURCES.
    pub const PROCESS_GIVE_HANDLE: u64 = 10;

    /// Creates a thread in a process (not yet running).
    ///
    /// Arguments: `process`.
    /// Rights: MANAGE on `process`.
    /// Returns: the thread handle.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, NO_MEMORY, NO_RESOURCES.
    pub const THREAD_CREATE: u64 = 11;

    /// Starts a created thread at `entry` with stack `stack_top` and two arguments.
    ///
    /// Arguments: `thread`, `entry`, `stack_top`, `arg0`, `arg1`.
    /// Rights: MANAGE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_STATE (already started), INVALID_ARGS (kernel or non-canonical address).
    pub const THREAD_START: u64 = 12;

    /// Ends the calling thread (the process ends with its last thread).
    ///
    /// Arguments: none.
    /// Rights: none.
    /// Returns: does not return.
    /// Errors: none.
    pub const THREAD_EXIT: u64 = 13;

    /// Gives up the CPU to the next runnable thread of the same or higher class.
    ///
    /// Arguments: none.
    /// Rights: none.
    /// Returns: 0.
    /// Errors: none.
    pub const THREAD_YIELD: u64 = 14;

    /// Sets a thread's scheduling class (Priority) and optional CPU affinity.
    ///
    /// Arguments: `thread`, `priority`, `cpu` (u64::MAX: any).
    /// Rights: MANAGE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS.
    pub const THREAD_SET_PRIORITY: u64 = 15;

    /// Creates a memory object of `size` bytes (rounded up to pages), committed lazily on first touch.
    ///
    /// Arguments: `process` (charged), `size`.
    /// Rights: CREATE on `process`.
    /// Returns: the memory object handle.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS (0 or too large), NO_RESOURCES.
    pub const VMO_CREATE: u64 = 16;

    /// Copies bytes out of a memory object.
    ///
    /// Arguments: `vmo`, `offset`, `buffer`, `len`.
    /// Rights: READ.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, OUT_OF_RANGE, BAD_POINTER, NO_MEMORY, NOT_SUPPORTED (device memory: map it).
    pub const VMO_READ: u64 = 17;

    /// Copies bytes into a memory object.
    ///
    /// Arguments: `vmo`, `offset`, `buffer`, `len`.
    /// Rights: WRITE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, OUT_OF_RANGE, BAD_POINTER, NO_MEMORY, NOT_SUPPORTED (device memory: map it).
    pub const VMO_WRITE: u64 = 18;

    /// Maps (part of) a memory object into an address space.
    ///
    /// Arguments: `space`, `vmo`, `vmo_offset`, `len`, `flags` (map::*), `addr` (used with map::FIXED).
    /// Rights: MAP on `space`; MAP plus READ/WRITE/EXECUTE as `flags` ask on `vmo`.
    /// Returns: the mapped address.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS (misaligned, W+X, outside user space, overlap), OUT_OF_RANGE, NO_MEMORY.
    pub const VMAR_MAP: u64 = 19;

    /// Unmaps whole mappings inside [addr, addr + len).
    ///
    /// Arguments: `space`, `addr`, `len`.
    /// Rights: MAP.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS, NOT_SUPPORTED (partial mapping).
    pub const VMAR_UNMAP: u64 = 20;

    /// Changes the protection of whole mappings inside [addr, addr + len).
    ///
    /// Arguments: `space`, `addr`, `len`, `flags` (map::READ/WRITE/EXECUTE).
    /// Rights: MAP on `space`; the mapping's memory object rights bound the new flags.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS.
    pub const VMAR_PROTECT: u64 = 21;

    /// Creates a channel: two connected endpoints.
    ///
    /// Arguments: `process` (charged), `out` (out: [Handle; 2]).
    /// Rights: CREATE on `process`.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_POINTER, NO_RESOURCES.
    pub const CHANNEL_CREATE: u64 = 22;

    /// Queues a message (bytes, and handles that move with it) on the peer.
    ///
    /// Arguments: `channel`, `bytes`, `len` (<= 64 KiB), `handles`, `count` (<= 64).
    /// Rights: WRITE on `channel`; TRANSFER on every handle sent.
    /// Returns: 0 (the handles are no longer the caller's).
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS (too big, channel sends itself), BAD_POINTER, SHOULD_WAIT (peer queue full), PEER_CLOSED, NO_MEMORY.
    pub const CHANNEL_WRITE: u64 = 23;

    /// Takes the oldest message.
    ///
    /// Arguments: `channel`, `bytes`, `capacity`, `handles`, `handle_capacity`, `sizes` (out: ReadSizes).
    /// Rights: READ.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_POINTER, SHOULD_WAIT (empty), PEER_CLOSED (empty and peer closed), BUFFER_TOO_SMALL (message stays queued; sizes written), NO_RESOURCES.
    pub const CHANNEL_READ: u64 = 24;

    /// Writes a message and blocks for the reply (the next message on this endpoint).
    /// Switches directly to a receiver blocked on the peer and back (fast path).
    ///
    /// Arguments: `channel`, `args` (CallArgs), `sizes` (out: ReadSizes), `deadline` (ns of CLOCK_GET, u64::MAX: none).
    /// Rights: READ and WRITE.
    /// Returns: 0.
    /// Errors: as CHANNEL_WRITE and CHANNEL_READ, plus TIMED_OUT.
    pub const CHANNEL_CALL: u64 = 25;

    /// Receives one message, blocking until one arrives (server side of CHANNEL_CALL).
    ///
    /// Arguments: `channel`, `bytes`, `capacity`, `handles`, `handle_capacity`, `sizes` (out: ReadSizes).
    /// Rights: READ.
    /// Returns: 0.
    /// Errors: as CHANNEL_READ, except SHOULD_WAIT.
    pub const CHANNEL_RECEIVE: u64 = 26;

    /// Creates a port.
    ///
    /// Arguments: `process` (charged).
    /// Rights: CREATE on `process`.
    /// Returns: the port handle.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, NO_RESOURCES.
    pub const PORT_CREATE: u64 = 27;

    /// Waits until packets are queued on the port or the deadline passes.
    ///
    /// Arguments: `port`, `deadline` (ns, u64::MAX: none), `packets` (out: [PortPacket]), `capacity`.
    /// Rights: READ.
    /// Returns: the number of packets written.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_POINTER, INVALID_ARGS (capacity 0), TIMED_OUT.
    pub const PORT_WAIT: u64 = 28;

    /// Asks for one packet on `port` when `object` raises any of `signals`.
    ///
    /// Arguments: `object`, `port`, `key`, `signals`.
    /// Rights: WAIT on `object`; WRITE on `port`.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS (no signals).
    pub const OBJECT_WAIT_ASYNC: u64 = 29;

    /// Creates a timer.
    ///
    /// Arguments: `process` (charged).
    /// Rights: CREATE on `process`.
    /// Returns: the timer handle.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, NO_RESOURCES.
    pub const TIMER_CREATE: u64 = 30;

    /// Arms a timer to raise TIMER_FIRED at `deadline` (0: cancel).
    ///
    /// Arguments: `timer`, `deadline` (ns of CLOCK_GET).
    /// Rights: WRITE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED.
    pub const TIMER_SET: u64 = 31;

    /// Acknowledges a fired interrupt so it can fire again: clears INTERRUPT,
    /// reserves room on the bound port for the next packet and unmasks a
    /// physical line.
    ///
    /// Arguments: `interrupt`.
    /// Rights: WRITE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_STATE (not fired since the last acknowledgement), NO_RESOURCES (the bound port is full: read packets and retry; the interrupt stays pending).
    pub const INTERRUPT_ACK: u64 = 32;

    /// Appends a record to a log.
    ///
    /// Arguments: `log`, `level` (1 error .. 5 trace), `text`, `len` (<= 512).
    /// Rights: WRITE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, INVALID_ARGS, BAD_POINTER.
    pub const LOG_WRITE: u64 = 33;

    /// Takes the oldest kernel log record not yet read through this log.
    ///
    /// Arguments: `log`, `buffer`, `capacity`.
    /// Rights: READ.
    /// Returns: the record's length.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_POINTER, SHOULD_WAIT (none).
    pub const LOG_READ: u64 = 34;

    /// Reads the monotonic clock in nanoseconds since boot.
    ///
    /// Arguments: none.
    /// Rights: none.
    /// Returns: nanoseconds.
    /// Errors: none.
    pub const CLOCK_GET: u64 = 35;

    /// Sends a reply and receives the next message (server side of CHANNEL_CALL, seL4's ReplyRecv).
    /// When a caller is blocked on the peer, switches directly to it and back (fast path).
    /// When the reply cannot be sent, nothing is received.
    ///
    /// Arguments: `channel`, `args` (CallArgs: write = the reply, read = the next request), `sizes` (out: ReadSizes).
    /// Rights: READ and WRITE.
    /// Returns: 0 (a message was received).
    /// Errors: as CHANNEL_WRITE and CHANNEL_RECEIVE.
    pub const CHANNEL_REPLY_RECEIVE: u64 = 36;

    /// Creates an interrupt object. A physical one is the global system
    /// interrupt `gsi`, routed through the I/O APIC to the boot CPU; its line
    /// is masked until INTERRUPT_BIND, and again from each firing until
    /// INTERRUPT_ACK (so a level-triggered line cannot storm). A virtual one
    /// (`gsi` = interrupt::VIRTUAL) has no hardware: INTERRUPT_TRIGGER fires
    /// it. A firing raises INTERRUPT and, once bound, queues one packet.
    ///
    /// Arguments: `resource_or_process` (the interrupt resource for a physical interrupt; a process, charged, for a virtual one), `gsi` (interrupt::VIRTUAL: virtual), `flags` (physical: interrupt::MODE_*; virtual: 0).
    /// Rights: CREATE on `resource_or_process`.
    /// Returns: the interrupt handle.
    /// Errors: BAD_HANDLE, WRONG_TYPE (not the interrupt resource for a physical interrupt, not a process for a virtual one), ACCESS_DENIED, INVALID_ARGS (unknown flags), OUT_OF_RANGE (no I/O APIC serves `gsi`), BAD_STATE (another interrupt object holds `gsi`), NO_RESOURCES (no free interrupt vector, or the handle table is full).
    pub const INTERRUPT_CREATE: u64 = 37;

    /// Binds an interrupt to a port: each firing queues one packet `{key,
    /// INTERRUPT}` there. Room for the packet is reserved in advance, so
    /// none is lost. A pending interrupt queues its packet at once; a
    /// physical line is unmasked.
    ///
    /// Arguments: `interrupt`, `port`, `key`.
    /// Rights: READ on `interrupt`; WRITE on `port`.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_STATE (already bound), NO_RESOURCES (the port is full).
    pub const INTERRUPT_BIND: u64 = 38;

    /// Fires a virtual interrupt: raises INTERRUPT and queues the bound
    /// port's packet. Triggers while it is pending (fired, not acknowledged)
    /// merge into that firing: no second packet.
    ///
    /// Arguments: `interrupt`.
    /// Rights: WRITE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, NOT_SUPPORTED (a physical interrupt: its device fires it).
    pub const INTERRUPT_TRIGGER: u64 = 39;

    /// Reads a firmware (UEFI) variable of the MantraOS vendor GUID into
    /// `buffer`. The name is printable ASCII (the kernel converts it to
    /// UCS-2); variables of other vendors cannot be named. Volatile
    /// variables MantraBoot wrote this boot (`MantraBootCurrent`) and
    /// non-volatile ones are both visible; boot-services-only ones are not.
    ///
    /// Arguments: `fwvar` (firmware-variable resource), `name`, `name_len` (1..=64), `buffer`, `capacity`, `info` (out: fwvar::VariableInfo, or 0).
    /// Rights: READ on `fwvar`.
    /// Returns: the value's size in bytes.
    /// Errors: BAD_HANDLE, WRONG_TYPE (not the firmware-variable resource), ACCESS_DENIED, INVALID_ARGS (name empty, too long or not printable ASCII), BAD_POINTER, NOT_FOUND (no such variable), BUFFER_TOO_SMALL (`info.size` holds the size needed), NOT_SUPPORTED (no UEFI runtime services on this machine), IO_ERROR (the firmware failed), NO_MEMORY.
    pub const FIRMWARE_VARIABLE_GET: u64 = 40;

    /// Writes (or, with `len` 0, deletes) a firmware (UEFI) variable of the
    /// MantraOS vendor GUID. Runs the firmware's variable services with
    /// interrupts off on this CPU (a flash write can take a while).
    ///
    /// Arguments: `fwvar` (firmware-variable resource), `name`, `name_len` (1..=64), `attributes` (fwvar::ATTRS_NV; fwvar::ATTRS_VOLATILE, which UEFI firmware refuses after ExitBootServices), `data`, `len` (<= fwvar::MAX_DATA_LEN).
    /// Rights: WRITE on `fwvar`.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE (not the firmware-variable resource), ACCESS_DENIED (no WRITE, a boot-owned name such as MantraRollback, or the firmware refuses: write protected, security violation), INVALID_ARGS (bad name, attributes other than the two allowed, `len` too big, or the firmware rejects them: a volatile variable, other attributes than an existing variable's), BAD_POINTER, NOT_FOUND (deleting a variable that does not exist), NO_RESOURCES (the variable store is full), NOT_SUPPORTED (no UEFI runtime services), IO_ERROR (the firmware failed), NO_MEMORY.
    pub const FIRMWARE_VARIABLE_SET: u64 = 41;

    /// Takes bytes the console received (the serial port's input, buffered
    /// by the kernel, at most console::INPUT_BUFFER bytes; later input is
    /// dropped until read). The console raises READABLE while input is
    /// buffered, so a reader waits with OBJECT_WAIT_ASYNC and PORT_WAIT.
    ///
    /// Arguments: `console`, `buffer`, `capacity`.
    /// Rights: READ.
    /// Returns: the number of bytes written to `buffer` (at least 1).
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_POINTER, INVALID_ARGS (capacity 0), SHOULD_WAIT (nothing buffered), NO_MEMORY.
    pub const CONSOLE_READ: u64 = 42;

    /// Writes whole lines to the console as they are: printable ASCII,
    /// tabs and line ends only, ending with a line end. They are written
    /// in one piece: no kernel or log output comes between their bytes.
    ///
    /// Arguments: `console`, `bytes`, `len` (1 ..= console::MAX_WRITE).
    /// Rights: WRITE.
    /// Returns: 0.
    /// Errors: BAD_HANDLE, WRONG_TYPE, ACCESS_DENIED, BAD_POINTER, INVALID_ARGS (empty, too long, a byte that is not printable ASCII, tab, CR or LF, or no line end at the end).
    pub const CONSOLE_WRITE: u64 = 43;

    /// Numbers below COUNT that this tree does not define: they return
    /// BAD_SYSCALL (none at present).
    pub const RESERVED: &[u64] = &[];

    /// Number of syscalls; numbers at or above it return BAD_SYSCALL.
    pub const COUNT: u64 = 44;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_pack_index_and_generation() {
        let h = Handle::new(513, 7);
        assert_eq!((h.index(), h.generation()), (513, 7));
        assert_ne!(h, Handle::new(513, 8));
    }

    #[test]
    fn results_round_trip() {
        for e in Error::ALL {
            assert_eq!(decode(encode(Err(e))), Err(e));
        }
        assert_eq!(decode(encode(Ok(42))), Ok(42));
    }
}
