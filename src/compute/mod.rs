//! How networks compute: on which device ([`device`]), in what arithmetic ([`precision`]), and
//! running one over images without gradients ([`scoring`]).

pub mod device;
pub mod precision;
pub mod scoring;
