//! A walk over a DICOM data set's element headers that refuses a declared length the bytes
//! cannot hold, before dicom-rs's parser reserves memory for it.
//!
//! dicom-parser allocates a value's declared length before reading it: a 4 KB file whose
//! element says 3.6 GB makes it ask for 3.6 GB (found by `fuzz/`'s `dicom_decode` in its
//! first minute). [`check_lengths`] reads tag, VR and length of every element, descending into
//! sequences and items, and fails when a defined length runs past the end of the data set.

use dicom_core::dictionary::DataDictionary;
use dicom_core::Tag;

/// How the data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// Implicit VR (the VR is not written; lengths are 4 bytes).
    pub implicit: bool,
    /// Big endian (explicit VR big endian, retired but still readable).
    pub big_endian: bool,
}

impl Encoding {
    /// The encoding of a transfer syntax UID's data set (deflated: once inflated).
    pub fn of(transfer_syntax: &str) -> Encoding {
        let uid = transfer_syntax.trim_end_matches('\0');
        Encoding {
            implicit: uid == "1.2.840.10008.1.2",
            big_endian: uid == "1.2.840.10008.1.2.2",
        }
    }
}

/// Undefined length: the value ends at a delimiter.
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Explicit VRs with a 2-byte length (PS3.5 7.1.2); every other VR, an unknown one included
/// (dicom-rs reads it as UN), has a 2-byte reserved field and a 4-byte length.
pub const SHORT_VRS: &[&[u8; 2]] = &[
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
];

/// Deepest nesting of sequences accepted: dicom-rs builds and drops nested data sets
/// recursively, and 1,500 levels overflowed its stack (found by a hostile client's test).
pub const MAX_DEPTH: usize = 32;

/// Checks every element header of `data` (a data set, after the file meta group): a defined
/// length past the end of `data`, a value that is not a whole number of its VR's values, a
/// delimiter with a value or sequences nested deeper than [`MAX_DEPTH`] are refused. With
/// `header_only`, the walk ends at the pixel data (`data` may be only the beginning of a
/// deflated data set, which must hold the whole header). The reason, or `Ok`.
pub fn check_lengths(data: &[u8], encoding: Encoding, header_only: bool) -> Result<(), String> {
    let u16_at = |at: usize| {
        let b = [data[at], data[at + 1]];
        if encoding.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_at = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if encoding.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    // What the items met at this depth are: data sets (of a sequence) or pixel fragments;
    // where a defined-length sequence ends.
    let mut open: Vec<(bool, Option<usize>)> = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        while open
            .last()
            .is_some_and(|&(_, end)| end.is_some_and(|e| at >= e))
        {
            open.pop();
        }
        // Items are data sets only directly inside a sequence; elsewhere (pixel fragments, or
        // an item where none belongs) dicom-parser takes an item's value as bytes.
        let in_sequence = open.last().is_some_and(|&(sequence, _)| sequence);
        let left = data.len() - at;
        let cut = |at: usize| {
            Err(format!(
                "the data set ends inside an element header (byte {at})"
            ))
        };
        if left < 8 {
            return cut(at);
        }
        let tag = Tag(u16_at(at), u16_at(at + 2));
        if header_only && open.is_empty() && tag >= Tag(0x7FE0, 0x0010) {
            return Ok(());
        }
        if open.len() > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH} levels"));
        }
        // Items and delimiters (FFFE,E000/E00D/E0DD): a 4-byte length, no VR.
        let (header, length, kind) = if tag.group() == 0xFFFE {
            (8, u32_at(at + 4), Kind::Item)
        } else if encoding.implicit {
            let vr = dicom_dictionary_std::StandardDataDictionary
                .by_tag(tag)
                .map(|e| e.vr.relaxed());
            let kind = if vr == Some(dicom_core::VR::SQ) {
                Kind::Sequence
            } else {
                Kind::Value
            };
            let length = u32_at(at + 4);
            if let Some(vr) = vr {
                whole_values(tag, vr.to_string().as_bytes(), length)?;
            }
            (8, length, kind)
        } else {
            let vr = [data[at + 4], data[at + 5]];
            let (header, length) = if !SHORT_VRS.contains(&&vr) {
                if left < 12 {
                    return cut(at);
                }
                (12, u32_at(at + 8))
            } else {
                (8, u16_at(at + 6) as u32)
            };
            whole_values(tag, &vr, length)?;
            let kind = if &vr == b"SQ" {
                Kind::Sequence
            } else {
                Kind::Value
            };
            (header, length, kind)
        };
        at += header;
        let delimiter = tag == Tag(0xFFFE, 0xE0DD) || tag == Tag(0xFFFE, 0xE00D);
        if delimiter && length != 0 {
            // A delimiter has no value (PS3.5 7.5); dicom-parser would read one of this size.
            return Err(format!(
                "delimiter {tag} declares {length} bytes instead of 0"
            ));
        }
        if tag == Tag(0xFFFE, 0xE0DD) {
            open.pop();
            continue;
        }
        if length == UNDEFINED {
            match kind {
                Kind::Sequence => open.push((true, None)),
                // Encapsulated pixel data: its items are fragments, skipped whole.
                Kind::Value if tag == Tag(0x7FE0, 0x0010) => open.push((false, None)),
                // Any other undefined-length value is read by dicom-parser as a sequence of
                // data sets (its VR discarded): walked as one.
                Kind::Value => open.push((true, None)),
                // An undefined-length item: its elements follow, up to its delimiter.
                Kind::Item => {}
            }
            continue;
        }
        let length = length as usize;
        if length > data.len() - at {
            return Err(format!(
                "element {tag} declares {length} bytes but only {} remain in the data set",
                data.len() - at
            ));
        }
        match kind {
            // A defined-length sequence: its items are walked, up to its end.
            Kind::Sequence => open.push((true, Some(at + length))),
            // A sequence item: its elements are walked.
            Kind::Item if in_sequence && tag == Tag(0xFFFE, 0xE000) => {}
            _ => at += length,
        }
    }
    Ok(())
}

