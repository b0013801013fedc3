//! Writers of HTTP/1.1's wire format, and the header-name memory of a head reader, shared by
//! the gateway's client to replicas and by `gateway-service`'s server connection.

/// Writes one header line (`name: value\r\n`). The caller vouches that neither holds a CR or
/// LF: values from `HeaderValue`s, names from `HeaderName`s, or visible ASCII.
pub fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    header_start(out, name);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Starts a header line (`name: `) whose value the caller writes, then `\r\n`; the same
/// promise as [`header_line`].
pub fn header_start(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
}

/// The elements of a comma-separated header value (`Connection`, `Transfer-Encoding`, a
/// repeated `Content-Length`), without the whitespace around them; empty ones included.
pub fn list(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// The header names of the last head read on one connection, by position. A client (or a
/// replica) writes the same fields in the same order head after head, so the name at a
/// position is most often the one before, written the same way: it is then cloned instead of
/// parsed again (`HeaderName::from_bytes` lowercases every name and allocates each one it
/// does not know, such as `Mcp-Session-Id`).
#[derive(Debug, Default)]
pub struct HeaderNames {
    slots: Vec<NameSlot>,
}

#[derive(Debug)]
struct NameSlot {
    /// The name as written on the wire (names longer than this are not remembered).
    raw: [u8; NAME_ROOM],
    len: u8,
    name: http::HeaderName,
}

/// Longest name remembered: `mcp-protocol-version` is 20 bytes.
const NAME_ROOM: usize = 24;
/// Positions remembered; a head's later fields are parsed each time.
const NAME_SLOTS: usize = 32;

impl HeaderNames {
    /// The name written as `raw` at position `at` of the head being read.
    ///
    /// # Errors
    ///
    /// When `raw` is not a header name.
    pub fn name(
        &mut self,
        at: usize,
        raw: &[u8],
    ) -> Result<http::HeaderName, http::header::InvalidHeaderName> {
        if let Some(slot) = self.slots.get(at)
            && short_eq(&slot.raw[..usize::from(slot.len)], raw)
        {
            return Ok(slot.name.clone());
        }
        let name = http::HeaderName::from_bytes(raw)?;
        if raw.len() <= NAME_ROOM && at < NAME_SLOTS && at <= self.slots.len() {
            let mut slot = NameSlot {
                raw: [0; NAME_ROOM],
                len: raw.len() as u8, // at most NAME_ROOM
                name: name.clone(),
            };
            slot.raw[..raw.len()].copy_from_slice(raw);
            if at == self.slots.len() {
                self.slots.push(slot);
            } else {
                self.slots[at] = slot;
            }
        }
        Ok(name)
    }
}

/// Whether two slices of at most [`NAME_ROOM`] bytes are equal, by a few overlapping word
/// loads (inline; a `memcmp` call cost more than the compare for a header name).
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    fn word(s: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    }
    fn half(s: &[u8], at: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_ne_bytes(w)
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        // [0, 8), [n - 8, n) and, past 16 bytes, [8, 16) cover up to 24 bytes.
        8..=NAME_ROOM => {
            word(a, 0) == word(b, 0)
                && word(a, n - 8) == word(b, n - 8)
                && (n <= 16 || word(a, 8) == word(b, 8))
        }
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

/// Writes `n` in decimal (a `Content-Length`).
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes `n` in lowercase hexadecimal (a chunk's size).
pub fn push_hex(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Where the first `"` or `\\` of `bytes` is: the end of a JSON string's plain run. Eight bytes
/// at a time (most strings of MCP messages are short, so a vector search's setup costs more
/// than it saves; a byte loop costs one compare pair per byte).
pub fn find_quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let found = quote_or_backslash_in(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map(|i| at + i)
}

/// The bytes of `x` (eight bytes read little-endian) that are `"` or `\\`, each flagged by its
/// high bit. The lowest flag is a true match (borrows only carry upward); those above it may
/// not be.
#[inline(always)]
pub fn quote_or_backslash_in(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    has_zero(x ^ (ONES * u64::from(b'"'))) | has_zero(x ^ (ONES * u64::from(b'\\')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_http_wants_them() {
        for (n, dec, hex) in [
            (0u64, "0", "0"),
            (9, "9", "9"),
            (255, "255", "ff"),
            (u64::from(u32::MAX), "4294967295", "ffffffff"),
        ] {
            let (mut d, mut h) = (Vec::new(), Vec::new());
            push_decimal(&mut d, n);
            push_hex(&mut h, n as usize);
            assert_eq!(
                (d.as_slice(), h.as_slice()),
                (dec.as_bytes(), hex.as_bytes())
            );
        }
        let parts: Vec<&[u8]> = list(b" keep-alive ,close,, Upgrade").collect();
        assert_eq!(parts, [&b"keep-alive"[..], b"close", b"", b"Upgrade"]);
        let mut line = Vec::new();
        header_line(&mut line, "content-type", b"application/json");
        assert_eq!(line, b"content-type: application/json\r\n");
    }

    #[test]
    fn short_slices_compare_as_slices_do() {
        let mut seed = 11u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..20_000 {
            let n = next() as usize % (NAME_ROOM + 1);
            let a: Vec<u8> = (0..n).map(|_| b"ab"[next() as usize % 2]).collect();
            let mut b = a.clone();
            match next() % 3 {
                0 if n > 0 => b[next() as usize % n] ^= 1,
                1 => b.push(b'a'),
                _ => {}
            }
            assert_eq!(short_eq(&a, &b), a == b, "{a:?} {b:?}");
        }
    }

    #[test]
    fn remembered_header_names_are_what_parsing_gives() {
        let heads: [&[&[u8]]; 6] = [
            &[
                b"Host",
                b"Content-Type",
                b"Mcp-Session-Id",
                b"X-A-Name-Longer-Than-Its-Room",
            ],
            &[
                b"Host",
                b"Content-Type",
                b"Mcp-Session-Id",
                b"X-A-Name-Longer-Than-Its-Room",
            ],
            // The same names written otherwise, moved, and one that is not a name.
            &[
                b"host",
                b"mcp-session-id",
                b"Content-Type",
                b"Bad Name",
                b"Accept",
            ],
            &[b"HOST", b"Mcp-Session-Id", b"content-type"],
            &[
                b"Host",
                b"Content-Type",
                b"Mcp-Session-Id",
                b"X-A-Name-Longer-Than-Its-Room",
            ],
            &[],
        ];
        let mut names = HeaderNames::default();
        for _ in 0..2 {
            for head in heads {
                for (at, raw) in head.iter().enumerate() {
                    let parsed = http::HeaderName::from_bytes(raw).ok();
                    assert_eq!(
                        names.name(at, raw).ok(),
                        parsed,
                        "{:?} at {at}",
                        raw.escape_ascii().to_string()
                    );
                }
            }
        }
        let many: Vec<String> = (0..NAME_SLOTS + 8)
            .map(|i| format!("X-Field-{i}"))
            .collect();
        for _ in 0..2 {
            for (at, raw) in many.iter().enumerate() {
                assert_eq!(
                    names.name(at, raw.as_bytes()).ok(),
                    http::HeaderName::from_bytes(raw.as_bytes()).ok()
                );
            }
        }
        assert_eq!(names.slots.len(), NAME_SLOTS);
    }

    #[test]
    fn finds_the_first_quote_or_backslash_as_a_byte_loop_does() {
        let mut seed = 7u32;
        for len in 0..40 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        // Mostly ordinary bytes, some quotes, backslashes and their neighbours.
                        [
                            b'a', b'"', b'\\', b'!', b'#', b'[', b']', 0x80, 0xff, 0x00, 0x21, 0x5b,
                        ][(seed >> 16) as usize % 12]
                    })
                    .collect();
                let want = bytes.iter().position(|&b| b == b'"' || b == b'\\');
                assert_eq!(find_quote_or_backslash(&bytes), want, "{bytes:?}");
            }
        }
    }
}
