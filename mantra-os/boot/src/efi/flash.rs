//! Flash mode (docs/flash-protocol.md): entered by the console line
//! `MANTRA-FLASH` at boot, by the one-shot variable `MantraFlashMode`, or
//! when no slot can boot. MantraBoot takes the console UART from the
//! firmware's terminal driver, speaks MantraFlash (the session logic is
//! `mantra_boot::flash`, host-tested) and writes the inactive slot's
//! partition through EFI_BLOCK_IO_PROTOCOL. The running/preferred slot is
//! never opened for writing.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;

use mantra_boot::flash::frame::{self, ty, Decoder, Event};
use mantra_boot::flash::session::{code, Action, Device, Failure, Session, SlotInfo, BLOCK_SIZE};
use mantra_boot::flash::LineWatch;
use mantra_boot::slots::{Rollback, Slot, SlotRecord, Slots, State};
use mantra_signing::{sha256, verify_envelope, Policy};
use uefi::boot::{self, AllocateType, MemoryType, OpenProtocolAttributes, OpenProtocolParams, ScopedProtocol, SearchType};
use uefi::proto::console::serial::Serial;
use uefi::proto::console::text::Key;
use uefi::proto::media::block::BlockIO;
use uefi::runtime::{self, ResetType, VariableAttributes};
use uefi::{cstr16, CStr16, Handle, Identify, Status};

use super::ab;
use super::fail::Fatal;
use super::files::Esp;
use super::platform::rdtsc;
use super::uart::{Clock, Uart};
use super::verify;

/// The one-shot request variable (NV | BS | RT, 1 byte = 1).
const FLASH_VAR: &CStr16 = cstr16!("MantraFlashMode");
/// A partial frame is forgotten after this much silence; a new rate
/// that hears no valid frame for this long falls back to the old one.
const SILENCE_MS: u64 = 2000;
/// BUSY keepalives during long checks, at most this far apart.
const BUSY_MS: u64 = 250;

/// Why flash mode was entered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Console,
    Variable,
    NothingBootable,
}

/// `MantraFlashMode` (deleted: one shot), then the console for
/// `CONFIG_FLASH_WAIT_MS`: whether flash mode was asked for.
pub fn requested(clock: &Clock) -> Result<Option<Why>, Fatal> {
    if let Some((data, _)) = ab::read_var::<8>(FLASH_VAR, "MantraFlashMode")? {
        let _ = runtime::delete_variable(FLASH_VAR, &ab::VENDOR);
        if data == [1] {
            return Ok(Some(Why::Variable));
        }
        say!("MantraBoot: warning: variable MantraFlashMode is not the single byte 1: ignored (and deleted)");
    }
    let wait = mantra_config::FLASH_WAIT_MS as u64;
    if wait == 0 {
        return Ok(None);
    }
    let deadline = clock.now_ms() + wait;
    let mut watch = LineWatch::new();
    while clock.now_ms() < deadline {
        match uefi::system::with_stdin(|input| input.read_key()) {
            Ok(Some(Key::Printable(c))) => {
                let c = u16::from(c);
                if c < 0x80 && watch.push(c as u8) {
                    return Ok(Some(Why::Console));
                }
            }
            Ok(Some(Key::Special(_))) => {}
            Ok(None) => boot::stall(1000),
            // No console input: nothing to wait for.
            Err(_) => return Ok(None),
        }
    }
    Ok(None)
}

/// The target slot's partition, opened exclusively (the FAT driver is
/// disconnected from it while flash mode writes).
struct Target {
    slot: Slot,
    handle: Handle,
    io: Option<ScopedProtocol<BlockIO>>,
    media_id: u32,
    /// Device blocks per flash block.
    per_block: u64,
    /// Page-aligned bounce buffer of one flash block (any io_align).
    buffer: NonNull<u8>,
}

