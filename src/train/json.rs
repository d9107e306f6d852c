//! A tiny JSON object writer for the one-line machine-readable outputs.

/// A JSON value as [`object`] writes it.
pub enum Value {
    /// A number; NaN and infinities are written `null`.
    Num(f64),
    /// An integer.
    Int(i64),
    /// A string, escaped on output.
    Str(String),
    /// `true` or `false`.
    Bool(bool),
    /// Already-serialised JSON (a nested array or object).
    Raw(String),
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Num(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Num(v as f64)
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as i64)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// `s` escaped for inside a JSON string literal (quotes, backslashes, control characters).
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

/// `{"k": v, ...}` on one line, keys in the given order.
pub fn object<K: AsRef<str>>(fields: Vec<(K, Value)>) -> String {
    format!("{{{}}}", members(fields).join(", "))
}

/// The same object with one key per line (for files people read).
pub fn object_pretty<K: AsRef<str>>(fields: Vec<(K, Value)>) -> String {
    format!("{{\n  {}\n}}\n", members(fields).join(",\n  "))
}

fn members<K: AsRef<str>>(fields: Vec<(K, Value)>) -> Vec<String> {
    fields
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Num(x) if x.is_finite() => format!("{x}"),
                Value::Num(_) => "null".to_string(),
                Value::Int(i) => i.to_string(),
                Value::Str(s) => format!("\"{}\"", escape(&s)),
                Value::Bool(b) => b.to_string(),
                Value::Raw(r) => r,
            };
            format!("\"{}\": {v}", escape(k.as_ref()))
        })
        .collect()
}
