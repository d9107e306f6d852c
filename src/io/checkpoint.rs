//! The dnat checkpoint format: magic `DNATCKPT`, version 2 (version 1, without the CIM
//! plan, is still read), in the frame of [`super::framed`] (length, CRC-32, zlib).
//! Payload: model (`arch` string, `num_classes` u32, CIM plan — version 2 only: u8 0 =
//! none, 1 followed by `first_digital` u8 and `last_digital` u8, or 2 followed by a
//! count and the layer-name patterns); `meta` key/value strings (the
//! training configuration, the data set read); progress (`epochs_done` u32,
//! `steps_done` u64); parameters (name, group u8, shape, f32 data); buffers (name,
//! shape, data); optimizer (kind string, steps u64, slots per parameter; an empty kind
//! and nothing after it: no state saved, as a finished run writes it); history
//! (one row per finished epoch). Strings are u32 length + UTF-8; shapes are u8 rank +
//! u32 dims. The bytes are a pure function of the run: no timestamps, no paths.

use super::{atomic, framed};
use crate::engine::{ParamGroup, ParamStore, Tensor};
use crate::nn::{Arch, CimPlan, ModelSpec, Network, build};
use crate::{Error, Result};
use byteorder::{LittleEndian as LE, ReadBytesExt, WriteBytesExt};
use std::io::{Cursor, Read};
use std::path::Path;

const MAGIC: &[u8; 8] = b"DNATCKPT";
const VERSION: u32 = 2;
/// A sanity bound on any one count or length in the payload.
const MAX_LEN: u64 = 1 << 32;

/// One finished epoch, for reports and plots. (No wall time: it would make the bytes
/// of two identical runs differ.)
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRecord {
    /// The epoch's number, counting from 1.
    pub epoch: u32,
    /// The learning rate of the epoch's last step.
    pub lr: f32,
    /// Mean training loss per image over the epoch (with the run's label smoothing).
    pub train_loss: f32,
    /// Training accuracy in percent over the epoch (predictions made while training).
    pub train_accuracy: f32,
    /// Test accuracy in percent at the end of the epoch (a CIM run's on the macro).
    pub test_accuracy: f32,
}

/// A training run's state after an epoch (or mid-epoch): enough to resume it bit for bit.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The network: architecture, class count, CIM plan.
    pub spec: ModelSpec,
    /// Key/value strings: the training configuration (`TrainConfig::to_meta`) and the
    /// data set read.
    pub meta: Vec<(String, String)>,
    /// Epochs finished.
    pub epochs_done: u32,
    /// Optimizer steps taken in all (more than `epochs_done` whole epochs if mid-epoch).
    pub steps_done: u64,
    /// The parameters and buffers.
    pub store: ParamStore,
    /// The optimizer's state (`None`: not saved; a finished training run saves none).
    pub optimizer: Option<OptimizerState>,
    /// One record per finished epoch, in order.
    pub history: Vec<EpochRecord>,
}

/// An optimizer's state as a checkpoint holds it.
#[derive(Clone, Debug)]
pub struct OptimizerState {
    /// The optimizer's name (`sgd`, `adam`).
    pub kind: String,
    /// Steps the optimizer has taken.
    pub steps: u64,
    /// Per parameter, in the store's order: the momentum buffer (SGD) or first and
    /// second moments (Adam).
    pub slots: Vec<Vec<Tensor>>,
}

impl Checkpoint {
    /// Loads the checkpoint in `path` and rebuilds its network ([`Checkpoint::network`]):
    /// every error names the file.
    pub fn load_network(path: &Path) -> Result<(Checkpoint, Box<dyn Network>, ParamStore)> {
        let ck = Self::load(path)?;
        let (net, store) = ck.network().map_err(|e| Error::format(path, e.to_string()))?;
        Ok((ck, net, store))
    }

