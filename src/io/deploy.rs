//! The deployable integer model (`dnat export`): everything needed to run a trained
//! network on a real macro — 4-bit weight codes laid out per macro tile, the E-PACT
//! bounds, the scales, and batchnorm folded into per-channel constants.
//!
//! Frame: [`super::framed`] with magic `DNATDEPL`, version 1. Payload, little-endian;
//! strings are u32 length + UTF-8:
//!
//! ```text
//! arch str, num_classes u32
//! input normalisation: mean[3] f32, std[3] f32          x = (pixel/255 − mean[c]) / std[c]
//! macro: name str, rows u32, input_bits u32, weight_bits u32, input_bits_per_cycle u32,
//!        adc_kmin i32, adc_kmax i32, adc_step f32
//! layers u32, then per conv / linear layer in forward order:
//!   name str                        PyTorch state_dict prefix, e.g. "layer1.0.conv1"
//!   kind u8                         0 conv, 1 linear (linear: kernel 1, stride 1, padding 0)
//!   cout u32, cin u32, kernel u32, stride u32, padding u32
//!   after u8                        0 nothing, 1 ReLU, 2 residual addition then ReLU
//!   on_macro u8
//!   on_macro = 1:
//!     lo f32, hi f32                E-PACT: q = round((clip(x, lo, hi) − lo) / s_x), s_x = (hi − lo)/(2^input_bits − 1)
//!     tiles u32                     the reduction axis K = cin·kernel² in (cin, ky, kx) order, cut
//!                                   into tiles of `rows`
//!     codes i8[cout][tiles][rows]   signed weight codes; rows past K hold 0 (not activated)
//!     weight_scale f32[cout]        s_w
//!     scale f32[cout], shift f32[cout]
//!         y = scale·(s_x·Σ_t R_t + lo·Σ_{valid k} w_k) + shift
//!         with R_t the readout of tile t in partial-sum units (code · adc_step) and the sum
//!         over valid (non-padding) window positions; scale = g·s_w, shift = g·bias + h,
//!         where batchnorm is g·z + h (g = γ/√(var + ε), h = β − g·mean), or g = 1, h = 0
//!   on_macro = 0 (digital):
//!     weight f32[cout][K], bias f32[cout]   batchnorm folded in
//! ```

use super::{atomic, checkpoint::{count, get_str, put_str}, framed};
use crate::cim::{quant::weight_codes, MacroSpec};
use crate::cim::macro_spec::Adc;
use crate::data::Normalize;
use crate::engine::ParamStore;
use crate::nn::{After, BatchNorm2d, LayerOp, Network};
use crate::{Error, Result};
use byteorder::{LittleEndian as LE, ReadBytesExt, WriteBytesExt};
use std::io::Cursor;
use std::path::Path;

