//! Redis Cluster's addressing, as pure functions: the hash slot of a key (CRC16/XMODEM
//! modulo 16384, hashing only the `{hash tag}` when the key has a non-empty one), the
//! slot ranges of a `CLUSTER SLOTS` reply, and the `MOVED` / `ASK` redirections.

use super::redis::Value;

/// Number of hash slots.
pub const SLOTS: usize = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses it.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: when it has a `{` followed later by a `}` with at least one byte
/// between them, only the bytes between the first `{` and the first `}` after it count.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS as u16
}

/// Slots `start..=end` served by the master at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub addr: String,
}

/// `host:port`, bracketing an IPv6 host.
pub fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host part of `host:port` / `[v6]:port` (without brackets).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The masters of a `CLUSTER SLOTS` reply asked to the node at `asked_host`: each entry is
/// `[start, end, [ip, port, id, ...], replicas...]`; an empty or `?` ip means the host
/// that was asked.
pub fn parse_slots(v: &Value, asked_host: &str) -> Result<Vec<SlotRange>, String> {
    let Value::Array(entries) = v else {
        return Err("CLUSTER SLOTS: not an array".into());
    };
    let bad = |what: &str| format!("CLUSTER SLOTS: {what}");
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(e) = e else {
            return Err(bad("entry is not an array"));
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (e.first(), e.get(1), e.get(2))
        else {
            return Err(bad("entry is not [start, end, master, ...]"));
        };
        let slot = |n: i64| {
            u16::try_from(n)
                .ok()
                .filter(|s| usize::from(*s) < SLOTS)
                .ok_or_else(|| bad("slot out of range"))
        };
        let (start, end) = (slot(*start)?, slot(*end)?);
        if start > end {
            return Err(bad("range ends before it starts"));
        }
        let (Some(Value::Bytes(ip)), Some(Value::Int(port))) = (master.first(), master.get(1))
        else {
            return Err(bad("master is not [ip, port, ...]"));
        };
        let ip = String::from_utf8_lossy(ip);
        let host = match ip.as_ref() {
            "" | "?" => asked_host,
            h => h,
        };
        out.push(SlotRange {
            start,
            end,
            addr: join_host_port(host, *port),
        });
    }
    Ok(out)
}

/// A redirection in an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `MOVED` (the slot now lives there) rather than `ASK` (this one command only, after
    /// `ASKING`, while the slot migrates).
    pub moved: bool,
    pub slot: u16,
    /// `host:port` of the node to ask; an empty host means the host that was asked.
    pub addr: String,
}

/// Parse `MOVED <slot> <host>:<port>` or `ASK <slot> <host>:<port>`; `None` for any other
/// error.
pub fn parse_redirect(msg: &str, asked_host: &str) -> Option<Redirect> {
    let mut words = msg.split(' ');
    let moved = match words.next()? {
        "MOVED" => true,
        "ASK" => false,
        _ => return None,
    };
    let slot = words
        .next()?
        .parse::<u16>()
        .ok()
        .filter(|s| usize::from(*s) < SLOTS)?;
    let target = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let (host, port) = target.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let host = host.strip_prefix('[').unwrap_or(host);
    let host = host.strip_suffix(']').unwrap_or(host);
    let host = if host.is_empty() { asked_host } else { host };
    Some(Redirect {
        moved,
        slot,
        addr: join_host_port(host, i64::from(port)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_known_keys() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"hello"), 866);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // Only the first `{...}` counts; an empty tag means the whole key.
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"foo{bar"), key_slot(b"foo{bar"));
        assert_eq!(key_slot(b"foo{bar"), crc16(b"foo{bar") % 16384);
    }

    #[test]
    fn limiter_keys_share_their_tag() {
        // cluster.rs and fast.rs derive `<key>:<window>` keys inside their scripts.
        let k = "moat:{rl:0a1b2c3d4e5f:tenant-a}";
        let s = key_slot(k.as_bytes());
        for derived in [format!("{k}:1234"), format!("{k}:1233")] {
            assert_eq!(key_slot(derived.as_bytes()), s);
        }
    }

    fn b(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_reply() {
        let node = |ip: &str, port: i64| Value::Array(vec![b(ip), Value::Int(port), b("id")]);
        let entry = |s: i64, e: i64, m: Value| {
            Value::Array(vec![
                Value::Int(s),
                Value::Int(e),
                m,
                node("10.0.0.9", 7100), // a replica: ignored
            ])
        };
        let v = Value::Array(vec![
            entry(0, 5460, node("127.0.0.1", 7000)),
            entry(5461, 10922, node("", 7001)),
            entry(10923, 16383, node("::1", 7002)),
        ]);
        let r = parse_slots(&v, "10.1.1.1").unwrap();
        let range = |start, end, addr: &str| SlotRange {
            start,
            end,
            addr: addr.into(),
        };
        assert_eq!(
            r,
            [
                range(0, 5460, "127.0.0.1:7000"),
                range(5461, 10922, "10.1.1.1:7001"),
                range(10923, 16383, "[::1]:7002"),
            ]
        );
        assert!(parse_slots(&Value::Int(1), "h").is_err());
        let out_of_range = Value::Array(vec![entry(0, 16384, node("h", 1))]);
        assert!(parse_slots(&out_of_range, "h").is_err());
        let reversed = Value::Array(vec![entry(9, 1, node("h", 1))]);
        assert!(parse_slots(&reversed, "h").is_err());
        assert_eq!(parse_slots(&Value::Array(vec![]), "h").unwrap(), []);
    }

    #[test]
    fn redirects() {
        let r = |moved, slot, addr: &str| {
            Some(Redirect {
                moved,
                slot,
                addr: addr.into(),
            })
        };
        assert_eq!(
            parse_redirect("MOVED 3999 127.0.0.1:6381", "h"),
            r(true, 3999, "127.0.0.1:6381")
        );
        assert_eq!(
            parse_redirect("ASK 12182 10.0.0.2:7002", "h"),
            r(false, 12182, "10.0.0.2:7002")
        );
        assert_eq!(parse_redirect("MOVED 1 :7000", "h"), r(true, 1, "h:7000"));
        assert_eq!(
            parse_redirect("MOVED 1 ::1:7000", "h"),
            r(true, 1, "[::1]:7000")
        );
        for other in [
            "NOSCRIPT No matching script",
            "MOVED",
            "MOVED 16384 h:1",
            "MOVED x h:1",
            "ASK 1 h",
            "ASK 1 h:port",
            "MOVED 1 h:1 extra",
            "CLUSTERDOWN The cluster is down",
        ] {
            assert_eq!(parse_redirect(other, "h"), None, "{other}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(join_host_port("::1", 1), "[::1]:1");
    }
}
