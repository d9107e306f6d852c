//! Weight interchange with PyTorch through `safetensors`.
//!
//! Tensors are stored under the names PyTorch's `state_dict` uses for the same
//! architecture (see [`crate::nn::models`]): `conv1.weight` (Cout, Cin, kh, kw),
//! `bn1.weight` / `bn1.bias` / `bn1.running_mean` / `bn1.running_var` (C),
//! `linear.weight` (out, in), `linear.bias` (out). dnat's layouts are PyTorch's, so
//! no tensor is transposed. Each batchnorm also gets the `num_batches_tracked` (I64)
//! entry PyTorch expects for a strict `load_state_dict`; dnat does not use it (its
//! momentum is fixed) and ignores it on import. The file's metadata carries
//! `dnat_model` and `num_classes`, so an import needs no flags for files dnat wrote.

use crate::engine::{ParamStore, Tensor};
use crate::nn::{Arch, CimPlan, ModelSpec, build};
use crate::{Error, Result};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

const BN_COUNTER: &str = ".num_batches_tracked";

fn f32_bytes(t: &Tensor) -> Vec<u8> {
    t.data().iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serialises a model's parameters and buffers.
pub fn export(spec: &ModelSpec, store: &ParamStore) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for p in store.params() {
        owned.push((p.name.clone(), Dtype::F32, p.value.shape().to_vec(), f32_bytes(&p.value)));
    }
    for b in store.buffers() {
        owned.push((b.name.clone(), Dtype::F32, b.value.shape().to_vec(), f32_bytes(&b.value)));
        if let Some(bn) = b.name.strip_suffix(".running_mean") {
            owned.push((
                format!("{bn}{BN_COUNTER}"),
                Dtype::I64,
                vec![],
                0i64.to_le_bytes().to_vec(),
            ));
        }
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                TensorView::new(*d, s.clone(), b)
                    .map_err(|e| Error::invalid(format!("{n}: {e}")))?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("dnat_model".to_string(), spec.arch.name().to_string()),
        ("num_classes".to_string(), spec.num_classes.to_string()),
        (
            "dnat_cim_plan".to_string(),
            spec.cim.as_ref().map_or("none".to_string(), CimPlan::describe),
        ),
    ]);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::invalid(format!("safetensors export: {e}")))
}

/// The model a file was written for, from its metadata (files written by dnat).
pub fn spec_from_metadata(bytes: &[u8], path: &Path) -> Result<Option<ModelSpec>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let Some(m) = meta.metadata() else {
        return Ok(None);
    };
    match (m.get("dnat_model"), m.get("num_classes")) {
        (Some(a), Some(n)) => {
            let arch = Arch::parse(a).map_err(|e| Error::format(path, e.to_string()))?;
            let num_classes = n
                .parse()
                .map_err(|_| Error::format(path, format!("bad num_classes '{n}' in metadata")))?;
            let cim = match m.get("dnat_cim_plan").map(String::as_str) {
                None | Some("none") => None,
                Some(p) => Some(
                    CimPlan::parse(p)
                        .map_err(|e| Error::format(path, format!("metadata dnat_cim_plan: {e}")))?,
                ),
            };
            let spec = ModelSpec { arch, num_classes, cim };
            spec.validate()
                .map_err(|e| Error::format(path, format!("metadata num_classes: {e}")))?;
            Ok(Some(spec))
        }
        _ => Ok(None),
    }
}

fn to_f32(view: &TensorView, name: &str, path: &Path) -> Result<Vec<f32>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => {
            d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        Dtype::F64 => {
            d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
        }
        other => {
            return Err(Error::format(
                path,
                format!("tensor '{name}' has dtype {other:?}; dnat reads F32 or F64"),
            ));
        }
    })
}

/// Builds the model `spec` and fills it from a safetensors file: every parameter and
/// buffer must be present with the right shape; unknown names are an error.
pub fn import(bytes: &[u8], spec: &ModelSpec, path: &Path) -> Result<ParamStore> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))?;
    let (_, mut store) = build(spec, 0)?;
    let expected: Vec<String> = store
        .params()
        .iter()
        .map(|p| p.name.clone())
        .chain(store.buffers().iter().map(|b| b.name.clone()))
        .collect();
    let mut unknown: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !n.ends_with(BN_COUNTER) && !expected.iter().any(|e| e == *n))
        .map(|n| n.to_string())
        .collect();
    if !unknown.is_empty() {
        // Sorted (the file's own order is a hash map's) and cut short: the same message
        // every run, readable when a whole other network was given.
        unknown.sort();
        let total = unknown.len();
        let more = if total > 8 { format!(" and {} more", total - 8) } else { String::new() };
        unknown.truncate(8);
        return Err(Error::format(
            path,
            format!("{total} tensors not in {}: {}{more}", spec.arch.name(), unknown.join(", ")),
        ));
    }
    let load = |name: &str, into: &mut Tensor| -> Result<()> {
        let v = st.tensor(name).map_err(|_| {
            Error::format(path, format!("missing tensor '{name}' ({} needs it)", spec.arch.name()))
        })?;
        if v.shape() != into.shape() {
            return Err(Error::format(
                path,
                format!(
                    "tensor '{name}' has shape {:?}, {} needs {:?}",
                    v.shape(),
                    spec.arch.name(),
                    into.shape()
                ),
            ));
        }
        let data = to_f32(&v, name, path)?;
        if data.iter().any(|x| !x.is_finite()) {
            return Err(Error::format(path, format!("tensor '{name}' holds non-finite values")));
        }
        *into = Tensor::from_vec(v.shape(), data)?;
        Ok(())
    };
    for p in store.params_mut() {
        load(&p.name, &mut p.value)?;
    }
    for b in store.buffers_mut() {
        load(&b.name, &mut b.value)?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let spec = ModelSpec::fp32(Arch::ResNet20, 10);
        let (_, store) = build(&spec, 5).unwrap();
        let bytes = export(&spec, &store).unwrap();
        let p = Path::new("w.safetensors");
        assert_eq!(spec_from_metadata(&bytes, p).unwrap(), Some(spec.clone()));
        let back = import(&bytes, &spec, p).unwrap();
        for (a, b) in store.params().iter().zip(back.params()) {
            assert_eq!(a.value, b.value);
        }
        let e = import(&bytes, &ModelSpec::fp32(Arch::ResNet20, 100), p).unwrap_err().to_string();
        assert!(e.contains("linear.weight") && e.contains("shape"), "{e}");
        let e = import(&bytes, &ModelSpec::fp32(Arch::Vgg8, 10), p).unwrap_err().to_string();
        assert!(e.contains("not in vgg8") && e.contains("more"), "{e}");
        // The same message every time (names sorted, not in hash-map order).
        for _ in 0..3 {
            assert_eq!(
                import(&bytes, &ModelSpec::fp32(Arch::Vgg8, 10), p).unwrap_err().to_string(),
                e
            );
        }
        let e = import(&bytes[..bytes.len() / 2], &spec, p).unwrap_err().to_string();
        assert!(e.contains("w.safetensors"), "{e}");
        assert!(import(b"garbage", &spec, p).is_err());
    }
}
