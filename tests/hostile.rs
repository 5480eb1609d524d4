//! `xray serve` on a hostile network, each attack against a real server on 127.0.0.1 with
//! bounded loops and time: slow unauthenticated uploads (answered 401 from the headers, memory
//! flat), half-sent headers (closed by the header timeout), the connection cap, decompression
//! bombs in PNG and DICOM (refused from their headers) and a request of sixteen 49-megapixel
//! 16-bit PNGs (memory below the bound of `MemoryBound`), refusals audited once with the
//! server's request id, /metrics behind the token, and the security headers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value as DicomValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use serde_json::{json, Value};
use xray::serve::{MemoryBound, ServeOptions};

use crate::common::trained;
use crate::hardened::token_file;
use crate::serve::Server;

const TOKEN: &str = "clinic-a-7f3c9e1d2b4a6f80";
const EXPIRED: &str = "old-token-5e8d2c7a9b1f3e46";
const MIB: u64 = 1 << 20;

/// Resident memory of process `pid`, in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Samples a process's resident memory every 10 ms until stopped; the peak.
pub(crate) struct Peak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Peak {
    pub(crate) fn watch(pid: u32) -> Peak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss(pid)));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Peak { stop, peak, thread }
    }

    pub(crate) fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// `host:port` of a server's `http://` base.
