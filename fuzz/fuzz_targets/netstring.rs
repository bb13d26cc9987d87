//! The netstring decoder over arbitrary bytes fed in arbitrary pieces: never panics, and every
//! frame it yields re-encodes to exactly the bytes it was cut from.
#![no_main]
use bytes::BytesMut;
use gatehouse::cluster::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step.max(1));
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec::decode(&mut buf, 4096) {
                Ok(Some(f)) => assert_eq!(&f.raw()[..], &codec::encode(f.payload())[..]),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
