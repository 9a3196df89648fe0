//! herald's runnable examples live beside this file (`cargo run -p
//! herald-examples --example …`); the library only carries the README's
//! examples, compiled and run as doc tests so they stay true.

/// The README's examples.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