impl Target {
    fn open(slot: Slot, handle: Handle) -> Result<Self, String> {
        let io = open_block_io(handle)?;
        let media = io.media();
        let block_size = u64::from(media.block_size());
        if block_size == 0 || u64::from(BLOCK_SIZE) % block_size != 0 {
            return Err(format!("slot {}: device block size {block_size} does not divide {BLOCK_SIZE}", slot.name()));
        }
        let media_id = media.media_id();
        let pages = BLOCK_SIZE as usize / 4096;
        let buffer = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)
            .map_err(|e| format!("cannot allocate the block buffer: {}", e.status()))?;
        Ok(Self { slot, handle, io: Some(io), media_id, per_block: u64::from(BLOCK_SIZE) / block_size, buffer })
    }

    fn buffer(&mut self) -> &mut [u8] {
        // SAFETY: `buffer` is this target's own allocation of BLOCK_SIZE
        // bytes (never freed while flash mode runs), borrowed through
        // `&mut self` only.
        unsafe { core::slice::from_raw_parts_mut(self.buffer.as_ptr(), BLOCK_SIZE as usize) }
    }

    fn io(&mut self) -> Result<&mut ScopedProtocol<BlockIO>, Failure> {
        if self.io.is_none() {
            self.io = Some(open_block_io(self.handle).map_err(|e| Failure::new(code::IO, e))?);
        }
        Ok(self.io.as_mut().expect("just opened"))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: `buffer` is the allocation of BLOCK_SIZE / 4096 pages
        // `open` made; the target is going away, so nothing uses it after this.
        let _ = unsafe { boot::free_pages(self.buffer, BLOCK_SIZE as usize / 4096) };
    }
}

fn open_block_io(handle: Handle) -> Result<ScopedProtocol<BlockIO>, String> {
    boot::open_protocol_exclusive::<BlockIO>(handle)
        .map_err(|e| format!("cannot open the slot partition's EFI_BLOCK_IO_PROTOCOL exclusively: {}", e.status()))
}

/// The board as flash mode sees it.
struct Board {
    uart: Uart,
    clock: Clock,
    minimum: Rollback,
    infos: [SlotInfo; 2],
    target: Option<Target>,
    /// `MantraSlots` to start from when the variable is missing (a
    /// factory-fresh device): the kept slot as it is installed.
    factory: Slots,
    last_busy_ms: u64,
}

fn io_error(what: &str, status: Status) -> Failure {
    Failure::new(code::IO, format!("block I/O error: {what}: {status}; check the disk, then flash again"))
}

impl Board {
    fn write_slots(&mut self, slot: Slot, record: SlotRecord) -> Result<(), Failure> {
        let var = |f: Fatal| Failure::new(code::IO, format!("{}; {}", f.what, f.hint));
        let mut slots = ab::read_slots().map_err(var)?.unwrap_or(self.factory);
        slots.records[slot as usize] = record;
        ab::write_var(
            ab::SLOTS_VAR,
            ab::nv_store() | VariableAttributes::RUNTIME_ACCESS,
            &slots.encode(),
            "MantraSlots",
        )
        .map_err(var)?;
        self.infos[slot as usize].state = record.state as u8;
        self.infos[slot as usize].tries = record.tries;
        Ok(())
    }

    fn target(&mut self, slot: Slot) -> Result<&mut Target, Failure> {
        match self.target.as_mut() {
            Some(t) if t.slot == slot => Ok(t),
            _ => Err(Failure::new(code::WRONG_SLOT, format!("slot {} is not the target", slot.name()))),
        }
    }
}

