//! The conformance suite on the in-memory transport.

herald_conformance::conformance_tests!(|| async { herald::Bus::memory() });
