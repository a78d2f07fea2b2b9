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

    /// Put the errors in the order their keys appear in a config file: by section (in the
    /// reference file's order), then by list index; the order found is kept otherwise.
    pub fn sort_by_file_order(&mut self) {
        self.0.sort_by_key(|e| {
            let head_end = e.path.find(['.', '[']).unwrap_or(e.path.len());
            let section = SECTIONS
                .iter()
                .position(|s| *s == &e.path[..head_end])
                .unwrap_or(SECTIONS.len());
            let index = e.path[head_end..]
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(n, _)| n.parse::<usize>().ok())
                .unwrap_or(0);
            (section, index)
        });
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