fn authority(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// The status code of an HTTP/1.1 response head in `bytes`, once its first line is complete.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .split("\r\n")
        .next()
        .filter(|_| text.contains("\r\n"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn slow_unauthenticated_uploads_are_refused_from_their_headers() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let mut server = Server::start(&t.run, &["--token-file", tokens.to_str().unwrap()]);
    server.healthy();
    let pid = server.child.id();
    let before = rss(pid);
    let peak = Peak::watch(pid);
    let addr = authority(&server);
    let png = std::fs::read(t.data.join("normal/normal_00003.png")).unwrap();
    let (answers, good) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..50)
            .map(|_| {
                let addr = addr.clone();
                s.spawn(move || {
                    let mut c = TcpStream::connect(&addr).unwrap();
                    c.write_all(
                        b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                          Content-Type: multipart/form-data; boundary=b\r\n\
                          Content-Length: 33554432\r\n\r\n",
                    )
                    .unwrap();
                    let started = Instant::now();
                    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let chunk = vec![b'x'; 8192];
                    let mut got = Vec::new();
                    // The body, slowly (8 KiB every 50 ms), until an answer comes: at most 10 s.
                    while started.elapsed() < Duration::from_secs(10) {
                        let _ = c.write_all(&chunk);
                        let mut buf = [0u8; 4096];
                        match c.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                got.extend_from_slice(&buf[..n]);
                                if let Some(code) = status_of(&got) {
                                    return (Some(code), started.elapsed().as_secs_f64());
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    (status_of(&got), started.elapsed().as_secs_f64())
                })
            })
            .collect();
        // Meanwhile a client with a token is answered.
        std::thread::sleep(Duration::from_millis(300));
        server.token = Some(TOKEN.into());
        let good = server.predict("n.png", &png, "");
        let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        (answers, good)
    });
    let peak = peak.stop();
    assert_eq!(good.0, 200, "{}", good.1);
    let slowest = answers.iter().map(|a| a.1).fold(0.0, f64::max);
    eprintln!(
        "50 slow unauthenticated 32 MiB uploads: resident memory {} -> peak {} MiB; \
         slowest 401 after {slowest:.2} s",
        before / MIB,
        peak / MIB
    );
    for (code, secs) in &answers {
        assert_eq!(*code, Some(401), "after {secs:.2} s");
        assert!(*secs < 2.0, "the 401 took {secs:.2} s");
    }
    assert!(
        peak.saturating_sub(before) < 64 * MIB,
        "resident memory grew by {} MiB",
        (peak - before) / MIB
    );
    server.healthy();
}

/// Sends `head` (a request head, with its blank line) and then `body` in pieces of `piece`
/// bytes every `every`, stopping early when an answer comes; the answer's status and when it
/// came.
fn trickle(
    addr: &str,
    head: &str,
    body: &[u8],
    piece: usize,
    every: Duration,
) -> (Option<u16>, f64) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    c.set_read_timeout(Some(every.max(Duration::from_millis(10))))
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(20) {
        if sent < body.len() {
            let end = (sent + piece).min(body.len());
            if c.write_all(&body[sent..end]).is_err() {
                break;
            }
            sent = end;
        }
        let mut buf = [0u8; 4096];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if let Some(code) = status_of(&got) {
                    return (Some(code), started.elapsed().as_secs_f64());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    (status_of(&got), started.elapsed().as_secs_f64())
}

/// With a valid token, a body is still bounded while it streams: a chunked one (no declared
/// size) is cut at `--max-upload-mb` (413), one that trickles in slower than `--body-timeout`
/// allows gets 408, and one that stops coming is cut after `--body-idle-timeout` (408).
#[test]
fn bodies_are_bounded_while_they_stream() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let server = Server::start(
        &t.run,
        &[
            "--token-file",
            tokens.to_str().unwrap(),
            "--max-upload-mb",
            "1",
            "--body-timeout",
            "3",
            "--body-idle-timeout",
            "1",
        ],
    );
    let addr = authority(&server);
    let part = "--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n";
    let head = |framing: &str| {
        format!(
            "POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: multipart/form-data; boundary=b\r\n{framing}\r\n"
        )
    };
    // 2 MiB in 64 KiB chunks, no Content-Length.
    let mut chunked = Vec::new();
    let mut payload = part.as_bytes().to_vec();
    payload.resize(2 << 20, b'x');
    for piece in payload.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    let (code, secs) = trickle(
        &addr,
        &head("Transfer-Encoding: chunked\r\n"),
        &chunked,
        64 << 10,
        Duration::from_millis(1),
    );
    assert_eq!(code, Some(413), "chunked past the limit ({secs:.1} s)");
    // 100 KB declared, sent 2 KB every 200 ms: 10 s at that pace, cut at 3.
    let mut slow = part.as_bytes().to_vec();
    slow.resize(100_000, b'x');
    let declared = format!("Content-Length: {}\r\n", slow.len());
    let (code, secs) = trickle(
        &addr,
        &head(&declared),
        &slow,
        2000,
        Duration::from_millis(200),
    );
    assert_eq!(code, Some(408), "a trickle ({secs:.1} s)");
    assert!((2.5..6.0).contains(&secs), "408 after {secs:.1} s");
    // The part's head, then nothing.
    let (code, secs) = trickle(
        &addr,
        &head(&declared),
        part.as_bytes(),
        part.len(),
        Duration::from_millis(100),
    );
    assert_eq!(code, Some(408), "a stalled body ({secs:.1} s)");
    assert!(secs < 2.5, "cut after {secs:.1} s, the idle timeout is 1 s");
    eprintln!("chunked 2 MiB: 413; a 2 KB/200 ms trickle: 408 at the 3 s body timeout; a stall: 408 after {secs:.1} s (idle timeout 1 s)");
    server.healthy();
}

#[test]
fn half_sent_headers_and_idle_connections_are_closed_by_the_header_timeout() {
    let t = trained();
    let server = Server::start(
        &t.run,
        &[
            "--header-timeout",
            "3",
            "--max-connections",
            "600",
            "--max-connections-per-ip",
            "600",
        ],
    );
    let addr = authority(&server);
    let mut open: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    // One keep-alive connection that asks once, then idles.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut first = [0u8; 1024];
    let n = idle.read(&mut first).unwrap();
    assert_eq!(status_of(&first[..n]), Some(200));
    idle.set_nonblocking(true).unwrap();
    open.push(idle);
    // The clock starts once all are open (opening 500 takes a moment on a busy machine).
    let started = Instant::now();

    let deadline = Duration::from_secs(3 + 5);
    let mut last_closed = 0.0;
    let mut checks = 0;
    while !open.is_empty() && started.elapsed() < deadline {
        open.retain_mut(|c| {
            let mut buf = [0u8; 1024];
            match c.read(&mut buf) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(_) => false,
            }
        });
        if open.is_empty() {
            last_closed = started.elapsed().as_secs_f64();
        }
        // The server answers throughout.
        server.healthy();
        checks += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "500 half-sent headers and 1 idle keep-alive connection, header timeout 3 s: \
         all closed {last_closed:.1} s after the last was opened ({checks} health checks \
         answered meanwhile)"
    );
    assert!(
        open.is_empty(),
        "{} connections still open after {deadline:?}",
        open.len()
    );
    assert!(
        last_closed >= 2.5,
        "closed before the timeout: {last_closed}"
    );
}

