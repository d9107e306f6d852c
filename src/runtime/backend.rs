//! The interface a macro implements, shaped like the hardware: arrays programmed with
//! weight codes once, then read with batches of input vectors; and the macros that ship
//! in-process (an ideal one and a simulated chip).

use crate::cim::conv::adc_codes;
use crate::cim::psum::{self, PackedWeights, Path};
use crate::cim::{Chip, DrawKey, DrawRun, MacroSpec, Readout};
use crate::{Error, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// What the runtime says about one batch of macro operations. A real chip may ignore
/// it; a simulated one keys its draws on it, so that it draws what the training-side
/// CIM layers draw for the same operation. C callbacks get it as it is
/// (`dnat_operation` in `include/dnat.h`).
#[repr(C)]
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
    /// Columns read: the array's first `columns` (the ones the layer's channels occupy;
    /// the others hold zero weights and their ADCs need not convert).
    pub columns: u32,
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
    /// Reads `n = inputs.len() / rows` operations on array `array`: `inputs[r · n + i]`
    /// is row `r`'s input code of operation `i` (below `2^input_bits_per_cycle`), and
    /// `out[c · n + i]` receives column `c`'s ADC code (within the ADC's range) for the
    /// first `op.columns` columns. Both are laid out row by row (column by column): each
    /// row's codes for the `n` operations side by side, as a wordline driver takes them
    /// and an ADC produces them.
    fn compute(
        &mut self,
        array: usize,
        op: &Operation,
        inputs: &[u16],
        out: &mut [i32],
    ) -> Result<()>;

    /// Another macro that reads what this one reads — the same chip, the same code for
    /// the same operation — its arrays not yet programmed: the runtime then runs several
    /// parts of a pass at once, each on its own copy, each thread's work in its cache.
    /// `None` (the default) for a macro that is one device: the runtime then reads it a
    /// batch of [`OPS_PER_CALL`](super::OPS_PER_CALL) operations at a time.
    fn replicate(&self) -> Option<Box<dyn MacroBackend>> {
        None
    }
}

/// What a simulated chip adds to the exact partial sums: its fixed pattern and its
/// read noise.
#[derive(Clone)]
struct ChipModel {
    readout: Arc<dyn Readout>,
    chip: Option<Chip>,
    noise: u64,
}

/// A macro simulated in-process: the exact integer partial sums of the programmed
/// codes (the CIM layers' own kernels, [`crate::cim::psum`]), converted by each column's
/// ADC as the CIM layers convert them, and read ideally or as a simulated chip.
pub struct SimulatedMacro {
    spec: MacroSpec,
    /// Each array's codes, packed as the partial-sum kernels take them (`None`: never
    /// programmed), and the fastest exact kernel for them.
    arrays: Vec<Option<(PackedWeights, Path)>>,
    chip: Option<ChipModel>,
    label: String,
}

/// Operations a thread reads at a time: small enough that a block's input words and
/// partial sums stay in cache while each column of it is converted and read.
const BLOCK: usize = 1024;

impl SimulatedMacro {
    /// The ideal macro: every ADC code is the exact partial sum's, `round(P / step)`
    /// clamped to the ADC's range (what the CIM layers read on the ideal macro).
    pub fn ideal(spec: &MacroSpec) -> Self {
        Self::with(spec, None, "ideal".into())
    }

    /// Chip `chip` of `readout`'s fixed pattern (the ADC column's gain and offset act on
    /// the analog sum before rounding), each readout drawn from the model at the key the
    /// training side's CIM layers use for the same operation (noise seed `noise`, the
    /// layer, the pass, the operation's number).
    pub fn chip(spec: &MacroSpec, readout: Arc<dyn Readout>, chip: u64, noise: u64) -> Self {
        let label = format!("em:{},chip={chip},noise={noise}", readout.label());
        let fixed = readout.chip(spec.adcs(), chip);
        Self::with(spec, Some(ChipModel { readout, chip: fixed, noise }), label)
    }

    fn with(spec: &MacroSpec, chip: Option<ChipModel>, label: String) -> Self {
        let arrays = (0..spec.arrays).map(|_| None).collect();
        SimulatedMacro { spec: spec.clone(), arrays, chip, label }
    }
}