    /// The network this checkpoint holds, rebuilt by its architecture's name (built-in
    /// or [registered](crate::nn::register)) with the checkpoint's parameters and
    /// buffers: ready to evaluate, recalibrate, export or train on.
    pub fn network(&self) -> Result<(Box<dyn Network>, ParamStore)> {
        let (net, mut store) = build(&self.spec, 0)?;
        copy_tensors(&self.store, &mut store).map_err(|msg| {
            Error::invalid(format!(
                "checkpoint of '{}' does not fit its network: {msg}",
                self.spec.arch.name()
            ))
        })?;
        Ok((net, store))
    }

    /// The macro a CIM checkpoint was trained for, as its training configuration
    /// records it (`cim = macro=… error_model=…`); the default macro for a record
    /// that names none.
    pub fn trained_macro(&self) -> Result<crate::cim::MacroSpec> {
        crate::cim::MacroSpec::parse(self.cim_setting("macro").unwrap_or("default"))
    }

    /// One setting of the CIM training configuration the checkpoint records
    /// (`cim = macro=… error_model=… act_quant=…`): `cim_setting("macro")`.
    pub fn cim_setting(&self, key: &str) -> Option<&str> {
        self.meta("cim")?.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// The value recorded under `key` in `meta`, if any.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The file's bytes, laid out as the module documentation says: the same state,
    /// the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut p = Vec::new();
        put_str(&mut p, self.spec.arch.name());
        p.write_u32::<LE>(self.spec.num_classes as u32).unwrap();
        match &self.spec.cim {
            None => p.write_u8(0).unwrap(),
            Some(CimPlan::Edges { first_digital, last_digital }) => {
                p.write_u8(1).unwrap();
                p.write_u8(*first_digital as u8).unwrap();
                p.write_u8(*last_digital as u8).unwrap();
            }
            Some(CimPlan::Named(patterns)) => {
                p.write_u8(2).unwrap();
                p.write_u32::<LE>(patterns.len() as u32).unwrap();
                for pat in patterns {
                    put_str(&mut p, pat);
                }
            }
        }
        p.write_u32::<LE>(self.meta.len() as u32).unwrap();
        for (k, v) in &self.meta {
            put_str(&mut p, k);
            put_str(&mut p, v);
        }
        p.write_u32::<LE>(self.epochs_done).unwrap();
        p.write_u64::<LE>(self.steps_done).unwrap();
        p.write_u32::<LE>(self.store.params().len() as u32).unwrap();
        for prm in self.store.params() {
            put_str(&mut p, &prm.name);
            p.write_u8(prm.group.code()).unwrap();
            put_tensor(&mut p, &prm.value);
        }
        p.write_u32::<LE>(self.store.buffers().len() as u32).unwrap();
        for b in self.store.buffers() {
            put_str(&mut p, &b.name);
            put_tensor(&mut p, &b.value);
        }
        match &self.optimizer {
            None => put_str(&mut p, ""),
            Some(o) => {
                put_str(&mut p, &o.kind);
                p.write_u64::<LE>(o.steps).unwrap();
                p.write_u32::<LE>(o.slots.len() as u32).unwrap();
                for slots in &o.slots {
                    p.write_u8(slots.len() as u8).unwrap();
                    for t in slots {
                        put_tensor(&mut p, t);
                    }
                }
            }
        }
        p.write_u32::<LE>(self.history.len() as u32).unwrap();
        for h in &self.history {
            p.write_u32::<LE>(h.epoch).unwrap();
            for v in [h.lr, h.train_loss, h.train_accuracy, h.test_accuracy] {
                p.write_f32::<LE>(v).unwrap();
            }
        }
        framed::encode(MAGIC, VERSION, &p)
    }

    /// Writes atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic::write(path, &self.to_bytes())
    }

    /// Reads a checkpoint file (errors name the path).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|msg| Error::format(path, msg))
    }

    /// Parses a checkpoint file's bytes; the error says what is wrong with them.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (version, payload) = framed::decode(bytes, MAGIC, "checkpoint", VERSION)?;
        parse_payload(&payload, version).map_err(|e| match e {
            Parse::Corrupt(e) => format!("corrupt checkpoint: {e}"),
            Parse::UnknownArch(name, why) => {
                format!("holds a {name:?} network, which this program does not know ({why}); a program that registers it (dnat::nn::register) reads it")
            }
        })
    }
}

