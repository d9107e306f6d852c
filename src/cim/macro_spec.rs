//! The description of a CIM macro: how a dot product is cut into macro operations and
//! how each one is read out.
//!
//! A layer's reduction axis K is cut into **tiles** of `rows` consecutive elements (the
//! macro's activated rows). Input codes are unsigned `input_bits`-bit integers, weight
//! codes signed `weight_bits`-bit integers (`weight_bits = 1` means ±1). Each tile's
//! integer partial sum goes through the **ADC**: the ideal code is
//! `k = clamp(round(P / step), kmin, kmax)` (ties to even) and the readout is `j · step` for the
//! measured code `j` (see [`super::ErrorModel`]).
//!
//! Inputs can be applied a few bits at a time: with `input_bits_per_cycle = b`, a tile
//! takes `input_bits / b` cycles; cycle `c` multiplies the bits `[c·b, (c+1)·b)` of each
//! input code, is read out on its own, and the readouts are shift-added
//! (`Σ_c 2^(c·b) · R_c`). `b = input_bits` is one readout per tile (the default);
//! `b = 1` is a bit-serial macro.
//!
//! **Array organisation.** The macro has `arrays` arrays of `rows` rows, each with
//! `columns` ADC columns. A layer's weight matrix (K × Cout) is laid on them the way a
//! weight-stationary macro holds it: tile `t` (rows `[t·rows, (t+1)·rows)`) of output
//! channel `co` sits in array `t mod arrays`, column `co mod columns`, so its readouts
//! go through ADC [`MacroSpec::adc_of`]` = (t mod arrays)·columns + (co mod columns)`.
//! The tiles of one output channel land on different arrays (different ADCs, each with
//! its own fixed pattern, see [`super::chip`]) until there are more tiles than arrays;
//! every layer is loaded onto the same macro in turn, so layers share the ADCs.

use crate::{Error, Result};

/// The ADC: ideal code range and the partial-sum value of one code step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adc {
    /// The lowest ideal code.
    pub kmin: i32,
    /// The highest ideal code.
    pub kmax: i32,
    /// The partial-sum value of one code (code j reads out as `j · step`); positive.
    pub step: f32,
}

impl Adc {
    /// The ideal ADC code of a partial sum (half-way values round to the even code,
    /// as IEEE rounding does; one instruction, so the layers' code loops vectorise).
    #[inline]
    pub fn code(&self, psum: f32) -> i32 {
        ((psum * (1.0 / self.step)).round_ties_even() as i32).clamp(self.kmin, self.kmax)
    }
    /// Number of codes, `kmax − kmin + 1` (0 for an empty range).
    pub fn levels(&self) -> usize {
        (self.kmax as i64 - self.kmin as i64 + 1).max(0) as usize
    }
}

/// A CIM macro: its tile length, input and weight code widths, cycles, ADC and array
/// organisation (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct MacroSpec {
    /// The macro's name, shown in reports and recorded in checkpoints and exports.
    pub name: String,
    /// Activated rows: the tile length along the reduction axis.
    pub rows: usize,
    /// Unsigned input code bits.
    pub input_bits: u32,
    /// Signed weight code bits (1 = binary ±1).
    pub weight_bits: u32,
    /// Input bits applied per cycle (= `input_bits`: one readout per tile).
    pub input_bits_per_cycle: u32,
    /// The ADC each tile's (or cycle's) partial sum is read through.
    pub adc: Adc,
    /// Arrays of `rows` rows (tiles of one output channel go to different arrays).
    pub arrays: usize,
    /// ADC columns per array (output channels share columns modulo this).
    pub columns: usize,
}

impl Default for MacroSpec {
    /// The design of DESIGN.md §2: 64 rows, 8-bit unsigned inputs, 4-bit signed weights,
    /// one readout per tile through a 9-bit ADC (codes −256..=255) of step 32, which
    /// covers partial sums of ±8192 — a few standard deviations of a trained network's
    /// tiles — while adding ADC rounding of at most ±16.
    fn default() -> Self {
        MacroSpec {
            name: "dnat-w4a8".into(),
            rows: 64,
            input_bits: 8,
            weight_bits: 4,
            input_bits_per_cycle: 8,
            adc: Adc { kmin: -256, kmax: 255, step: 32.0 },
            arrays: 4,
            columns: 64,
        }
    }
}

