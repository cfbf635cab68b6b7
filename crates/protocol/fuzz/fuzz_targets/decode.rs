//! Feeds arbitrary bytes to the frame decoder, as a server reads them from a socket: it must
//! never panic, never allocate for a length it has not checked, and every frame it accepts
//! must encode back to bytes that decode to the same message.
#![no_main]

use bytes::BytesMut;
use datamiddleware_protocol::{PRE_HANDSHAKE_MAX_BODY, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limit in [PRE_HANDSHAKE_MAX_BODY, 1 << 20] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some((header, message))) = decode(&mut buf, limit) {
            let mut again = BytesMut::new();
            message.encode(header.request_id, &mut again);
            let (header2, message2) = decode(&mut again, u32::MAX)
                .expect("re-encoded frame decodes")
                .expect("re-encoded frame is complete");
            assert_eq!(header2.request_id, header.request_id);
            assert_eq!(message2, message);
            assert!(again.is_empty());
        }
    }
});
