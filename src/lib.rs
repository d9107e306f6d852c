//! # dnat — data-driven non-ideality aware training for computing-in-memory macros
//!
//! # Your network on your macro
//!
//! Write the network with dnat's layers, register it by name, say which layers go on
//! the macro, and train: the library numbers the CIM layers, keys every step's readout
//! draws, calibrates the E-PACT bounds and checkpoints every epoch.
//!
//! ```
//! use dnat::prelude::*;
//!
//! struct Tiny { conv: Conv2d, bn: BatchNorm2d, fc: Linear }
//! impl Network for Tiny {
//!     fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
//!         let h = self.conv.forward(cx, x)?;
//!         let h = self.bn.forward_relu(cx, h)?;
//!         let h = cx.global_avg_pool(h)?;
//!         self.fc.forward(cx, h)
//!     }
//! }
//! fn tiny(store: &mut ParamStore, classes: usize) -> Box<dyn Network> {
//!     let conv = Conv2dConfig::new(3, 16, 3).init(store, "conv");
//!     let bn = BatchNorm2d::new(store, "bn", 16);
//!     Box::new(Tiny { conv, bn, fc: Linear::init(store, "fc", 16, classes) })
//! }
//!
//! let arch = register("tiny", tiny)?;
//! let mut cfg = TrainConfig::new(arch, DatasetKind::Cifar10, 4, 0);
//! cfg.batch = 64;
//! // `conv` and `fc` on a 32-row macro with a 7-bit ADC, read through the `moderate` model.
//! let cim = CimTraining::new("rows=32,adc_bits=7,step=64", "moderate");
//! cfg.cim = Some(cim.on_layers(CimPlan::all()));
//! let path = std::env::temp_dir().join(format!("tiny-{}.ckpt", std::process::id()));
//! // 2,048 synthetic images: enough to learn (on a few hundred, accuracy stays at chance).
//! let out = train(&cfg, &synthetic::dataset(2048, 500, 1), &path, &RunOptions::quiet())?;
//! let accuracy = out.checkpoint.history.last().unwrap().test_accuracy;
//! assert!(accuracy > 30.0, "{accuracy} %: chance is 10 %");
//! assert_eq!(Checkpoint::load(&path)?.network()?.1.params().len(), out.checkpoint.store.params().len());
//! # std::fs::remove_file(&path).unwrap();
//! # Ok::<(), dnat::Error>(())
//! ```
//!
//! `examples/custom_network.rs` goes on to evaluate over chips and reads, reload and
//! export; `examples/own_chip.rs` starts from a measurement log. [`nn::map_to_macro`]
//! maps a store's layers directly, for a loop of your own.
//!
//! # Where things are
//!
//! The guide to the command line, the macro and error model, the pipeline, file formats,
//! determinism and speed is `docs/` in the repository (`docs/README.md` lists its pages).
//!
//! * [`prelude`] — the names above, in one `use`.
//! * [`cli`] — the `dnat` command line, callable from a program that registered its own
//!   architectures.
//! * [`engine`] — tensors, the reverse-mode tape and the differentiable ops
//!   (im2col convolution, batchnorm, pooling, fused softmax + cross-entropy).
//! * [`nn`] — layers, the [`nn::Network`] trait, the registry of architectures, mapping
//!   layers onto the macro, and the networks of the paper (ResNet20, VGG8, ResNet34,
//!   VGG16 in their CIFAR forms).
//! * [`optim`] — SGD / Adam, parameter groups and learning-rate schedules.
//! * [`data`] — CIFAR-10 / CIFAR-100 binary readers and per-image augmentation.
//! * [`io`] — checkpoints, the deployable integer model, PyTorch (`safetensors`)
//!   weight interchange.
//! * [`train`] — the training / evaluation loops, BN recalibration, progress reporting
//!   and benchmarks.
//! * [`pipeline`] — the paper's experiment (FP32 → QAT → naive vs D-NAT on the
//!   non-ideal macro) as resumable stages driven by a config file, and its report.
//! * [`cim`] — the CIM physics: the macro description, the D-MAC-EM error model, the
//!   E-PACT quantizer and the `CimConv2d` / `CimLinear` ops.
//!
//! Every computation is deterministic: the same seed gives the same bits whatever
//! the number of rayon threads (see `engine::par` for how reductions are split).
//!
//! # One CIM op with your own chip's error model, in a loop of your own
//!
//! ```
//! use dnat::cim::{cim_conv2d, CimCall, CimRuntime, Estimator, InputQuant, MacroSpec, ReadoutMode};
//! use dnat::cim::em::{ErrorModel, FillPolicy, ModelInfo};
//! use dnat::engine::ops::{conv2d::Conv2dCfg, softmax_cross_entropy, global_avg_pool};
//! use dnat::engine::{gradcheck::random, ParamGroup, ParamStore, Tape, Tensor};
//! use std::sync::Arc;
//!
//! // Your measurements: (ideal ADC code, measured code, count). Codes never measured
//! // take the `Nearest` policy: the error offsets of the closest measured code.
//! let spec = MacroSpec::default();
//! let counts = (-40..=40).flat_map(|k| [(k, k, 80.0), (k, k - 1, 15.0), (k, k + 2, 5.0)]);
//! let info = ModelInfo { name: "my-chip".into(), description: "die 3".into(), synthetic: false };
//! let model = ErrorModel::from_counts(info, (spec.adc.kmin, spec.adc.kmax), (spec.adc.kmin, spec.adc.kmax),
//!                                     FillPolicy::Nearest, counts)?;
//! // Checked: the model covers the ADC's codes and reads none beyond them.
//! let mut rt = CimRuntime::new(spec, Arc::new(model), ReadoutMode::Sampled, Estimator::Statistical { draws: 0 })?;
//!
//! // One conv layer (8 → 4 channels) with learned E-PACT bounds, trained by plain SGD.
//! let mut store = ParamStore::new();
//! let w = store.add_param("conv.weight", random(&[4, 8, 3, 3], 1), ParamGroup::Weight);
//! let lo = store.add_param("conv.act_lo", Tensor::full(&[1], -1.0), ParamGroup::QuantBound);
//! let hi = store.add_param("conv.act_hi", Tensor::full(&[1], 0.5), ParamGroup::QuantBound);
//! let (x, labels) = (random(&[2, 8, 6, 6], 2), [1u32, 3]);
//! for step in 0..3 {
//!     rt.step = step; // every macro operation's draw is keyed by (seed, layer, step, tile, element)
//!     let mut tape = Tape::new(true);
//!     let (xv, wv) = (tape.constant(x.clone()), tape.param(&store, w));
//!     // The op quantizes its input with the E-PACT bounds, as the macro's input DAC does.
//!     let quant = InputQuant { lo: tape.param(&store, lo), hi: tape.param(&store, hi) };
//!     let y = cim_conv2d(&mut tape, xv, wv, None, Conv2dCfg { stride: 1, padding: 1 }, quant, &CimCall { rt: &rt, layer: 0 })?;
//!     let logits = global_avg_pool(&mut tape, y)?;
//!     let loss = softmax_cross_entropy(&mut tape, logits, &labels, 0.0)?;
//!     store.zero_grads();
//!     tape.backward(loss).accumulate_into(&mut store);
//!     for p in store.params_mut() {
//!         let g = p.grad.clone();
//!         p.value.data_mut().iter_mut().zip(g.data()).for_each(|(v, g)| *v -= 0.05 * g);
//!     }
//! }
//! assert!(store.param(hi).value.data()[0] != 0.5, "the upper bound learned");
//! # Ok::<(), dnat::Error>(())
//! ```

#![warn(missing_docs)]

pub mod capi;
pub mod cim;
pub mod cli;
pub mod data;
pub mod engine;
pub mod error;
pub mod io;
pub mod nn;
pub mod optim;
pub mod pipeline;
pub mod prelude;
pub mod rng;
pub mod runtime;
pub mod train;

pub use error::{Error, Result};
