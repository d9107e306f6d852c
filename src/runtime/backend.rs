//! The interface a macro implements, shaped like the hardware: arrays programmed with
//! weight codes once, then read with batches of input vectors.

use crate::cim::conv::adc_codes;
use crate::cim::{Chip, DrawKey, DrawRun, MacroSpec, Readout};
use crate::engine::gemm::{MatRef, gemm};
use crate::{Error, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// What the runtime says about one batch of macro operations. A real chip may ignore
/// it; a simulated one keys its draws on it, so that it draws what the training-side
/// CIM layers draw for the same operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The CIM layer (the order the layers were mapped onto the macro).
    pub layer: u32,
    /// The tile of the layer's reduction axis the programmed array holds.
    pub tile: u32,
    /// The input-bit cycle (0 for a macro that takes all input bits at once).
    pub cycle: u32,
    /// The output channel of the array's first column.
    pub first_channel: u32,
    /// The layer's output channels.
    pub channels: u32,
    /// Operations per column in the layer's whole pass (images × output pixels): with
    /// the row `n` of this call, operation `((tile·cycles + cycle)·channels + channel)·
    /// elements + first_element + n` in the training side's numbering.
    pub elements: u64,
    /// The first row's element.
    pub first_element: u64,
    /// The pass (the evaluation batch, as the training side's step).
    pub pass: u64,
}

/// A CIM macro: `arrays` arrays of `rows` × `columns` weight cells, each column read by
/// its own ADC ([`MacroSpec`] is the contract: geometry, bit widths, ADC range, input
/// bits per cycle).
///
/// The runtime calls [`program`](Self::program) to load an array (the weights stay
/// until the array is programmed again) and [`compute`](Self::compute) to read `n`
/// operations in one call. A macro that takes fewer input bits per cycle than the inputs
/// have (`input_bits_per_cycle < input_bits`) is called once per cycle with that cycle's
/// bits, and the runtime shift-adds the codes: the macro never sees more than
/// `input_bits_per_cycle` bits of an input.
pub trait MacroBackend: Send {
    /// How reports name this backend.
    fn name(&self) -> String;
    /// Loads array `array` with weight codes `weights[row · columns + column]` (signed
    /// codes of the macro's `weight_bits`; rows or columns a layer does not use hold 0).
    fn program(&mut self, array: usize, weights: &[i8]) -> Result<()>;
    /// Reads `n = inputs.len() / rows` operations on array `array`: `inputs[i · rows + r]`
    /// is row `r`'s input code of operation `i` (below `2^input_bits_per_cycle`), and
    /// `out[i · columns + c]` receives column `c`'s ADC code (within the ADC's range).
    fn compute(
        &mut self,
        array: usize,
        op: &Operation,
        inputs: &[u16],
        out: &mut [i32],
    ) -> Result<()>;
}

/// The arrays' weights as a simulated macro keeps them, and their exact partial sums.
struct Arrays {
    spec: MacroSpec,
    /// Each array's codes as f32, `[rows][columns]` (`None`: never programmed).
    weights: Vec<Option<Vec<f32>>>,
}

impl Arrays {
    fn new(spec: &MacroSpec) -> Self {
        Arrays { spec: spec.clone(), weights: vec![None; spec.arrays] }
    }
    fn program(&mut self, array: usize, weights: &[i8]) -> Result<()> {
        let (rows, cols) = (self.spec.rows, self.spec.columns);
        if array >= self.spec.arrays || weights.len() != rows * cols {
            return Err(Error::invalid(format!(
                "program: array {array} with {} weights; the macro has {} arrays of {rows} × {cols}",
                weights.len(),
                self.spec.arrays
            )));
        }
        self.weights[array] = Some(weights.iter().map(|&w| w as f32).collect());
        Ok(())
    }
    /// The exact partial sums `P[i · columns + c]` of `inputs` on `array`: one product of
    /// the inputs (n × rows) and the array (rows × columns) on the engine's GEMM, exact
    /// in f32 (integer products and sums far below 2^24).
    fn partial_sums(&self, array: usize, inputs: &[u16]) -> Result<Vec<i32>> {
        let (rows, cols) = (self.spec.rows, self.spec.columns);
        let w = self.weights.get(array).and_then(|w| w.as_ref()).ok_or_else(|| {
            Error::invalid(format!("compute: array {array} was never programmed"))
        })?;
        if !inputs.len().is_multiple_of(rows) {
            return Err(Error::invalid(format!(
                "compute: {} input codes are not whole operations of {rows} rows",
                inputs.len()
            )));
        }
        let n = inputs.len() / rows;
        let x: Vec<f32> = inputs.par_iter().map(|&q| q as f32).collect();
        let mut p = vec![0.0f32; n * cols];
        gemm(
            1.0,
            MatRef::rowmajor(&x, n, rows),
            MatRef::rowmajor(w, rows, cols),
            0.0,
            &mut p,
            cols,
        );
        Ok(p.par_iter().map(|&v| v as i32).collect())
    }
}

/// The ideal macro: every ADC code is the exact partial sum's, `clamp(round(P / step))`.
pub struct IdealMacro(Arrays);

impl IdealMacro {
    /// An ideal macro of geometry `spec`.
    pub fn new(spec: &MacroSpec) -> Self {
        IdealMacro(Arrays::new(spec))
    }
}

impl MacroBackend for IdealMacro {
    fn name(&self) -> String {
        "ideal".into()
    }
    fn program(&mut self, array: usize, weights: &[i8]) -> Result<()> {
        self.0.program(array, weights)
    }
    fn compute(
        &mut self,
        array: usize,
        _: &Operation,
        inputs: &[u16],
        out: &mut [i32],
    ) -> Result<()> {
        let p = self.0.partial_sums(array, inputs)?;
        check_len(out, p.len())?;
        let adc = self.0.spec.adc;
        out.iter_mut().zip(&p).for_each(|(o, &s)| *o = adc.code(s as f32));
        Ok(())
    }
}

