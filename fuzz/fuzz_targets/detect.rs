//! Protocol detection on a connection's first bytes (`http::detect::classify`),
//! fed as they might arrive: one more byte at a time. Once a prefix is
//! classified, more bytes never change the answer, and the bytes `detect`
//! peeks at are always enough to decide.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::fuzzing::classify;

/// The most `detect` peeks at (its buffer): by then it must have an answer,
/// or it would wait for bytes it never looks at until its timeout.
const PEEK: usize = 32;

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    // Past the peek window only the whole input is new information.
    let ends = (0..=data.len().min(2 * PEEK)).chain([data.len()]);
    for end in ends {
        let got = classify(&data[..end]);
        match decided {
            Some((at, first)) => assert_eq!(
                got,
                Some(first),
                "{first:?} after {at} bytes, then {got:?} after {end}: {:?}",
                &data[..end]
            ),
            None if got.is_some() => decided = got.map(|d| (end, d)),
            None => assert!(end < PEEK, "undecided after {end} bytes: {data:?}"),
        }
    }
});