pub(crate) fn put_str(p: &mut Vec<u8>, s: &str) {
    p.write_u32::<LE>(s.len() as u32).unwrap();
    p.extend_from_slice(s.as_bytes());
}

fn put_tensor(p: &mut Vec<u8>, t: &Tensor) {
    p.write_u8(t.shape().len() as u8).unwrap();
    for &d in t.shape() {
        p.write_u32::<LE>(d as u32).unwrap();
    }
    for &v in t.data() {
        p.write_f32::<LE>(v).unwrap();
    }
}

pub(crate) fn count(c: &mut Cursor<&[u8]>) -> std::result::Result<usize, String> {
    let n = c.read_u32::<LE>().map_err(|_| "unexpected end of payload")? as u64;
    let left = c.get_ref().len() as u64 - c.position();
    if n > MAX_LEN || n > left {
        return Err(format!("length {n} exceeds the {left} bytes left"));
    }
    Ok(n as usize)
}

pub(crate) fn get_str(c: &mut Cursor<&[u8]>) -> std::result::Result<String, String> {
    let n = count(c)?;
    let mut b = vec![0u8; n];
    c.read_exact(&mut b).map_err(|_| "unexpected end of payload")?;
    String::from_utf8(b).map_err(|_| "a name is not UTF-8".into())
}

fn get_tensor(c: &mut Cursor<&[u8]>) -> std::result::Result<Tensor, String> {
    let rank = c.read_u8().map_err(|_| "unexpected end of payload")? as usize;
    if rank > 8 {
        return Err(format!("tensor rank {rank}"));
    }
    let mut shape = Vec::with_capacity(rank);
    for _ in 0..rank {
        shape.push(c.read_u32::<LE>().map_err(|_| "unexpected end of payload")? as usize);
    }
    let n: usize = shape.iter().product();
    let left = (c.get_ref().len() as u64 - c.position()) as usize;
    if n.checked_mul(4).is_none_or(|b| b > left) {
        return Err(format!("tensor of shape {shape:?} runs past the end of the payload"));
    }
    let mut data = vec![0.0f32; n];
    c.read_f32_into::<LE>(&mut data).map_err(|_| "unexpected end of payload")?;
    Tensor::from_vec(&shape, data).map_err(|e| e.to_string())
}

/// Why a payload does not read: damage, or an architecture this program has not
/// registered (a sound file, for another program).
enum Parse {
    Corrupt(String),
    UnknownArch(String, String),
}

impl From<String> for Parse {
    fn from(s: String) -> Self {
        Parse::Corrupt(s)
    }
}

impl From<&str> for Parse {
    fn from(s: &str) -> Self {
        Parse::Corrupt(s.into())
    }
}

