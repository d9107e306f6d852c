//! The paper's networks in their CIFAR forms.
//!
//! | arch     | body                                                                   | shortcut / head |
//! |----------|------------------------------------------------------------------------|-----------------|
//! | resnet20 | conv3×3(16)-BN-ReLU, 3 stages × 3 basic blocks (16, 32, 64 ch)          | option A (stride-2 subsample + zero channel padding, parameter-free), global avg pool, linear |
//! | resnet34 | conv3×3(64)-BN-ReLU, 4 stages of 3, 4, 6, 3 basic blocks (64…512 ch)     | option B (1×1 conv + BN) where the shape changes, global avg pool, linear |
//! | vgg8     | conv 128,128, pool, 256,256, pool, 512,512, pool (each conv-BN-ReLU)    | fc 8192→1024, ReLU, fc 1024→classes |
//! | vgg16    | VGG16 cfg 64,64,M,128,128,M,256×3,M,512×3,M,512×3,M (conv-BN-ReLU)      | fc 512→classes |
//!
//! Basic block: conv3×3-BN-ReLU-conv3×3-BN, add shortcut, ReLU (He et al. 2016).
//! Convolutions that feed a BN carry no bias (the BN shift subsumes it). Names follow
//! the common PyTorch CIFAR implementations (`conv1`, `bn1`, `layer1.0.conv1`,
//! `layer2.0.shortcut.0`, `linear`; `features.N` / `classifier.N` for VGG), so a
//! PyTorch `state_dict` of the same architecture maps one to one.

use super::layers::{BatchNorm2d, Conv2d, Conv2dConfig, Fwd, Linear};
use crate::engine::{ParamStore, Var};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ResNet20,
    ResNet34,
    Vgg8,
    Vgg16,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::ResNet20, Arch::ResNet34, Arch::Vgg8, Arch::Vgg16];
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet20 => "resnet20",
            Arch::ResNet34 => "resnet34",
            Arch::Vgg8 => "vgg8",
            Arch::Vgg16 => "vgg16",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            Error::invalid(format!("unknown model '{s}' (known: resnet20, resnet34, vgg8, vgg16)"))
        })
    }
}

/// Which layers of a network map onto the CIM macro: every convolution and linear
/// layer, except — as is usual in the CIM literature, since they hold few weights and
/// see raw pixels or produce the logits — the first convolution and the last linear
/// layer, unless these flags say otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CimPlan {
    pub first_digital: bool,
    pub last_digital: bool,
}

impl Default for CimPlan {
    fn default() -> Self {
        CimPlan { first_digital: true, last_digital: true }
    }
}

/// Everything needed to rebuild a network's structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub num_classes: usize,
    /// `Some`: the network's layers are mapped onto the macro per the plan (they carry
    /// E-PACT bounds and run on the macro when a forward pass has a CIM runtime).
    pub cim: Option<CimPlan>,
}

/// The most classes an output layer may have (sizes are checked before anything is
/// allocated for them).
pub const MAX_CLASSES: usize = 1 << 16;

impl ModelSpec {
    /// At least 2 and at most [`MAX_CLASSES`] classes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(2..=MAX_CLASSES).contains(&self.num_classes) {
            return Err(format!("{} classes: a classifier needs 2 to {MAX_CLASSES}", self.num_classes));
        }
        Ok(())
    }
    pub fn fp32(arch: Arch, num_classes: usize) -> Self {
        ModelSpec { arch, num_classes, cim: None }
    }
}

/// Decides which layers are on the macro (the store numbers them in build order).
struct MacroMap {
    plan: Option<CimPlan>,
}

impl MacroMap {
    fn conv(&self, c: Conv2d, store: &mut ParamStore, name: &str, first: bool) -> Conv2d {
        match self.plan {
            Some(p) if !(first && p.first_digital) => c.on_macro(store, name),
            _ => c,
        }
    }
    fn linear(&self, l: Linear, store: &mut ParamStore, name: &str, last: bool) -> Linear {
        match self.plan {
            Some(p) if !(last && p.last_digital) => l.on_macro(store, name),
            _ => l,
        }
    }
}

/// A network: a forward pass from NCHW images to logits.
pub trait Network: Send + Sync {
    fn spec(&self) -> ModelSpec;
    /// Images (N, C, H, W) to logits. Built from the layers and the ops of [`Fwd`], a
    /// forward pass can be traced (see [`super::trace`]) and exported whole.
    fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var>;
}

/// Builds a network and its freshly initialised parameters (weights drawn from `seed`).
pub fn build(spec: ModelSpec, seed: u64) -> (Box<dyn Network>, ParamStore) {
    let mut store = ParamStore::seeded(seed);
    let net: Box<dyn Network> = match spec.arch {
        Arch::ResNet20 => Box::new(ResNet::new(&mut store, spec)),
        Arch::ResNet34 => Box::new(ResNet::new(&mut store, spec)),
        Arch::Vgg8 | Arch::Vgg16 => Box::new(Vgg::new(&mut store, spec)),
    };
    (net, store)
}

