//! `init.manifest`: what MantraInit starts. `./mantra build` writes it into
//! the boot filesystem from `manifests/<product>/product.toml` (and
//! validates it there first, with messages naming product.toml); MantraInit
//! checks it again, because it trusts no file.
//!
//! ```text
//! # comment
//! service <name> program=<bootfs file> restart=<always|on-failure|never> after=<name,...> caps=<cap,...> args=<arg,...> confirm=<yes|no>
//! crashloop <N> <T_ms>
//! backoff <initial_ms> <max_ms>
//! confirm <settle_ms>
//! ```
//!
//! In a `service` line every `key=value` is optional (`program` defaults to
//! the name, `restart` to `always`, the lists to empty, `confirm` to yes);
//! list items are separated by commas and cannot contain blanks or commas.
//! `crashloop` (default 5 in 10000 ms) and `backoff` (default 100 ms
//! doubling up to 5000 ms) apply to every service; `confirm` (default
//! 1000 ms) is how long a service must run without exiting to count as
//! healthy for the boot confirmation (see [`crate::supervisor::Health`]).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Capabilities a service can be granted (besides the `self`, `space` and
/// `log` handles every service gets).
pub const CAPABILITIES: &[(&str, &str)] = &[
    ("klog", "the kernel log with READ: drain kernel records (LOG_READ)"),
    ("logctl", "serve logs: the control channel over which init hands out log channels (the log server)"),
    ("spawn", "SPAWN on the service's own process handle: create child processes"),
    ("irq", "the interrupt resource with CREATE|DUPLICATE|TRANSFER: create physical interrupt objects (INTERRUPT_CREATE)"),
    ("console", "the console object with READ|WRITE|WAIT|DUPLICATE: serial input and whole raw lines out (CONSOLE_READ, CONSOLE_WRITE)"),
    ("eventlog", "the TCG event log MantraBoot handed over, a memory object with READ|MAP (none without a TPM)"),
    ("tpm", "the TPM's TIS/FIFO registers, a device-memory object with READ|WRITE|MAP (none without a TPM)"),
    ("fwvar", "the firmware-variable resource with READ|WRITE|DUPLICATE|TRANSFER: UEFI variables of the MantraOS vendor GUID (FIRMWARE_VARIABLE_GET/_SET)"),
];

/// Longest service name (the kernel's process-name limit).
pub const MAX_NAME: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// After every exit.
    Always,
    /// After a crash (non-zero exit code or fault), not after `exit(0)`.
    OnFailure,
    Never,
}

impl Restart {
    pub fn parse(text: &str) -> Option<Restart> {
        Some(match text {
            "always" => Restart::Always,
            "on-failure" => Restart::OnFailure,
            "never" => Restart::Never,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub program: String,
    pub restart: Restart,
    pub after: Vec<String>,
    pub caps: Vec<String>,
    pub args: Vec<String>,
    /// Whether the boot confirmation waits for this service to be healthy
    /// (`confirm=no`: a service expected to fail, such as the crash demo).
    pub confirm: bool,
}

impl ServiceSpec {
    pub fn has_cap(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c == cap)
    }

    /// The log server: the service granted `logctl`.
    pub fn is_log_server(&self) -> bool {
        self.has_cap("logctl")
    }
}

/// Restart timing, shared by every service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// This many crashes within `crash_window_ms` mark a service failed.
    pub crash_limit: u32,
    pub crash_window_ms: u64,
    /// Delay before the first restart; doubles with every further crash in
    /// the window, up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// How long a service must run without exiting to count as healthy.
    pub confirm_settle_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self { crash_limit: 5, crash_window_ms: 10_000, backoff_initial_ms: 100, backoff_max_ms: 5_000, confirm_settle_ms: 1_000 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub services: Vec<ServiceSpec>,
    pub policy: Policy,
}

impl Manifest {
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Index of the log server, if the manifest has one.
    pub fn log_server(&self) -> Option<usize> {
        self.services.iter().position(ServiceSpec::is_log_server)
    }
}

/// What is wrong with a manifest; `line` is 1-based (0: the whole file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "init.manifest: {}", self.message)
        } else {
            write!(f, "init.manifest line {}: {}", self.line, self.message)
        }
    }
}

