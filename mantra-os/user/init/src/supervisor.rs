//! The restart policy: what MantraInit does when a service exits, and the
//! console lines it prints (tests read them).
//!
//! - A *crash* is an exit with a non-zero code or a CPU fault, or a failed
//!   start. `exit(0)` is not a crash.
//! - `restart=always` restarts after every exit, `on-failure` after crashes
//!   only, `never` never.
//! - Crashes are counted in a sliding window of `crash_window_ms`; the
//!   `k`-th crash in the window waits `backoff_initial_ms * 2^(k-1)` (at most
//!   `backoff_max_ms`) before the restart, so a service that crashes rarely
//!   restarts quickly and one that keeps crashing slows down.
//! - The `crash_limit`-th crash within the window marks the service
//!   *failed*: it is not restarted again, and the others keep running.
//!
//! - Health, for the boot confirmation ([`Supervisor::health`]): a service
//!   counts unless its manifest line says `confirm=no`. It is *healthy*
//!   when it has run for `confirm_settle_ms` since its last start without
//!   exiting, or when it exited with code 0 and its restart policy keeps it
//!   down (`on-failure`, `never`: it did its job). It is *failed* when
//!   init gave up on it (crash loop, program missing) or it stopped after
//!   a crash. The boot is healthy when every counted service is healthy.
//!
//! Times are nanoseconds of the monotonic clock (CLOCK_GET).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use mantra_rt::exit::ExitStatus;

use crate::manifest::{Policy, Restart, ServiceSpec};

const NS_PER_MS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not started yet, or due to start now.
    Idle,
    Running,
    /// Exited; restarts at `at`.
    Waiting { at: u64 },
    /// Exited and not restarted (its policy says so).
    Stopped,
    /// Crash loop: given up on.
    Failed,
}

/// What happens after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Restart after `delay_ms`; `crash` is the crash's number in the
    /// window (None for a clean exit under `restart=always`).
    Restart { delay_ms: u64, crash: Option<u32> },
    /// Not restarted: the restart policy does not ask for it.
    Stop,
    /// The crash-loop limit was reached: `crashes` within the window.
    Failed { crashes: u32 },
}

#[derive(Clone, Debug)]
struct Tracked {
    restart: Restart,
    /// Times of the crashes inside the current window, oldest first.
    crashes: Vec<u64>,
    restarts: u32,
    state: State,
    /// When it was last started.
    since: u64,
    /// It stopped (not restarted) after a clean exit.
    clean_stop: bool,
    /// It counts for the boot confirmation.
    confirm: bool,
}

/// Whether the services that count are healthy (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not yet: ask again at `until` (None: only after the next exit or start).
    Waiting { until: Option<u64> },
    /// This service failed: the boot is not confirmed.
    Failed { service: usize },
}

pub struct Supervisor {
    policy: Policy,
    services: Vec<Tracked>,
}

impl Supervisor {
    pub fn new(policy: Policy, specs: &[ServiceSpec]) -> Self {
        let services = specs
            .iter()
            .map(|s| Tracked {
                restart: s.restart,
                crashes: Vec::new(),
                restarts: 0,
                state: State::Idle,
                since: 0,
                clean_stop: false,
                confirm: s.confirm,
            })
            .collect();
        Self { policy, services }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn state(&self, service: usize) -> State {
        self.services[service].state
    }

    /// How often `service` was restarted (what its bootstrap message says).
    pub fn restarts(&self, service: usize) -> u32 {
        self.services[service].restarts
    }

    /// Crashes of `service` inside the window (as of its last crash).
    pub fn crashes(&self, service: usize) -> u32 {
        self.services[service].crashes.len() as u32
    }

    /// The backoff before the restart that follows the `crash`-th crash.
    pub fn backoff_ms(&self, crash: u32) -> u64 {
        let doublings = crash.saturating_sub(1).min(63);
        self.policy
            .backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.policy.backoff_max_ms.max(self.policy.backoff_initial_ms))
    }

    /// `service` is running since `now`.
    pub fn started(&mut self, service: usize, now: u64) {
        let tracked = &mut self.services[service];
        tracked.state = State::Running;
        tracked.since = now;
    }

