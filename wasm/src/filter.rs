//! The proxy-wasm glue: the root context (configuration, the tick, callouts it started) and the
//! HTTP context (one request). What they do with a request is the core's `engine`; this file
//! only moves Envoy's callbacks there.

use crate::host::{self, EnvoyCrypto, WasmHost};
use jwtguard::config::Config;
use jwtguard::engine::{Action, Callout, Engine};
use jwtguard::fast_hash::FastMap;
use jwtguard::host_crypto;
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{self, BufferType, ContextType, LogLevel, MapType};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { engine: None, callouts: FastMap::default() }) });
}}

/// The status and body of the callout answer being delivered.
fn callout_answer(body_size: usize) -> (Option<u16>, Option<Vec<u8>>) {
    let status = host::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
    let body = host::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(1 << 20)).ok().flatten();
    (status, body)
}

fn action(action: Action) -> types::Action {
    match action {
        Action::Continue => types::Action::Continue,
        Action::Pause => types::Action::Pause,
    }
}

struct Root {
    engine: Option<Rc<Engine>>,
    /// Callouts this root started: the request they are for (0 for none) and why.
    callouts: FastMap<u32, (u32, Callout)>,
}

/// Sends a callout; the SDK routes its answer to the context that is current (`active_id`).
fn dispatch(cluster: &str, headers: Vec<(&str, &str)>, body: Option<&[u8]>, timeout: Duration) -> Result<u32, String> {
    proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout).map_err(|s| format!("{s:?}"))
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(engine) = self.engine.clone() else { return };
        let Some((context_id, callout)) = self.callouts.remove(&token) else { return };
        let (status, body) = callout_answer(body_size);
        let mut started = Vec::new();
        engine.on_callout(callout, context_id, status, body.as_deref(), &dispatch, &mut |t, ctx, c| {
            started.push((t, ctx, c))
        });
        self.callouts.extend(started.into_iter().map(|(t, ctx, c)| (t, (ctx, c))));
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                error!("jwtguard: {e}");
                return false;
            }
        };
        let crypto = (config.host_crypto && host_crypto::self_test(&EnvoyCrypto)).then_some(EnvoyCrypto);
        if config.host_crypto && crypto.is_none() {
            warn!("jwtguard: the host has no working verify_signature; RS*/ES* verify in wasm (slower)");
        }
        // Shorter than the module's `Config::summary` line: the .wasm is size-bound.
        info!(
            "jwtguard: providers: {}; {} rules; revocation {}; crypto: {}",
            config.providers.len(),
            config.rules.len(),
            if config.revocation.is_some() { "on" } else { "off" },
            if crypto.is_some() { "Envoy verify_signature for RS*/ES*, wasm for the rest" } else { "wasm" }
        );
        // Every VM does its own background work and holds its own feed.
        let engine = match Engine::new(config, Box::new(WasmHost { crypto }), true, None) {
            Ok(engine) => engine,
            Err(e) => {
                error!("jwtguard: {e}");
                return false;
            }
        };
        let _ = host::set_tick_period(Duration::from_millis(engine.tick_ms()));
        // Keys are fetched from the first tick, not here: Envoy configures a short-lived VM on
        // the main thread too, and a fetch it claimed would be lost with it.
        self.engine = Some(Rc::new(engine));
        true
    }

    fn on_tick(&mut self) {
        let Some(engine) = self.engine.clone() else { return };
        let mut started = Vec::new();
        engine.tick(&dispatch, &mut |t, ctx, c| started.push((t, ctx, c)));
        self.callouts.extend(started.into_iter().map(|(t, ctx, c)| (t, (ctx, c))));
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let engine = self.engine.clone()?;
        Some(Box::new(Filter { engine, context_id, callout: None, paused: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    engine: Rc<Engine>,
    context_id: u32,
    callout: Option<Callout>,
    /// Whether its request waited (for keys, the revocation set or an answer).
    paused: bool,
}

impl Drop for Filter {
    /// The engine forgets a request that waited, and sends again a check its stream sent.
    fn drop(&mut self) {
        if self.paused {
            self.engine.request_gone(self.context_id);
        }
    }
}

impl Context for Filter {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let (status, body) = callout_answer(body_size);
        if let Some(callout) = self.callout.take() {
            self.engine.on_request_callout(callout, self.context_id, status, body.as_deref());
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> types::Action {
        // One host call for all headers: cheaper than one per header we look at. Without them
        // nothing can be judged (no path, no token): refuse rather than let it pass unchecked.
        let engine = self.engine.clone();
        let Ok(headers) = host::get_map(MapType::HttpRequestHeaders) else {
            engine.deny(jwtguard::reason::Reason::Malformed, None);
            return types::Action::Pause;
        };
        let (result, callout) = engine.handle(self.context_id, false, &headers, None, &dispatch);
        self.callout = callout.map(|(_, c)| c);
        self.paused = result == Action::Pause;
        action(result)
    }
}
