//! Before a fresh start (`moat run` without `--upgrade`) takes its sockets: every listener
//! address and the admin address are bound once, the way Pingora will bind them
//! (`SO_REUSEADDR`, no `IPV6_V6ONLY` change), and released at once.
//!
//! Pingora retries a bind that finds the address in use 30 times, a second apart, then
//! panics inside a task while the process stays up; an address it may not bind (a port
//! below 1024 without the capability) fails in the same task. Checked here first, either
//! makes `moat run` exit 1 at once with the address, the config key naming it and the
//! operating system's error. With `--upgrade` the sockets come from the running instance,
//! so nothing is bound and nothing is checked.

use crate::config::Config;
use std::net::TcpListener;

/// Bind every address `cfg` listens on (all at once, then release them): `Ok`, or one line
/// per address that cannot be bound, naming its config key, the address and the error.
pub fn check(cfg: &Config) -> Result<(), String> {
    let mut wanted: Vec<(String, &str)> = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                format!("listeners[{i}].address ({})", l.name),
                l.address.as_str(),
            )
        })
        .collect();
    if let Some(a) = &cfg.admin {
        wanted.push(("admin.address".to_string(), a.address.as_str()));
    }
    let mut held = Vec::with_capacity(wanted.len());
    let mut errors = Vec::new();
    for (key, address) in wanted {
        match TcpListener::bind(address) {
            Ok(l) => held.push(l),
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (another process listens there; to replace a running moat without \
                     dropping connections use `moat run --upgrade`)"
                } else {
                    ""
                };
                errors.push(format!("{key}: cannot listen on {address}: {e}{hint}"));
            }
        }
    }
    drop(held);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, admin: &str) -> Config {
        let text = format!(
            "listeners:\n  - {{ name: public, address: \"{listen}\" }}\nadmin:\n  address: \"{admin}\"\n"
        );
        crate::config::load::parse(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn free_addresses_pass_and_stay_free() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let cfg = config(&format!("127.0.0.1:{port}"), "127.0.0.1:0");
        assert_eq!(check(&cfg), Ok(()));
        // Released: the address can be bound again at once.
        TcpListener::bind(("127.0.0.1", port)).expect("released");
    }

    #[test]
    fn an_address_in_use_is_named_with_its_key_and_the_os_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = check(&config(&addr, &addr)).unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(
            lines[0].starts_with(&format!(
                "listeners[0].address (public): cannot listen on {addr}: "
            )),
            "{e}"
        );
        assert!(
            lines[1].starts_with("admin.address: cannot listen on"),
            "{e}"
        );
        assert!(e.contains("in use"), "{e}");
        assert!(e.contains("moat run --upgrade"), "{e}");
    }
}
