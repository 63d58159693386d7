//! Decode never panics at any protocol version; a decoded packet re-encodes to exactly the
//! bytes consumed, or, where the wire form has equivalent encodings (5.0 short-form acks,
//! property order, a non-minimal remaining length), `decode(encode(p)) == p`.
//!
//! The check itself lives in `codec/tests/common/check.rs`, shared with the plain cargo
//! test `codec/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/check.rs"]
#[allow(dead_code)]
mod check;

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
