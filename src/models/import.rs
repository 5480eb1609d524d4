//! `xray import-weights`: a PyTorch state-dict file (`torch.save(model.state_dict())`, a zip
//! holding a pickle and raw storages, which libtorch's C++ loader cannot read) to safetensors.
//!
//! The pickle is read by a small stack machine that knows the opcodes `torch.save` emits and
//! the two callables a state dict uses (`OrderedDict`, `torch._utils._rebuild_tensor_v2`);
//! anything else becomes an opaque value, so no code from the file is ever run.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Kind, Tensor};

use crate::error::{Error, TorchResultExt};
use crate::models::Arch;

/// A tensor in the pickle: where its data lies in which storage.
#[derive(Debug, Clone)]
struct TensorRef {
    storage: String,
    kind: Kind,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The values the stack machine handles.
#[derive(Debug, Clone)]
enum Value {
    None,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage(String, Kind),
    Tensor(TensorRef),
    Mark,
    Opaque,
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

fn ints(v: &Value) -> Result<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Ok(*n),
                other => Err(anyhow!("expected an integer, found {other:?}")),
            })
            .collect(),
        other => Err(anyhow!("expected a tuple of integers, found {other:?}")),
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| anyhow!("pickle truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn line(&mut self) -> Result<String> {
        let start = self.pos;
        while self.u8()? != b'\n' {}
        Ok(String::from_utf8_lossy(&self.data[start..self.pos - 1]).into_owned())
    }
}

/// Runs the pickle in `data` and returns the top-level value.
///
/// Long on purpose (about 180 lines): it is the pickle virtual machine, one `match` arm per
/// opcode over one stack and memo; split up, each part would need the whole machine's state.
fn unpickle(data: &[u8]) -> Result<Value> {
    // Long on purpose: one arm per pickle opcode that PyTorch's files use, around one stack; split
    // up, the interpreter's state would travel through every piece.
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| anyhow!("pickle stack underflow"));
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>> {
        let at = stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| anyhow!("pickle MARK missing"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 | 0x89 => stack.push(Value::Opaque), // True, False
            b'J' => {
                let v = r.u32()? as i32;
                stack.push(Value::Int(v as i64))
            }
            b'K' => {
                let v = r.u8()?;
                stack.push(Value::Int(v as i64))
            }
            b'M' => {
                let v = r.u16()?;
                stack.push(Value::Int(v as i64))
            }
            0x8a => {
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                let mut v: i64 = 0;
                for (i, b) in bytes.iter().enumerate().take(8) {
                    v |= (*b as i64) << (8 * i);
                }
                if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                r.take(8)?; // BINFLOAT: no float is needed
                stack.push(Value::Opaque);
            }
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'T' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'B' => r.u32()? as usize,
                    b'C' => r.u8()? as usize,
                    _ => u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes")) as usize,
                };
                r.take(n)?;
                stack.push(Value::Opaque);
            }
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    bail!("pickle stack underflow");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'q' => {
                let k = r.u8()? as u32;
                memo.insert(k, stack.last().cloned().unwrap_or(Value::None));
            }
            b'r' => {
                let k = r.u32()?;
                memo.insert(k, stack.last().cloned().unwrap_or(Value::None));
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().unwrap_or(Value::None));
            }
            b'h' | b'j' => {
                let k = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                let v = memo.get(&k).cloned();
                stack.push(v.ok_or_else(|| anyhow!("pickle memo {k} missing"))?);
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => bail!("STACK_GLOBAL without names"),
                }
            }
            b'Q' => {
                // BINPERSID: ('storage', <storage class>, key, location, numel)
                let pid = pop(&mut stack)?;
                let storage = match pid {
                    Value::Tuple(items) if items.len() >= 3 => match (&items[1], &items[2]) {
                        (Value::Global(_, class), Value::Str(key)) => {
                            let kind = storage_kind(class)
                                .ok_or_else(|| anyhow!("unsupported storage type {class}"))?;
                            Value::Storage(key.clone(), kind)
                        }
                        _ => Value::Opaque,
                    },
                    _ => Value::Opaque,
                };
                stack.push(storage);
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(call(&callable, args)?);
            }
            b'b' => {
                pop(&mut stack)?; // BUILD: the state (e.g. a state dict's _metadata) is not needed
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                if let Some(Value::Dict(d)) = stack.last_mut() {
                    d.push((k, v));
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if let Some(Value::Dict(d)) = stack.last_mut() {
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                if let Some(Value::List(l)) = stack.last_mut() {
                    l.push(v);
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                if let Some(Value::List(l)) = stack.last_mut() {
                    l.extend(items);
                }
            }
            other => bail!(
                "unsupported pickle opcode 0x{other:02x} at byte {}",
                r.pos - 1
            ),
        }
    }
}

/// The callables of a state dict; every other call gives an opaque value.
fn call(callable: &Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = callable else {
        return Ok(Value::Opaque);
    };
    let args = match args {
        Value::Tuple(a) => a,
        _ => Vec::new(),
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Value::Dict(Vec::new()),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor")
            if args.len() >= 4 =>
        {
            let Value::Storage(storage, kind) = &args[0] else {
                bail!("tensor without storage");
            };
            let Value::Int(offset) = args[1] else {
                bail!("tensor without storage offset");
            };
            Value::Tensor(TensorRef {
                storage: storage.clone(),
                kind: *kind,
                offset,
                size: ints(&args[2])?,
                stride: ints(&args[3])?,
            })
        }
        ("torch._utils", "_rebuild_parameter") if !args.is_empty() => args[0].clone(),
        _ => Value::Opaque,
    })
}

