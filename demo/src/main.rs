//! `jwtguard-demo`: the sample upstream and the token tool the demo script uses.

use clap::{Parser, Subcommand};
use jsonwebtoken::Algorithm;
use jwtguard_demo::echo::Echo;
use jwtguard_demo::tokens::{now, KeyPair};
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "jwtguard demo helpers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer every request with the method, path and headers it carried, as JSON.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
    },
    /// Make an RS256 key pair in DIR (once; an existing key is kept).
    Keygen { dir: PathBuf },
    /// Print the public JWKS of the key in DIR.
    Jwks { dir: PathBuf },
    /// Serve the public JWKS of the key in DIR over HTTP (generating the key on first use).
    ServeJwks {
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8082")]
        listen: String,
    },
    /// Print a token signed with the key in DIR.
    Mint {
        dir: PathBuf,
        #[arg(long, default_value = "alice")]
        sub: String,
        #[arg(long, default_value = "https://demo.jwtguard.local")]
        iss: String,
        #[arg(long, default_value = "demo-api")]
        aud: String,
        #[arg(long, default_value = "orders:read")]
        scope: String,
        /// Lifetime in seconds; negative for a token that expired that long ago.
        #[arg(long, default_value_t = 600, allow_hyphen_values = true)]
        ttl: i64,
        /// The identity provider's session (OpenID `sid` claim).
        #[arg(long)]
        sid: Option<String>,
    },
    /// Print an OpenID back-channel logout token for session SID (or, without it, for every
    /// session of SUB), signed with the key in DIR as the identity provider would.
    LogoutToken {
        dir: PathBuf,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        sid: Option<String>,
        #[arg(long, default_value = "https://demo.jwtguard.local")]
        iss: String,
        /// The revocation service's audience at the identity provider.
        #[arg(long, default_value = "jwtguard")]
        aud: String,
    },
}

fn main() {
    match Cli::parse().command {
        Command::Upstream { listen } => {
            let echo = Echo::start(&listen).unwrap_or_else(|e| panic!("listen on {listen}: {e}"));
            println!("echo upstream on 127.0.0.1:{}", echo.port);
            loop {
                std::thread::park();
            }
        }
        Command::Keygen { dir } => {
            KeyPair::load_or_generate(&dir, Algorithm::RS256, "demo");
        }
        Command::Jwks { dir } => {
            let key = KeyPair::load_or_generate(&dir, Algorithm::RS256, "demo");
            println!("{}", json!({"keys": [key.jwk()]}));
        }
        Command::ServeJwks { dir, listen } => {
            let key = KeyPair::load_or_generate(&dir, Algorithm::RS256, "demo");
            let body = json!({"keys": [key.jwk()]}).to_string();
            let port =
                jwtguard_demo::echo::start_static(&listen, body).unwrap_or_else(|e| panic!("listen on {listen}: {e}"));
            println!("JWKS on port {port}");
            loop {
                std::thread::park();
            }
        }
        Command::Mint { dir, sub, iss, aud, scope, ttl, sid } => {
            let key = KeyPair::load_or_generate(&dir, Algorithm::RS256, "demo");
            let t = now();
            let jti = format!("{sub}-{t}-{}", std::process::id());
            let mut claims = json!({"iss": iss, "aud": aud, "sub": sub, "scope": scope, "iat": t, "exp": t.saturating_add_signed(ttl), "jti": jti});
            if let Some(sid) = sid {
                claims["sid"] = json!(sid);
            }
            println!("{}", key.sign(&claims));
        }
        Command::LogoutToken { dir, sub, sid, iss, aud } => {
            let key = KeyPair::load_or_generate(&dir, Algorithm::RS256, "demo");
            println!(
                "{}",
                jwtguard_demo::idp::logout_token(
                    &key.encoding_key(),
                    "demo",
                    &iss,
                    &aud,
                    sub.as_deref(),
                    sid.as_deref()
                )
            );
        }
    }
}