#[test]
fn connections_past_the_cap_are_closed_at_once() {
    let t = trained();
    let server = Server::start(&t.run, &["--max-connections", "8"]);
    let addr = authority(&server);
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut ninth = TcpStream::connect(&addr).unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let _ = ninth.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = [0u8; 256];
    let closed = match ninth.read(&mut buf) {
        Ok(0) | Err(_) => true,
        Ok(n) => panic!(
            "answered past the cap: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
    };
    assert!(closed && started.elapsed() < Duration::from_secs(2));
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    server.healthy();
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.2, ...).
pub(crate) fn connect_from(from: &str, addr: &str) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let to: std::net::SocketAddr = addr.parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// Whether the server closes `c` without an answer to a health check.
fn closed_unanswered(mut c: TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = [0u8; 256];
    matches!(c.read(&mut buf), Ok(0) | Err(_))
}

/// `--max-connections-per-ip`: one address holding its share cannot open more, while other
/// addresses still get in; a closed connection gives its address a place back.
#[test]
fn one_address_cannot_hold_every_connection() {
    let t = trained();
    let server = Server::start(
        &t.run,
        &["--max-connections", "16", "--max-connections-per-ip", "4"],
    );
    let addr = authority(&server);
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = connect_from("127.0.0.1", &addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let fifth = connect_from("127.0.0.1", &addr).unwrap();
    assert!(closed_unanswered(fifth), "a fifth from 127.0.0.1");
    // A health check from `from`: its status.
    let health = |from: &str| {
        let mut c = connect_from(from, &addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        status_of(&answer)
    };
    assert_eq!(
        health("127.0.0.2"),
        Some(200),
        "another address is answered"
    );
    // One closed: 127.0.0.1 gets its place back.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(health("127.0.0.1"), Some(200), "after one closed");
}

/// An 8-bit DICOM of `rows` x `columns` x `samples` whose data set is deflated (transfer
/// syntax 1.2.840.10008.1.2.1.99) or not: the header elements, then `pixels` (when `Some`) or
/// `zeros` zero bytes as PixelData, streamed through the encoder (an 805 MB set of zeros
/// deflates to under 1 MB without being held in memory).
fn dicom_8bit(
    rows: u16,
    columns: u16,
    samples: u16,
    pixels: Option<&[u8]>,
    zeros: u64,
    deflated: bool,
) -> Vec<u8> {
    dicom_raw(rows, columns, samples, 8, pixels, zeros, deflated)
}

/// [`dicom_8bit`] with `bits` (8 or 16) a sample.
fn dicom_raw(
    rows: u16,
    columns: u16,
    samples: u16,
    bits: u16,
    pixels: Option<&[u8]>,
    zeros: u64,
    deflated: bool,
) -> Vec<u8> {
    let rgb = samples == 3;
    let mut header = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        ),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.42"),
        DataElement::new(tags::MODALITY, VR::CS, "DX"),
        DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(samples),
        ),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            if rgb { "RGB" } else { "MONOCHROME2" },
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(columns)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(bits)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(bits)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(bits - 1)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
    ]);
    if rgb {
        header.put(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
    }
    let explicit = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .unwrap();
    use dicom_transfer_syntax_registry::TransferSyntaxIndex;
    let mut data_set = Vec::new();
    header
        .write_dataset_with_ts(&mut data_set, explicit)
        .unwrap();
    let ts = if deflated {
        "1.2.840.10008.1.2.1.99"
    } else {
        uids::EXPLICIT_VR_LITTLE_ENDIAN
    };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
        .media_storage_sop_instance_uid("2.25.42")
        .build()
        .unwrap();
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).unwrap();
    let length = pixels.map_or(zeros, |p| p.len() as u64);
    let mut body: Box<dyn Write> = if deflated {
        Box::new(flate2::write::DeflateEncoder::new(
            &mut out,
            flate2::Compression::best(),
        ))
    } else {
        Box::new(&mut out)
    };
    body.write_all(&data_set).unwrap();
    let vr = if bits > 8 { b'W' } else { b'B' };
    body.write_all(&[0xE0, 0x7F, 0x10, 0x00, b'O', vr, 0, 0])
        .unwrap();
    body.write_all(&(length as u32).to_le_bytes()).unwrap();
    match pixels {
        Some(p) => body.write_all(p).unwrap(),
        None => {
            let block = vec![0u8; 1 << 20];
            let mut left = zeros;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                body.write_all(&block[..n]).unwrap();
                left -= n as u64;
            }
        }
    }
    body.flush().unwrap();
    drop(body);
    out
}

