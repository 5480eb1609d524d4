//! The Structured Report of one answered image, after IHE's AI Results profile where it fits:
//! a Comprehensive SR whose root is TID 1500 (Imaging Measurement Report) with
//!
//! - the language, the device observer (TID 1001/1004) and the procedure reported;
//! - an Image Library holding the source image;
//! - one Measurement Group (TID 1501) with a tracking identifier and UID, the finding (the
//!   decided class, or "not the kind of image this model was trained on"), the algorithm
//!   (TID 4019: name = the run, version = sha256 of its weights, parameters), each class's
//!   probability, the decision threshold, the out-of-distribution guard's verdict, score and
//!   threshold, and the comment "Research use, not a diagnosis".
//!
//! xray's own concepts are coded in the private scheme [`SCHEME`] (declared in the Coding Scheme
//! Identification Sequence); everything with a standard code (DCM, SCT, UCUM) uses it.
//! The source image is referenced in the Current Requested Procedure Evidence Sequence as well.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::{put_seq, put_str, truncate, Producer, Source, NOT_FOR_DIAGNOSIS};
use crate::predict::Prediction;

/// xray's private coding scheme designator ("99" marks a private scheme, PS3.16 8.2).
pub const SCHEME: &str = "99XRAY";

/// The report's SOP class: Comprehensive SR.
pub const SOP_CLASS: &str = uids::COMPREHENSIVE_SR_STORAGE;

/// What the report says in words of the finding of a flagged image.
pub const OOD_MEANING: &str = "Not the kind of image this model was trained on";

/// A coded concept: value, scheme, meaning.
#[derive(Debug, Clone, Copy)]
struct Code<'a>(&'a str, &'a str, &'a str);

fn code_item(c: Code<'_>) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::CODE_VALUE, VR::SH, c.0);
    put_str(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.1);
    put_str(&mut o, tags::CODE_MEANING, VR::LO, truncate(c.2, 64));
    o
}

/// A content item's head: relationship, value type, concept name.
fn item(relationship: &str, value_type: &str, name: Option<Code<'_>>) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put_str(&mut o, tags::VALUE_TYPE, VR::CS, value_type);
    if let Some(name) = name {
        put_seq(
            &mut o,
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code_item(name)],
        );
    }
    o
}

fn text(rel: &str, name: Code<'_>, value: &str) -> InMemDicomObject {
    let mut o = item(rel, "TEXT", Some(name));
    put_str(&mut o, tags::TEXT_VALUE, VR::UT, value);
    o
}

fn code(rel: &str, name: Code<'_>, value: Code<'_>) -> InMemDicomObject {
    let mut o = item(rel, "CODE", Some(name));
    put_seq(&mut o, tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)]);
    o
}

fn uidref(rel: &str, name: Code<'_>, value: &str) -> InMemDicomObject {
    let mut o = item(rel, "UIDREF", Some(name));
    put_str(&mut o, tags::UID, VR::UI, value);
    o
}

/// A NUM item of a dimensionless value (UCUM "1"), written with 6 significant digits (DS holds
/// 16 characters).
fn num(rel: &str, name: Code<'_>, value: f64) -> InMemDicomObject {
    let mut o = item(rel, "NUM", Some(name));
    let mut measured = InMemDicomObject::new_empty();
    put_seq(
        &mut measured,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_item(Code("1", "UCUM", "no units"))],
    );
    put_str(&mut measured, tags::NUMERIC_VALUE, VR::DS, ds(value));
    measured.put(DataElement::new(
        tags::FLOATING_POINT_VALUE,
        VR::FD,
        PrimitiveValue::from(value),
    ));
    put_seq(&mut o, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    o
}

/// `value` as a DICOM decimal string (at most 16 characters).
pub fn ds(value: f64) -> String {
    let s = format!("{value:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    let s = if s.is_empty() || s == "-" { "0" } else { s };
    if s.len() <= 16 {
        s.to_string()
    } else {
        format!("{value:.6e}")
    }
}

fn container(rel: &str, name: Code<'_>, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut o = item(rel, "CONTAINER", Some(name));
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut o, tags::CONTENT_SEQUENCE, children);
    o
}

fn image_ref(source: &Source) -> InMemDicomObject {
    let mut o = item("CONTAINS", "IMAGE", None);
    put_seq(&mut o, tags::REFERENCED_SOP_SEQUENCE, vec![sop_ref(source)]);
    o
}

