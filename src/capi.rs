//! The C ABI (`include/dnat.h`, built as `libdnat.so` / `libdnat.a`): open a deployable
//! model, query its geometry, run batches with a built-in backend or one given as C
//! callbacks, read the logits.
//!
//! Conventions (those of tract's and ONNX Runtime's C APIs): opaque handles created and
//! freed by the library; every call returns a [`Status`]; on failure
//! [`dnat_last_error`] gives the message, per thread, until that thread's next call; no
//! panic crosses the boundary (it becomes [`Status::Panic`] with its message); pointers
//! the caller passes are borrowed for the call only. A model may be used from several
//! threads (runs are serialised on it); a backend by one thread at a time.

use crate::io::deploy::DeployModel;
use crate::runtime::{MacroBackend, Operation, Runtime, parse_backend};
use crate::{Error, Result};
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a call did: `Ok`, or why not ([`dnat_last_error`] has the message).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// A null pointer, an impossible size, a string that is not UTF-8.
    Argument = 1,
    /// A file that could not be read.
    Io = 2,
    /// A file that is not what its format promises.
    Format = 3,
    /// The model, the backend or the run refused (the message says which and why).
    Invalid = 4,
    /// A bug in dnat: a panic, stopped at the boundary.
    Panic = 5,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).expect("no NUL left");
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

/// Runs `f` at the boundary: clears the thread's last error, turns an `Err` or a panic
/// into a status and a message.
fn guard(f: impl FnOnce() -> std::result::Result<(), (Status, String)>) -> Status {
    LAST_ERROR.with(|e| *e.borrow_mut() = None);
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Status::Ok,
        Ok(Err((s, msg))) => {
            set_error(msg);
            s
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_error(format!("dnat panicked (a bug; please report it): {what}"));
            Status::Panic
        }
    }
}

fn status_of(e: Error) -> (Status, String) {
    let s = match &e {
        Error::Io { .. } => Status::Io,
        Error::Format { .. } => Status::Format,
        Error::Invalid(_) => Status::Invalid,
    };
    (s, e.to_string())
}

fn argument(msg: &str) -> (Status, String) {
    (Status::Argument, msg.to_string())
}

/// A C string argument, borrowed.
unsafe fn text<'a>(p: *const c_char, what: &str) -> std::result::Result<&'a str, (Status, String)> {
    if p.is_null() {
        return Err(argument(&format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string (the header's contract).
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| argument(&format!("{what} is not UTF-8")))
}

/// An open deployable model and its runtime (the placement worked out once).
pub struct DnatModel {
    runtime: Mutex<Runtime>,
    model: Arc<DeployModel>,
}

/// A backend: built in (`ideal`, `em:…`, `exec:…`) or C callbacks.
pub struct DnatBackend(Box<dyn MacroBackend>);

/// The geometry of a model and its macro.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Geometry {
    /// Logits per image.
    pub classes: u32,
    /// Channels, height and width of an input image.
    pub channels: u32,
    /// Input height.
    pub height: u32,
    /// Input width.
    pub width: u32,
    /// `x = (pixel/255 − mean[c]) / std[c]`.
    pub mean: [f32; 3],
    /// See `mean`.
    pub std: [f32; 3],
    /// Macro arrays.
    pub arrays: u32,
    /// Rows of an array.
    pub rows: u32,
    /// Columns (ADCs) of an array.
    pub columns: u32,
    /// Input code bits.
    pub input_bits: u32,
    /// Input bits the macro takes per cycle.
    pub input_bits_per_cycle: u32,
    /// Weight code bits.
    pub weight_bits: u32,
    /// Lowest ADC code.
    pub adc_kmin: i32,
    /// Highest ADC code.
    pub adc_kmax: i32,
    /// Partial-sum units per ADC code.
    pub adc_step: f32,
    /// Layers on the macro.
    pub macro_layers: u32,
}

/// Loads array `array` with `weights[row·columns + column]`; 0 on success.
pub type ProgramFn = unsafe extern "C" fn(ctx: *mut c_void, array: u32, weights: *const i8) -> i32;
/// Reads `n` operations: `inputs[r·n + i]` in, `codes[c·n + i]` out for `op.columns`
/// columns; 0 on success.
pub type ComputeFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    array: u32,
    op: *const Operation,
    n: u32,
    inputs: *const u16,
    codes: *mut i32,
) -> i32;

struct Callbacks {
    name: String,
    program: ProgramFn,
    compute: ComputeFn,
    ctx: *mut c_void,
    weights_len: usize,
}

// SAFETY: the header makes the caller responsible for `ctx` being usable from the
// thread that runs the model (one thread at a time per backend).
unsafe impl Send for Callbacks {}

impl MacroBackend for Callbacks {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn program(&mut self, array: usize, weights: &[i8]) -> Result<()> {
        assert_eq!(weights.len(), self.weights_len);
        // SAFETY: the callback's contract (header): it reads rows·columns weights.
        let s = unsafe { (self.program)(self.ctx, array as u32, weights.as_ptr()) };
        if s != 0 {
            return Err(Error::invalid(format!("the program callback returned {s}")));
        }
        Ok(())
    }
    fn compute(
        &mut self,
        array: usize,
        op: &Operation,
        inputs: &[u16],
        out: &mut [i32],
    ) -> Result<()> {
        let n = out.len() / op.columns as usize;
        // SAFETY: the callback's contract (header): it reads rows·n inputs and writes
        // columns·n codes, the lengths of these slices.
        let s = unsafe {
            (self.compute)(self.ctx, array as u32, op, n as u32, inputs.as_ptr(), out.as_mut_ptr())
        };
        if s != 0 {
            return Err(Error::invalid(format!("the compute callback returned {s}")));
        }
        Ok(())
    }
}

/// The message of this thread's last failed call (`NULL` after a call that succeeded),
/// valid until this thread's next call into the library.
#[unsafe(no_mangle)]
pub extern "C" fn dnat_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
}

