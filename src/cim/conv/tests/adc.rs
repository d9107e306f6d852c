//! The vectorised ADC conversion and `E = dY ∘ slope` paths against their scalar
//! definitions, bit for bit.

use super::*;
use crate::cim::conv::adc::adc_codes_on;
use crate::cim::conv::backward::{dy_times_slope, dy_times_slope_on};

/// The ADC conversion (vectorised where the CPU allows) is the definition, written out
/// here: the code of `P·scale + offset` rounded half to even and clamped to the range,
/// saved as `k − kmin`, or as `levels` where the rounded value lies beyond the range or is
/// NaN (read as below it). Runs not a multiple of 16; ties; sums at ±(2^24 − 1); column
/// gains that are 0, negative, infinite or NaN; ranges that touch or exclude zero.
#[test]
fn adc_paths_are_the_scalar_conversion_exactly() {
    use std::mem::MaybeUninit;
    let definition = |p: i32, scale: f32, offset: f32, adc: Adc| -> (i32, u16) {
        let saturated = adc.levels() as u16;
        let x = p as f32 * scale + offset;
        if x.is_nan() {
            return (adc.kmin, saturated);
        }
        let r = x.round_ties_even();
        if r < adc.kmin as f32 {
            (adc.kmin, saturated)
        } else if r > adc.kmax as f32 {
            (adc.kmax, saturated)
        } else {
            (r as i32, (r as i32 - adc.kmin) as u16)
        }
    };
    for (kmin, kmax, step) in [(-256, 255, 32.0f32), (0, 15, 1.0), (1, 7, 2.0), (-8, -1, 4.0)] {
        let adc = Adc { kmin, kmax, step };
        for (gain, offset) in [
            (1.0f32, 0.0f32),
            (0.97, 0.5),
            (1.03, -0.37),
            (0.0, 0.25),
            (-1.0, 0.0),
            (f32::INFINITY, 0.0),
            (f32::NAN, 0.0),
        ] {
            let scale = gain / step;
            for n in [0usize, 1, 15, 16, 17, 100, 1027] {
                let sums: Vec<i32> = (0..n)
                    .map(|i| match i % 9 {
                        0 => (1 << 24) - 1,
                        1 => -(1 << 24) + 1,
                        2 => (i as i32 % 40 - 20) * step as i32 / 2, // ties and near-ties
                        _ => ((i * 104_729) % 20_011) as i32 - 10_005,
                    })
                    .collect();
                for isa in Kernel::ALL.into_iter().filter(|k| k.supported()) {
                    let mut codes = vec![i32::MIN; n];
                    let mut saved = vec![MaybeUninit::new(u16::MAX); n];
                    adc_codes_on(isa, &sums, scale, offset, adc, &mut codes, Some(&mut saved));
                    let mut codes_only = vec![i32::MIN; n];
                    adc_codes_on(isa, &sums, scale, offset, adc, &mut codes_only, None);
                    for i in 0..n {
                        let (k, sv) = definition(sums[i], scale, offset, adc);
                        // SAFETY: the buffer was initialised above (and adc_codes writes every slot).
                        let got = unsafe { saved[i].assume_init() };
                        assert_eq!(
                            (codes[i], got, codes_only[i]),
                            (k, sv, k),
                            "{}: sum {} of {n} ({}), gain {gain}, offset {offset}, ADC {kmin}..={kmax}",
                            isa.name(),
                            i,
                            sums[i]
                        );
                    }
                }
            }
        }
    }
}

/// Every vectorised `E = dY ∘ slope` pass equals the scalar formula bit for bit, on runs
/// that are not a multiple of 16, with every code of the table (the saturated one too).
#[test]
fn slope_times_dy_is_the_scalar_formula_exactly() {
    let table: Vec<f32> = (0..513)
        .map(|i| if i == 512 { 0.0 } else { 0.7 + (i as f32 * 0.37).sin() * 0.3 })
        .collect();
    for n in [0, 1, 15, 16, 17, 100, 1027] {
        let codes: Vec<u16> = (0..n).map(|i| ((i * 7919) % 513) as u16).collect();
        let dy: Vec<f32> =
            (0..n).map(|i| ((i * 104729 % 997) as f32 / 300.0 - 1.6) * 1e-3).collect();
        let sh = 0.93f32;
        for isa in Kernel::ALL.into_iter().filter(|k| k.supported()) {
            let mut got = vec![f32::NAN; n];
            dy_times_slope_on(isa, &mut got, &dy, &codes, &table, sh);
            for i in 0..n {
                let want = dy[i] * (0.0 + sh * table[codes[i] as usize]);
                assert_eq!(got[i].to_bits(), want.to_bits(), "{}: element {i} of {n}", isa.name());
            }
        }
    }
}

/// A code beyond the table is refused, not read out of bounds.
#[test]
#[should_panic(expected = "beyond the slope table")]
fn slope_times_dy_refuses_a_code_beyond_the_table() {
    let (table, dy) = (vec![1.0f32; 10], vec![1.0f32; 32]);
    let mut codes = vec![3u16; 32];
    codes[5] = 10;
    dy_times_slope(&mut [0.0; 32], &dy, &codes, &table, 1.0);
}