fn parse_payload(p: &[u8], version: u32) -> std::result::Result<Checkpoint, Parse> {
    let c = &mut Cursor::new(p);
    let eof = |_| "unexpected end of payload".to_string();
    let name = get_str(c)?;
    let arch = Arch::parse(&name).map_err(|e| match crate::nn::models::valid_name(&name) {
        true => Parse::UnknownArch(name.clone(), e.to_string()),
        false => Parse::Corrupt(format!("model name {name:?}")),
    })?;
    let num_classes = c.read_u32::<LE>().map_err(eof)? as usize;
    let cim = if version >= 2 {
        match c.read_u8().map_err(eof)? {
            0 => None,
            1 => Some(CimPlan::Edges {
                first_digital: c.read_u8().map_err(eof)? != 0,
                last_digital: c.read_u8().map_err(eof)? != 0,
            }),
            2 => {
                let plan = CimPlan::Named(
                    (0..count(c)?)
                        .map(|_| get_str(c))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                );
                plan.validate().map_err(|e| e.to_string())?;
                Some(plan)
            }
            other => return Err(format!("unknown CIM plan tag {other}").into()),
        }
    } else {
        None
    };
    let spec = ModelSpec { arch, num_classes, cim };
    spec.validate()?;
    let mut meta = Vec::new();
    for _ in 0..count(c)? {
        meta.push((get_str(c)?, get_str(c)?));
    }
    let epochs_done = c.read_u32::<LE>().map_err(eof)?;
    let steps_done = c.read_u64::<LE>().map_err(eof)?;
    let mut store = ParamStore::new();
    for _ in 0..count(c)? {
        let name = get_str(c)?;
        let group = ParamGroup::from_code(c.read_u8().map_err(eof)?)
            .ok_or(format!("parameter {name}: unknown group"))?;
        store.add_param(name, get_tensor(c)?, group);
    }
    for _ in 0..count(c)? {
        let name = get_str(c)?;
        store.add_buffer(name, get_tensor(c)?);
    }
    let kind = get_str(c)?;
    let optimizer = if kind.is_empty() {
        None
    } else {
        let steps = c.read_u64::<LE>().map_err(eof)?;
        let mut slots = Vec::new();
        for _ in 0..count(c)? {
            let k = c.read_u8().map_err(eof)?;
            slots.push((0..k).map(|_| get_tensor(c)).collect::<std::result::Result<Vec<_>, _>>()?);
        }
        Some(OptimizerState { kind, steps, slots })
    };
    let mut history = Vec::new();
    for _ in 0..count(c)? {
        let epoch = c.read_u32::<LE>().map_err(eof)?;
        let mut v = [0f32; 4];
        c.read_f32_into::<LE>(&mut v).map_err(eof)?;
        history.push(EpochRecord {
            epoch,
            lr: v[0],
            train_loss: v[1],
            train_accuracy: v[2],
            test_accuracy: v[3],
        });
    }
    if c.position() as usize != p.len() {
        return Err("trailing bytes after the last section".into());
    }
    Ok(Checkpoint { spec, meta, epochs_done, steps_done, store, optimizer, history })
}

/// Copies a checkpoint's parameters and buffers into a freshly built model's store,
/// matching by name and shape; every tensor of the model must be present (a mismatch
/// is an error naming `path`).
pub fn restore_into(src: &ParamStore, dst: &mut ParamStore, path: &Path) -> Result<()> {
    copy_tensors(src, dst).map_err(|msg| Error::format(path, msg))
}

/// Copies `src`'s parameters and buffers into `dst`, matching by name and shape; every
/// tensor of `dst` must be present.
fn copy_tensors(src: &ParamStore, dst: &mut ParamStore) -> std::result::Result<(), String> {
    if src.params().len() != dst.params().len() || src.buffers().len() != dst.buffers().len() {
        return Err(format!(
            "holds {} parameters and {} buffers, the model has {} and {}",
            src.params().len(),
            src.buffers().len(),
            dst.params().len(),
            dst.buffers().len()
        ));
    }
    for d in dst.params_mut() {
        let s = src
            .params()
            .iter()
            .find(|s| s.name == d.name)
            .ok_or_else(|| format!("no parameter '{}'", d.name))?;
        if s.value.shape() != d.value.shape() {
            return Err(format!(
                "parameter '{}' has shape {:?}, the model needs {:?}",
                d.name,
                s.value.shape(),
                d.value.shape()
            ));
        }
        d.value = s.value.clone();
    }
    for d in dst.buffers_mut() {
        let s = src
            .buffers()
            .iter()
            .find(|s| s.name == d.name)
            .ok_or_else(|| format!("no buffer '{}'", d.name))?;
        if s.value.shape() != d.value.shape() {
            return Err(format!(
                "buffer '{}' has shape {:?}, the model needs {:?}",
                d.name,
                s.value.shape(),
                d.value.shape()
            ));
        }
        d.value = s.value.clone();
    }
    Ok(())
}

