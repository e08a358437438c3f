//! Values decoded without copying. `decode` runs a decoder over a `Bytes`
//! buffer; while it runs, a byte string that serde hands out borrowed from that
//! buffer becomes a `Bytes` slice of it (`Bytes::slice_ref`: a reference count,
//! no copy). Bytes not borrowed from the buffer, or decoded outside `decode`,
//! are copied, as a `Vec<u8>` field would be. The encoded form is the bytes
//! themselves, the same as `serde_bytes` writes for a `Vec<u8>`, so a field
//! can change between the two without changing any stored format.
//!
//! Hand-written (one thread-local and a visitor): serde has no way to hand a
//! `Deserialize` impl a context, and postcard lends byte strings out of its
//! input, so naming the input buffer in a thread-local is the smallest bridge.
//! Decoders run synchronously inside `decode`, so the name never outlives them
//! nor crosses tasks; a guard restores the outer one, also on a panic.
//!
//! A slice keeps its whole buffer alive: share only out of buffers that live
//! about as long as the values do (a log entry, one peer message).

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

thread_local! {
    /// The buffer the running `decode` reads from.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Restores the buffer of an enclosing `decode` when an inner one ends.
struct Restore(Option<Bytes>);

impl Drop for Restore {
    fn drop(&mut self) {
        let outer = self.0.take();
        SOURCE.with(|source| *source.borrow_mut() = outer);
    }
}

/// Runs `decoder` over `source`'s bytes; byte strings it borrows from them
/// come out as slices of `source`.
pub fn decode<T>(source: &Bytes, decoder: impl FnOnce(&[u8]) -> T) -> T {
    let outer = SOURCE.with(|slot| slot.borrow_mut().replace(source.clone()));
    let _restore = Restore(outer);
    decoder(source)
}

/// `bytes` as a slice of the running `decode`'s buffer if it lies inside it,
/// else a copy.
fn share(bytes: &[u8]) -> Bytes {
    SOURCE.with(|source| match &*source.borrow() {
        Some(buffer) if within(buffer, bytes) => buffer.slice_ref(bytes),
        _ => Bytes::copy_from_slice(bytes),
    })
}

/// Whether `inner` lies inside `outer`'s memory (an empty `inner` counts as
/// outside: a copy of nothing costs nothing).
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let start = outer.as_ptr() as usize;
    let at = inner.as_ptr() as usize;
    !inner.is_empty() && at >= start && at + inner.len() <= start + outer.len()
}

/// Encodes as a byte string (for `#[serde(with = "shared_bytes")]`).
pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Decodes a byte string, sharing the buffer of a running `decode`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: Error>(self, bytes: &'de [u8]) -> Result<Bytes, E> {
        Ok(share(bytes))
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(bytes))
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(bytes))
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Bytes::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        value: Bytes,
        #[serde(with = "serde_bytes")]
        old: Vec<u8>,
    }

    fn encoded() -> Bytes {
        let holder = Holder {
            value: Bytes::from_static(b"shared value"),
            old: b"vec".to_vec(),
        };
        Bytes::from(postcard::to_allocvec(&holder).expect("encodes"))
    }

    fn inside(outer: &Bytes, inner: &Bytes) -> bool {
        within(outer, inner)
    }

    #[test]
    fn inside_decode_a_value_is_a_slice_of_the_buffer() {
        let buffer = encoded();
        let holder: Holder = decode(&buffer, |b| postcard::from_bytes(b)).expect("decodes");
        assert_eq!(&holder.value[..], b"shared value");
        assert!(inside(&buffer, &holder.value));
    }

    #[test]
    fn outside_decode_a_value_is_a_copy() {
        let buffer = encoded();
        let holder: Holder = postcard::from_bytes(&buffer).expect("decodes");
        assert_eq!(&holder.value[..], b"shared value");
        assert!(!inside(&buffer, &holder.value));
        // Nor does a finished decode leave its buffer behind.
        let _: Holder = decode(&buffer, |b| postcard::from_bytes(b)).expect("decodes");
        let again: Holder = postcard::from_bytes(&buffer).expect("decodes");
        assert!(!inside(&buffer, &again.value));
    }

    #[test]
    fn a_value_from_another_buffer_is_a_copy() {
        let buffer = encoded();
        let other = encoded();
        let holder: Holder = decode(&buffer, |_| postcard::from_bytes(&other)).expect("decodes");
        assert!(!inside(&buffer, &holder.value) && !inside(&other, &holder.value));
    }

    #[test]
    fn the_encoding_is_serde_bytes_encoding() {
        #[derive(Serialize)]
        struct Old {
            #[serde(with = "serde_bytes")]
            value: Vec<u8>,
            #[serde(with = "serde_bytes")]
            old: Vec<u8>,
        }
        let old = Old {
            value: b"shared value".to_vec(),
            old: b"vec".to_vec(),
        };
        assert_eq!(
            postcard::to_allocvec(&old).expect("encodes"),
            encoded().to_vec()
        );
    }

    #[test]
    fn nested_decodes_restore_the_outer_buffer() {
        let outer = encoded();
        let inner = encoded();
        let (first, second): (Holder, Holder) = decode(&outer, |b| {
            let nested: Holder = decode(&inner, |i| postcard::from_bytes(i)).expect("decodes");
            assert!(inside(&inner, &nested.value));
            (postcard::from_bytes(b).expect("decodes"), nested)
        });
        assert!(inside(&outer, &first.value));
        assert!(inside(&inner, &second.value));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let buffer = Bytes::from_static(&[200, 200, 200, 200, 200, 1]);
        let result: Result<Holder, _> = decode(&buffer, |b| postcard::from_bytes(b));
        assert!(result.is_err());
    }
}
