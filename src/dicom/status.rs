//! DIMSE status codes xray sends and reads (PS3.4 B.2.3 for C-STORE, PS3.7 C for the
//! general ones), by name: the node's answers are chosen from these, never written as bare
//! numbers.

/// Success.
pub const SUCCESS: u16 = 0x0000;
/// Refused: SOP class not supported (on this presentation context, or at all).
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Unrecognized operation (a DIMSE command other than C-ECHO and C-STORE).
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// Refused: out of resources (too large, queue full, the model busy or stopped).
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: data set does not match SOP class.
pub const DATA_SET_MISMATCH: u16 = 0xA900;
/// Error: cannot understand (unreadable, undecodable, invalid attributes).
pub const CANNOT_UNDERSTAND: u16 = 0xC000;

/// Whether a C-STORE status means the instance was stored (success or a warning, 0xB...).
pub fn is_stored(status: u16) -> bool {
    status == SUCCESS || (0xB000..=0xBFFF).contains(&status)
}

/// The status as DICOM writes it in logs: `0xA700`.
pub fn hex(status: u16) -> String {
    format!("0x{status:04X}")
}
