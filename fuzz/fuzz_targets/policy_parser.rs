//! The policy parser on any text: it must not panic; a policy it accepts must build a
//! detector (its patterns compile), survive a round trip through TOML, and pass `validate`.
#![no_main]

use elmroute_router::{Policy, PrivacyDetector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml(text, "fuzz.toml") {
        Ok(policy) => {
            assert!(policy.validate().is_ok());
            assert!(PrivacyDetector::with_policy(&policy.privacy).is_ok());
            let again = Policy::from_toml(&policy.to_toml(), "round-trip.toml");
            assert_eq!(again.ok().as_ref(), Some(&policy));
        }
        Err(e) => {
            // Errors say where: a line for anything read from the text.
            let _ = e.to_string();
        }
    }
});