const MAGIC: &[u8; 8] = b"DNATDEPL";
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq)]
pub struct DeployModel {
    pub arch: String,
    pub num_classes: u32,
    pub norm: Normalize,
    pub macro_spec: MacroSpec,
    pub layers: Vec<DeployLayer>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeployLayer {
    pub name: String,
    pub linear: bool,
    pub cout: u32,
    pub cin: u32,
    pub kernel: u32,
    pub stride: u32,
    pub padding: u32,
    pub after: After,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Macro { lo: f32, hi: f32, tiles: u32, codes: Vec<i8>, weight_scale: Vec<f32>, scale: Vec<f32>, shift: Vec<f32> },
    Digital { weight: Vec<f32>, bias: Vec<f32> },
}

impl DeployLayer {
    /// Length of the reduction axis.
    pub fn k(&self) -> usize {
        (self.cin * self.kernel * self.kernel) as usize
    }
}

/// Batchnorm as `g·z + h` per channel (identity without one).
fn bn_affine(bn: Option<&BatchNorm2d>, store: &ParamStore, c: usize) -> (Vec<f32>, Vec<f32>) {
    let Some(bn) = bn else { return (vec![1.0; c], vec![0.0; c]) };
    let (gamma, beta) = (store.param(bn.weight).value.data(), store.param(bn.bias).value.data());
    let (mean, var) = (store.buffer(bn.running_mean).value.data(), store.buffer(bn.running_var).value.data());
    let g: Vec<f32> = (0..c).map(|i| gamma[i] / (var[i] + bn.eps).sqrt()).collect();
    let h = (0..c).map(|i| beta[i] - g[i] * mean[i]).collect();
    (g, h)
}

impl DeployModel {
    pub fn from_network(net: &dyn Network, store: &ParamStore, spec: &MacroSpec, norm: Normalize) -> Result<Self> {
        spec.validate()?;
        let mut layers = Vec::new();
        for cl in net.compute_layers() {
            let (weight, bias, cim, conv_cfg) = match cl.op {
                LayerOp::Conv(c) => (c.weight, c.bias, c.cim.as_ref(), Some(c.cfg)),
                LayerOp::Linear(l) => (l.weight, l.bias, l.cim.as_ref(), None),
            };
            let w = &store.param(weight).value;
            let name = store.param(weight).name.trim_end_matches(".weight").to_string();
            let shape = w.shape();
            let (cout, cin) = (shape[0], shape[1]);
            let kernel = if shape.len() == 4 { shape[2] } else { 1 };
            let k = w.len() / cout;
            let (g, h) = bn_affine(cl.bn, store, cout);
            let b: Vec<f32> = bias.map_or(vec![0.0; cout], |b| store.param(b).value.data().to_vec());
            let body = match cim {
                Some(q) => {
                    let (codes_f, s_w) = weight_codes(w, spec);
                    let tiles = spec.tiles(k);
                    let mut codes = vec![0i8; cout * tiles * spec.rows];
                    for co in 0..cout {
                        for kk in 0..k {
                            codes[(co * tiles + kk / spec.rows) * spec.rows + kk % spec.rows] = codes_f[co * k + kk] as i8;
                        }
                    }
                    Body::Macro {
                        lo: store.param(q.lo).value.data()[0],
                        hi: store.param(q.hi).value.data()[0],
                        tiles: tiles as u32,
                        codes,
                        scale: (0..cout).map(|c| g[c] * s_w[c]).collect(),
                        shift: (0..cout).map(|c| g[c] * b[c] + h[c]).collect(),
                        weight_scale: s_w,
                    }
                }
                None => Body::Digital {
                    weight: w.data().chunks(k).enumerate().flat_map(|(c, row)| { let gc = g[c]; row.iter().map(move |v| v * gc) }).collect(),
                    bias: (0..cout).map(|c| g[c] * b[c] + h[c]).collect(),
                },
            };
            let cfg = conv_cfg.unwrap_or_default();
            layers.push(DeployLayer {
                name,
                linear: conv_cfg.is_none(),
                cout: cout as u32,
                cin: cin as u32,
                kernel: kernel as u32,
                stride: cfg.stride as u32,
                padding: cfg.padding as u32,
                after: cl.after,
                body,
            });
        }
        let s = net.spec();
        Ok(DeployModel { arch: s.arch.name().into(), num_classes: s.num_classes as u32, norm, macro_spec: spec.clone(), layers })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut p = Vec::new();
        put_str(&mut p, &self.arch);
        p.write_u32::<LE>(self.num_classes).unwrap();
        for v in self.norm.mean.iter().chain(&self.norm.std) {
            p.write_f32::<LE>(*v).unwrap();
        }
        let m = &self.macro_spec;
        put_str(&mut p, &m.name);
        for v in [m.rows as u32, m.input_bits, m.weight_bits, m.input_bits_per_cycle] {
            p.write_u32::<LE>(v).unwrap();
        }
        p.write_i32::<LE>(m.adc.kmin).unwrap();
        p.write_i32::<LE>(m.adc.kmax).unwrap();
        p.write_f32::<LE>(m.adc.step).unwrap();
        p.write_u32::<LE>(self.layers.len() as u32).unwrap();
        let f32s = |p: &mut Vec<u8>, v: &[f32]| v.iter().for_each(|x| p.write_f32::<LE>(*x).unwrap());
        for l in &self.layers {
            put_str(&mut p, &l.name);
            p.write_u8(l.linear as u8).unwrap();
            for v in [l.cout, l.cin, l.kernel, l.stride, l.padding] {
                p.write_u32::<LE>(v).unwrap();
            }
            p.write_u8(l.after.code()).unwrap();
            match &l.body {
                Body::Macro { lo, hi, tiles, codes, weight_scale, scale, shift } => {
                    p.write_u8(1).unwrap();
                    f32s(&mut p, &[*lo, *hi]);
                    p.write_u32::<LE>(*tiles).unwrap();
                    p.extend(codes.iter().map(|&c| c as u8));
                    f32s(&mut p, weight_scale);
                    f32s(&mut p, scale);
                    f32s(&mut p, shift);
                }
                Body::Digital { weight, bias } => {
                    p.write_u8(0).unwrap();
                    f32s(&mut p, weight);
                    f32s(&mut p, bias);
                }
            }
        }
        framed::encode(MAGIC, VERSION, &p)
    }

    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, payload) = framed::decode(bytes, MAGIC, "deployable model", VERSION)?;
        parse(&payload).map_err(|e| format!("corrupt deployable model: {e}"))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        atomic::write(path, &self.to_bytes())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|m| Error::format(path, m))
    }
}

