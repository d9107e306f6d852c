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
use super::mapping::{CimPlan, map_to_macro};
use crate::engine::{ParamStore, Var};
use crate::{Error, Result};
use std::sync::{OnceLock, RwLock};

/// A network's architecture: one of the paper's, or one a user registered
/// ([`register`]) under a name of their choosing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// ResNet-20, option-A shortcuts.
    ResNet20,
    /// ResNet-34, option-B shortcuts.
    ResNet34,
    /// VGG-8: six convolutions, two fully connected layers.
    Vgg8,
    /// VGG-16, one fully connected layer.
    Vgg16,
    /// A user's network, by its registered name.
    Custom(&'static str),
}

impl Arch {
    /// The built-in architectures.
    pub const ALL: [Arch; 4] = [Arch::ResNet20, Arch::ResNet34, Arch::Vgg8, Arch::Vgg16];
    /// The name the architecture is known by (`resnet20`, or its registered name).
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet20 => "resnet20",
            Arch::ResNet34 => "resnet34",
            Arch::Vgg8 => "vgg8",
            Arch::Vgg16 => "vgg16",
            Arch::Custom(name) => name,
        }
    }
    /// A built-in architecture or a registered one, by name.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(a) = Arch::ALL.into_iter().find(|a| a.name() == s) {
            return Ok(a);
        }
        let reg = registry().read().unwrap_or_else(|e| e.into_inner());
        if let Some((name, _)) = reg.iter().find(|(n, _)| *n == s) {
            return Ok(Arch::Custom(name));
        }
        let mut known: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
        known.extend(reg.iter().map(|(n, _)| *n));
        Err(Error::invalid(format!("unknown model '{s}' (known: {})", known.join(", "))))
    }
}

/// Makes a network's layers (in FP32) in a store: what a user registers for their
/// architecture. [`build`] then maps the layers its [`ModelSpec`]'s plan names onto the
/// macro.
pub type Builder = fn(store: &mut ParamStore, num_classes: usize) -> Box<dyn Network>;

