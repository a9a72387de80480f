//! The proxy-wasm glue: read configuration, hand each request to the [`Authenticator`], and
//! carry out its decision. No logic lives here that a native test could not reach elsewhere.

use crate::authenticator::{Authenticator, Decision, Request, Tally};
use crate::config::Config;
use crate::extract::RequestHeaders;
use crate::host_crypto::{self, HostCrypto};
use crate::reason::Reason;
use crate::response::{self, ResponseStyle};
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

/// Envoy's `verify_signature`, called through our own import: the SDK's wrapper panics on a
/// status it does not know, and a panic here would take down the VM.
struct EnvoyCrypto;

#[link(wasm_import_module = "env")]
#[allow(clashing_extern_declarations)]
extern "C" {
    fn proxy_call_foreign_function(
        name: *const u8,
        name_len: usize,
        args: *const u8,
        args_len: usize,
        result: *mut *mut u8,
        result_len: *mut usize,
    ) -> u32;
}

impl HostCrypto for EnvoyCrypto {
    fn verify_signature(&self, arguments: &[u8]) -> Option<bool> {
        let name = host_crypto::FUNCTION;
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len: usize = 0;
        // SAFETY: pointers and lengths describe live buffers; on success the host hands us a
        // buffer it allocated through our `proxy_on_memory_allocate`, which we take over.
        let status = unsafe {
            proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                arguments.as_ptr(),
                arguments.len(),
                &mut data,
                &mut len,
            )
        };
        if status != 0 || data.is_null() {
            return None;
        }
        let bytes = unsafe { Vec::from_raw_parts(data, len, len) };
        host_crypto::decode_result(&bytes)
    }
}

/// Stat ids, defined once per VM. Envoy shows them as `jwtguard.*`.
struct Metrics {
    allowed: u32,
    denied: Vec<(Reason, u32)>,
    cache_hit: u32,
    cache_miss: u32,
    verify_host: u32,
    verify_wasm: u32,
}

impl Metrics {
    fn define() -> Option<Metrics> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, &format!("jwtguard.{name}")).ok();
        let mut denied = Vec::new();
        for reason in Reason::ALL {
            denied.push((reason, counter(&format!("denied.{}", reason.name()))?));
        }
        Some(Metrics {
            allowed: counter("allowed")?,
            denied,
            cache_hit: counter("jwt_cache_hit")?,
            cache_miss: counter("jwt_cache_miss")?,
            verify_host: counter("verify.host_crypto")?,
            verify_wasm: counter("verify.wasm_crypto")?,
        })
    }

    fn add(id: u32, n: u32) {
        if n > 0 {
            let _ = hostcalls::increment_metric(id, i64::from(n));
        }
    }

    fn record(&self, tally: &Tally) {
        Self::add(self.cache_hit, tally.cache_hits);
        Self::add(self.cache_miss, tally.cache_misses);
        Self::add(self.verify_host, tally.host_verifications);
        Self::add(self.verify_wasm, tally.wasm_verifications);
    }

    fn denied(&self, reason: Reason) {
        if let Some((_, id)) = self.denied.iter().find(|(r, _)| *r == reason) {
            Self::add(*id, 1);
        }
    }
}

struct Shared {
    auth: RefCell<Authenticator>,
    style: ResponseStyle,
    metrics: Metrics,
    host: Option<EnvoyCrypto>,
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                error!("jwtguard: {e}");
                return false;
            }
        };
        let Some(metrics) = Metrics::define() else {
            error!("jwtguard: the host refused to define stats");
            return false;
        };
        let host = (config.host_crypto && host_crypto::self_test(&EnvoyCrypto)).then_some(EnvoyCrypto);
        if config.host_crypto && host.is_none() {
            warn!("jwtguard: the host has no working verify_signature; RS*/ES* verify in wasm (slower)");
        }
        let providers: Vec<String> =
            config.providers.iter().map(|p| format!("{} ({} keys)", p.name, p.keys.len())).collect();
        info!(
            "jwtguard: providers {}; {} rules; crypto: {}",
            providers.join(", "),
            config.rules.len(),
            if host.is_some() { "Envoy verify_signature for RS*/ES*, wasm for the rest" } else { "wasm" }
        );
        let style =
            ResponseStyle { realm: config.realm.clone(), include_error_description: config.include_error_description };
        self.shared = Some(Rc::new(Shared { auth: RefCell::new(Authenticator::new(config)), style, metrics, host }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Filter { shared }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    shared: Rc<Shared>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let shared = self.shared.clone();
        let Ok(mut auth) = shared.auth.try_borrow_mut() else {
            return self.deny(Reason::Malformed, None);
        };
        // One host call for all headers: cheaper than one per header we look at.
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        // A client must never be able to send what looks like a verified claim.
        for name in &auth.config.output_headers {
            if headers.iter().any(|(k, _)| k == name) {
                self.set_http_request_header(name, None);
            }
        }
        let pseudo = |name: &str| headers.values(name).first().copied().unwrap_or("");
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        let now = self.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let request = Request { method, path, headers: &headers };
        let mut tally = Tally::default();
        let host = shared.host.as_ref().map(|h| h as &dyn HostCrypto);
        let decision = auth.authenticate(&request, now, host, &mut tally);
        drop(auth);
        shared.metrics.record(&tally);
        match decision {
            Decision::Pass => Action::Continue,
            Decision::Allow { headers, strip, .. } => {
                for name in strip {
                    self.set_http_request_header(&name, None);
                }
                for (name, value) in headers {
                    self.set_http_request_header(&name, Some(&value));
                }
                Metrics::add(shared.metrics.allowed, 1);
                Action::Continue
            }
            Decision::Deny { reason, scope } => {
                debug!("jwtguard: {method} {path} denied: {}", reason.name());
                self.deny(reason, scope.as_deref())
            }
        }
    }
}

impl Filter {
    fn deny(&mut self, reason: Reason, scope: Option<&str>) -> Action {
        self.shared.metrics.denied(reason);
        let r = response::denial(&self.shared.style, reason, scope);
        let headers = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(r.status, headers, Some(r.body.as_bytes()));
        Action::Pause
    }
}