/// The library's version, e.g. `"0.1.0"` (static storage).
#[unsafe(no_mangle)]
pub extern "C" fn dnat_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Opens the deployable model at `path` (`dnat export`) into `*out`.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnat_model_open(path: *const c_char, out: *mut *mut DnatModel) -> Status {
    guard(|| {
        if out.is_null() {
            return Err(argument("out is NULL"));
        }
        // SAFETY: as documented.
        let path = unsafe { text(path, "path")? };
        let model = DeployModel::load(Path::new(path)).map_err(status_of)?;
        let model = Arc::new(model);
        let runtime = Runtime::new(model.clone())
            .map_err(|e| status_of(Error::format(Path::new(path), e.to_string())))?;
        let handle = Box::new(DnatModel { runtime: Mutex::new(runtime), model });
        // SAFETY: `out` is writable (checked non-null above).
        unsafe { *out = Box::into_raw(handle) };
        Ok(())
    })
}

/// Frees a model (`NULL` is allowed).
///
/// # Safety
/// `model` came from [`dnat_model_open`] and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnat_model_free(model: *mut DnatModel) {
    if !model.is_null() {
        // SAFETY: as documented.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}

/// Fills `*out` with the model's geometry.
///
/// # Safety
/// `model` is an open model; `out` points to a writable [`Geometry`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnat_model_geometry(
    model: *const DnatModel,
    out: *mut Geometry,
) -> Status {
    guard(|| {
        if model.is_null() || out.is_null() {
            return Err(argument("model or out is NULL"));
        }
        // SAFETY: as documented.
        let m = unsafe { &(*model).model };
        let s = &m.macro_spec;
        let g = Geometry {
            classes: m.num_classes,
            channels: m.input[0],
            height: m.input[1],
            width: m.input[2],
            mean: m.norm.mean,
            std: m.norm.std,
            arrays: s.arrays as u32,
            rows: s.rows as u32,
            columns: s.columns as u32,
            input_bits: s.input_bits,
            input_bits_per_cycle: s.input_bits_per_cycle,
            weight_bits: s.weight_bits,
            adc_kmin: s.adc.kmin,
            adc_kmax: s.adc.kmax,
            adc_step: s.adc.step,
            macro_layers: m.macro_layers() as u32,
        };
        // SAFETY: as documented.
        unsafe { *out = g };
        Ok(())
    })
}

