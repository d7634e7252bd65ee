//! HTTP compression (gzip): the web client's files are compressed once, on first request, and
//! kept (keyed by path and content hash, so a changed file in a debug build is compressed
//! anew); JSON answers of the API are compressed per response when worth it. The WebSocket is
//! not compressed: axum's WebSocket (tungstenite 0.29) has no permessage-deflate (see
//! docs/architecture.md for what it would save).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;

/// JSON bodies smaller than this go out as they are (gzip's header would eat the gain).
const MIN_JSON_BYTES: usize = 256;
/// JSON bodies larger than this are not buffered for compression.
const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;

/// Whether the request accepts gzip (`Accept-Encoding: gzip`, not `gzip;q=0`).
pub(crate) fn gzip_accepted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused =
                parts.any(|p| p.replace(' ', "") == "q=0" || p.replace(' ', "") == "q=0.0");
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// Formats worth compressing: text, SVG and WebAssembly (the vendored MediaPipe wasm shrinks
/// by more than half); pictures and fonts of the web client are compressed already.
pub(crate) fn compressible(mime: &str) -> bool {
    mime.starts_with("text/")
        || mime.contains("javascript")
        || mime.contains("json")
        || mime == "image/svg+xml"
        || mime == "application/wasm"
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).ok()?;
    enc.finish().ok()
}

type Cache = Mutex<HashMap<(String, [u8; 32]), Option<Arc<[u8]>>>>;

/// The gzip of an embedded file, made on its first request. `None` when gzip would not make it
/// smaller.
pub(crate) fn cached_gzip(path: &str, file: &rust_embed::EmbeddedFile) -> Option<Vec<u8>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (path.to_string(), file.metadata.sha256_hash());
    if let Some(hit) = cache.lock().ok()?.get(&key) {
        return hit.as_ref().map(|b| b.to_vec());
    }
    let made = gzip(&file.data)
        .filter(|gz| gz.len() < file.data.len())
        .map(Arc::<[u8]>::from);
    let out = made.as_ref().map(|b| b.to_vec());
    if let Ok(mut c) = cache.lock() {
        c.insert(key, made);
    }
    out
}

/// Middleware: a JSON answer of at least [`MIN_JSON_BYTES`] to a client that accepts gzip goes
/// out gzipped. Anything else (already encoded, not JSON, a WebSocket upgrade, a stream of
/// unknown length) passes untouched.
pub(crate) async fn json(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let accepts = gzip_accepted(req.headers());
    let res = next.run(req).await;
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let sized = axum::body::HttpBody::size_hint(res.body())
        .exact()
        .is_some_and(|n| (MIN_JSON_BYTES as u64..=MAX_JSON_BYTES as u64).contains(&n));
    if !accepts || !json || !sized || res.headers().contains_key(header::CONTENT_ENCODING) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_JSON_BYTES).await else {
        return Response::from_parts(parts, Body::empty());
    };
    match gzip(&bytes).filter(|gz| gz.len() < bytes.len()) {
        Some(gz) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts
                .headers
                .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            Response::from_parts(parts, Body::from(gz))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            gzip_accepted(&m)
        };
        assert!(h("gzip, deflate, br"));
        assert!(h("br;q=1.0, gzip;q=0.8"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("br, deflate"));
        assert!(!gzip_accepted(&HeaderMap::new()));
    }
}
