//! The bootstrap message: the first message on a new process's bootstrap
//! channel (contract/USERLAND.md). UTF-8 lines:
//!
//! ```text
//! MANTRA-STARTUP 1
//! handle <name>        one per handle, in the order of the message's handles
//! arg <text>           zero or more, in order
//! restarts <k>         optional: how often the supervisor restarted this service
//! ```
//!
//! Blank lines and lines starting with `#` are ignored, as are lines with an
//! unknown keyword (so newer supervisors can add lines). [`Startup::parse`]
//! reads it for the program; [`StartupBuilder`] writes it (MantraInit).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::handle::{AsHandle, Channel, OwnedHandle};

/// The first line of every bootstrap message.
pub const MAGIC_LINE: &str = "MANTRA-STARTUP 1";

/// Why a bootstrap message was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupError {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The first line is not `MANTRA-STARTUP 1`.
    BadHeader,
    /// Line `line` (1-based) is malformed: a keyword without its value, or
    /// a handle name with blanks.
    BadLine { line: usize },
    /// Two handles share a name.
    DuplicateName(String),
    /// The number of `handle` lines and of handles differ.
    HandleCount { lines: usize, handles: usize },
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::NotUtf8 => write!(f, "bootstrap message is not UTF-8"),
            StartupError::BadHeader => write!(f, "bootstrap message does not start with '{MAGIC_LINE}'"),
            StartupError::BadLine { line } => write!(f, "bootstrap message line {line} is malformed"),
            StartupError::DuplicateName(name) => write!(f, "bootstrap message names handle '{name}' twice"),
            StartupError::HandleCount { lines, handles } => {
                write!(f, "bootstrap message has {lines} handle lines but {handles} handles")
            }
        }
    }
}

/// A valid handle name: non-empty, printable ASCII without blanks.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic())
}

/// What a process received at start: named handles and arguments.
#[derive(Debug, Default)]
pub struct Startup {
    handles: Vec<(String, Option<OwnedHandle>)>,
    args: Vec<String>,
    restarts: u32,
    bootstrap: Option<Channel>,
}

impl Startup {
    /// Parses a bootstrap message; `handles` are the message's handles, in order.
    pub fn parse(bytes: &[u8], handles: Vec<OwnedHandle>) -> Result<Startup, StartupError> {
        let text = core::str::from_utf8(bytes).map_err(|_| StartupError::NotUtf8)?;
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        if lines.next() != Some(MAGIC_LINE) {
            return Err(StartupError::BadHeader);
        }
        let mut names: Vec<String> = Vec::new();
        let mut args = Vec::new();
        let mut restarts = 0;
        for (index, line) in lines.enumerate() {
            let number = index + 2;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
            match keyword {
                "handle" => {
                    if !valid_name(rest) {
                        return Err(StartupError::BadLine { line: number });
                    }
                    if names.iter().any(|n| n == rest) {
                        return Err(StartupError::DuplicateName(rest.to_string()));
                    }
                    names.push(rest.to_string());
                }
                "arg" => args.push(rest.to_string()),
                "restarts" => restarts = rest.trim().parse().map_err(|_| StartupError::BadLine { line: number })?,
                _ => {} // a newer supervisor's line: ignore
            }
        }
        if names.len() != handles.len() {
            return Err(StartupError::HandleCount { lines: names.len(), handles: handles.len() });
        }
        Ok(Startup {
            handles: names.into_iter().zip(handles.into_iter().map(Some)).collect(),
            args,
            restarts,
            bootstrap: None,
        })
    }

    /// Takes the handle named `name` (once: later calls return `None`).
    pub fn take(&mut self, name: &str) -> Option<OwnedHandle> {
        self.handles.iter_mut().find(|(n, _)| n == name).and_then(|(_, h)| h.take())
    }

    /// Takes the handle named `name` as a typed object.
    pub fn take_as<T: From<OwnedHandle>>(&mut self, name: &str) -> Option<T> {
        self.take(name).map(T::from)
    }

    /// Whether a handle named `name` came (taken or not).
    pub fn has(&self, name: &str) -> bool {
        self.handles.iter().any(|(n, _)| n == name)
    }

