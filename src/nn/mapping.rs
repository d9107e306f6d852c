//! Which layers run on the macro: dnat's `convert_to_analog`.
//!
//! A network's convolutions and linear layers are recorded by its store as they are
//! made ([`ParamStore::layers`]). [`map_to_macro`] puts the ones a [`CimPlan`] names on
//! the macro: each gets its E-PACT bounds and a CIM layer id, and from then on runs on
//! the macro whenever a forward pass carries a CIM runtime (in FP32 otherwise). The
//! network's own code does not change.

use crate::engine::ParamStore;
use crate::{Error, Result};

/// Which weight layers of a network map onto the macro.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CimPlan {
    /// Every convolution and linear layer, except — as is usual in the CIM literature,
    /// since they hold few weights and see raw pixels or produce the logits — the first
    /// and the last layer made, where the flags say so.
    Edges {
        /// Keep the first layer made digital.
        first_digital: bool,
        /// Keep the last layer made digital.
        last_digital: bool,
    },
    /// The layers whose names match one of these patterns (`*` matches any run of
    /// characters: `layer*.conv1`, `features.*`); each pattern must match a layer.
    Named(Vec<String>),
}

impl Default for CimPlan {
    /// First and last layer digital, every other on the macro.
    fn default() -> Self {
        CimPlan::Edges { first_digital: true, last_digital: true }
    }
}

impl CimPlan {
    /// Every convolution and linear layer on the macro.
    pub fn all() -> Self {
        CimPlan::Edges { first_digital: false, last_digital: false }
    }
    /// The layers named by these patterns (see [`CimPlan::Named`]; checked by
    /// [`CimPlan::validate`] when used).
    pub fn named<S: Into<String>>(patterns: impl IntoIterator<Item = S>) -> Self {
        CimPlan::Named(patterns.into_iter().map(Into::into).collect())
    }
    /// A named plan has at least one pattern, and each is 1 to 256 characters without
    /// whitespace, `,` or `|` (which separate patterns where plans are written down).
    pub fn validate(&self) -> Result<()> {
        let CimPlan::Named(patterns) = self else {
            return Ok(());
        };
        if patterns.is_empty() {
            return Err(Error::invalid("CIM plan: no layer pattern"));
        }
        match patterns.iter().find(|p| {
            p.is_empty()
                || p.len() > 256
                || p.chars().any(|c| c.is_whitespace() || c == ',' || c == '|')
        }) {
            Some(p) => Err(Error::invalid(format!(
                "CIM plan: layer pattern {p:?} (1 to 256 characters, no whitespace, ',' or '|')"
            ))),
            None => Ok(()),
        }
    }
    /// The plan as one line, as [`CimPlan::parse`] reads it (checkpoints, safetensors
    /// metadata, reports).
    pub fn describe(&self) -> String {
        match self {
            CimPlan::Edges { first_digital, last_digital } => {
                format!("first_digital={first_digital},last_digital={last_digital}")
            }
            CimPlan::Named(p) => format!("layers={}", p.join("|")),
        }
    }
    /// The plan as a person writes it (`--cim-layers`, the pipeline's `cim_layers`):
    /// `default`, `all`, or comma-separated layer-name patterns.
    pub fn words(&self) -> String {
        match self {
            CimPlan::Edges { first_digital: true, last_digital: true } => "default".into(),
            CimPlan::Edges { first_digital: false, last_digital: false } => "all".into(),
            CimPlan::Edges { .. } => self.describe(),
            CimPlan::Named(p) => p.join(", "),
        }
    }
    /// Reads [`CimPlan::words`] (and [`CimPlan::describe`]'s flag form).
    pub fn from_words(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "default" => Ok(CimPlan::default()),
            "all" => Ok(CimPlan::all()),
            _ if s.starts_with("first_digital=") => CimPlan::parse(s),
            _ => {
                let plan = CimPlan::named(s.split(',').map(str::trim));
                plan.validate()?;
                Ok(plan)
            }
        }
    }
    /// Reads [`CimPlan::describe`]: `first_digital=…,last_digital=…` or `layers=P|Q|…`.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(list) = s.strip_prefix("layers=") {
            let plan = CimPlan::named(list.split('|'));
            plan.validate()?;
            return Ok(plan);
        }
        let flag = |key: &str| -> Result<bool> {
            let v =
                s.split(',').find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')));
            match v {
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                _ => Err(Error::invalid(format!(
                    "CIM plan '{s}': expected first_digital=true|false,last_digital=true|false or layers=pattern|…"
                ))),
            }
        };
        Ok(CimPlan::Edges {
            first_digital: flag("first_digital")?,
            last_digital: flag("last_digital")?,
        })
    }
}

