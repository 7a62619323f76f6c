//! The IPC fast path (seL4's). The register calls (CHANNEL_CALL_SHORT,
//! CHANNEL_REPLY_RECEIVE_SHORT) enter `syscall_short` straight from the
//! SYSCALL shim: when a receiver is parked in a register receive on the
//! peer end, the message goes from the caller's registers into the
//! receiver's saved ones, this CPU switches to it, and the caller parks as
//! the receiver of the answer, all in one step under the two endpoint
//! locks (`Endpoint::exchange_with_peer`): no Arc of the endpoint or
//! thread beyond the ones the wait lists keep, no queueing, no allocation,
//! no trip through the run queue. CHANNEL_CALL and CHANNEL_REPLY_RECEIVE
//! with a small message and no handles (`try_ipc`, from the dispatcher)
//! do the same through the caller's and the receiver's buffers.
//!
//! Either way the caller's kernel stack is abandoned (it holds nothing but
//! its TrapFrame) and the receiver returns to user mode from its own
//! TrapFrame. Every check happens before anything changes; when one fails
//! the call takes the general path (syscall.rs), which has the same
//! semantics.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use mantra_abi::{encode, nr, rights, CallArgs, Error, ReadSizes, SHORT_MESSAGE_BYTES};

use crate::arch::x86_64::{context, TrapFrame};
use crate::ipc::{Message, ReceiveBuffers, ReceiveWait};
use crate::object::Object;
use crate::sched;
use crate::task::{park, Thread};
use crate::uaccess::{UserPtr, UserSlice};

/// Largest message the fast path carries (it is copied through the stack).
pub const FAST_MESSAGE_BYTES: usize = 64;

/// A message on its way through the fast path: whole words, so register
/// messages move without byte shuffling.
struct FastMessage {
    len: usize,
    words: [u64; FAST_MESSAGE_BYTES / 8],
}