fn parse(p: &[u8]) -> std::result::Result<DeployModel, String> {
    const END: &str = "unexpected end of payload";
    let mut c = Cursor::new(p);
    let arch = get_str(&mut c)?;
    let num_classes = c.read_u32::<LE>().map_err(|_| END)?;
    let mut nv = [0f32; 6];
    c.read_f32_into::<LE>(&mut nv).map_err(|_| END)?;
    let norm = Normalize { mean: [nv[0], nv[1], nv[2]], std: [nv[3], nv[4], nv[5]] };
    let name = get_str(&mut c)?;
    let mut u = [0u32; 4];
    c.read_u32_into::<LE>(&mut u).map_err(|_| END)?;
    let adc = Adc { kmin: c.read_i32::<LE>().map_err(|_| END)?, kmax: c.read_i32::<LE>().map_err(|_| END)?, step: c.read_f32::<LE>().map_err(|_| END)? };
    // The array organisation (which ADC reads which tile) is not part of a deployable
    // model: the integer arithmetic does not depend on it. The default's stands in.
    let d = MacroSpec::default();
    let macro_spec = MacroSpec { name, rows: u[0] as usize, input_bits: u[1], weight_bits: u[2], input_bits_per_cycle: u[3], adc, arrays: d.arrays, columns: d.columns };
    macro_spec.validate().map_err(|e| e.to_string())?;
    let n = count(&mut c)?;
    let mut layers = Vec::with_capacity(n);
    // Reads `n` f32 after checking they are there (a corrupt count must not allocate wildly).
    let f32s = |c: &mut Cursor<&[u8]>, n: usize| -> std::result::Result<Vec<f32>, String> {
        if n.checked_mul(4).is_none_or(|b| b as u64 > c.get_ref().len() as u64 - c.position()) {
            return Err(format!("{n} values run past the end of the payload"));
        }
        let mut v = vec![0f32; n];
        c.read_f32_into::<LE>(&mut v).map_err(|_| END)?;
        Ok(v)
    };
    for _ in 0..n {
        let name = get_str(&mut c)?;
        let linear = c.read_u8().map_err(|_| END)? == 1;
        let mut d = [0u32; 5];
        c.read_u32_into::<LE>(&mut d).map_err(|_| END)?;
        let [cout, cin, kernel, stride, padding] = d;
        let after_code = c.read_u8().map_err(|_| END)?;
        let after = After::from_code(after_code).ok_or_else(|| format!("layer {name}: unknown 'after' code {after_code}"))?;
        let k = (cin as u64) * (kernel as u64) * (kernel as u64);
        let (cout_u, k_u) = (cout as usize, k as usize);
        if cout == 0 || k == 0 || k > 1 << 28 || cout > 1 << 20 {
            return Err(format!("layer {name}: implausible shape {cout}×{k}"));
        }
        let body = match c.read_u8().map_err(|_| END)? {
            1 => {
                let b = f32s(&mut c, 2)?;
                let tiles = c.read_u32::<LE>().map_err(|_| END)?;
                if tiles as usize != macro_spec.tiles(k_u) {
                    return Err(format!("layer {name}: {tiles} tiles, but K = {k} needs {}", macro_spec.tiles(k_u)));
                }
                let n_codes = cout_u * tiles as usize * macro_spec.rows;
                if n_codes as u64 > c.get_ref().len() as u64 - c.position() {
                    return Err(format!("layer {name}: weight codes run past the end of the payload"));
                }
                let start = c.position() as usize;
                let codes: Vec<i8> = c.get_ref()[start..start + n_codes].iter().map(|&b| b as i8).collect();
                c.set_position((start + n_codes) as u64);
                let (wmin, wmax) = (macro_spec.weight_min() as i8, macro_spec.weight_max() as i8);
                if let Some(bad) = codes.iter().find(|&&w| w < wmin || w > wmax) {
                    return Err(format!("layer {name}: weight code {bad} outside {wmin}..={wmax}"));
                }
                Body::Macro { lo: b[0], hi: b[1], tiles, codes, weight_scale: f32s(&mut c, cout_u)?, scale: f32s(&mut c, cout_u)?, shift: f32s(&mut c, cout_u)? }
            }
            0 => Body::Digital { weight: f32s(&mut c, cout_u * k_u)?, bias: f32s(&mut c, cout_u)? },
            other => return Err(format!("layer {name}: on_macro flag {other}")),
        };
        layers.push(DeployLayer { name, linear, cout, cin, kernel, stride, padding, after, body });
    }
    if c.position() as usize != p.len() {
        return Err(format!("{} bytes after the last layer", p.len() - c.position() as usize));
    }
    Ok(DeployModel { arch, num_classes, norm, macro_spec, layers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cim::{CimRuntime, Estimator, ReadoutMode};
    use crate::data::DatasetKind;
    use crate::engine::{gradcheck::random, Mode, Tape};
    use crate::nn::{build, Arch, CimPlan, Fwd, ModelSpec};
    use std::sync::Arc;

    /// A CIM ResNet20 whose batchnorms and bounds are not at their initial values.
    fn trained_like() -> (Box<dyn Network>, ParamStore) {
        let spec = ModelSpec { arch: Arch::ResNet20, num_classes: 10, cim: Some(CimPlan::default()) };
        let (net, mut store) = build(spec, 3);
        for (i, p) in store.params_mut().iter_mut().enumerate() {
            let v = p.value.data_mut();
            match p.name.rsplit('.').next().unwrap() {
                "act_lo" => v[0] = -0.3,
                "act_hi" => v[0] = 2.5,
                "weight" | "bias" if v.len() <= 64 => v.iter_mut().enumerate().for_each(|(j, x)| *x += 0.01 * ((i * 7 + j) % 13) as f32),
                _ => {}
            }
        }
        for (i, b) in store.buffers_mut().iter_mut().enumerate() {
            b.value.data_mut().iter_mut().enumerate().for_each(|(j, x)| *x += 0.05 * ((i + j) % 5) as f32);
        }
        (net, store)
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let (net, store) = trained_like();
        let spec = MacroSpec::default();
        let m = DeployModel::from_network(net.as_ref(), &store, &spec, Normalize::for_dataset(DatasetKind::Cifar10)).unwrap();
        assert_eq!(m.layers.len(), 20);
        assert_eq!(m.layers.iter().filter(|l| matches!(l.body, Body::Macro { .. })).count(), 18);
        assert_eq!((m.layers[0].name.as_str(), m.layers[19].name.as_str()), ("conv1", "linear"));
        assert_eq!(m.layers[2].after, After::AddRelu);
        let bytes = m.to_bytes();
        assert_eq!(DeployModel::from_bytes(&bytes).unwrap(), m);
        // Codes are the layer's weight codes, laid out per tile (K = 144: 3 tiles of 64, the last 16 used).
        let l = &m.layers[1];
        let Body::Macro { tiles, codes, .. } = &l.body else { panic!("layer1.0.conv1 is on the macro") };
        let w = &store.params().iter().find(|p| p.name == "layer1.0.conv1.weight").unwrap().value;
        let (want, _) = weight_codes(w, &spec);
        assert_eq!(*tiles, 3);
        for co in [0, 15] {
            for kk in [0, 63, 64, 143] {
                assert_eq!(codes[(co * 3 + kk / 64) * 64 + kk % 64] as f32, want[co * 144 + kk]);
            }
            assert!(codes[(co * 3 + 2) * 64 + 16..(co * 3 + 3) * 64].iter().all(|&c| c == 0), "unused rows hold 0");
        }
        for cut in [bytes.len() - 1, 30] {
            assert!(DeployModel::from_bytes(&bytes[..cut]).is_err());
        }
        let mut bad = bytes.clone();
        bad[5] ^= 1;
        assert!(DeployModel::from_bytes(&bad).unwrap_err().contains("bad magic"));
        let dir = std::env::temp_dir().join(format!("dnat-deploy-{}", std::process::id()));
        let path = dir.join("m.dnatdepl");
        m.save(&path).unwrap();
        assert_eq!(DeployModel::load(&path).unwrap(), m);
        std::fs::write(&path, b"DNATCKPT").unwrap();
        let e = DeployModel::load(&path).unwrap_err().to_string();
        assert!(e.contains("m.dnatdepl") && e.contains("not a dnat deployable model"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The documented formula, computed from the file alone with ideal readouts, gives
    /// what the network's CIM conv + batchnorm (eval mode) computes on the ideal macro.
    #[test]
    fn the_documented_formula_reproduces_the_layer() {
        let (net, mut store) = trained_like();
        let spec = MacroSpec::default();
        let m = DeployModel::from_network(net.as_ref(), &store, &spec, Normalize::for_dataset(DatasetKind::Cifar10)).unwrap();
        let rt = CimRuntime::new(spec.clone(), Arc::new(crate::cim::em::ErrorModel::ideal(spec.adc.kmin, spec.adc.kmax)), ReadoutMode::Ideal, Estimator::Ste).unwrap();
        let (n, c, side) = (1usize, 16usize, 6usize);
        let mut x = random(&[n, c, side, side], 9);
        x.data_mut().iter_mut().for_each(|v| *v = 1.5 * *v + 0.5); // across both bounds
        let layers = net.compute_layers();
        let cl = &layers[1];
        let LayerOp::Conv(conv) = cl.op else { panic!() };
        let want = {
            let mut tape = Tape::new(false);
            let xv = tape.constant(x.clone());
            let mut cx = Fwd::new(&mut tape, &mut store, Mode::Eval);
            cx.cim = Some(&rt);
            let y = conv.forward(&mut cx, xv).unwrap();
            let y = cl.bn.unwrap().forward(&mut cx, y).unwrap();
            tape.value(y).clone()
        };
        let l = &m.layers[1];
        let Body::Macro { lo, hi, tiles, codes, scale, shift, .. } = &l.body else { panic!() };
        let s_x = (hi - lo) / spec.input_max() as f32;
        let (kern, pad, rows) = (3usize, 1isize, spec.rows);
        for co in 0..16 {
            for oy in 0..side {
                for ox in 0..side {
                    let (mut readouts, mut zero_point) = (0.0f32, 0.0f32);
                    for t in 0..*tiles as usize {
                        let mut psum = 0.0f32;
                        for r in 0..rows {
                            let kk = t * rows + r;
                            if kk >= c * kern * kern {
                                break;
                            }
                            let (ci, ky, kx) = (kk / 9, kk % 9 / 3, kk % 3);
                            let (iy, ix) = (oy as isize + ky as isize - pad, ox as isize + kx as isize - pad);
                            if iy < 0 || ix < 0 || iy >= side as isize || ix >= side as isize {
                                continue; // padding: a row not activated
                            }
                            let v = x.data()[(ci * side + iy as usize) * side + ix as usize];
                            let q = ((v.clamp(*lo, *hi) - lo) / s_x).round_ties_even();
                            let w = codes[(co * *tiles as usize + t) * rows + r] as f32;
                            psum += q * w;
                            zero_point += w;
                        }
                        readouts += spec.adc.code(psum) as f32 * spec.adc.step;
                    }
                    let y = scale[co] * (s_x * readouts + lo * zero_point) + shift[co];
                    let r = want.data()[(co * side + oy) * side + ox];
                    assert!((y - r).abs() <= 1e-3 * (1.0 + r.abs()), "channel {co} ({oy},{ox}): file {y} vs network {r}");
                }
            }
        }
    }
}
