//! MantraLogd: the log server.
//!
//! Start-up handles (contract/USERLAND.md): `log` is the kernel log (its
//! console, LOG_WRITE), `logctl` the control channel from MantraInit, and,
//! when granted, `klog` the kernel log with READ.
//!
//! MantraInit creates a channel per service, gives the service the client
//! end as its `log`, and sends the server end here over `logctl`
//! (`attach <service>` plus the handle). MantraLogd waits on one port for
//! every channel: each record (one message: level, pid, text) goes into a
//! ring buffer of the last N records and to the console as
//! `[<service>] <level>: <text>`. Kernel records, drained with LOG_READ, go
//! into the same ring as `kernel`; they are echoed to the console only with
//! the `echo-kernel` argument, because the kernel prints its own messages
//! already.
//!
//! Arguments: `ring=N` (records kept, default 256), `echo-kernel`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use mantra_abi::{signals, Error, Handle, PortPacket};
use mantra_logd::{console_lines, is_echo, kernel_record, Entry, Ring, KERNEL_SOURCE};
use mantra_rt::log::{control, decode_record, Level, MAX_RECORD};
use mantra_rt::{Channel, Log, Port, Startup, Timer};

mantra_rt::main!(main);

const DEFAULT_RING: usize = 256;
/// Records taken from one channel per wake-up, so no service starves the others.
const BATCH: usize = 32;
/// How often the kernel log is polled when it cannot be waited on.
const KLOG_POLL_MS: u64 = 200;

const KEY_CONTROL: u64 = 1;
const KEY_KLOG: u64 = 2;
const KEY_POLL: u64 = 3;
/// Source keys: `KEY_SOURCE | generation << 16 | slot`.
const KEY_SOURCE: u64 = 1 << 40;

struct Source {
    name: String,
    channel: Channel,
    generation: u64,
}

struct Logd {
    console: Option<Handle>,
    port: Port,
    control: Option<Channel>,
    klog: Option<Log>,
    poll: Option<Timer>,
    sources: Vec<Option<Source>>,
    generation: u64,
    ring: Ring,
    echo_kernel: bool,
}

fn main(mut startup: Startup) -> Result<(), Error> {
    let me = mantra_rt::process::current();
    let ring_size = startup.arg_value("ring").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_RING);
    let mut logd = Logd {
        // The runtime's logger owns `log` (for panics); the console is the same handle.
        console: mantra_rt::log::kernel_log(),
        port: Port::create(&me)?,
        control: startup.take_as::<Channel>("logctl"),
        klog: startup.take_as::<Log>("klog"),
        poll: None,
        sources: Vec::new(),
        generation: 0,
        ring: Ring::new(ring_size),
        echo_kernel: startup.flag("echo-kernel"),
    };
    if logd.control.is_none() {
        logd.say(Level::Warn, "no 'logctl' handle: no service logs will arrive");
    }
    if let Some(control) = &logd.control {
        control.wait_async(&logd.port, KEY_CONTROL, signals::READABLE | signals::PEER_CLOSED)?;
    }
    if let Some(klog) = &logd.klog {
        if klog.wait_async(&logd.port, KEY_KLOG, signals::READABLE).is_err() {
            // The kernel log cannot be waited on: poll it.
            let timer = Timer::create(&me)?;
            timer.set(mantra_rt::time::after_ms(KLOG_POLL_MS))?;
            timer.wait_async(&logd.port, KEY_POLL, signals::TIMER_FIRED)?;
            logd.poll = Some(timer);
        }
    }
    let text = alloc::format!(
        "MantraLogd {}: serving logs (ring of {} records{})",
        env!("CARGO_PKG_VERSION"),
        logd.ring.capacity(),
        if logd.klog.is_some() { ", kernel log drained" } else { "" }
    );
    logd.say(Level::Info, &text);
    logd.drain_kernel();
    logd.run()
}

impl Logd {
    /// MantraLogd's own messages go through the same path as everyone's.
    fn say(&mut self, level: Level, text: &str) {
        let pid = mantra_rt::process::koid() as u32;
        self.record("logd", level, pid, text, true);
    }

    fn record(&mut self, source: &str, level: Level, pid: u32, text: &str, print: bool) {
        if print {
            if let Some(console) = self.console {
                for line in console_lines(source, level, text) {
                    let _ = mantra_rt::sys::log_write(console, level as u8, line.as_bytes());
                }
            }
        }
        let time = mantra_rt::time::now();
        self.ring.push(Entry { time, source: source.to_string(), level, pid, text: text.to_string() });
    }

