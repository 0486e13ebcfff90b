//! The LXD side: the REST client (`LxdClient`, behind the `LxdApi` seam), where LXD is
//! (`Endpoint`), the lifecycle events stream, and the one error type of this layer.
//!
//! This module owns every byte sent to LXD and nothing else: it knows nothing of
//! resources, plans or statuses. Only `reconcile`'s apply step writes through it.

mod client;
mod endpoint;
mod error;
mod events;
mod tls;
mod types;
mod unix_http;

pub use client::{DEFAULT_TIMEOUT, LxdApi, LxdClient, RequestObserver};
pub use endpoint::{DEBIAN_SOCKET, DEFAULT_HTTPS_PORT, Endpoint, SNAP_SOCKET};
pub use error::{ErrorCategory, LxdError};
pub use events::{EventNotice, EventStream, LifecycleAction, LifecycleEvent, RECONNECT};
pub use types::{Instance, Profile, ProfileContent, ProjectInfo, ServerInfo};
