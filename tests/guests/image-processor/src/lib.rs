//! The image service's processor: decodes PNG, applies a filter to every pixel, encodes PNG.

use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({ path: "../../../wit", world: "processor" });

use exports::example::image::image_processor::{Dimension, FilterType, Guest};

static PROCESSED: AtomicU32 = AtomicU32::new(0);

/// Decodes any PNG into 8-bit RGBA.
fn decode(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| format!("not a PNG: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("bad PNG data: {e}"))?;
    let px = (info.width * info.height) as usize;
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf[..px * 4].to_vec(),
        png::ColorType::Rgb => buf[..px * 3].chunks(3).flat_map(|c| [c[0], c[1], c[2], 255]).collect(),
        png::ColorType::GrayscaleAlpha => buf[..px * 2].chunks(2).flat_map(|c| [c[0], c[0], c[0], c[1]]).collect(),
        png::ColorType::Grayscale => buf[..px].iter().flat_map(|&g| [g, g, g, 255]).collect(),
        other => return Err(format!("unsupported PNG colour type {other:?}")),
    };
    Ok((info.width, info.height, rgba))
}

fn encode(width: u32, height: u32, rgba: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgba).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The filters, per pixel (alpha is kept). Integer arithmetic, so results are exact.
fn filter_pixel(f: &FilterType, r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (r as u32, g as u32, b as u32);
    match f {
        FilterType::Grayscale => {
            let y = ((299 * r + 587 * g + 114 * b) / 1000) as u8;
            [y, y, y]
        }
        FilterType::Sepia => [
            ((393 * r + 769 * g + 189 * b) / 1000).min(255) as u8,
            ((349 * r + 686 * g + 168 * b) / 1000).min(255) as u8,
            ((272 * r + 534 * g + 131 * b) / 1000).min(255) as u8,
        ],
        FilterType::Invert => [255 - r as u8, 255 - g as u8, 255 - b as u8],
    }
}

struct Processor;

impl Guest for Processor {
    fn apply_filter(image: Vec<u8>, filter: FilterType) -> Result<Vec<u8>, String> {
        let (w, h, mut rgba) = decode(&image)?;
        for px in rgba.chunks_mut(4) {
            let [r, g, b] = filter_pixel(&filter, px[0], px[1], px[2]);
            px[0] = r;
            px[1] = g;
            px[2] = b;
        }
        PROCESSED.fetch_add(1, Ordering::Relaxed);
        encode(w, h, &rgba)
    }

    fn get_dimensions(image: Vec<u8>) -> Result<Dimension, String> {
        let (width, height, _) = decode(&image)?;
        Ok(Dimension { width, height })
    }

    fn admin_stats() -> String {
        format!("processed {} images", PROCESSED.load(Ordering::Relaxed))
    }
}

export!(Processor);