    /// The raw value of the handle named `name` while it is not taken.
    pub fn peek(&self, name: &str) -> Option<mantra_abi::Handle> {
        self.handles.iter().find(|(n, _)| n == name).and_then(|(_, h)| h.as_ref().map(AsHandle::raw))
    }

    /// Names of every handle received, in message order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.handles.iter().map(|(n, _)| n.as_str())
    }

    /// The arguments, in order.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Argument `index`.
    pub fn arg(&self, index: usize) -> Option<&str> {
        self.args.get(index).map(String::as_str)
    }

    /// The value of the first `key=value` argument with this key.
    pub fn arg_value(&self, key: &str) -> Option<&str> {
        self.args.iter().find_map(|a| a.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }

    /// Every value of `key=value` arguments with this key, in order.
    pub fn arg_values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.args.iter().filter_map(move |a| a.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }

    /// Whether the bare argument `flag` was given.
    pub fn flag(&self, flag: &str) -> bool {
        self.args.iter().any(|a| a == flag)
    }

    /// How often the supervisor restarted this service (0: first start).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The bootstrap channel the message came on (kept open by the runtime).
    pub fn bootstrap(&self) -> Option<&Channel> {
        self.bootstrap.as_ref()
    }

    #[cfg_attr(not(target_os = "none"), allow(dead_code))]
    pub(crate) fn set_bootstrap(&mut self, channel: Channel) {
        self.bootstrap = Some(channel);
    }
}

/// Why a bootstrap message could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    BadName(String),
    DuplicateName(String),
    /// Arguments cannot contain a line break.
    BadArg(String),
    TooManyHandles,
}

/// Writes a bootstrap message (MantraInit's side).
#[derive(Debug, Default)]
pub struct StartupBuilder {
    names: Vec<String>,
    handles: Vec<OwnedHandle>,
    args: Vec<String>,
    restarts: u32,
}

