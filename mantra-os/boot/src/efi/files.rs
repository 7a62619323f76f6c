//! Reading files from a FAT file system the firmware exposes as a
//! SimpleFileSystem: the ESP MantraBoot was loaded from (LoadedImage ->
//! device), or an A/B slot partition (its own handle, see `ab.rs`).

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use uefi::boot::{self, AllocateType, MemoryType, ScopedProtocol};
use uefi::proto::media::file::{Directory, File, FileAttribute, FileInfo, FileMode, RegularFile};
use uefi::proto::media::fs::SimpleFileSystem;
use uefi::{CStr16, Handle, Status};

use super::fail::Fatal;

const SLOT_HINT: &str = "install a signed image into the slot (./mantra slot install)";

/// The root directory of a FAT file system (an A/B slot).
pub struct Esp {
    root: Directory,
    // Keeps the protocol open while `root` is used; dropped after it.
    _fs: ScopedProtocol<SimpleFileSystem>,
}

/// A file read into pages of its own (physical address = pointer).
pub struct PageFile {
    pub addr: u64,
    pub len: usize,
}

impl PageFile {
    /// Gives the pages back to the firmware (a slot that is not booted).
    pub fn free(self) {
        let pages = self.len.div_ceil(4096).max(1);
        if let Some(ptr) = core::ptr::NonNull::new(self.addr as *mut u8) {
            // SAFETY: `addr` is the start of `pages` pages `read_to_pages`
            // allocated; `self` is consumed, so nothing uses them after this.
            let _ = unsafe { boot::free_pages(ptr, pages) };
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `addr` is an allocation of at least `len` bytes that
        // `read_to_pages` filled and that is never freed.
        unsafe { core::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

impl Esp {
    /// The file system on the partition `handle` (an A/B slot); `None`
    /// when the partition holds none the firmware recognizes.
    pub fn open_handle(handle: Handle, name: &str) -> Result<Option<Self>, Fatal> {
        let mut fs = match boot::open_protocol_exclusive::<SimpleFileSystem>(handle) {
            Ok(fs) => fs,
            Err(e) if matches!(e.status(), Status::UNSUPPORTED | Status::NOT_FOUND) => return Ok(None),
            Err(e) => {
                return Err(Fatal::new(format!("cannot open the file system of {name}: {}", e.status()), SLOT_HINT))
            }
        };
        let root = fs.open_volume().map_err(|e| {
            Fatal::new(format!("cannot open the file system of {name}: {}", e.status()), SLOT_HINT)
        })?;
        Ok(Some(Self { root, _fs: fs }))
    }

    /// Opens `path`; `None` if it does not exist.
    fn open_file(&mut self, path: &CStr16, name: &str) -> Result<Option<(RegularFile, usize)>, Fatal> {
        let handle = match self.root.open(path, FileMode::Read, FileAttribute::empty()) {
            Ok(h) => h,
            Err(e) if e.status() == Status::NOT_FOUND => return Ok(None),
            Err(e) => {
                return Err(Fatal::new(format!("cannot open {name}: {}", e.status()), "check the boot partition"))
            }
        };
        let mut file = handle
            .into_regular_file()
            .ok_or_else(|| Fatal::new(format!("{name} is a directory, not a file"), super::REBUILD))?;
        let info = file.get_boxed_info::<FileInfo>().map_err(|e| {
            Fatal::new(format!("cannot read the size of {name}: {}", e.status()), "check the boot partition")
        })?;
        let size = usize::try_from(info.file_size())
            .map_err(|_| Fatal::new(format!("{name} is too large ({} bytes)", info.file_size()), super::REBUILD))?;
        Ok(Some((file, size)))
    }

    fn read_exact(file: &mut RegularFile, buf: &mut [u8], name: &str) -> Result<(), Fatal> {
        let mut done = 0;
        while done < buf.len() {
            let n = file
                .read(&mut buf[done..])
                .map_err(|e| Fatal::new(format!("cannot read {name}: {}", e.status()), "check the boot partition"))?;
            if n == 0 {
                return Err(Fatal::new(
                    format!("{name} ended after {done} of {} bytes", buf.len()),
                    "check the boot partition",
                ));
            }
            done += n;
        }
        Ok(())
    }

    /// Reads `path` into loader memory if it is at most `limit` bytes long;
    /// `None` if it does not exist, `Some(Err(size))` if it is larger.
    pub fn read_bounded(
        &mut self,
        path: &CStr16,
        name: &str,
        limit: usize,
    ) -> Result<Option<Result<Vec<u8>, usize>>, Fatal> {
        let Some((mut file, size)) = self.open_file(path, name)? else { return Ok(None) };
        if size > limit {
            return Ok(Some(Err(size)));
        }
        let mut buf = vec![0u8; size];
        Self::read_exact(&mut file, &mut buf, name)?;
        Ok(Some(Ok(buf)))
    }

    /// Reads `path` into loader memory; `None` if it does not exist.
    pub fn read(&mut self, path: &CStr16, name: &str) -> Result<Option<Vec<u8>>, Fatal> {
        let Some((mut file, size)) = self.open_file(path, name)? else { return Ok(None) };
        let mut buf = vec![0u8; size];
        Self::read_exact(&mut file, &mut buf, name)?;
        Ok(Some(buf))
    }

    /// Reads `path` into fresh pages of `memory_type` (so the memory map
    /// shows them to the kernel); `None` if it does not exist.
    pub fn read_to_pages(
        &mut self,
        path: &CStr16,
        name: &str,
        memory_type: MemoryType,
    ) -> Result<Option<PageFile>, Fatal> {
        let Some((mut file, size)) = self.open_file(path, name)? else { return Ok(None) };
        let pages = size.div_ceil(4096).max(1);
        let ptr = boot::allocate_pages(AllocateType::AnyPages, memory_type, pages).map_err(|e| {
            Fatal::new(
                format!("cannot allocate {pages} pages for {name}: {}", e.status()),
                "give the machine more memory",
            )
        })?;
        // SAFETY: `ptr` is a fresh allocation of `pages` pages, identity
        // mapped, that nothing else references.
        let buf = unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), pages * 4096) };
        buf[size..].fill(0);
        Self::read_exact(&mut file, &mut buf[..size], name)?;
        Ok(Some(PageFile { addr: ptr.as_ptr() as u64, len: size }))
    }
}