    /// The health of the services that count, at `now`.
    pub fn health(&self, now: u64) -> Health {
        let settle = self.policy.confirm_settle_ms.saturating_mul(NS_PER_MS);
        let mut until: Option<u64> = None;
        let mut waiting = false;
        for (i, t) in self.services.iter().enumerate().filter(|(_, t)| t.confirm) {
            match t.state {
                State::Failed => return Health::Failed { service: i },
                State::Stopped if !t.clean_stop => return Health::Failed { service: i },
                State::Stopped => {}
                State::Running => {
                    let at = t.since.saturating_add(settle);
                    if at > now {
                        waiting = true;
                        until = Some(until.map_or(at, |u| u.min(at)));
                    }
                }
                State::Idle | State::Waiting { .. } => waiting = true,
            }
        }
        if waiting {
            Health::Waiting { until }
        } else {
            Health::Healthy
        }
    }

    /// `service` exited with `status` at `now`.
    pub fn exited(&mut self, service: usize, status: ExitStatus, now: u64) -> Outcome {
        let crashed = status.is_failure();
        let wants_restart = match self.services[service].restart {
            Restart::Always => true,
            Restart::OnFailure => crashed,
            Restart::Never => false,
        };
        if !crashed {
            let tracked = &mut self.services[service];
            if !wants_restart {
                tracked.state = State::Stopped;
                tracked.clean_stop = true;
                return Outcome::Stop;
            }
            let delay_ms = self.policy.backoff_initial_ms;
            self.services[service].state = State::Waiting { at: now.saturating_add(delay_ms * NS_PER_MS) };
            return Outcome::Restart { delay_ms, crash: None };
        }
        let crashes = self.record_crash(service, now);
        if crashes >= self.policy.crash_limit {
            self.services[service].state = State::Failed;
            return Outcome::Failed { crashes };
        }
        if !wants_restart {
            self.services[service].state = State::Stopped;
            self.services[service].clean_stop = false;
            return Outcome::Stop;
        }
        let delay_ms = self.backoff_ms(crashes);
        self.services[service].state = State::Waiting { at: now.saturating_add(delay_ms * NS_PER_MS) };
        Outcome::Restart { delay_ms, crash: Some(crashes) }
    }

    /// Starting `service` failed at `now` (counts as a crash; a service
    /// with `restart=never` is not tried again).
    pub fn start_failed(&mut self, service: usize, now: u64) -> Outcome {
        self.exited(service, ExitStatus::Code(-1), now)
    }

    /// `service` cannot ever start (e.g. its program is missing).
    pub fn give_up(&mut self, service: usize) {
        self.services[service].state = State::Failed;
    }

    fn record_crash(&mut self, service: usize, now: u64) -> u32 {
        let window = self.policy.crash_window_ms.saturating_mul(NS_PER_MS);
        let crashes = &mut self.services[service].crashes;
        crashes.retain(|&t| now.saturating_sub(t) < window);
        crashes.push(now);
        crashes.len() as u32
    }

    /// Services whose restart time has come (they become `Idle`, and count
    /// one more restart); the caller starts them.
    pub fn take_due(&mut self, now: u64) -> Vec<usize> {
        let mut due = vec![];
        for (i, tracked) in self.services.iter_mut().enumerate() {
            if let State::Waiting { at } = tracked.state {
                if at <= now {
                    tracked.state = State::Idle;
                    tracked.restarts += 1;
                    due.push(i);
                }
            }
        }
        due
    }

    /// The earliest pending restart.
    pub fn next_deadline(&self) -> Option<u64> {
        self.services
            .iter()
            .filter_map(|t| match t.state {
                State::Waiting { at } => Some(at),
                _ => None,
            })
            .min()
    }
}

/// `init: started <name> (koid N)`.
pub fn started_line(name: &str, koid: u64) -> String {
    format!("init: started {name} (koid {koid})")
}

/// The console lines for an exit and its outcome.
pub fn exit_lines(name: &str, status: ExitStatus, outcome: Outcome, policy: Policy, restart: Restart) -> Vec<String> {
    exit_or_start_lines(name, &format!("exited ({status})"), outcome, policy, restart)
}

/// The console lines for a failed start (`error` says why).
pub fn start_failed_lines(name: &str, error: &str, outcome: Outcome, policy: Policy, restart: Restart) -> Vec<String> {
    exit_or_start_lines(name, &format!("failed to start: {error}"), outcome, policy, restart)
}

