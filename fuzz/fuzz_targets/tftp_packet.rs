//! The TFTP packet parser on arbitrary bytes: it never panics, and whatever it
//! accepts encodes to bytes that parse back to the same packet (and encode the same
//! again: the encoding is canonical).
#![no_main]

use ironpxe_tftp::packet::{EncodeError, MAX_BLKSIZE};
use ironpxe_tftp::Packet;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::parse(data) else {
        return;
    };
    match p.encode() {
        Ok(bytes) => {
            let again = Packet::parse(&bytes).expect("an encoded packet parses");
            assert_eq!(again, p, "encode then parse changed the packet");
            assert_eq!(again.encode().expect("encodes again"), bytes);
        }
        // A DATA datagram may carry more than the largest block; it cannot be sent.
        Err(EncodeError::PayloadTooLarge(n)) => {
            assert!(matches!(p, Packet::Data { .. }) && n > usize::from(MAX_BLKSIZE));
        }
        Err(e) => panic!("a parsed packet does not encode: {e}: {p:?}"),
    }
});