/// A simulated chip: chip instance `chip` of an error model's fixed pattern (the ADC
/// column's gain and offset act on the analog sum before rounding), each readout drawn
/// from the model at the key the training side's CIM layers use for the same operation
/// (noise seed `noise`, the layer, the pass, the operation's number).
pub struct EmMacro {
    arrays: Arrays,
    readout: Arc<dyn Readout>,
    chip: Option<Chip>,
    noise: u64,
    label: String,
}

impl EmMacro {
    /// Chip `chip` of `readout` on a macro of geometry `spec`, read with noise seed `noise`.
    pub fn new(spec: &MacroSpec, readout: Arc<dyn Readout>, chip: u64, noise: u64) -> Self {
        let label = format!("em:{},chip={chip},noise={noise}", readout.label());
        let chip = readout.chip(spec.adcs(), chip);
        EmMacro { arrays: Arrays::new(spec), readout, chip, noise, label }
    }
}

impl MacroBackend for EmMacro {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn program(&mut self, array: usize, weights: &[i8]) -> Result<()> {
        self.arrays.program(array, weights)
    }
    fn compute(
        &mut self,
        array: usize,
        op: &Operation,
        inputs: &[u16],
        out: &mut [i32],
    ) -> Result<()> {
        let p = self.arrays.partial_sums(array, inputs)?;
        check_len(out, p.len())?;
        let spec = &self.arrays.spec;
        let (cols, adc) = (spec.columns, spec.adc);
        let key = DrawKey::new(self.noise, op.layer as u64, op.pass);
        let inv_step = 1.0 / adc.step;
        let used = cols.min(op.channels.saturating_sub(op.first_channel) as usize);
        // Operations are independent (each draw is keyed by its own number): blocks of
        // rows in parallel, small enough that a block's partial sums stay in cache while
        // each column of it is read.
        const BLOCK: usize = 1024;
        out.par_chunks_mut(BLOCK * cols).zip(p.par_chunks(BLOCK * cols)).enumerate().for_each(
            |(blk, (o, pb))| {
                let m = pb.len() / cols;
                let (mut sums, mut codes, mut read) = (vec![0i32; m], vec![0i32; m], vec![0.0; m]);
                o.fill(0);
                for c in 0..used {
                    let co = op.first_channel as usize + c;
                    // The ADC column's fixed pattern acts on the analog sum, before
                    // rounding, and the conversion is the CIM layers' own.
                    let (gain, offset) = self
                        .chip
                        .as_ref()
                        .map_or((1.0, 0.0), |ch| ch.column(spec.adc_of(op.tile as usize, co)));
                    sums.iter_mut().enumerate().for_each(|(i, s)| *s = pb[i * cols + c]);
                    adc_codes(&sums, inv_step * gain, offset, adc, &mut codes, None);
                    let row = (op.tile as u64 * spec.cycles() as u64 + op.cycle as u64)
                        * op.channels as u64
                        + co as u64;
                    let op0 = row * op.elements + op.first_element + (blk * BLOCK) as u64;
                    self.readout.sample_run(&codes, DrawRun { key, op0, stride: 1 }, &mut read);
                    for (i, &r) in read.iter().enumerate() {
                        o[i * cols + c] = r as i32;
                    }
                }
            },
        );
        Ok(())
    }
}

fn check_len(out: &[i32], want: usize) -> Result<()> {
    if out.len() != want {
        return Err(Error::invalid(format!(
            "compute: {} output slots for {want} column readouts",
            out.len()
        )));
    }
    Ok(())
}

/// The backend a description names, for a macro of geometry `spec`: `ideal`, or
/// `em:MODEL[,chip=S][,noise=N]` — a simulated chip `S` (default 0) of the error model
/// `MODEL` (a preset, a preset with overrides, or a D-MAC-EM file), read with noise seed
/// `N` (default 1000, as `dnat eval`'s first noise seed).
pub fn parse(description: &str, spec: &MacroSpec) -> Result<Box<dyn MacroBackend>> {
    if description == "ideal" {
        return Ok(Box::new(IdealMacro::new(spec)));
    }
    let Some(rest) = description.strip_prefix("em:") else {
        return Err(Error::invalid(format!(
            "backend '{description}': expected 'ideal' or 'em:MODEL[,chip=S][,noise=N]'"
        )));
    };
    let (mut chip, mut noise, mut model) = (0u64, 1000u64, Vec::new());
    for part in rest.split(',') {
        let number = |v: &str, what: &str| {
            v.parse::<u64>().map_err(|_| {
                Error::invalid(format!(
                    "backend '{description}': {what} '{v}' is not a whole number"
                ))
            })
        };
        if let Some(v) = part.strip_prefix("chip=") {
            chip = number(v, "chip")?;
        } else if let Some(v) = part.strip_prefix("noise=") {
            noise = number(v, "noise")?;
        } else {
            model.push(part);
        }
    }
    if model.is_empty() || model[0].is_empty() {
        return Err(Error::invalid(format!("backend '{description}' names no error model")));
    }
    let readout = Arc::new(crate::cim::em::resolve(&model.join(","), spec)?);
    // The model must fit the macro's ADC, as for training.
    crate::cim::CimRuntime::new(
        spec.clone(),
        readout.clone(),
        crate::cim::ReadoutMode::Sampled,
        crate::cim::Estimator::Ste,
    )?;
    Ok(Box::new(EmMacro::new(spec, readout, chip, noise)))
}
