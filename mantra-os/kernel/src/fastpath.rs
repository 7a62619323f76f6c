//! The IPC fast path (seL4's): CHANNEL_CALL and CHANNEL_REPLY_RECEIVE with
//! a small message and no handles, when a receiver is parked on the peer
//! end, hand the message straight into the receiver's buffer and switch to
//! it on this CPU, parking the caller as the receiver of the answer. No
//! queueing, no allocation, no trip through the run queue: the caller's
//! kernel stack is abandoned (it holds nothing but its TrapFrame) and the
//! receiver returns to user mode from its own TrapFrame.
//!
//! Every check happens before anything changes; when one fails the call
//! takes the general path (syscall.rs), which has the same semantics.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use mantra_abi::{encode, nr, rights, CallArgs, Error, ReadSizes};

use crate::arch::x86_64::{context, TrapFrame};
use crate::ipc::{Message, ReceiveWait};
use crate::object::Object;
use crate::sched;
use crate::task::Thread;
use crate::uaccess::{UserPtr, UserSlice};

/// Largest message the fast path carries (it is copied through the stack).
pub const FAST_MESSAGE_BYTES: usize = 64;

/// Runs CHANNEL_CALL / CHANNEL_REPLY_RECEIVE through the fast path when it
/// applies; never returns then. Returns (having changed nothing) when the
/// general path must run the call.
pub fn try_ipc(frame: &mut TrapFrame) {
    // CHANNEL_CALL: channel, args, sizes, deadline (none: the fast path
    // never waits with a timeout). CHANNEL_REPLY_RECEIVE: channel, args, sizes.
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
    let len = args.write_len as usize;
    if args.write_handle_count != 0 || len > FAST_MESSAGE_BYTES {
        return;
    }
    let mut buffer = [0u8; FAST_MESSAGE_BYTES];
    let message = &mut buffer[..len];
    if UserSlice::<u8>::new(args.write_bytes, len).read_into(message).is_err() {
        return;
    }
    let Some(peer) = endpoint.peer() else { return };
    let Some(target) = peer.claim_parked_receiver(len) else { return };
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
        bytes: args.read_bytes,
        capacity: args.read_capacity as usize,
        handles: args.read_handles,
        handle_capacity: args.read_handle_capacity as usize,
        sizes: frame.rdx,
        deadline: u64::MAX,
    });
    me.parked.store(true, Ordering::Release);
    if !endpoint.park_receiver(&me) {
        // A message for us came in meanwhile: the general path reads it.
        me.parked.store(false, Ordering::Relaxed);
        // SAFETY: as above.
        drop(unsafe { me.wait() }.take());
        peer.return_receiver(target);
        return;
    }
    crate::syscall::COUNT_FAST.fetch_add(1, Ordering::Relaxed);
    drop((endpoint, peer, me));
    // Committed: from here on this CPU runs `target`.
    sched::hand_off(target.clone());
    let target_frame = target.trap_frame();
    deliver(&target, message, target_frame);
    drop(target);
    // SAFETY: `target` is this CPU's current thread now, its kernel stack
    // holds only its TrapFrame (it was parked), and nothing here needs
    // dropping: the thread left is released by finish_switch.
    unsafe { context::enter_frame(target_frame) }
}

/// Writes `message` into the buffers `target` waits with (running as
/// `target`: its address space is loaded) and sets its syscall result. A
/// buffer that cannot take it puts the message on the queue instead, where
/// the general path finds it, and the receive fails with BAD_POINTER, as
/// the general path's would.
fn deliver(target: &Arc<Thread>, message: &[u8], frame: *mut TrapFrame) {
    // SAFETY: `target` is this CPU's current thread now.
    let wait = unsafe { target.wait() };
    let result = match wait.as_ref() {
        Some(w) => {
            let sizes = ReadSizes { bytes: message.len() as u32, handles: 0 };
            let written = UserSlice::<u8>::new(w.bytes, w.capacity)
                .write_from(message)
                .and_then(|()| UserPtr::<ReadSizes>::new(w.sizes).write(&sizes));
            if written.is_err() {
                w.endpoint.requeue_front(Message { bytes: message.to_vec(), handles: Vec::new() });
            }
            written.map(|()| 0)
        }
        None => Err(Error::BadState), // claim_parked_receiver checked it is there
    };
    *wait = None;
    // SAFETY: the TrapFrame at the top of the (current) target's kernel
    // stack; nothing else references it while the thread runs here.
    unsafe { (*frame).rax = encode(result) };
}