fn error(line: usize, message: impl Into<String>) -> ManifestError {
    ManifestError { line, message: message.into() }
}

/// A valid service name: 1..=32 bytes of ASCII letters, digits, `-`, `_`, `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn list(value: &str) -> Vec<String> {
    value.split(',').filter(|item| !item.is_empty()).map(ToString::to_string).collect()
}

fn number<T: core::str::FromStr>(line: usize, what: &str, text: Option<&str>) -> Result<T, ManifestError> {
    text.and_then(|t| t.parse().ok()).ok_or_else(|| error(line, alloc::format!("{what} must be a number")))
}

/// Parses and validates a manifest (names, capabilities, dependencies,
/// cycles: see [`crate::order`]).
pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
    let mut services: Vec<(usize, ServiceSpec)> = Vec::new();
    let mut policy = Policy::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut words = content.split_whitespace();
        match words.next() {
            Some("service") => {
                let name = words.next().ok_or_else(|| error(line, "service without a name"))?;
                if !valid_name(name) {
                    return Err(error(
                        line,
                        alloc::format!("bad service name '{name}' (1 to {MAX_NAME} letters, digits, '-', '_', '.')"),
                    ));
                }
                if services.iter().any(|(_, s)| s.name == name) {
                    return Err(error(line, alloc::format!("service '{name}' is listed twice")));
                }
                let mut spec = ServiceSpec {
                    name: name.to_string(),
                    program: name.to_string(),
                    restart: Restart::Always,
                    after: Vec::new(),
                    caps: Vec::new(),
                    args: Vec::new(),
                    confirm: true,
                };
                for word in words {
                    let (key, value) = word
                        .split_once('=')
                        .ok_or_else(|| error(line, alloc::format!("service '{name}': '{word}' is not key=value")))?;
                    match key {
                        "program" if !value.is_empty() => spec.program = value.to_string(),
                        "restart" => {
                            spec.restart = Restart::parse(value).ok_or_else(|| {
                                error(
                                    line,
                                    alloc::format!(
                                        "service '{name}': restart '{value}' is not always, on-failure or never"
                                    ),
                                )
                            })?
                        }
                        "after" => spec.after = list(value),
                        "caps" => spec.caps = list(value),
                        "args" => spec.args = list(value),
                        "confirm" => {
                            spec.confirm = match value {
                                "yes" => true,
                                "no" => false,
                                _ => {
                                    return Err(error(
                                        line,
                                        alloc::format!("service '{name}': confirm '{value}' is not yes or no"),
                                    ))
                                }
                            }
                        }
                        _ => return Err(error(line, alloc::format!("service '{name}': unknown key '{key}'"))),
                    }
                }
                services.push((line, spec));
            }
            Some("crashloop") => {
                policy.crash_limit = number(line, "crashloop N", words.next())?;
                policy.crash_window_ms = number(line, "crashloop T_ms", words.next())?;
                if policy.crash_limit == 0 {
                    return Err(error(line, "crashloop N must be at least 1"));
                }
            }
            Some("backoff") => {
                policy.backoff_initial_ms = number(line, "backoff initial_ms", words.next())?;
                policy.backoff_max_ms = number(line, "backoff max_ms", words.next())?;
            }
            Some("confirm") => {
                policy.confirm_settle_ms = number(line, "confirm settle_ms", words.next())?;
            }
            Some(other) => return Err(error(line, alloc::format!("unknown line kind '{other}'"))),
            None => {}
        }
    }

    let mut log_servers = 0;
    for (line, spec) in &services {
        for cap in &spec.caps {
            if !CAPABILITIES.iter().any(|(known, _)| known == cap) {
                return Err(error(*line, alloc::format!("service '{}': unknown capability '{cap}'", spec.name)));
            }
        }
        for dep in &spec.after {
            if dep == &spec.name {
                return Err(error(*line, alloc::format!("service '{}' depends on itself", spec.name)));
            }
            if !services.iter().any(|(_, s)| &s.name == dep) {
                return Err(error(*line, alloc::format!("service '{}': unknown dependency '{dep}'", spec.name)));
            }
        }
        if spec.is_log_server() {
            log_servers += 1;
            if log_servers > 1 {
                return Err(error(*line, alloc::format!("service '{}': only one service may hold logctl", spec.name)));
            }
        }
    }
    let manifest = Manifest { services: services.into_iter().map(|(_, s)| s).collect(), policy };
    crate::order::start_order(&manifest.services).map_err(|e| error(0, alloc::format!("{e}")))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "\
# generated by ./mantra build
service logd program=logd restart=always after= caps=klog,logctl args=
service demo program=demo restart=on-failure after=logd caps= args=count=3,interval_ms=500
service crashy program=crashy restart=always after=logd,demo caps= args=fault=null confirm=no
crashloop 5 10000
backoff 100 5000
confirm 1500
";

    #[test]
    fn parses_the_generated_format() {
        let m = parse(DEFAULT).unwrap();
        assert_eq!(m.services.len(), 3);
        let demo = m.service("demo").unwrap();
        assert_eq!(demo.restart, Restart::OnFailure);
        assert_eq!(demo.after, ["logd"]);
        assert_eq!(demo.args, ["count=3", "interval_ms=500"]);
        assert!(m.service("logd").unwrap().is_log_server());
        assert_eq!(m.log_server(), Some(0));
        assert_eq!(
            m.policy,
            Policy { crash_limit: 5, crash_window_ms: 10_000, backoff_initial_ms: 100, backoff_max_ms: 5_000, confirm_settle_ms: 1_500 }
        );
        assert!(demo.confirm && !m.service("crashy").unwrap().confirm);
    }

    #[test]
    fn keys_are_optional() {
        let m = parse("service a\n").unwrap();
        let a = &m.services[0];
        assert_eq!((a.program.as_str(), a.restart, a.after.len(), a.caps.len(), a.confirm), ("a", Restart::Always, 0, 0, true));
        assert_eq!(m.policy, Policy::default());
    }

    #[test]
    fn errors_name_the_line_and_service() {
        let cases = [
            ("service\n", "init.manifest line 1: service without a name"),
            ("service a b\n", "init.manifest line 1: service 'a': 'b' is not key=value"),
            ("service a color=red\n", "init.manifest line 1: service 'a': unknown key 'color'"),
            ("service a restart=sometimes\n", "init.manifest line 1: service 'a': restart 'sometimes' is not always, on-failure or never"),
            ("service a\nservice a\n", "init.manifest line 2: service 'a' is listed twice"),
            ("service a caps=root\n", "init.manifest line 1: service 'a': unknown capability 'root'"),
            ("\nservice a after=b\n", "init.manifest line 2: service 'a': unknown dependency 'b'"),
            ("service a after=a\n", "init.manifest line 1: service 'a' depends on itself"),
            ("service a caps=logctl\nservice b caps=logctl\n", "init.manifest line 2: service 'b': only one service may hold logctl"),
            ("crashloop x 1\n", "init.manifest line 1: crashloop N must be a number"),
            ("crashloop 0 1\n", "init.manifest line 1: crashloop N must be at least 1"),
            ("service a confirm=maybe\n", "init.manifest line 1: service 'a': confirm 'maybe' is not yes or no"),
            ("confirm soon\n", "init.manifest line 1: confirm settle_ms must be a number"),
            ("reboot now\n", "init.manifest line 1: unknown line kind 'reboot'"),
            ("service a/b\n", "init.manifest line 1: bad service name 'a/b' (1 to 32 letters, digits, '-', '_', '.')"),
            ("service a after=b\nservice b after=a\n", "init.manifest: dependency cycle: a -> b -> a"),
        ];
        for (text, message) in cases {
            assert_eq!(std::format!("{}", parse(text).unwrap_err()), message, "for {text:?}");
        }
    }
}
