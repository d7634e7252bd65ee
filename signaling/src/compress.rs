//! HTTP compression: the web client's files go out in brotli (or gzip, for a client that does
//! not take brotli), each compressed once, on first request, at the best setting, and kept
//! (keyed by path, content hash and coding, so a changed file in a debug build is compressed
//! anew); JSON answers of the API are gzipped per response when worth it (they differ per
//! request, and gzip is the cheaper of the two to make). The WebSocket is
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

/// A content coding the server makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Coding {
    /// `br`.
    Brotli,
    /// `gzip`.
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// Whether the request accepts gzip (`Accept-Encoding: gzip`, not `gzip;q=0`).
pub(crate) fn gzip_accepted(headers: &HeaderMap) -> bool {
    accepted(headers, "gzip")
}

/// The coding for a file: brotli when the client takes it, else gzip, else none.
pub(crate) fn file_coding(headers: &HeaderMap) -> Option<Coding> {
    if accepted(headers, "br") {
        Some(Coding::Brotli)
    } else if accepted(headers, "gzip") {
        Some(Coding::Gzip)
    } else {
        None
    }
}

/// Whether `Accept-Encoding` takes `name` (by name or `*`, with a weight above zero).
fn accepted(headers: &HeaderMap, name: &str) -> bool {
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
            (coding.eq_ignore_ascii_case(name) || coding == "*") && !refused
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

/// Brotli at its best quality (11) and a 4 MiB window: slow to make, which is why a file is
/// made once.
fn brotli(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).ok()?;
    Some(out)
}

type Cache = Mutex<HashMap<(String, [u8; 32], Coding), Option<Arc<[u8]>>>>;

/// An embedded file in `coding`, made on its first request. `None` when the coding would not
/// make it smaller.
pub(crate) fn cached(
    path: &str,
    file: &rust_embed::EmbeddedFile,
    coding: Coding,
) -> Option<Arc<[u8]>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (path.to_string(), file.metadata.sha256_hash(), coding);
    if let Some(hit) = cache.lock().ok()?.get(&key) {
        return hit.clone();
    }
    let made = match coding {
        Coding::Brotli => brotli(&file.data),
        Coding::Gzip => gzip(&file.data),
    }
    .filter(|z| z.len() < file.data.len())
    .map(Arc::<[u8]>::from);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, made.clone());
    }
    made
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

    #[test]
    fn files_prefer_brotli_then_gzip() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            file_coding(&m)
        };
        assert_eq!(h("gzip, deflate, br, zstd"), Some(Coding::Brotli));
        assert_eq!(h("gzip, br;q=0"), Some(Coding::Gzip));
        assert_eq!(h("identity"), None);
    }

    #[test]
    fn brotli_round_trips_and_beats_gzip_on_text() {
        let text = "the quick brown fox jumps over the lazy dog; ".repeat(200);
        let br = brotli(text.as_bytes()).unwrap();
        let gz = gzip(text.as_bytes()).unwrap();
        assert!(br.len() < gz.len(), "{} >= {}", br.len(), gz.len());
        let mut out = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut out).unwrap();
        assert_eq!(out, text.as_bytes());
    }
}
