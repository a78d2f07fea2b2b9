//! Placeholder until the auth benches land (helper writes them).
fn main() {}