/// An encapsulated JPEG baseline DICOM declaring `side` x `side` RGB, its one fragment a
/// small real JPEG.
fn jpeg_dicom(side: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::RgbImage::new(16, 16)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        ),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.43"),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(3u16)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "YBR_FULL_422"),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(side)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(side)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            DicomValue::PixelSequence(PixelFragmentSequence::new(vec![], vec![jpeg])),
        ),
    ]);
    let mut out = Vec::new();
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::JPEG_BASELINE8_BIT))
        .unwrap()
        .write_all(&mut out)
        .unwrap();
    out
}

/// A 16-bit grey PNG of `side` x `side` zeros (49 megapixels at 7,000: about 100 KB).
fn big_png16(side: u32) -> Vec<u8> {
    let img = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::new(side, side);
    let mut png = Vec::new();
    image::DynamicImage::ImageLuma16(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

#[test]
fn deflated_dicom_reads_like_the_uncompressed_one_from_a_file_and_an_upload() {
    let t = trained();
    let grey = image::open(t.data.join("opacity/opacity_00003.png"))
        .unwrap()
        .to_luma8();
    let (w, h) = grey.dimensions();
    let dir = tempfile::tempdir().unwrap();
    let mut decoded = Vec::new();
    for deflated in [false, true] {
        let bytes = dicom_8bit(h as u16, w as u16, 1, Some(grey.as_raw()), 0, deflated);
        let path = dir.path().join(format!("scan-{deflated}.dcm"));
        std::fs::write(&path, &bytes).unwrap();
        decoded.push(xray::data::decode::decode_image(&path).unwrap().to_luma8());
    }
    assert_eq!(decoded[0], decoded[1], "inflating changed the pixels");
    assert_eq!(decoded[0].dimensions(), (w, h));
}

#[test]
fn bombs_are_refused_from_their_headers_and_memory_stays_under_the_bound() {
    let t = trained();
    let server = Server::start(&t.run, &["--queue", "2", "--decode-threads", "2"]);
    server.healthy();
    let pid = server.child.id();
    let before = rss(pid);
    let peak = Peak::watch(pid);

    // A 1 KB PNG declaring 60000 x 60000.
    let png_bomb = crate::formats::huge_png_header(60_000);
    let (code, j) = server.predict("bomb.png", &png_bomb, "");
    assert_eq!(code, 413, "{j}");
    assert!(j["error"].as_str().unwrap().contains("too large"), "{j}");

    // A deflated DICOM of 16384 x 16384 x 3 zeros (805 MB inflated).
    let started = Instant::now();
    let deflate_bomb = dicom_8bit(16384, 16384, 3, None, 16384 * 16384 * 3, true);
    eprintln!(
        "deflate bomb: {} KB on the wire (built in {:.1} s)",
        deflate_bomb.len() / 1024,
        started.elapsed().as_secs_f64()
    );
    assert!(deflate_bomb.len() < 2 << 20);
    let (code, j) = server.predict("bomb.dcm", &deflate_bomb, "");
    assert_eq!(code, 413, "{j}");
    let msg = j["error"].as_str().unwrap();
    assert!(msg.contains("judged from the DICOM header"), "{msg}");

    // A deflated DICOM whose header says 64 x 64 but whose pixel data inflates to 805 MB.
    let liar = dicom_8bit(64, 64, 1, None, 16384 * 16384 * 3, true);
    let (code, j) = server.predict("liar.dcm", &liar, "");
    assert_eq!(code, 413, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("inflates past"),
        "{j}"
    );

    // A JPEG-in-DICOM declaring the same size.
    let (code, j) = server.predict("jpeg.dcm", &jpeg_dicom(16384), "");
    assert_eq!(code, 413, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("judged from the DICOM header"),
        "{j}"
    );
    let bombs_peak = peak.stop();

    // The largest image of each kind the limit lets in, one at a time: what one decoder holds.
    let side = 7000u32;
    let pixels = (side * side) as u64;
    let rgba16 = {
        let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::new(side, side);
        let mut png = Vec::new();
        image::DynamicImage::ImageRgba16(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    };
    let jpeg = {
        let mut jpeg = Vec::new();
        image::RgbImage::new(side, side)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        jpeg
    };
    let s16 = side as u16;
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("16-bit grey PNG", big_png16(side)),
        ("16-bit RGBA PNG", rgba16),
        ("RGB JPEG", jpeg),
        (
            "16-bit grey DICOM (deflated)",
            dicom_raw(s16, s16, 1, 16, None, pixels * 2, true),
        ),
        (
            "8-bit RGB DICOM (deflated)",
            dicom_raw(s16, s16, 3, 8, None, pixels * 3, true),
        ),
    ];
    let mut worst = 0.0f64;
    for (kind, bytes) in &kinds {
        let start = rss(pid);
        let peak = Peak::watch(pid);
        let (code, j) = server.predict("big", bytes, "?heatmap=true");
        let top = peak.stop();
        assert_eq!(code, 200, "{kind}: {j}");
        let per_pixel = top.saturating_sub(start) as f64 / pixels as f64;
        worst = worst.max(per_pixel);
        eprintln!(
            "{kind}, {side}x{side} ({} KB): resident memory {} -> peak {} MiB, {per_pixel:.1} bytes a pixel",
            bytes.len() / 1024,
            start / MIB,
            top / MIB
        );
    }
    assert!(
        worst < MemoryBound::DECODE_BYTES_PER_PIXEL as f64,
        "a decoder held {worst:.1} bytes a pixel"
    );

    // Two requests at once (the queue's limit), each of 16 PNGs of 49 megapixels, 16-bit.
    let big = big_png16(7000);
    let peak = Peak::watch(pid);
    let parts: Vec<(&str, &[u8])> = (0..16).map(|_| ("big.png", big.as_slice())).collect();
    let started = Instant::now();
    let answers: Vec<_> = std::thread::scope(|s| {
        let requests: Vec<_> = (0..2)
            .map(|_| s.spawn(|| server.try_post(&parts, "?heatmap=true").unwrap()))
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let big_peak = peak.stop();
    for (code, j, _) in &answers {
        assert_eq!(*code, 200, "{j}");
        assert_eq!(j["results"].as_array().unwrap().len(), 16);
    }
    let options = ServeOptions {
        queue: 2,
        decode_threads: 2,
        max_connections: xray::serve::options::default_max_connections(),
        ..ServeOptions::default()
    };
    let bound = MemoryBound::of(&options);
    eprintln!(
        "bombs: resident memory {} -> peak {} MiB; 2 x 16 PNGs of 49 MP 16-bit ({} KB each) \
         in {:.1} s: peak {} MiB, {} MiB over the start; bound for these flags {} MiB over \
         the model (decoding {} MiB, bodies {} MiB, decoded {} MiB, connections {} MiB)",
        before / MIB,
        bombs_peak / MIB,
        big.len() / 1024,
        started.elapsed().as_secs_f64(),
        big_peak / MIB,
        big_peak.saturating_sub(before) / MIB,
        bound.total() / MIB,
        bound.decoding / MIB,
        bound.bodies / MIB,
        bound.decoded / MIB,
        bound.connections / MIB,
    );
    assert!(
        bombs_peak.saturating_sub(before) < 64 * MIB,
        "the bombs raised resident memory by {} MiB",
        bombs_peak.saturating_sub(before) / MIB
    );
    assert!(
        big_peak.saturating_sub(before) < bound.total(),
        "{} MiB over the start, bound {} MiB",
        big_peak.saturating_sub(before) / MIB,
        bound.total() / MIB
    );
    server.healthy();
}

/// A multipart body of `n` copies of `bytes`.
fn multipart(n: usize, bytes: &[u8]) -> (String, Vec<u8>) {
    let parts: Vec<(&str, &[u8])> = (0..n).map(|_| ("f.png", bytes)).collect();
    crate::serve::multipart_body(&parts)
}

/// Sends `request` (with `X-Request-Id: theirs`): the status, the server's request id and the
/// headers.
fn send(
    request: ureq::Request,
    theirs: &str,
    body: Option<(&str, &[u8])>,
) -> (u16, String, ureq::Response) {
    let request = request.set("X-Request-Id", theirs);
    let result = match body {
        Some((content_type, bytes)) => request.set("Content-Type", content_type).send_bytes(bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{theirs}: {e}"),
    };
    let id = response.header("x-request-id").unwrap_or("").to_string();
    (response.status(), id, response)
}

#[test]
fn refusals_are_audited_once_with_the_servers_request_id_and_metrics_need_the_token() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let audit = dir.path().join("audit.jsonl");
    let server = Server::start(
        &t.run,
        &[
            "--token-file",
            tokens.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
            // Every refusal in full (not counted per address), to check each line.
            "--audit-aggregate-seconds",
            "0",
        ],
    );
    server.healthy();
    let png = std::fs::read(t.data.join("normal/normal_00003.png")).unwrap();
    let url = |path: &str| format!("{}{path}", server.base);
    let bearer = |token: &str| format!("Bearer {token}");
    let (ct1, one) = multipart(1, &png);
    let (ct17, seventeen) = multipart(17, &png);
    let garbage = b"--xray-test-boundary-7d1f\r\nthis is not a part header\r\n\r\n".to_vec();

    let post = |token: Option<&str>| match token {
        Some(t) => ureq::post(&url("/api/predict")).set("Authorization", &bearer(t)),
        None => ureq::post(&url("/api/predict")),
    };
    // (the client's X-Request-Id, the status, the audited reason, the request, its body)
    type Case<'a> = (
        &'static str,
        u16,
        &'static str,
        ureq::Request,
        Option<(&'a str, &'a [u8])>,
    );
    let cases: Vec<Case> = vec![
        ("no-token", 401, "no token", post(None), Some((&ct1, &one))),
        (
            "bad-token",
            401,
            "unknown token",
            post(Some("wrong-token-0000000000000000")),
            Some((&ct1, &one)),
        ),
        (
            "expired-token",
            401,
            "expired token",
            post(Some(EXPIRED)),
            Some((&ct1, &one)),
        ),
        (
            "malformed",
            400,
            "malformed upload",
            post(Some(TOKEN)),
            Some((&ct1, &garbage)),
        ),
        (
            "seventeen",
            413,
            "too many files",
            post(Some(TOKEN)),
            Some((&ct17, &seventeen)),
        ),
        (
            "metrics-no-token",
            401,
            "no token",
            ureq::get(&url("/metrics")),
            None,
        ),
    ];
    let mut expected: Vec<(&str, u16, &str)> = Vec::new();
    let mut ids = Vec::new();
    for (theirs, want, reason, request, body) in cases {
        let (code, id, response) = send(request, theirs, body);
        assert_eq!(code, want, "{theirs}");
        // The server's id, not the client's.
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        for (name, value) in [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
        ] {
            assert_eq!(response.header(name), Some(value), "{theirs}: {name}");
        }
        let csp = response.header("content-security-policy").unwrap_or("");
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        expected.push((theirs, want, reason));
        ids.push(id);
    }
    // With the token: the metrics, without per-label counters.
    let (code, _, response) = send(
        ureq::get(&url("/metrics")).set("Authorization", &bearer(TOKEN)),
        "metrics",
        None,
    );
    assert_eq!(code, 200);
    let text = response.into_string().unwrap();
    assert!(text.contains("xray_predictions_total") || text.contains("xray_http_requests_total"));
    assert!(!text.contains("label=\""), "{text}");

    // Every refusal is in the log once, under the server's id, the client's id beside it.
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let waited = Instant::now();
    while lines().len() < expected.len() && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = lines();
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for ((theirs, status, reason), id) in expected.iter().zip(&ids) {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| l["request_id"] == json!(id))
            .collect();
        assert_eq!(mine.len(), 1, "{theirs}: {lines:#?}");
        let line = mine[0];
        assert_eq!(line["client_request_id"], json!(theirs), "{line}");
        assert_eq!(line["status"], json!(status), "{line}");
        assert!(
            line["error"].as_str().unwrap().starts_with(reason),
            "{theirs}: {line}"
        );
        assert_eq!(line["client"], "127.0.0.1");
    }
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(!log.contains(TOKEN) && !log.contains(EXPIRED));
}

/// `--metrics-addr`: /metrics moves to an internal address of its own, without a token; the
/// main address no longer serves it; a public address is refused.
#[test]
fn metrics_on_an_internal_address_of_their_own() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let mut server = Server::start(
        &t.run,
        &[
            "--token-file",
            tokens.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--header-timeout",
            "1",
        ],
    );
    let memory = server.next_line();
    assert!(memory.starts_with("memory: at most "), "{memory}");
    let line = server.next_line();
    let at = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let scrape = ureq::get(&at).call().unwrap();
    assert_eq!(scrape.status(), 200);
    assert_eq!(scrape.header("x-content-type-options"), Some("nosniff"));
    assert!(scrape.into_string().unwrap().contains("xray_model_info"));
    // The main listener's header timeout, and a cap of 4 connections from one address.
    let metrics = at
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let started = Instant::now();
    let mut half = connect_from("127.0.0.1", metrics).unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let _ = half.read(&mut buf);
    let cut = started.elapsed().as_secs_f64();
    assert!(
        (0.5..3.0).contains(&cut),
        "a half-sent head closed after {cut:.1} s"
    );
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = connect_from("127.0.0.1", metrics).unwrap();
            c.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let fifth = connect_from("127.0.0.1", metrics).unwrap();
    assert!(
        closed_unanswered(fifth),
        "a fifth connection to --metrics-addr"
    );
    drop(held);
    server.token = Some(TOKEN.into());
    assert_eq!(server.get("/metrics").0, 404);
    crate::hardened::refused(
        &t.run,
        &["--addr", "127.0.0.1:0", "--metrics-addr", "8.8.8.8:9100"],
        "--metrics-addr 8.8.8.8:9100: the metrics there need no token",
    );
}

/// The certificate is read again on SIGHUP, without a restart: a client that trusts only the
/// new certificate is refused before and served after.
#[test]
fn a_new_certificate_is_served_after_sighup() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let (cert, key, agent) = crate::hardened::tls(dir.path());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut server = Server::start_with(
        &t.run,
        &[
            "--token-file",
            &s(&tokens),
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
        ],
        agent,
    );
    server.healthy();
    let renewed = dir.path().join("renewed");
    std::fs::create_dir(&renewed).unwrap();
    let (new_cert, new_key, new_agent) = crate::hardened::tls(&renewed);
    let url = format!("{}/healthz", server.base);
    assert!(
        new_agent.get(&url).call().is_err(),
        "the new certificate before the reload"
    );
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    let started = Instant::now();
    while new_agent.get(&url).call().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate is not served 10 s after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "new certificate served {:.2} s after SIGHUP",
        started.elapsed().as_secs_f64()
    );
    let answer = new_agent.get(&url).call().unwrap();
    assert_eq!(
        answer.header("strict-transport-security"),
        Some("max-age=31536000"),
        "HSTS under TLS"
    );
    assert!(server.child.try_wait().unwrap().is_none(), "no restart");
}

