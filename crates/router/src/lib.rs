//! The routing brain of elmroute.
//!
//! A [`Router`] holds a [`Policy`], an on-device backend, a cloud backend and a device
//! source. For each request it computes six signals (complexity, privacy, battery, thermal,
//! network, capability), applies the hard rules (privacy bar, offline, thermal critical,
//! context), then the mode, then the weighted score, and returns the answer with a
//! [`Route`](elmroute_core::Route) that explains all of it.
//!
//! ```
//! use elmroute_core::{ChatRequest, DeviceState, Network, Target};
//! use elmroute_router::{DeclaredBackend, Policy, Router};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_toml("mode = \"auto\"\n[privacy]\nbar = 0.7\n", "inline")?;
//! let router = Router::builder()
//!     .policy(policy)
//!     .local(DeclaredBackend::local("openelm-270m", 2048))
//!     .remote(DeclaredBackend::remote("gpt-4o-mini"))
//!     .device(DeviceState { network: Network::Offline, ..DeviceState::default() })
//!     .build()?;
//!
//! // Offline: the cloud is refused, so even a hard question stays on the device.
//! let route = router.decide(&ChatRequest::user("Prove that there are infinitely many primes."))?;
//! assert_eq!(route.target, Target::Local);
//! println!("{}", route.explain());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod decision;
mod declared;
pub mod policy;
pub mod redact;
mod router;
pub mod signals;

pub use declared::DeclaredBackend;
pub use policy::{Policy, PolicyError};
pub use router::{CompletionStream, Router, RouterBuilder};
pub use signals::{ComplexityScorer, HeuristicComplexity, PrivacyDetector};
