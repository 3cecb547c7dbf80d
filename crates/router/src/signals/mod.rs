//! The signals a decision weighs, each normalised to 0..=1.

pub mod complexity;
pub mod device;
pub mod privacy;

pub use complexity::{ComplexityScorer, HeuristicComplexity};
pub use privacy::{Finding, PiiKind, PrivacyDetector, PrivacyReport, Topic};
