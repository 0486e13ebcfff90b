//! The controller's memory: the desired state (resources, with an index from each
//! Application to the Machines and Containers that name it) and the observed LXD state
//! (a cache fed by listings, events and the controller's own writes).
//!
//! No I/O here: sources feed `Desired`, the LXD layer's results feed `Observed`.

pub mod desired;
pub mod observed;

pub use desired::Desired;
pub use observed::{OWNER_KEY, OWNER_VALUE, Object, Observed, ObservedProfile};
