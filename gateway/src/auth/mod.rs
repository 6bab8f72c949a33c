//! Authentication of a request: bearer extraction, then signature and claims, then the
//! revocation set. The result is a [`jwt::VerifiedClaims`] value or an error; nothing
//! downstream can run without one.

pub mod bearer;
pub mod cache;
pub mod jwt;
pub mod keys;
