//! What a process's exit code means. PROCESS_EXIT_CODE reports the code a
//! process passed to PROCESS_EXIT, or, for a process the kernel killed
//! because of a CPU fault, `-1000 - vector` (abi: "faults are negative
//! vector numbers - 1000").

use core::fmt;

/// Lowest and highest exit code that encode a fault (vectors 255 .. 0).
const FAULT_BASE: i64 = -1000;
const FAULT_LOWEST: i64 = FAULT_BASE - 255;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called PROCESS_EXIT with this code.
    Code(i64),
    /// The kernel killed it for the CPU exception `vector`.
    Fault { vector: u8 },
}

impl ExitStatus {
    pub const fn from_code(code: i64) -> ExitStatus {
        if code <= FAULT_BASE && code >= FAULT_LOWEST {
            ExitStatus::Fault { vector: (FAULT_BASE - code) as u8 }
        } else {
            ExitStatus::Code(code)
        }
    }

    /// The exit code PROCESS_EXIT_CODE reports for this status.
    pub const fn code(self) -> i64 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Fault { vector } => FAULT_BASE - vector as i64,
        }
    }

    /// Anything but a clean `exit(0)`.
    pub const fn is_failure(self) -> bool {
        !matches!(self, ExitStatus::Code(0))
    }
}

/// The short name of an x86_64 exception vector.
pub const fn vector_name(vector: u8) -> &'static str {
    match vector {
        0 => "divide-error",
        1 => "debug",
        2 => "nmi",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound-range",
        6 => "invalid-opcode",
        7 => "device-not-available",
        8 => "double-fault",
        10 => "invalid-tss",
        11 => "segment-not-present",
        12 => "stack-segment",
        13 => "general-protection",
        14 => "page-fault",
        16 => "x87-floating-point",
        17 => "alignment-check",
        18 => "machine-check",
        19 => "simd-floating-point",
        20 => "virtualization",
        21 => "control-protection",
        _ => "exception",
    }
}

/// `code 3` or `fault page-fault (vector 14)`.
impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "code {code}"),
            ExitStatus::Fault { vector } => write!(f, "fault {} (vector {vector})", vector_name(vector)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn decodes_codes_and_faults() {
        assert_eq!(ExitStatus::from_code(0), ExitStatus::Code(0));
        assert_eq!(ExitStatus::from_code(101), ExitStatus::Code(101));
        assert_eq!(ExitStatus::from_code(-1), ExitStatus::Code(-1));
        assert_eq!(ExitStatus::from_code(-1000), ExitStatus::Fault { vector: 0 });
        assert_eq!(ExitStatus::from_code(-1014), ExitStatus::Fault { vector: 14 });
        assert_eq!(ExitStatus::from_code(-1255), ExitStatus::Fault { vector: 255 });
        assert_eq!(ExitStatus::from_code(-1256), ExitStatus::Code(-1256));
        for code in [0, 7, -1006, -1013] {
            assert_eq!(ExitStatus::from_code(code).code(), code);
        }
        assert!(!ExitStatus::Code(0).is_failure() && ExitStatus::Code(1).is_failure());
    }

    #[test]
    fn displays_for_log_lines() {
        assert_eq!(ExitStatus::Code(3).to_string(), "code 3");
        assert_eq!(ExitStatus::from_code(-1014).to_string(), "fault page-fault (vector 14)");
        assert_eq!(ExitStatus::from_code(-1006).to_string(), "fault invalid-opcode (vector 6)");
        assert_eq!(ExitStatus::from_code(-1000).to_string(), "fault divide-error (vector 0)");
    }
}
