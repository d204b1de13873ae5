//! A hostile peer on a shared broker may publish any bytes where envelopes
//! go: decoding must never panic, and whatever decodes must encode back to
//! an envelope that decodes the same.
#![no_main]

use chatmesh_broker::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = codec::decode(data) {
        let again = codec::decode(&codec::encode(&env)).expect("an encoded envelope decodes");
        assert_eq!(again, env);
    }
});
