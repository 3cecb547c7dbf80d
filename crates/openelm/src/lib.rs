//! OpenELM on candle.
#![deny(missing_docs)]
