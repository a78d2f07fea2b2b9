//! Small helpers with no better home: time formatting, request ids and rate-limited log
//! lines.

pub mod id;
pub mod log_every;
#[cfg(test)]
pub mod proptest;
pub mod time;