enum Shortcut {
    Identity,
    /// Option A: parameter-free subsample + channel zero-padding.
    PadA { stride: usize, cout: usize },
    /// Option B: 1×1 convolution + BN.
    Projection(Conv2d, BatchNorm2d),
}

struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    shortcut: Shortcut,
}

impl BasicBlock {
    fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        let h = self.conv1.forward(cx, x)?;
        let h = self.bn1.forward_relu(cx, h)?;
        let h = self.conv2.forward(cx, h)?;
        let h = self.bn2.forward(cx, h)?;
        let s = match &self.shortcut {
            Shortcut::Identity => x,
            Shortcut::PadA { stride, cout } => cx.subsample_pad_channels(x, *stride, *cout)?,
            Shortcut::Projection(conv, bn) => {
                let s = conv.forward(cx, x)?;
                bn.forward(cx, s)?
            }
        };
        let y = cx.add(h, s);
        Ok(cx.relu(y))
    }
}

struct ResNet {
    spec: ModelSpec,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    linear: Linear,
}

impl ResNet {
    fn new(store: &mut ParamStore, spec: ModelSpec) -> Self {
        let map = MacroMap { plan: spec.cim };
        let (widths, depths, option_a): (&[usize], &[usize], bool) = match spec.arch {
            Arch::ResNet20 => (&[16, 32, 64], &[3, 3, 3], true),
            Arch::ResNet34 => (&[64, 128, 256, 512], &[3, 4, 6, 3], false),
            _ => unreachable!("not a ResNet"),
        };
        let conv1 = Conv2dConfig::new(3, widths[0], 3).init(store, "conv1");
        let conv1 = map.conv(conv1, store, "conv1", true);
        let bn1 = BatchNorm2d::new(store, "bn1", widths[0]);
        let mut blocks = Vec::new();
        let mut cin = widths[0];
        for (stage, (&cout, &depth)) in widths.iter().zip(depths).enumerate() {
            for b in 0..depth {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let name = format!("layer{}.{b}", stage + 1);
                let n1 = format!("{name}.conv1");
                let conv1 = Conv2dConfig::new(cin, cout, 3).stride(stride).init(store, &n1);
                let conv1 = map.conv(conv1, store, &n1, false);
                let bn1 = BatchNorm2d::new(store, &format!("{name}.bn1"), cout);
                let n2 = format!("{name}.conv2");
                let conv2 = Conv2dConfig::new(cout, cout, 3).init(store, &n2);
                let conv2 = map.conv(conv2, store, &n2, false);
                let bn2 = BatchNorm2d::new(store, &format!("{name}.bn2"), cout);
                let shortcut = if stride == 1 && cin == cout {
                    Shortcut::Identity
                } else if option_a {
                    Shortcut::PadA { stride, cout }
                } else {
                    let ns = format!("{name}.shortcut.0");
                    let conv = Conv2dConfig::new(cin, cout, 1).stride(stride).init(store, &ns);
                    Shortcut::Projection(map.conv(conv, store, &ns, false), BatchNorm2d::new(store, &format!("{name}.shortcut.1"), cout))
                };
                blocks.push(BasicBlock { conv1, bn1, conv2, bn2, shortcut });
                cin = cout;
            }
        }
        let linear = Linear::init(store, "linear", cin, spec.num_classes);
        let linear = map.linear(linear, store, "linear", true);
        ResNet { spec, conv1, bn1, blocks, linear }
    }
}

impl Network for ResNet {
    fn spec(&self) -> ModelSpec {
        self.spec
    }
    fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        let h = self.conv1.forward(cx, x)?;
        let mut h = self.bn1.forward_relu(cx, h)?;
        for b in &self.blocks {
            h = b.forward(cx, h)?;
        }
        let h = cx.global_avg_pool(h)?;
        self.linear.forward(cx, h)
    }
}

enum VggLayer {
    ConvBnRelu(Conv2d, BatchNorm2d),
    MaxPool,
}

struct Vgg {
    spec: ModelSpec,
    features: Vec<VggLayer>,
    /// (layer, ReLU after it?)
    classifier: Vec<(Linear, bool)>,
}

