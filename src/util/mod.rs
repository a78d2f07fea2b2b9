//! Small helpers with no better home: time formatting and request ids.

pub mod id;
#[cfg(test)]
pub mod proptest;
pub mod time;
