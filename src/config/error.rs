//! Config errors: every problem found, each with the path of the key it concerns
//! (`routes[2].plugins[0].rate_limit.rate`), so one `moat check` shows them all.

use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: a dotted path with `[i]` for list items; empty for the whole file.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The sections of a config file, in the reference file's order.
pub const SECTIONS: [&str; 11] = [
    "server",
    "listeners",
    "admin",
    "access_log",
    "redis",
    "watch",
    "upstreams",
    "consumers",
    "jwt_providers",
    "global_plugins",
    "routes",
];

/// Every problem found in a config; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Record a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The point reached so far, to ask later ([`ConfigErrors::clean_since`]) whether a
    /// step recorded anything.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint(self.0.len())
    }

    /// True when nothing was recorded since `at`.
    pub fn clean_since(&self, at: Checkpoint) -> bool {
        self.0.len() == at.0
    }

    /// True when an error was recorded at `path` or under it (`path.key`, `path[i]`).
    pub fn any_under(&self, path: &str) -> bool {
        self.0.iter().any(|e| {
            e.path
                .strip_prefix(path)
                .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
        })
    }

    /// Put the errors in the order of their paths: by section (in the reference file's
    /// order), list items by index, and under one key its children in the order their
    /// first error was found; errors at the same path keep the order found. So the
    /// passes that check a section and the steps that build it may run at different
    /// times: an upstream's check errors and its DNS errors still come target by target.
    pub fn sort_by_file_order(&mut self) {
        let keys = path_order(self.0.iter().map(|e| e.path.as_str()));
        let mut keyed: Vec<_> = keys.into_iter().zip(self.0.drain(..)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        self.0 = keyed.into_iter().map(|(_, e)| e).collect();
    }

    /// `Ok(v)` when nothing was recorded, else all the errors.
    pub fn into_result<T>(self, v: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(v)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A point in a [`ConfigErrors`] list (see [`ConfigErrors::checkpoint`]).
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint(usize);

/// Join a parent path and a child key.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Join a parent path and a list index.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// One step of a path: a key (`.name`, the section first), a list index (`[i]`) or the
/// end of the path (an error about the key itself).
#[derive(PartialEq, Eq, Hash, Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index,
    End,
}

/// The steps of `path` after its section: each with the length of the path before it
/// and the list index (0 for keys).
fn steps(path: &str) -> Vec<(usize, Step<'_>, usize)> {
    let head = SECTIONS
        .iter()
        .find(|s| {
            path.strip_prefix(**s)
                .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
        })
        .map_or(path.len(), |s| s.len());
    let mut out = vec![(0, Step::Key(&path[..head]), 0)];
    let mut at = head;
    while at < path.len() {
        let rest = &path[at..];
        let index = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(n, _)| Some((n.len() + 2, n.parse::<usize>().ok()?)));
        if let Some((len, i)) = index {
            out.push((at, Step::Index, i));
            at += len;
            continue;
        }
        let key_end = rest[1..].find(['.', '[']).map_or(rest.len(), |e| e + 1);
        out.push((at, Step::Key(&rest[1..key_end]), 0));
        at += key_end;
    }
    out.push((at, Step::End, 0));
    out
}

/// A sort key for each path (see [`ConfigErrors::sort_by_file_order`]): per step, the
/// rank of the step among its siblings (sections by [`SECTIONS`], others by first
/// appearance; all list items share one rank) and the list index.
fn path_order<'a>(paths: impl Iterator<Item = &'a str>) -> Vec<Vec<(usize, usize)>> {
    use std::collections::HashMap;
    let mut ranks: HashMap<(&str, Step<'_>), usize> = HashMap::new();
    let mut children: HashMap<&str, usize> = HashMap::new();
    paths
        .map(|path| {
            steps(path)
                .into_iter()
                .map(|(before, step, i)| {
                    let parent = &path[..before];
                    let section = match step {
                        Step::Key(k) if before == 0 => SECTIONS.iter().position(|s| *s == k),
                        _ => None,
                    };
                    let rank = section.unwrap_or_else(|| {
                        *ranks.entry((parent, step)).or_insert_with(|| {
                            let n = children.entry(parent).or_insert(0);
                            *n += 1;
                            // Keys outside the known sections go after them.
                            SECTIONS.len() + *n
                        })
                    });
                    (rank, i)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(paths: &[&str]) -> Vec<String> {
        let mut errs = ConfigErrors::default();
        for p in paths {
            errs.push(*p, "x");
        }
        errs.sort_by_file_order();
        errs.0.into_iter().map(|e| e.path).collect()
    }

    /// A check pass's errors, then a build step's: merged key by key, items by index.
    #[test]
    fn errors_found_at_different_times_come_in_path_order() {
        assert_eq!(
            sorted(&[
                "routes[1].name",
                "upstreams.u.targets[0].weight",
                "upstreams.u.targets[3].weight",
                "upstreams.u.tls.sni",
                "upstreams.v.targets",
                "upstreams.u.targets[2]",
                "upstreams.u.tls.ca_file",
                "routes[0].plugins[0].cors",
                "zz",
                "server.threads",
                "",
            ]),
            [
                "server.threads",
                "upstreams.u.targets[0].weight",
                "upstreams.u.targets[2]",
                "upstreams.u.targets[3].weight",
                "upstreams.u.tls.sni",
                "upstreams.u.tls.ca_file",
                "upstreams.v.targets",
                "routes[0].plugins[0].cors",
                "routes[1].name",
                // Unknown sections and whole-file errors last, in the order found.
                "zz",
                "",
            ]
        );
    }

    /// A section name holding `[` or `.` is one step; an error about a key itself comes
    /// where it was first found among its children.
    #[test]
    fn odd_names_and_errors_at_a_key() {
        assert_eq!(
            sorted(&[
                "access_log:[",
                "routes[0].match.hosts[1]",
                "routes[0].match",
                "routes[0].match.path"
            ]),
            [
                "routes[0].match.hosts[1]",
                "routes[0].match",
                "routes[0].match.path",
                "access_log:["
            ]
        );
    }
}
