//! MantraInit: the first user process. The kernel starts it with `self`,
//! `space`, `bootfs`, `log`, `klog`, `irq`, `console`, `fwvar` and, with a
//! TPM, `eventlog` and `tpm` (contract/USERLAND.md). It reads
//! `init.manifest` from the boot filesystem, starts the services in
//! dependency order (the log server first), giving each exactly the
//! capabilities its manifest line grants, and supervises them: a port
//! collects TERMINATED of every service process and the restart timer's
//! TIMER_FIRED; a crashed service is restarted after an exponential backoff
//! until it crashes too often (crash loop), and the others keep running.
//!
//! Boot confirmation (docs/boot-state.md): once every service that counts
//! is healthy (supervisor::Health), init confirms the boot through `fwvar`:
//! a pending A/B slot becomes active in `MantraSlots`. A failed service
//! means no confirmation, so MantraBoot falls back after the slot's tries.
//!
//! Logging: until MantraLogd runs, init writes to the kernel log (`log`);
//! afterwards through its own log channel to MantraLogd, and back to the
//! kernel log whenever MantraLogd is down.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use mantra_abi::{map, rights, signals, Error, Handle, PortPacket};
use mantra_bootinfo::bootfs::{BootFs, HEADER_SIZE};
use mantra_init::loader::{self, STACK_SIZE, STACK_TOP};
use mantra_init::manifest::{self, Manifest, ServiceSpec};
use mantra_init::order;
use mantra_init::confirm::{self, BootCurrent};
use mantra_init::supervisor::{self, Health, Outcome, State, Supervisor};
use mantra_rt::exit::ExitStatus;
use mantra_rt::log::control;
use mantra_rt::startup::StartupBuilder;
use mantra_rt::sys::NO_DEADLINE;
use mantra_rt::{error, info, warn};
use mantra_rt::{AddressSpace, AsHandle, Channel, OwnedHandle, Port, Process, Startup, Thread, Timer, Vmo};

mantra_rt::main!(main);

/// The boot filesystem file init reads its services from.
const MANIFEST_FILE: &str = "init.manifest";

/// Port keys: the restart timer, and one per service (`KEY_SERVICE | index`).
const KEY_TIMER: u64 = 1;
/// The boot confirmation's timer (a settle time ends).
const KEY_CONFIRM: u64 = 2;
const KEY_SERVICE: u64 = 1 << 32;

/// A running service instance: everything init holds for it. Dropping it
/// closes the handles (the process itself is already gone then).
struct Running {
    process: Process,
    _space: AddressSpace,
    _thread: Thread,
    _bootstrap: Channel,
    /// The memory objects mapped into it (kept, in case a mapping does not
    /// keep its memory object alive).
    _vmos: Vec<Vmo>,
}

/// The log plumbing: init hands every service the client end of a fresh
/// channel as `log`, and the server end to the log server over its control
/// channel. Init keeps a duplicate of each server end (when the kernel
/// allows duplicating channel endpoints), so the channels survive a log
/// server restart and are handed to the new instance.
struct Logs {
    /// Client end of the running log server's control channel.
    control: Option<Channel>,
    /// Per service index (and `init` itself at `self_slot`): the retained
    /// server end of its log channel.
    retained: Vec<Option<Channel>>,
    self_slot: usize,
}

struct Init {
    me: Handle,
    port: Port,
    timer: Timer,
    /// What the timer is set to, and whether a wait for it is queued on the port.
    timer_deadline: Option<u64>,
    timer_armed: bool,
    bootfs: Vec<u8>,
    manifest: Manifest,
    supervisor: Supervisor,
    running: Vec<Option<Running>>,
    logs: Logs,
    /// The kernel log (owned by the runtime's logger; duplicated for the log server).
    kernel_log: Option<Handle>,
    klog: Option<OwnedHandle>,
    /// The interrupt resource (for services granted `irq`).
    irq: Option<OwnedHandle>,
    /// The console object, the TCG event log and the TPM's registers (for
    /// services granted `console`, `eventlog`, `tpm`); the last two exist
    /// only on a machine with a TPM.
    console: Option<OwnedHandle>,
    eventlog: Option<OwnedHandle>,
    tpm: Option<OwnedHandle>,
    /// The firmware-variable resource (boot confirmation; services granted `fwvar`).
    fwvar: Option<OwnedHandle>,
    /// The boot confirmation is still to be decided.
    confirm_pending: bool,
    /// When to look at the services' health again (settle times), on
    /// `confirm_timer`; whether a wait for it is queued on the port.
    confirm_at: Option<u64>,
    confirm_timer: Timer,
    confirm_armed: bool,
}

