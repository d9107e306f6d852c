//! Tests of `draw.rs`.

use crate::cim::DrawKey;
use crate::cim::em::presets;
use crate::engine::gemm::Kernel;

/// Every path the CPU has (AVX-512, AVX2, portable) equals the portable one bit for
/// bit, on every preset, for runs that are not a multiple of 16 and strides ≠ 1; and
/// all equal `sample` at `DrawKey::forward`.
#[test]
fn every_path_draws_the_same_readouts() {
    let key = DrawKey::new(7, 3, 11);
    for name in presets::PRESETS {
        let m = presets::preset(name, (-256, 255)).unwrap();
        let codes: Vec<i32> = (0..1003).map(|i| ((i * 7919) % 700) - 350).collect();
        for (first, stride) in [(0u64, 1u64), (12_345, 1), (99, 37)] {
            let (mut a, mut b) = (vec![0.0f32; codes.len()], vec![0.0f32; codes.len()]);
            m.sample_stream(&codes, key.forward_key(), first, stride, &mut a);
            m.stream_portable(&codes, key.forward_key(), first, stride, &mut b);
            for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
                let want = m.sample(codes[i], key.forward(first + i as u64 * stride)) as f32;
                assert_eq!(
                    (x, y),
                    (want, want),
                    "{name}: draw {i} (first {first}, stride {stride})"
                );
            }
            // Every instruction set's path, not only the one dispatched.
            for isa in Kernel::ALL.into_iter().filter(|k| k.supported()) {
                a.fill(f32::NAN);
                m.sample_stream_on(isa, &codes, key.forward_key(), first, stride, &mut a);
                assert_eq!(
                    a,
                    b,
                    "{name}: the {} path (first {first}, stride {stride})",
                    isa.name()
                );
            }
            // The sampled slopes (stat:S) likewise, against pair_difference at DrawKey::backward.
            for draws in [1u32, 4] {
                m.slope_stream(&codes, key.backward_key(), first, stride, draws, &mut a);
                m.slopes_portable(&codes, key.backward_key(), first, stride, draws, &mut b);
                for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
                    let op = first + i as u64 * stride;
                    let (mut diff, mut sp) = (0i64, 0);
                    for s in 0..draws as u64 {
                        let (d, spacing) = m.pair_difference(codes[i], key.backward(op, s));
                        (diff, sp) = (diff + d as i64, spacing);
                    }
                    let want = if sp == 0 { 1.0 } else { diff as f32 / (draws as f32 * sp as f32) };
                    assert_eq!(
                        (x.to_bits(), y.to_bits()),
                        (want.to_bits(), want.to_bits()),
                        "{name}: slope {i} (S = {draws})"
                    );
                }
                for isa in Kernel::ALL.into_iter().filter(|k| k.supported()) {
                    a.fill(f32::NAN);
                    m.slope_stream_on(
                        isa,
                        &codes,
                        key.backward_key(),
                        first,
                        stride,
                        draws,
                        &mut a,
                    );
                    assert_eq!(
                        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{name}: the {} slopes (S = {draws})",
                        isa.name()
                    );
                }
            }
        }
    }
}