impl MacroBackend for SimulatedMacro {
    fn name(&self) -> String {
        self.label.clone()
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
        let (lo, hi) = (self.spec.weight_min(), self.spec.weight_max());
        if let Some(bad) = weights.iter().find(|&&w| (w as i32) < lo || (w as i32) > hi) {
            return Err(Error::invalid(format!(
                "program: array {array}: weight code {bad} is outside the macro's {lo}..={hi}"
            )));
        }
        // The kernels take one channel's rows together: the array's columns.
        let packed = PackedWeights::of_array(weights, rows, cols);
        let path = Path::best_for(&packed);
        self.arrays[array] = Some((packed, path));
        Ok(())
    }

    fn replicate(&self) -> Option<Box<dyn MacroBackend>> {
        Some(Box::new(Self::with(&self.spec, self.chip.clone(), self.label.clone())))
    }

    fn compute(
        &mut self,
        array: usize,
        op: &Operation,
        inputs: &[u16],
        out: &mut [i32],
    ) -> Result<()> {
        let spec = &self.spec;
        let (rows, cols, adc) = (spec.rows, spec.columns, spec.adc);
        let Some((all, path)) = self.arrays.get(array).and_then(Option::as_ref) else {
            return Err(Error::invalid(format!("compute: array {array} was never programmed")));
        };
        let (n, used) = (inputs.len() / rows, op.columns as usize);
        if used == 0 || used > cols {
            return Err(Error::invalid(format!(
                "compute: {used} columns asked for; the arrays have 1 to {cols}"
            )));
        }
        if !inputs.len().is_multiple_of(rows) || out.len() != n * used {
            return Err(Error::invalid(format!(
                "compute: {} input codes and {} output slots are not {rows} and {used} per operation",
                inputs.len(),
                out.len()
            )));
        }
        let max = (1u32 << spec.input_bits_per_cycle) - 1;
        // One pass that vectorises (a parallel search item by item costs more than the
        // partial sums).
        let largest = inputs.par_chunks(1 << 14).map(|c| c.iter().fold(0, |a, &q| a.max(q))).max();
        if let Some(bad) = largest.filter(|&q| q as u32 > max) {
            return Err(Error::invalid(format!(
                "compute: input code {bad} is beyond the {}-bit cycle's {max}",
                spec.input_bits_per_cycle
            )));
        }
        let (planes, quads) = (spec.input_bits_per_cycle.div_ceil(8) as usize, rows.div_ceil(4));
        let inv_step = 1.0 / adc.step;
        let fewer = (used < cols).then(|| all.first_channels(used));
        let weights = fewer.as_ref().unwrap_or(all);
        let row = |c: usize| {
            (op.tile as u64 * spec.cycles() as u64 + op.cycle as u64) * op.channels as u64
                + op.first_channel as u64
                + c as u64
        };
        let key = self.chip.as_ref().map(|m| DrawKey::new(m.noise, op.layer as u64, op.pass));
        // Operations are independent (each draw is keyed by its own number): blocks of
        // them in parallel, each writing its piece of every column.
        let mut pieces: Vec<Vec<&mut [i32]>> = (0..n.div_ceil(BLOCK)).map(|_| Vec::new()).collect();
        for column in out.chunks_mut(n) {
            for (blk, piece) in column.chunks_mut(BLOCK).enumerate() {
                pieces[blk].push(piece);
            }
        }
        pieces.into_par_iter().enumerate().for_each(|(blk, mut columns)| {
            let (i0, m) = (blk * BLOCK, columns[0].len());
            // The thread's words, partial sums and readouts, allocated once (a block runs
            // no parallel work inside, so no other block takes them meanwhile; every
            // value is written before it is read).
            BUFFERS.with_borrow_mut(|(words, sums, read)| {
                words.resize(quads * m, 0);
                sums.resize(used * m, 0);
                read.resize(m, 0.0);
                let (words, sums, read) =
                    (&mut words[..quads * m], &mut sums[..used * m], &mut read[..m]);
                // P[c][i] = Σ_r w[r][c]·x[r][i], one byte plane at a time, the high first.
                for plane in (0..planes).rev() {
                    pack(inputs, n, i0, m, plane as u32, words);
                    if plane + 1 < planes {
                        sums.iter_mut().for_each(|v| *v <<= 8);
                    }
                    let accumulate = plane + 1 < planes;
                    psum::plane_product(*path, weights, 0, words, quads, m, sums, accumulate);
                }
                for (c, (sums, codes)) in sums.chunks_exact(m).zip(columns.iter_mut()).enumerate() {
                    let co = op.first_channel as usize + c;
                    // The ADC column's fixed pattern acts on the analog sum, before rounding;
                    // the conversion is the CIM layers' own.
                    let (gain, offset) = self
                        .chip
                        .as_ref()
                        .and_then(|m| m.chip.as_ref())
                        .map_or((1.0, 0.0), |ch| ch.column(spec.adc_of(op.tile as usize, co)));
                    adc_codes(sums, inv_step * gain, offset, adc, codes, None);
                    if let (Some(model), Some(key)) = (&self.chip, key) {
                        let op0 = row(c) * op.elements + op.first_element + i0 as u64;
                        model.readout.sample_run(codes, DrawRun { key, op0, stride: 1 }, read);
                        // A readout is a code of the ADC's range (clamped again so that the
                        // conversion is sound whatever the model gives, and vectorises).
                        let (lo, hi) = (adc.kmin as f32, adc.kmax as f32);
                        #[allow(clippy::manual_clamp)]
                        codes.iter_mut().zip(&*read).for_each(|(k, &r)| {
                            // SAFETY: max/min make any value (NaN too) one within the ADC's
                            // range, below 2^24 in magnitude (`MacroSpec::validate`).
                            *k = unsafe { r.max(lo).min(hi).to_int_unchecked::<i32>() }
                        });
                    }
                }
            })
        });
        Ok(())
    }
}

