//! xray's answers as DICOM objects, in the study of the image they answer: a Structured Report
//! ([`sr`]) and a Secondary Capture of the Grad-CAM overlay ([`sc`]), with fresh UIDs
//! ([`uid`]), and their delivery by C-STORE ([`scu`]) or STOW-RS ([`stow`]) through an on-disk
//! queue ([`outbox`]).
//!
//! What goes into every object is read from the source image by [`Source::read`]: the patient
//! and study modules are copied as they are, so that the PACS files the results beside the
//! image; nothing else of the source is kept.

pub mod files;
pub mod outbox;
pub mod sc;
pub mod scu;
pub mod sr;
pub mod status;
pub mod stow;
pub mod uid;
pub mod vr;

use std::path::Path;

use anyhow::{Context, Result};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::error::Error;

/// "Research use, not a diagnosis": said in every report and burned into every overlay.
pub const NOT_FOR_DIAGNOSIS: &str = "NOT FOR DIAGNOSIS";

/// The patient and study attributes copied from the source into every result (PS3.3 C.7.1.1
/// Patient, C.7.2.1 General Study, C.7.2.2 Patient Study), in tag order.
const COPIED: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_DESCRIPTION,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_ID,
];

/// The source's UIDs a result refers to.
const SOURCE_UIDS: &[Tag] = &[
    tags::SERIES_INSTANCE_UID,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
];

/// The source's series attributes the overlay's series takes.
const SERIES_EXTRA: &[Tag] = &[tags::BODY_PART_EXAMINED, tags::LATERALITY];

/// Type 2 attributes of the Patient and General Study modules: present in every result, empty
/// when the source has none.
const TYPE_2: &[Tag] = &[
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_ID,
];

/// A text element's value without its padding; `None` when absent or empty.
pub fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
}

/// What a result needs of the image it answers.
#[derive(Debug, Clone)]
pub struct Source {
    /// The patient and study elements, copied into each result.
    pub copied: Vec<DataElement<InMemDicomObject>>,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID of the source image.
    pub series_uid: String,
    /// SOP Class UID of the source image.
    pub sop_class_uid: String,
    /// SOP Instance UID of the source image.
    pub sop_instance_uid: String,
    /// The source's Modality (CR, DX, MR, OT...).
    pub modality: String,
    /// The source's Body Part Examined and Laterality, for the overlay's series.
    pub series_extra: Vec<DataElement<InMemDicomObject>>,
}

impl Source {
    /// The attributes of a source data set (header only is enough). A source without Study
    /// Instance UID or SOP Instance UID cannot be answered in its study: an error naming it.
    pub fn of(obj: &InMemDicomObject, name: &Path) -> Result<Source, Error> {
        let need = |tag: Tag, what: &str| {
            text(obj, tag).ok_or_else(|| Error::image(name, format!("DICOM without {what}")))
        };
        // What goes into the results must keep to its VR's rules (PS3.5 6.2).
        vr::check_attributes(obj, COPIED)
            .and_then(|()| vr::check_attributes(obj, SOURCE_UIDS))
            .and_then(|()| vr::check_attributes(obj, SERIES_EXTRA))
            .map_err(|why| Error::image(name, format!("DICOM attribute {why}")))?;
        let copied = COPIED
            .iter()
            .filter_map(|&t| obj.element(t).ok().cloned())
            .collect();
        Ok(Source {
            copied,
            study_uid: need(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_uid: need(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            sop_class_uid: need(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: need(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            modality: text(obj, tags::MODALITY).unwrap_or_else(|| "OT".into()),
            series_extra: SERIES_EXTRA
                .iter()
                .filter_map(|&t| obj.element(t).ok().cloned())
                .collect(),
        })
    }

    /// The attributes of a DICOM Part 10 file, read up to its pixel data.
    pub fn read(path: &Path) -> Result<Source, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::image(path, e.to_string()))?;
        // Framing first: dicom-rs reserves what an element's length says before reading it.
        xray_codec::decode::check_dicom(&bytes, path)?;
        let obj = dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Always)
            .read_until(tags::PIXEL_DATA)
            .from_reader(bytes.as_slice())
            .map_err(|e| Error::image(path, format!("unreadable DICOM: {e}")))?;
        Source::of(&obj, path)
    }

    /// A new data set holding the copied patient and study attributes (type 2 ones empty where
    /// the source has none).
    fn start(&self) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        for e in &self.copied {
            obj.put(e.clone());
        }
        for &t in TYPE_2 {
            if obj.element(t).is_err() {
                let vr = dicom_dictionary_std::StandardDataDictionary
                    .by_tag(t)
                    .map(|e| e.vr.relaxed())
                    .unwrap_or(VR::LO);
                obj.put(DataElement::new(t, vr, PrimitiveValue::Empty));
            }
        }
        obj
    }