impl Device for Board {
    fn board(&self) -> &str {
        mantra_config::BOARD
    }
    fn root_key(&self) -> &[u8; 32] {
        &verify::ROOT_KEY
    }
    fn minimum(&self) -> Rollback {
        self.minimum
    }
    fn slot_info(&self, slot: Slot) -> SlotInfo {
        self.infos[slot as usize].clone()
    }
    fn target(&self) -> Option<Slot> {
        self.target.as_ref().map(|t| t.slot)
    }
    fn baud(&self) -> u32 {
        self.uart.baud()
    }
    fn baud_supported(&self, baud: u32) -> bool {
        self.uart.supports(baud)
    }
    fn mark_flashing(&mut self, slot: Slot, security_counter: u64, envelope_hash: [u8; 32]) -> Result<(), Failure> {
        self.target(slot)?;
        self.write_slots(slot, SlotRecord { state: State::Flashing, tries: 0, security_counter, envelope_hash })
    }
    fn read_block(&mut self, slot: Slot, index: u32, buf: &mut [u8]) -> Result<(), Failure> {
        let t = self.target(slot)?;
        let (media_id, lba) = (t.media_id, u64::from(index) * t.per_block);
        let buffer = t.buffer.as_ptr();
        let io = t.io()?;
        // SAFETY: the bounce buffer is BLOCK_SIZE bytes of this target,
        // not otherwise borrowed during the call (`t.io()` borrows only
        // the protocol).
        let bounce = unsafe { core::slice::from_raw_parts_mut(buffer, BLOCK_SIZE as usize) };
        io.read_blocks(media_id, lba, bounce).map_err(|e| io_error(&format!("reading block {index}"), e.status()))?;
        buf.copy_from_slice(bounce);
        Ok(())
    }
    fn write_block(&mut self, slot: Slot, index: u32, data: &[u8]) -> Result<(), Failure> {
        let t = self.target(slot)?;
        t.buffer().copy_from_slice(data);
        let (media_id, lba) = (t.media_id, u64::from(index) * t.per_block);
        let buffer = t.buffer.as_ptr();
        let io = t.io()?;
        // SAFETY: as in read_block.
        let bounce = unsafe { core::slice::from_raw_parts(buffer, BLOCK_SIZE as usize) };
        io.write_blocks(media_id, lba, bounce).map_err(|e| io_error(&format!("writing block {index}"), e.status()))
    }
    fn flush(&mut self, slot: Slot) -> Result<(), Failure> {
        self.target(slot)?.io()?.flush_blocks().map_err(|e| io_error("FlushBlocks", e.status()))
    }
    fn verify_slot(&mut self, slot: Slot, envelope_hash: &[u8; 32]) -> Result<(), Failure> {
        let minimum = self.minimum;
        let t = self.target(slot)?;
        // Close our exclusive open and let the firmware mount the file
        // system afresh (its FAT driver caches): what boot will read.
        t.io = None;
        let _ = boot::connect_controller(t.handle, None, None, true);
        let handle = t.handle;
        let failed = |what: String| {
            Failure::new(code::SLOT_VERIFY, format!("slot verification failed: slot {}: {what}; flash a good image", slot.name()))
        };
        let result = match ab::load_slot(slot, Some(handle), minimum) {
            Ok(Ok(image)) => {
                let same = sha256(image.image.envelope) == *envelope_hash;
                image.bootfs.free();
                if same {
                    Ok(())
                } else {
                    Err(failed(String::from("its MANTRA/MANIFEST.SIG is not the one BEGIN announced")))
                }
            }
            Ok(Err(empty)) => Err(failed(format!("empty after writing ({empty})"))),
            Err(refusal) => Err(failed(refusal.what)),
        };
        // Take the partition back for any further writes.
        let t = self.target(slot)?;
        t.io()?;
        result
    }
    fn activate(&mut self, slot: Slot, security_counter: u64, envelope_hash: [u8; 32]) -> Result<(), Failure> {
        self.target(slot)?;
        let tries = mantra_config::BOOT_TRIES as u8;
        self.write_slots(slot, SlotRecord { state: State::Pending, tries, security_counter, envelope_hash })
    }
    fn busy(&mut self, done: u32, total: u32) {
        let now = self.clock.now_ms();
        if now.wrapping_sub(self.last_busy_ms) >= BUSY_MS {
            self.last_busy_ms = now;
            let mut p = [0u8; 8];
            p[..4].copy_from_slice(&done.to_le_bytes());
            p[4..].copy_from_slice(&total.to_le_bytes());
            self.uart.write(&frame::encode(ty::BUSY, 0, &p));
        }
    }
    fn now(&self) -> u64 {
        rdtsc()
    }
}

