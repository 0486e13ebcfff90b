//! The hash maps of the hot path: the observed and desired stores, the queue, the status
//! stage. std's SipHash was the largest hashing cost in an upgrade's profile (every
//! reconcile looks its key up in half a dozen maps, every instance name in the observed
//! state); foldhash is several times faster on short keys. Its per-process random seed
//! keeps collisions from being chosen in advance by whoever names instances or resources.

pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