/// Reads the named tensors of a `torch.save`d state dict (a nested `{"state_dict": ...}` or
/// `{"model": ...}` works too).
pub fn read_torch_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file =
        std::fs::File::open(path).map_err(|e| Error::usage(format!("{}: {e}", path.display())))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|_| {
        Error::usage(format!(
            "{} is not a PyTorch zip checkpoint (torch.save since PyTorch 1.6)",
            path.display()
        ))
    })?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| Error::usage(format!("{}: no data.pkl inside", path.display())))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)?.read_to_end(&mut pkl)?;
    let mut root =
        unpickle(&pkl).with_context(|| format!("{}: reading the pickle", path.display()))?;
    // Unwrap common checkpoint layouts.
    for key in ["state_dict", "model", "model_state_dict"] {
        if let Value::Dict(items) = &root {
            if let Some((_, v)) = items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            {
                root = v.clone();
            }
        }
    }
    let Value::Dict(items) = root else {
        bail!("{}: the pickle does not hold a state dict", path.display());
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for (k, v) in items {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            continue;
        };
        if !storages.contains_key(&t.storage) {
            let mut bytes = Vec::new();
            zip.by_name(&format!("{prefix}data/{}", t.storage))
                .with_context(|| format!("storage {} missing", t.storage))?
                .read_to_end(&mut bytes)?;
            storages.insert(t.storage.clone(), bytes);
        }
        let bytes = &storages[&t.storage];
        let elem = t.kind.elt_size_in_bytes();
        let flat =
            Tensor::f_from_data_size(bytes, &[(bytes.len() / elem) as i64], t.kind).torch()?;
        let tensor = flat
            .f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset)
            .torch()
            .with_context(|| format!("tensor {name}"))?
            .contiguous();
        out.push((name, tensor));
    }
    if out.is_empty() {
        bail!("{}: no tensors in the state dict", path.display());
    }
    Ok(out)
}

/// A parameter's name as torchvision spells it today. Its published DenseNet files predate
/// the rule that module names hold no dot, and name a dense layer's parts `norm.1`, `conv.1`,
/// `norm.2`, `conv.2` (torchvision renames them when it loads one: `_load_state_dict`).
pub fn current_name(name: &str) -> String {
    if !name.contains(".denselayer") {
        return name.to_string();
    }
    let mut out = name.to_string();
    for part in ["norm", "relu", "conv"] {
        for i in ["1", "2"] {
            out = out.replace(&format!(".{part}.{i}."), &format!(".{part}{i}."));
        }
    }
    out
}

/// What [`import_weights`] wrote.
#[derive(Debug)]
pub struct ImportReport {
    /// Tensors written.
    pub written: usize,
    /// Output classes of the checkpoint's classifier.
    pub classes: i64,
    /// File tensors left out (batch-norm step counters, names the architecture lacks).
    pub left_out: Vec<String>,
}

/// Converts the state dict at `pth` into `out` (safetensors) after checking that every variable
/// of `arch` is there with its shape.
pub fn import_weights(pth: &Path, arch: Arch, out: &Path) -> Result<ImportReport> {
    use tch::nn;
    let tensors: Vec<(String, Tensor)> = read_torch_state_dict(pth)?
        .into_iter()
        .map(|(n, t)| (current_name(&n), t))
        .collect();
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // Build the architecture with the checkpoint's own input channels and classes.
    let probe = nn::VarStore::new(tch::Device::Cpu);
    let head = crate::models::build(
        &probe.root(),
        &crate::models::ModelSpec::new(arch, 3, 2, 0.0),
    )?
    .head_prefix();
    let classes = by_name
        .get(format!("{head}weight").as_str())
        .map(|t| t.size()[0])
        .ok_or_else(|| {
            Error::usage(format!(
                "{}: no {head}weight: not a {arch} state dict",
                pth.display()
            ))
        })?;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    crate::models::build(
        &vs.root(),
        &crate::models::ModelSpec::new(arch, 3, classes, 0.0),
    )?;
    let vars = vs.variables();
    let mut problems = Vec::new();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut named = Vec::new();
    for name in names {
        match by_name.get(name.as_str()) {
            Some(t) if t.size() == vars[name].size() => {
                named.push((name.clone(), t.to_kind(Kind::Float)))
            }
            Some(t) => problems.push(format!(
                "{name} has shape {:?}, {arch} wants {:?}",
                t.size(),
                vars[name].size()
            )),
            None => problems.push(format!("{name} is missing")),
        }
    }
    if !problems.is_empty() {
        return Err(Error::usage(format!(
            "{} is not a {arch} state dict: {} problem(s), first: {}",
            pth.display(),
            problems.len(),
            problems[0]
        ))
        .into());
    }
    let mut left_out: Vec<String> = tensors
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !vars.contains_key(n))
        .collect();
    left_out.sort();
    crate::fsutil::write_with(out, |tmp| {
        Tensor::write_safetensors(&named, tmp)
            .torch()
            .with_context(|| format!("cannot write {}", tmp.display()))
    })?;
    Ok(ImportReport {
        written: named.len(),
        classes,
        left_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torchvision's published DenseNet names become today's; other names stay.
    #[test]
    fn legacy_densenet_names_become_todays() {
        assert_eq!(
            current_name("features.denseblock1.denselayer1.norm.1.running_mean"),
            "features.denseblock1.denselayer1.norm1.running_mean"
        );
        assert_eq!(
            current_name("features.denseblock4.denselayer16.conv.2.weight"),
            "features.denseblock4.denselayer16.conv2.weight"
        );
        assert_eq!(
            current_name("features.transition1.norm.weight"),
            "features.transition1.norm.weight"
        );
        assert_eq!(current_name("layer1.0.bn1.weight"), "layer1.0.bn1.weight");
    }
}
