//! The DICOM node of `xray serve` under attack, by a client written from the standard (PS3.8
//! upper layer PDUs, PS3.7 DIMSE commands, PS3.5 data set encoding) on plain sockets: no
//! DICOM library on the attacker's side, so that nothing in it smooths over what is sent.
//!
//! Each case runs against a real `xray serve --dicom-addr` on loopback with the demo model:
//! JPEG bombs (a frame header far larger than Rows x Columns), frames larger than their header
//! and short RLE segments sent twenty times each (each refused, the node still answering),
//! silent and trickling connections (an allowed peer still associates), and SOP classes on the
//! wrong presentation context (0x0122, nothing queued).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, trained};
use crate::hostile::{rss, Peak};
use crate::serve::Server;

const VERIFICATION: &str = "1.2.840.10008.1.1";
const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const RLE: &str = "1.2.840.10008.1.2.5";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const JPEG2000: &str = "1.2.840.10008.1.2.4.90";

// ---------------------------------------------------------------------------------------------
// PS3.8 9.3: the PDUs.

/// A UID as a PDU item value or a DICOM UI value: even length, padded with NUL.
fn uid_bytes(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// An item of an A-ASSOCIATE PDU: type, reserved, 2-byte length, value.
fn item(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, 0];
    v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// An AE title field: 16 bytes, space padded.
fn ae(title: &str) -> [u8; 16] {
    let mut a = [b' '; 16];
    a[..title.len()].copy_from_slice(title.as_bytes());
    a
}

/// A proposed presentation context: id, abstract syntax, transfer syntaxes.
pub struct Proposed<'a>(pub u8, pub &'a str, pub &'a [&'a str]);

/// An A-ASSOCIATE-RQ (PS3.8 9.3.2) from `calling` to `called` proposing `contexts`.
fn associate_rq(calling: &str, called: &str, contexts: &[Proposed]) -> Vec<u8> {
    let mut body = vec![0, 1, 0, 0];
    body.extend_from_slice(&ae(called));
    body.extend_from_slice(&ae(calling));
    body.extend_from_slice(&[0u8; 32]);
    body.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
    for Proposed(id, abstract_syntax, syntaxes) in contexts {
        let mut pc = vec![*id, 0, 0, 0];
        pc.extend(item(0x30, abstract_syntax.as_bytes()));
        for ts in *syntaxes {
            pc.extend(item(0x40, ts.as_bytes()));
        }
        body.extend(item(0x20, &pc));
    }
    let mut user = item(0x51, &16384u32.to_be_bytes());
    user.extend(item(0x52, b"1.2.3.4.5.6.7"));
    body.extend(item(0x50, &user));
    pdu(0x01, &body)
}

/// A PDU: type, reserved, 4-byte length, body.
fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, 0];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A P-DATA-TF with one PDV: context, command or data, last fragment or not.
fn p_data(context: u8, command: bool, last: bool, data: &[u8]) -> Vec<u8> {
    let mut pdv = ((data.len() + 2) as u32).to_be_bytes().to_vec();
    pdv.push(context);
    pdv.push(u8::from(command) | (u8::from(last) << 1));
    pdv.extend_from_slice(data);
    pdu(0x04, &pdv)
}

/// One PDU read off the wire: its type and body.
fn read_pdu(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 6];
    stream.read_exact(&mut head)?;
    let len = u32::from_be_bytes(head[2..6].try_into().unwrap()) as usize;
    assert!(len < 1 << 20, "a PDU of {len} bytes from the node");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// The node's answer to an A-ASSOCIATE-RQ.
#[derive(Debug)]
pub enum Answer {
    /// A-ASSOCIATE-AC: each context's id, result (0 acceptance) and transfer syntax.
    Accepted(Vec<(u8, u8, String)>),
    /// A-ASSOCIATE-RJ: result, source, reason.
    Rejected(u8, u8, u8),
    /// The connection closed, or nothing came in time.
    Closed,
}

fn parse_ac(body: &[u8]) -> Vec<(u8, u8, String)> {
    let mut at = 68;
    let mut out = Vec::new();
    while at + 4 <= body.len() {
        let kind = body[at];
        let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = &body[at + 4..at + 4 + len];
        if kind == 0x21 {
            let ts_len = u16::from_be_bytes([value[6], value[7]]) as usize;
            let ts = String::from_utf8_lossy(&value[8..8 + ts_len])
                .trim_end_matches('\0')
                .to_string();
            out.push((value[0], value[2], ts));
        }
        at += 4 + len;
    }
    out
}

