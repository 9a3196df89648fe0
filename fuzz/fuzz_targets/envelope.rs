//! The envelope decoder: `Envelope::from_json` (what HTTP clients and the
//! wire format's readers go through) and `Envelope::from_stored` (what every
//! store decodes its records with) on arbitrary bytes. Neither may panic,
//! and whatever they accept must round-trip (`herald_fuzz::check_envelope`).
#![no_main]

use herald::{Envelope, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_json(data) {
        herald_fuzz::check_envelope(&env, &Limits::default());
    }
    if let Ok(env) = Envelope::from_stored(data) {
        herald_fuzz::check_envelope(&env, &Limits::WIDEST);
    }
    // The serde impl (no limits) must agree with the decoder on what an
    // envelope is: what `from_stored` accepts, it accepts.
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        if let Ok(checked) = Envelope::from_stored(data) {
            assert_eq!(env, checked);
        }
    }
});