/// Refuses a defined length that is not a whole number of the VR's values: dicom-parser
/// reads only the whole values and loses its place in the data set by the rest (an SL of 2
/// bytes made it read the next element 2 bytes early, as a 4 GB one: found by fuzzing).
fn whole_values(tag: Tag, vr: &[u8], length: u32) -> Result<(), String> {
    let size = match vr {
        b"SS" | b"US" | b"OW" => 2,
        b"SL" | b"UL" | b"FL" | b"OL" | b"OF" | b"AT" => 4,
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => 8,
        _ => 1,
    };
    if length != UNDEFINED && !length.is_multiple_of(size) {
        return Err(format!(
            "element {tag} ({}) has {length} bytes, not a whole number of {size}-byte values",
            String::from_utf8_lossy(vr)
        ));
    }
    Ok(())
}

/// What an element header introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A value (skipped, or with undefined length: pixel fragments).
    Value,
    /// A sequence of items.
    Sequence,
    /// An item or a delimiter.
    Item,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPLICIT: Encoding = Encoding {
        implicit: false,
        big_endian: false,
    };

    fn short(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = group.to_le_bytes().to_vec();
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn a_length_past_the_end_is_refused() {
        let mut set = short(0x0010, 0x0010, b"PN", b"Doe^Jane");
        assert!(check_lengths(&set, EXPLICIT, false).is_ok());
        // (7FE0,0010) OB declaring 3.6 GB with 4 bytes after it.
        set.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        set.extend_from_slice(&3_621_048_782u32.to_le_bytes());
        set.extend_from_slice(&[1, 2, 3, 4]);
        let e = check_lengths(&set, EXPLICIT, false).unwrap_err();
        assert!(e.contains("3621048782"), "{e}");
        // The header alone: it ends where the pixel data starts.
        assert!(check_lengths(&set, EXPLICIT, true).is_ok());
    }

    #[test]
    fn sequences_and_items_are_walked_into() {
        // (0008,1140) SQ, undefined length, one item of defined length holding an element
        // that declares more than the item has.
        let inner = short(0x0008, 0x1150, b"UI", b"1.2.3.4");
        let mut bad_inner = inner.clone();
        bad_inner[6..8].copy_from_slice(&200u16.to_le_bytes());
        for (inner, ok) in [(inner, true), (bad_inner, false)] {
            let mut set = vec![0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0];
            set.extend_from_slice(&UNDEFINED.to_le_bytes());
            set.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            set.extend_from_slice(&(inner.len() as u32).to_le_bytes());
            set.extend_from_slice(&inner);
            set.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            assert_eq!(check_lengths(&set, EXPLICIT, false).is_ok(), ok);
        }
    }

    #[test]
    fn sequences_nested_too_deep_are_refused() {
        let level = |n: usize| {
            let mut set = Vec::new();
            for _ in 0..n {
                set.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0]);
                set.extend_from_slice(&UNDEFINED.to_le_bytes());
                set.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
                set.extend_from_slice(&UNDEFINED.to_le_bytes());
            }
            for _ in 0..n {
                set.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
                set.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            }
            set
        };
        assert!(check_lengths(&level(8), EXPLICIT, false).is_ok());
        let e = check_lengths(&level(1500), EXPLICIT, false).unwrap_err();
        assert!(e.contains("deeper"), "{e}");
    }

    #[test]
    fn implicit_vr_lengths_are_four_bytes() {
        let mut set = vec![0x10, 0x00, 0x10, 0x00];
        set.extend_from_slice(&8u32.to_le_bytes());
        set.extend_from_slice(b"Doe^Jane");
        let implicit = Encoding::of("1.2.840.10008.1.2");
        assert!(check_lengths(&set, implicit, false).is_ok());
        set[4..8].copy_from_slice(&9u32.to_le_bytes());
        assert!(check_lengths(&set, implicit, false).is_err());
        assert!(check_lengths(&set[..5], implicit, false).is_err());
    }
}