fn main(mut startup: Startup) -> Result<(), Error> {
    let me = mantra_rt::process::current();
    let Some(bootfs_vmo) = startup.take_as::<Vmo>("bootfs") else {
        error!("init: no 'bootfs' handle in the bootstrap message; cannot start anything");
        return Err(Error::BadHandle);
    };
    let bootfs = read_bootfs(&bootfs_vmo).inspect_err(|e| error!("init: cannot read the boot filesystem: {e:?}"))?;
    drop(bootfs_vmo);
    let manifest = match load_manifest(&bootfs) {
        Ok(m) => m,
        Err(message) => {
            error!("init: {message}");
            return Err(Error::InvalidArgs);
        }
    };
    let names: Vec<&str> = manifest.services.iter().map(|s| s.name.as_str()).collect();
    info!("init: MantraInit {}: {} services ({})", env!("CARGO_PKG_VERSION"), names.len(), names.join(", "));

    let port = Port::create(&me)?;
    let timer = Timer::create(&me)?;
    let confirm_timer = Timer::create(&me)?;
    let count = manifest.services.len();
    let mut init = Init {
        me,
        port,
        timer,
        timer_deadline: None,
        timer_armed: false,
        bootfs,
        supervisor: Supervisor::new(manifest.policy, &manifest.services),
        manifest,
        running: (0..count).map(|_| None).collect(),
        logs: Logs { control: None, retained: (0..=count).map(|_| None).collect(), self_slot: count },
        kernel_log: mantra_rt::log::kernel_log(),
        klog: startup.take("klog"),
        irq: startup.take("irq"),
        console: startup.take("console"),
        eventlog: startup.take("eventlog"),
        tpm: startup.take("tpm"),
        fwvar: startup.take("fwvar"),
        confirm_pending: true,
        confirm_at: None,
        confirm_timer,
        confirm_armed: false,
    };
    init.start_all();
    init.supervise()
}

/// Reads the whole boot filesystem out of its memory object.
fn read_bootfs(vmo: &Vmo) -> Result<Vec<u8>, Error> {
    let mut header = [0u8; HEADER_SIZE];
    vmo.read(0, &mut header)?;
    let total = u64::from_le_bytes(header[16..24].try_into().map_err(|_| Error::InvalidArgs)?);
    let total = usize::try_from(total).map_err(|_| Error::OutOfRange)?.max(HEADER_SIZE);
    let mut bytes = vec![0u8; total];
    vmo.read(0, &mut bytes)?;
    Ok(bytes)
}

fn load_manifest(bootfs: &[u8]) -> Result<Manifest, String> {
    let fs = BootFs::parse(bootfs).map_err(|e| format!("boot filesystem: {e}"))?;
    let file = fs.find(MANIFEST_FILE).ok_or_else(|| format!("no {MANIFEST_FILE} in the boot filesystem"))?;
    let text = core::str::from_utf8(file.data).map_err(|_| format!("{MANIFEST_FILE} is not UTF-8"))?;
    manifest::parse(text).map_err(|e| format!("{e}"))
}

/// A duplicate of `handle` with the rights of `wanted` it has.
fn dup_subset(handle: Handle, wanted: u32) -> Result<OwnedHandle, Error> {
    let have = mantra_rt::sys::handle_info(handle)?.rights;
    mantra_rt::sys::handle_duplicate(handle, have & wanted).map(OwnedHandle::from_raw)
}

/// Why the boot was not confirmed.
enum Skip {
    /// Nothing to confirm with (no runtime services, no A/B record).
    Skipped(String),
    /// Something is wrong: the slot stays pending.
    NotConfirmed(String),
}

/// Why a start failed: worth retrying (a syscall failed) or not (the
/// program is missing or malformed).
enum StartError {
    Retry(Error),
    Permanent(String),
}

impl From<Error> for StartError {
    fn from(e: Error) -> Self {
        StartError::Retry(e)
    }
}

impl Init {
    fn start_all(&mut self) {
        let order = match order::start_order(&self.manifest.services) {
            Ok(order) => order,
            Err(e) => {
                error!("init: {e}");
                return;
            }
        };
        for index in order {
            self.start(index);
        }
        let down: Vec<&str> = (0..self.manifest.services.len())
            .filter(|&i| self.running[i].is_none())
            .map(|i| self.manifest.services[i].name.as_str())
            .collect();
        if down.is_empty() {
            info!("init: all services up");
        } else {
            warn!("init: services up, except {}", down.join(", "));
        }
    }

