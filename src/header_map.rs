//! The proxy-wasm ABI's serialized header map, read and written without trusting it: Envoy hands
//! header values through as bytes, and a value need not be UTF-8 (HTTP/1.1 allows obs-text).

/// The pairs of a serialized map: `count: u32`, then `count` × (`name len: u32`, `value len: u32`),
/// then each name and value followed by a NUL. A name or value that is not UTF-8 is decoded
/// lossily (U+FFFD): never dropped, so a client-sent header stays visible to the code that must
/// strip it, and never a valid token. A malformed map yields the pairs read before the fault.
pub fn decode(bytes: &[u8]) -> Vec<(String, String)> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = u32_at(0) else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    let Some(mut at) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return pairs;
    };
    for i in 0..count {
        let (Some(name_len), Some(value_len)) = (u32_at(4 + i * 8), u32_at(8 + i * 8)) else {
            break;
        };
        let mut take = |len: usize| -> Option<String> {
            let text = text(bytes.get(at..at.checked_add(len)?)?);
            at = at.checked_add(len + 1)?;
            Some(text)
        };
        match (take(name_len), take(value_len)) {
            (Some(name), Some(value)) => pairs.push((name, value)),
            _ => break,
        }
    }
    pairs
}

/// `bytes` as text: as they are when UTF-8 (nearly always, and checked much faster than the lossy
/// conversion goes), else with U+FFFD for what is not.
pub fn text(bytes: &[u8]) -> String {
    let mut out = String::new();
    push_text(&mut out, bytes);
    out
}

/// `text(bytes)` appended to `out`, which may have room for it already.
pub fn push_text(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Serializes `pairs` in the same format.
pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size: usize = 4 + pairs.iter().map(|(k, v)| 8 + k.len() + v.len() + 2).sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        bytes.extend_from_slice(&(k.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs = [(":path", "/a"), ("authorization", "Bearer x"), ("empty", "")];
        let decoded = decode(&encode(&pairs));
        assert_eq!(decoded, pairs.map(|(k, v)| (k.to_string(), v.to_string())));
        assert!(decode(&encode(&[])).is_empty());
        assert!(decode(&[]).is_empty());
    }

    /// Non-UTF-8 bytes (what crashed the SDK's reader) are kept, lossily; a truncated or lying
    /// map yields what was read before the fault, never a panic.
    #[test]
    fn hostile_maps_never_panic() {
        let mut map = encode(&[("authorization", "Bearer ab"), ("x-jwt-sub", "admin")]);
        let at = map.windows(2).position(|w| w == b"ab").expect("the value");
        map[at] = 0xff;
        let decoded = decode(&map);
        assert_eq!(decoded[0], ("authorization".to_string(), "Bearer \u{fffd}b".to_string()));
        assert_eq!(decoded[1], ("x-jwt-sub".to_string(), "admin".to_string()), "the next pair is still read");
        for cut in 0..map.len() {
            let _ = decode(&map[..cut]);
        }
        let mut lying = encode(&[("a", "b")]);
        lying[0] = 0xff; // 255 pairs claimed
        assert!(decode(&lying).len() <= 1);
        let mut huge = encode(&[("a", "b")]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_empty());
        assert!(decode(&u32::MAX.to_le_bytes()).is_empty());
    }
}
