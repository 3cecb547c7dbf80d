//! Core types of elmroute: the request an app sends, the answer and route it gets back, the
//! device state the router reads, the [`Backend`] trait every model implements, and the one
//! [`Error`] type.
//!
//! This crate has no model code and no HTTP: it is the contract the other crates share, kept
//! small so that it stays stable.
//!
//! ```
//! use elmroute_core::{ChatRequest, Mode, Sensitivity};
//!
//! let request = ChatRequest::user("Summarise my notes from today")
//!     .with_system("You are terse.")
//!     .with_max_tokens(200)
//!     .with_mode(Mode::PreferLocal)
//!     .with_sensitivity(Sensitivity::Internal);
//! assert_eq!(request.last_user_text(), "Summarise my notes from today");
//! assert_eq!(request.messages.len(), 2);
//! ```
#![deny(missing_docs)]

mod backend;
mod completion;
mod device;
mod error;
mod request;
mod route;

pub use backend::{Availability, Backend, BackendKind, ChunkStream};
pub use completion::{Chunk, Completion, FinishReason, Reply, StreamEvent, Usage};
pub use device::{Battery, DeviceSource, DeviceState, Network, ThermalLevel};
pub use error::{Error, Result};
pub use request::{ChatRequest, Message, Mode, PrivacyAction, Role, Sensitivity, Truncation};
pub use route::{
    CategoryCount, Fallback, FallbackKind, NoRoute, Refusal, Route, Rule, Scores, Target, Timings,
};
