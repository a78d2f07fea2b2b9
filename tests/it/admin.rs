//! (tests pending)
