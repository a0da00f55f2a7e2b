//! The users service's protobuf messages and gRPC stubs, generated from
//! `proto/users.proto` by protox and tonic-prost-build and committed, so
//! that building needs neither `protoc` nor a build script;
//! `tests/ecommerce.rs` regenerates them and fails if they changed.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!("../proto/ecommerce.users.v1.rs");