fn registry() -> &'static RwLock<Vec<(&'static str, Builder)>> {
    static REGISTRY: OnceLock<RwLock<Vec<(&'static str, Builder)>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Registers a user's architecture under `name`, so that [`build`], checkpoints
/// ([`Arch::parse`]) and everything built on them (training, evaluation, export) know
/// it. A name is registered once, and never a built-in's.
pub fn register(name: &'static str, builder: Builder) -> Result<Arch> {
    let mut reg = registry().write().unwrap_or_else(|e| e.into_inner());
    if Arch::ALL.iter().any(|a| a.name() == name) || reg.iter().any(|(n, _)| *n == name) {
        return Err(Error::invalid(format!("model '{name}' is already known")));
    }
    if !valid_name(name) {
        return Err(Error::invalid(format!(
            "model name '{name}': use 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    reg.push((name, builder));
    Ok(Arch::Custom(name))
}

/// Whether `name` can name an architecture: 1 to 64 ASCII letters, digits, `-`, `_`, `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Everything needed to rebuild a network's structure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// The architecture.
    pub arch: Arch,
    /// Outputs of the last layer (10 for CIFAR-10, 100 for CIFAR-100).
    pub num_classes: usize,
    /// `Some`: the layers the plan names are on the macro (they carry E-PACT bounds and
    /// run on the macro when a forward pass has a CIM runtime).
    pub cim: Option<CimPlan>,
}

/// The most classes an output layer may have (sizes are checked before anything is
/// allocated for them).
pub const MAX_CLASSES: usize = 1 << 16;

impl ModelSpec {
    /// At least 2 and at most [`MAX_CLASSES`] classes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(2..=MAX_CLASSES).contains(&self.num_classes) {
            return Err(format!(
                "{} classes: a classifier needs 2 to {MAX_CLASSES}",
                self.num_classes
            ));
        }
        Ok(())
    }
    /// `arch` with `num_classes` outputs, every layer in FP32 (none on the macro).
    pub fn fp32(arch: Arch, num_classes: usize) -> Self {
        ModelSpec { arch, num_classes, cim: None }
    }
    /// The same network with the layers `plan` names on the macro.
    pub fn on_macro(self, plan: CimPlan) -> Self {
        ModelSpec { cim: Some(plan), ..self }
    }
}

/// A network: a forward pass from NCHW images to logits, made of the layers of
/// [`super::layers`] (whose parameters live in a [`ParamStore`]) and the ops of [`Fwd`].
/// That is all a user's network implements; built so, its forward pass can be traced
/// (see [`super::trace`]) and exported whole.
pub trait Network: Send + Sync {
    /// The logits (N, classes) of the images `x` (N, C, H, W).
    fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var>;
}

/// Builds a network and its freshly initialised parameters (weights drawn from `seed`),
/// with the layers its plan names mapped onto the macro.
pub fn build(spec: &ModelSpec, seed: u64) -> Result<(Box<dyn Network>, ParamStore)> {
    spec.validate().map_err(Error::invalid)?;
    let mut store = ParamStore::seeded(seed);
    let c = spec.num_classes;
    let net: Box<dyn Network> = match spec.arch {
        Arch::ResNet20 | Arch::ResNet34 => Box::new(ResNet::new(&mut store, spec.arch, c)),
        Arch::Vgg8 | Arch::Vgg16 => Box::new(Vgg::new(&mut store, spec.arch, c)),
        Arch::Custom(name) => {
            let reg = registry().read().unwrap_or_else(|e| e.into_inner());
            let builder = reg.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
            drop(reg);
            builder.ok_or_else(|| Error::invalid(format!("model '{name}' is not registered")))?(
                &mut store, c,
            )
        }
    };
    if let Some(plan) = &spec.cim {
        map_to_macro(&mut store, plan)?;
    }
    Ok((net, store))
}

enum Shortcut {
    Identity,
    /// Option A: parameter-free subsample + channel zero-padding.
    PadA {
        stride: usize,
        cout: usize,
    },
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
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    linear: Linear,
}

impl ResNet {
    fn new(store: &mut ParamStore, arch: Arch, num_classes: usize) -> Self {
        let (widths, depths, option_a): (&[usize], &[usize], bool) = match arch {
            Arch::ResNet20 => (&[16, 32, 64], &[3, 3, 3], true),
            Arch::ResNet34 => (&[64, 128, 256, 512], &[3, 4, 6, 3], false),
            _ => unreachable!("not a ResNet"),
        };
        let conv1 = Conv2dConfig::new(3, widths[0], 3).init(store, "conv1");
        let bn1 = BatchNorm2d::new(store, "bn1", widths[0]);
        let mut blocks = Vec::new();
        let mut cin = widths[0];
        for (stage, (&cout, &depth)) in widths.iter().zip(depths).enumerate() {
            for b in 0..depth {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let name = format!("layer{}.{b}", stage + 1);
                let conv1 = Conv2dConfig::new(cin, cout, 3)
                    .stride(stride)
                    .init(store, &format!("{name}.conv1"));
                let bn1 = BatchNorm2d::new(store, &format!("{name}.bn1"), cout);
                let conv2 = Conv2dConfig::new(cout, cout, 3).init(store, &format!("{name}.conv2"));
                let bn2 = BatchNorm2d::new(store, &format!("{name}.bn2"), cout);
                let shortcut = if stride == 1 && cin == cout {
                    Shortcut::Identity
                } else if option_a {
                    Shortcut::PadA { stride, cout }
                } else {
                    let conv = Conv2dConfig::new(cin, cout, 1)
                        .stride(stride)
                        .init(store, &format!("{name}.shortcut.0"));
                    Shortcut::Projection(
                        conv,
                        BatchNorm2d::new(store, &format!("{name}.shortcut.1"), cout),
                    )
                };
                blocks.push(BasicBlock { conv1, bn1, conv2, bn2, shortcut });
                cin = cout;
            }
        }
        let linear = Linear::init(store, "linear", cin, num_classes);
        ResNet { conv1, bn1, blocks, linear }
    }
}

impl Network for ResNet {
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
    features: Vec<VggLayer>,
    /// (layer, ReLU after it?)
    classifier: Vec<(Linear, bool)>,
}

impl Vgg {
    fn new(store: &mut ParamStore, arch: Arch, num_classes: usize) -> Self {
        const M: usize = 0;
        let (cfg, hidden): (&[usize], &[usize]) = match arch {
            Arch::Vgg8 => (&[128, 128, M, 256, 256, M, 512, 512, M], &[1024]),
            Arch::Vgg16 => (
                &[64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
                &[],
            ),
            _ => unreachable!("not a VGG"),
        };
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
            classifier.push((Linear::init(store, &format!("classifier.{cidx}"), fin, h), true));
            cidx += 2;
            fin = h;
        }
        classifier
            .push((Linear::init(store, &format!("classifier.{cidx}"), fin, num_classes), false));
        Vgg { features, classifier }
    }
}

impl Network for Vgg {
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
        let count =
            |arch, classes| build(&ModelSpec::fp32(arch, classes), 0).unwrap().1.num_scalars();
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
            let (_, s) = build(&ModelSpec { arch, num_classes: 10, cim: Some(plan) }, 0).unwrap();
            s.params()
                .iter()
                .filter(|p| p.name.ends_with(".act_hi"))
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        let r20 = cim(Arch::ResNet20, CimPlan::default());
        assert_eq!(r20.len(), 18, "every block conv, not conv1 nor linear: {r20:?}");
        assert!(!r20.iter().any(|n| n.starts_with("conv1") || n.starts_with("linear")));
        assert_eq!(cim(Arch::ResNet20, CimPlan::all()).len(), 20);
        assert_eq!(cim(Arch::Vgg8, CimPlan::default()).len(), 6, "5 convs + fc 8192→1024");
        assert_eq!(
            cim(Arch::ResNet34, CimPlan::default()).len(),
            32 + 3,
            "block convs + 3 projections"
        );
        // FP32 weights keep their names and initial values when the plan adds bounds.
        let (_, a) = build(&ModelSpec::fp32(Arch::ResNet20, 10), 4).unwrap();
        let (_, b) = build(
            &ModelSpec { arch: Arch::ResNet20, num_classes: 10, cim: Some(CimPlan::default()) },
            4,
        )
        .unwrap();
        for p in a.params() {
            assert_eq!(b.params().iter().find(|q| q.name == p.name).unwrap().value, p.value);
        }
    }

    /// CIM layer ids are the store's numbering in build order: unique, and the same
    /// for every build of a network; a name used twice is a builder bug caught at build
    /// time.
    #[test]
    fn cim_layer_ids_are_unique_and_stable() {
        let spec =
            ModelSpec { arch: Arch::ResNet20, num_classes: 10, cim: Some(CimPlan::default()) };
        let (_, a) = build(&spec, 1).unwrap();
        let (_, b) = build(&spec, 2).unwrap();
        assert_eq!(a.cim_layers(), b.cim_layers());
        assert_eq!(a.cim_layers().len(), 18);
        assert_eq!(
            (a.cim_layers()[0].as_str(), a.cim_layers()[17].as_str()),
            ("layer1.0.conv1", "layer3.2.conv2")
        );
        let mut store = ParamStore::new();
        Conv2dConfig::new(3, 4, 3).init(&mut store, "c");
        let again =
            std::panic::catch_unwind(move || Conv2dConfig::new(3, 4, 3).init(&mut store, "c"));
        let msg = again.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("parameter 'c.weight' added twice"), "{msg}");
    }

    /// A user's architecture, registered by name, builds, maps and parses like a
    /// built-in one; names are checked.
    #[test]
    fn a_registered_network_is_built_by_name() {
        struct Tiny(Linear);
        impl Network for Tiny {
            fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
                let h = cx.flatten(x)?;
                self.0.forward(cx, h)
            }
        }
        fn tiny(store: &mut ParamStore, classes: usize) -> Box<dyn Network> {
            Box::new(Tiny(Linear::init(store, "fc", 3 * 32 * 32, classes)))
        }
        let arch = register("test-tiny", tiny).unwrap();
        assert_eq!(Arch::parse("test-tiny").unwrap(), arch);
        let (_, store) = build(&ModelSpec::fp32(arch, 7).on_macro(CimPlan::all()), 0).unwrap();
        assert_eq!(store.cim_layers(), ["fc"]);
        assert!(register("test-tiny", tiny).unwrap_err().to_string().contains("already known"));
        assert!(register("resnet20", tiny).unwrap_err().to_string().contains("already known"));
        assert!(register("my net", tiny).unwrap_err().to_string().contains("letters, digits"));
        assert!(build(&ModelSpec::fp32(arch, 1), 0).is_err(), "one class");
    }

    #[test]
    fn unknown_model_is_a_clear_error() {
        let e = Arch::parse("resnet21").unwrap_err().to_string();
        assert!(
            e.contains("unknown model 'resnet21'") && e.contains("resnet20, resnet34, vgg8, vgg16"),
            "{e}"
        );
    }
}
