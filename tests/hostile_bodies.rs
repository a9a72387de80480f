//! Every reader of bytes from outside the filter meets hostile bytes and accepts or refuses them,
//! never panics (a panic kills the wasm VM, and every request on its worker fails with it): the
//! callout bodies (a JWKS, a discovery document, the revocation service's answers and feed
//! pages), Envoy's shared data (what other workers wrote), Envoy's header map and the arguments
//! of the native-crypto function. Each valid seed is cut at every length and has each byte
//! replaced in turn by bytes that break JSON, UTF-8, numbers and lengths, and a feed page's
//! events go on into a revocation set. `read_all` is also the fuzz target `bodies`
//! (`scripts/fuzz.sh 600 bodies`), which searches further than these mutations do.

use jwtguard::config::ALL_ALGORITHMS;
use jwtguard::feed::FeedClient;
use jwtguard::jwks::{self, FetchState};
use jwtguard::revocation::{self, Entry, Identity};
use jwtguard::revocation_set::RevocationSet;
use jwtguard::{header_map, host_crypto, strict_json};

const NOW_MS: u64 = 1_700_000_000_000;

/// `data` through every reader, each as the filter uses it.
pub fn read_all(data: &[u8]) {
    let _ = jwks::accept_keys(data, ALL_ALGORITHMS, 1 << 20, 100, &[]);
    let _ = jwks::discovered_jwks_uri(data, 1 << 20);
    for status in [Some(200), Some(504), None] {
        let _ = revocation::read_answer(status, Some(data));
    }
    if let Some(events) = FeedClient::default().answer(Some(200), Some(data), NOW_MS) {
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
    let _ = FetchState::decode(data);
    let _ = Entry::decode(data);
    let _ = host_crypto::decode_arguments(data);
    let _ = host_crypto::decode_result(data);
    let _ = header_map::decode(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Public keys of each kind the filter reads (made with openssl for this test).
    const JWKS: &str = r#"{"keys": [{"kty": "RSA", "kid": "r", "alg": "RS256", "use": "sig", "n": "ygp5HzaJ6eG0oK1Ei_x9DhTJCGBSdMOb3e8-F91wT0IB2LHquW7jirq-Hn3pE3tjZ0UCP311lkZGqzkVrsnZxL6QoNQVcTPHn6pFZv_dKBCf_1DchVVE0i0wKWrg2zBxUbFOovDKSjd9DtbfDDgrurm0EQO3PAbQrfgWcCoWY9QxS9v_dlRulm0LnkKi_-nK_ncrA-O0r0aWdSP40d6hkd7aD6kg0eCxIFdj-orFIy_U_MPZkVlr9Ft0CI9ulKvVhfwrhEoyCp0VfEj6GNgJtIvYQ7nKfRoUmwJ3sVYr6m6QkP1prdL972HgkKgbkVnQ6si6wPnqMr4-Rp9S23UWZQ", "e": "AQAB"}, {"kty": "EC", "kid": "e", "crv": "P-256", "x": "_WmGTWg_ahgJWOkD9PgqQ8s5In03W-iqsbgWZUgcfk4", "y": "PN-iE7a3jEC1vJPQ0FKQtOLQbVpB5Apz0eQ3edUPOhQ"}, {"kty": "OKP", "kid": "d", "crv": "Ed25519", "x": "9NXd622KzljE5XXoTNYsD3wt2UYxjvzt8--6w7MGnAY"}]}"#;

    const FEED_PAGE: &str = r#"{"position": "1700000000000-7", "more": false, "age_ms": 12, "events": [
        {"type": "revoked", "jti": "a", "until": 1700000900},
        {"type": "session_ended", "jti": "b", "until": 1700000900},
        {"type": "sid_revoked", "iss": "i", "sid": "x", "until": 1700000900},
        {"type": "subject_cutoff", "sub": "s", "iss": "i", "before": 1700000000, "until": 1700000900},
        {"type": "subject_cutoff", "sub": "s", "before": 1700000000, "until": 1700000900}]}"#;

    fn seeds() -> Vec<Vec<u8>> {
        let entry = Entry {
            known: revocation::Known::Revoked,
            fetched_ms: NOW_MS,
            exp: NOW_MS / 1000 + 60,
            identity: "jti:a".into(),
        };
        let arguments = [(1u8, &b"sha256"[..]), (2, &[0x30; 40][..]), (3, &[7; 64][..]), (4, &b"a.b"[..])]
            .iter()
            .flat_map(|(field, value)| [&[field << 3 | 2, value.len() as u8][..], value].concat())
            .collect();
        vec![
            JWKS.into(),
            br#"{"issuer": "https://idp.example", "jwks_uri": "https://idp.example:8443/keys?v=1"}"#.to_vec(),
            br#"{"active": false, "reason": "no_session"}"#.to_vec(),
            br#"{"active": true}"#.to_vec(),
            FEED_PAGE.into(),
            FetchState { fetched_ms: NOW_MS, refetch_requested: true, ..FetchState::default() }.encode(),
            entry.encode(),
            arguments,
            vec![0x08, 0x01],
            header_map::encode(&[(":path", "/a"), ("authorization", "Bearer x.y.z")]),
        ]
    }

    /// The seeds are good bodies: the mutations start from what each reader accepts.
    #[test]
    fn the_seeds_are_read() {
        let seeds = seeds();
        let accepted = jwks::accept_keys(&seeds[0], ALL_ALGORITHMS, 1 << 20, 100, &[]).expect("the JWKS");
        assert_eq!((accepted.0.len(), accepted.1.len()), (3, 0));
        assert_eq!(jwks::discovered_jwks_uri(&seeds[1], 1 << 20), Ok(("idp.example:8443".into(), "/keys?v=1".into())));
        assert_eq!(revocation::read_answer(Some(200), Some(&seeds[2])), Ok(revocation::Known::NoSession));
        assert_eq!(revocation::read_answer(Some(200), Some(&seeds[3])), Ok(revocation::Known::Active));
        let events = FeedClient::default().answer(Some(200), Some(&seeds[4]), NOW_MS).expect("the feed page");
        assert_eq!(events.len(), 5);
        assert!(FetchState::decode(&seeds[5]).is_some_and(|s| s.refetch_requested));
        assert!(Entry::decode(&seeds[6]).is_some());
        assert!(host_crypto::decode_arguments(&seeds[7]).is_some_and(|a| a.text == b"a.b"));
        assert_eq!(host_crypto::decode_result(&seeds[8]), Some(true));
        assert_eq!(header_map::decode(&seeds[9]).len(), 2);
    }

    #[test]
    fn hostile_bodies_never_panic() {
        const BAD: [u8; 14] = [0, b'"', b'\\', b'{', b'[', b'}', b',', b':', b'-', b'9', b'e', 0x80, 0xff, 0x7f];
        let mut reads = 0;
        for seed in seeds() {
            for cut in 0..=seed.len() {
                read_all(&seed[..cut]);
                reads += 1;
            }
            let mut body = seed.clone();
            for at in 0..seed.len() {
                for bad in BAD {
                    body[at] = bad;
                    read_all(&body);
                    reads += 1;
                }
                body[at] = seed[at];
            }
            // Nesting past the JSON reader's limit, and lengths past the end.
            read_all(&[b"[".repeat(100_000), seed.clone()].concat());
            read_all(&[seed.as_slice(), &[0xff; 16]].concat());
        }
        assert!(reads > 20_000, "{reads} reads");
    }
}
