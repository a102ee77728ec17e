//! The image service's HTTP front: `wasi:http/incoming-handler`, calling the processor.
//!
//! - `POST /filter?type=grayscale|sepia|invert` with a PNG body: the filtered PNG.
//! - `POST /dimensions` with a PNG body: `{"width":W,"height":H}`.
//! - `GET /admin`: asks the processor for its stats, which the demo policy does not allow.

wit_bindgen::generate!({ path: "../../../wit", world: "processor-client" });

use example::image::image_processor::{self as processor, FilterType};
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Handler;

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())]).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request.consume().map_err(|_| "no body")?;
    let stream = body.stream().map_err(|_| "no body stream")?;
    let mut out = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl wasi::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
        match route {
            "/filter" => {
                let filter = match query.split('&').find_map(|kv| kv.strip_prefix("type=")) {
                    Some("grayscale") => FilterType::Grayscale,
                    Some("sepia") => FilterType::Sepia,
                    Some("invert") => FilterType::Invert,
                    _ => return respond(out, 400, "text/plain", b"use ?type=grayscale, sepia or invert\n"),
                };
                match read_body(&request).and_then(|png| processor::apply_filter(&png, filter)) {
                    Ok(png) => respond(out, 200, "image/png", &png),
                    Err(e) => respond(out, 400, "text/plain", format!("{e}\n").as_bytes()),
                }
            }
            "/dimensions" => match read_body(&request).and_then(|png| processor::get_dimensions(&png)) {
                Ok(d) => respond(out, 200, "application/json", format!("{{\"width\":{},\"height\":{}}}\n", d.width, d.height).as_bytes()),
                Err(e) => respond(out, 400, "text/plain", format!("{e}\n").as_bytes()),
            },
            "/admin" => respond(out, 200, "text/plain", processor::admin_stats().as_bytes()),
            _ => respond(out, 404, "text/plain", b"routes: POST /filter?type=..., POST /dimensions\n"),
        }
    }
}

wasi::http::proxy::export!(Handler);
