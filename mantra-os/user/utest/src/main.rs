//! In-guest user-mode tests of MantraCore's syscall surface. Prints
//! `utest: <name> ... ok` / `utest: <name> ... FAILED: <why>` per test and
//! `utest: P passed, F failed`; exits 0 when all passed. One test starts a
//! child process with zero capabilities that tries every syscall.
//!
//! Arguments: `fuzz=N` random syscalls (default 50000), `seed=S`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use mantra_abi::{fwvar, interrupt, map, nr, rights, signals, CallArgs, Error, Handle, HandleInfo, ObjectKind, PortPacket, ReadSizes};
use mantra_rt::{info, sys, Startup};

mantra_rt::main!(main);

type TestResult = Result<(), String>;

fn raw(number: u64, a: [u64; 6]) -> Result<u64, Error> {
    // SAFETY: the tests only pass pointers to live locals, or addresses the
    // kernel must refuse (kernel half, unmapped, overflowing): a wrong
    // kernel answer shows up as a test failure, not as memory corruption of
    // this process, because no test passes a pointer into its own data
    // except through the scratch buffers below.
    mantra_abi::decode(unsafe { sys::raw::syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]) })
}

fn expect(what: &str, got: Result<u64, Error>, want: Error) -> TestResult {
    match got {
        Err(e) if e == want => Ok(()),
        other => Err(format!("{what}: expected {}, got {other:?}", want.name())),
    }
}

fn ok<T>(what: &str, r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {}", e.name()))
}

fn self_process() -> Handle {
    mantra_rt::process::current()
}