/// A slot's signed manifest as installed: (security counter, version,
/// envelope hash), when it verifies (envelope checks only).
fn installed(handle: Option<Handle>, minimum: Rollback) -> Option<(u64, String, [u8; 32])> {
    let mut fs = Esp::open_handle(handle?, "slot").ok()??;
    let envelope = fs
        .read_bounded(cstr16!("\\MANTRA\\MANIFEST.SIG"), verify::MANIFEST_PATH, mantra_signing::MAX_ENVELOPE)
        .ok()??
        .ok()?;
    let policy = Policy {
        board: Some(mantra_config::BOARD),
        min_security_counter: Some(minimum.security_counter),
        min_revocations: Some(minimum.revocations),
    };
    let verified = verify_envelope(&envelope, &verify::ROOT_KEY, &policy).ok()?;
    Some((verified.manifest.security_counter, String::from(verified.manifest.version), sha256(&envelope)))
}

/// The firmware's serial drivers, taken away from the terminal (no other
/// reader of the UART while flash mode runs) and given back on exit.
struct SerialTaken {
    opened: Vec<(Handle, ScopedProtocol<Serial>)>,
}

impl SerialTaken {
    fn take() -> Self {
        let mut opened = Vec::new();
        if let Ok(handles) = boot::locate_handle_buffer(SearchType::ByProtocol(&Serial::GUID)) {
            for &handle in handles.iter() {
                // Exclusive: the firmware disconnects the terminal driver
                // (ConIn/ConOut on the serial port) from it.
                if let Ok(serial) = boot::open_protocol_exclusive::<Serial>(handle) {
                    opened.push((handle, serial));
                }
            }
        }
        Self { opened }
    }

    fn give_back(self) {
        for (handle, serial) in self.opened {
            drop(serial);
            let _ = boot::connect_controller(handle, None, None, true);
        }
    }
}

