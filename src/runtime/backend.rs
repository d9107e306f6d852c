//! The interface a macro implements, shaped like the hardware: arrays programmed with
//! weight codes once, then read with batches of input vectors.

use crate::cim::conv::adc_codes;
use crate::cim::{Chip, DrawKey, DrawRun, MacroSpec, Readout};
use crate::{Error, Result};
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
    weights: Vec<Option<Vec<i8>>>,
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
        self.weights[array] = Some(weights.to_vec());
        Ok(())
    }
    /// The exact partial sums `P[i · columns + c]` of `inputs` on `array`.
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
        let mut p = vec![0i32; inputs.len() / rows * cols];
        for (x, out) in inputs.chunks_exact(rows).zip(p.chunks_exact_mut(cols)) {
            for (r, &q) in x.iter().enumerate() {
                if q != 0 {
                    let wr = &w[r * cols..(r + 1) * cols];
                    out.iter_mut().zip(wr).for_each(|(o, &wc)| *o += q as i32 * wc as i32);
                }
            }
        }
        Ok(p)
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
        let n = p.len() / cols;
        let key = DrawKey::new(self.noise, op.layer as u64, op.pass);
        let (mut sums, mut codes, mut read) = (vec![0i32; n], vec![0i32; n], vec![0.0f32; n]);
        let inv_step = 1.0 / adc.step;
        for c in 0..cols.min(op.channels.saturating_sub(op.first_channel) as usize) {
            let co = op.first_channel as usize + c;
            // The ADC column's fixed pattern acts on the analog sum, before rounding, and
            // the conversion is the CIM layers' own.
            let (gain, offset) = self
                .chip
                .as_ref()
                .map_or((1.0, 0.0), |ch| ch.column(spec.adc_of(op.tile as usize, co)));
            sums.iter_mut().enumerate().for_each(|(i, s)| *s = p[i * cols + c]);
            adc_codes(&sums, inv_step * gain, offset, adc, &mut codes, None);
            let row = (op.tile as u64 * spec.cycles() as u64 + op.cycle as u64)
                * op.channels as u64
                + co as u64;
            let run = DrawRun { key, op0: row * op.elements + op.first_element, stride: 1 };
            self.readout.sample_run(&codes, run, &mut read);
            for (i, &r) in read.iter().enumerate() {
                out[i * cols + c] = r as i32;
            }
        }
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
