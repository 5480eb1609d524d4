//! Pictures and reports: plots drawn with plotters into PNG files, with a font embedded in the
//! binary so they render on machines with no fonts installed.

pub mod page;
pub mod plots;
