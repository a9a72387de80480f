//! A tiny HTTP/1.1 server: the upstream that answers every request with the headers it received
//! as JSON, so tests can see exactly what the filter forwarded, and `serve` for other stand-ins
//! (the demo's JWKS, the identity provider) that choose their answer.

use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

pub struct Echo {
    pub port: u16,
}

impl Echo {
    /// Serves on `addr` (port 0 for an ephemeral one) from background threads.
    pub fn start(addr: &str) -> std::io::Result<Echo> {
        let port = serve(addr, |request| {
            Reply::json(200, &json!({"method": request.method, "path": request.path, "headers": request.headers}))
        })?;
        Ok(Echo { port })
    }
}

/// Serves `body` as JSON for every request (the demo's JWKS endpoint).
pub fn start_static(addr: &str, body: String) -> std::io::Result<u16> {
    serve(addr, move |_| Reply { status: 200, headers: Vec::new(), body: body.clone() })
}

/// One request as read off the wire; header names are lower-cased. Bodies are read by
/// `content-length` only (no chunked requests).
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Map<String, Value>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).and_then(Value::as_str)
    }
}

/// A status, extra headers, and a JSON body (none when empty).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply { status, headers: Vec::new(), body: body.to_string() }
    }

    pub fn empty(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), body: String::new() }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// Serves HTTP/1.1 on `addr` (port 0 for an ephemeral one) from background threads, a thread
/// per connection, answering each request with `handler`. Returns the port.
pub fn serve(addr: &str, handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> std::io::Result<u16> {
    let listener = TcpListener::bind(addr)?;
    let port = listener.local_addr()?.port();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || respond_each(stream, &*handler));
        }
    });
    Ok(port)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "",
    }
}

/// Reads HTTP/1.1 requests off one connection and answers each with `handler`'s reply.
fn respond_each(stream: TcpStream, handler: &dyn Fn(&Request) -> Reply) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Map::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                headers.insert(k, v.into());
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply = handler(&Request { method, path, headers, body });
        let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        if !reply.body.is_empty() {
            head.push_str("content-type: application/json\r\n");
        }
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", reply.body.len()));
        if out.write_all(head.as_bytes()).and_then(|()| out.write_all(reply.body.as_bytes())).is_err() {
            return;
        }
    }
}