impl Vgg {
    fn new(store: &mut ParamStore, spec: ModelSpec) -> Self {
        const M: usize = 0;
        let (cfg, hidden): (&[usize], &[usize]) = match spec.arch {
            Arch::Vgg8 => (&[128, 128, M, 256, 256, M, 512, 512, M], &[1024]),
            Arch::Vgg16 => (&[64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M], &[]),
            _ => unreachable!("not a VGG"),
        };
        let map = MacroMap { plan: spec.cim };
        let mut features = Vec::new();
        // PyTorch Sequential indices: conv i, bn i+1, relu i+2; pool takes one index.
        let (mut idx, mut cin, mut side) = (0, 3, 32);
        for &c in cfg {
            if c == M {
                features.push(VggLayer::MaxPool);
                idx += 1;
                side /= 2;
            } else {
                let name = format!("features.{idx}");
                let conv = Conv2dConfig::new(cin, c, 3).init(store, &name);
                let conv = map.conv(conv, store, &name, idx == 0);
                let bn = BatchNorm2d::new(store, &format!("features.{}", idx + 1), c);
                features.push(VggLayer::ConvBnRelu(conv, bn));
                idx += 3;
                cin = c;
            }
        }
        let mut classifier = Vec::new();
        let mut fin = cin * side * side;
        let mut cidx = 0;
        for &h in hidden {
            let name = format!("classifier.{cidx}");
            let lin = Linear::init(store, &name, fin, h);
            classifier.push((map.linear(lin, store, &name, false), true));
            cidx += 2;
            fin = h;
        }
        let name = format!("classifier.{cidx}");
        let lin = Linear::init(store, &name, fin, spec.num_classes);
        classifier.push((map.linear(lin, store, &name, true), false));
        Vgg { spec, features, classifier }
    }
}

impl Network for Vgg {
    fn spec(&self) -> ModelSpec {
        self.spec
    }
    fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        let mut h = x;
        for layer in &self.features {
            h = match layer {
                VggLayer::ConvBnRelu(conv, bn) => {
                    let c = conv.forward(cx, h)?;
                    bn.forward_relu(cx, c)?
                }
                VggLayer::MaxPool => cx.max_pool2d(h, 2, 2)?,
            };
        }
        h = cx.flatten(h)?;
        for (lin, relu) in &self.classifier {
            h = lin.forward(cx, h)?;
            if *relu {
                h = cx.relu(h);
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_literature() {
        let count = |arch, classes| build(ModelSpec::fp32(arch, classes), 0).1.num_scalars();
        // ResNet20 (option A): 269,722 as printed by the reference PyTorch implementation; ResNet34 CIFAR: 21.3 M; VGG16 CIFAR: 14.7 M.
        assert_eq!(count(Arch::ResNet20, 10), 269_722);
        assert_eq!(count(Arch::Vgg8, 10), 12_978_058);
        let r34 = count(Arch::ResNet34, 100);
        assert!((21_000_000..21_400_000).contains(&r34), "{r34}");
        let v16 = count(Arch::Vgg16, 100);
        assert!((14_700_000..14_800_000).contains(&v16), "{v16}");
    }

    #[test]
    fn cim_plan_maps_the_documented_layers() {
        let cim = |arch, plan| {
            let (_, s) = build(ModelSpec { arch, num_classes: 10, cim: Some(plan) }, 0);
            s.params().iter().filter(|p| p.name.ends_with(".act_hi")).map(|p| p.name.clone()).collect::<Vec<_>>()
        };
        let r20 = cim(Arch::ResNet20, CimPlan::default());
        assert_eq!(r20.len(), 18, "every block conv, not conv1 nor linear: {r20:?}");
        assert!(!r20.iter().any(|n| n.starts_with("conv1") || n.starts_with("linear")));
        assert_eq!(cim(Arch::ResNet20, CimPlan { first_digital: false, last_digital: false }).len(), 20);
        assert_eq!(cim(Arch::Vgg8, CimPlan::default()).len(), 6, "5 convs + fc 8192→1024");
        assert_eq!(cim(Arch::ResNet34, CimPlan::default()).len(), 32 + 3, "block convs + 3 projections");
        // FP32 weights keep their names and initial values when the plan adds bounds.
        let (_, a) = build(ModelSpec::fp32(Arch::ResNet20, 10), 4);
        let (_, b) = build(ModelSpec { arch: Arch::ResNet20, num_classes: 10, cim: Some(CimPlan::default()) }, 4);
        for p in a.params() {
            assert_eq!(b.params().iter().find(|q| q.name == p.name).unwrap().value, p.value);
        }
    }

    /// CIM layer ids are the store's numbering in build order: unique, and the same
    /// for every build of a network; a layer mapped twice, or a name used twice, is a
    /// builder bug caught at build time.
    #[test]
    fn cim_layer_ids_are_unique_and_stable() {
        let spec = ModelSpec { arch: Arch::ResNet20, num_classes: 10, cim: Some(CimPlan::default()) };
        let (_, a) = build(spec, 1);
        let (_, b) = build(spec, 2);
        assert_eq!(a.cim_layers(), b.cim_layers());
        assert_eq!(a.cim_layers().len(), 18);
        assert_eq!((a.cim_layers()[0].as_str(), a.cim_layers()[17].as_str()), ("layer1.0.conv1", "layer3.2.conv2"));
        let mut store = ParamStore::new();
        Conv2dConfig::new(3, 4, 3).init(&mut store, "c").on_macro(&mut store, "c");
        let again = std::panic::catch_unwind(move || Conv2dConfig::new(3, 4, 3).init(&mut store, "c"));
        let msg = again.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("parameter 'c.weight' added twice"), "{msg}");
    }

    #[test]
    fn unknown_model_is_a_clear_error() {
        assert!(Arch::parse("resnet21").unwrap_err().to_string().contains("unknown model 'resnet21'"));
    }
}
