//! Every Redis key the service uses, built here and nowhere else, so that no two inputs can
//! share a key.
//!
//! Each caller-supplied part is written as `~` followed by its base64url (no padding). The
//! encoding never holds `:`, `{` or `}`, so a key reads back to exactly one kind and set of parts,
//! and the Redis Cluster hash tag `{…}` holds exactly the per-identifier part (Redis hashes what
//! lies between the first `{` and the next `}`; a raw `}` in an identifier would cut the tag
//! short). The `~` keeps the tag non-empty even for an empty identifier: for `{}` Redis hashes
//! the whole key, which would scatter one subject's keys over shards.
//!
//! | key | what |
//! |---|---|
//! | `P:jti:{~J}` | a revoked token |
//! | `P:cut:{~S}` / `P:cut:{~S}:~I` | the subject's cutoff for every issuer / for issuer I |
//! | `P:ses:{~S}`, `P:sesexp:{~S}`, `P:seq:{~S}` | the subject's live sessions |
//! | `P:sesend:{~S}` | sessions the limit ended whose feed event is not yet confirmed |
//! | `P:sidx:{~J}` | the subject of session J |
//! | `P:sid:{~S}:~I` | issuer I's session S, logged out at the identity provider |
//! | `P:seen:{~J}:~I` | a signal (logout token, SET) `J` from issuer I already taken in |
//! | `P:{feed}` | the revocation feed (a stream); its fixed tag puts it on one shard |
//! | `P:readyz` | the readiness probe |
//! | `P:{feed}:probe` | the readiness probe of the feed's shard (a stream of one entry) |

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of a subject's allowlist: registration order, jti → exp, the counter, and the
/// sessions ended by the limit whose feed event is not yet confirmed (jti → exp).
pub struct SessionKeys {
    pub order: String,
    pub expiry: String,
    pub seq: String,
    pub ended: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    /// `P:KIND:{~ID}`: the hash tag is the encoded identifier and nothing else.
    fn tagged(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{{{}}}", self.prefix, encode(id))
    }

    pub fn jti(&self, jti: &str) -> String {
        self.tagged("jti", jti)
    }

    /// `None`: the cutoff for every issuer.
    pub fn cutoff(&self, sub: &str, iss: Option<&str>) -> String {
        let key = self.tagged("cut", sub);
        match iss {
            None => key,
            Some(iss) => format!("{key}:{}", encode(iss)),
        }
    }

    pub fn sessions(&self, sub: &str) -> SessionKeys {
        SessionKeys {
            order: self.tagged("ses", sub),
            expiry: self.tagged("sesexp", sub),
            seq: self.tagged("seq", sub),
            ended: self.tagged("sesend", sub),
        }
    }

    pub fn session_index(&self, jti: &str) -> String {
        self.tagged("sidx", jti)
    }

    /// Issuer `iss`'s session `sid` (OpenID `sid` is unique per issuer).
    pub fn sid(&self, iss: &str, sid: &str) -> String {
        format!("{}:{}", self.tagged("sid", sid), encode(iss))
    }

    /// The `jti` of a signal from `iss`, remembered against replay.
    pub fn seen(&self, iss: &str, jti: &str) -> String {
        format!("{}:{}", self.tagged("seen", jti), encode(iss))
    }

    /// The feed stream. Its tag is fixed (no encoded identifier is `feed`: they start with `~`),
    /// so in a cluster the whole stream lives on one shard and XADD, XREAD and XRANGE each go
    /// to one node.
    pub fn feed(&self) -> String {
        format!("{}:{{feed}}", self.prefix)
    }

    pub fn ready(&self) -> String {
        format!("{}:readyz", self.prefix)
    }

    /// The readiness probe's stream: the feed's tag, so the feed's slot (and shard).
    pub fn feed_probe(&self) -> String {
        format!("{}:probe", self.feed())
    }
}