/// A built-in backend for `model`'s macro: `"ideal"`, `"em:MODEL[,chip=S][,noise=N]"` or
/// `"exec:CMD"` (each reply awaited at most `timeout_s` seconds).
///
/// # Safety
/// `model` is an open model; `description` a NUL-terminated string; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnat_backend_builtin(
    model: *const DnatModel,
    description: *const c_char,
    timeout_s: f64,
    out: *mut *mut DnatBackend,
) -> Status {
    guard(|| {
        if model.is_null() || out.is_null() {
            return Err(argument("model or out is NULL"));
        }
        if !(timeout_s > 0.0 && timeout_s <= 1e6) {
            return Err(argument("timeout_s must be in (0, 10^6] seconds"));
        }
        // SAFETY: as documented.
        let (m, d) = unsafe { (&(*model).model, text(description, "description")?) };
        let b = parse_backend(d, &m.macro_spec, Duration::from_secs_f64(timeout_s))
            .map_err(status_of)?;
        // SAFETY: as documented.
        unsafe { *out = Box::into_raw(Box::new(DnatBackend(b))) };
        Ok(())
    })
}

/// A backend whose macro operations are the C functions `program` and `compute`, called
/// with `ctx` on the thread that runs the model; `name` names it in messages.
///
/// # Safety
/// `model` is an open model; the functions follow the header's contract; `name` is a
/// NUL-terminated string; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnat_backend_callbacks(
    model: *const DnatModel,
    program: Option<ProgramFn>,
    compute: Option<ComputeFn>,
    ctx: *mut c_void,
    name: *const c_char,
    out: *mut *mut DnatBackend,
) -> Status {
    guard(|| {
        let (Some(program), Some(compute)) = (program, compute) else {
            return Err(argument("program or compute is NULL"));
        };
        if model.is_null() || out.is_null() {
            return Err(argument("model or out is NULL"));
        }
        // SAFETY: as documented.
        let (m, name) = unsafe { (&(*model).model, text(name, "name")?) };
        let weights_len = m.macro_spec.rows * m.macro_spec.columns;
        let cb = Callbacks { name: name.into(), program, compute, ctx, weights_len };
        // SAFETY: as documented.
        unsafe { *out = Box::into_raw(Box::new(DnatBackend(Box::new(cb)))) };
        Ok(())
    })
}

/// Frees a backend (`NULL` is allowed); an `exec:` host is stopped.
///
/// # Safety
/// `backend` came from a `dnat_backend_*` call and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnat_backend_free(backend: *mut DnatBackend) {
    if !backend.is_null() {
        // SAFETY: as documented.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(backend) })));
    }
}

/// Runs `n` normalised images (`images[n][channels·height·width]`, see [`Geometry`])
/// as pass `pass`, the backend doing every macro operation; writes
/// `logits[n][classes]`.
///
/// # Safety
/// `model` and `backend` are open; `images` holds `n·channels·height·width` floats and
/// `logits` room for `n·classes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dnat_run(
    model: *const DnatModel,
    backend: *mut DnatBackend,
    images: *const f32,
    n: usize,
    pass: u64,
    logits: *mut f32,
) -> Status {
    guard(|| {
        if model.is_null() || backend.is_null() || images.is_null() || logits.is_null() {
            return Err(argument("model, backend, images or logits is NULL"));
        }
        // SAFETY: as documented.
        let (h, b) = unsafe { (&*model, &mut *backend) };
        // SAFETY: as documented.
        let m = &h.model;
        let per = m.input.iter().map(|&v| v as usize).product::<usize>();
        let classes = m.num_classes as usize;
        if n == 0 || n.checked_mul(per).is_none_or(|v| v > isize::MAX as usize / 4) {
            return Err(argument("n must be 1 or more images that fit in memory"));
        }
        // SAFETY: as documented.
        let x = unsafe { std::slice::from_raw_parts(images, n * per) };
        let mut rt = h.runtime.lock().unwrap_or_else(|p| p.into_inner());
        let y = rt.run(b.0.as_mut(), x, pass).map_err(status_of)?;
        // SAFETY: as documented.
        unsafe { std::ptr::copy_nonoverlapping(y.as_ptr(), logits, n * classes) };
        Ok(())
    })
}