thread_local! {
    /// A thread's buffers for [`SimulatedMacro`]'s blocks: words, partial sums, readouts.
    static BUFFERS: std::cell::RefCell<(Vec<u32>, Vec<i32>, Vec<f32>)> = Default::default();
}

/// Four rows of one byte plane of operations `i0..i0 + m` of `x` (`rows` runs of `n`
/// codes) to a word, laid out as the partial-sum kernels read them: `words[q·m + i]`
/// holds rows `4q..4q + 4` of operation `i0 + i`, the first in the low byte, zero past
/// the last row.
fn pack(x: &[u16], n: usize, i0: usize, m: usize, plane: u32, words: &mut [u32]) {
    let rows = x.len() / n;
    let shift = 8 * plane;
    let zeros = [0u16; BLOCK];
    let run = |r: usize| if r < rows { &x[r * n + i0..r * n + i0 + m] } else { &zeros[..m] };
    let byte = |v: u16| (v as u32 >> shift) & 0xFF;
    for (q, dst) in words.chunks_exact_mut(m).enumerate() {
        let (a, b, c, d) = (run(4 * q), run(4 * q + 1), run(4 * q + 2), run(4 * q + 3));
        for (i, w) in dst.iter_mut().enumerate() {
            *w = byte(a[i]) | byte(b[i]) << 8 | byte(c[i]) << 16 | byte(d[i]) << 24;
        }
    }
}

/// The backend a description names, for a macro of geometry `spec`: `ideal`;
/// `em:MODEL[,chip=S][,noise=N]` — a simulated chip `S` (default 0) of the error model
/// `MODEL` (a preset, a preset with overrides, or a D-MAC-EM file), read with noise seed
/// `N` (default 1000, as `dnat eval`'s first noise seed); or `exec:CMD` — a macro host
/// process (`docs/protocol.md`), each reply awaited at most `timeout`.
pub fn parse(
    description: &str,
    spec: &MacroSpec,
    timeout: std::time::Duration,
) -> Result<Box<dyn MacroBackend>> {
    if description == "ideal" {
        return Ok(Box::new(SimulatedMacro::ideal(spec)));
    }
    #[cfg(unix)]
    if let Some(command) = description.strip_prefix("exec:") {
        if command.trim().is_empty() {
            return Err(Error::invalid("backend 'exec:' names no command".to_string()));
        }
        return Ok(Box::new(super::ExecMacro::start(command, spec, timeout)?));
    }
    #[cfg(not(unix))]
    let _ = timeout;
    let Some(rest) = description.strip_prefix("em:") else {
        return Err(Error::invalid(format!(
            "backend '{description}': expected 'ideal', 'em:MODEL[,chip=S][,noise=N]' or 'exec:CMD'"
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
    Ok(Box::new(SimulatedMacro::chip(spec, readout, chip, noise)))
}
