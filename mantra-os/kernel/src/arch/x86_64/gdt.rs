//! GDT and TSS. The layout is fixed by SYSCALL/SYSRET (issue 4): kernel code,
//! kernel data, then user data before user code.
//!
//! The TSS carries the interrupt stack table: double fault, NMI and machine
//! check run on their own stacks so that a kernel stack overflow (which makes
//! the page-fault delivery itself fault) is reported instead of turning into a
//! triple fault.

use core::arch::asm;
use core::mem::size_of;

pub const KERNEL_CODE: u16 = 0x08;
pub const KERNEL_DATA: u16 = 0x10;
/// User data (0x18) and user code (0x20) follow: SYSCALL/SYSRET need this order.
pub const USER_DATA_BASE: u16 = 0x18;
pub const USER_DATA: u16 = USER_DATA_BASE | 3;
pub const USER_CODE: u16 = (USER_DATA_BASE + 8) | 3;
pub const TSS_SELECTOR: u16 = 0x28;

/// IST slots (1-based, as the IDT encodes them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, packed(4))]
pub struct Tss {
    _reserved0: u32,
    pub rsp: [u64; 3],
    _reserved1: u64,
    pub ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    pub iomap_base: u16,
}

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

/// One CPU's descriptor tables. Lives in a static so its address is stable.
#[repr(C, align(16))]
pub struct CpuTables {
    gdt: [u64; 7],
    tss: Tss,
    ist: [IstStack; 3],
}

const fn segment(access: u64, flags: u64) -> u64 {
    // Base 0, limit ignored in long mode except for data; set max anyway.
    0xFFFF | (access << 40) | (flags << 52) | (0xF << 48)
}

impl CpuTables {
    /// Initialises tables in zeroed memory without building the (48 KiB)
    /// value on the stack: only the GDT and TSS are written; the IST stacks
    /// stay as the zeroed memory has them.
    ///
    /// # Safety
    /// `this` must point to writable, zeroed memory of `CpuTables`' layout.
    pub unsafe fn init_zeroed(this: *mut Self) {
        // Evaluated at compile time: only the small fields reach the binary.
        const GDT: [u64; 7] = CpuTables::new().gdt;
        const TSS: Tss = CpuTables::new().tss;
        // SAFETY: guaranteed by the caller; the fields are small, plain data.
        unsafe {
            core::ptr::addr_of_mut!((*this).gdt).write(GDT);
            core::ptr::addr_of_mut!((*this).tss).write(TSS);
        }
    }

    pub const fn new() -> Self {
        Self {
            gdt: [
                0,
                segment(0x9A, 0xA), // kernel code: present, ring 0, exec/read; L=1, G=1
                segment(0x92, 0xC), // kernel data: present, ring 0, read/write
                segment(0xF2, 0xC), // user data: ring 3
                segment(0xFA, 0xA), // user code: ring 3, L=1
                0,                  // TSS low (filled at load)
                0,                  // TSS high
            ],
            tss: Tss { _reserved0: 0, rsp: [0; 3], _reserved1: 0, ist: [0; 7], _reserved2: 0, _reserved3: 0, iomap_base: size_of::<Tss>() as u16 },
            ist: [IstStack([0; IST_STACK_SIZE]), IstStack([0; IST_STACK_SIZE]), IstStack([0; IST_STACK_SIZE])],
        }
    }

    /// Sets the stack the CPU loads on interrupts from user mode.
    pub fn set_rsp0(&mut self, top: u64) {
        self.tss.rsp[0] = top;
    }

    /// Fills the TSS descriptor and IST pointers, then loads GDTR, the
    /// segment registers and TR on this CPU.
    ///
    /// # Safety
    /// `self` must live for as long as the CPU runs (a static), and must not
    /// be loaded on two CPUs (a TSS is busy while loaded).
    pub unsafe fn load(&'static mut self) {
        for (slot, stack) in self.ist.iter().enumerate() {
            let top = stack.0.as_ptr() as u64 + IST_STACK_SIZE as u64;
            self.tss.ist[slot] = top & !0xF;
        }
        let tss = &self.tss as *const Tss as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        self.gdt[5] = (limit & 0xFFFF) | ((tss & 0xFF_FFFF) << 16) | (0x89 << 40) | (((tss >> 24) & 0xFF) << 56);
        self.gdt[6] = tss >> 32;

        #[repr(C, packed(2))]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        let pointer = Pointer { limit: (size_of::<[u64; 7]>() - 1) as u16, base: self.gdt.as_ptr() as u64 };
        // SAFETY: the GDT is static and well-formed; reloading CS through a
        // far return and the data selectors keeps the current privilege level.
        unsafe {
            asm!(
                "lgdt [{ptr}]",
                "push {code}",
                "lea {tmp}, [rip + 2f]",
                "push {tmp}",
                "retfq",
                "2:",
                "mov ds, {data:x}",
                "mov es, {data:x}",
                "mov ss, {data:x}",
                "xor {tmp:e}, {tmp:e}",
                "mov fs, {tmp:x}",
                "mov gs, {tmp:x}",
                "ltr {tss:x}",
                ptr = in(reg) &pointer,
                code = in(reg) u64::from(KERNEL_CODE),
                data = in(reg) u64::from(KERNEL_DATA),
                tss = in(reg) u64::from(TSS_SELECTOR),
                tmp = out(reg) _,
            );
        }
    }
}
