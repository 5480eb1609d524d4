//! The shape of the from-scratch CNNs (`simple_cnn`, `sepres_cnn`): how many blocks, how wide,
//! which kernel, an optional dense layer and dropout after each block. Every key is optional:
//! unset, the architecture's own default holds, so configs and run folders made before these
//! keys build the same network.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::models::Arch;

/// `model.filters`: a base width doubled at each block, or one width per block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Filters {
    /// Block `i` has `base * 2^i` channels.
    Base(i64),
    /// Block `i` has `list[i]` channels.
    List(Vec<i64>),
}

/// `model.block_dropout`: one rate after every block, or one per block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same rate after every block.
    All(f64),
    /// `list[i]` after block `i`.
    Each(Vec<f64>),
}

/// The architecture keys of `[model]` for `simple_cnn` and `sepres_cnn`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CnnShape {
    /// Feature blocks (simple_cnn 3, sepres_cnn 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
    /// Widths (simple_cnn 32 doubled: 32, 64, 128; sepres_cnn 64, 128, 256, 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
    /// Convolution kernel side, odd (3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_size: Option<i64>,
    /// Units of a dense ReLU layer between the pooled features and the classifier; 0 = none (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_units: Option<i64>,
    /// Dropout after each block (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_dropout: Option<PerBlock>,
}

/// A [`CnnShape`] with every default filled in for one architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Output channels of each block.
    pub widths: Vec<i64>,
    /// Kernel side.
    pub kernel_size: i64,
    /// Dense units (0: none).
    pub dense_units: i64,
    /// Dropout after each block.
    pub block_dropout: Vec<f64>,
}

impl CnnShape {
    /// Whether every key is unset (the architecture's own shape).
    pub fn is_default(&self) -> bool {
        *self == CnnShape::default()
    }