    /// A new result's data set: the copied patient and study attributes, then the SOP class,
    /// a new instance in a new series (`place`), creation and content date and time, the
    /// modality, the series description and xray as the equipment.
    fn start_result(
        &self,
        sop_class: &str,
        place: &sr::Placement,
        modality: &str,
        description: &str,
        producer: &Producer,
    ) -> InMemDicomObject {
        let mut obj = self.start();
        let (date, time) = now();
        put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, sop_class);
        put_str(
            &mut obj,
            tags::SOP_INSTANCE_UID,
            VR::UI,
            &place.instance_uid,
        );
        put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
        put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
        put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
        put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
        put_str(&mut obj, tags::MODALITY, VR::CS, modality);
        put_str(
            &mut obj,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &place.series_uid,
        );
        let number = place.series_number.to_string();
        put_str(&mut obj, tags::SERIES_NUMBER, VR::IS, number);
        put_str(&mut obj, tags::SERIES_DESCRIPTION, VR::LO, description);
        put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
        put_equipment(&mut obj, producer);
        obj
    }
}

use dicom_core::dictionary::DataDictionary;

/// Who made the result: written into the General Equipment module and the report's algorithm
/// identification.
#[derive(Debug, Clone)]
pub struct Producer {
    /// The run's name (the model).
    pub model: String,
    /// sha256 of the weights file: the algorithm's version.
    pub weights_sha256: String,
    /// The model's architecture, input size and classes, as the algorithm's parameters.
    pub parameters: String,
}

impl Producer {
    /// The producer of a loaded model's answers.
    pub fn of(predictor: &crate::infer::Predictor) -> Result<Producer> {
        let weights = predictor.run_dir.join("model.safetensors");
        let sha256 = crate::fsutil::sha256_file(&weights)
            .with_context(|| format!("reading {}", weights.display()))?;
        Ok(Producer::new(
            crate::run::run_name(&predictor.run_dir),
            sha256,
            &predictor.card,
        ))
    }

    /// The producer of `card`'s answers, for the run `model` whose weights hash to
    /// `weights_sha256` (the server has hashed them already).
    pub fn new(model: String, weights_sha256: String, card: &crate::run::ModelCard) -> Producer {
        let output = if card.task == crate::config::Task::Multilabel {
            let t: Vec<String> = card.label_temperatures().into_iter().map(sr::ds).collect();
            format!(
                "labels {}; a sigmoid per label; temperatures {}",
                card.classes.join(", "),
                t.join(", ")
            )
        } else {
            format!(
                "classes {}; temperature {}",
                card.classes.join(", "),
                sr::ds(card.temperature)
            )
        };
        Producer {
            model,
            weights_sha256,
            parameters: format!(
                "architecture {}; input {}x{}, {} channel(s); {output}",
                card.arch.as_str(),
                card.image_size,
                card.image_size,
                card.channels,
            ),
        }
    }