fn stale_handle_refused() -> TestResult {
    let (a, b) = ok("channel_create", sys::channel_create(self_process()))?;
    ok("close", sys::handle_close(a))?;
    expect("write on a closed handle", raw(nr::CHANNEL_WRITE, [u64::from(a.0), 0, 0, 0, 0, 0]), Error::BadHandle)?;
    expect("close twice", raw(nr::HANDLE_CLOSE, [u64::from(a.0), 0, 0, 0, 0, 0]), Error::BadHandle)?;
    // The slot is reused with a new generation: the old value stays stale.
    let (c, d) = ok("channel_create", sys::channel_create(self_process()))?;
    expect("stale generation", raw(nr::HANDLE_CLOSE, [u64::from(a.0), 0, 0, 0, 0, 0]), Error::BadHandle)?;
    for h in [b, c, d] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

fn forged_handles_refused() -> TestResult {
    for value in [0u64, 1, 0xFFFF, 0x1234_5678, u64::from(u32::MAX), 1 << 40, u64::MAX] {
        // Index 0 of generation 0, huge indices, values above 32 bits.
        let got = raw(nr::HANDLE_INFO, [value, 0, 0, 0, 0, 0]);
        if got != Err(Error::BadHandle) {
            // A forged value could hit a live handle by chance only if it
            // equals one; none of these is a value the kernel issues first.
            let mut info = HandleInfo::default();
            if raw(nr::HANDLE_INFO, [value, &mut info as *mut _ as u64, 0, 0, 0, 0]).is_err() {
                return Err(format!("forged handle {value:#x}: {got:?}"));
            }
        }
    }
    Ok(())
}

fn wrong_type_and_rights_refused() -> TestResult {
    let (a, b) = ok("channel_create", sys::channel_create(self_process()))?;
    expect("port_wait on a channel", raw(nr::PORT_WAIT, [u64::from(a.0), 0, 0, 1, 0, 0]), Error::WrongType)?;
    let read_only = ok("duplicate", sys::handle_duplicate(a, rights::READ | rights::DUPLICATE))?;
    expect("write without WRITE", raw(nr::CHANNEL_WRITE, [u64::from(read_only.0), 0, 0, 0, 0, 0]), Error::AccessDenied)?;
    expect(
        "duplicate growing rights",
        raw(nr::HANDLE_DUPLICATE, [u64::from(read_only.0), u64::from(rights::READ | rights::WRITE), 0, 0, 0, 0]),
        Error::AccessDenied,
    )?;
    let no_dup = ok("duplicate", sys::handle_duplicate(a, rights::READ))?;
    expect("duplicate without DUPLICATE", raw(nr::HANDLE_DUPLICATE, [u64::from(no_dup.0), u64::from(rights::READ), 0, 0, 0, 0]), Error::AccessDenied)?;
    let mut info = HandleInfo::default();
    ok("info", raw(nr::HANDLE_INFO, [u64::from(read_only.0), &mut info as *mut _ as u64, 0, 0, 0, 0]))?;
    if info.rights != rights::READ | rights::DUPLICATE {
        return Err(format!("duplicate has rights {:#x}", info.rights));
    }
    for h in [a, b, read_only, no_dup] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

fn revoked_handles_refused() -> TestResult {
    let (a, b) = ok("channel_create", sys::channel_create(self_process()))?;
    let child = ok("duplicate", sys::handle_duplicate(a, rights::BASIC))?;
    let grandchild = ok("duplicate", sys::handle_duplicate(child, rights::READ | rights::WRITE))?;
    ok("write through the child", sys::channel_write(child, b"x", &[]))?;
    ok("revoke", sys::handle_revoke(a))?;
    expect("child after revoke", raw(nr::CHANNEL_WRITE, [u64::from(child.0), 0, 0, 0, 0, 0]), Error::BadHandle)?;
    expect("grandchild after revoke", raw(nr::CHANNEL_WRITE, [u64::from(grandchild.0), 0, 0, 0, 0, 0]), Error::BadHandle)?;
    ok("parent still works", sys::channel_write(a, b"y", &[]))?;
    let fresh = ok("duplicate after revoke", sys::handle_duplicate(a, rights::READ))?;
    let no_revoke = ok("duplicate", sys::handle_duplicate(a, rights::READ | rights::DUPLICATE))?;
    expect("revoke without REVOKE", raw(nr::HANDLE_REVOKE, [u64::from(no_revoke.0), 0, 0, 0, 0, 0]), Error::AccessDenied)?;
    for h in [a, b, fresh, no_revoke] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

/// Addresses the kernel must refuse for any pointer argument.
const KERNEL_ADDRESS: u64 = 0xFFFF_8000_0000_0000;
const UNMAPPED: u64 = 0x0000_5000_0000_0000;
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;

fn bad_pointers_refused() -> TestResult {
    let (a, b) = ok("channel_create", sys::channel_create(self_process()))?;
    let (ha, hb) = (u64::from(a.0), u64::from(b.0));
    for (what, ptr, len) in [
        ("kernel address", KERNEL_ADDRESS, 16u64),
        ("unmapped", UNMAPPED, 16),
        ("non-canonical", NON_CANONICAL, 16),
        ("overflowing", u64::MAX - 4, 16),
        ("null", 0, 16),
    ] {
        expect(&format!("write from {what}"), raw(nr::CHANNEL_WRITE, [ha, ptr, len, 0, 0, 0]), Error::BadPointer)?;
        expect(&format!("info to {what}"), raw(nr::HANDLE_INFO, [ha, ptr, 0, 0, 0, 0]), Error::BadPointer)?;
    }
    // Misaligned: a ReadSizes (4-byte aligned) at an odd address.
    ok("write", sys::channel_write(a, b"hello", &[]))?;
    let mut buffer = [0u8; 64];
    let misaligned = buffer.as_mut_ptr() as u64 | 1;
    expect("misaligned sizes", raw(nr::CHANNEL_READ, [hb, buffer.as_mut_ptr() as u64, 64, 0, 0, misaligned]), Error::BadPointer)?;
    // A bad output buffer fails before anything is consumed: the message is still there.
    let mut sizes = ReadSizes::default();
    expect(
        "read into the kernel",
        raw(nr::CHANNEL_READ, [hb, KERNEL_ADDRESS, 64, 0, 0, &mut sizes as *mut _ as u64]),
        Error::BadPointer,
    )?;
    let mut handles = [Handle::INVALID; 1];
    ok("read after refusals", sys::channel_read(b, &mut buffer, &mut handles, &mut sizes))?;
    if &buffer[..sizes.bytes as usize] != b"hello" {
        return Err("message corrupted by refused reads".to_string());
    }
    // Oversized lengths are refused before any allocation.
    expect("64 KiB + 1 message", raw(nr::CHANNEL_WRITE, [ha, buffer.as_ptr() as u64, 65537, 0, 0, 0]), Error::InvalidArgs)?;
    // Every pointer-taking syscall with a kernel pointer.
    let mut packets = [PortPacket::default(); 1];
    let port = ok("port", sys::port_create(self_process()))?;
    expect("port_wait into the kernel", raw(nr::PORT_WAIT, [u64::from(port.0), 0, KERNEL_ADDRESS, 1, 0, 0]), Error::BadPointer)?;
    let _ = &mut packets;
    expect("call args in the kernel", raw(nr::CHANNEL_CALL, [ha, KERNEL_ADDRESS, 0, 0, 0, 0]), Error::BadPointer)?;
    let args = CallArgs { write_bytes: KERNEL_ADDRESS, write_len: 4, ..CallArgs::default() };
    expect("call bytes in the kernel", raw(nr::CHANNEL_CALL, [ha, &args as *const _ as u64, 0, 0, 0, 0]), Error::BadPointer)?;
    for h in [a, b, port] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

fn handle_transfer_moves() -> TestResult {
    let (a, b) = ok("channel_create", sys::channel_create(self_process()))?;
    let (c, d) = ok("channel_create", sys::channel_create(self_process()))?;
    ok("send c over a", sys::channel_write(a, b"take this", &[c]))?;
    expect("c moved away", raw(nr::HANDLE_CLOSE, [u64::from(c.0), 0, 0, 0, 0, 0]), Error::BadHandle)?;
    let mut bytes = [0u8; 16];
    let mut handles = [Handle::INVALID; 2];
    let mut sizes = ReadSizes::default();
    ok("receive", sys::channel_read(b, &mut bytes, &mut handles, &mut sizes))?;
    if sizes.handles != 1 {
        return Err(format!("received {} handles", sizes.handles));
    }
    let c2 = handles[0];
    ok("received end works", sys::channel_write(c2, b"ping", &[]))?;
    ok("peer reads it", sys::channel_read(d, &mut bytes, &mut handles, &mut sizes))?;
    expect("a channel cannot carry itself", raw(nr::CHANNEL_WRITE, [u64::from(a.0), 0, 0, &a as *const _ as u64, 1, 0]), Error::InvalidArgs)?;
    ok("close", sys::handle_close(d))?;
    // Peer closed is reported clearly.
    expect("write to a closed peer", raw(nr::CHANNEL_WRITE, [u64::from(c2.0), 0, 0, 0, 0, 0]), Error::PeerClosed)?;
    for h in [a, b, c2] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

fn ports_and_timers_deliver() -> TestResult {
    let port = ok("port", sys::port_create(self_process()))?;
    let timer = ok("timer", sys::timer_create(self_process()))?;
    ok("wait_async", sys::object_wait_async(timer, port, 7, signals::TIMER_FIRED))?;
    ok("timer_set", sys::timer_set(timer, sys::clock_get() + 20_000_000))?;
    let mut packets = [PortPacket::default(); 4];
    let n = ok("port_wait", sys::port_wait(port, sys::clock_get() + 2_000_000_000, &mut packets))?;
    if n != 1 || packets[0].key != 7 || packets[0].observed & signals::TIMER_FIRED == 0 {
        return Err(format!("got {n} packets: {:?}", &packets[..n]));
    }
    expect("port_wait times out", sys::port_wait(port, sys::clock_get() + 1_000_000, &mut packets).map(|n| n as u64), Error::TimedOut)?;
    let (a, b) = ok("channel_create", sys::channel_create(self_process()))?;
    ok("watch readable", sys::object_wait_async(b, port, 9, signals::READABLE | signals::PEER_CLOSED))?;
    ok("write", sys::channel_write(a, b"!", &[]))?;
    let n = ok("port_wait", sys::port_wait(port, sys::clock_get() + 1_000_000_000, &mut packets))?;
    if n != 1 || packets[0].key != 9 {
        return Err("no READABLE packet".to_string());
    }
    for h in [port, timer, a, b] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

/// Waits briefly for packets on `port`; returns those that came.
fn packets(port: Handle, wait_ns: u64) -> Result<Vec<PortPacket>, String> {
    let mut out = [PortPacket::default(); 64];
    match sys::port_wait(port, sys::clock_get() + wait_ns, &mut out) {
        Ok(n) => Ok(out[..n].to_vec()),
        Err(Error::TimedOut) => Ok(Vec::new()),
        Err(e) => Err(format!("port_wait: {}", e.name())),
    }
}

/// Exactly one packet with `key` and INTERRUPT, and nothing after it.
fn expect_one_interrupt(what: &str, port: Handle, key: u64) -> TestResult {
    let mut got = packets(port, 1_000_000_000)?;
    got.extend(packets(port, 5_000_000)?);
    match got.as_slice() {
        [p] if p.key == key && p.observed == signals::INTERRUPT => Ok(()),
        other => Err(format!("{what}: expected one packet with key {key}, got {other:?}")),
    }
}

/// A virtual interrupt bound to a port: one packet per firing; triggers
/// while it is pending (not acknowledged) merge into it; ACK re-arms.
/// Rights, kinds and the CREATE right on the process are enforced.
fn virtual_interrupt_delivers_one_packet_per_firing() -> TestResult {
    const KEY: u64 = 0xA11CE;
    let irq = ok("create", sys::interrupt_create_virtual(self_process()))?;
    let port = ok("port", sys::port_create(self_process()))?;
    let info = ok("info", sys::handle_info(irq))?;
    if info.kind != ObjectKind::Interrupt as u32 || info.rights & (rights::READ | rights::WRITE | rights::WAIT) == 0 {
        return Err(format!("interrupt handle info {info:?}"));
    }
    expect("ack before any firing", sys::interrupt_ack(irq).map(|()| 0), Error::BadState)?;
    // Fired before it is bound: the packet comes at bind time.
    ok("trigger unbound", sys::interrupt_trigger(irq))?;
    ok("bind", sys::interrupt_bind(irq, port, KEY))?;
    expect_one_interrupt("pending at bind", port, KEY)?;
    expect("bind twice", sys::interrupt_bind(irq, port, KEY).map(|()| 0), Error::BadState)?;
    for round in 0..3 {
        ok("ack", sys::interrupt_ack(irq))?;
        expect("ack twice", sys::interrupt_ack(irq).map(|()| 0), Error::BadState)?;
        let early = packets(port, 5_000_000)?;
        if !early.is_empty() {
            return Err(format!("round {round}: packets without a firing: {early:?}"));
        }
        for _ in 0..3 {
            ok("trigger", sys::interrupt_trigger(irq))?;
        }
        expect_one_interrupt(&format!("three triggers, round {round}"), port, KEY)?;
    }
    // The signal: an object_wait_async observer sees INTERRUPT too.
    ok("ack", sys::interrupt_ack(irq))?;
    ok("watch", sys::object_wait_async(irq, port, 7, signals::INTERRUPT))?;
    ok("trigger", sys::interrupt_trigger(irq))?;
    let mut keys: Vec<u64> = packets(port, 1_000_000_000)?.iter().map(|p| p.key).collect();
    keys.extend(packets(port, 5_000_000)?.iter().map(|p| p.key));
    keys.sort();
    if keys != [7, KEY] {
        return Err(format!("binding and observer packets: keys {keys:?}"));
    }
    // Rights and kinds.
    let no_write = ok("duplicate", sys::handle_duplicate(irq, rights::READ))?;
    expect("trigger without WRITE", raw(nr::INTERRUPT_TRIGGER, [u64::from(no_write.0), 0, 0, 0, 0, 0]), Error::AccessDenied)?;
    expect("ack without WRITE", raw(nr::INTERRUPT_ACK, [u64::from(no_write.0), 0, 0, 0, 0, 0]), Error::AccessDenied)?;
    let no_read = ok("duplicate", sys::handle_duplicate(irq, rights::WRITE))?;
    let port2 = ok("port", sys::port_create(self_process()))?;
    expect("bind without READ", raw(nr::INTERRUPT_BIND, [u64::from(no_read.0), u64::from(port2.0), 1, 0, 0, 0]), Error::AccessDenied)?;
    expect("trigger a port", raw(nr::INTERRUPT_TRIGGER, [u64::from(port.0), 0, 0, 0, 0, 0]), Error::WrongType)?;
    expect("bind to a non-port", raw(nr::INTERRUPT_BIND, [u64::from(irq.0), u64::from(irq.0), 1, 0, 0, 0]), Error::WrongType)?;
    // A process handle without CREATE: a child's, reduced.
    let (child, child_space) = ok("process_create", sys::process_create(self_process(), b"nocreate"))?;
    let no_create = ok("duplicate child", sys::handle_duplicate(child, rights::READ))?;
    expect("create without CREATE", raw(nr::INTERRUPT_CREATE, [u64::from(no_create.0), interrupt::VIRTUAL, 0, 0, 0, 0]), Error::AccessDenied)?;
    ok("create charged to the child", sys::interrupt_create_virtual(child).and_then(sys::handle_close))?;
    for h in [child, child_space] {
        ok("close", sys::handle_close(h))?;
    }
    expect("virtual with flags", raw(nr::INTERRUPT_CREATE, [u64::from(self_process().0), interrupt::VIRTUAL, 1, 0, 0, 0]), Error::InvalidArgs)?;
    for h in [irq, port, no_write, no_read, port2, no_create] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

/// A firing never loses its packet: when the bound port is full, ACK fails
/// (the interrupt stays pending, no packet is queued) until there is room.
fn interrupt_ack_waits_for_room_on_the_port() -> TestResult {
    const KEY: u64 = 0xF00;
    let irq = ok("create", sys::interrupt_create_virtual(self_process()))?;
    let port = ok("port", sys::port_create(self_process()))?;
    let (a, b) = ok("channel", sys::channel_create(self_process()))?;
    ok("bind", sys::interrupt_bind(irq, port, KEY))?;
    ok("trigger", sys::interrupt_trigger(irq))?;
    // Fill the port: a writable channel end fires each observer at once.
    let mut filler = 0;
    loop {
        match sys::object_wait_async(a, port, 1, signals::WRITABLE) {
            Ok(()) => filler += 1,
            Err(Error::NoResources) => break,
            Err(e) => return Err(format!("filling the port: {}", e.name())),
        }
        if filler > 4096 {
            return Err("the port never filled".to_string());
        }
    }
    expect("ack with a full port", sys::interrupt_ack(irq).map(|()| 0), Error::NoResources)?;
    ok("trigger while pending", sys::interrupt_trigger(irq))?;
    expect("ack still refused", sys::interrupt_ack(irq).map(|()| 0), Error::NoResources)?;
    let mut interrupts = 0;
    let mut total = 0;
    loop {
        let got = packets(port, 5_000_000)?;
        if got.is_empty() {
            break;
        }
        total += got.len();
        interrupts += got.iter().filter(|p| p.key == KEY).count();
    }
    if interrupts != 1 || total != filler + 1 {
        return Err(format!("{interrupts} interrupt packets, {total} packets for {filler} fillers"));
    }
    ok("ack after draining", sys::interrupt_ack(irq))?;
    ok("trigger", sys::interrupt_trigger(irq))?;
    expect_one_interrupt("after the port drained", port, KEY)?;
    for h in [irq, port, a, b] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

/// The interrupt resource (`irq`) from the startup message; 0 without it.
static IRQ_RESOURCE: AtomicU32 = AtomicU32::new(0);
/// The console object (`console`) from the startup message; 0 without it.
static CONSOLE: AtomicU32 = AtomicU32::new(0);

/// The console object: whole lines out, input buffered, every misuse
/// refused with an error (and the output shows the good line whole).
fn console_object_checks() -> TestResult {
    let console = Handle(CONSOLE.load(Ordering::Relaxed));
    let info = ok("console (manifests/utest grants `console`)", sys::handle_info(console))?;
    if info.kind != ObjectKind::Console as u32 || info.rights & (rights::READ | rights::WRITE) != rights::READ | rights::WRITE {
        return Err(format!("`console` is of kind {} with rights {:#x}", info.kind, info.rights));
    }
    ok("a whole line", sys::console_write(console, b"utest: console line written whole\n"))?;
    let c = u64::from(console.0);
    expect("no line end", sys::console_write(console, b"no line end").map(|()| 0), Error::InvalidArgs)?;
    expect("a control byte", sys::console_write(console, b"bell \x07\n").map(|()| 0), Error::InvalidArgs)?;
    expect("a byte above ASCII", sys::console_write(console, b"\xff\n").map(|()| 0), Error::InvalidArgs)?;
    expect("empty", raw(nr::CONSOLE_WRITE, [c, 0, 0, 0, 0, 0]), Error::InvalidArgs)?;
    let long = alloc::vec![b'x'; mantra_abi::console::MAX_WRITE + 1];
    expect("too long", sys::console_write(console, &long).map(|()| 0), Error::InvalidArgs)?;
    expect("write from the kernel", raw(nr::CONSOLE_WRITE, [c, KERNEL_ADDRESS, 8, 0, 0, 0]), Error::BadPointer)?;
    expect("read capacity 0", raw(nr::CONSOLE_READ, [c, 0, 0, 0, 0, 0]), Error::InvalidArgs)?;
    let mut buffer = [0u8; 64];
    // Nobody types into the test machine's console: nothing is buffered.
    expect("read with nothing buffered", sys::console_read(console, &mut buffer).map(|n| n as u64), Error::ShouldWait)?;
    let write_only = ok("duplicate", sys::handle_duplicate(console, rights::WRITE))?;
    expect("read without READ", sys::console_read(write_only, &mut buffer).map(|n| n as u64), Error::AccessDenied)?;
    let read_only = ok("duplicate", sys::handle_duplicate(console, rights::READ))?;
    expect("write without WRITE", sys::console_write(read_only, b"x\n").map(|()| 0), Error::AccessDenied)?;
    let port = ok("port", sys::port_create(self_process()))?;
    expect("console read on a port", raw(nr::CONSOLE_READ, [u64::from(port.0), buffer.as_mut_ptr() as u64, 64, 0, 0, 0]), Error::WrongType)?;
    for h in [write_only, read_only, port] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

/// The firmware-variable resource (`fwvar`) from the startup message; 0 without it.
static FWVAR_RESOURCE: AtomicU32 = AtomicU32::new(0);

fn fwvar_resource() -> Result<Handle, String> {
    let resource = Handle(FWVAR_RESOURCE.load(Ordering::Relaxed));
    let info = ok("fwvar resource (manifests/utest grants `fwvar`)", sys::handle_info(resource))?;
    if info.kind != ObjectKind::Resource as u32 {
        return Err(format!("`fwvar` is of kind {}", info.kind));
    }
    Ok(resource)
}

fn fw_get(fwvar: Handle, name: &[u8], buffer: &mut [u8], info: &mut fwvar::VariableInfo) -> Result<u64, Error> {
    let info = info as *mut fwvar::VariableInfo as u64;
    raw(nr::FIRMWARE_VARIABLE_GET, [u64::from(fwvar.0), name.as_ptr() as u64, name.len() as u64, buffer.as_mut_ptr() as u64, buffer.len() as u64, info])
}

fn fw_set(fwvar: Handle, name: &[u8], attributes: u64, data: &[u8]) -> Result<u64, Error> {
    raw(nr::FIRMWARE_VARIABLE_SET, [u64::from(fwvar.0), name.as_ptr() as u64, name.len() as u64, attributes, data.as_ptr() as u64, data.len() as u64])
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// FIRMWARE_VARIABLE_GET/_SET refuse every bad argument with the right
/// error, before or after reaching the firmware; an NV variable
/// round-trips (value, attributes, size on BUFFER_TOO_SMALL, delete).
fn firmware_variables_refuse_bad_arguments() -> TestResult {
    let fw = fwvar_resource()?;
    let mut buffer = [0u8; 64];
    let mut info = fwvar::VariableInfo::default();
    let nv = u64::from(fwvar::ATTRS_NV);
    let long = [b'x'; 65];
    expect("empty name", fw_get(fw, b"", &mut buffer, &mut info), Error::InvalidArgs)?;
    expect("65-character name", fw_get(fw, &long, &mut buffer, &mut info), Error::InvalidArgs)?;
    expect("control character in the name", fw_get(fw, b"Mantra\x01", &mut buffer, &mut info), Error::InvalidArgs)?;
    expect("non-ASCII name", fw_set(fw, "Mantr\u{e4}".as_bytes(), nv, b"x"), Error::InvalidArgs)?;
    let f = u64::from(fw.0);
    expect("name in the kernel", raw(nr::FIRMWARE_VARIABLE_GET, [f, KERNEL_ADDRESS, 8, buffer.as_mut_ptr() as u64, 64, 0]), Error::BadPointer)?;
    expect("name length above 32 bits", raw(nr::FIRMWARE_VARIABLE_GET, [f, buffer.as_ptr() as u64, 1 << 40, 0, 0, 0]), Error::InvalidArgs)?;
    let name = b"MantraUtestNoSuchVariable";
    expect("buffer in the kernel", raw(nr::FIRMWARE_VARIABLE_GET, [f, name.as_ptr() as u64, name.len() as u64, KERNEL_ADDRESS, 64, 0]), Error::BadPointer)?;
    expect("info in the kernel", raw(nr::FIRMWARE_VARIABLE_GET, [f, name.as_ptr() as u64, name.len() as u64, buffer.as_mut_ptr() as u64, 64, KERNEL_ADDRESS]), Error::BadPointer)?;
    expect("overflowing buffer", raw(nr::FIRMWARE_VARIABLE_GET, [f, name.as_ptr() as u64, name.len() as u64, buffer.as_mut_ptr() as u64, u64::MAX, 0]), Error::BadPointer)?;
    expect("a variable that does not exist", fw_get(fw, name, &mut buffer, &mut info), Error::NotFound)?;
    for attributes in [0, 1, 2, 4, 3, 5, nv | 0x20, nv | 0x40, nv | 1 << 32, u64::MAX] {
        expect(&format!("attributes {attributes:#x}"), fw_set(fw, b"MantraUtestVolatile", attributes, b"x"), Error::InvalidArgs)?;
    }
    expect("2049 bytes", fw_set(fw, b"MantraUtestVolatile", nv, &[0u8; 2049]), Error::InvalidArgs)?;
    expect("data in the kernel", raw(nr::FIRMWARE_VARIABLE_SET, [f, name.as_ptr() as u64, name.len() as u64, nv, KERNEL_ADDRESS, 8]), Error::BadPointer)?;
    for owned in fwvar::BOOT_OWNED {
        expect(&format!("writing {owned}"), fw_set(fw, owned.as_bytes(), nv, &[0u8; 32]), Error::AccessDenied)?;
    }
    // Handles: wrong kind, missing rights.
    let me = self_process();
    expect("a process handle", fw_get(me, name, &mut buffer, &mut info), Error::WrongType)?;
    let port = ok("port", sys::port_create(me))?;
    expect("a port (READ, WRITE)", fw_get(port, name, &mut buffer, &mut info), Error::WrongType)?;
    expect("set on a port", fw_set(port, b"MantraUtestVolatile", nv, b"x"), Error::WrongType)?;
    ok("close", sys::handle_close(port))?;
    let irq = Handle(IRQ_RESOURCE.load(Ordering::Relaxed));
    expect("the interrupt resource (no READ)", fw_get(irq, name, &mut buffer, &mut info), Error::AccessDenied)?;
    let read_only = ok("duplicate READ", sys::handle_duplicate(fw, rights::READ))?;
    let write_only = ok("duplicate WRITE", sys::handle_duplicate(fw, rights::WRITE))?;
    expect("set without WRITE", fw_set(read_only, b"MantraUtestVolatile", nv, b"x"), Error::AccessDenied)?;
    expect("get without READ", fw_get(write_only, name, &mut buffer, &mut info), Error::AccessDenied)?;
    expect("interrupt_create with fwvar (no CREATE)", raw(nr::INTERRUPT_CREATE, [f, 8, 0, 0, 0, 0]), Error::AccessDenied)?;

    // UEFI makes volatile variables read-only after ExitBootServices: the
    // firmware refuses to create one (INVALID_PARAMETER).
    let volatile = u64::from(fwvar::ATTRS_VOLATILE);
    expect("set a volatile variable at runtime", fw_set(fw, b"MantraUtestVolatile", volatile, b"x"), Error::InvalidArgs)?;
    // An NV variable round-trips: value, attributes, size, delete.
    let value = b"nv value 0123456789";
    let scratch = b"MantraUtestScratch";
    ok("set NV", fw_set(fw, scratch, nv, value))?;
    let mut small = [0u8; 4];
    expect("buffer too small", fw_get(fw, scratch, &mut small, &mut info), Error::BufferTooSmall)?;
    if info.size as usize != value.len() {
        return Err(format!("BUFFER_TOO_SMALL reported {} bytes needed, not {}", info.size, value.len()));
    }
    let n = ok("get NV", fw_get(fw, scratch, &mut buffer, &mut info))? as usize;
    if &buffer[..n] != value || info.attributes != fwvar::ATTRS_NV || info.size as usize != n {
        return Err(format!("read back {:?} with attributes {:#x}", &buffer[..n], info.attributes));
    }
    ok("delete", fw_set(fw, scratch, nv, b""))?;
    expect("get after delete", fw_get(fw, scratch, &mut buffer, &mut info), Error::NotFound)?;
    expect("delete twice", fw_set(fw, scratch, nv, b""), Error::NotFound)?;
    for h in [read_only, write_only] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

/// Counts boots in the NV variable `MantraUtestBoots`: reads it (absent on
/// a fresh variable store), writes the count + 1 and reads it back. It
/// lives in the flash store QEMU backs with firmware-vars.fd, so the next
/// boot of the same image reads the new count
/// (tests/test_userland_fwvar.py boots twice). Also prints what one
/// GetVariable and one SetVariable cost (rdtsc: guest instructions under
/// `./mantra run --icount`).
fn firmware_variable_persists() -> TestResult {
    let fw = fwvar_resource()?;
    let name = b"MantraUtestBoots";
    let mut buffer = [0u8; 8];
    let mut info = fwvar::VariableInfo::default();
    let before = rdtsc();
    let got = fw_get(fw, name, &mut buffer, &mut info);
    let get_cost = rdtsc() - before;
    let count = match got {
        Ok(8) if info.attributes == fwvar::ATTRS_NV => u64::from_le_bytes(buffer),
        Err(Error::NotFound) => 0,
        other => return Err(format!("reading {}: {other:?} (attributes {:#x})", "MantraUtestBoots", info.attributes)),
    };
    let before = rdtsc();
    ok("set NV", fw_set(fw, name, u64::from(fwvar::ATTRS_NV), &(count + 1).to_le_bytes()))?;
    let set_cost = rdtsc() - before;
    let before = rdtsc();
    ok("read back", fw_get(fw, name, &mut buffer, &mut info))?;
    let read_cost = rdtsc() - before;
    if u64::from_le_bytes(buffer) != count + 1 {
        return Err(format!("wrote {} but read back {}", count + 1, u64::from_le_bytes(buffer)));
    }
    info!("utest:   fwvar: MantraUtestBoots was {count}, now {}", count + 1);
    info!(
        "utest:   fwvar: FIRMWARE_VARIABLE_GET {get_cost} tsc ({}), {read_cost} tsc (8 bytes found); FIRMWARE_VARIABLE_SET (NV, 8 bytes) {set_cost} tsc",
        if count == 0 { "not found" } else { "8 bytes found" }
    );
    Ok(())
}
/// The CMOS RTC's line (ISA IRQ 8; QEMU q35 does not move it).
const RTC_GSI: u32 = 8;

/// Physical interrupts need the interrupt resource; with it, a real device
/// line (the RTC's GSI) is created, bound and released, and every misuse is
/// refused with an error.
fn physical_interrupts_need_the_irq_resource() -> TestResult {
    let resource = Handle(IRQ_RESOURCE.load(Ordering::Relaxed));
    let info = ok("irq resource (manifests/utest grants `irq`)", sys::handle_info(resource))?;
    if info.kind != ObjectKind::Resource as u32 {
        return Err(format!("`irq` is of kind {}", info.kind));
    }
    let me = u64::from(self_process().0);
    expect("physical with a process handle", raw(nr::INTERRUPT_CREATE, [me, u64::from(RTC_GSI), 0, 0, 0, 0]), Error::WrongType)?;
    let no_create = ok("duplicate", sys::handle_duplicate(resource, rights::TRANSFER))?;
    expect("resource without CREATE", raw(nr::INTERRUPT_CREATE, [u64::from(no_create.0), u64::from(RTC_GSI), 0, 0, 0, 0]), Error::AccessDenied)?;
    let r = u64::from(resource.0);
    expect("virtual with the resource", raw(nr::INTERRUPT_CREATE, [r, interrupt::VIRTUAL, 0, 0, 0, 0]), Error::WrongType)?;
    expect("GSI beyond the I/O APICs", raw(nr::INTERRUPT_CREATE, [r, 100_000, 0, 0, 0, 0]), Error::OutOfRange)?;
    expect("GSI above 32 bits", raw(nr::INTERRUPT_CREATE, [r, 1 << 40, 0, 0, 0, 0]), Error::OutOfRange)?;
    expect("unknown mode", raw(nr::INTERRUPT_CREATE, [r, u64::from(RTC_GSI), 99, 0, 0, 0]), Error::InvalidArgs)?;
    expect("flags above 32 bits", raw(nr::INTERRUPT_CREATE, [r, u64::from(RTC_GSI), 1 << 33, 0, 0, 0]), Error::InvalidArgs)?;

    let rtc = ok("create for the RTC's GSI", sys::interrupt_create_physical(resource, RTC_GSI, interrupt::MODE_DEFAULT))?;
    expect("the GSI twice", raw(nr::INTERRUPT_CREATE, [r, u64::from(RTC_GSI), 0, 0, 0, 0]), Error::BadState)?;
    expect("trigger a physical interrupt", sys::interrupt_trigger(rtc).map(|()| 0), Error::NotSupported)?;
    expect("ack before any firing", sys::interrupt_ack(rtc).map(|()| 0), Error::BadState)?;
    let port = ok("port", sys::port_create(self_process()))?;
    ok("bind", sys::interrupt_bind(rtc, port, 8))?;
    expect("bind twice", sys::interrupt_bind(rtc, port, 8).map(|()| 0), Error::BadState)?;
    ok("close", sys::handle_close(rtc))?;
    let rtc = ok("the GSI is free again after close", sys::interrupt_create_physical(resource, RTC_GSI, interrupt::MODE_EDGE_HIGH))?;
    ok("close", sys::handle_close(rtc))?;

    // Vectors run out (16 device vectors) before the GSIs do; created
    // lines stay masked, nothing is bound.
    let mut held = Vec::new();
    let mut result = Ok(());
    for gsi in 0..24u32 {
        match sys::interrupt_create_physical(resource, gsi, interrupt::MODE_DEFAULT) {
            Ok(h) => held.push(h),
            Err(Error::NoResources) if held.len() == 16 => break,
            Err(e) => {
                result = Err(format!("GSI {gsi} with {} held: {}", held.len(), e.name()));
                break;
            }
        }
    }
    if result.is_ok() && held.len() != 16 {
        result = Err(format!("{} physical interrupts and no NO_RESOURCES", held.len()));
    }
    for h in held.into_iter().chain([port, no_create]) {
        ok("close", sys::handle_close(h))?;
    }
    result
}

fn call_without_reply_times_out() -> TestResult {
    let (a, b) = ok("channel_create", sys::channel_create(self_process()))?;
    let request = [1u8; 8];
    let mut reply = [0u8; 8];
    let args = sys::call_args(&request, &mut reply);
    let mut sizes = ReadSizes::default();
    let deadline = sys::clock_get() + 20_000_000;
    expect(
        "call nobody answers",
        raw(nr::CHANNEL_CALL, [u64::from(a.0), &args as *const _ as u64, &mut sizes as *mut _ as u64, deadline, 0, 0]),
        Error::TimedOut,
    )?;
    if sys::clock_get() < deadline {
        return Err("returned before the deadline".to_string());
    }
    // The request was delivered; the server end can still read it.
    let mut bytes = [0u8; 16];
    let mut handles = [Handle::INVALID; 1];
    ok("server reads the request", sys::channel_read(b, &mut bytes, &mut handles, &mut sizes))?;
    for h in [a, b] {
        ok("close", sys::handle_close(h))?;
    }
    Ok(())
}

/// Calls in registers and through buffers, to servers of either kind (each
/// call takes the fast path: the servers are parked receivers on this CPU),
/// and the general path's register receive (a message already queued).
fn short_messages_in_registers() -> TestResult {
    use mantra_rt::process::{echo_server_code, short_echo_server_code, spawn_raw};
    use sys::ShortMessage;
    let (client, server_end) = ok("channel_create", sys::channel_create(self_process()))?;
    let server = ok("spawn short echo", spawn_raw(b"utest-short-echo", short_echo_server_code(), Some(server_end)))?;
    for len in [0usize, 1, 8, 13, 31, 32] {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8 + 1).collect();
        let message = ShortMessage::from_bytes(&bytes).ok_or("message too long")?;
        // Garbage past the length must not travel.
        let mut sent = message;
        if len < 32 {
            sent.words[3] |= 0xAB << 56;
        }
        let echo = ok("call_short", sys::channel_call_short(client, &sent))?;
        if echo != message {
            return Err(format!("{len} bytes: sent {message:?}, echo {echo:?}"));
        }
    }
    expect(
        "33 bytes",
        raw(nr::CHANNEL_CALL_SHORT, [u64::from(client.0), 33, 0, 0, 0, 0]),
        Error::InvalidArgs,
    )?;
    // The fast path checks the handle like the general path, with the
    // server parked and ready: a handle without WRITE, a revoked one.
    let probe = ShortMessage::from_bytes(b"probe").ok_or("too long")?;
    let read_only = ok("duplicate", sys::handle_duplicate(client, rights::READ))?;
    expect("register call without WRITE", sys::channel_call_short(read_only, &probe).map(|m| m.len as u64), Error::AccessDenied)?;
    let child = ok("duplicate", sys::handle_duplicate(client, rights::READ | rights::WRITE))?;
    ok("revoke", sys::handle_revoke(client))?;
    expect("register call on a revoked handle", sys::channel_call_short(child, &probe).map(|m| m.len as u64), Error::BadHandle)?;
    // Nothing was sent: the server answers the next call at once.
    let echo = ok("call after refusals", sys::channel_call_short(client, &probe))?;
    if echo != probe {
        return Err(format!("after refusals: sent {probe:?}, echo {echo:?}"));
    }
    for h in [read_only, child] {
        let _ = sys::handle_close(h);
    }
    // A buffer call to the register server: the echo lands in the buffer.
    let request = *b"buffered";
    let mut reply = [0u8; 16];
    let args = sys::call_args(&request, &mut reply);
    // SAFETY: args describes live buffers of the stated sizes.
    let sizes = ok("buffer call to a register server", unsafe { sys::channel_call(client, &args, sys::NO_DEADLINE) })?;
    if sizes.bytes != 8 || reply[..8] != request {
        return Err(format!("buffer call echo: {sizes:?} {reply:?}"));
    }
    ok("close", sys::handle_close(client))?;
    let _ = sys::process_kill(server.process);

    // A register call to the buffer server (it answers the first 8 bytes).
    let (client, server_end) = ok("channel_create", sys::channel_create(self_process()))?;
    let server = ok("spawn echo", spawn_raw(b"utest-echo", echo_server_code(), Some(server_end)))?;
    let message = ShortMessage::from_bytes(b"0123456789abcdef").ok_or("too long")?;
    let echo = ok("register call to a buffer server", sys::channel_call_short(client, &message))?;
    if echo != ShortMessage::from_bytes(b"01234567").ok_or("too long")? {
        return Err(format!("buffer server echo: {echo:?}"));
    }
    ok("close", sys::handle_close(client))?;
    let _ = sys::process_kill(server.process);

    // The general path: messages already queued.
    let (a, b) = ok("channel_create", sys::channel_create(self_process()))?;
    ok("write 5", sys::channel_write(b, b"hello", &[]))?;
    let got = ok("receive only", sys::channel_reply_receive_short(a, None))?;
    if got != ShortMessage::from_bytes(b"hello").ok_or("too long")? {
        return Err(format!("queued short receive: {got:?}"));
    }
    ok("write 40", sys::channel_write(b, &[9u8; 40], &[]))?;
    expect(
        "a 40-byte message in registers",
        sys::channel_reply_receive_short(a, None).map(|m| m.len as u64),
        Error::BufferTooSmall,
    )?;
    let mut bytes = [0u8; 64];
    let mut handles = [Handle::INVALID; 1];
    let mut sizes = ReadSizes::default();
    ok("the long message stayed queued", sys::channel_read(a, &mut bytes, &mut handles, &mut sizes))?;
    if sizes.bytes != 40 {
        return Err(format!("long message: {sizes:?}"));
    }
    ok("close", sys::handle_close(b))?;
    expect("peer closed", sys::channel_call_short(a, &ShortMessage::default()).map(|m| m.len as u64), Error::PeerClosed)?;
    ok("close", sys::handle_close(a))?;
    Ok(())
}

fn memory_objects_commit_lazily() -> TestResult {
    let vmo = ok("vmo_create", sys::vmo_create(self_process(), 1 << 20))?;
    let addr = ok("map", sys::vmar_map(mantra_rt::process::space(), vmo, 0, 1 << 20, map::READ | map::WRITE, 0))?;
    // SAFETY: the kernel just mapped 1 MiB read-write at addr.
    unsafe {
        let p = addr as *mut u64;
        p.add(1000).write_volatile(0xDEAD_BEEF);
        if p.add(1000).read_volatile() != 0xDEAD_BEEF || p.add(70_000).read_volatile() != 0 {
            return Err("mapped memory does not hold data".to_string());
        }
    }
    let mut word = [0u8; 8];
    ok("vmo_read", sys::vmo_read(vmo, 8000, &mut word))?;
    if u64::from_le_bytes(word) != 0xDEAD_BEEF {
        return Err("vmo_read does not see the mapping's write".to_string());
    }
    expect(
        "W+X mapping",
        raw(nr::VMAR_MAP, [u64::from(mantra_rt::process::space().0), u64::from(vmo.0), 0, 4096, u64::from(map::READ | map::WRITE | map::EXECUTE), 0]),
        Error::InvalidArgs,
    )?;
    expect(
        "map into the kernel half",
        raw(nr::VMAR_MAP, [u64::from(mantra_rt::process::space().0), u64::from(vmo.0), 0, 4096, u64::from(map::READ | map::FIXED), KERNEL_ADDRESS]),
        Error::InvalidArgs,
    )?;
    ok("unmap", sys::vmar_unmap(mantra_rt::process::space(), addr, 1 << 20))?;
    ok("close", sys::handle_close(vmo))?;
    Ok(())
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Random syscalls with random arguments. Handles come from a pool of real
/// objects plus garbage; pointers are kernel, unmapped, non-canonical,
/// overflowing, null or a scratch buffer (never this process's own data).
/// Calls that end or block the caller (exits, receive, call) are left out,
/// and the process holds no `space` handle meanwhile, so nothing it issues
/// can unmap its own memory.
fn fuzz(count: u64, seed: u64) -> Result<u64, String> {
    let mut rng = Rng(seed | 1);
    let mut pool: Vec<u64> = Vec::new();
    for _ in 0..4 {
        let (a, b) = ok("channel", sys::channel_create(self_process()))?;
        pool.extend([u64::from(a.0), u64::from(b.0)]);
        pool.push(u64::from(ok("port", sys::port_create(self_process()))?.0));
        pool.push(u64::from(ok("timer", sys::timer_create(self_process()))?.0));
        pool.push(u64::from(ok("vmo", sys::vmo_create(self_process(), 65536))?.0));
        pool.push(u64::from(ok("interrupt", sys::interrupt_create_virtual(self_process()))?.0));
    }
    // The console too (its writes need whole printable lines, so random
    // bytes are refused; its reads find nothing buffered).
    let console = CONSOLE.load(Ordering::Relaxed);
    if console != 0 {
        pool.push(u64::from(console));
    }
    // Firmware variables: a read-only handle, so random calls reach the
    // firmware's GetVariable but never write its flash.
    if let Ok(fw) = fwvar_resource() {
        pool.push(u64::from(ok("fwvar read-only", sys::handle_duplicate(fw, rights::READ))?.0));
    }
    let mut scratch = alloc::vec![0u8; 256 * 1024];
    let scratch_ptr = scratch.as_mut_ptr() as u64;
    // Give up the address space: random VMAR_* calls must not be able to
    // unmap this process's own memory (the heap cannot grow from here on).
    ok("close space", sys::handle_close(mantra_rt::process::space()))?;
    let skipped = [
        nr::PROCESS_EXIT,
        nr::THREAD_EXIT,
        nr::CHANNEL_RECEIVE,
        nr::CHANNEL_CALL,
        nr::CHANNEL_REPLY_RECEIVE,
        nr::CHANNEL_CALL_SHORT,
        nr::CHANNEL_REPLY_RECEIVE_SHORT,
        nr::PROCESS_KILL,
        nr::THREAD_START,
    ];
    let mut errors = [0u64; 16];
    let mut done = 0u64;
    while done < count {
        let number = rng.next() % (nr::COUNT + 4);
        if skipped.contains(&number) {
            continue;
        }
        let mut args = [0u64; 6];
        for arg in &mut args {
            *arg = match rng.next() % 8 {
                0 | 1 => rng.pick(&pool),
                2 => rng.pick(&[0, 1, 2, 3, 4, 16, 64, 4096, 65536, 65537, u64::from(u32::MAX), u64::MAX]),
                3 => rng.pick(&[KERNEL_ADDRESS, UNMAPPED, NON_CANONICAL, u64::MAX - 7, 0, 0xFFFF_FFFF_8000_0000]),
                4 | 5 => scratch_ptr + (rng.next() % 4096),
                6 => rng.next() & 0xFFFF_FFFF,
                _ => rng.next(),
            };
        }
        // Deadlines: never block for long.
        if number == nr::PORT_WAIT {
            args[1] = 0;
        }
        // Pointers with lengths: keep scratch-based ranges inside scratch.
        if number == nr::VMO_READ || number == nr::LOG_READ || number == nr::CHANNEL_READ {
            if args[2] > 128 * 1024 && args[1] >= scratch_ptr && args[1] < scratch_ptr + 4096 {
                args[2] %= 128 * 1024;
            }
        }
        if number == nr::CHANNEL_READ && args[5] >= scratch_ptr && args[5] < scratch_ptr + 4096 {
            args[3] = scratch_ptr + 200 * 1024;
            args[4] %= 64;
        }
        if number == nr::PORT_WAIT && args[2] >= scratch_ptr && args[2] < scratch_ptr + 4096 {
            args[3] %= 64;
        }
        if number == nr::FIRMWARE_VARIABLE_GET && args[3] >= scratch_ptr && args[3] < scratch_ptr + 4096 {
            args[4] %= 128 * 1024;
        }
        let result = raw(number, args);
        if let Err(e) = result {
            errors[(e.code() as usize).min(15)] += 1;
        }
        done += 1;
        if done % 10_000 == 0 {
            info!("fuzz: {done} syscalls");
        }
    }
    drop(scratch);
    let refused: u64 = errors.iter().sum();
    info!("fuzz: {done} random syscalls, {refused} refused with an error, {} succeeded", done - refused);
    Ok(done)
}

// The zero-capability child: position-independent code copied into a fresh
// process that holds no handle at all. It issues every syscall number
// (except the two exits) with plausible arguments — handle value (1,1),
// pointers into its own stack — and exits 0 when each was refused with the
// expected error (BAD_HANDLE; BAD_SYSCALL past the table and for the
// reserved numbers, nr::RESERVED; success only for
// THREAD_YIELD and CLOCK_GET, which need no capability), else
// 200 + the first syscall number that was answered otherwise.
core::arch::global_asm!(
    ".global utest_zerocap_start",
    ".global utest_zerocap_end",
    "utest_zerocap_start:",
    "xor r12d, r12d",
    "2:",
    "cmp r12, {last}",
    "jae 8f",
    "cmp r12, {exit}",
    "je 7f",
    "cmp r12, {thread_exit}",
    "je 7f",
    "mov rax, r12",
    "mov rdi, {handle}",
    "lea rsi, [rsp - 512]",
    "mov edx, 8",
    "lea r10, [rsp - 256]",
    "mov r8d, 1",
    "lea r9, [rsp - 128]",
    "syscall",
    "cmp r12, {yield_}",
    "je 5f",
    "cmp r12, {clock}",
    "je 5f",
    "cmp r12, {count}",
    "jae 4f",
    "cmp r12, {reserved_first}",
    "jb 3f",
    "cmp r12, {reserved_last}",
    "jbe 4f",
    "3:",
    "cmp rax, -{bad_handle}",
    "jne 9f",
    "jmp 7f",
    "4:",
    "cmp rax, -{bad_syscall}",
    "jne 9f",
    "jmp 7f",
    "5:",
    "test rax, rax",
    "js 9f",
    "7:",
    "inc r12",
    "jmp 2b",
    "8:",
    "xor edi, edi",
    "jmp 10f",
    "9:",
    "lea rdi, [r12 + 200]",
    "10:",
    "mov eax, {exit}",
    "syscall",
    "ud2",
    "utest_zerocap_end:",
    last = const nr::COUNT + 2,
    count = const nr::COUNT,
    // Reserved numbers (nr::RESERVED, a contiguous range; none: an empty
    // range) answer BAD_SYSCALL like numbers past the table.
    reserved_first = const RESERVED_FIRST,
    reserved_last = const RESERVED_LAST,
    exit = const nr::PROCESS_EXIT,
    thread_exit = const nr::THREAD_EXIT,
    yield_ = const nr::THREAD_YIELD,
    clock = const nr::CLOCK_GET,
    handle = const 0x0001_0001u64,
    bad_handle = const Error::BadHandle as i64,
    bad_syscall = const Error::BadSyscall as i64,
);

/// First and last number of nr::RESERVED (first > last when it is empty).
const RESERVED_FIRST: u64 = if nr::RESERVED.is_empty() { 1 } else { nr::RESERVED[0] };
const RESERVED_LAST: u64 = if nr::RESERVED.is_empty() { 0 } else { nr::RESERVED[nr::RESERVED.len() - 1] };
const _: () = assert!(nr::RESERVED.is_empty() || RESERVED_LAST - RESERVED_FIRST + 1 == nr::RESERVED.len() as u64);

extern "C" {
    static utest_zerocap_start: u8;
    static utest_zerocap_end: u8;
}

/// Starts a process with zero capabilities that tries every syscall, and
/// checks its exit code.
fn zero_capability_process() -> TestResult {
    // SAFETY: both symbols are labels in this program's text; the bytes
    // between them are the child's code.
    let code = unsafe {
        mantra_rt::process::code_between(core::ptr::addr_of!(utest_zerocap_start), core::ptr::addr_of!(utest_zerocap_end))
    };
    let port = ok("port", sys::port_create(self_process()))?;
    let child = ok("spawn", mantra_rt::process::spawn_raw(b"zerocap", code, None))?;
    ok("watch", sys::object_wait_async(child.process, port, 1, signals::TERMINATED))?;
    let mut packets = [PortPacket::default(); 1];
    ok("wait for the child", sys::port_wait(port, sys::clock_get() + 10_000_000_000, &mut packets))?;
    let code = ok("exit code", sys::process_exit_code(child.process))?;
    for h in [child.process, child.space, child.code, child.stack, port, child.thread] {
        ok("close", sys::handle_close(h))?;
    }
    match code {
        0 => Ok(()),
        c if c >= 200 => Err(format!("syscall {} was not refused as expected", c - 200)),
        c => Err(format!("the child ended with {}", mantra_rt::exit::ExitStatus::from_code(c))),
    }
}

// A server whose receive buffer is not mapped: CHANNEL_RECEIVE must fail
// with BAD_POINTER and leave the message queued, which a second read with a
// good buffer then gets; exits 100 + its length (1: anything else).
core::arch::global_asm!(
    ".global utest_badbuf_start",
    ".global utest_badbuf_end",
    "utest_badbuf_start:",
    "mov r12, rdi",
    "mov eax, {receive}",
    "mov rdi, r12",
    "mov rsi, {unmapped}",
    "mov edx, 64",
    "xor r10d, r10d",
    "xor r8d, r8d",
    "lea r9, [rsp - 128]",
    "syscall",
    "cmp rax, -{bad_pointer}",
    "jne 8f",
    "mov eax, {read}",
    "mov rdi, r12",
    "lea rsi, [rsp - 64]",
    "mov edx, 64",
    "xor r10d, r10d",
    "xor r8d, r8d",
    "lea r9, [rsp - 128]",
    "syscall",
    "test rax, rax",
    "jnz 8f",
    "mov edi, dword ptr [rsp - 128]",
    "add edi, 100",
    "jmp 9f",
    "8:",
    "mov edi, 1",
    "9:",
    "mov eax, {exit}",
    "syscall",
    "ud2",
    "utest_badbuf_end:",
    receive = const nr::CHANNEL_RECEIVE,
    read = const nr::CHANNEL_READ,
    exit = const nr::PROCESS_EXIT,
    unmapped = const 0x0700_0000u64,
    bad_pointer = const Error::BadPointer as i64,
);

extern "C" {
    static utest_badbuf_start: u8;
    static utest_badbuf_end: u8;
}

/// A call handed to a receiver whose buffer is bad (the fast path: the
/// server is parked on this CPU) loses nothing: the receiver gets
/// BAD_POINTER and the message stays queued for its next read.
fn bad_receive_buffer_loses_nothing() -> TestResult {
    // SAFETY: both symbols are labels in this program's text.
    let code = unsafe {
        mantra_rt::process::code_between(core::ptr::addr_of!(utest_badbuf_start), core::ptr::addr_of!(utest_badbuf_end))
    };
    let (client, server_end) = ok("channel_create", sys::channel_create(self_process()))?;
    let child = ok("spawn", mantra_rt::process::spawn_raw(b"badbuf", code, Some(server_end)))?;
    // Let it park in its receive first.
    ok("sleep", mantra_rt::time::sleep_ms(20))?;
    let message = sys::ShortMessage::from_bytes(b"not lost").ok_or("too long")?;
    expect(
        "the call: the server reads the message and exits without answering",
        sys::channel_call_short(client, &message).map(|m| m.len as u64),
        Error::PeerClosed,
    )?;
    let port = ok("port", sys::port_create(self_process()))?;
    ok("watch", sys::object_wait_async(child.process, port, 1, signals::TERMINATED))?;
    let mut packets = [PortPacket::default(); 1];
    ok("wait for the child", sys::port_wait(port, sys::clock_get() + 10_000_000_000, &mut packets))?;
    let code = ok("exit code", sys::process_exit_code(child.process))?;
    for h in [child.process, child.space, child.code, child.stack, port, child.thread, client] {
        ok("close", sys::handle_close(h))?;
    }
    match code {
        108 => Ok(()),
        1 => Err("the bad receive was not refused with BAD_POINTER, or the message was gone".to_string()),
        c => Err(format!("the server ended with {c}")),
    }
}

/// Echo servers in four processes, each pinned to its own CPU when there
/// are that many (`--smp 4`), answer interleaved calls from this thread:
/// every reply must be the request it answers — nothing lost, duplicated or
/// crossed — and nothing may be left over afterwards.
fn smp_message_exchange() -> TestResult {
    const SERVERS: usize = 4;
    const ROUNDS: u32 = 100;
    let mut clients = Vec::new();
    let mut children = Vec::new();
    let mut cpus_used = 0;
    for i in 0..SERVERS {
        let (client, server_end) = ok("channel_create", sys::channel_create(self_process()))?;
        let child = ok("spawn echo", mantra_rt::process::spawn_raw(b"echo", mantra_rt::process::echo_server_code(), Some(server_end)))?;
        // Pin to CPU i; a CPU that is not online refuses (InvalidArgs).
        if sys::thread_set_priority(child.thread, mantra_abi::Priority::Normal, Some(i as u64)).is_ok() {
            cpus_used += 1;
        }
        clients.push(client);
        children.push(child);
    }
    let mut reply = [0u8; 8];
    for round in 0..ROUNDS {
        for (i, &client) in clients.iter().enumerate() {
            let request = (u64::from(round) << 8 | i as u64).to_le_bytes();
            let args = CallArgs {
                write_bytes: request.as_ptr() as u64,
                write_len: 8,
                read_bytes: reply.as_mut_ptr() as u64,
                read_capacity: 8,
                ..CallArgs::default()
            };
            // SAFETY: args describes the two live 8-byte buffers above.
            let sizes = unsafe { sys::channel_call(client, &args, sys::clock_get() + 5_000_000_000) }
                .map_err(|e| format!("call {round} to server {i}: {}", e.name()))?;
            if sizes.bytes != 8 || reply != request {
                return Err(format!("server {i} answered {:?} to {:?} in round {round}", &reply, &request));
            }
        }
    }
    let mut bytes = [0u8; 8];
    let mut handles = [Handle::INVALID; 1];
    let mut sizes = ReadSizes::default();
    for (i, &client) in clients.iter().enumerate() {
        expect(&format!("leftover reply from server {i}"), sys::channel_read(client, &mut bytes, &mut handles, &mut sizes).map(|()| 0), Error::ShouldWait)?;
    }
    for child in &children {
        let _ = sys::process_kill(child.process);
        for h in [child.process, child.space, child.thread, child.code, child.stack] {
            let _ = sys::handle_close(h);
        }
    }
    for client in clients {
        let _ = sys::handle_close(client);
    }
    info!("utest:   {} calls to {SERVERS} servers pinned to {cpus_used} CPU(s)", ROUNDS as usize * SERVERS);
    Ok(())
}

// A client of the short-message echo server: CHANNEL_CALL_SHORT with an
// 8-byte message, again and again, until a call fails; exits 0 when that
// was PEER_CLOSED, 1 on any other error.
core::arch::global_asm!(
    ".global utest_short_client_start",
    ".global utest_short_client_end",
    "utest_short_client_start:",
    "mov r12, rdi",
    "2:",
    "mov eax, {call_short}",
    "mov rdi, r12",
    "mov esi, 8",
    "mov rdx, r12",
    "syscall",
    "test rax, rax",
    "jns 2b",
    "xor edi, edi",
    "cmp rax, -{peer_closed}",
    "setne dil",
    "mov eax, {exit}",
    "syscall",
    "ud2",
    "utest_short_client_end:",
    call_short = const nr::CHANNEL_CALL_SHORT,
    exit = const nr::PROCESS_EXIT,
    peer_closed = const Error::PeerClosed as i64,
);

extern "C" {
    static utest_short_client_start: u8;
    static utest_short_client_end: u8;
}

/// Processes killed (from this CPU) while they exchange register calls
/// through the fast path (on CPU 1 when it is online): the kill stops only
/// its victim, in any state (running, in the fast path, parked as a
/// receiver), and the survivor sees PEER_CLOSED and ends by itself.
fn kill_during_register_calls() -> TestResult {
    use mantra_rt::process::{short_echo_server_code, spawn_raw, RawChild};
    const ROUNDS: u64 = 24;
    // SAFETY: both symbols are labels in this program's text.
    let client_code = unsafe {
        mantra_rt::process::code_between(
            core::ptr::addr_of!(utest_short_client_start),
            core::ptr::addr_of!(utest_short_client_end),
        )
    };
    let port = ok("port", sys::port_create(self_process()))?;
    let mut on_cpu_1 = 0;
    for round in 0..ROUNDS {
        let (client_end, server_end) = ok("channel_create", sys::channel_create(self_process()))?;
        let server = ok("spawn server", spawn_raw(b"utest-kill-server", short_echo_server_code(), Some(server_end)))?;
        let client = ok("spawn client", spawn_raw(b"utest-kill-client", client_code, Some(client_end)))?;
        let pinned = [server.thread, client.thread]
            .iter()
            .all(|&t| sys::thread_set_priority(t, mantra_abi::Priority::Normal, Some(1)).is_ok());
        on_cpu_1 += u64::from(pinned);
        // Let them exchange a while (a different moment each round), then
        // kill one of them.
        let mut none = [PortPacket::default(); 1];
        let slept = sys::port_wait(port, sys::clock_get() + (round % 8 + 1) * 150_000, &mut none);
        if slept != Err(Error::TimedOut) {
            return Err(format!("round {round}: sleeping on an empty port: {slept:?}"));
        }
        let (victim, survivor, survivor_name): (&RawChild, &RawChild, &str) =
            if round % 2 == 0 { (&server, &client, "client") } else { (&client, &server, "server") };
        ok("kill", sys::process_kill(victim.process))?;
        for (child, key) in [(victim, 1), (survivor, 2)] {
            ok("watch", sys::object_wait_async(child.process, port, key, signals::TERMINATED))?;
        }
        let mut ended = [PortPacket::default(); 2];
        let mut got = 0;
        while got < 2 {
            let n = sys::port_wait(port, sys::clock_get() + 10_000_000_000, &mut ended[got..])
                .map_err(|e| format!("round {round}: waiting for both to end: {}", e.name()))?;
            got += n;
        }
        let code = ok("exit code", sys::process_exit_code(survivor.process))?;
        if code != 0 {
            return Err(format!("round {round}: the {survivor_name} ended with {} instead of seeing PEER_CLOSED",
                               mantra_rt::exit::ExitStatus::from_code(code)));
        }
        for child in [&server, &client] {
            for h in [child.process, child.space, child.thread, child.code, child.stack] {
                ok("close", sys::handle_close(h))?;
            }
        }
    }
    ok("close", sys::handle_close(port))?;
    info!("utest:   {ROUNDS} kills during register calls ({on_cpu_1} rounds on CPU 1)");
    Ok(())
}

fn main(mut startup: Startup) -> i64 {
    if let Some(resource) = startup.take("irq") {
        IRQ_RESOURCE.store(resource.into_raw().0, Ordering::Relaxed);
    }
    if let Some(console) = startup.take("console") {
        CONSOLE.store(console.into_raw().0, Ordering::Relaxed);
    }
    if let Some(resource) = startup.take("fwvar") {
        FWVAR_RESOURCE.store(resource.into_raw().0, Ordering::Relaxed);
    }
    let count: u64 = startup.arg_value("fuzz").and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let seed: u64 = startup.arg_value("seed").and_then(|v| v.parse().ok()).unwrap_or(0x5EED);
    let tests: &[(&str, fn() -> TestResult)] = &[
        ("stale_handle_refused", stale_handle_refused),
        ("forged_handles_refused", forged_handles_refused),
        ("wrong_type_and_rights_refused", wrong_type_and_rights_refused),
        ("revoked_handles_refused", revoked_handles_refused),
        ("bad_pointers_refused", bad_pointers_refused),
        ("handle_transfer_moves", handle_transfer_moves),
        ("ports_and_timers_deliver", ports_and_timers_deliver),
        ("memory_objects_commit_lazily", memory_objects_commit_lazily),
        ("call_without_reply_times_out", call_without_reply_times_out),
        ("short_messages_in_registers", short_messages_in_registers),
        ("bad_receive_buffer_loses_nothing", bad_receive_buffer_loses_nothing),
        ("virtual_interrupt_delivers_one_packet_per_firing", virtual_interrupt_delivers_one_packet_per_firing),
        ("interrupt_ack_waits_for_room_on_the_port", interrupt_ack_waits_for_room_on_the_port),
        ("physical_interrupts_need_the_irq_resource", physical_interrupts_need_the_irq_resource),
        ("console_object_checks", console_object_checks),
        ("firmware_variables_refuse_bad_arguments", firmware_variables_refuse_bad_arguments),
        ("firmware_variable_persists", firmware_variable_persists),
        ("zero_capability_process", zero_capability_process),
        ("smp_message_exchange", smp_message_exchange),
        ("kill_during_register_calls", kill_during_register_calls),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        match test() {
            Ok(()) => info!("utest: {name} ... ok"),
            Err(why) => {
                failed += 1;
                info!("utest: {name} ... FAILED: {why}");
            }
        }
    }
    match fuzz(count, seed) {
        Ok(done) => info!("utest: syscall_fuzz ({done} calls, kernel alive) ... ok"),
        Err(why) => {
            failed += 1;
            info!("utest: syscall_fuzz ... FAILED: {why}");
        }
    }
    info!("utest: {} passed, {} failed", tests.len() + 1 - failed, failed);
    i64::from(failed != 0)
}