/// Runs flash mode until ABORT (returns: boot normally) or RESET.
pub fn run(why: Why, clock: Clock) -> Result<(), Fatal> {
    // No 5-minute watchdog reset in the middle of a flash.
    let _ = boot::set_watchdog_timer(0, 0x1_0000, None);
    let minimum = ab::minimums()?;
    let handles = ab::find_slots()?;
    let stored = ab::read_slots()?;

    // The slot kept: the preferred one, unless it holds nothing bootable
    // and the other one does.
    let preferred = stored.map_or(Slot::A, |s| s.preferred);
    let usable = |slot: Slot| stored.is_some_and(|s| matches!(s.record(slot).state, State::Active | State::Pending));
    let keep = if stored.is_some() && !usable(preferred) && usable(preferred.other()) { preferred.other() } else { preferred };
    let target_slot = keep.other();

    let mut infos = [SlotInfo::default(), SlotInfo::default()];
    let mut factory = Slots { preferred: keep, records: [SlotRecord::EMPTY; 2] };
    for slot in Slot::ALL {
        let i = slot as usize;
        let info = &mut infos[i];
        info.protected = slot == keep;
        if let Some(handle) = handles[i] {
            // SAFETY: GetProtocol only reads the media's size here; the
            // reference is dropped at the end of this block.
            let io = unsafe {
                boot::open_protocol::<BlockIO>(
                    OpenProtocolParams { handle, agent: boot::image_handle(), controller: None },
                    OpenProtocolAttributes::GetProtocol,
                )
            };
            if let Ok(io) = io {
                let media = io.media();
                info.size = (media.last_block() + 1) * u64::from(media.block_size());
            }
        }
        let record = stored.map(|s| *s.record(slot));
        if record.is_none_or(|r| r.state != State::Flashing) {
            if let Some((counter, version, hash)) = installed(handles[i], minimum) {
                info.security_counter = counter;
                info.version = version;
                if slot == keep {
                    factory.records[i] = SlotRecord { state: State::Active, tries: 0, security_counter: counter, envelope_hash: hash };
                }
            }
        }
        match record {
            Some(r) => {
                info.state = r.state as u8;
                info.tries = r.tries;
                if r.state == State::Flashing {
                    info.security_counter = r.security_counter;
                }
            }
            None => info.state = factory.records[i].state as u8,
        }
    }
    let target = match handles[target_slot as usize] {
        Some(handle) => match Target::open(target_slot, handle) {
            Ok(t) => Some(t),
            Err(e) => {
                say!("MantraBoot: warning: flash mode cannot write slot {}: {e}", target_slot.name());
                None
            }
        },
        None => {
            say!("MantraBoot: warning: flash mode has no slot to write: no partition slot-{}", target_slot.name());
            None
        }
    };

    say!(
        "MantraBoot: entering flash mode ({}); slot {} is kept, slot {} can be written",
        match why {
            Why::Console => "MANTRA-FLASH on the console",
            Why::Variable => "the MantraFlashMode variable",
            Why::NothingBootable => "no bootable slot",
        },
        keep.name(),
        target_slot.name()
    );
    say!(
        "MantraBoot: flash mode (protocol 1, board {}): waiting for the host",
        mantra_config::BOARD
    );
    let serial = SerialTaken::take();
    let mut board = Board { uart: Uart::board(), clock, minimum, infos, target, factory, last_busy_ms: 0 };
    let (action, stats) = serve(&mut board);
    serial.give_back();

    let blocks = stats.blocks_written.max(1);
    say!(
        "MantraBoot: flash mode ended: {} blocks written ({} bytes received encoded, {} NAKs); BEGIN envelope check {} tsc, {} tsc per block (decode, SHA-256, write), FINISH read-back {} tsc, slot check {} tsc",
        stats.blocks_written,
        stats.encoded_bytes,
        stats.naks,
        stats.begin_verify,
        stats.block_time / u64::from(blocks),
        stats.finish_readback,
        stats.finish_verify
    );
    if action == Action::Reset {
        say!("MantraBoot: flash mode: resetting");
        runtime::reset(ResetType::COLD, Status::SUCCESS, None);
    }
    say!("MantraBoot: flash mode: aborted by the host; booting normally");
    Ok(())
}

/// The frame loop: until RESET or ABORT.
fn serve(board: &mut Board) -> (Action, mantra_boot::flash::session::Stats) {
    let mut session = Session::new();
    let mut decoder = Decoder::new();
    let mut chunk = [0u8; 512];
    let mut last_rx = board.clock.now_ms();
    // After SET_BAUD: (old rate, deadline) until a valid frame arrives.
    let mut baud_trial: Option<(u32, u64)> = None;
    loop {
        let mut n = 0;
        while n < chunk.len() {
            match board.uart.read() {
                Some(b) => {
                    chunk[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        let now = board.clock.now_ms();
        if n > 0 {
            decoder.push(&chunk[..n]);
            last_rx = now;
        } else {
            if decoder.pending() > 0 && now.wrapping_sub(last_rx) > SILENCE_MS {
                decoder.clear();
            }
            if let Some((old, deadline)) = baud_trial {
                if now > deadline {
                    board.uart.set_baud(old);
                    decoder.clear();
                    baud_trial = None;
                }
            }
            core::hint::spin_loop();
            continue;
        }
        while let Some(event) = decoder.next_event() {
            if matches!(event, Event::Frame(_)) {
                baud_trial = None;
            }
            let out = session.handle(board, event);
            for f in &out.frames {
                board.uart.write(f);
            }
            match out.action {
                Action::None => {}
                Action::SetBaud(baud) => {
                    let old = board.uart.baud();
                    board.uart.set_baud(baud);
                    decoder.clear();
                    baud_trial = Some((old, board.clock.now_ms() + SILENCE_MS));
                }
                Action::Reset | Action::Abort => {
                    board.uart.drain();
                    return (out.action, session.stats);
                }
            }
        }
    }
}
