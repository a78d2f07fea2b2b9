//! The `X-Forwarded-Port` value of each listener, compiled with the runtime and read by
//! `proxy::forwarding` on every request.

use http::HeaderValue;

/// The `X-Forwarded-Port` value of each listener, built at config load.
#[derive(Debug, Default)]
pub struct ListenerPorts {
    /// The value every connection gets: the listeners' one port, when each listener has a
    /// fixed one.
    only: Option<HeaderValue>,
    /// Each fixed port's value.
    ports: Vec<(u16, HeaderValue)>,
}

impl ListenerPorts {
    /// The ports of `listeners` (port 0, chosen at bind, is learnt per connection).
    pub fn new(listeners: &[crate::config::model::ListenerConfig]) -> ListenerPorts {
        let fixed: Vec<Option<u16>> = listeners
            .iter()
            .map(|l| l.address.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.map(|a| a.port()).filter(|p| *p != 0))
            .collect();
        let mut ports: Vec<(u16, HeaderValue)> = fixed
            .iter()
            .flatten()
            .map(|p| (*p, HeaderValue::from(*p)))
            .collect();
        ports.sort_by_key(|(p, _)| *p);
        ports.dedup_by_key(|(p, _)| *p);
        let only = match ports.as_slice() {
            [(_, v)] if fixed.iter().all(Option::is_some) => Some(v.clone()),
            _ => None,
        };
        ListenerPorts { only, ports }
    }

    /// The value for a connection accepted on local port `local()`. When every listener
    /// has the same fixed port, that is the value and `local` (a `getsockname` on a
    /// connection's first use) is not called. The value is a reference-counted copy (no
    /// allocation) unless the port was chosen at bind.
    pub fn value(&self, local: impl FnOnce() -> Option<u16>) -> Option<HeaderValue> {
        if let Some(only) = &self.only {
            return Some(only.clone());
        }
        let port = local()?;
        Some(match self.ports.iter().find(|(p, _)| *p == port) {
            Some((_, v)) => v.clone(),
            None => HeaderValue::from(port),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_ports() {
        let l = |a: &str| crate::config::model::ListenerConfig {
            name: a.into(),
            address: a.into(),
            redirect_https: None,
            http2: None,
            tls: None,
        };
        let one = ListenerPorts::new(&[l("0.0.0.0:8080")]);
        assert_eq!(
            one.value(|| panic!("not asked")),
            Some(HeaderValue::from_static("8080"))
        );
        let two = ListenerPorts::new(&[l("0.0.0.0:8080"), l("[::]:8443")]);
        assert_eq!(two.value(|| Some(8443)).unwrap(), "8443");
        assert_eq!(two.value(|| Some(9)).unwrap(), "9");
        assert_eq!(two.value(|| None), None);
        assert_eq!(
            ListenerPorts::new(&[l("127.0.0.1:0")])
                .value(|| Some(7))
                .unwrap(),
            "7"
        );
        // A listener whose port is chosen at bind: no shortcut through the other's port.
        let some_fixed = ListenerPorts::new(&[l("127.0.0.1:0"), l("0.0.0.0:8080")]);
        assert_eq!(some_fixed.value(|| Some(7)).unwrap(), "7");
        assert_eq!(some_fixed.value(|| Some(8080)).unwrap(), "8080");
        // One port on several addresses (IPv4 and IPv6) is still one port.
        let same = ListenerPorts::new(&[l("0.0.0.0:8443"), l("[::]:8080"), l("[::]:8443")]);
        assert_eq!(same.value(|| Some(8080)).unwrap(), "8080");
        let dual = ListenerPorts::new(&[l("0.0.0.0:8443"), l("[::]:8443")]);
        assert_eq!(dual.value(|| panic!("not asked")).unwrap(), "8443");
    }
}
