//! How often each CIM layer's partial sums clip: fall beyond the ADC's range, so that the
//! macro reads them as its end code. The ADC `step` sets the trade: a small step reads
//! partial sums finely but clips more of them, a large one clips few but reads coarsely
//! (see docs/macro-and-error-model.md, "Choosing the ADC step"). Off unless a runtime
//! carries a [`ClipCounts`]; counting changes no result.

use std::sync::Mutex;

/// Macro operations read and clipped, per CIM layer id, summed over every pass of the
/// runtimes that share it. Integer counts: the totals do not depend on thread count.
#[derive(Debug, Default)]
pub struct ClipCounts(Mutex<Vec<(u64, u64)>>);

/// One layer's count, as [`ClipCounts::per_layer`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerClip {
    /// The layer's name (its parameters' prefix).
    pub name: String,
    /// Macro operations read (ADC conversions).
    pub ops: u64,
    /// Of those, the ones whose partial sum lay beyond the ADC's range.
    pub clipped: u64,
}

impl LayerClip {
    /// The clipped share, in percent (0 for a layer that read nothing).
    pub fn percent(&self) -> f64 {
        if self.ops == 0 { 0.0 } else { 100.0 * self.clipped as f64 / self.ops as f64 }
    }
}

impl ClipCounts {
    /// Adds `ops` operations of CIM layer `layer`, `clipped` of them clipped.
    pub fn add(&self, layer: u64, ops: u64, clipped: u64) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() <= layer as usize {
            v.resize(layer as usize + 1, (0, 0));
        }
        v[layer as usize].0 += ops;
        v[layer as usize].1 += clipped;
    }

    /// The counts of the layers named `names` (CIM layer ids in order, as
    /// [`ParamStore::cim_layers`](crate::engine::ParamStore::cim_layers) lists them);
    /// layers that read nothing are left out.
    pub fn per_layer(&self, names: &[String]) -> Vec<LayerClip> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .enumerate()
            .filter(|(_, c)| c.0 > 0)
            .map(|(id, &(ops, clipped))| LayerClip {
                name: names.get(id).cloned().unwrap_or_else(|| format!("cim layer {id}")),
                ops,
                clipped,
            })
            .collect()
    }
}

/// One line per layer: `name  clipped %  (clipped of ops)`, for the command line.
pub fn report(layers: &[LayerClip]) -> String {
    let width = layers.iter().map(|l| l.name.len()).max().unwrap_or(0);
    let mut s =
        String::from("partial sums beyond the ADC's range (read as its end code), per layer:\n");
    for l in layers {
        s += &format!("  {:width$}  {:6.2} %  ({} of {})\n", l.name, l.percent(), l.clipped, l.ops);
    }
    s
}

/// The counts as JSON: `[{"layer": …, "ops": …, "clipped": …, "percent": …}, …]`.
pub fn json(layers: &[LayerClip]) -> crate::train::json::Value {
    use crate::train::json::{Value, object};
    let items: Vec<String> = layers
        .iter()
        .map(|l| {
            object(vec![
                ("layer", Value::from(l.name.clone())),
                ("ops", l.ops.into()),
                ("clipped", l.clipped.into()),
                ("percent", l.percent().into()),
            ])
        })
        .collect();
    Value::Raw(format!("[{}]", items.join(", ")))
}

/// How many of `sums` (partial sums of one column, read as `sums[i]·scale + offset` in
/// codes) round to a code beyond `kmin..=kmax`: the ADC conversion's own saturation test.
pub(crate) fn count_clipped(sums: &[i32], scale: f32, offset: f32, kmin: i32, kmax: i32) -> u64 {
    let (below, above) = (kmin as f32, kmax as f32);
    sums.iter()
        .filter(|&&s| {
            let r = (s as f32 * scale + offset).round_ties_even();
            r < below || r > above || r.is_nan()
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_layer_and_the_saturation_test() {
        // scale 1/32: 16 rounds to 0 (ties to even), 48 to 2; range -2..=1.
        assert_eq!(count_clipped(&[16, 47, 48, -80, -81, -112], 1.0 / 32.0, 0.0, -2, 1), 3);
        let c = ClipCounts::default();
        c.add(1, 10, 3);
        c.add(1, 10, 1);
        let names = ["a".to_string(), "b".to_string()];
        let got = c.per_layer(&names);
        assert_eq!(got, vec![LayerClip { name: "b".into(), ops: 20, clipped: 4 }]);
        assert_eq!(got[0].percent(), 20.0);
        assert!(report(&got).contains("b   20.00 %  (4 of 20)"));
    }
}
