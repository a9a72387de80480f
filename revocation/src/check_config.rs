//! `check-config`: a filter configuration read by the filter's own parser (`Config::parse`, what
//! plugin start runs), so a refused configuration gets the very line Envoy would log; and the
//! configuration's JSON Schema, generated from the parser's types.

use jwtguard::config::{Config, Provider};
use std::io::Read;
use std::path::Path;

/// The configuration's JSON Schema, pretty-printed.
pub fn schema() -> Result<String, String> {
    serde_json::to_string_pretty(&Config::json_schema()).map_err(|e| e.to_string())
}

/// Checks the configuration in `file` (`-`: stdin): a summary when it is accepted; when it is
/// refused, the filter's own log line on stderr and exit status 1.
pub fn check(file: &Path) -> Result<String, String> {
    let bytes = read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match Config::parse(&bytes) {
        Ok(config) => Ok(summary(&config)),
        Err(e) => {
            // Exactly what the filter logs when plugin start refuses the configuration.
            eprintln!("jwtguard: {e}");
            std::process::exit(1);
        }
    }
}

fn read(file: &Path) -> std::io::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    std::fs::read(file)
}

fn summary(config: &Config) -> String {
    let providers: Vec<String> = config.providers.iter().map(provider).collect();
    let revocation = config.revocation.as_ref().map_or("off".to_string(), |r| {
        let source = if r.feed.is_some() { "feed" } else { "status" };
        let failure_mode = format!("{:?}", r.failure_mode).to_lowercase();
        format!("{source} from cluster {}, failure_mode {failure_mode}", r.cluster)
    });
    format!("OK: providers {}; {} rules; revocation: {revocation}", providers.join(", "), config.rules.len())
}

fn provider(p: &Provider) -> String {
    match &p.remote_jwks {
        Some(r) => format!("{} (remote JWKS {}{} via cluster {})", p.name, r.authority, r.path, r.cluster),
        None => format!("{} ({} keys)", p.name, p.keys.len()),
    }
}
