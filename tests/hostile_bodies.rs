//! Every reader of bytes from outside the filter meets hostile bytes and accepts or refuses them,
//! never panics (a panic kills the wasm VM, and every request on its worker fails with it): the
//! callout bodies (a JWKS, a discovery document, the revocation service's answers and feed
//! pages), Envoy's shared data (what other workers wrote), the request's headers (token sources,
//! a header map) and a verified payload's way into dynamic metadata, public keys, and the
//! native-crypto function's arguments. Each seed of `fuzz/seeds/bodies/` (a valid input of one
//! reader) is cut at every length and has each byte replaced in turn by bytes that break JSON,
//! UTF-8, numbers and lengths; a feed page's events go on into a revocation set. `read_all` is
//! also the fuzz target `bodies` (`scripts/fuzz.sh 600 bodies`, from the same seeds), which
//! searches further than these mutations do.

use jwtguard::config::ALL_ALGORITHMS;
use jwtguard::extract::{self, HeaderSource, Sources};
use jwtguard::feed::{self, FeedClient};
use jwtguard::jwks::{self, FetchState};
use jwtguard::revocation::{self, Entry, Identity};
use jwtguard::revocation_set::RevocationSet;
use jwtguard::{der, header_map, host_crypto, metadata, strict_json};

const NOW_MS: u64 = 1_700_000_000_000;

