//! The value rules of the attributes xray copies from a received image into its results
//! (PS3.5 6.2): a UID is at most 64 characters of digits in dot-separated components without
//! leading zeros; dates, times, codes, names and strings keep to their VR's length and
//! characters. An image whose copied attributes break them is refused (0xC000) rather than
//! passed on into a Structured Report the PACS would reject or mis-file.

use dicom_core::{Tag, VR};
use dicom_object::InMemDicomObject;

/// Why `uid` is not a UID (PS3.5 9.1), or `Ok`.
pub fn check_uid(uid: &str) -> Result<(), &'static str> {
    if uid.is_empty() {
        return Err("empty");
    }
    if uid.len() > 64 {
        return Err("longer than 64 characters");
    }
    for part in uid.split('.') {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err("not digits separated by dots");
        }
        if part.len() > 1 && part.starts_with('0') {
            return Err("a component starts with 0");
        }
    }
    Ok(())
}

/// Why one value of VR `vr` breaks its rules, or `Ok` (VRs without rules here pass).
pub fn check_value(vr: VR, value: &str) -> Result<(), String> {
    let value = value.trim_end_matches(['\0', ' ']);
    let longest = |n: usize| {
        if value.chars().count() > n {
            Err(format!("longer than {n} characters"))
        } else {
            Ok(())
        }
    };
    // Text VRs may carry ESC for character set switching (ISO 2022), nothing else below space.
    if value.chars().any(|c| c.is_control() && c != '\u{1b}') {
        return Err("holds control characters".into());
    }
    match vr {
        VR::UI => check_uid(value).map_err(String::from),
        VR::DA => {
            if value.is_empty() || (value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit())) {
                Ok(())
            } else {
                Err("not a date YYYYMMDD".into())
            }
        }
        VR::TM => {
            longest(14)?;
            if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                Ok(())
            } else {
                Err("not a time HHMMSS.FFFFFF".into())
            }
        }
        VR::CS => {
            longest(16)?;
            if value
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_')
            {
                Ok(())
            } else {
                Err("not a code string (A-Z, 0-9, space, _)".into())
            }
        }
        VR::AS => {
            let b = value.as_bytes();
            if value.is_empty()
                || (b.len() == 4
                    && b[..3].iter().all(u8::is_ascii_digit)
                    && matches!(b[3], b'D' | b'W' | b'M' | b'Y'))
            {
                Ok(())
            } else {
                Err("not an age nnnD/W/M/Y".into())
            }
        }
        VR::DS => {
            longest(16)?;
            if value.is_empty() || value.trim().parse::<f64>().is_ok() {
                Ok(())
            } else {
                Err("not a decimal".into())
            }
        }
        VR::SH => longest(16),
        VR::LO => longest(64),
        // Each of a name's component groups (alphabetic, ideographic, phonetic).
        VR::PN => {
            if value.split('=').any(|g| g.chars().count() > 64) {
                Err("a name component group is longer than 64 characters".into())
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Checks every value of the elements `tags` of `obj` against its VR: the first that breaks
/// its rules, named by its keyword, or `Ok`.
pub fn check_attributes(obj: &InMemDicomObject, tags: &[Tag]) -> Result<(), String> {
    use dicom_core::dictionary::DataDictionary;
    for &tag in tags {
        let Ok(element) = obj.element(tag) else {
            continue;
        };
        let vr = element.vr();
        if vr == VR::SQ {
            continue;
        }
        let Ok(text) = element.to_str() else {
            continue;
        };
        let name = dicom_dictionary_std::StandardDataDictionary
            .by_tag(tag)
            .map(|e| e.alias.to_string())
            .unwrap_or_else(|| format!("{tag}"));
        for value in text.split('\\') {
            check_value(vr, value).map_err(|why| format!("{name} is invalid: {why}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_by_hand() {
        assert!(check_uid("1.2.840.10008.5.1.4.1.1.1").is_ok());
        assert!(check_uid("2.25.0").is_ok());
        assert!(check_uid(&format!("1.{}", "2".repeat(63))).is_err());
        for bad in ["", "1..2", "1.02", "1.2.", "1.2a", "1.2;DROP"] {
            assert!(check_uid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_by_their_vr() {
        assert!(check_value(VR::DA, "20261201").is_ok());
        assert!(check_value(VR::DA, "2026-12-01").is_err());
        assert!(check_value(VR::TM, "101500.25").is_ok());
        assert!(check_value(VR::CS, "CHEST").is_ok());
        assert!(check_value(VR::CS, "chest").is_err());
        assert!(check_value(VR::AS, "034Y").is_ok());
        assert!(check_value(VR::AS, "34 years").is_err());
        assert!(check_value(VR::SH, "ACC123").is_ok());
        assert!(check_value(VR::SH, &"A".repeat(17)).is_err());
        assert!(check_value(VR::LO, &"p".repeat(65)).is_err());
        assert!(check_value(VR::PN, "Doe^Jane").is_ok());
        assert!(check_value(VR::PN, &"x".repeat(65)).is_err());
        assert!(check_value(VR::LO, "line\nbreak").is_err());
        assert!(check_value(VR::DS, "1.75").is_ok());
        assert!(check_value(VR::DS, "tall").is_err());
    }
}
