//! The Kubernetes side, for the controller pod: the three kinds as custom resources
//! (listed, then watched), statuses through the status subresource, and leader election
//! on a Lease. It is kept thin: objects go through the file source's parser (`convert`)
//! into the same store, and everything after that is the controller the file source
//! drives.

pub mod convert;
pub mod leader;
pub mod source;
pub mod status;
