//! The codes a CIM layer's forward keeps for the statistical backward, in as few bits
//! as the ADC needs.
//!
//! A saved code is `k − kmin`, or `levels` for a saturated partial sum
//! ([`super::adc_codes`]): `levels + 1` values, so a 9-bit ADC's codes need 10 bits. Two
//! bytes each were most of a CIM training step's memory (ResNet20: 178 of 485 MiB).
//! Here each code's low byte is kept whole and its high bits — none, 1, 2, 4 or 8, the
//! fewest that hold `levels` — packed `8 / high_bits` to a byte, low code in the low
//! bits: 1.25 bytes per code for the default 9-bit ADC, one for an ADC of at most 255
//! levels. Codes are stored and read by rows (one output channel's operations of one
//! tile, cycle and image group), each row's high bits starting on a byte; a row's
//! high byte `j` holds the high bits of codes `j`, `j + n`, `j + 2n`, … (`n` high bytes
//! per row), so packing and unpacking are element-wise passes over contiguous runs.

/// Rows of saved codes, packed (see the module documentation).
pub(super) struct SavedCodes {
    /// Every code's low byte, `row` per row.
    low: Vec<u8>,
    /// The high bits, `high_row` bytes per row.
    high: Vec<u8>,
    /// High bits per code: 0, 1, 2, 4 or 8.
    high_bits: u32,
    /// Codes per row.
    row: usize,
    /// Bytes of high bits per row.
    high_row: usize,
}

impl SavedCodes {
    /// Room for `rows` rows of `row` codes, each at most `levels`.
    pub(super) fn new(levels: usize, rows: usize, row: usize) -> Self {
        let high_bits = match levels >> 8 {
            0 => 0,
            1 => 1,
            2..=3 => 2,
            4..=15 => 4,
            _ => 8,
        };
        assert!(levels < 1 << 16, "saved codes are at most 16 bits ({levels} levels)");
        let high_row = (row * high_bits as usize).div_ceil(8);
        SavedCodes {
            low: Vec::with_capacity(rows * row),
            high: Vec::with_capacity(rows * high_row),
            high_bits,
            row,
            high_row,
        }
    }

    /// Rows stored so far.
    pub(super) fn rows(&self) -> usize {
        self.low.len() / self.row.max(1)
    }

    /// Appends one row of `row` codes (each below `2^(8 + high_bits)`, as `new` sized).
    pub(super) fn push_row(&mut self, codes: &[u16]) {
        assert_eq!(codes.len(), self.row, "a row of saved codes has {} codes", self.row);
        self.low.extend(codes.iter().map(|&c| c as u8));
        let b = self.high_bits;
        if b == 0 {
            debug_assert!(codes.iter().all(|&c| c >> 8 == 0));
            return;
        }
        debug_assert!(codes.iter().all(|&c| c >> (8 + b) == 0), "a code beyond {} bits", 8 + b);
        // High byte j holds codes j, j + n, j + 2n, … (n = `high_row`), lowest first: each
        // part of the row is one contiguous run, so both loops vectorise.
        let n = self.high_row;
        let at = self.high.len();
        self.high.resize(at + n, 0);
        let high = &mut self.high[at..];
        for (part, run) in codes.chunks(n).enumerate() {
            let shift = part as u32 * b;
            high.iter_mut().zip(run).for_each(|(h, &c)| *h |= ((c >> 8) << shift) as u8);
        }
    }

    /// Row `r` into `out` (resized to the row's length).
    pub(super) fn row_into(&self, r: usize, out: &mut Vec<u16>) {
        let n = self.row;
        let low = &self.low[r * n..][..n];
        out.clear();
        out.extend(low.iter().map(|&l| l as u16));
        let b = self.high_bits;
        if b == 0 {
            return;
        }
        let mask = (1u16 << b) - 1;
        let high = &self.high[r * self.high_row..][..self.high_row];
        for (part, run) in out.chunks_mut(self.high_row).enumerate() {
            let shift = part as u32 * b;
            run.iter_mut().zip(high).for_each(|(c, &h)| *c |= ((h as u16 >> shift) & mask) << 8);
        }
    }

    /// Bytes held (both planes).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.low.len() + self.high.len()
    }
}

#[cfg(test)]
mod tests {
    use super::SavedCodes;

    /// Every code an ADC of `levels` levels saves (0..=levels) comes back from every
    /// position of rows whose length is no multiple of a high byte's codes, for every
    /// width of high bits; the memory is the width's.
    #[test]
    fn rows_come_back_as_they_went_in() {
        for (levels, bytes_per_8) in [
            (100, 8),
            (255, 8),
            (256, 9),
            (512, 10),
            (1000, 10),
            (4095, 12),
            (4096, 16),
            (65_534, 16),
        ] {
            let row = 13;
            let rows: Vec<Vec<u16>> = (0..7)
                .map(|r| {
                    (0..row).map(|i| ((r * 7919 + i * 104_729) % (levels + 1)) as u16).collect()
                })
                .collect();
            let mut s = SavedCodes::new(levels, rows.len(), row);
            rows.iter().for_each(|r| s.push_row(r));
            assert_eq!(s.rows(), rows.len());
            let mut got = Vec::new();
            for (r, want) in rows.iter().enumerate() {
                s.row_into(r, &mut got);
                assert_eq!(&got, want, "levels {levels}, row {r}");
            }
            // The extremes too.
            let mut e = SavedCodes::new(levels, 1, 3);
            e.push_row(&[0, levels as u16, (levels / 2) as u16]);
            e.row_into(0, &mut got);
            assert_eq!(got, [0, levels as u16, (levels / 2) as u16]);
            let per_row = (row * bytes_per_8).div_ceil(8);
            assert_eq!(s.bytes(), rows.len() * per_row, "levels {levels}");
        }
    }
}