/// `data` through every reader, each as the filter uses it.
pub fn read_all(data: &[u8]) {
    let _ = jwks::accept_keys(data, ALL_ALGORITHMS, 1 << 20, 100, &[]);
    let _ = jwks::discovered_jwks_uri(data, 1 << 20);
    for status in [Some(200), Some(504), None] {
        let _ = revocation::read_answer(status, Some(data));
    }
    if let Some(events) = FeedClient::default().answer(feed::read_page(Some(200), Some(data)), NOW_MS) {
        let mut set = RevocationSet::new(3, 30);
        for event in events {
            set.apply(event, NOW_MS / 1000);
        }
        if let Ok(claims) = strict_json::parse_object(br#"{"jti": "a", "sub": "s", "iss": "i", "sid": "x", "iat": 1}"#)
        {
            let _ = set.check(&Identity::from_claims(&claims), NOW_MS / 1000);
        }
        set.expire(u64::MAX);
    }
    if let Ok(payload) = strict_json::parse_object(data) {
        let _ = metadata::payload_struct("p", &payload);
        let _ = Identity::from_claims(&payload).revocable();
    }
    let _ = FetchState::decode(data);
    let _ = Entry::decode(data);
    let _ = host_crypto::decode_arguments(data);
    let _ = host_crypto::decode_result(data);
    let _ = der::parse_spki(data);
    let headers = header_map::decode(data);
    let path = headers.iter().find(|(name, _)| name == ":path").map_or("", |(_, value)| value.as_str());
    let sources = Sources {
        headers: vec![
            HeaderSource { name: "authorization".into(), value_prefix: "Bearer ".into() },
            HeaderSource { name: "x-token".into(), value_prefix: String::new() },
        ],
        params: vec!["access_token".into()],
        cookies: vec!["jwt".into()],
    };
    let _ = extract::extract(&sources, &headers, path);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds, by reader (the fuzz target starts from the same files).
    const SEEDS: [(&str, &[u8]); 12] = [
        ("jwks", include_bytes!("../fuzz/seeds/bodies/jwks.json")),
        ("discovery", include_bytes!("../fuzz/seeds/bodies/discovery.json")),
        ("status_no_session", include_bytes!("../fuzz/seeds/bodies/status_no_session.json")),
        ("status_active", include_bytes!("../fuzz/seeds/bodies/status_active.json")),
        ("feed_page", include_bytes!("../fuzz/seeds/bodies/feed_page.json")),
        ("fetch_state", include_bytes!("../fuzz/seeds/bodies/fetch_state.txt")),
        ("entry", include_bytes!("../fuzz/seeds/bodies/entry.txt")),
        ("crypto_arguments", include_bytes!("../fuzz/seeds/bodies/crypto_arguments.bin")),
        ("crypto_result", include_bytes!("../fuzz/seeds/bodies/crypto_result.bin")),
        ("spki", include_bytes!("../fuzz/seeds/bodies/spki_p256.der")),
        ("header_map", include_bytes!("../fuzz/seeds/bodies/header_map.bin")),
        ("payload", include_bytes!("../fuzz/seeds/bodies/payload.json")),
    ];

    fn seed(name: &str) -> &'static [u8] {
        SEEDS.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes).expect("a seed of that name")
    }

    /// Each seed is a good input of its reader: the mutations start from what it accepts.
    #[test]
    fn the_seeds_are_read() {
        let accepted = jwks::accept_keys(seed("jwks"), ALL_ALGORITHMS, 1 << 20, 100, &[]).expect("the JWKS");
        assert_eq!((accepted.0.len(), accepted.1.len()), (3, 0));
        assert_eq!(
            jwks::discovered_jwks_uri(seed("discovery"), 1 << 20),
            Ok(("idp.example:8443".into(), "/keys?v=1".into()))
        );
        assert_eq!(
            revocation::read_answer(Some(200), Some(seed("status_no_session"))),
            Ok(revocation::Known::NoSession)
        );
        assert_eq!(revocation::read_answer(Some(200), Some(seed("status_active"))), Ok(revocation::Known::Active));
        let events = FeedClient::default()
            .answer(feed::read_page(Some(200), Some(seed("feed_page"))), NOW_MS)
            .expect("the feed page");
        assert_eq!(events.len(), 5);
        assert!(FetchState::decode(seed("fetch_state")).is_some_and(|s| s.refetch_requested));
        assert!(Entry::decode(seed("entry")).is_some());
        assert!(host_crypto::decode_arguments(seed("crypto_arguments")).is_some_and(|a| a.text == b"a.b"));
        assert_eq!(host_crypto::decode_result(seed("crypto_result")), Some(true));
        assert!(matches!(der::parse_spki(seed("spki")), Some(der::PublicKey::Ec(..))));
        let headers = header_map::decode(seed("header_map"));
        assert_eq!(headers.len(), 3);
        let path = headers[0].1.as_str();
        let sources = |params: Vec<String>, cookies: Vec<String>| Sources {
            headers: vec![HeaderSource { name: "authorization".into(), value_prefix: "Bearer ".into() }],
            params,
            cookies,
        };
        let found = |s: &Sources| extract::extract(s, &headers, path);
        assert!(matches!(found(&sources(vec![], vec![])), extract::Found::One("x.y.z", _)));
        assert!(matches!(found(&sources(vec!["access_token".into()], vec![])), extract::Found::Several));
        assert!(matches!(found(&sources(vec![], vec!["jwt".into()])), extract::Found::Several));
        let payload = strict_json::parse_object(seed("payload")).expect("the payload");
        assert!(metadata::payload_struct("p", &payload).is_some());
        assert!(Identity::from_claims(&payload).revocable());
    }

    #[test]
    fn hostile_bodies_never_panic() {
        const BAD: [u8; 14] = [0, b'"', b'\\', b'{', b'[', b'}', b',', b':', b'-', b'9', b'e', 0x80, 0xff, 0x7f];
        let mut reads = 0;
        for (_, seed) in SEEDS {
            for cut in 0..=seed.len() {
                read_all(&seed[..cut]);
                reads += 1;
            }
            let mut body = seed.to_vec();
            for at in 0..seed.len() {
                for bad in BAD {
                    body[at] = bad;
                    read_all(&body);
                    reads += 1;
                }
                body[at] = seed[at];
            }
            // Nesting past the JSON reader's limit, and lengths past the end.
            read_all(&[b"[".repeat(100_000).as_slice(), seed].concat());
            read_all(&[seed, &[0xff; 16]].concat());
        }
        assert!(reads > 20_000, "{reads} reads");
    }
}
