//! The order in which MantraInit starts services: every service after the
//! services it names in `after`; among those whose dependencies are
//! started, the log server first (so every later service's log channel has
//! a reader), then manifest order. `after` orders starts only: MantraInit
//! does not wait for a service to be ready before starting the next.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::manifest::ServiceSpec;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderError {
    /// A service names a dependency that is not in the manifest.
    UnknownDependency { service: String, dependency: String },
    /// The services form a cycle, e.g. `a -> b -> a`.
    Cycle(Vec<String>),
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderError::UnknownDependency { service, dependency } => {
                write!(f, "service '{service}': unknown dependency '{dependency}'")
            }
            OrderError::Cycle(names) => write!(f, "dependency cycle: {}", names.join(" -> ")),
        }
    }
}

/// Indices of `services` in start order.
pub fn start_order(services: &[ServiceSpec]) -> Result<Vec<usize>, OrderError> {
    let index_of = |name: &str| services.iter().position(|s| s.name == name);
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(services.len());
    for service in services {
        let mut mine = Vec::new();
        for dep in &service.after {
            let at = index_of(dep).ok_or_else(|| OrderError::UnknownDependency {
                service: service.name.clone(),
                dependency: dep.clone(),
            })?;
            mine.push(at);
        }
        deps.push(mine);
    }
    let mut started = alloc::vec![false; services.len()];
    let mut order = Vec::with_capacity(services.len());
    while order.len() < services.len() {
        let ready = |i: &usize| !started[*i] && deps[*i].iter().all(|&d| started[d]);
        let next = (0..services.len())
            .filter(ready)
            .min_by_key(|&i| (!services[i].is_log_server(), i));
        match next {
            Some(i) => {
                started[i] = true;
                order.push(i);
            }
            None => return Err(OrderError::Cycle(find_cycle(services, &deps, &started))),
        }
    }
    Ok(order)
}

/// A cycle among the services not yet started (each of them waits for
/// another one that is not started, so following dependencies must loop).
fn find_cycle(services: &[ServiceSpec], deps: &[Vec<usize>], started: &[bool]) -> Vec<String> {
    let Some(mut at) = (0..services.len()).find(|&i| !started[i]) else { return Vec::new() };
    let mut path: Vec<usize> = Vec::new();
    loop {
        if let Some(pos) = path.iter().position(|&p| p == at) {
            let mut names: Vec<String> = path[pos..].iter().map(|&i| services[i].name.clone()).collect();
            names.push(services[at].name.clone());
            return names;
        }
        path.push(at);
        match deps[at].iter().copied().find(|&d| !started[d]) {
            Some(next) => at = next,
            None => return Vec::new(), // cannot happen: `at` was not ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Restart;
    use alloc::string::ToString;
    use std::vec;

    fn spec(name: &str, after: &[&str], caps: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            program: name.to_string(),
            restart: Restart::Always,
            after: after.iter().map(|s| s.to_string()).collect(),
            caps: caps.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            confirm: true,
        }
    }

    fn names(services: &[ServiceSpec]) -> Vec<&str> {
        start_order(services).unwrap().into_iter().map(|i| services[i].name.as_str()).collect()
    }

    #[test]
    fn dependencies_first_then_manifest_order() {
        let services = [spec("web", &["db", "net"], &[]), spec("db", &["disk"], &[]), spec("net", &[], &[]), spec("disk", &[], &[])];
        assert_eq!(names(&services), ["net", "disk", "db", "web"]);
    }

    #[test]
    fn log_server_starts_first_when_it_can() {
        let services = [spec("demo", &[], &[]), spec("logd", &[], &["klog", "logctl"]), spec("crashy", &[], &[])];
        assert_eq!(names(&services), ["logd", "demo", "crashy"]);
        // ... but not before its own dependencies.
        let services = [spec("store", &[], &[]), spec("logd", &["store"], &["logctl"]), spec("demo", &[], &[])];
        assert_eq!(names(&services), ["store", "logd", "demo"]);
    }

    #[test]
    fn cycles_and_unknown_dependencies_are_errors() {
        let services = [spec("a", &[], &[]), spec("b", &["c"], &[]), spec("c", &["d"], &[]), spec("d", &["b"], &[])];
        assert_eq!(start_order(&services), Err(OrderError::Cycle(vec!["b".into(), "c".into(), "d".into(), "b".into()])));
        assert_eq!(std::format!("{}", start_order(&services).unwrap_err()), "dependency cycle: b -> c -> d -> b");
        let services = [spec("a", &["zz"], &[])];
        assert_eq!(
            start_order(&services),
            Err(OrderError::UnknownDependency { service: "a".into(), dependency: "zz".into() })
        );
    }
}
