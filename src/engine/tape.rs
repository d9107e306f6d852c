//! A flat reverse-mode tape.
//!
//! Node id = index in creation order. Each op pushes its output value and, when any
//! input needs a gradient and the tape records, a boxed backward closure. The closure
//! gets the gradient of its output, read access to every value on the tape, and a
//! [`GradSink`] that allocates an input's gradient on first use and accumulates in
//! place. `backward` walks the nodes in reverse and frees each node's value once its
//! own backward has run (no later node can need it), which keeps peak memory near one
//! forward pass.

use super::Tensor;
use super::param::{ParamId, ParamStore};

/// A handle to a node on a [`Tape`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// Backward of one op: (gradient of the output, all values, gradient sink).
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &Values, &mut GradSink) + Send>;

#[derive(Clone, Copy)]
struct Meta {
    needs_grad: bool,
}

/// The values and backward closures of one forward pass, in creation order.
pub struct Tape {
    values: Vec<Tensor>,
    meta: Vec<Meta>,
    backward: Vec<Option<BackwardFn>>,
    params: Vec<(Var, ParamId)>,
    recording: bool,
}

/// Read access to the values on the tape, for backward closures.
pub struct Values<'a>(&'a [Tensor]);

impl Values<'_> {
    /// The value of an input of the op.
    pub fn get(&self, v: Var) -> &Tensor {
        &self.0[v.0]
    }
    /// The op's own output value.
    pub fn output(&self) -> &Tensor {
        self.0.last().expect("a backward closure always has its output")
    }
}

/// Where a backward closure writes its inputs' gradients.
pub struct GradSink<'a> {
    grads: &'a mut [Option<Tensor>],
    shapes: &'a [Tensor],
    meta: &'a [Meta],
}

impl GradSink<'_> {
    /// Whether `v` needs a gradient at all (inputs and constants do not).
    pub fn wants(&self, v: Var) -> bool {
        self.meta[v.0].needs_grad
    }
    /// Adds an element-wise contribution to `v`'s gradient, in parallel chunks of
    /// `chunk` elements: `fill(i, len)` yields the contributions to elements
    /// `i·chunk .. i·chunk + len`, exactly `len` of them. The first gradient of `v` is
    /// written once as `0.0 + d` — the bits of adding onto the zero-filled buffer
    /// [`GradSink::get`] makes — with no zero fill and no second pass; a later one is
    /// added in place. The chunks depend on the size and `chunk` only.
    pub fn accumulate<I: Iterator<Item = f32>>(
        &mut self,
        v: Var,
        chunk: usize,
        fill: impl Fn(usize, usize) -> I + Sync + Send,
    ) {
        use rayon::prelude::*;
        if !self.wants(v) {
            return;
        }
        let shape = self.shapes[v.0].shape();
        match &mut self.grads[v.0] {
            Some(grad) => {
                grad.data_mut().par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, out)| {
                    let (mut added, len) = (0, out.len());
                    for (o, d) in out.iter_mut().zip(fill(i, len)) {
                        *o += d;
                        added += 1;
                    }
                    assert_eq!(
                        added, len,
                        "GradSink::accumulate: chunk {i} yielded {added} of {len} values"
                    );
                })
            }
            slot @ None => {
                let n = shape.iter().product();
                *slot = Some(Tensor::new(
                    shape,
                    super::par::from_chunks(n, chunk, |i, len| fill(i, len).map(|d| 0.0 + d)),
                ));
            }
        }
    }
    /// The gradient buffer of `v`, zero-filled on first use. Ops accumulate (`+=`).
    pub fn get(&mut self, v: Var) -> &mut Tensor {
        debug_assert!(self.meta[v.0].needs_grad);
        let shape = self.shapes[v.0].shape();
        self.grads[v.0].get_or_insert_with(|| Tensor::zeros(shape))
    }
    /// Adds a whole gradient tensor to `v` (moved in when `v` has none yet).
    pub fn add(&mut self, v: Var, g: Tensor) {
        if !self.wants(v) {
            return;
        }
        assert_eq!(g.shape(), self.shapes[v.0].shape(), "gradient shape mismatch");
        match &mut self.grads[v.0] {
            Some(existing) => existing.add_assign(&g),
            slot @ None => *slot = Some(g),
        }
    }
}

/// The gradients left after `backward`: leaves' gradients by handle, plus the
/// parameter gradients (already summed per parameter).
pub struct Gradients {
    grads: Vec<Option<Tensor>>,
    params: Vec<(Var, ParamId)>,
}

impl Gradients {
    /// The gradient of leaf `v` (`None` when it needs none or none reached it).
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.grads[v.0].as_ref()
    }
    /// Accumulates the parameter gradients into the store's `grad` buffers.
    pub fn accumulate_into(mut self, store: &mut ParamStore) {
        for &(v, id) in &self.params {
            if let Some(g) = self.grads[v.0].take() {
                store.param_mut(id).grad.add_assign(&g);
            }
        }
    }
}

