//! Any bytes as a bearer token, through the whole per-token path: strict parsing, issuer,
//! key selection, signature (HS256, RS256, ES256 and EdDSA keys configured) and claims.
#![no_main]

use jwtguard::authenticator::{verify_token, Tally};
use jwtguard::config::Config;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"{"providers": {
  "hs": {"issuer": "i", "hmac_secrets": [{"secret": "0123456789abcdef0123456789abcdef"}],
         "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}, {"header_name": "x-a", "claim_name": "a.b"}]},
  "pk": {"audiences": ["api"], "max_lifetime_seconds": 3600, "pem_keys": [
    {"kid": "ec", "pem": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE/Ae8vDtqvhNcSPmBsfFGa8rkwcm6HqKN4fh8eGLlLnXBf1Ikbs7I7UqqzsjBwIaWpOw0m+kRzFCw6dO83CL9rQ==\n-----END PUBLIC KEY-----"},
    {"kid": "rsa", "pem": "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx0LzBoDGG1oTxOQswPLjVLCYYe7MQm5rDtVGXERctkHZbL8JI/jS/CtaT0jw/WUCZd6ly0Z83JI20SOoJsvkarkGrac92Z7CQrG92VTnF28sSh70764gIFsKgB45H/CPmRTEgY9e8z85TlCpLVp4VuvqU9BhmMk2uKEPhfG3TX3u/lWPzczW5OA2sLmjftYog0WMuRP9WpqiZIUw0MCA1UpwiuADiCl1CIpj9010NHSmlYQE094wK9AFwweqVI8k/YJUEsd86oatXTYIZ/EeRe74mTMH/vNMufv2zph2LDYgd5wNfwYbE/T6v8Ls3CuR7ZCaqzbm0YoxZPQMxvqgrwIDAQAB\n-----END PUBLIC KEY-----"},
    {"kid": "ed", "pem": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAatPF2QRluMl/Q7Zm3xBzkgjamhrah3FOpsS3IOL8YdM=\n-----END PUBLIC KEY-----"}
  ]}
}}"#;

thread_local! {
    // Per thread: a configuration is not `Sync` (it holds `Rc`s, as the filter is single-threaded).
    static PARSED: Config = Config::parse(CONFIG.as_bytes()).expect("fuzz config");
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    PARSED.with(|config| {
        for provider in &config.providers {
            let _ = verify_token(provider, 0, &provider.keys, token, 1_700_000_000, None, &mut Tally::default());
        }
    });
});