/// Maps the layers `plan` names onto the macro, in the order they were made (which
/// numbers their CIM layer ids); returns their names. Refused: a store without weight
/// layers, a pattern that matches no layer, a plan that maps nothing, a layer already
/// on the macro.
pub fn map_to_macro(store: &mut ParamStore, plan: &CimPlan) -> Result<Vec<String>> {
    plan.validate()?;
    let n = store.layers().len();
    if n == 0 {
        return Err(Error::invalid("no convolution or linear layer to map onto the macro"));
    }
    let chosen: Vec<usize> = match plan {
        CimPlan::Edges { first_digital, last_digital } => (0..n)
            .filter(|&i| (i != 0 || !*first_digital) && (i != n - 1 || !*last_digital))
            .collect(),
        CimPlan::Named(patterns) => {
            if let Some(p) =
                patterns.iter().find(|p| !store.layers().iter().any(|l| matches(p, &l.name)))
            {
                let names: Vec<_> = store.layers().iter().map(|l| l.name.as_str()).collect();
                return Err(Error::invalid(format!(
                    "CIM plan: no layer matches '{p}' (the layers: {})",
                    names.join(", ")
                )));
            }
            (0..n)
                .filter(|&i| patterns.iter().any(|p| matches(p, &store.layers()[i].name)))
                .collect()
        }
    };
    if chosen.is_empty() {
        return Err(Error::invalid(format!(
            "CIM plan {}: maps no layer onto the macro",
            plan.describe()
        )));
    }
    if let Some(&i) = chosen.iter().find(|&&i| store.layers()[i].on_macro.is_some()) {
        return Err(Error::invalid(format!(
            "layer '{}' is already on the macro",
            store.layers()[i].name
        )));
    }
    Ok(chosen
        .into_iter()
        .map(|i| {
            store.map_layer(crate::engine::LayerId(i));
            store.layers()[i].name.clone()
        })
        .collect())
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Conv2dConfig, Linear};

    fn store() -> ParamStore {
        let mut s = ParamStore::new();
        for name in ["stem", "block.0.conv", "block.1.conv", "block.1.skip"] {
            Conv2dConfig::new(4, 4, 3).init(&mut s, name);
        }
        Linear::init(&mut s, "head", 4, 2);
        s
    }

    #[test]
    fn plans_pick_the_documented_layers_in_build_order() {
        let mut s = store();
        assert_eq!(
            map_to_macro(&mut s, &CimPlan::default()).unwrap(),
            ["block.0.conv", "block.1.conv", "block.1.skip"]
        );
        assert_eq!(s.cim_layers(), ["block.0.conv", "block.1.conv", "block.1.skip"]);
        let mut s = store();
        assert_eq!(
            map_to_macro(&mut s, &CimPlan::named(["block.*.conv", "head"])).unwrap(),
            ["block.0.conv", "block.1.conv", "head"]
        );
        assert!(s.params().iter().any(|p| p.name == "head.act_hi"));
        assert_eq!(map_to_macro(&mut store(), &CimPlan::all()).unwrap().len(), 5);
        assert!(
            matches("*", "x")
                && matches("a*c*e", "abcde")
                && !matches("a*c*e", "abde")
                && !matches("ab*ba", "aba")
        );
    }

    #[test]
    fn a_plan_that_cannot_hold_is_refused_by_name() {
        let e = map_to_macro(&mut store(), &CimPlan::named(["blocks.*"])).unwrap_err().to_string();
        assert!(e.contains("no layer matches 'blocks.*'") && e.contains("block.1.skip"), "{e}");
        let mut s = store();
        map_to_macro(&mut s, &CimPlan::named(["head"])).unwrap();
        let e = map_to_macro(&mut s, &CimPlan::all()).unwrap_err().to_string();
        assert!(e.contains("'head' is already on the macro"), "{e}");
        let mut one = ParamStore::new();
        Linear::init(&mut one, "only", 2, 2);
        assert!(
            map_to_macro(&mut one, &CimPlan::default())
                .unwrap_err()
                .to_string()
                .contains("maps no layer")
        );
        assert!(
            map_to_macro(&mut ParamStore::new(), &CimPlan::all())
                .unwrap_err()
                .to_string()
                .contains("no convolution or linear layer")
        );
        for plan in [
            CimPlan::default(),
            CimPlan::all(),
            CimPlan::named(["a.*", "b"]),
            CimPlan::Edges { first_digital: false, last_digital: true },
        ] {
            assert_eq!(CimPlan::parse(&plan.describe()).unwrap(), plan);
            assert_eq!(CimPlan::from_words(&plan.words()).unwrap(), plan);
        }
        assert!(CimPlan::from_words("a,,b").unwrap_err().to_string().contains("layer pattern"));
        assert!(
            CimPlan::parse("first_digital=yes").is_err() && CimPlan::parse("layers=a||b").is_err()
        );
        for bad in [
            CimPlan::named(Vec::<String>::new()),
            CimPlan::named(["a|b"]),
            CimPlan::named(["a b"]),
            CimPlan::named([""]),
        ] {
            assert!(
                map_to_macro(&mut store(), &bad).unwrap_err().to_string().contains("CIM plan"),
                "{bad:?}"
            );
        }
    }
}
