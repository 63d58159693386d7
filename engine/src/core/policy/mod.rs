//! The policy layer on the shard: authorisation (the ACL judged against each session's
//! identity: PUBLISH, SUBSCRIBE coverage, delivery, retained messages, wills) and the
//! counting of every denial, by reason, for `$SYS`.
//!
//! The rules themselves are process-wide and immutable (`auth/acl.rs`); what is decided per
//! session (a subscription's coverage) lives in the session's subscriptions.

mod authorize;
pub mod denial;
pub mod quota;
mod reload;

pub use denial::Denial;
