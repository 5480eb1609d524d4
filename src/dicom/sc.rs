//! The Grad-CAM overlay as a Secondary Capture image in a series of its own: the source image
//! with the heatmap blended over it, under a black band with "NOT FOR DIAGNOSIS", the label
//! and its probability burned in (Burned In Annotation YES), and "NOT FOR DIAGNOSIS" in the
//! Series Description.

use anyhow::{anyhow, Result};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use image::RgbImage;
use plotters::prelude::*;

use super::sr::Placement;
use super::{put_seq, put_str, Producer, Source, NOT_FOR_DIAGNOSIS};
use crate::report::text_layout::{font, line_height};

/// The image's SOP class: Secondary Capture Image Storage.
pub const SOP_CLASS: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;

/// `overlay` under a black band holding `lines` in white (the first in yellow).
pub fn burn_in(overlay: &RgbImage, lines: &[String]) -> Result<RgbImage> {
    let (w, h) = overlay.dimensions();
    let px = (w / 28).clamp(12, 48);
    let band = line_height(px) * lines.len() as u32 + px / 2;
    let mut buf = vec![0u8; (w * (h + band) * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h + band)).into_drawing_area();
        root.fill(&BLACK)
            .map_err(|e| anyhow!("drawing the overlay: {e}"))?;
        for (i, line) in lines.iter().enumerate() {
            let colour = if i == 0 { YELLOW } else { WHITE };
            let y = (px / 4 + line_height(px) * i as u32) as i32;
            root.draw(&Text::new(
                line.clone(),
                (px as i32 / 2, y),
                font(px).color(&colour),
            ))
            .map_err(|e| anyhow!("drawing the overlay: {e}"))?;
        }
        root.present()
            .map_err(|e| anyhow!("drawing the overlay: {e}"))?;
    }
    let mut picture =
        RgbImage::from_raw(w, h + band, buf).ok_or_else(|| anyhow!("overlay buffer size"))?;
    image::imageops::replace(&mut picture, overlay, 0, band as i64);
    Ok(picture)
}

/// The Secondary Capture data set of `picture` (RGB, already burned in) for `source`.
pub fn capture(
    source: &Source,
    picture: &RgbImage,
    producer: &Producer,
    place: &Placement,
    label: &str,
) -> InMemDicomObject {
    let description = format!("xray Grad-CAM - {NOT_FOR_DIAGNOSIS}");
    let mut obj = source.start_result(SOP_CLASS, place, "OT", &description, producer);
    // The body part as the source gives it, which decides whether Laterality (type 2C) is
    // needed: then the source's, or empty (unknown).
    for tag in [tags::BODY_PART_EXAMINED, tags::LATERALITY] {
        if let Some(e) = source.series_extra.iter().find(|e| e.header().tag == tag) {
            obj.put(e.clone());
        }
    }
    if source
        .series_extra
        .iter()
        .all(|e| e.header().tag != tags::BODY_PART_EXAMINED)
    {
        obj.put(DataElement::new(
            tags::LATERALITY,
            VR::CS,
            PrimitiveValue::Empty,
        ));
    }
    put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
    obj.put(DataElement::new(
        tags::PATIENT_ORIENTATION,
        VR::CS,
        PrimitiveValue::Empty,
    ));
    obj.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        dicom_core::dicom_value!(Strs, ["DERIVED", "SECONDARY"]),
    ));
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(
        &mut obj,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        format!("Grad-CAM heatmap of the class {label} blended over the source image by xray; {NOT_FOR_DIAGNOSIS}"),
    );
    let mut src = InMemDicomObject::new_empty();
    put_str(
        &mut src,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &source.sop_class_uid,
    );
    put_str(
        &mut src,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &source.sop_instance_uid,
    );
    put_seq(&mut obj, tags::SOURCE_IMAGE_SEQUENCE, vec![src]);
    let (w, h) = picture.dimensions();
    let us = |v: u16| PrimitiveValue::from(v);
    obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, us(3)));
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    obj.put(DataElement::new(tags::PLANAR_CONFIGURATION, VR::US, us(0)));
    obj.put(DataElement::new(tags::ROWS, VR::US, us(h as u16)));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, us(w as u16)));
    obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, us(8)));
    obj.put(DataElement::new(tags::BITS_STORED, VR::US, us(8)));
    obj.put(DataElement::new(tags::HIGH_BIT, VR::US, us(7)));
    obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, us(0)));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(picture.as_raw().clone().into()),
    ));
    obj
}