fn exit_or_start_lines(name: &str, what: &str, outcome: Outcome, policy: Policy, restart: Restart) -> Vec<String> {
    match outcome {
        Outcome::Restart { delay_ms, crash: Some(k) } => {
            vec![format!("init: {name} {what}; restarting in {delay_ms} ms (crash {k} of {})", policy.crash_limit)]
        }
        Outcome::Restart { delay_ms, crash: None } => vec![format!("init: {name} {what}; restarting in {delay_ms} ms")],
        Outcome::Stop => vec![format!("init: {name} {what}; not restarting (restart={})", restart.name())],
        Outcome::Failed { crashes } => vec![
            format!("init: {name} {what}; crash {crashes} of {}", policy.crash_limit),
            format!(
                "init: {name} failed: crash loop ({crashes} crashes in {} ms); not restarting",
                policy.crash_window_ms
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const MS: u64 = NS_PER_MS;

    fn spec(name: &str, restart: Restart) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            program: name.to_string(),
            restart,
            after: Vec::new(),
            caps: Vec::new(),
            args: Vec::new(),
            confirm: true,
        }
    }

    fn policy() -> Policy {
        Policy { crash_limit: 5, crash_window_ms: 10_000, backoff_initial_ms: 100, backoff_max_ms: 1_000, confirm_settle_ms: 1_000 }
    }

    #[test]
    fn health_waits_for_the_settle_time_and_ignores_excluded_services() {
        let mut crashy = spec("crashy", Restart::Always);
        crashy.confirm = false;
        let specs = [spec("logd", Restart::Always), spec("demo", Restart::OnFailure), crashy];
        let mut sup = Supervisor::new(policy(), &specs);
        assert_eq!(sup.health(0), Health::Waiting { until: None }, "nothing started yet");
        sup.started(0, 0);
        sup.started(1, 10 * MS);
        sup.started(2, 10 * MS);
        assert_eq!(sup.health(500 * MS), Health::Waiting { until: Some(1_000 * MS) });
        assert_eq!(sup.health(1_000 * MS), Health::Waiting { until: Some(1_010 * MS) });
        // demo exits cleanly and stays down (on-failure): that is healthy.
        assert_eq!(sup.exited(1, ExitStatus::Code(0), 900 * MS), Outcome::Stop);
        // crashy crashes until it is failed: it does not count.
        for k in 0..5 {
            sup.started(2, (20 + k) * MS);
            sup.exited(2, FAULT, (20 + k) * MS);
        }
        assert_eq!(sup.state(2), State::Failed);
        assert_eq!(sup.health(1_000 * MS), Health::Healthy);
        // logd crashes and is restarted: it must settle again.
        assert!(matches!(sup.exited(0, FAULT, 1_100 * MS), Outcome::Restart { .. }));
        assert_eq!(sup.health(1_150 * MS), Health::Waiting { until: None });
        sup.take_due(2_000 * MS);
        sup.started(0, 2_000 * MS);
        assert_eq!(sup.health(2_500 * MS), Health::Waiting { until: Some(3_000 * MS) });
        assert_eq!(sup.health(3_000 * MS), Health::Healthy);
    }

    #[test]
    fn a_failed_or_crashed_and_stopped_service_fails_the_health_check() {
        let specs = [spec("a", Restart::Always), spec("n", Restart::Never)];
        let mut sup = Supervisor::new(Policy { crash_limit: 2, ..policy() }, &specs);
        sup.started(0, 0);
        sup.started(1, 0);
        sup.exited(1, ExitStatus::Code(3), 5 * MS);
        assert_eq!(sup.health(10_000 * MS), Health::Failed { service: 1 });
        let mut sup = Supervisor::new(Policy { crash_limit: 2, ..policy() }, &specs);
        sup.started(1, 0);
        sup.started(0, 0);
        sup.exited(0, FAULT, 1);
        sup.started(0, 2);
        assert_eq!(sup.exited(0, FAULT, 3), Outcome::Failed { crashes: 2 });
        assert_eq!(sup.health(10_000 * MS), Health::Failed { service: 0 });
    }

    const FAULT: ExitStatus = ExitStatus::Fault { vector: 14 };

    #[test]
    fn backoff_doubles_up_to_the_maximum_then_the_crash_loop_stops_it() {
        let mut sup = Supervisor::new(policy(), &[spec("crashy", Restart::Always)]);
        let mut now = 0;
        let mut delays = vec![];
        for _ in 0..4 {
            sup.started(0, now);
            match sup.exited(0, FAULT, now) {
                Outcome::Restart { delay_ms, crash: Some(_) } => delays.push(delay_ms),
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(sup.take_due(now + delays.last().unwrap() * MS - 1), Vec::<usize>::new());
            now = sup.next_deadline().unwrap();
            assert_eq!(sup.take_due(now), [0]);
        }
        assert_eq!(delays, [100, 200, 400, 800]);
        assert_eq!(sup.restarts(0), 4);
        sup.started(0, now);
        assert_eq!(sup.exited(0, FAULT, now), Outcome::Failed { crashes: 5 });
        assert_eq!(sup.state(0), State::Failed);
        assert_eq!(sup.next_deadline(), None);
        assert_eq!(sup.backoff_ms(9), 1_000);
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let mut sup = Supervisor::new(policy(), &[spec("flaky", Restart::Always)]);
        for round in 0..20u64 {
            sup.started(0, round * 6_000 * MS);
            // One crash every 6 s: never more than 2 in a 10 s window.
            let outcome = sup.exited(0, ExitStatus::Code(3), round * 6_000 * MS);
            let expected_crash = if round == 0 { 1 } else { 2 };
            assert_eq!(outcome, Outcome::Restart { delay_ms: 100 << (expected_crash - 1), crash: Some(expected_crash) });
            let at = sup.next_deadline().unwrap();
            sup.take_due(at);
        }
    }

    #[test]
    fn restart_policies() {
        let specs = [spec("a", Restart::Always), spec("f", Restart::OnFailure), spec("n", Restart::Never)];
        let mut sup = Supervisor::new(policy(), &specs);
        for i in 0..3 {
            sup.started(i, 0);
        }
        assert_eq!(sup.exited(0, ExitStatus::Code(0), 0), Outcome::Restart { delay_ms: 100, crash: None });
        assert_eq!(sup.exited(1, ExitStatus::Code(0), 0), Outcome::Stop);
        assert_eq!(sup.state(1), State::Stopped);
        assert_eq!(sup.exited(2, FAULT, 0), Outcome::Stop);
        assert_eq!(sup.crashes(2), 1);
        sup.started(1, 0);
        assert_eq!(sup.exited(1, ExitStatus::Code(1), 0), Outcome::Restart { delay_ms: 100, crash: Some(1) });
        // Clean exits never count as crashes.
        assert_eq!(sup.crashes(0), 0);
    }

    #[test]
    fn failed_starts_count_as_crashes() {
        let mut sup = Supervisor::new(Policy { crash_limit: 2, ..policy() }, &[spec("x", Restart::Always)]);
        assert_eq!(sup.start_failed(0, 0), Outcome::Restart { delay_ms: 100, crash: Some(1) });
        assert_eq!(sup.start_failed(0, 1), Outcome::Failed { crashes: 2 });
    }

    #[test]
    fn console_lines() {
        let p = policy();
        assert_eq!(started_line("demo", 42), "init: started demo (koid 42)");
        assert_eq!(
            exit_lines("crashy", FAULT, Outcome::Restart { delay_ms: 200, crash: Some(2) }, p, Restart::Always),
            ["init: crashy exited (fault page-fault (vector 14)); restarting in 200 ms (crash 2 of 5)"]
        );
        assert_eq!(
            exit_lines("demo", ExitStatus::Code(0), Outcome::Stop, p, Restart::OnFailure),
            ["init: demo exited (code 0); not restarting (restart=on-failure)"]
        );
        assert_eq!(
            exit_lines("a", ExitStatus::Code(0), Outcome::Restart { delay_ms: 100, crash: None }, p, Restart::Always),
            ["init: a exited (code 0); restarting in 100 ms"]
        );
        assert_eq!(
            exit_lines("crashy", ExitStatus::Code(101), Outcome::Failed { crashes: 5 }, p, Restart::Always),
            [
                "init: crashy exited (code 101); crash 5 of 5",
                "init: crashy failed: crash loop (5 crashes in 10000 ms); not restarting",
            ]
        );
        assert_eq!(
            start_failed_lines("x", "NO_MEMORY", Outcome::Restart { delay_ms: 100, crash: Some(1) }, p, Restart::Always),
            ["init: x failed to start: NO_MEMORY; restarting in 100 ms (crash 1 of 5)"]
        );
    }
}
