//! Where desired state comes from (SPEC §6): a directory of YAML files (`files`), or the
//! custom resources of a Kubernetes API server (`kubernetes`).
//!
//! A source only reads and emits `SourceEvent`s; whoever receives them feeds the store
//! and the status stage. A source never writes a status and never talks to LXD.

pub mod bounded;
pub mod convert;
pub mod files;
pub mod kubernetes;
pub mod scan;

use crate::resource::{Resource, ResourceKey, Status};

/// What a source says. Upserts carry the resource itself (most events are upserts, so
/// boxing would only add an allocation to each).
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum SourceEvent {
    /// A resource is new or changed.
    Upsert(Resource),
    /// A resource went away: stop managing it (LXD is not touched for it).
    Remove(ResourceKey),
    /// The source has delivered its whole state once.
    Loaded,
    /// An object that does not load now (its last good version, if any, is kept).
    Invalid {
        key: ResourceKey,
        generation: Option<u64>,
        message: String,
    },
    /// An object that did not load loads again.
    Valid(ResourceKey),
    /// How many files or objects do not load now.
    InvalidCount(usize),
    /// The source cannot see its whole state now (why), or can again (`None`): until it
    /// can, nothing is forgotten and no clean-up runs.
    Unreadable(Option<String>),
    /// The object as the source's own store holds it (uid, version, status): for a
    /// status store that keeps statuses on the objects.
    Stored {
        key: ResourceKey,
        uid: Option<String>,
        version: Option<String>,
        status: Option<Status>,
    },
}
