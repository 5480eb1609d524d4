//! Bytes as an upload or a DICOM file: decoded with the limits `serve` uses. Any answer is
//! fine but a decoder fault (a panic the decoding boundary caught): that is reported as a
//! crash, so that it is found and fixed rather than hidden.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xray_codec::decode::decode_image_bytes;
use xray_codec::ImageFault;

/// `serve`'s default `--max-megapixels` is 50; smaller here keeps each run fast.
const MAX_PIXELS: u64 = 4_000_000;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = decode_image_bytes(data, std::path::Path::new("fuzz"), MAX_PIXELS) {
        assert!(e.kind != ImageFault::DecoderFault, "{e}");
    }
});
