//! A hostile HTTP handler for the exhaustion tests: `GET /N` answers with N bytes, streamed in
//! 64 KiB chunks, so tests can check that `limits.body` cuts off what a served component sends;
//! `GET /spin` never returns (a busy loop, no host call).

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Handler;

impl wasi::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path == "/spin" {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let n: u64 = path.trim_start_matches('/').parse().unwrap_or(0);
        let response = OutgoingResponse::new(Fields::new());
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(out, Ok(response));
        let Ok(stream) = body.write() else { return };
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let len = left.min(chunk.len() as u64) as usize;
            let mut part = &chunk[..len];
            // `blocking_write_and_flush` takes at most 4096 bytes at a time.
            while !part.is_empty() {
                let k = part.len().min(4096);
                if stream.blocking_write_and_flush(&part[..k]).is_err() {
                    return;
                }
                part = &part[k..];
            }
            left -= len as u64;
        }
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Handler);