/// Without tokens, on loopback: a request naming another host (DNS rebinding) gets 421 and a
/// POST from another origin 403, with the security headers; the loopback names are answered.
#[test]
fn the_tokenless_loopback_mode_refuses_other_hosts_and_origins() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Server::start(&t.run, &["--audit-log", audit.to_str().unwrap()]);
    let addr = authority(&server);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let png = std::fs::read(t.data.join("normal/normal_00003.png")).unwrap();
    let (content_type, body) = crate::serve::multipart_body(&[("n.png", &png)]);
    let get = |host: &str| -> (u16, ureq::Response) {
        match ureq::get(&format!("{}/healthz", server.base))
            .set("Host", host)
            .call()
        {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(code, r)) => (code, r),
            Err(e) => panic!("{host}: {e}"),
        }
    };
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(get(&host).0, 200, "{host}");
    }
    let (code, response) = get(&format!("attacker.example:{port}"));
    assert_eq!(code, 421);
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    let post = |origin: &str| -> u16 {
        let request = ureq::post(&format!("{}/api/predict", server.base))
            .set("Content-Type", &content_type)
            .set("Origin", origin);
        match request.send_bytes(&body) {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{origin}: {e}"),
        }
    };
    assert_eq!(post("http://attacker.example"), 403);
    assert_eq!(post(&server.base), 200);
    // Both refusals are in the audit log, with the client's address.
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for status in [421, 403] {
        assert!(
            lines
                .iter()
                .any(|l| l["status"] == status && l["client"] == "127.0.0.1"),
            "{status} not audited: {lines:?}"
        );
    }
}