    /// Starts service `index`, logging the outcome; a failure is handled
    /// like a crash (or marks the service failed when retrying is useless).
    fn start(&mut self, index: usize) {
        let spec = self.manifest.services[index].clone();
        match self.spawn(index, &spec) {
            Ok((running, koid)) => {
                info!("{}", supervisor::started_line(&spec.name, koid));
                self.running[index] = Some(running);
                self.supervisor.started(index, mantra_rt::time::now());
                if spec.is_log_server() {
                    self.log_server_started();
                }
            }
            Err(StartError::Permanent(why)) => {
                if spec.is_log_server() {
                    self.logs.control = None;
                }
                self.supervisor.give_up(index);
                self.logs.retained[index] = None;
                error!("init: {} failed: {why}; not restarting", spec.name);
            }
            Err(StartError::Retry(e)) => {
                if spec.is_log_server() {
                    self.logs.control = None;
                }
                self.logs.retained[index] = None;
                let outcome = self.supervisor.start_failed(index, mantra_rt::time::now());
                let policy = self.supervisor.policy();
                for line in supervisor::start_failed_lines(&spec.name, e.name(), outcome, policy, spec.restart) {
                    error!("{line}");
                }
                self.schedule();
            }
        }
    }

    /// Loads the program, builds the bootstrap message and starts the thread.
    fn spawn(&mut self, index: usize, spec: &ServiceSpec) -> Result<(Running, u64), StartError> {
        // The plan borrows the image while `populate` needs `self`: lend it out.
        let bootfs = core::mem::take(&mut self.bootfs);
        let result = self.spawn_from(&bootfs, index, spec);
        self.bootfs = bootfs;
        result
    }

    fn spawn_from(&mut self, bootfs: &[u8], index: usize, spec: &ServiceSpec) -> Result<(Running, u64), StartError> {
        let fs = BootFs::parse(bootfs).map_err(|e| StartError::Permanent(format!("boot filesystem: {e}")))?;
        let file = fs.find(&spec.program).ok_or_else(|| {
            StartError::Permanent(format!("program '{}' is not in the boot filesystem", spec.program))
        })?;
        let plan = loader::plan(file.data)
            .map_err(|e| StartError::Permanent(format!("program '{}': {e}", spec.program)))?;

        let (process, space) = Process::create(&self.me, &spec.name)?;
        // From here on, a failure kills the half-made process.
        match self.populate(index, spec, &plan, &process, &space) {
            Ok((thread, bootstrap, vmos)) => {
                let koid = process.koid().unwrap_or(0);
                let running = Running { process, _space: space, _thread: thread, _bootstrap: bootstrap, _vmos: vmos };
                Ok((running, koid))
            }
            Err(e) => {
                let _ = process.kill();
                Err(e)
            }
        }
    }