fn encode(part: &str) -> String {
    format!("~{}", URL_SAFE_NO_PAD.encode(part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwtguard_demo::redis::key_slot;
    use std::collections::HashMap;

    /// Separators, braces, the empty string, unicode, the encoding's own alphabet and marker,
    /// long values and values that are prefixes of each other.
    fn adversarial() -> Vec<String> {
        let mut v: Vec<String> = [
            "", "a", "ab", "X", "X}:evil", "evil}:", "}", "{", "}:", ":", "{}", "}{", "a:b", "a}", "{a}", ":~", "~",
            "~YQ", "YQ", "Zoë", "日本", "🔑", "a\u{0}", " ", "jti:{x}", "x}:y}:z",
        ]
        .map(String::from)
        .to_vec();
        v.extend(["x".repeat(255), "x".repeat(256), "é".repeat(256), "{".repeat(300)]);
        v
    }

    /// Every (kind, parts) gives its own key, across kinds too.
    #[test]
    fn distinct_inputs_give_distinct_keys() {
        let keys = Keys::new("jwtguard");
        let ids = adversarial();
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut add = |key: String, what: String| {
            if let Some(previous) = seen.insert(key.clone(), what.clone()) {
                panic!("{previous} and {what} share the key {key:?}");
            }
        };
        for a in &ids {
            add(keys.jti(a), format!("jti {a:?}"));
            add(keys.session_index(a), format!("sidx {a:?}"));
            add(keys.cutoff(a, None), format!("cut {a:?} any issuer"));
            for b in &ids {
                add(keys.cutoff(a, Some(b)), format!("cut {a:?} iss {b:?}"));
                add(keys.sid(b, a), format!("sid {a:?} iss {b:?}"));
                add(keys.seen(b, a), format!("seen {a:?} iss {b:?}"));
            }
            let s = keys.sessions(a);
            add(s.order, format!("ses {a:?}"));
            add(s.expiry, format!("sesexp {a:?}"));
            add(s.seq, format!("seq {a:?}"));
            add(s.ended, format!("sesend {a:?}"));
        }
        add(keys.ready(), "readyz".into());
        add(keys.feed(), "feed".into());
        add(keys.feed_probe(), "feed probe".into());
    }

    /// The tag of every key of one identifier is its encoding alone, so all of a subject's keys
    /// (cutoffs for every issuer, sessions) hash to one slot, and a `jti`'s two keys to one slot.
    #[test]
    fn one_identifier_one_hash_tag() {
        let keys = Keys::new("jwtguard");
        let tag = |key: &str| {
            let open = key.find('{').expect("a tag");
            let len = key[open + 1..].find('}').expect("a closed tag");
            key[open + 1..open + 1 + len].to_string()
        };
        for id in adversarial() {
            let s = keys.sessions(&id);
            let mut of_subject = vec![keys.cutoff(&id, None), s.order, s.expiry, s.seq, s.ended];
            of_subject.extend(adversarial().iter().map(|iss| keys.cutoff(&id, Some(iss))));
            let of_session: Vec<String> = adversarial().iter().map(|iss| keys.sid(iss, &id)).collect();
            let of_signal: Vec<String> = adversarial().iter().map(|iss| keys.seen(iss, &id)).collect();
            for group in [of_subject, vec![keys.jti(&id), keys.session_index(&id)], of_session, of_signal] {
                for key in &group {
                    assert_eq!(tag(key), encode(&id), "{key}");
                    assert!(!tag(key).is_empty() && !tag(key).contains(['{', '}']));
                    assert_eq!(key_slot(key), key_slot(&group[0]), "{key} and {} on different slots", group[0]);
                }
            }
        }
    }

    /// The case that was ambiguous with raw parts: `cut:{X}:evil}:` meant both.
    #[test]
    fn a_brace_in_a_subject_cannot_reach_another_subject() {
        let keys = Keys::new("jwtguard");
        assert_ne!(keys.cutoff("X}:evil", None), keys.cutoff("X", Some("evil}:")));
        assert_eq!(keys.cutoff("X", Some("evil}:")), "jwtguard:cut:{~WA}:~ZXZpbH06");
        assert_eq!(keys.jti("j-1"), "jwtguard:jti:{~ai0x}");
        assert_eq!(keys.feed(), "jwtguard:{feed}");
        assert_eq!(keys.feed_probe(), "jwtguard:{feed}:probe");
        assert_eq!(key_slot(&keys.feed_probe()), key_slot(&keys.feed()), "the probe is on the feed's shard");
    }
}
