//! Small helpers with no better home: time formatting and request ids.

pub mod id;
pub mod time;