    fn populate(
        &mut self,
        index: usize,
        spec: &ServiceSpec,
        plan: &loader::Plan<'_>,
        process: &Process,
        space: &AddressSpace,
    ) -> Result<(Thread, Channel, Vec<Vmo>), StartError> {
        let mut vmos = Vec::with_capacity(plan.segments.len() + 1);
        for segment in &plan.segments {
            let vmo = Vmo::create(&self.me, segment.len)?;
            vmo.write(segment.data_offset, segment.data)?;
            space.map_fixed(&vmo, 0, segment.len, segment.flags, segment.addr)?;
            vmos.push(vmo);
        }
        let stack = Vmo::create(&self.me, STACK_SIZE)?;
        space.map_fixed(&stack, 0, STACK_SIZE, map::READ | map::WRITE, STACK_TOP - STACK_SIZE)?;
        vmos.push(stack);

        let thread = Thread::create(process)?;
        let (bootstrap, theirs) = Channel::create(&self.me)?;
        let child_bootstrap = process.give_handle(theirs.into_handle())?;

        let mut message = StartupBuilder::new();
        let bad = |e| StartError::Permanent(format!("bootstrap message: {e:?}"));
        let mut self_rights = rights::CREATE | rights::TRANSFER;
        if spec.has_cap("spawn") {
            self_rights |= rights::SPAWN;
        }
        message.handle("self", dup_subset(process.raw(), self_rights)?).map_err(bad)?;
        message.handle("space", dup_subset(space.raw(), rights::MAP | rights::TRANSFER)?).map_err(bad)?;
        message.handle("log", self.log_handle_for(index, spec)?).map_err(bad)?;
        for cap in &spec.caps {
            match cap.as_str() {
                "klog" => {
                    let klog = self.klog.as_ref().ok_or(Error::BadHandle)?;
                    let wanted = rights::READ | rights::WAIT | rights::TRANSFER;
                    message.handle("klog", dup_subset(klog.raw(), wanted)?).map_err(bad)?;
                }
                "irq" => {
                    let irq = self.irq.as_ref().ok_or(Error::BadHandle)?;
                    message.handle("irq", dup_subset(irq.raw(), rights::CREATE | rights::DUPLICATE | rights::TRANSFER)?).map_err(bad)?;
                }
                // Hardware a machine may lack: without it the service gets
                // no handle and says so itself.
                "console" | "eventlog" | "tpm" => {
                    let (held, wanted) = match cap.as_str() {
                        "console" => (&self.console, rights::READ | rights::WRITE | rights::WAIT | rights::DUPLICATE),
                        "eventlog" => (&self.eventlog, rights::READ | rights::MAP),
                        _ => (&self.tpm, rights::READ | rights::WRITE | rights::MAP),
                    };
                    // TRANSFER: the handle travels in the bootstrap message.
                    let wanted = wanted | rights::TRANSFER;
                    if let Some(held) = held {
                        message.handle(cap, dup_subset(held.raw(), wanted)?).map_err(bad)?;
                    }
                }
                "fwvar" => {
                    let fwvar = self.fwvar.as_ref().ok_or(Error::BadHandle)?;
                    let wanted = rights::READ | rights::WRITE | rights::DUPLICATE | rights::TRANSFER;
                    message.handle("fwvar", dup_subset(fwvar.raw(), wanted)?).map_err(bad)?;
                }
                "logctl" => {
                    let (ours, server) = Channel::create(&self.me)?;
                    self.logs.control = Some(ours);
                    message.handle("logctl", server.into_handle()).map_err(bad)?;
                }
                _ => {} // rights-only capabilities (spawn), handled above
            }
        }
        for arg in &spec.args {
            message.arg(arg).map_err(bad)?;
        }
        message.restarts(self.supervisor.restarts(index));
        let (bytes, handles) = message.finish();
        bootstrap.write(&bytes, handles)?;

        thread.start(plan.entry, STACK_TOP, u64::from(child_bootstrap.0), 0)?;
        process.wait_async(&self.port, KEY_SERVICE | index as u64, signals::TERMINATED)?;
        Ok((thread, bootstrap, vmos))
    }

    /// The `log` handle of service `index`: for the log server the kernel
    /// log (its console); for the others the client end of a new channel
    /// whose server end goes to the log server.
    fn log_handle_for(&mut self, index: usize, spec: &ServiceSpec) -> Result<OwnedHandle, Error> {
        if spec.is_log_server() {
            let kernel_log = self.kernel_log.ok_or(Error::BadHandle)?;
            return dup_subset(kernel_log, rights::WRITE | rights::TRANSFER);
        }
        let (client, server) = Channel::create(&self.me)?;
        self.attach(index, &spec.name.clone(), server);
        Ok(client.into_handle())
    }

    /// Hands the server end of `slot`'s log channel to the log server (now,
    /// or when it starts), keeping a duplicate when the kernel allows.
    fn attach(&mut self, slot: usize, name: &str, server: Channel) {
        let keep = server.duplicate(rights::READ | rights::WAIT | rights::TRANSFER | rights::DUPLICATE).ok();
        let sent = self.send_attach(name, server);
        self.logs.retained[slot] = keep.or(sent);
    }

    /// Sends `server` to the log server; gives it back if there is none.
    fn send_attach(&mut self, name: &str, server: Channel) -> Option<Channel> {
        let Some(control) = &self.logs.control else { return Some(server) };
        match control.write(&control::encode_attach(name), vec![server.into_handle()]) {
            Ok(()) => None,
            Err(e) => {
                // Channel::write closed the handle on failure.
                warn!("init: cannot hand the log channel of {name} to the log server: {}", e.name());
                None
            }
        }
    }

