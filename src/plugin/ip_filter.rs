//! `ip_filter`: allow and deny CIDR lists (IPv4 and IPv6) on the client IP core resolved
//! (`ctx.client_ip`, i.e. after `trusted_proxies`). Deny wins; with a non-empty `allow`
//! the IP must be in it; a request whose client IP is unknown is refused whenever a list
//! is set. Refusals are 403 `FORBIDDEN`.

use super::{Flow, Phases, Plugin};
use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::IpFilterConfig;
use crate::ctx::RequestCtx;
use crate::net::CidrSet;
use crate::reply::{ErrorCode, Reply};
use async_trait::async_trait;
use pingora_proxy::Session;
use std::net::IpAddr;

/// The compiled plugin.
pub struct IpFilter {
    allow: CidrSet,
    deny: CidrSet,
}

impl IpFilter {
    /// Compile, recording every bad network under `path`.
    pub fn compile(c: &IpFilterConfig, path: &str, errs: &mut ConfigErrors) -> Option<IpFilter> {
        let mut ok = true;
        let mut parse = |k: &str, list: &[String]| match CidrSet::parse(list) {
            Ok(s) => s,
            Err(bad) => {
                for (i, msg) in bad {
                    errs.push(index(&join(path, k), i), msg);
                }
                ok = false;
                CidrSet::default()
            }
        };
        let allow = parse("allow", &c.allow);
        let deny = parse("deny", &c.deny);
        ok.then_some(IpFilter { allow, deny })
    }

    /// Whether `ip` may pass.
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            None => self.allow.is_empty() && self.deny.is_empty(),
            Some(ip) => {
                !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
            }
        }
    }
}

#[async_trait]
impl Plugin for IpFilter {
    fn name(&self) -> &'static str {
        "ip_filter"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn request(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        if self.allows(ctx.client_ip) {
            Flow::Continue
        } else {
            Flow::Reply(Reply::error(
                ErrorCode::Forbidden,
                "access from this address is not allowed",
            ))
        }
    }
}

impl super::CompilePlugin for crate::config::model::IpFilterConfig {
    fn compile_plugin(
        &self,
        here: &str,
        _env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        IpFilter::compile(self, here, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        let c = IpFilterConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        IpFilter::compile(&c, "p", &mut ConfigErrors::default()).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn allow_and_deny_both_ways() {
        let f = filter(&["10.0.0.0/8", "2001:db8::/32"], &["10.6.0.0/16"]);
        assert!(f.allows(ip("10.1.2.3")));
        assert!(!f.allows(ip("10.6.0.1")));
        assert!(!f.allows(ip("192.0.2.1")));
        assert!(f.allows(ip("2001:db8::1")));
        assert!(!f.allows(ip("2001:db9::1")));
        assert!(f.allows(ip("::ffff:10.1.2.3")));
        assert!(!f.allows(None));
        let deny_only = filter(&[], &["203.0.113.0/24", "::1/128"]);
        assert!(deny_only.allows(ip("198.51.100.1")));
        assert!(!deny_only.allows(ip("203.0.113.9")));
        assert!(!deny_only.allows(ip("::1")));
        assert!(filter(&[], &[]).allows(None));
    }

    #[test]
    fn bad_networks_refused() {
        let c = IpFilterConfig {
            allow: vec!["10.0.0.1/8".into()],
            deny: vec!["nope".into()],
        };
        let mut errs = ConfigErrors::default();
        assert!(IpFilter::compile(&c, "p.ip_filter", &mut errs).is_none());
        assert_eq!(errs.0.len(), 2);
        assert_eq!(errs.0[0].path, "p.ip_filter.allow[0]");
    }
}
