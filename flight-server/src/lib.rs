//! The Arrow Flight SQL face of lakegate and the `lakegate` binary.
//!
//! This crate owns the protocol: authentication (handshake → bearer token), sessions and the
//! scenario a session works under, mapping Flight SQL commands to gateway calls, and turning
//! errors into gRPC statuses. How policies are decided is the gateway's business.

pub mod allocator;
pub mod auth;
pub mod connections;
pub mod demo;
mod error;
mod front;
pub mod gate;
mod handles;
pub mod jwt;
pub mod limits;
mod metadata;
pub mod metrics;
pub mod plaintext;
mod review;
mod server;
mod service;
pub mod session_options;
pub mod tls;

pub use server::{serve, shutdown_signal, Server};
pub use service::{LakegateService, SCENARIO_HEADER, SCENARIO_OPTION};
