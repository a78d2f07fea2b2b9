//! Redis Cluster's addressing, as pure functions: the hash slot of a key (CRC16/XMODEM
//! from the `crc16` crate, modulo 16384, hashing only the `{hash tag}` when the key has a
//! non-empty one), the slot ranges of a `CLUSTER SLOTS` reply, and the `MOVED` / `ASK`
//! redirections of an error (parsed by the `redis` crate; the host they name is
//! completed here).

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

/// Number of hash slots.
pub const SLOTS: usize = 16384;

/// The slot of `key`: when it has a `{` followed later by a `}` with at least one byte
/// between them, only the bytes between the first `{` and the first `}` after it count.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS as u16
}

/// Slots `start..=end` served by the master at `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub host: String,
    pub port: u16,
}

/// The host part of `host:port` / `[v6]:port` (without brackets).
#[cfg(test)]
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
    if entries.len() > SLOTS {
        return Err(bad("more ranges than slots"));
    }
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
        let ip = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return Err(bad("master is not [ip, port, ...]")),
        };
        let Some(port) = master.get(1).and_then(|p| match p {
            Value::Int(p) => u16::try_from(*p).ok(),
            _ => None,
        }) else {
            return Err(bad("master is not [ip, port, ...]"));
        };
        let host = match ip.as_str() {
            "" | "?" => asked_host.to_string(),
            _ => ip,
        };
        out.push(SlotRange {
            start,
            end,
            host,
            port,
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
    /// The node to ask (an empty host in the reply means the host that was asked).
    pub host: String,
    pub port: u16,
}

/// The `MOVED <slot> <host>:<port>` or `ASK <slot> <host>:<port>` of `e`, asked to a node
/// at `asked_host`; `None` for any other error.
pub fn redirect(e: &RedisError, asked_host: &str) -> Option<Redirect> {
    let moved = match e.kind() {
        ErrorKind::Server(ServerErrorKind::Moved) => true,
        ErrorKind::Server(ServerErrorKind::Ask) => false,
        _ => return None,
    };
    let (target, slot) = e.redirect_node()?;
    if usize::from(slot) >= SLOTS {
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
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_known_keys() {
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
        assert_eq!(key_slot(b"foo{bar"), key_slot(b"foo{bar"));
        assert_ne!(key_slot(b"foo{bar"), key_slot(b"bar"));
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
        Value::BulkString(s.as_bytes().to_vec())
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
        let range = |start, end, host: &str, port| SlotRange {
            start,
            end,
            host: host.into(),
            port,
        };
        assert_eq!(
            r,
            [
                range(0, 5460, "127.0.0.1", 7000),
                range(5461, 10922, "10.1.1.1", 7001),
                range(10923, 16383, "::1", 7002),
            ]
        );
        assert!(parse_slots(&Value::Int(1), "h").is_err());
        let out_of_range = Value::Array(vec![entry(0, 16384, node("h", 1))]);
        assert!(parse_slots(&out_of_range, "h").is_err());
        let reversed = Value::Array(vec![entry(9, 1, node("h", 1))]);
        assert!(parse_slots(&reversed, "h").is_err());
        let bad_port = Value::Array(vec![entry(0, 1, node("h", 70000))]);
        assert!(parse_slots(&bad_port, "h").is_err());
        assert_eq!(parse_slots(&Value::Array(vec![]), "h").unwrap(), []);
        let too_many = Value::Array(vec![entry(0, 0, node("h", 1)); SLOTS + 1]);
        assert_eq!(
            parse_slots(&too_many, "h"),
            Err("CLUSTER SLOTS: more ranges than slots".to_string())
        );
    }

    /// The error the crate makes of the error reply `line`.
    fn error(line: &str) -> RedisError {
        let v = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
        v.extract_error().unwrap_err()
    }

    #[test]
    fn redirects() {
        let r = |moved, slot, host: &str, port| {
            Some(Redirect {
                moved,
                slot,
                host: host.into(),
                port,
            })
        };
        let of = |line: &str| redirect(&error(line), "h");
        assert_eq!(
            of("MOVED 3999 127.0.0.1:6381"),
            r(true, 3999, "127.0.0.1", 6381)
        );
        assert_eq!(
            of("ASK 12182 10.0.0.2:7002"),
            r(false, 12182, "10.0.0.2", 7002)
        );
        assert_eq!(of("MOVED 1 :7000"), r(true, 1, "h", 7000));
        assert_eq!(of("MOVED 1 [::1]:7000"), r(true, 1, "::1", 7000));
        for other in [
            "NOSCRIPT No matching script",
            "MOVED",
            "MOVED 16384 h:1",
            "MOVED x h:1",
            "ASK 1 h",
            "ASK 1 h:port",
            "CLUSTERDOWN The cluster is down",
        ] {
            assert_eq!(of(other), None, "{other}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
    }
}
