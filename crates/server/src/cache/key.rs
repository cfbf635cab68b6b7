//! The cache key of a document, `game/collection/id`: one format for L1, L2 and the
//! invalidation bus. Names and ids are validated before a key is built (they hold no `/`, no
//! braces and nothing that needs escaping), so the format is unambiguous.

use crate::model::{MAX_ID_LEN, MAX_NAME_LEN};

/// A key composed on the stack: a cache hit then allocates nothing for its key.
pub struct KeyBuf {
    buf: [u8; KeyBuf::CAPACITY],
    len: usize,
}

impl KeyBuf {
    const CAPACITY: usize = 2 * MAX_NAME_LEN + MAX_ID_LEN + 2;

    pub fn new(game: &str, collection: &str, id: &str) -> KeyBuf {
        let mut key = KeyBuf {
            buf: [0; Self::CAPACITY],
            len: 0,
        };
        for (index, part) in [game, collection, id].into_iter().enumerate() {
            if index > 0 {
                key.push(b"/");
            }
            key.push(part.as_bytes());
        }
        key
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(Self::CAPACITY);
        self.buf[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled from whole `&str`s of ASCII names and ids.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// The same key on the heap, for keys that outlive a request (writes, batches).
pub fn cache_key(game: &str, collection: &str, id: &str) -> String {
    let mut key = String::with_capacity(game.len() + collection.len() + id.len() + 2);
    key.push_str(game);
    key.push('/');
    key.push_str(collection);
    key.push('/');
    key.push_str(id);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_keys_match_heap_keys() {
        let long_id = "x".repeat(MAX_ID_LEN);
        let long_name = "n".repeat(MAX_NAME_LEN);
        for (g, c, i) in [
            ("default", "players", "42"),
            (long_name.as_str(), long_name.as_str(), long_id.as_str()),
        ] {
            assert_eq!(KeyBuf::new(g, c, i).as_str(), cache_key(g, c, i));
        }
    }
}