/// The security files and the exposure rules: usage errors naming the file and the fix.
#[test]
fn tokens_off_loopback_need_tls_and_secrets_must_be_private() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let (cert, key, _) = crate::hardened::tls(dir.path());
    let open_tokens = dir.path().join("open-tokens.txt");
    std::fs::copy(&tokens, &open_tokens).unwrap();
    let open_key = dir.path().join("open-key.pem");
    std::fs::copy(&key, &open_key).unwrap();
    for p in [&open_tokens, &open_key] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let refused = |args: &[&str], words: &str| crate::hardened::refused(&t.run, args, words);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    refused(
        &["--addr", "0.0.0.0:0", "--token-file", &s(&tokens)],
        "clear text; give --tls-cert and --tls-key",
    );
    refused(
        &["--addr", "127.0.0.1:0", "--token-file", &s(&open_tokens)],
        &format!(
            "readable by other users (mode 644); run `chmod 600 {}`",
            s(&open_tokens)
        ),
    );
    refused(
        &[
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&open_key),
        ],
        &format!("--tls-key {}: readable by other users", s(&open_key)),
    );
    refused(
        &["--header-timeout", "0"],
        "--header-timeout 0: give a number of seconds above 0",
    );
    // Told so, tokens go over plain HTTP on a network address (behind a TLS proxy).
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xray"));
    cmd.arg("serve")
        .arg("--checkpoint")
        .arg(&t.run)
        .args(["--device", "cpu", "--addr", "0.0.0.0:0", "--insecure-http"])
        .args(["--token-file", &s(&tokens)])
        .stderr(std::process::Stdio::null());
    let server = Server::spawn(cmd, ureq::Agent::new());
    assert!(
        server.base.starts_with("http://0.0.0.0:"),
        "{}",
        server.base
    );
}