impl FastMessage {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the words are plain memory of FAST_MESSAGE_BYTES bytes, u8
        // has no alignment or validity requirement, and len <= that size.
        unsafe { core::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, through the unique borrow.
        unsafe { core::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// The syscall entry of CHANNEL_CALL_SHORT and CHANNEL_REPLY_RECEIVE_SHORT
/// (arch/x86_64/syscall.rs jumps here straight from the SYSCALL shim, with
/// the full TrapFrame saved): the register fast path, else the general
/// dispatcher. Returns to the shim, which returns to user mode, only when
/// the general path ran.
///
/// The calling convention saves no register for the caller (the first
/// argument comes in R12): the shim restores every register from the
/// TrapFrame when this returns, and on the fast path it never returns, so
/// the callee-saved registers of the C convention would be pushed for
/// nothing.
pub extern "rust-preserve-none" fn syscall_short(frame: &mut TrapFrame) {
    try_short(frame);
    general(frame);
}

#[cold]
#[inline(never)]
fn general(frame: &mut TrapFrame) {
    crate::syscall::COUNT.fetch_add(1, Ordering::Relaxed);
    crate::syscall::dispatch_counted(frame);
}

/// The seL4-style fast path of the register calls: the message goes from
/// the caller's registers into those of a receiver parked in a register
/// receive on the peer, this CPU switches to it, and the caller parks as
/// the receiver of the answer. Preconditions (else it returns, having
/// changed nothing, and the general path runs the call with the same
/// semantics): a message of at most SHORT_MESSAGE_BYTES (not
/// SHORT_NO_REPLY), a channel handle with READ and WRITE, nothing queued
/// either way, the peer open and unobserved, its first receiver parked in
/// a register receive, of a live process, homed on this CPU and not of a
/// lower class than the caller, with no queued thread outranking it.
///
/// The caller's Arc is taken out of the CPU's slot, not cloned: on the fast
/// path it moves onto the endpoint's receiver list (`sched::hand_off_taken`);
/// otherwise it goes back before the general path runs.
#[inline(always)]
fn try_short(frame: &mut TrapFrame) {
    let len = frame.rsi;
    if len > SHORT_MESSAGE_BYTES as u64 {
        return;
    }
    let cpu = sched::this_cpu();
    let Some(me) = sched::take_current(cpu) else { return };
    let me = exchange_short(frame, cpu, len, me);
    sched::put_back_current(cpu, me);
}

/// `try_short` once the caller is out of its CPU's slot: switches to the
/// receiver and never returns, or returns the caller, having changed
/// nothing else.
#[inline(always)]
fn exchange_short(frame: &mut TrapFrame, cpu: usize, len: u64, me: Arc<Thread>) -> Arc<Thread> {
    // The raw lookup: a value above u32 names no handle here, nor in the
    // general path (handle_arg makes it the invalid handle). A busy table
    // (another thread of the process changing it) sends the call down the
    // general path, which waits for it.
    let process: &crate::task::Process = me.process();
    let Some(handles) = process.handles.try_lock() else { return me };
    // (Checked under the lock only because the process is at hand there.)
    if process.is_dead() {
        drop(handles);
        return me;
    }
    let endpoint = handles.find_raw(frame.rdi, rights::READ | rights::WRITE, |object: &Object| match object {
        Object::Channel(endpoint) => Some(endpoint),
        _ => None,
    });
    let Some(endpoint) = endpoint.cloned() else {
        drop(handles);
        return me;
    };
    drop(handles);
    let my_class = me.priority_class();
    let endpoint_ptr = Arc::as_ptr(&endpoint);
    // The caller's receive is in place before it is on the list: a sender
    // on another CPU reads it as soon as it finds the thread there.
    // SAFETY: `me` is the running thread.
    let my_wait = unsafe { me.wait() };
    // A running thread waits for nothing: every receive takes its wait
    // back before the thread returns to user mode (resume_parked, the fast
    // paths' targets, a failed park), so there is no old value to drop and
    // the wait is written in place (were one there, it would only leak).
    debug_assert!(my_wait.is_none());
    // SAFETY: `my_wait` is a valid, exclusive reference (see above); not
    // dropping its old value is sound in any case.
    unsafe { core::ptr::write(my_wait, Some(ReceiveWait::registers(endpoint))) };
    // SAFETY: the Arc just moved into the caller's wait keeps the endpoint
    // alive: nobody but this CPU touches that wait until the caller is on
    // the endpoint's list, and then only once this CPU has left the
    // caller's stack (its on_cpu flag), after the last use of `endpoint`.
    let endpoint = unsafe { &*endpoint_ptr };
    // The caller's on_cpu flag, dropped once this CPU is off its stack. The
    // thread stays alive until then, though its Arc goes to the endpoint's
    // list: its last Arc waits for the flag (`Thread`'s Drop).
    let my_on_cpu: *const AtomicBool = &me.on_cpu;
    let target = match endpoint.exchange_with_peer(me, cpu, my_class) {
        Ok(target) => target,
        Err(me) => {
            // SAFETY: as above: still the running thread, not on any list.
            drop(unsafe { me.wait() }.take());
            return me;
        }
    };
    // Committed: from here on this CPU runs `target`. Its receive completes
    // here; its wait (an Arc of the endpoint it waited on) is dropped once
    // this CPU is off the caller's stack (`complete_receive`): were it the
    // endpoint's last Arc, the drop would close the endpoint, which takes
    // the caller off its list, and could free the caller, whose Arc this CPU
    // gave away, while it still runs on the caller's stack.
    let target_frame = target.trap_frame();
    let target_ptr: *const Thread = Arc::as_ptr(&target);
    sched::hand_off_taken(cpu, target);
    // SAFETY: the TrapFrame at the top of the kernel stack of the thread
    // this CPU now runs (parked: the frame is all its stack holds), which
    // nothing else references while it runs here (`frame`, the caller's,
    // is another: still on this stack until enter_frame).
    let target_regs = unsafe { &mut *target_frame };
    // The bytes past the message are zero: the receiver sees nothing of
    // the sender's registers beyond it.
    let mask = &WORD_MASKS[len as usize];
    target_regs.rdx = frame.rdx & mask[0];
    target_regs.r10 = frame.r10 & mask[1];
    target_regs.r8 = frame.r8 & mask[2];
    target_regs.r9 = frame.r9 & mask[3];
    target_regs.rax = len;
    // SAFETY: `target` is this CPU's current thread now, its kernel stack
    // holds only its TrapFrame (it was parked), `my_on_cpu` is the flag of the
    // thread whose stack this is (kept alive by `Thread`'s Drop, which
    // waits for the flag), nothing here needs dropping, and
    // `complete_receive` is sound to call then (see there).
    unsafe { context::enter_frame_completing(target_ptr, my_on_cpu, target_frame) }
}

/// Completes the register receive of the thread the fast path switched
/// to (`thread`): drops its wait. Runs on its kernel stack, off the stack
/// of the thread left (`context::enter_frame_completing`), where closing
/// an endpoint is safe.
pub extern "C" fn complete_receive(thread: &Thread) {
    // SAFETY: `thread` is this CPU's current thread (exchange_short's
    // target), kept alive by the CPU's slot; only the CPU running a thread
    // touches its wait.
    let wait = unsafe { thread.wait() };
    debug_assert!(wait.as_ref().is_some_and(|w| w.buffers.is_none()), "not in a register receive");
    // The endpoint's Arc is the only part of a ReceiveWait with a Drop.
    const _: () = assert!(!core::mem::needs_drop::<Option<crate::ipc::ReceiveBuffers>>());
    // SAFETY: it is parked in a register receive (its `park` said so when
    // exchange_with_peer took it), so its wait is Some: its endpoint Arc is
    // moved out (no copy of the rest, no test of the variant) and the wait
    // overwritten with None without dropping it again.
    let endpoint = unsafe {
        let endpoint = core::ptr::read(&wait.as_ref().unwrap_unchecked().endpoint);
        core::ptr::write(wait, None);
        endpoint
    };
    drop(endpoint);
}

/// `WORD_MASKS[len]`: the bits of the four message words that a message
/// of `len` bytes (<= SHORT_MESSAGE_BYTES) covers.
static WORD_MASKS: [[u64; 4]; SHORT_MESSAGE_BYTES + 1] = {
    let mut masks = [[0u64; 4]; SHORT_MESSAGE_BYTES + 1];
    let mut len = 0;
    while len <= SHORT_MESSAGE_BYTES {
        let mut word = 0;
        while word < 4 {
            let start = word * 8;
            masks[len][word] = if len >= start + 8 {
                u64::MAX
            } else if len <= start {
                0
            } else {
                (1u64 << ((len - start) * 8)) - 1
            };
            word += 1;
        }
        len += 1;
    }
    masks
};

/// Runs CHANNEL_CALL / CHANNEL_REPLY_RECEIVE (buffers) through the fast
/// path when it applies; never returns then. Returns (having changed
/// nothing) when the general path must run the call.
pub fn try_ipc(frame: &mut TrapFrame) {
    // CHANNEL_CALL's deadline (R10): the fast path never waits with one.
    if frame.rax == nr::CHANNEL_CALL && frame.r10 != u64::MAX {
        return;
    }
    let Some(me) = sched::current() else { return };
    let endpoint = me.process().handles.lock().get_checked(
        crate::syscall::handle_arg(frame.rdi),
        rights::READ | rights::WRITE,
        |object: &Object| match object {
            Object::Channel(endpoint) => Some(endpoint.clone()),
            _ => None,
        },
    );
    let Ok(endpoint) = endpoint else { return };
    let Ok(args) = UserPtr::<CallArgs>::new(frame.rsi).read() else { return };
    if args.write_handle_count != 0 || args.write_len as usize > FAST_MESSAGE_BYTES {
        return;
    }
    let mut message = FastMessage { len: args.write_len as usize, words: [0; FAST_MESSAGE_BYTES / 8] };
    if UserSlice::<u8>::new(args.write_bytes, message.len).read_into(message.bytes_mut()).is_err() {
        return;
    }
    let Some(peer) = endpoint.peer() else { return };
    let Some(target) = peer.claim_parked_receiver(message.len) else { return };
    if target.process().is_dead() || !sched::may_hand_off(&me, &target) {
        peer.return_receiver(target);
        return;
    }
    // Park the caller as the receiver of the answer (its wait is in place
    // before it is on the list, and it is marked parked before any CPU can
    // switch to it: that waits for its on_cpu flag, dropped in enter_frame).
    // SAFETY: `me` is the running thread.
    *unsafe { me.wait() } = Some(ReceiveWait {
        endpoint: endpoint.clone(),
        buffers: Some(ReceiveBuffers::of_call(&args, frame.rdx)),
        deadline: u64::MAX,
    });
    me.park.store(park::BUFFERS, Ordering::Release);
    if !endpoint.park_receiver(&me) {
        // A message for us came in meanwhile: the general path reads it.
        me.park.store(park::NONE, Ordering::Relaxed);
        // SAFETY: as above.
        drop(unsafe { me.wait() }.take());
        peer.return_receiver(target);
        return;
    }
    // As in try_short: kept alive by the scheduler's `released` slot.
    let my_on_cpu: *const AtomicBool = &me.on_cpu;
    drop((endpoint, peer, me));
    // Committed: from here on this CPU runs `target`.
    sched::hand_off(sched::this_cpu(), target.clone());
    sched::SWITCHES.fetch_add(1, Ordering::Relaxed);
    let target_frame = target.trap_frame();
    deliver(&target, &message, target_frame);
    drop(target);
    // SAFETY: `target` is this CPU's current thread now, its kernel stack
    // holds only its TrapFrame (it was parked), `my_on_cpu` is the flag of the
    // thread whose stack this is (kept alive by the scheduler), and
    // nothing here needs dropping.
    unsafe { context::enter_frame(target_frame, my_on_cpu) }
}

/// Hands `message` to `target` (running as `target`: its address space is
/// loaded) the way it waits: into its registers, or into its buffers, and
/// sets its syscall result. A buffer that cannot take it puts the message
/// on the queue instead, where the general path finds it, and the receive
/// fails with BAD_POINTER, as the general path's would.
fn deliver(target: &Arc<Thread>, message: &FastMessage, frame: *mut TrapFrame) {
    // SAFETY: `target` is this CPU's current thread now.
    let wait = unsafe { target.wait() };
    // SAFETY: the TrapFrame at the top of the (current) target's kernel
    // stack; nothing else references it while the thread runs here.
    let frame = unsafe { &mut *frame };
    let result = match wait.as_ref() {
        // claim_parked_receiver checked the message fits the registers.
        Some(ReceiveWait { buffers: None, .. }) => {
            let [w0, w1, w2, w3, ..] = message.words;
            [frame.rdx, frame.r10, frame.r8, frame.r9] = [w0, w1, w2, w3];
            if message.len % 8 != 0 || message.len < SHORT_MESSAGE_BYTES {
                clear_tail(frame, message.len);
            }
            Ok(message.len as u64)
        }
        Some(ReceiveWait { endpoint, buffers: Some(b), .. }) => {
            let sizes = ReadSizes { bytes: message.len as u32, handles: 0 };
            let written = UserSlice::<u8>::new(b.bytes, b.capacity)
                .write_from(message.bytes())
                .and_then(|()| UserPtr::<ReadSizes>::new(b.sizes).write(&sizes));
            if written.is_err() {
                endpoint.requeue_front(Message { bytes: message.bytes().to_vec(), handles: Vec::new() });
            }
            written.map(|()| 0)
        }
        None => Err(Error::BadState), // claim_parked_receiver checked it is there
    };
    *wait = None;
    frame.rax = encode(result);
}

/// Zeroes the bytes of the message registers past `len` (a CALL message
/// from a buffer may leave stale bytes in its last word).
fn clear_tail(frame: &mut TrapFrame, len: usize) {
    let mut words = [frame.rdx, frame.r10, frame.r8, frame.r9];
    for (i, word) in words.iter_mut().enumerate() {
        let start = i * 8;
        if len <= start {
            *word = 0;
        } else if len < start + 8 {
            *word &= (1u64 << ((len - start) * 8)) - 1;
        }
    }
    [frame.rdx, frame.r10, frame.r8, frame.r9] = words;
}
