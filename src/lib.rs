//! The ITC wire protocol: the prost messages and tonic stubs generated from
//! `proto/itc/v1/*.proto`, the encoded descriptor set for server reflection, and small
//! helpers between `google.protobuf.Struct`/`Value` and `serde_json`.
//!
//! # Layout
//!
//! - [`v1`]: everything of package `itc.v1` (messages, enums, `*_client` and `*_server`
//!   modules). The stubs carry no transport: servers and clients pick their own.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded `FileDescriptorSet` of the schema.
//! - [`json`]: conversions between protobuf's free-form types and `serde_json`.

/// Package `itc.v1`: generated from `proto/itc/v1/`.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls
)]
pub mod v1 {
    tonic::include_proto!("itc.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of `proto/itc/v1/*.proto` (with its
/// imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/itc_descriptor.bin"));

pub mod json;