/// 100,000 requests without a token from four addresses (401, then 429 past the rate limit):
/// the audit log and the log grow by a bounded amount (the first refusal of each address and
/// status in an interval in full, then one line with the count), and the counts add up to
/// every request sent. An authenticated request is answered throughout.
#[test]
fn a_flood_of_unauthenticated_requests_leaves_bounded_lines() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let audit = dir.path().join("audit.jsonl");
    let stderr = dir.path().join("stderr");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xray"));
    cmd.arg("serve")
        .arg("--checkpoint")
        .arg(&t.run)
        .args(["--addr", "127.0.0.1:0", "--device", "cpu"])
        .arg("--token-file")
        .arg(&tokens)
        .arg("--audit-log")
        .arg(&audit)
        .args(["--audit-aggregate-seconds", "5"])
        .stderr(std::process::Stdio::from(
            std::fs::File::create(&stderr).unwrap(),
        ));
    let mut server = Server::spawn(cmd, ureq::Agent::new());
    let addr = authority(&server);
    let addr = &addr;
    const SENT: usize = 100_000;
    const THREADS: usize = 8;
    let answered = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let answered = &answered;
            s.spawn(move || {
                let from = format!("127.0.0.{}", 1 + thread % 4);
                for _ in 0..SENT / THREADS {
                    let mut c = connect_from(&from, addr).unwrap();
                    c.write_all(b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                        .unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut answer = Vec::new();
                    let _ = c.read_to_end(&mut answer);
                    if matches!(status_of(&answer), Some(401 | 429)) {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Meanwhile a client with a token, from an address of its own, is served.
        s.spawn(|| {
            for _ in 0..5 {
                let mut c = connect_from("127.0.0.5", addr).unwrap();
                let ask = format!(
                    "GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
                );
                c.write_all(ask.as_bytes()).unwrap();
                let mut answer = Vec::new();
                let _ = c.read_to_end(&mut answer);
                assert_eq!(status_of(&answer), Some(200), "with a token, during the flood");
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    });
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        answered.load(Ordering::Relaxed),
        SENT as u64,
        "each refused 401 or 429"
    );
    // The last interval's counts are written within a second of its end.
    std::thread::sleep(Duration::from_secs(7));
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let full = lines
        .iter()
        .filter(|l| l["request_id"].is_string() && matches!(l["status"].as_u64(), Some(401 | 429)))
        .count() as u64;
    let summaries: Vec<&Value> = lines.iter().filter(|l| l["event"] == "refusals").collect();
    let counted: u64 = summaries
        .iter()
        .map(|l| l["refusals"].as_u64().unwrap())
        .sum();
    // Each summary includes the refusal written in full that opened its interval.
    let total = counted + full - summaries.len() as u64;
    let log = std::fs::read_to_string(&stderr).unwrap();
    eprintln!(
        "{SENT} unauthenticated requests from 4 addresses in {seconds:.1} s: audit log {} lines, \
         {} KiB ({} in full, {} counts); log {} lines, {} KiB",
        lines.len(),
        text.len() >> 10,
        full,
        summaries.len(),
        log.lines().count(),
        log.len() >> 10
    );
    assert_eq!(total, SENT as u64, "every refusal counted once");
    // 4 addresses x 2 statuses x 2 lines an interval of 5 s, with room for a slow machine.
    let intervals = (seconds / 5.0).ceil() as usize + 2;
    assert!(
        lines.len() <= 4 * 2 * 2 * intervals + 16,
        "{} lines in {intervals} intervals",
        lines.len()
    );
    assert!(text.len() < 512 << 10, "{} bytes", text.len());
    // The log: one line an interval with the totals, never one per refusal.
    assert!(log.lines().count() <= intervals + 4, "{log}");
    assert!(log.contains("refused without a valid token"), "{log}");
    let _ = server.child.kill();
}