impl MacroSpec {
    /// Shaped like the paper's fabricated macro as reported: 64 activated rows,
    /// 7-bit amplitude-coded inputs, 1-bit weights, 7-bit partial-sum readout.
    /// (Signed 7-bit codes −64..=63 with step 128 cover the full ±8128 range.)
    pub fn paper_chip() -> Self {
        MacroSpec {
            name: "paper-chip-64r-a7-w1-p7".into(),
            rows: 64,
            input_bits: 7,
            weight_bits: 1,
            input_bits_per_cycle: 7,
            adc: Adc { kmin: -64, kmax: 63, step: 128.0 },
            arrays: 4,
            columns: 64,
        }
    }

    /// A bit-serial variant of the default macro: one input bit per cycle, with an ADC
    /// sized for one cycle's partial sums (|P| ≤ 64·8 = 512).
    pub fn bit_serial() -> Self {
        MacroSpec {
            name: "dnat-w4a8-bitserial".into(),
            input_bits_per_cycle: 1,
            adc: Adc { kmin: -128, kmax: 127, step: 4.0 },
            ..MacroSpec::default()
        }
    }

    /// A macro from the words a user gives (`--macro`, the config's `macro`): a preset
    /// name (`default`, `paper-chip`, `bit-serial`); a description, `key=value` pairs
    /// separated by commas, starting from `base` (default `default`) —
    /// `rows=32,input_bits=8,weight_bits=4,adc_bits=7,step=64`; or a file holding such
    /// pairs, one per line (`#` comments). Keys: `base`, `name`, `rows`, `input_bits`,
    /// `weight_bits`, `bits_per_cycle`, `adc_bits` (signed codes −2^(b−1)..2^(b−1)−1),
    /// `kmin`, `kmax`, `step`, `arrays`, `columns`. The result is validated; errors
    /// name the key (and the file and line).
    pub fn parse(spec: &str) -> Result<Self> {
        if let Ok(m) = Self::preset(spec) {
            return Ok(m);
        }
        let path = std::path::Path::new(spec);
        if spec.contains('=') && !path.is_file() {
            return Self::from_pairs(spec.split(',').map(|kv| (0, kv)))
                .map_err(|(_, e)| Error::invalid(format!("macro '{spec}': {e}")));
        }
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let lines = text
                .lines()
                .enumerate()
                .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("")))
                .filter(|(_, l)| !l.trim().is_empty());
            return Self::from_pairs(lines).map_err(|(line, e)| {
                Error::format(path, if line > 0 { format!("line {line}: {e}") } else { e })
            });
        }
        Err(Error::invalid(format!(
            "macro '{spec}' is neither a preset (default, paper-chip, bit-serial), a description (rows=64,adc_bits=9,…) nor an existing file"
        )))
    }

    /// Builds a macro from (line, `key=value`) pairs; errors carry the line (0: none).
    fn from_pairs<'a>(
        pairs: impl Iterator<Item = (usize, &'a str)>,
    ) -> std::result::Result<Self, (usize, String)> {
        let pairs: Vec<(usize, &str, &str)> = pairs
            .map(|(line, kv)| {
                kv.split_once('=')
                    .map(|(k, v)| (line, k.trim(), v.trim()))
                    .ok_or((line, format!("'{}' is not key=value", kv.trim())))
            })
            .collect::<std::result::Result<_, _>>()?;
        let base = pairs.iter().find(|p| p.1 == "base").map_or("default", |p| p.2);
        let mut m = Self::preset(base).map_err(|e| (0, e.to_string()))?;
        m.name = format!("custom-{}", m.name);
        // A base read once per tile stays so when only its input bits change.
        let one_readout = m.input_bits_per_cycle == m.input_bits;
        let mut seen = std::collections::HashSet::new();
        for &(line, k, v) in &pairs {
            if !seen.insert(k) {
                return Err((line, format!("'{k}' is set twice")));
            }
            let num = |v: &str| {
                v.parse::<i64>().map_err(|_| (line, format!("{k} = '{v}' is not a whole number")))
            };
            let small = |v: &str, lo: i64, hi: i64| {
                num(v).and_then(|n| {
                    if (lo..=hi).contains(&n) {
                        Ok(n)
                    } else {
                        Err((line, format!("{k} = {n} is outside {lo}..={hi}")))
                    }
                })
            };
            match k {
                "base" => {}
                "name" => {
                    if v.is_empty()
                        || v.chars().any(|c| c.is_control() || c.is_whitespace() || c == ',')
                    {
                        return Err((
                            line,
                            format!(
                                "name = '{}': no spaces, commas or control characters",
                                v.escape_debug()
                            ),
                        ));
                    }
                    m.name = v.to_string()
                }
                "rows" => m.rows = small(v, 1, 1 << 20)? as usize,
                "input_bits" => m.input_bits = small(v, 1, 16)? as u32,
                "weight_bits" => m.weight_bits = small(v, 1, 8)? as u32,
                "bits_per_cycle" => m.input_bits_per_cycle = small(v, 1, 16)? as u32,
                "adc_bits" if seen.contains("kmin") || seen.contains("kmax") => {
                    return Err((
                        line,
                        "adc_bits and kmin/kmax both set the ADC's codes: give one".into(),
                    ));
                }
                "kmin" | "kmax" if seen.contains("adc_bits") => {
                    return Err((
                        line,
                        "adc_bits and kmin/kmax both set the ADC's codes: give one".into(),
                    ));
                }
                "adc_bits" => {
                    let b = small(v, 1, 16)? as u32;
                    (m.adc.kmin, m.adc.kmax) = (-(1i32 << (b - 1)), (1i32 << (b - 1)) - 1);
                }
                "kmin" => m.adc.kmin = small(v, -(1 << 24) + 1, (1 << 24) - 1)? as i32,
                "kmax" => m.adc.kmax = small(v, -(1 << 24) + 1, (1 << 24) - 1)? as i32,
                "step" => {
                    let s: f32 =
                        v.parse().map_err(|_| (line, format!("step = '{v}' is not a number")))?;
                    if !(s.is_normal() && s > 0.0) {
                        return Err((
                            line,
                            format!("step = {v} must be a positive (normal) number"),
                        ));
                    }
                    m.adc.step = s
                }
                "arrays" => m.arrays = small(v, 1, 1 << 20)? as usize,
                "columns" => m.columns = small(v, 1, 1 << 20)? as usize,
                _ => {
                    return Err((
                        line,
                        format!(
                            "unknown key '{k}' (base, name, rows, input_bits, weight_bits, bits_per_cycle, adc_bits, kmin, kmax, step, arrays, columns)"
                        ),
                    ));
                }
            }
        }
        if one_readout && !seen.contains("bits_per_cycle") {
            m.input_bits_per_cycle = m.input_bits;
        }
        m.validate().map_err(|e| (0, e.to_string()))?;
        Ok(m)
    }

    /// The whole description as `key=value` pairs: what `parse` reads back to the same
    /// macro, and what checkpoints record.
    pub fn to_description(&self) -> String {
        format!(
            "name={},rows={},input_bits={},weight_bits={},bits_per_cycle={},kmin={},kmax={},step={},arrays={},columns={}",
            self.name,
            self.rows,
            self.input_bits,
            self.weight_bits,
            self.input_bits_per_cycle,
            self.adc.kmin,
            self.adc.kmax,
            self.adc.step,
            self.arrays,
            self.columns
        )
    }

    /// The macro of a preset name: `default` (or `dnat-w4a8`), `paper-chip`, `bit-serial`;
    /// errors on any other name.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "default" | "dnat-w4a8" => Ok(MacroSpec::default()),
            "paper-chip" => Ok(MacroSpec::paper_chip()),
            "bit-serial" => Ok(MacroSpec::bit_serial()),
            _ => Err(Error::invalid(format!(
                "unknown macro '{name}' (known: default, paper-chip, bit-serial)"
            ))),
        }
    }

    /// Checks the description is consistent (bit widths in range, bits per cycle dividing input
    /// bits, 1..=2^20 ADC columns, kmin ≤ kmax with a positive step, codes and partial sums
    /// exact in f32); the error names the macro and the problem.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(format!("macro '{}': {m}", self.name)));
        if self.rows == 0 {
            return bad("rows must be ≥ 1".into());
        }
        if !(1..=16).contains(&self.input_bits) || !(1..=8).contains(&self.weight_bits) {
            return bad(format!(
                "input bits {} / weight bits {} out of range (1..=16 / 1..=8)",
                self.input_bits, self.weight_bits
            ));
        }
        if self.input_bits_per_cycle == 0
            || !self.input_bits.is_multiple_of(self.input_bits_per_cycle)
        {
            return bad(format!(
                "input bits per cycle {} must divide input bits {}",
                self.input_bits_per_cycle, self.input_bits
            ));
        }
        if self.arrays == 0 || self.columns == 0 || self.arrays * self.columns > 1 << 20 {
            return bad(format!(
                "{} arrays of {} columns: need 1..=2^20 ADC columns in all",
                self.arrays, self.columns
            ));
        }
        // No 16-bit cap here (an ideal readout needs no table; error models and the saved
        // codes of the statistical estimator check their own limits); widths are i64.
        if self.adc.kmin > self.adc.kmax || !(self.adc.step.is_finite() && self.adc.step > 0.0) {
            return bad(format!(
                "ADC codes {}..={} with step {} are not a range",
                self.adc.kmin, self.adc.kmax, self.adc.step
            ));
        }
        // Codes are converted and compared in f32 (the readout path), so they must be
        // exact there: integers below 2^24 in magnitude.
        if self.adc.kmin.unsigned_abs() >= 1 << 24 || self.adc.kmax.unsigned_abs() >= 1 << 24 {
            return bad(format!(
                "ADC codes {}..={} would not be exact in f32; keep them within ±(2^24 − 1)",
                self.adc.kmin, self.adc.kmax
            ));
        }
        // Partial sums must stay exact in f32 (integers below 2^24).
        let max_p = self.rows as f64 * self.cycle_max_input() as f64 * self.weight_max_abs() as f64;
        if max_p >= (1u64 << 24) as f64 {
            return bad(format!(
                "partial sums up to {max_p} would not be exact in f32; use fewer rows or bits"
            ));
        }
        Ok(())
    }

    /// Readout cycles per tile: `input_bits / input_bits_per_cycle`.
    pub fn cycles(&self) -> u32 {
        self.input_bits / self.input_bits_per_cycle
    }
    /// Largest input code.
    pub fn input_max(&self) -> u32 {
        (1u32 << self.input_bits) - 1
    }
    /// Largest input code applied in one cycle.
    pub fn cycle_max_input(&self) -> u32 {
        (1u32 << self.input_bits_per_cycle) - 1
    }
    /// Weight codes are `weight_min()..=weight_max()` (±1 for one bit).
    pub fn weight_max(&self) -> i32 {
        if self.weight_bits == 1 { 1 } else { (1 << (self.weight_bits - 1)) - 1 }
    }
    /// The smallest weight code: `−2^(weight_bits − 1)`, or −1 for one bit.
    pub fn weight_min(&self) -> i32 {
        if self.weight_bits == 1 { -1 } else { -(1 << (self.weight_bits - 1)) }
    }
    fn weight_max_abs(&self) -> i32 {
        self.weight_max().max(-self.weight_min())
    }
    /// ADC columns in all (`arrays · columns`).
    pub fn adcs(&self) -> usize {
        self.arrays * self.columns
    }
    /// The ADC column that reads tile `tile` of output channel `channel` (module docs).
    #[inline]
    pub fn adc_of(&self, tile: usize, channel: usize) -> usize {
        (tile % self.arrays) * self.columns + channel % self.columns
    }
    /// Number of tiles a reduction axis of length `k` is cut into: ⌈k / rows⌉.
    pub fn tiles(&self, k: usize) -> usize {
        k.div_ceil(self.rows)
    }
    /// The whole description in one line, for people.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} rows, {}-bit inputs ({} per cycle), {}-bit weights, ADC codes {}..={} step {}, {} arrays × {} ADC columns",
            self.name,
            self.rows,
            self.input_bits,
            self.input_bits_per_cycle,
            self.weight_bits,
            self.adc.kmin,
            self.adc.kmax,
            self.adc.step,
            self.arrays,
            self.columns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_shaped_as_described() {
        for n in ["default", "paper-chip", "bit-serial"] {
            MacroSpec::preset(n).unwrap().validate().unwrap();
        }
        let d = MacroSpec::default();
        assert_eq!((d.weight_min(), d.weight_max(), d.input_max(), d.cycles()), (-8, 7, 255, 1));
        let p = MacroSpec::paper_chip();
        assert_eq!(
            (p.weight_min(), p.weight_max(), p.input_max(), p.adc.levels()),
            (-1, 1, 127, 128)
        );
        assert_eq!(MacroSpec::bit_serial().cycles(), 8);
        assert_eq!(d.adc.code(47.9), 1);
        assert_eq!(d.adc.code(-1e9), -256);
        let mut bad = d.clone();
        bad.input_bits_per_cycle = 3;
        assert!(bad.validate().unwrap_err().to_string().contains("must divide"));
        // Tiles of one channel on different arrays; channels on columns modulo 64.
        assert_eq!(
            (d.adc_of(0, 5), d.adc_of(1, 5), d.adc_of(4, 5), d.adc_of(2, 69)),
            (5, 69, 5, 133)
        );
        assert_eq!(d.adcs(), 256);
    }

    #[test]
    fn descriptions_and_files_parse_and_name_their_errors() {
        let m = MacroSpec::parse("rows=32,input_bits=8,weight_bits=4,adc_bits=7,step=64").unwrap();
        assert_eq!(
            (m.rows, m.adc.kmin, m.adc.kmax, m.adc.step, m.input_bits_per_cycle),
            (32, -64, 63, 64.0, 8)
        );
        assert_eq!(MacroSpec::parse(&m.to_description()).unwrap(), m);
        let b = MacroSpec::parse("base=bit-serial,rows=16").unwrap();
        assert_eq!((b.rows, b.input_bits_per_cycle, b.adc), (16, 1, MacroSpec::bit_serial().adc));
        assert_eq!(MacroSpec::parse("paper-chip").unwrap(), MacroSpec::paper_chip());
        for (spec, msg) in [
            ("rows=0", "rows = 0 is outside 1..=1048576"),
            ("rows=64,rows=32", "'rows' is set twice"),
            ("adc_bits=40", "adc_bits = 40 is outside"),
            ("step=nan", "step = nan must be a positive"),
            ("kmin=-10,adc_bits=7", "give one"),
            ("colour=red", "unknown key 'colour'"),
            ("input_bits=7,bits_per_cycle=2", "must divide"),
            ("rows=100000,weight_bits=8,input_bits=16", "not be exact in f32"),
            ("nosuchmacro", "neither a preset"),
        ] {
            let e = MacroSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(msg), "{spec}: {e}");
        }
        let dir = std::env::temp_dir().join(format!("dnat-macro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("chip.macro");
        std::fs::write(
            &f,
            "# our test chip\nname = chip-a\nrows = 32\nadc_bits = 7 # signed\nstep = 64\n",
        )
        .unwrap();
        let c = MacroSpec::parse(f.to_str().unwrap()).unwrap();
        assert_eq!((c.name.as_str(), c.rows, c.adc.kmax), ("chip-a", 32, 63));
        std::fs::write(&f, "rows = 32\nstep = -1\n").unwrap();
        let e = MacroSpec::parse(f.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("chip.macro") && e.contains("line 2") && e.contains("step"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
