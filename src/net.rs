//! IP networks (CIDR) and sets of them, for `trusted_proxies` and `ip_filter`.
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are matched as the IPv4 address they carry.

use std::net::IpAddr;

/// Append `ip` as text (as `Display` writes it); IPv4 digits are written by hand, which
/// costs a fraction of the formatting machinery (once or more per request).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// One network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: u128,
    mask: u128,
    v4: bool,
}

impl Cidr {
    /// Parse `a.b.c.d/n`, `x::y/n` or a bare address (a host network). Host bits set
    /// below the prefix are an error, since they are almost always a typo.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))?;
        let ip = canonical(ip);
        let (bits, max) = match ip {
            IpAddr::V4(v4) => (u32::from(v4) as u128, 32u32),
            IpAddr::V6(v6) => (u128::from(v6), 128u32),
        };
        let len: u32 = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}` has a prefix length outside 0..={max}"))?,
        };
        let mask = if len == 0 {
            0
        } else {
            (u128::MAX << (max - len))
                & (if max == 32 {
                    u32::MAX as u128
                } else {
                    u128::MAX
                })
        };
        if bits
            & !mask
            & (if max == 32 {
                u32::MAX as u128
            } else {
                u128::MAX
            })
            != 0
        {
            return Err(format!(
                "`{s}` has bits set below its /{len} prefix; write the network address"
            ));
        }
        Ok(Cidr {
            addr: bits,
            mask,
            v4: max == 32,
        })
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(v4) => self.v4 && (u32::from(v4) as u128) & self.mask == self.addr,
            IpAddr::V6(v6) => !self.v4 && u128::from(v6) & self.mask == self.addr,
        }
    }
}

/// An IPv4-mapped IPv6 address becomes the IPv4 address; others are unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// A list of networks; membership is a linear scan (lists here are short).
#[derive(Debug, Clone, Default)]
pub struct CidrSet(Vec<Cidr>);

impl CidrSet {
    /// Parse every entry, returning `(index, message)` for each one that fails.
    pub fn parse(items: &[String]) -> Result<CidrSet, Vec<(usize, String)>> {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for (i, s) in items.iter().enumerate() {
            match Cidr::parse(s) {
                Ok(c) => out.push(c),
                Err(e) => errs.push((i, e)),
            }
        }
        if errs.is_empty() {
            Ok(CidrSet(out))
        } else {
            Err(errs)
        }
    }

    /// Whether any network contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// True when the set has no networks.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_and_v6() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains(ip("127.1.2.3")));
        assert!(c.contains(ip("::ffff:127.0.0.1")));
        assert!(!c.contains(ip("128.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains(ip("2001:db8::7")));
        assert!(!c.contains(ip("2001:db9::7")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::2")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::2")));
        assert!(Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.1")));
        assert!(!Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.2")));
    }

    #[test]
    fn rejects() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "300.0.0.0/8",
            "abc",
            "::1/129",
            "10.0.0.0/x",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