impl Tape {
    /// A tape that records backward closures (training) or not (evaluation).
    pub fn new(recording: bool) -> Self {
        Tape {
            values: Vec::new(),
            meta: Vec::new(),
            backward: Vec::new(),
            params: Vec::new(),
            recording,
        }
    }
    /// Whether the tape records backward closures.
    pub fn recording(&self) -> bool {
        self.recording
    }
    fn push_node(&mut self, value: Tensor, needs_grad: bool, bw: Option<BackwardFn>) -> Var {
        self.values.push(value);
        self.meta.push(Meta { needs_grad });
        self.backward.push(bw);
        Var(self.values.len() - 1)
    }
    /// A value that needs no gradient (input images, labels-as-data).
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.push_node(value, false, None)
    }
    /// A leaf whose gradient is wanted (used by gradient tests and custom code).
    pub fn leaf(&mut self, value: Tensor) -> Var {
        let rec = self.recording;
        self.push_node(value, rec, None)
    }
    /// Puts a parameter on the tape; its gradient is returned by `backward`.
    pub fn param(&mut self, store: &ParamStore, id: ParamId) -> Var {
        let v = self.leaf(store.param(id).value.clone());
        self.params.push((v, id));
        v
    }
    /// The value of node `v`.
    pub fn value(&self, v: Var) -> &Tensor {
        &self.values[v.0]
    }
    /// Whether node `v` needs a gradient (it depends on a leaf and the tape records).
    pub fn needs_grad(&self, v: Var) -> bool {
        self.meta[v.0].needs_grad
    }
    /// Records an op's output. The closure is kept only when the tape records and some
    /// input needs a gradient; otherwise it is dropped unrun (no saved state survives).
    pub fn push<F>(&mut self, value: Tensor, inputs: &[Var], backward: F) -> Var
    where
        F: FnOnce(&Tensor, &Values, &mut GradSink) + Send + 'static,
    {
        let needs = self.recording && inputs.iter().any(|v| self.meta[v.0].needs_grad);
        let bw: Option<BackwardFn> = if needs { Some(Box::new(backward)) } else { None };
        self.push_node(value, needs, bw)
    }
    /// Reverse pass from a scalar `loss` (seeded with gradient 1).
    pub fn backward(self, loss: Var) -> Gradients {
        let Tape { mut values, meta, mut backward, params, .. } = self;
        assert_eq!(values[loss.0].len(), 1, "backward needs a scalar loss");
        let n = values.len();
        let mut grads: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        if meta[loss.0].needs_grad {
            grads[loss.0] = Some(Tensor::full(values[loss.0].shape(), 1.0));
        }
        for i in (0..n).rev() {
            if let Some(bw) = backward[i].take()
                && let Some(g) = grads[i].take()
            {
                // Inputs always precede their output: the closure reads nodes 0..=i
                // (its own output included) and writes gradients of nodes 0..i.
                let upto = &values[..=i];
                let (gbefore, _) = grads.split_at_mut(i);
                let mut sink = GradSink { grads: gbefore, shapes: &upto[..i], meta: &meta[..i] };
                bw(&g, &Values(upto), &mut sink);
            }
            // No node after i reads it any more, and its own backward has run.
            values[i] = Tensor::zeros(&[0]);
        }
        Gradients { grads, params }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first gradient is written as `0.0 + d` (so −0.0 becomes +0.0, as adding onto
    /// zeros gives), a later one is added in place (so −0.0 changes nothing); chunks
    /// of any size; a chunk that yields too few values is refused.
    #[test]
    fn accumulate_writes_then_adds_with_the_bits_of_zero_fill() {
        let d = [1.5f32, -0.0, 2.0, -3.25, 0.0];
        for chunk in [1, 2, 5, 64] {
            let mut tape = Tape::new(true);
            let x = tape.leaf(Tensor::new(&[5], vec![0.0; 5]));
            let y = tape.push(Tensor::new(&[5], vec![0.0; 5]), &[x], move |_, _, sink| {
                sink.accumulate(x, chunk, |i, len| d[i * chunk..][..len].iter().copied());
                let first: Vec<u32> = sink.get(x).data().iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = d.iter().map(|&v| (0.0 + v).to_bits()).collect();
                assert_eq!(first, want, "chunk {chunk}: first gradient");
                sink.accumulate(x, chunk, |i, len| d[i * chunk..][..len].iter().copied());
                let twice: Vec<u32> = sink.get(x).data().iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = d.iter().map(|&v| ((0.0 + v) + v).to_bits()).collect();
                assert_eq!(twice, want, "chunk {chunk}: added");
            });
            let loss = tape.push(Tensor::new(&[1], vec![0.0]), &[y], move |_, _, sink| {
                sink.get(y).data_mut().fill(1.0)
            });
            tape.backward(loss);
        }
    }

    #[test]
    #[should_panic(expected = "yielded 1 of 2")]
    fn accumulate_refuses_a_short_chunk() {
        let mut tape = Tape::new(true);
        let x = tape.leaf(Tensor::new(&[4], vec![0.0; 4]));
        let y = tape.push(Tensor::new(&[4], vec![0.0; 4]), &[x], move |_, _, sink| {
            sink.get(x);
            sink.accumulate(x, 2, |_, _| std::iter::once(1.0));
        });
        let loss = tape.push(Tensor::new(&[1], vec![0.0]), &[y], move |_, _, sink| {
            sink.get(y).data_mut().fill(1.0)
        });
        tape.backward(loss);
    }
}