    /// The log server is up: init logs through it from now on, and every
    /// retained service log channel is (re)attached.
    fn log_server_started(&mut self) {
        let names: Vec<(usize, String)> = (0..self.manifest.services.len())
            .filter(|&i| self.logs.retained[i].is_some())
            .map(|i| (i, self.manifest.services[i].name.clone()))
            .collect();
        for (slot, name) in names {
            let Some(retained) = self.logs.retained[slot].take() else { continue };
            let copy = retained.duplicate(rights::READ | rights::WAIT | rights::TRANSFER | rights::DUPLICATE);
            match copy {
                Ok(copy) => {
                    self.logs.retained[slot] = Some(retained);
                    let _ = self.send_attach(&name, copy);
                }
                Err(_) => self.logs.retained[slot] = self.send_attach(&name, retained),
            }
        }
        match Channel::create(&self.me) {
            Ok((client, server)) => {
                let slot = self.logs.self_slot;
                self.attach(slot, "init", server);
                mantra_rt::log::set_channel(client.into_handle().into_raw());
            }
            Err(e) => warn!("init: cannot create its own log channel: {}", e.name()),
        }
    }

    /// The log server is gone: init logs to the kernel again.
    fn log_server_stopped(&mut self, for_good: bool) {
        mantra_rt::log::use_kernel_log();
        self.logs.control = None;
        self.logs.retained[self.logs.self_slot] = None;
        if for_good {
            // Nobody will read the services' log channels: let their writes
            // fail fast (PEER_CLOSED) instead of filling the queues.
            self.logs.retained.iter_mut().for_each(|r| *r = None);
        }
    }

    /// Waits for exits and restart times, forever.
    fn supervise(&mut self) -> ! {
        let mut packets = [PortPacket::default(); 16];
        loop {
            self.check_confirmation();
            let deadline = self.supervisor.next_deadline().unwrap_or(NO_DEADLINE);
            let count = match mantra_rt::sys::port_wait(self.port.raw(), deadline, &mut packets) {
                Ok(n) => n.min(packets.len()),
                Err(Error::TimedOut) => 0,
                Err(e) => {
                    error!("init: waiting on the port failed: {}; retrying", e.name());
                    let _ = mantra_rt::time::sleep_ms(100);
                    0
                }
            };
            for packet in packets[..count].iter().copied() {
                if packet.key == KEY_CONFIRM {
                    // A settle time ended; check_confirmation looks again.
                    self.confirm_at = None;
                    self.confirm_armed = false;
                } else if packet.key == KEY_TIMER {
                    // The timer fired (and is disarmed); the wait is used up.
                    self.timer_deadline = None;
                    self.timer_armed = false;
                } else if packet.key & KEY_SERVICE != 0 {
                    self.service_signalled((packet.key & !KEY_SERVICE) as usize, packet.observed);
                }
            }
            self.restart_due();
        }
    }

    /// Decides the boot confirmation once the services' health allows:
    /// confirms when all that count are healthy, refuses when one failed,
    /// else notes when to look again.
    fn check_confirmation(&mut self) {
        if !self.confirm_pending {
            return;
        }
        let now = mantra_rt::time::now();
        match self.supervisor.health(now) {
            Health::Waiting { until } => {
                if until.is_some() && until != self.confirm_at {
                    let at = until.unwrap_or(NO_DEADLINE);
                    if self.confirm_timer.set(at).is_ok() {
                        self.confirm_at = until;
                    }
                }
                if self.confirm_at.is_some() && !self.confirm_armed {
                    self.confirm_armed =
                        self.confirm_timer.wait_async(&self.port, KEY_CONFIRM, signals::TIMER_FIRED).is_ok();
                }
            }
            Health::Failed { service } => {
                self.confirm_pending = false;
                let _ = self.confirm_timer.cancel();
                error!("init: boot not confirmed: service {} failed", self.manifest.services[service].name);
            }
            Health::Healthy => {
                self.confirm_pending = false;
                let _ = self.confirm_timer.cancel();
                info!("init: all services healthy ({} ms since boot)", now / 1_000_000);
                match self.confirm_boot() {
                    Ok(line) => info!("{line}"),
                    Err(Skip::Skipped(why)) => info!("init: boot confirmation skipped: {why}"),
                    Err(Skip::NotConfirmed(why)) => error!("init: boot not confirmed: {why}"),
                }
            }
        }
    }

