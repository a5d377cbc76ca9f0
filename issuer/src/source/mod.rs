//! Where the index's objects come from: cluster watches ([`cluster`]) or a
//! folder of manifests ([`standalone`]). Both feed the same [`crate::index`].

pub mod cluster;
pub mod standalone;