    /// A UID for this xray node as the report's device observer: `2.25.` and the first 16
    /// bytes of sha256("xray device " + AE title), so the same node keeps the same UID.
    pub fn device_uid(ae_title: &str) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("xray device {ae_title}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        format!("2.25.{}", u128::from_be_bytes(bytes))
    }
}

/// Series Number of the reports' series.
pub const SR_SERIES_NUMBER: u32 = 9901;
/// Series Number of the overlays' series.
pub const SC_SERIES_NUMBER: u32 = 9902;

/// The result objects of one image, ready to encode.
pub struct ResultSet {
    /// The Structured Report.
    pub report: InMemDicomObject,
    /// Its SOP Instance UID.
    pub report_uid: String,
    /// The Secondary Capture overlay (none for a flagged image, or without a heatmap).
    pub capture: Option<InMemDicomObject>,
}

/// The report (and, given an `overlay`, the Secondary Capture) answering `source`, each in a
/// new series of the source's study, with UIDs from `uids`.
pub fn results(
    source: &Source,
    prediction: &crate::predict::Prediction,
    card: &crate::run::ModelCard,
    overlay: Option<&image::RgbImage>,
    producer: &Producer,
    uids: &uid::UidRoot,
    device_uid: &str,
) -> Result<ResultSet> {
    let place = sr::Placement {
        series_uid: uids.next(),
        instance_uid: uids.next(),
        series_number: SR_SERIES_NUMBER,
    };
    let report = sr::report(
        source,
        prediction,
        &card.classes,
        card.threshold,
        producer,
        &place,
        device_uid,
        &uids.next(),
    );
    let capture = match overlay {
        Some(picture) if !prediction.out_of_distribution() => {
            let lines = [
                format!("{NOT_FOR_DIAGNOSIS} - research use"),
                format!(
                    "{} {:.0}%  (xray, {})",
                    prediction.label,
                    prediction.probability * 100.0,
                    producer.model
                ),
            ];
            let picture = sc::burn_in(picture, &lines)?;
            let place = sr::Placement {
                series_uid: uids.next(),
                instance_uid: uids.next(),
                series_number: SC_SERIES_NUMBER,
            };
            Some(sc::capture(
                source,
                &picture,
                producer,
                &place,
                &prediction.label,
            ))
        }
        _ => None,
    };
    Ok(ResultSet {
        report,
        report_uid: place.instance_uid,
        capture,
    })
}

/// Today's date and time as DICOM DA and TM.
fn now() -> (String, String) {
    let t = chrono::Local::now();
    (
        t.format("%Y%m%d").to_string(),
        t.format("%H%M%S").to_string(),
    )
}

/// Puts a text element.
fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<String>) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::from(value.into()),
    ));
}

/// Puts a sequence element.
fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(
        tag,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(items),
    ));
}

/// The General Equipment attributes of xray.
fn put_equipment(obj: &mut InMemDicomObject, producer: &Producer) {
    put_str(obj, tags::MANUFACTURER, VR::LO, "xray");
    put_str(
        obj,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        truncate(&producer.model, 64),
    );
    put_str(
        obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        concat!("xray ", env!("CARGO_PKG_VERSION")),
    );
}

/// At most `n` characters of `s`.
fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A result object as a Part 10 file (explicit VR little endian).
pub fn encode(obj: InMemDicomObject) -> Result<Vec<u8>> {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
        )
        .context("DICOM file meta group")?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .context("encoding a DICOM object")?;
    Ok(bytes)
}

/// A result object written as a Part 10 file at `path`, mode 0600 (it holds patient data).
pub fn write_file(obj: InMemDicomObject, path: &Path) -> Result<()> {
    crate::fsutil::write_private(path, &encode(obj)?)
}

/// xray's Implementation Class UID (in the 2.25 UUID arc, fixed for this program).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.262166125166734410427853957163392411583";
/// xray's Implementation Version Name (16 characters at most).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("XRAY_", env!("CARGO_PKG_VERSION"));
