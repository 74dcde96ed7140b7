//! The key pool: keys, their health state machine, selection and snapshots.
//!
//! - `key_pool`: the [`KeyPool`] itself, its settings and run-time key management;
//! - `builder`: [`KeyPoolBuilder`] and the defaults;
//! - `id` and `entry`: a key's id, its counters and health, the pool's key list;
//! - `pick` and `lease`: choosing a key for a request, and holding it while in use;
//! - `report`: the health state machine, what an upstream answer does to a key;
//! - `sync`: sharing cool-downs and disabled flags through a `KeyStateStore`;
//! - `snapshot`: the masked state shown to operators.

mod builder;
mod entry;
mod id;
mod key_pool;
mod lease;
mod pick;
mod report;
mod snapshot;
mod sync;

pub use builder::KeyPoolBuilder;
pub(crate) use entry::KeyList;
pub use id::KeyId;
pub use key_pool::KeyPool;
pub(crate) use lease::Lease;
pub(crate) use pick::{Pick, Unavailable};
#[cfg(test)]
pub(crate) use report::{backoff, until_pacific_midnight};
pub use snapshot::{CoolingSnapshot, KeySnapshot, KeyState};