fn sop_ref(source: &Source) -> InMemDicomObject {
    let mut r = InMemDicomObject::new_empty();
    put_str(
        &mut r,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &source.sop_class_uid,
    );
    put_str(
        &mut r,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &source.sop_instance_uid,
    );
    r
}

/// The Current Requested Procedure Evidence Sequence: the source image, by study and series.
pub(super) fn evidence(source: &Source) -> InMemDicomObject {
    let mut series = InMemDicomObject::new_empty();
    put_seq(
        &mut series,
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_ref(source)],
    );
    put_str(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &source.series_uid,
    );
    let mut study = InMemDicomObject::new_empty();
    put_seq(&mut study, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
    put_str(
        &mut study,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &source.study_uid,
    );
    study
}

/// The procedure the report is on, from the source's modality.
fn procedure(modality: &str) -> Code<'static> {
    match modality {
        "CR" | "DX" => Code("363680008", "SCT", "Radiographic imaging procedure"),
        "MR" => Code("113091000", "SCT", "Magnetic resonance imaging"),
        _ => Code("363679005", "SCT", "Imaging"),
    }
}

/// The series and instance a result goes into.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Series Instance UID.
    pub series_uid: String,
    /// SOP Instance UID.
    pub instance_uid: String,
    /// Series Number.
    pub series_number: u32,
}