/// A connection to the node's port from the loopback address `from` (127.0.0.x: Linux
/// routes all of 127/8 to the loopback), so that one test can be several peers.
fn connect_from(from: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, bound and connected with sockaddr_in values that live across the
    // calls; the descriptor is owned by the TcpStream from then on, or closed on failure.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let local = sockaddr(from, 0);
        let remote = sockaddr([127, 0, 0, 1], port);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// A connection to the node from 127.0.0.1.
fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Associates: the answer and, when accepted, the open stream.
fn associate(port: u16, calling: &str, contexts: &[Proposed]) -> (Answer, Option<TcpStream>) {
    let mut stream = connect(port);
    if stream
        .write_all(&associate_rq(calling, "XRAY", contexts))
        .is_err()
    {
        return (Answer::Closed, None);
    }
    match read_pdu(&mut stream) {
        Ok((0x02, body)) => (Answer::Accepted(parse_ac(&body)), Some(stream)),
        Ok((0x03, body)) => (Answer::Rejected(body[1], body[2], body[3]), None),
        _ => (Answer::Closed, None),
    }
}

// ---------------------------------------------------------------------------------------------
// PS3.5 7: elements in implicit and explicit VR little endian.

fn implicit(group: u16, element: u16, value: &[u8]) -> Vec<u8> {
    let mut v = group.to_le_bytes().to_vec();
    v.extend_from_slice(&element.to_le_bytes());
    v.extend_from_slice(&(value.len() as u32).to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// A DIMSE command set (implicit VR little endian, PS3.7 E.1), its group length first.
fn command(field: u16, id: u16, class: &str, instance: Option<&str>, data: bool) -> Vec<u8> {
    let mut rest = implicit(0x0000, 0x0002, &uid_bytes(class));
    rest.extend(implicit(0x0000, 0x0100, &field.to_le_bytes()));
    rest.extend(implicit(0x0000, 0x0110, &id.to_le_bytes()));
    if field == 0x0001 {
        rest.extend(implicit(0x0000, 0x0700, &0u16.to_le_bytes()));
    }
    let kind: u16 = if data { 0x0000 } else { 0x0101 };
    rest.extend(implicit(0x0000, 0x0800, &kind.to_le_bytes()));
    if let Some(instance) = instance {
        rest.extend(implicit(0x0000, 0x1000, &uid_bytes(instance)));
    }
    let mut v = implicit(0x0000, 0x0000, &(rest.len() as u32).to_le_bytes());
    v.extend(rest);
    v
}

/// An explicit VR little endian element with a 2-byte length.
fn explicit(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" { 0 } else { b' ' });
    }
    let mut v = group.to_le_bytes().to_vec();
    v.extend_from_slice(&element.to_le_bytes());
    v.extend_from_slice(vr);
    v.extend_from_slice(&(value.len() as u16).to_le_bytes());
    v.extend(value);
    v
}

/// The pixel data of an image.
pub enum Pixels {
    /// Native: the bytes as they are (explicit VR little endian).
    Native(Vec<u8>),
    /// Encapsulated: one fragment (an empty offset table first).
    Encapsulated(Vec<u8>),
}

/// A data set in explicit VR little endian: an image of class `class`, `rows` x `columns`
/// grey 8-bit, with its pixel data.
fn data_set(class: &str, instance: &str, rows: u16, columns: u16, pixels: &Pixels) -> Vec<u8> {
    let study = format!("{instance}.1");
    let patient = Patient {
        name: "Attack^Test",
        study_uid: &study,
    };
    data_set_of(&patient, class, instance, rows, columns, pixels)
}

/// The patient and study attributes of [`data_set_of`].
struct Patient<'a> {
    name: &'a str,
    study_uid: &'a str,
}

/// [`data_set`] with the patient's name and study UID given.
fn data_set_of(
    patient: &Patient,
    class: &str,
    instance: &str,
    rows: u16,
    columns: u16,
    pixels: &Pixels,
) -> Vec<u8> {
    let us = |v: u16| v.to_le_bytes();
    let mut v = Vec::new();
    v.extend(explicit(0x0008, 0x0016, b"UI", class.as_bytes()));
    v.extend(explicit(0x0008, 0x0018, b"UI", instance.as_bytes()));
    v.extend(explicit(0x0008, 0x0060, b"CS", b"CR"));
    v.extend(explicit(0x0010, 0x0010, b"PN", patient.name.as_bytes()));
    v.extend(explicit(0x0010, 0x0020, b"LO", b"ATTACK1"));
    v.extend(explicit(
        0x0020,
        0x000D,
        b"UI",
        patient.study_uid.as_bytes(),
    ));
    v.extend(explicit(
        0x0020,
        0x000E,
        b"UI",
        format!("{instance}.2").as_bytes(),
    ));
    v.extend(explicit(0x0028, 0x0002, b"US", &us(1)));
    v.extend(explicit(0x0028, 0x0004, b"CS", b"MONOCHROME2"));
    v.extend(explicit(0x0028, 0x0010, b"US", &us(rows)));
    v.extend(explicit(0x0028, 0x0011, b"US", &us(columns)));
    v.extend(explicit(0x0028, 0x0100, b"US", &us(8)));
    v.extend(explicit(0x0028, 0x0101, b"US", &us(8)));
    v.extend(explicit(0x0028, 0x0102, b"US", &us(7)));
    v.extend(explicit(0x0028, 0x0103, b"US", &us(0)));
    // (7FE0,0010) OB: 2 reserved bytes and a 4-byte length.
    v.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
    match pixels {
        Pixels::Native(bytes) => {
            v.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            v.extend_from_slice(bytes);
        }
        Pixels::Encapsulated(fragment) => {
            let mut fragment = fragment.clone();
            if fragment.len() % 2 == 1 {
                fragment.push(0);
            }
            v.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
            let tag = |e: u16| [0xFE, 0xFF, (e & 0xFF) as u8, (e >> 8) as u8];
            v.extend_from_slice(&tag(0xE000));
            v.extend_from_slice(&0u32.to_le_bytes());
            v.extend_from_slice(&tag(0xE000));
            v.extend_from_slice(&(fragment.len() as u32).to_le_bytes());
            v.extend(fragment);
            v.extend_from_slice(&tag(0xE0DD));
            v.extend_from_slice(&0u32.to_le_bytes());
        }
    }
    v
}

/// A DICOM Part 10 file of `data` (explicit VR little endian data set): preamble, "DICM",
/// the file meta group (PS3.10 7.1), the data set.
fn part10(class: &str, instance: &str, syntax: &str, data: &[u8]) -> Vec<u8> {
    let mut meta = Vec::new();
    meta.extend_from_slice(&[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0]);
    meta.extend_from_slice(&2u32.to_le_bytes());
    meta.extend_from_slice(&[0, 1]);
    meta.extend(explicit(0x0002, 0x0002, b"UI", class.as_bytes()));
    meta.extend(explicit(0x0002, 0x0003, b"UI", instance.as_bytes()));
    meta.extend(explicit(0x0002, 0x0010, b"UI", syntax.as_bytes()));
    meta.extend(explicit(0x0002, 0x0012, b"UI", b"1.2.3.4.5.6.7"));
    let mut v = vec![0u8; 128];
    v.extend_from_slice(b"DICM");
    v.extend(explicit(
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    ));
    v.extend(meta);
    v.extend_from_slice(data);
    v
}

/// Sends one C-STORE on `context` and reads its C-STORE-RSP: the status, or `None` when the
/// association ended instead.
fn c_store(
    stream: &mut TcpStream,
    context: u8,
    id: u16,
    class: &str,
    instance: &str,
    data: &[u8],
) -> Option<u16> {
    let cmd = command(0x0001, id, class, Some(instance), true);
    stream.write_all(&p_data(context, true, true, &cmd)).ok()?;
    for (i, chunk) in data.chunks(16000).enumerate() {
        let last = (i + 1) * 16000 >= data.len();
        stream
            .write_all(&p_data(context, false, last, chunk))
            .ok()?;
    }
    response_status(stream)
}

/// Sends a C-ECHO on `context`: the status of its response.
fn c_echo(stream: &mut TcpStream, context: u8, id: u16) -> Option<u16> {
    let cmd = command(0x0030, id, VERIFICATION, None, false);
    stream.write_all(&p_data(context, true, true, &cmd)).ok()?;
    response_status(stream)
}

/// Reads P-DATA until a whole command set has come: its Status (0000,0900).
fn response_status(stream: &mut TcpStream) -> Option<u16> {
    let mut command = Vec::new();
    loop {
        let (kind, body) = read_pdu(stream).ok()?;
        if kind != 0x04 {
            return None;
        }
        let mut at = 0;
        let mut last = false;
        while at + 6 <= body.len() {
            let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
            let control = body[at + 5];
            command.extend_from_slice(&body[at + 6..at + 4 + len]);
            last |= control & 2 != 0;
            at += 4 + len;
        }
        if last {
            break;
        }
    }
    let mut at = 0;
    while at + 8 <= command.len() {
        let group = u16::from_le_bytes([command[at], command[at + 1]]);
        let element = u16::from_le_bytes([command[at + 2], command[at + 3]]);
        let len = u32::from_le_bytes(command[at + 4..at + 8].try_into().unwrap()) as usize;
        if (group, element) == (0x0000, 0x0900) {
            return Some(u16::from_le_bytes([command[at + 8], command[at + 9]]));
        }
        at += 8 + len;
    }
    None
}

/// A-RELEASE-RQ, and its RP.
fn release(mut stream: TcpStream) {
    let _ = stream.write_all(&pdu(0x05, &[0, 0, 0, 0]));
    let _ = read_pdu(&mut stream);
}

// ---------------------------------------------------------------------------------------------
// The images.

/// A real baseline JPEG of a `side` x `side` grey gradient.
fn jpeg(side: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(side, side, |x, y| image::Luma([((x + y) % 256) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// `jpeg` with its frame header (SOF0) saying `w` x `h`: the scan data stays that of the small
/// image, and a decoder sizes its buffers from the header.
fn with_frame_size(mut jpeg: Vec<u8>, w: u16, h: u16) -> Vec<u8> {
    let at = jpeg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline SOF");
    jpeg[at + 5..at + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[at + 7..at + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

/// An RLE frame whose one segment decodes to `decoded` bytes (runs of 128).
fn rle(decoded: usize) -> Vec<u8> {
    let mut v = vec![0u8; 64];
    v[0..4].copy_from_slice(&1u32.to_le_bytes());
    v[4..8].copy_from_slice(&64u32.to_le_bytes());
    let mut left = decoded;
    while left > 0 {
        let run = left.min(128);
        v.extend_from_slice(&[(1 - run as i32) as i8 as u8, 100]);
        left -= run;
    }
    v
}

/// Fresh UIDs.
fn new_uid(n: u32) -> String {
    format!("2.25.{}{n}", rand::random::<u64>() >> 4)
}

// ---------------------------------------------------------------------------------------------
// The node.

/// A node on a fresh port with the demo model: results to a closed port (they wait in the
/// queue), its audit log and stderr in `dir`. The server, its DICOM port.
fn attacked_node(dir: &Path, extra: &[&str]) -> (Server, u16) {
    let to = format!("PACS@127.0.0.1:{}", free_port());
    node_sending_to(dir, &["--results-to", &to], extra)
}

/// A node on a fresh port with the demo model, results sent as `destination` says, its queue,
/// audit log and stderr in `dir`. The server, its DICOM port.
fn node_sending_to(dir: &Path, destination: &[&str], extra: &[&str]) -> (Server, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xray"));
    cmd.arg("serve")
        .arg("--checkpoint")
        .arg(&trained().run)
        .args(["--addr", "127.0.0.1:0", "--device", "cpu"])
        .args(["--dicom-addr", &format!("127.0.0.1:{port}")])
        .args(destination)
        .arg("--results-queue")
        .arg(dir.join("queue"))
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .args(extra)
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("stderr")).unwrap(),
        ));
    (Server::spawn(cmd, ureq::Agent::new()), port)
}

/// The results queued in `dir/queue`.
fn queued(dir: &Path) -> Vec<PathBuf> {
    crate::common::files_with_extension(&dir.join("queue"), "dcm")
}

/// The node's stderr so far.
fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
}

fn store_contexts() -> Vec<Proposed<'static>> {
    vec![
        Proposed(1, VERIFICATION, &[IMPLICIT_LE]),
        Proposed(3, CR, &[JPEG_BASELINE]),
        Proposed(5, CR, &[RLE]),
        Proposed(7, CR, &[EXPLICIT_LE]),
        Proposed(9, SC, &[JPEG2000]),
        Proposed(11, CT, &[EXPLICIT_LE]),
        Proposed(15, CR, &[DEFLATED]),
    ]
}

/// Associates as MODALITY with [`store_contexts`]; the contexts accepted and the stream.
fn open_store(port: u16) -> (Vec<(u8, u8, String)>, TcpStream) {
    match associate(port, "MODALITY", &store_contexts()) {
        (Answer::Accepted(contexts), Some(stream)) => (contexts, stream),
        (other, _) => panic!("the association was not accepted: {other:?}"),
    }
}

#[test]
fn jpeg_bombs_and_bad_codestreams_are_refused_before_decoding_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = attacked_node(dir.path(), &[]);
    let pid = server.child.id();
    let before = rss(pid);
    let peak = Peak::watch(pid);
    let (contexts, mut stream) = open_store(port);
    let accepted = |id: u8| contexts.iter().any(|&(i, r, _)| i == id && r == 0);
    assert!(
        accepted(1) && accepted(3) && accepted(5) && accepted(7),
        "{contexts:?}"
    );
    assert!(
        !accepted(9),
        "JPEG 2000 is not decodable here: {contexts:?}"
    );
    assert!(
        !accepted(11),
        "CT is not a storage class xray takes: {contexts:?}"
    );

    // The bombs: 402-byte-class data sets whose JPEG frame says 20000x20000 and 65500x65500.
    let small = jpeg(16);
    for (w, h) in [(20000u16, 20000u16), (65500, 65500)] {
        let uid = new_uid(1);
        let bomb = data_set(
            CR,
            &uid,
            512,
            512,
            &Pixels::Encapsulated(with_frame_size(small.clone(), w, h)),
        );
        assert!(bomb.len() < 2048, "{} bytes", bomb.len());
        let status = c_store(&mut stream, 3, 1, CR, &uid, &bomb);
        assert_eq!(status, Some(0xC000), "the {w}x{h} bomb");
    }
    // Twenty frames larger than their Rows x Columns, twenty short RLE segments: each
    // refused, the association still up.
    let real = jpeg(64);
    for i in 0..20 {
        let uid = new_uid(i);
        let larger = data_set(CR, &uid, 32, 32, &Pixels::Encapsulated(real.clone()));
        assert_eq!(
            c_store(&mut stream, 3, 10 + i as u16, CR, &uid, &larger),
            Some(0xC000)
        );
        let uid = new_uid(i);
        let short = data_set(CR, &uid, 64, 64, &Pixels::Encapsulated(rle(64 * 64 - 300)));
        assert_eq!(
            c_store(&mut stream, 5, 40 + i as u16, CR, &uid, &short),
            Some(0xC000)
        );
    }
    assert_eq!(c_echo(&mut stream, 1, 90), Some(0x0000));
    // A good image still stored (JPEG that agrees with its header, and native pixels).
    let uid = new_uid(7);
    let good = data_set(CR, &uid, 64, 64, &Pixels::Encapsulated(real.clone()));
    assert_eq!(c_store(&mut stream, 3, 91, CR, &uid, &good), Some(0x0000));
    let uid = new_uid(8);
    let native: Vec<u8> = (0..64 * 64).map(|i| (i % 251) as u8).collect();
    let good = data_set(CR, &uid, 64, 64, &Pixels::Native(native));
    assert_eq!(c_store(&mut stream, 7, 92, CR, &uid, &good), Some(0x0000));
    release(stream);
    // The same bombs by HTTP and to `xray predict`: refused from the codestream's header.
    for (w, h) in [(20000u16, 20000u16), (65500, 65500)] {
        let uid = new_uid(3);
        let frame = with_frame_size(small.clone(), w, h);
        let file = part10(
            CR,
            &uid,
            JPEG_BASELINE,
            &data_set(CR, &uid, 512, 512, &Pixels::Encapsulated(frame)),
        );
        let (code, answer) = server.predict("bomb.dcm", &file, "");
        assert_eq!(code, 422, "{answer}");
        assert!(answer.to_string().contains(&format!("{w}x{h}")), "{answer}");
        let path = dir.path().join(format!("bomb{w}.dcm"));
        std::fs::write(&path, &file).unwrap();
        let out = crate::common::xray()
            .args(["predict", "--precision", "fp32", "--checkpoint"])
            .arg(&trained().run)
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&format!("bomb{w}.dcm")) && err.contains("JPEG frame header"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let uid = new_uid(4);
    let short = part10(
        CR,
        &uid,
        RLE,
        &data_set(CR, &uid, 64, 64, &Pixels::Encapsulated(rle(1000))),
    );
    let (code, answer) = server.predict("short.dcm", &short, "");
    assert_eq!(code, 422, "{answer}");
    let peak = peak.stop();
    // Memory: the bombs cost nothing like the 19 GB they ask for.
    assert!(
        peak < before + (64 << 20),
        "resident memory went from {} MiB to {} MiB",
        before >> 20,
        peak >> 20
    );
    // Every slot was given back: eight (the default) fresh associations at once still work.
    std::thread::sleep(Duration::from_millis(500));
    let held: Vec<TcpStream> = (0..8).map(|_| open_store(port).1).collect();
    drop(held);
    let err = stderr_of(dir.path());
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{err}"
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("20000x20000"), "the reason is audited");
    eprintln!(
        "bombs and bad codestreams: resident {} MiB before, peak {} MiB",
        before >> 20,
        peak >> 20
    );
}

#[test]
fn the_wrong_sop_class_or_a_refused_context_gets_0122_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = attacked_node(dir.path(), &[]);
    let (_, mut stream) = open_store(port);
    let native: Vec<u8> = vec![128; 64 * 64];
    // A CT data set on the Verification context.
    let uid = new_uid(1);
    let ct = data_set(CT, &uid, 64, 64, &Pixels::Native(native.clone()));
    assert_eq!(c_store(&mut stream, 1, 1, CT, &uid, &ct), Some(0x0122));
    // A CR data set sent on the (refused) CT context, and on the refused JPEG 2000 context.
    let uid = new_uid(2);
    let cr = data_set(CR, &uid, 64, 64, &Pixels::Native(native.clone()));
    assert_eq!(c_store(&mut stream, 11, 2, CR, &uid, &cr), Some(0x0122));
    assert_eq!(c_store(&mut stream, 9, 3, SC, &uid, &cr), Some(0x0122));
    // A CR command on a CR context whose id the node never agreed to.
    assert_eq!(c_store(&mut stream, 13, 4, CR, &uid, &cr), Some(0x0122));
    // Attributes that would be copied into the results, breaking their VR's rules: refused.
    let long_uid = format!("1.2.{}", "9".repeat(70));
    let name_with_newline = "Attack^Test\r\nInjected: 1";
    for patient in [
        Patient {
            name: "Attack^Test",
            study_uid: "1.2.3.<script>",
        },
        Patient {
            name: "Attack^Test",
            study_uid: &long_uid,
        },
        Patient {
            name: name_with_newline,
            study_uid: "1.2.3.4",
        },
    ] {
        let uid = new_uid(9);
        let bad = data_set_of(&patient, CR, &uid, 64, 64, &Pixels::Native(native.clone()));
        assert_eq!(c_store(&mut stream, 7, 8, CR, &uid, &bad), Some(0xC000));
    }
    // A C-ECHO on a storage context.
    assert_eq!(c_echo(&mut stream, 7, 5), Some(0x0122));
    assert_eq!(c_echo(&mut stream, 1, 6), Some(0x0000));
    release(stream);
    std::thread::sleep(Duration::from_millis(500));
    assert!(queued(dir.path()).is_empty(), "{:?}", queued(dir.path()));
}

#[test]
fn silent_and_trickling_connections_do_not_lock_out_an_allowed_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = attacked_node(
        dir.path(),
        &[
            "--header-timeout",
            "3",
            "--body-idle-timeout",
            "10",
            "--dicom-association-timeout",
            "4",
            "--dicom-allow",
            "MODALITY@127.0.0.1",
        ],
    );
    let pid = server.child.id();
    let before = rss(pid);
    // 64 silent connections from one host, 64 from sixteen others, and 4 that declare a 4 GB
    // A-ASSOCIATE-RQ and send some of it.
    let mut silent: Vec<TcpStream> = (0..64)
        .filter_map(|_| connect_from([127, 0, 0, 2], port).ok())
        .collect();
    for i in 0..64u8 {
        silent.extend(connect_from([127, 0, 1, 10 + i % 16], port).ok());
    }
    for _ in 0..4 {
        if let Ok(mut s) = connect_from([127, 0, 0, 3], port) {
            let _ = s.write_all(&[0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
            let _ = s.write_all(&[0u8; 4096]);
            silent.push(s);
        }
    }
    // Sixteen allowed peers that associate and then trickle: eight hold the places.
    let started = Instant::now();
    let mut tricklers = Vec::new();
    let mut rejected = 0;
    for _ in 0..16 {
        match associate(port, "MODALITY", &store_contexts()) {
            (Answer::Accepted(_), Some(s)) => tricklers.push(s),
            // A-ASSOCIATE-RJ: result 2 (transient), source 3 (service provider,
            // presentation), reason 2 (local limit exceeded): try again later.
            (Answer::Rejected(result, source, reason), _) => {
                assert_eq!((result, source, reason), (2, 3, 2));
                rejected += 1
            }
            (Answer::Closed, _) => panic!("an allowed peer's connection was closed unanswered"),
            (Answer::Accepted(_), None) => unreachable!(),
        }
    }
    // The silent connections took no place: eight allowed peers got the eight.
    assert_eq!(tricklers.len(), 8, "{rejected} rejected");
    // Once the trickles' time is up, a listed peer gets a place.
    // The eight keep their associations busy: a C-ECHO each every half second, each well
    // within the idle time, until the association's time is up and the node aborts them.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut echo_id = 100;
    let associated_after = loop {
        tricklers.retain_mut(|s| {
            echo_id += 1;
            c_echo(s, 1, echo_id) == Some(0x0000)
        });
        if let (Answer::Accepted(_), Some(mut s)) = associate(port, "MODALITY", &store_contexts()) {
            assert_eq!(c_echo(&mut s, 1, 1), Some(0x0000));
            release(s);
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no place for an allowed peer in 15 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let after = rss(pid);
    drop(silent);
    drop(tricklers);
    assert!(
        after < before + (64 << 20),
        "resident {} MiB before, {} MiB after",
        before >> 20,
        after >> 20
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("the most an association may last"),
        "{audit}"
    );
    eprintln!(
        "silent and trickling: {rejected} of 16 allowed peers rejected while 8 held the places; \
         a listed peer associated after {:.1} s; resident {} -> {} MiB",
        associated_after.as_secs_f64(),
        before >> 20,
        after >> 20
    );
}

/// A DICOMweb server that answers every request with `answer` (a whole HTTP response) and
/// counts the requests: its port.
fn canned_http(answer: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The head, then the body its Content-Length declares.
            let mut data = Vec::new();
            let mut buf = [0u8; 65536];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, count)
}

/// The audit's results-sent lines.
fn deliveries(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["dicom"] == "results-sent")
        .collect()
}

#[test]
fn stow_answers_that_are_not_a_stored_instance_never_count_as_delivered() {
    const FAILED: &str = "HTTP/1.1 202 Accepted\r\nContent-Type: application/dicom+json\r\nContent-Length: 74\r\nConnection: close\r\n\r\n{\"00081198\":{\"vr\":\"SQ\",\"Value\":[{\"00081197\":{\"vr\":\"US\",\"Value\":[272]}}]}}";
    let cases: [(&str, &'static str, &str); 4] = [
        (
            "a redirect",
            "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "refused",
        ),
        ("202 with a failed SOP", FAILED, "refused"),
        (
            "200 that lists nothing",
            "HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            "refused",
        ),
        (
            "500",
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "unreachable",
        ),
    ];
    for (what, answer, result) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (http, requests) = canned_http(answer);
        let url = format!("http://127.0.0.1:{http}/dicom-web");
        let (_server, port) = node_sending_to(dir.path(), &["--results-stow", &url], &[]);
        let (_, mut stream) = open_store(port);
        let uid = new_uid(1);
        let native: Vec<u8> = (0..64 * 64).map(|i| (i % 251) as u8).collect();
        let image = data_set(CR, &uid, 64, 64, &Pixels::Native(native));
        assert_eq!(c_store(&mut stream, 7, 1, CR, &uid, &image), Some(0x0000));
        release(stream);
        let deadline = Instant::now() + Duration::from_secs(20);
        let lines = loop {
            let lines = deliveries(dir.path());
            if !lines.is_empty() {
                break lines;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no delivery audited in 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(requests.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert!(
            lines.iter().all(|l| l["result"] != "stored"),
            "{what}: {lines:?}"
        );
        assert_eq!(lines[0]["result"], result, "{what}: {lines:?}");
        // Nothing was deleted as delivered: the results wait, or are set aside.
        let queue = dir.path().join("queue");
        let kept = std::fs::read_dir(&queue).unwrap().count();
        assert!(kept >= 1, "{what}: the queue is empty");
        if result == "refused" {
            assert!(
                std::fs::read_dir(&queue)
                    .unwrap()
                    .flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "refused")),
                "{what}"
            );
        }
    }
}

/// `set` (from [`data_set`]) with `extra` put just before its pixel data.
fn with_before_pixels(set: &[u8], extra: &[u8]) -> Vec<u8> {
    let at = set
        .windows(4)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap();
    [&set[..at], extra, &set[at..]].concat()
}

/// An explicit VR little endian element with a 4-byte length field (OB, UN, SQ...), its
/// declared length `length`, followed by `value`.
fn long_element(group: u16, element: u16, vr: &[u8; 2], length: u32, value: &[u8]) -> Vec<u8> {
    let mut v = group.to_le_bytes().to_vec();
    v.extend_from_slice(&element.to_le_bytes());
    v.extend_from_slice(vr);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&length.to_le_bytes());
    v.extend_from_slice(value);
    v
}

#[test]
fn what_a_hostile_client_found_is_refused_and_the_node_keeps_answering() {
    // Each case from a hostile-client review of this node: sent, refused, and the node still
    // stores a good image afterwards.
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = attacked_node(dir.path(), &[]);
    let pid = server.child.id();
    let before = rss(pid);
    let peak = Peak::watch(pid);
    let native: Vec<u8> = (0..64 * 64).map(|i| (i % 251) as u8).collect();
    let good = |uid: &str| data_set(CR, uid, 64, 64, &Pixels::Native(native.clone()));
    let (_, mut stream) = open_store(port);
    let mut id = 0u16;
    let mut store = |stream: &mut TcpStream, context: u8, set: &[u8], uid: &str| {
        id += 1;
        c_store(stream, context, id, CR, uid, set)
    };
    // 1,500 nested sequences (the stack overflowed and the process died).
    let mut nested = Vec::new();
    for _ in 0..1500 {
        nested.extend(long_element(0x0040, 0xA730, b"SQ", 0xFFFF_FFFF, &[]));
        nested.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    for _ in 0..1500 {
        nested.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
    let uid = new_uid(1);
    let set = with_before_pixels(&good(&uid), &nested);
    assert_eq!(store(&mut stream, 7, &set, &uid), Some(0xC000), "nesting");
    // A second Rows of 0 after Pixel Representation (the inference thread panicked, and every
    // later image got "the model is not running").
    let uid = new_uid(2);
    let set = with_before_pixels(&good(&uid), &explicit(0x0028, 0x0010, b"US", &[0, 0]));
    assert_eq!(store(&mut stream, 7, &set, &uid), Some(0xC000), "rows 0");
    // An OB declaring 0xFFFFFFF0 bytes in a 326-byte data set (4.2 GB reserved on the DICOM
    // path, whose header read came before the check).
    let uid = new_uid(3);
    let lie = long_element(0x0009, 0x1010, b"OB", 0xFFFF_FFF0, b"abcd");
    let set = with_before_pixels(&good(&uid), &lie);
    assert_eq!(
        store(&mut stream, 7, &set, &uid),
        Some(0xC000),
        "a lying OB"
    );
    // The same lie in a deflated data set that inflates to 256 MiB.
    let uid = new_uid(4);
    let mut deflater = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    {
        use std::io::Write as _;
        let head = with_before_pixels(&good(&uid), &[]);
        let cut = head
            .windows(4)
            .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
            .unwrap();
        deflater.write_all(&head[..cut]).unwrap();
        deflater
            .write_all(&long_element(0x0009, 0x1010, b"OB", 256 << 20, &[]))
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            deflater.write_all(&zeros).unwrap();
        }
    }
    let deflated = deflater.finish().unwrap();
    assert!(deflated.len() < 1 << 20, "{} bytes", deflated.len());
    assert_eq!(
        store(&mut stream, 15, &deflated, &uid),
        Some(0xC000),
        "deflate"
    );
    // An RLE segment of runs far longer than the image (2.2 GB for 16 MB sent): refused.
    let uid = new_uid(5);
    let mut frame = vec![0u8; 64];
    frame[0..4].copy_from_slice(&1u32.to_le_bytes());
    frame[4..8].copy_from_slice(&64u32.to_le_bytes());
    for _ in 0..(1 << 16) {
        frame.extend_from_slice(&[0x81, 0x80]);
    }
    let set = data_set(CR, &uid, 64, 64, &Pixels::Encapsulated(frame));
    assert_eq!(store(&mut stream, 5, &set, &uid), Some(0xC000), "long RLE");
    // The node, its model included, still answers.
    assert_eq!(c_echo(&mut stream, 1, 900), Some(0x0000));
    let uid = new_uid(6);
    assert_eq!(
        store(&mut stream, 7, &good(&uid), &uid),
        Some(0x0000),
        "a good image"
    );
    release(stream);
    let peak = peak.stop();
    assert!(
        peak < before + (64 << 20),
        "resident memory {} -> {} MiB",
        before >> 20,
        peak >> 20
    );
    let err = stderr_of(dir.path());
    assert!(
        !err.contains("overflow") && !err.contains("panicked"),
        "{err}"
    );
    eprintln!(
        "hostile findings: resident {} MiB before, peak {} MiB",
        before >> 20,
        peak >> 20
    );
}

/// Points the node's audit log at `target` (a symlink in its place; `None`: the file kept
/// aside comes back) and has it reopened (SIGHUP), as logrotate would.
fn audit_goes_to(server: &Server, dir: &Path, target: Option<&str>) {
    let audit = dir.join("audit.jsonl");
    let kept = dir.join("audit.kept");
    match target {
        Some(target) => {
            std::fs::rename(&audit, &kept).unwrap();
            std::os::unix::fs::symlink(target, &audit).unwrap();
        }
        None => {
            std::fs::remove_file(&audit).unwrap();
            std::fs::rename(&kept, &audit).unwrap();
        }
    }
    // SAFETY: a signal to the child this test started and still holds.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
    std::thread::sleep(Duration::from_millis(700));
}

/// A DICOM answer waits for its audit line, as an HTTP answer does: with the audit log on a
/// full disk (`/dev/full`), a C-STORE gets 0xA700 and nothing is queued, a new association is
/// aborted before any message, and an HTTP prediction gets 500 without its answer; with the
/// log writable again, the node stores and answers.
#[test]
fn no_answer_goes_out_without_its_audit_line() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = attacked_node(dir.path(), &[]);
    let image = |n: u32| {
        let uid = new_uid(n);
        let native: Vec<u8> = (0..64 * 64)
            .map(|i| ((i + n as usize) % 251) as u8)
            .collect();
        let set = data_set(CR, &uid, 64, 64, &Pixels::Native(native));
        (uid, set)
    };
    let (_, mut stream) = open_store(port);
    let (uid, set) = image(1);
    assert_eq!(c_store(&mut stream, 7, 1, CR, &uid, &set), Some(0x0000));
    let stored = queued(dir.path()).len();
    assert!(stored >= 1, "the first image's results are queued");

    audit_goes_to(&server, dir.path(), Some("/dev/full"));
    let (lost_uid, set) = image(2);
    assert_eq!(
        c_store(&mut stream, 7, 2, CR, &lost_uid, &set),
        Some(0xA700),
        "an image whose audit line cannot be written"
    );
    assert_eq!(queued(dir.path()).len(), stored, "nothing more queued");
    release(stream);
    // A new association: accepted by the upper layer, then aborted before any message.
    let (_, mut fresh) = open_store(port);
    assert_eq!(c_echo(&mut fresh, 1, 1), None, "an association not audited");
    // The HTTP side: no answer without its line.
    let png = std::fs::read(trained().data.join("normal").join("normal_00003.png")).unwrap();
    let (code, answer) = server.predict("normal.png", &png, "");
    assert_eq!(code, 500, "{answer}");
    assert!(answer.get("results").is_none(), "{answer}");

    audit_goes_to(&server, dir.path(), None);
    let (_, mut stream) = open_store(port);
    let (uid3, set) = image(3);
    assert_eq!(c_store(&mut stream, 7, 3, CR, &uid3, &set), Some(0x0000));
    release(stream);
    assert!(queued(dir.path()).len() > stored);
    let hash = |uid: &str| xray::fsutil::sha256_hex(uid.as_bytes());
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(log.contains(&hash(&uid)) && log.contains(&hash(&uid3)));
    assert!(
        !log.contains(&hash(&lost_uid)),
        "a line for the refused image"
    );
    let err = stderr_of(dir.path());
    assert!(err.contains("audit"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
