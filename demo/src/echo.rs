//! A tiny HTTP/1.1 upstream that answers every request with the headers it received as JSON,
//! so tests can see exactly what the filter forwarded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

pub struct Echo {
    pub port: u16,
}

impl Echo {
    /// Serves on `addr` (port 0 for an ephemeral one) from background threads.
    pub fn start(addr: &str) -> std::io::Result<Echo> {
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream));
            }
        });
        Ok(Echo { port })
    }
}

/// Serves `body` as JSON for every request (the demo's JWKS endpoint).
pub fn start_static(addr: &str, body: String) -> std::io::Result<u16> {
    let listener = TcpListener::bind(addr)?;
    let port = listener.local_addr()?.port();
    let body = std::sync::Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || respond_each(stream, &|_, _| body.to_string()));
        }
    });
    Ok(port)
}

fn serve(stream: TcpStream) {
    respond_each(stream, &|method, (path, headers)| {
        serde_json::json!({"method": method, "path": path, "headers": headers}).to_string()
    });
}

type Answer<'a> = &'a dyn Fn(&str, (&str, &serde_json::Map<String, serde_json::Value>)) -> String;

/// Reads HTTP/1.1 requests off one connection and answers each with `answer`'s JSON.
fn respond_each(stream: TcpStream, answer: Answer) {
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
        let mut headers = serde_json::Map::new();
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
        let reply = answer(&method, (&path, &headers));
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