impl StartupBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the handle `handle` under `name`.
    pub fn handle(&mut self, name: &str, handle: OwnedHandle) -> Result<&mut Self, BuildError> {
        if !valid_name(name) {
            return Err(BuildError::BadName(name.to_string()));
        }
        if self.names.iter().any(|n| n == name) {
            return Err(BuildError::DuplicateName(name.to_string()));
        }
        if self.handles.len() >= mantra_abi::MAX_MESSAGE_HANDLES {
            return Err(BuildError::TooManyHandles);
        }
        self.names.push(name.to_string());
        self.handles.push(handle);
        Ok(self)
    }

    pub fn arg(&mut self, arg: &str) -> Result<&mut Self, BuildError> {
        if arg.contains(['\n', '\r']) {
            return Err(BuildError::BadArg(arg.to_string()));
        }
        self.args.push(arg.to_string());
        Ok(self)
    }

    pub fn restarts(&mut self, restarts: u32) -> &mut Self {
        self.restarts = restarts;
        self
    }

    /// The message text (without the handles).
    pub fn text(&self) -> String {
        let mut text = String::from(MAGIC_LINE);
        text.push('\n');
        for name in &self.names {
            text.push_str("handle ");
            text.push_str(name);
            text.push('\n');
        }
        for arg in &self.args {
            text.push_str("arg ");
            text.push_str(arg);
            text.push('\n');
        }
        if self.restarts != 0 {
            text.push_str("restarts ");
            text.push_str(&self.restarts.to_string());
            text.push('\n');
        }
        text
    }

    /// The message: its bytes and its handles, in the order of the lines.
    pub fn finish(self) -> (Vec<u8>, Vec<OwnedHandle>) {
        (self.text().into_bytes(), self.handles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mantra_abi::Handle;

    fn owned(values: &[u32]) -> Vec<OwnedHandle> {
        values.iter().map(|&v| OwnedHandle::from_raw(Handle(v))).collect()
    }

    fn release(handle: Option<OwnedHandle>) -> Option<Handle> {
        handle.map(OwnedHandle::into_raw)
    }

    #[test]
    fn parses_the_kernel_message_for_init() {
        let text = "MANTRA-STARTUP 1\nhandle self\nhandle space\nhandle bootfs\nhandle log\nhandle klog\n";
        let mut startup = Startup::parse(text.as_bytes(), owned(&[1, 2, 3, 4, 5])).unwrap();
        assert_eq!(startup.names().collect::<Vec<_>>(), ["self", "space", "bootfs", "log", "klog"]);
        assert_eq!(startup.peek("bootfs"), Some(Handle(3)));
        assert_eq!(release(startup.take("log")), Some(Handle(4)));
        assert_eq!(release(startup.take("log")), None, "a handle is taken once");
        assert!(startup.has("log"));
        assert_eq!(startup.restarts(), 0);
        for name in ["self", "space", "bootfs", "klog"] {
            startup.take(name).unwrap().into_raw();
        }
    }

    #[test]
    fn args_flags_and_restarts() {
        let text = "MANTRA-STARTUP 1\n# comment\n\narg fault=null\narg fault=divide\narg verbose\narg two words\nrestarts 3\nfuture thing\n";
        let startup = Startup::parse(text.as_bytes(), Vec::new()).unwrap();
        assert_eq!(startup.args(), ["fault=null", "fault=divide", "verbose", "two words"]);
        assert_eq!(startup.arg_value("fault"), Some("null"));
        assert_eq!(startup.arg_values("fault").collect::<Vec<_>>(), ["null", "divide"]);
        assert!(startup.flag("verbose") && !startup.flag("fault"));
        assert_eq!(startup.arg(3), Some("two words"));
        assert_eq!(startup.restarts(), 3);
    }

    #[test]
    fn refuses_malformed_messages() {
        let parse = |text: &str, handles: &[u32]| {
            let result = Startup::parse(text.as_bytes(), owned(handles));
            result.map(|s| s.handles.into_iter().for_each(|(_, h)| { release(h); })).unwrap_err()
        };
        assert_eq!(parse("MANTRA-STARTUP 2\n", &[]), StartupError::BadHeader);
        assert_eq!(parse("", &[]), StartupError::BadHeader);
        assert_eq!(parse("MANTRA-STARTUP 1\nhandle\n", &[1]), StartupError::BadLine { line: 2 });
        assert_eq!(parse("MANTRA-STARTUP 1\nhandle a b\n", &[1]), StartupError::BadLine { line: 2 });
        assert_eq!(parse("MANTRA-STARTUP 1\nrestarts x\n", &[]), StartupError::BadLine { line: 2 });
        assert_eq!(
            parse("MANTRA-STARTUP 1\nhandle a\nhandle a\n", &[1, 2]),
            StartupError::DuplicateName("a".into())
        );
        assert_eq!(parse("MANTRA-STARTUP 1\nhandle a\n", &[]), StartupError::HandleCount { lines: 1, handles: 0 });
        assert_eq!(Startup::parse(&[0xff, 0xfe], Vec::new()).unwrap_err(), StartupError::NotUtf8);
    }

    #[test]
    fn builder_round_trips() {
        let mut builder = StartupBuilder::new();
        builder.handle("self", OwnedHandle::from_raw(Handle(7))).unwrap();
        builder.handle("log", OwnedHandle::from_raw(Handle(8))).unwrap();
        builder.arg("interval_ms=500").unwrap().arg("x y").unwrap();
        builder.restarts(2);
        assert_eq!(builder.handle("log", OwnedHandle::from_raw(Handle(9))).unwrap_err(), BuildError::DuplicateName("log".into()));
        assert_eq!(builder.handle("a b", OwnedHandle::from_raw(Handle(9))).unwrap_err(), BuildError::BadName("a b".into()));
        assert!(builder.arg("two\nlines").is_err());
        let (bytes, handles) = builder.finish();
        assert_eq!(
            core::str::from_utf8(&bytes).unwrap(),
            "MANTRA-STARTUP 1\nhandle self\nhandle log\narg interval_ms=500\narg x y\nrestarts 2\n"
        );
        let mut startup = Startup::parse(&bytes, handles).unwrap();
        assert_eq!(release(startup.take("log")), Some(Handle(8)));
        assert_eq!(release(startup.take("self")), Some(Handle(7)));
        assert_eq!(startup.args(), ["interval_ms=500", "x y"]);
        assert_eq!(startup.restarts(), 2);
    }
}