    /// The keys that are set, by name, for messages.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.blocks.is_some() {
            keys.push("model.blocks");
        }
        if self.filters.is_some() {
            keys.push("model.filters");
        }
        if self.kernel_size.is_some() {
            keys.push("model.kernel_size");
        }
        if self.dense_units.is_some() {
            keys.push("model.dense_units");
        }
        if self.block_dropout.is_some() {
            keys.push("model.block_dropout");
        }
        keys
    }

    /// Fills in `arch`'s defaults and checks the result against the input side; a bad value
    /// is a usage error naming the key.
    pub fn resolve(&self, arch: Arch, image_size: u32) -> Result<Resolved, Error> {
        // Long on purpose: one check per shape key, each with its own message.
        let (default_blocks, default_widths, halvings_before): (usize, Vec<i64>, u32) = match arch {
            Arch::SimpleCnn => (3, vec![32, 64, 128], 0),
            Arch::SepresCnn => (4, vec![64, 128, 256, 256], 1),
            other => {
                let keys = self.set_keys();
                if let Some(key) = keys.first() {
                    return Err(Error::usage(format!(
                        "{key} shapes simple_cnn and sepres_cnn only, not {other}"
                    )));
                }
                return Ok(Resolved {
                    widths: Vec::new(),
                    kernel_size: 3,
                    dense_units: 0,
                    block_dropout: Vec::new(),
                });
            }
        };
        let blocks = match (&self.blocks, &self.filters) {
            (Some(b), _) => *b,
            (None, Some(Filters::List(l))) => l.len(),
            (None, _) => default_blocks,
        };
        if !(1..=8).contains(&blocks) {
            return Err(Error::usage(format!(
                "model.blocks must be from 1 to 8, got {blocks}"
            )));
        }
        let widths: Vec<i64> = match &self.filters {
            None if blocks == default_blocks => default_widths,
            None => (0..blocks).map(|i| 32 << i).collect(),
            Some(Filters::Base(b)) => (0..blocks).map(|i| b << i).collect(),
            Some(Filters::List(l)) if l.len() != blocks => {
                return Err(Error::usage(format!(
                    "model.filters lists {} widths for {blocks} blocks",
                    l.len()
                )))
            }
            Some(Filters::List(l)) => l.clone(),
        };
        if let Some(w) = widths.iter().find(|&&w| !(1..=4096).contains(&w)) {
            return Err(Error::usage(format!(
                "model.filters: a block width must be from 1 to 4096, got {w}"
            )));
        }
        let kernel_size = self.kernel_size.unwrap_or(3);
        if !(1..=11).contains(&kernel_size) || kernel_size % 2 == 0 {
            return Err(Error::usage(format!(
                "model.kernel_size must be odd, from 1 to 11, got {kernel_size}"
            )));
        }
        let dense_units = self.dense_units.unwrap_or(0);
        if !(0..=8192).contains(&dense_units) {
            return Err(Error::usage(format!(
                "model.dense_units must be from 0 (no dense layer) to 8192, got {dense_units}"
            )));
        }
        let block_dropout = match &self.block_dropout {
            None => vec![0.0; blocks],
            Some(PerBlock::All(p)) => vec![*p; blocks],
            Some(PerBlock::Each(l)) if l.len() != blocks => {
                return Err(Error::usage(format!(
                    "model.block_dropout lists {} rates for {blocks} blocks",
                    l.len()
                )))
            }
            Some(PerBlock::Each(l)) => l.clone(),
        };
        if let Some(p) = block_dropout.iter().find(|p| !(0.0..1.0).contains(*p)) {
            return Err(Error::usage(format!(
                "model.block_dropout must be in [0, 1), got {p}"
            )));
        }
        // Each block but simple_cnn's last halves the side (sepres_cnn's stem too).
        let halvings = halvings_before
            + match arch {
                Arch::SimpleCnn => blocks as u32 - 1,
                _ => blocks as u32,
            };
        if (image_size >> halvings.min(31)) == 0 {
            return Err(Error::usage(format!(
                "{blocks} blocks halve a {image_size} px input {halvings} times: fewer blocks, \
                 or a larger data.image_size"
            )));
        }
        Ok(Resolved {
            widths,
            kernel_size,
            dense_units,
            block_dropout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_todays_shapes() {
        let none = CnnShape::default();
        let simple = none.resolve(Arch::SimpleCnn, 128).unwrap();
        assert_eq!(simple.widths, [32, 64, 128]);
        assert_eq!((simple.kernel_size, simple.dense_units), (3, 0));
        assert_eq!(simple.block_dropout, [0.0; 3]);
        let sepres = none.resolve(Arch::SepresCnn, 128).unwrap();
        assert_eq!(sepres.widths, [64, 128, 256, 256]);
    }

    #[test]
    fn keys_shape_the_network() {
        let shape = CnnShape {
            blocks: Some(4),
            filters: Some(Filters::Base(16)),
            kernel_size: Some(5),
            dense_units: Some(256),
            block_dropout: Some(PerBlock::Each(vec![0.1, 0.2, 0.3, 0.4])),
        };
        let r = shape.resolve(Arch::SimpleCnn, 64).unwrap();
        assert_eq!(r.widths, [16, 32, 64, 128]);
        assert_eq!((r.kernel_size, r.dense_units), (5, 256));
        assert_eq!(r.block_dropout, [0.1, 0.2, 0.3, 0.4]);
        let list = CnnShape {
            filters: Some(Filters::List(vec![8, 8])),
            ..Default::default()
        };
        assert_eq!(list.resolve(Arch::SimpleCnn, 64).unwrap().widths, [8, 8]);
    }

    #[test]
    fn bad_shapes_name_the_key() {
        let cases = [
            (
                CnnShape {
                    blocks: Some(0),
                    ..Default::default()
                },
                Arch::SimpleCnn,
                "model.blocks must be",
            ),
            (
                CnnShape {
                    kernel_size: Some(4),
                    ..Default::default()
                },
                Arch::SimpleCnn,
                "model.kernel_size must be odd",
            ),
            (
                CnnShape {
                    blocks: Some(3),
                    filters: Some(Filters::List(vec![8, 16])),
                    ..Default::default()
                },
                Arch::SimpleCnn,
                "model.filters lists 2 widths for 3 blocks",
            ),
            (
                CnnShape {
                    block_dropout: Some(PerBlock::All(1.0)),
                    ..Default::default()
                },
                Arch::SimpleCnn,
                "model.block_dropout must be in [0, 1)",
            ),
            (
                CnnShape {
                    blocks: Some(8),
                    ..Default::default()
                },
                Arch::SepresCnn,
                "halve a 64 px input 9 times",
            ),
            (
                CnnShape {
                    dense_units: Some(128),
                    ..Default::default()
                },
                Arch::MobileNetV2,
                "model.dense_units shapes simple_cnn and sepres_cnn only",
            ),
        ];
        for (shape, arch, want) in cases {
            let err = shape.resolve(arch, 64).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
