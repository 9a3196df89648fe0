//! Unit tests of the in-memory transport internals.
use super::*;
