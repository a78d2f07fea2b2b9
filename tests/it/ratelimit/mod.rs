//! Rate limits, quotas and concurrency limits through the real binary, and the Redis they
//! share across instances: `local` (local scope), `cluster` (`scope: cluster`, exact),
//! `shared` (cluster-scope concurrency and quota, `mode: fast`), then one file per kind of
//! Redis deployment or failure: `redis_cluster`, `redis_sentinel`, `redis_tls`,
//! `redis_reconnect` and `redis_hostile`.

mod cluster;
mod local;
mod redis_cluster;
mod redis_hostile;
mod redis_reconnect;
mod redis_sentinel;
mod redis_tls;
mod shared;