    fn run(&mut self) -> ! {
        let mut packets = [PortPacket::default(); 32];
        loop {
            let count = match self.port.wait(mantra_rt::sys::NO_DEADLINE, &mut packets) {
                Ok(received) => received.len(),
                Err(e) => {
                    self.say(Level::Error, &alloc::format!("port wait failed: {}", e.name()));
                    let _ = mantra_rt::time::sleep_ms(100);
                    0
                }
            };
            for packet in packets[..count].iter().copied() {
                match packet.key {
                    KEY_CONTROL => self.control_ready(packet.observed),
                    KEY_KLOG => {
                        self.drain_kernel();
                        if let Some(klog) = &self.klog {
                            let _ = klog.wait_async(&self.port, KEY_KLOG, signals::READABLE);
                        }
                    }
                    KEY_POLL => {
                        self.drain_kernel();
                        if let Some(timer) = &self.poll {
                            let _ = timer.set(mantra_rt::time::after_ms(KLOG_POLL_MS));
                            let _ = timer.wait_async(&self.port, KEY_POLL, signals::TIMER_FIRED);
                        }
                    }
                    key if key & KEY_SOURCE != 0 => self.source_ready(key),
                    _ => {}
                }
            }
        }
    }

    /// MantraInit sent `attach <service>` messages (or went away).
    fn control_ready(&mut self, observed: u32) {
        let Some(control) = &self.control else { return };
        let mut attached = Vec::new();
        let mut closed = false;
        loop {
            match control.read() {
                Ok(mut message) => {
                    let name = control::parse_attach(&message.bytes).map(ToString::to_string);
                    match (name, message.take_handle()) {
                        (Some(name), Some(handle)) => attached.push(Some((name, Channel::from_handle(handle)))),
                        _ => attached.push(None),
                    }
                }
                Err(Error::ShouldWait) => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if !closed && observed & signals::PEER_CLOSED == 0 {
            let _ = control.wait_async(&self.port, KEY_CONTROL, signals::READABLE | signals::PEER_CLOSED);
        } else if closed {
            self.control = None;
            self.say(Level::Warn, "control channel closed: no new log channels will arrive");
        }
        for entry in attached {
            match entry {
                Some((name, channel)) => self.attach(name, channel),
                None => self.say(Level::Warn, "ignored a malformed control message"),
            }
        }
    }

    fn attach(&mut self, name: String, channel: Channel) {
        self.generation += 1;
        let generation = self.generation & 0xff_ffff;
        let slot = match self.sources.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.sources.push(None);
                self.sources.len() - 1
            }
        };
        let key = KEY_SOURCE | (generation << 16) | slot as u64;
        if let Err(e) = channel.wait_async(&self.port, key, signals::READABLE | signals::PEER_CLOSED) {
            self.say(Level::Warn, &alloc::format!("cannot wait on the log channel of {name}: {}", e.name()));
            return;
        }
        self.sources[slot] = Some(Source { name, channel, generation });
    }

    fn source_ready(&mut self, key: u64) {
        let slot = (key & 0xffff) as usize;
        let generation = (key >> 16) & 0xff_ffff;
        let Some(Some(source)) = self.sources.get(slot) else { return };
        if source.generation != generation {
            return; // a packet for an earlier user of the slot
        }
        let name = source.name.clone();
        let mut records: Vec<(Level, u32, String)> = Vec::new();
        let mut closed = false;
        for _ in 0..BATCH {
            match source.channel.read() {
                Ok(message) => match decode_record(&message.bytes) {
                    Ok(r) => records.push((r.level, r.pid, r.text.to_string())),
                    Err(e) => records.push((Level::Warn, 0, alloc::format!("(malformed log record: {e:?})"))),
                },
                Err(Error::ShouldWait) => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.sources[slot] = None;
        } else if let Some(Some(source)) = self.sources.get(slot) {
            let _ = source.channel.wait_async(&self.port, key, signals::READABLE | signals::PEER_CLOSED);
        }
        for (level, pid, text) in records {
            self.record(&name, level, pid, &text, true);
        }
    }

    /// Takes every pending kernel record.
    fn drain_kernel(&mut self) {
        let mut buffer = [0u8; MAX_RECORD];
        loop {
            let Some(klog) = &self.klog else { return };
            let len = match klog.read(&mut buffer) {
                Ok(len) => len.min(buffer.len()),
                Err(_) => return,
            };
            let (level, text) = kernel_record(&buffer[..len]);
            let names: Vec<String> = self.sources.iter().flatten().map(|s| s.name.clone()).collect();
            if is_echo(&text, names.iter().map(String::as_str).chain(["logd", "init"])) {
                continue;
            }
            self.record(KERNEL_SOURCE, level, 0, &text, self.echo_kernel);
        }
    }
}
