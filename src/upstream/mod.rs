//! Upstream pools: target selection (one Pingora `LoadBalancer` per pool), active health
//! checks, passive outlier ejection, in-flight accounting and peer construction.

pub(crate) mod health;
pub(crate) mod pool;

pub use pool::{InFlight, Pool};