    /// docs/boot-state.md "Boot confirmation": reads MantraBootCurrent and,
    /// for a pending slot, marks it active and preferred in MantraSlots.
    /// Returns the console line.
    fn confirm_boot(&self) -> Result<String, Skip> {
        use mantra_abi::fwvar::ATTRS_NV;
        use mantra_rt::sys::{firmware_variable_get, firmware_variable_set};
        let fwvar = self.fwvar.as_ref().ok_or(Skip::Skipped("no fwvar capability".into()))?.raw();
        let mut bytes = [0u8; confirm::BOOT_CURRENT_SIZE + 8];
        let current: BootCurrent = match firmware_variable_get(fwvar, confirm::BOOT_CURRENT, &mut bytes, None) {
            Ok(n) => confirm::parse_boot_current(&bytes[..n]).map_err(Skip::NotConfirmed)?,
            Err(Error::NotSupported) => return Err(Skip::Skipped("no UEFI runtime services".into())),
            Err(Error::NotFound) => {
                return Err(Skip::Skipped(format!(
                    "no {} variable (MantraBoot did not record an A/B slot)",
                    confirm::BOOT_CURRENT
                )))
            }
            Err(e) => return Err(Skip::NotConfirmed(format!("reading {}: {}", confirm::BOOT_CURRENT, e.name()))),
        };
        let slot = confirm::slot_name(current.slot);
        if current.state != confirm::STATE_PENDING {
            return Ok(format!(
                "init: boot healthy: slot {slot} is already active (security counter {}); nothing to confirm",
                current.security_counter
            ));
        }
        let mut slots = [0u8; confirm::SLOTS_SIZE + 8];
        let n = firmware_variable_get(fwvar, confirm::SLOTS, &mut slots, None)
            .map_err(|e| Skip::NotConfirmed(format!("reading {}: {}", confirm::SLOTS, e.name())))?;
        let updated = confirm::confirm_slots(&slots[..n], &current).map_err(|e| Skip::NotConfirmed(format!("{e}")))?;
        firmware_variable_set(fwvar, confirm::SLOTS, ATTRS_NV, &updated)
            .map_err(|e| Skip::NotConfirmed(format!("writing {}: {}", confirm::SLOTS, e.name())))?;
        Ok(confirm::confirmed_line(&current))
    }

    fn service_signalled(&mut self, index: usize, observed: u32) {
        if index >= self.running.len() || observed & signals::TERMINATED == 0 {
            return;
        }
        let Some(running) = self.running[index].take() else { return };
        let code = match running.process.exit_code() {
            Ok(code) => code,
            Err(Error::BadState) => {
                // Not terminated after all: wait again.
                let _ = running.process.wait_async(&self.port, KEY_SERVICE | index as u64, signals::TERMINATED);
                self.running[index] = Some(running);
                return;
            }
            Err(_) => -1,
        };
        drop(running);
        let spec = self.manifest.services[index].clone();
        let status = ExitStatus::from_code(code);
        let outcome = self.supervisor.exited(index, status, mantra_rt::time::now());
        if spec.is_log_server() {
            self.log_server_stopped(!matches!(outcome, Outcome::Restart { .. }));
        } else if !matches!(outcome, Outcome::Restart { .. }) {
            self.logs.retained[index] = None;
        }
        let policy = self.supervisor.policy();
        for line in supervisor::exit_lines(&spec.name, status, outcome, policy, spec.restart) {
            match outcome {
                Outcome::Restart { crash: None, .. } | Outcome::Stop if !status.is_failure() => info!("{line}"),
                Outcome::Failed { .. } => error!("{line}"),
                _ => warn!("{line}"),
            }
        }
        self.schedule();
    }

    fn restart_due(&mut self) {
        let due = self.supervisor.take_due(mantra_rt::time::now());
        for index in due {
            if self.supervisor.state(index) == State::Idle {
                self.start(index);
            }
        }
        self.schedule();
    }

    /// Arms the restart timer for the earliest pending restart. (The port
    /// wait's deadline is the same time, so a restart happens even if the
    /// timer's packet is lost.)
    fn schedule(&mut self) {
        let next = self.supervisor.next_deadline();
        if next != self.timer_deadline {
            let set = match next {
                Some(at) => self.timer.set(at),
                None => self.timer.cancel(),
            };
            if set.is_ok() {
                self.timer_deadline = next;
            }
        }
        if self.timer_deadline.is_some() && !self.timer_armed {
            self.timer_armed = self.timer.wait_async(&self.port, KEY_TIMER, signals::TIMER_FIRED).is_ok();
        }
    }
}