/// Like [`restore_into`], for starting a CIM model from another checkpoint (usually
/// FP32): every weight and buffer of `dst` must be in `src`, except quantizer bounds
/// (`*.act_lo`, `*.act_hi`), which are left as they are; returns whether all bounds
/// were found. Extra tensors in `src` are ignored.
pub fn restore_weights(src: &ParamStore, dst: &mut ParamStore, path: &Path) -> Result<bool> {
    let mut all_bounds = true;
    for d in dst.params_mut() {
        match src.params().iter().find(|s| s.name == d.name) {
            Some(s) if s.value.shape() == d.value.shape() => d.value = s.value.clone(),
            Some(s) => {
                return Err(Error::format(
                    path,
                    format!(
                        "parameter '{}' has shape {:?}, the model needs {:?}",
                        d.name,
                        s.value.shape(),
                        d.value.shape()
                    ),
                ));
            }
            None if d.name.ends_with(".act_lo") || d.name.ends_with(".act_hi") => {
                all_bounds = false
            }
            None => return Err(Error::format(path, format!("no parameter '{}'", d.name))),
        }
    }
    for d in dst.buffers_mut() {
        let s = src
            .buffers()
            .iter()
            .find(|s| s.name == d.name)
            .ok_or_else(|| Error::format(path, format!("no buffer '{}'", d.name)))?;
        if s.value.shape() != d.value.shape() {
            return Err(Error::format(
                path,
                format!(
                    "buffer '{}' has shape {:?}, the model needs {:?}",
                    d.name,
                    s.value.shape(),
                    d.value.shape()
                ),
            ));
        }
        d.value = s.value.clone();
    }
    Ok(all_bounds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::build;

    fn sample() -> Checkpoint {
        let spec =
            ModelSpec { arch: Arch::ResNet20, num_classes: 10, cim: Some(CimPlan::default()) };
        let (_, store) = build(&spec, 3).unwrap();
        let slots =
            store.params().iter().map(|p| vec![Tensor::full(p.value.shape(), 0.5)]).collect();
        Checkpoint {
            spec,
            meta: vec![("seed".into(), "3".into())],
            epochs_done: 2,
            steps_done: 10,
            store,
            optimizer: Some(OptimizerState { kind: "sgd".into(), steps: 10, slots }),
            history: vec![EpochRecord {
                epoch: 1,
                lr: 0.1,
                train_loss: 2.0,
                train_accuracy: 10.0,
                test_accuracy: 11.0,
            }],
        }
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let c = sample();
        let b = c.to_bytes();
        assert_eq!(b, sample().to_bytes());
        let back = Checkpoint::from_bytes(&b).unwrap();
        assert_eq!(back.to_bytes(), b);
        assert_eq!(back.meta("seed"), Some("3"));
        assert_eq!(back.history, c.history);
    }

    #[test]
    fn damaged_files_are_clear_errors() {
        let b = sample().to_bytes();
        assert!(Checkpoint::from_bytes(&b[..b.len() - 10]).unwrap_err().contains("truncated"));
        assert!(
            Checkpoint::from_bytes(b"hello world, this is not it").unwrap_err().contains("magic")
        );
        let mut flipped = b.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let e = Checkpoint::from_bytes(&flipped).unwrap_err();
        assert!(e.contains("corrupt"), "{e}");
        let mut v9 = b.clone();
        v9[8] = 9;
        assert!(Checkpoint::from_bytes(&v9).unwrap_err().contains("version 9"));
        // Random bytes behind a valid header never panic.
        for seed in 0..50u64 {
            let mut r = crate::rng::KeyedRng::new(&[seed]);
            let mut junk = b[..24].to_vec();
            junk.extend((0..(b.len() - 24)).map(|_| r.next_u64() as u8));
            assert!(Checkpoint::from_bytes(&junk).is_err());
        }
    }

    #[test]
    fn restore_checks_names_and_shapes() {
        let c = sample();
        let (_, mut other) = build(
            &ModelSpec { arch: Arch::ResNet20, num_classes: 100, cim: Some(CimPlan::default()) },
            0,
        )
        .unwrap();
        let e = restore_into(&c.store, &mut other, Path::new("x.ckpt")).unwrap_err().to_string();
        assert!(e.contains("x.ckpt") && e.contains("linear.weight"), "{e}");
    }
}