/// The report of `prediction` (of a model with `classes` and binary decision `threshold`) on
/// the image `source`, as a data set. `device_uid` identifies this xray node as the observer;
/// `tracking_uid` the measurement group.
#[allow(clippy::too_many_arguments)]
pub fn report(
    source: &Source,
    prediction: &Prediction,
    classes: &[String],
    threshold: f64,
    producer: &Producer,
    place: &Placement,
    device_uid: &str,
    tracking_uid: &str,
) -> InMemDicomObject {
    // Long on purpose: the report's content tree, one item a line, in the template's order.
    let description = format!("xray AI result - {NOT_FOR_DIAGNOSIS}");
    let mut obj = source.start_result(SOP_CLASS, place, "SR", &description, producer);
    put_seq(
        &mut obj,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_seq(&mut obj, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    put_seq(
        &mut obj,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(source)],
    );
    let mut scheme = InMemDicomObject::new_empty();
    put_str(&mut scheme, tags::CODING_SCHEME_DESIGNATOR, VR::SH, SCHEME);
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        "xray classifier concepts",
    );
    put_str(
        &mut scheme,
        tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
        VR::ST,
        "xray (private scheme of this program)",
    );
    put_seq(
        &mut obj,
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![scheme],
    );

    let flagged = prediction.out_of_distribution();
    let mut group = vec![
        text(
            "HAS OBS CONTEXT",
            Code("112039", "DCM", "Tracking Identifier"),
            "xray image classification",
        ),
        uidref(
            "HAS OBS CONTEXT",
            Code("112040", "DCM", "Tracking Unique Identifier"),
            tracking_uid,
        ),
        text(
            "HAS CONCEPT MOD",
            Code("111001", "DCM", "Algorithm Name"),
            &producer.model,
        ),
        text(
            "HAS CONCEPT MOD",
            Code("111003", "DCM", "Algorithm Version"),
            &producer.weights_sha256,
        ),
        text(
            "HAS CONCEPT MOD",
            Code("111002", "DCM", "Algorithm Parameters"),
            &producer.parameters,
        ),
    ];
    if flagged {
        group.push(code(
            "CONTAINS",
            Code("121071", "DCM", "Finding"),
            Code("OOD", SCHEME, OOD_MEANING),
        ));
    } else {
        // One Finding per finding of a multi-label model ("No Finding" when none), else the
        // class decided.
        let found: Vec<&str> = match &prediction.findings {
            Some(f) if f.is_empty() => vec![crate::data::multilabel::NO_FINDING],
            Some(f) => f.iter().map(String::as_str).collect(),
            None => vec![prediction.label.as_str()],
        };
        for name in found {
            let value = match classes.iter().position(|c| c == name) {
                Some(k) => format!("CLASS-{k}"),
                None => "NO-FINDING".to_string(),
            };
            group.push(code(
                "CONTAINS",
                Code("121071", "DCM", "Finding"),
                Code(&value, SCHEME, name),
            ));
        }
    }
    for (k, (class, p)) in classes.iter().zip(&prediction.probabilities).enumerate() {
        let value = format!("PROB-{k}");
        let meaning = format!("Probability of {class}");
        group.push(num("CONTAINS", Code(&value, SCHEME, &meaning), *p));
    }
    if prediction.findings.is_some() {
        for (k, (class, t)) in classes.iter().zip(&prediction.thresholds).enumerate() {
            let value = format!("THRESHOLD-{k}");
            let meaning = format!("Decision threshold on the probability of {class}");
            group.push(num("CONTAINS", Code(&value, SCHEME, &meaning), *t));
        }
    } else if classes.len() == 2 {
        let meaning = format!("Decision threshold on the probability of {}", classes[1]);
        group.push(num(
            "CONTAINS",
            Code("THRESHOLD", SCHEME, &meaning),
            threshold,
        ));
    }
    match prediction.ood {
        Some(v) => {
            let verdict = if flagged {
                Code("OOD", SCHEME, OOD_MEANING)
            } else {
                Code(
                    "IN-DIST",
                    SCHEME,
                    "Like the images this model was trained on",
                )
            };
            group.push(code(
                "CONTAINS",
                Code("GUARD", SCHEME, "Out-of-distribution guard"),
                verdict,
            ));
            group.push(num(
                "CONTAINS",
                Code("GUARD-SCORE", SCHEME, "Out-of-distribution score"),
                v.score,
            ));
            group.push(num(
                "CONTAINS",
                Code("GUARD-THRESHOLD", SCHEME, "Out-of-distribution threshold"),
                v.threshold,
            ));
        }
        None => group.push(code(
            "CONTAINS",
            Code("GUARD", SCHEME, "Out-of-distribution guard"),
            Code("NO-GUARD", SCHEME, "None fitted for this model"),
        )),
    }
    group.push(text(
        "CONTAINS",
        Code("121106", "DCM", "Comment"),
        &format!("Research use, not a diagnosis ({NOT_FOR_DIAGNOSIS})."),
    ));

    let library = container(
        "CONTAINS",
        Code("111028", "DCM", "Image Library"),
        vec![container(
            "CONTAINS",
            Code("126200", "DCM", "Image Library Group"),
            vec![image_ref(source)],
        )],
    );
    let measurements = container(
        "CONTAINS",
        Code("126010", "DCM", "Imaging Measurements"),
        vec![container(
            "CONTAINS",
            Code("125007", "DCM", "Measurement Group"),
            group,
        )],
    );
    let content = vec![
        code(
            "HAS CONCEPT MOD",
            Code("121049", "DCM", "Language of Content Item and Descendants"),
            Code("en-US", "RFC5646", "English (United States)"),
        ),
        code(
            "HAS OBS CONTEXT",
            Code("121005", "DCM", "Observer Type"),
            Code("121007", "DCM", "Device"),
        ),
        uidref(
            "HAS OBS CONTEXT",
            Code("121012", "DCM", "Device Observer UID"),
            device_uid,
        ),
        text(
            "HAS OBS CONTEXT",
            Code("121013", "DCM", "Device Observer Name"),
            "xray",
        ),
        text(
            "HAS OBS CONTEXT",
            Code("121014", "DCM", "Device Observer Manufacturer"),
            "xray",
        ),
        text(
            "HAS OBS CONTEXT",
            Code("121015", "DCM", "Device Observer Model Name"),
            &truncate(&producer.model, 64),
        ),
        code(
            "HAS CONCEPT MOD",
            Code("121058", "DCM", "Procedure reported"),
            procedure(&source.modality),
        ),
        library,
        measurements,
    ];
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut obj,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(Code(
            "126000",
            "DCM",
            "Imaging Measurement Report",
        ))],
    );
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    put_str(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_seq(&mut obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);
    put_seq(&mut obj, tags::CONTENT_SEQUENCE, content);
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(1.0), "1");
        assert_eq!(ds(0.0), "0");
        assert_eq!(ds(0.123456789), "0.123457");
        assert_eq!(ds(1234.5), "1234.5");
        let big = ds(1.5e20);
        assert!(
            big.len() <= 16 && big.parse::<f64>().unwrap() == 1.5e20,
            "{big}"
        );
    }
}
